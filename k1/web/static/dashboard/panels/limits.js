/* Limits: GET /api/limits, each limit in force (declared in code or set at run time) with
 * its live use per key. Read-only: limits are changed by operators (PUT /api/limits,
 * `k1 limits set`). main.js reloads it on `limit_state` and, while it is shown, every
 * few seconds (a slot taken or freed below the limit sends no event). */

import { $, badge, el, note } from "../dom.js";
import { dataTable, loadPanel } from "../table.js";

const KEYS_SHOWN = 20;  // keys per limit on the page (the API lists up to 1,000)

const dash = (value) => value === null || value === undefined ? "—" : value;

function keyName(key, per) {
  if (per === "global") return "whole fleet";
  return key === "" ? "(no " + per + ")" : key;
}

function usageItem(limit, use) {
  const parts = [el("span", { class: "key", text: keyName(use.key, limit.per) })];
  if (use.running !== null) parts.push(el("span", { text: use.running + " / " + limit.concurrency + " running" }));
  if (use.next_start_in !== null) {
    parts.push(el("span", { text: use.next_start_in > 0 ? "next start in " + use.next_start_in + " s" : "next start now" }));
  }
  if (use.saturated) parts.push(badge("saturated"));
  return el("li", { "data-key": use.key, "data-running": use.running,
    "data-saturated": String(use.saturated) }, parts);
}

function usageCell(limit) {
  if (!limit.usage.length) return note("no key used in the last 24 h");
  const hidden = limit.usage.length - KEYS_SHOWN;
  return [el("ul", { class: "usage" }, limit.usage.slice(0, KEYS_SHOWN).map((u) => usageItem(limit, u))),
    hidden > 0 ? el("div", { class: "note", text: "and " + hidden + " more keys (k1 limits list)" }) : null];
}

const COLUMNS = [
  { head: "limit", cell: (x) => [el("b", { text: x.name }), " ", badge(x.source)] },
  { head: "tasks", cell: (x) => x.tasks.length ? x.tasks.join(", ") : "limiter() calls only" },
  { head: "per", cell: (x) => x.per },
  { head: "concurrency", cell: (x) => dash(x.concurrency) },
  { head: "rate", cell: (x) => dash(x.rate) },
  { head: "use now, per key", cell: usageCell },
];

export function loadLimits() {
  return loadPanel($("limits-body"), "/api/limits", (data) => dataTable({
    columns: COLUMNS, items: data.limits, empty: "No limit is declared on a task or set at run time.",
    rowAttrs: (x) => ({ "data-limit": x.name, "data-source": x.source }) }));
}
