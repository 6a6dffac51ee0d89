/* Circuit breakers: GET /api/breakers, POST /api/breakers/<name>/reset (operator). */

import { api, errorText, seg } from "../api.js";
import { $, badge, el, fmtTime } from "../dom.js";
import { feedNote } from "../feed.js";
import { dataTable, loadPanel } from "../table.js";

const COLUMNS = [
  { head: "breaker", cell: (b) => b.name },
  { head: "state", cell: (b) => badge(b.state) },
  { head: "failures", cell: (b) => b.fail_counter + " / " + b.fail_max },
  { head: "reset after", cell: (b) => b.reset_timeout + " s" },
  { head: "opened", cell: (b) => fmtTime(b.opened_at) },
  { head: "half-open at", cell: (b) => fmtTime(b.next_half_open_at) },
  { head: "", class: "actions", cell: (b) => el("button", { type: "button", text: "Reset",
    onclick: (e) => reset(b.name, e.currentTarget) }) },
];

export function loadBreakers() {
  return loadPanel($("breakers-body"), "/api/breakers", (data) => dataTable({
    columns: COLUMNS, items: data.breakers, empty: "No breaker has been used yet.",
    rowAttrs: (b) => ({ "data-breaker": b.name }) }));
}

async function reset(name, button) {
  button.disabled = true;
  const result = await api("POST", "/api/breakers/" + seg(name) + "/reset");
  if (!result.ok) feedNote("error", "reset " + name + ": " + errorText(result));
  loadBreakers();
}
