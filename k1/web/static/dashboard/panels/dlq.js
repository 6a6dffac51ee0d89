/* Dead letters: GET /api/dlq (filters, cursor paging), GET /api/dlq/stats, GET /api/dlq/<id>,
 * POST /api/dlq/<id>/replay (as it was, or with edited args/kwargs), DELETE /api/dlq/<id>. */

import { api, errorNote, errorText, seg } from "../api.js";
import { $, badge, clear, el, fmtTime, json } from "../dom.js";
import { feedNote } from "../feed.js";
import { state } from "../state.js";
import { loadPages } from "../table.js";

const PAGE_SIZE = 50;
const CONFIRM_MS = 4000;  // how long "Confirm discard" waits for its second click
const DETAIL_FIELDS = ["id", "task_id", "queue", "worker", "first_failed_at", "died_at",
  "idempotency_key", "workflow_id", "conductor_task_id", "replay_count", "replay_task_id"];

const COLUMNS = [
  { head: "died", cell: (l) => fmtTime(l.died_at) },
  { head: "task", cell: (l) => l.task_name },
  { head: "exception", title: (l) => l.exception_message || "", cell: (l) => l.exception_type },
  { head: "attempts", cell: (l) => l.attempts },
  { head: "project", cell: (l) => l.project_id },
  { head: "status", cell: (l) => badge(l.status) },
  { head: "", class: "actions", cell: actions },
];
const rowAttrs = (l) => ({ "data-letter-id": l.id, "data-task-id": l.task_id });

function query(next) {
  const form = $("dlq-filters");
  const params = new URLSearchParams();
  for (const name of ["task", "exception", "status"]) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  const since = form.elements.since.value;
  if (since) params.set("since", new Date(since).toISOString());
  if (state.project) params.set("project_id", state.project);
  params.set("limit", String(PAGE_SIZE));
  if (next) params.set("cursor", next);
  return "/api/dlq?" + params;
}

// Letter ids whose details are open. The table is drawn again whenever a letter dies or
// changes (dlq_changed); the details open before stay open, so that an operator reading
// a traceback does not lose it, nor a click made while the table was being drawn.
const openDetails = new Set();

/** The stats line and the first page of dead letters matching the filters. */
export async function loadDlq() {
  loadStats();
  const data = await loadPages($("dlq-body"), query, { id: "dlq-table", columns: COLUMNS,
    rowAttrs, empty: "No dead letters match." });
  for (const letter of data ? data.items : []) {
    if (openDetails.has(String(letter.id))) showDetail(letter);
  }
  return data;
}

function rowOf(letterId) {
  return document.querySelector('#dlq-table tr[data-letter-id="' + CSS.escape(String(letterId))
    + '"]');
}

async function loadStats() {
  const node = $("dlq-stats");
  const result = await api("GET", "/api/dlq/stats");
  if (!result.ok) { clear(node, errorNote(result, "span")); return; }
  const s = result.data;
  const top = (counts) => Object.entries(counts || {}).sort((a, b) => b[1] - a[1]).slice(0, 3)
    .map(([k, v]) => k + " (" + v + ")").join(", ") || "—";
  clear(node,
    el("span", { class: "note", text: "all your projects:" }),
    el("span", {}, el("b", { text: String(s.depth ?? "—") }), " dead"),
    el("span", {}, "daily avg ", el("b", { text: s.daily_avg_depth == null ? "n/a"
      : String(Math.round(s.daily_avg_depth * 100) / 100) })),
    el("span", {}, "oldest ", fmtTime(s.oldest_at)),
    el("span", {}, "top tasks: ", top(s.by_task)),
    el("span", {}, "top errors: ", top(s.by_exception)));
}

function actions(letter) {
  const buttons = [el("button", { type: "button", text: "Details",
    onclick: (e) => toggleDetail(e.currentTarget.closest("tr"), letter) })];
  if (letter.status === "dead") {
    buttons.push(
      el("button", { type: "button", class: "primary", text: "Replay", "data-action": "replay",
        onclick: (e) => replay(letter, e.currentTarget, false) }),
      el("button", { type: "button", class: "danger", text: "Discard", "data-action": "discard",
        onclick: (e) => discard(letter, e.currentTarget) }));
  }
  return buttons;
}

function toggleDetail(row, letter) {
  const next = row.nextElementSibling;
  if (next && next.classList.contains("detail")) {
    next.remove();
    openDetails.delete(String(letter.id));
    return;
  }
  openDetails.add(String(letter.id));
  showDetail(letter);
}

async function showDetail(letter) {
  const result = await api("GET", "/api/dlq/" + seg(letter.id));
  // The row as it is now: the table may have been drawn again while the letter loaded.
  const row = rowOf(letter.id);
  if (!row || !openDetails.has(String(letter.id))) return;
  if (row.nextElementSibling && row.nextElementSibling.classList.contains("detail")) return;
  const full = result.ok ? result.data : letter;
  const cell = el("td", { colspan: COLUMNS.length },
    result.ok ? null : errorNote(result),
    el("div", { class: "stats" }, DETAIL_FIELDS.filter((f) => full[f] !== null && full[f] !== undefined)
      .map((f) => el("span", {}, f + ": ", el("code", { text: String(full[f]) })))),
    el("h3", { text: (full.exception_type || "") + ": " + (full.exception_message || "") }),
    el("pre", { class: "traceback", text: full.traceback || "(no traceback)" }),
    el("h3", { text: "args / kwargs" }),
    el("pre", { text: json({ args: full.args, kwargs: full.kwargs }) }),
    full.breaker_states ? el("pre", { text: "breakers: " + json(full.breaker_states) }) : null,
    full.task_id ? el("a", { href: "#task=" + seg(full.task_id), text: "its task's history" }) : null,
    full.status === "dead" && result.ok ? editReplayForm(full, (replayed) => {
      feedNote("dlq", "replayed " + full.task_name + (replayed.edited.length ? " with edited "
        + replayed.edited.join(", ") : "") + " as " + replayed.replay_task_id);
      loadDlq();
    }) : null);
  row.after(el("tr", { class: "detail" }, cell));
}

/** Which of `text`'s args/kwargs differ from the letter's, as the replay body; or an
 * error naming the field that is not the JSON it must be. */
function editedBody(letter, form) {
  const body = {};
  for (const [name, kind] of [["args", "a JSON list"], ["kwargs", "a JSON object"]]) {
    let value;
    try { value = JSON.parse(form.elements[name].value); } catch (err) {
      return { error: name + ": not JSON (" + err.message + ")" };
    }
    const isList = Array.isArray(value);
    if ((name === "args") !== isList || value === null || typeof value !== "object") {
      return { error: name + ": must be " + kind };
    }
    if (JSON.stringify(value) !== JSON.stringify(letter[name])) body[name] = value;
  }
  return { body };
}

/** "Edit and replay": the letter's args and kwargs as JSON to edit; only what changed is
 * sent (POST /api/dlq/<id>/replay {args?, kwargs?}); the server checks it like a new
 * submission and says which field it refuses. onReplayed(answer) after a replay. */
export function editReplayForm(letter, onReplayed) {
  const out = el("span", { class: "note", role: "status" });
  const form = el("form", { class: "edit-replay", "data-letter-id": letter.id },
    el("h3", { text: "Edit and replay" }),
    el("label", { text: "args (JSON list)" },
      el("textarea", { name: "args", rows: 2, spellcheck: "false" })),
    el("label", { text: "kwargs (JSON object)" },
      el("textarea", { name: "kwargs", rows: 4, spellcheck: "false" })),
    el("div", {}, el("button", { type: "submit", class: "primary", text: "Replay edited" }), " ", out));
  form.elements.args.value = JSON.stringify(letter.args ?? []);
  form.elements.kwargs.value = JSON.stringify(letter.kwargs ?? {}, null, 2);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const edited = editedBody(letter, form);
    if (edited.error) { out.textContent = edited.error; out.className = "error"; return; }
    form.querySelector("button").disabled = true;
    const result = await api("POST", "/api/dlq/" + seg(letter.id) + "/replay", edited.body);
    form.querySelector("button").disabled = false;
    out.className = result.ok ? "note" : "error";
    out.textContent = result.ok ? "replayed as " + result.data.replay_task_id : errorText(result);
    if (result.ok) onReplayed(result.data);
  });
  return form;
}

async function replay(letter, button, force) {
  button.disabled = true;
  const result = await api("POST", "/api/dlq/" + seg(letter.id) + "/replay", { force });
  if (result.ok) {
    feedNote("dlq", "replayed " + letter.task_name + " as " + (result.data.replay_task_id || "?"));
    loadDlq();
    return;
  }
  button.disabled = false;
  const message = el("span", { class: "error", text: " " + errorText(result) + " " });
  button.parentElement.append(message);
  if (result.status === 409 && !force) {  // replayed before: the operator may insist
    message.append(el("button", { type: "button", text: "Force replay",
      onclick: (e) => replay(letter, e.currentTarget, true) }));
  }
  button.closest("tr").dataset.error = "1";
}

async function discard(letter, button) {
  if (button.dataset.confirm !== "1") {   // two clicks, no modal dialog
    button.dataset.confirm = "1";
    button.textContent = "Confirm discard";
    setTimeout(() => { button.dataset.confirm = ""; button.textContent = "Discard"; }, CONFIRM_MS);
    return;
  }
  button.disabled = true;
  const result = await api("DELETE", "/api/dlq/" + seg(letter.id));
  if (result.ok) loadDlq();
  else { button.disabled = false; button.after(errorNote(result, "span")); }
}
