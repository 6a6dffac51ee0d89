/* Tasks: the history search (GET /api/tasks: q, filters, keyset pages, newest first) and a
 * task's page (GET /api/tasks/<id>: state, arguments, result or error, its attempts as a
 * timeline, its links), with "Run again" (POST /api/tasks: the same rules as any start)
 * and, for its dead letter, "Replay" and "Edit and replay" (POST /api/dlq/<id>/replay).
 *
 * A task's page has an address, #task=<id>: ids in the list, the DLQ panel and the page
 * itself are links, and the browser's back button returns to the results. */

import { api, errorNote, errorText, seg } from "../api.js";
import { $, badge, clear, debounce, el, fmtTime, json, note } from "../dom.js";
import { state } from "../state.js";
import { loadPages } from "../table.js";
import { editReplayForm } from "./dlq.js";

const PAGE_SIZE = 50;
const PAGE_PARAM = "task";           // #task=<id>
const RELOAD_MS = 1000;              // a task's events come in bursts; history lags them
// Until history has a task's whole story the page looks again: a second after it heard of
// the task, then twice as long each time it hears nothing, up to every 30 s (a task that
// waits in a queue for hours costs a request every 30 s, not every second). An event of
// the task starts again from a second; a final state stops it once history has the runs
// or after SETTLE_LOOKS more looks (1 + 2 + 4 + 8 + 16 s: history may be away).
const POLL_FIRST_MS = 1000;
const POLL_MAX_MS = 30000;
const SETTLE_LOOKS = 5;
const FINAL = ["SUCCESS", "FAILURE", "REVOKED"];
const RUN_AGAIN = ["FAILURE", "REVOKED"];  // states a task may be started again from
const FILTERS = ["q", "project_id", "task", "state", "worker"];

const taskLink = (id, text) => el("a", { href: "#" + PAGE_PARAM + "=" + seg(id),
  class: "task-link", title: id, text: text || id });
const ms = (value) => value === null || value === undefined ? "—" : Math.round(value) + " ms";

const COLUMNS = [
  { head: "created", cell: (t) => fmtTime(t.created_at) },
  { head: "task id", cell: (t) => taskLink(t.task_id, String(t.task_id).slice(0, 8)) },
  { head: "task", cell: (t) => t.task_name },
  { head: "state", cell: (t) => badge(t.state) },
  { head: "project", cell: (t) => t.project_id },
  { head: "worker", cell: (t) => t.worker },
  { head: "attempts", cell: (t) => t.attempts },
  { head: "runtime", cell: (t) => ms(t.runtime_ms) },
];
const rowAttrs = (t) => ({ "data-task-id": t.task_id, "data-state": t.state });

function query(cursor) {
  const form = $("task-search");
  const params = new URLSearchParams();
  for (const name of FILTERS) {
    const value = form.elements[name].value.trim();
    if (value) params.set(name, value);
  }
  for (const name of ["since", "until"]) {
    const value = form.elements[name].value;
    if (value) params.set(name, new Date(value).toISOString());
  }
  params.set("limit", String(PAGE_SIZE));
  if (cursor) params.set("cursor", cursor);
  return "/api/tasks?" + params;
}

/** The id in the address (#task=<id>), or null. */
function addressedTask() {
  return new URLSearchParams(location.hash.slice(1)).get(PAGE_PARAM);
}

let polling = freshPoll(null);

function freshPoll(taskId) {
  return { taskId, delayMs: POLL_FIRST_MS, finalLooks: 0 };
}

/** Look at the shown task again later, or stop (`settled`: history has its whole story).
 * #task-page's data-poll-ms is the wait before the next look; absent: no more looks. */
function lookAgain(taskId, final, settled) {
  if (polling.taskId !== taskId) polling = freshPoll(taskId);
  const page = $("task-page");
  if (settled || (final && ++polling.finalLooks > SETTLE_LOOKS)) {
    delete page.dataset.pollMs;
    return;
  }
  page.dataset.pollMs = String(polling.delayMs);
  debounce("task-page", () => { if (addressedTask() === taskId) showTask(taskId); }, polling.delayMs);
  polling.delayMs = Math.min(polling.delayMs * 2, POLL_MAX_MS);
}

/** The search results, or the addressed task's page. */
export function loadTasks() {
  const taskId = addressedTask();
  $("task-page").hidden = taskId === null;
  if (taskId === null) delete $("task-page").dataset.pollMs;
  $("tasks-results").hidden = taskId !== null;
  if (taskId !== null) return showTask(taskId);
  return loadPages($("tasks-body"), query, { id: "tasks-table", columns: COLUMNS, rowAttrs,
    empty: "No task in history matches." });
}

/** A task_event: the shown task's page follows its task (history a moment later), and
 * looks again from a second on. */
export function onTaskEvent(event) {
  if (event.task_id && event.task_id === addressedTask()) {
    polling = freshPoll(event.task_id);
    debounce("task-page", () => showTask(event.task_id), RELOAD_MS);
  }
}

/** Wire the search form and the #task= addresses (once, at start). */
export function initTasks() {
  $("task-search").addEventListener("submit", (e) => {
    e.preventDefault();
    if (addressedTask() !== null) history.pushState(null, "", location.pathname + location.search);
    loadTasks();
  });
  window.addEventListener("hashchange", () => { if (state.token) loadTasks(); });
}

async function showTask(taskId) {
  const page = $("task-page");
  const result = await api("GET", "/api/tasks/" + seg(taskId));
  if (addressedTask() !== taskId) return;  // the user moved on meanwhile
  const back = el("button", { type: "button", class: "back", text: "← Results",
    onclick: () => { location.hash = ""; } });
  if (!result.ok) { clear(page, back, errorNote(result)); return; }
  const task = result.data;
  // Until history has the whole story (its recorder writes a moment after the worker), the
  // page looks again: the events of the task stop before history catches up.
  const final = FINAL.includes(task.state);
  lookAgain(taskId, final, final && task.attempts.length > 0
    && task.attempts.every((a) => a.outcome !== "running"));
  const letter = task.links.dead_letter_id ? await letterOf(task.links.dead_letter_id) : null;
  const origin = task.links.replay_of ? await letterOf(task.links.replay_of) : null;
  if (addressedTask() !== taskId) return;
  clear(page, el("div", { class: "task-head", "data-task-id": task.task_id, "data-state": task.state },
    back, el("h3", { text: task.task }), badge(task.state), runAgain(task)),
  el("div", { class: "stats" }, [
    ["id", task.task_id], ["project", task.project_id], ["user", task.user_id],
    ["queue", task.queue], ["submitted", task.submitted_at && fmtTime(task.submitted_at)],
    ["done", task.date_done && fmtTime(task.date_done)]]
    .filter(([, value]) => value !== null && value !== undefined && value !== "")
    .map(([label, value]) => el("span", {}, label + ": ", el("code", { text: String(value) })))),
  linksOf(task, letter, origin),
  el("h3", { text: "Attempts" }), timeline(task.attempts),
  el("h3", { text: "Arguments" }),
  el("pre", { class: "arguments", text: json({ args: task.args, kwargs: task.kwargs }) }),
  outcome(task, letter),
  letter ? letterSection(letter, task) : null);
}

async function letterOf(letterId) {
  const result = await api("GET", "/api/dlq/" + seg(letterId));
  return result.ok ? result.data : { id: letterId, error: errorText(result) };
}

function linksOf(task, letter, origin) {
  const links = task.links;
  const items = [];
  if (links.replay_of) {
    const edited = links.replay_edited;
    items.push(el("li", { class: "replay-of", "data-letter-id": links.replay_of },
      edited ? el("span", { class: "badge s-edited", text: "edited replay" }) : "replay",
      " of dead letter #" + links.replay_of,
      origin && origin.task_id ? [" of task ", taskLink(origin.task_id)] : null,
      edited ? " (changed: " + edited.join(", ") + ")" : null,
      origin && origin.error ? el("span", { class: "error", text: " " + origin.error }) : null));
    if (edited && origin && !origin.error) {
      items.push(el("li", {}, "original arguments: ",
        el("pre", { class: "original-arguments", text: json({ args: origin.args, kwargs: origin.kwargs }) })));
    }
  }
  if (links.dead_letter_id) {
    items.push(el("li", { class: "dead-letter" }, "dead letter #" + links.dead_letter_id,
      letter && letter.status ? [" ", badge(letter.status)] : null,
      letter && letter.replay_task_id ? [" replayed as ", taskLink(letter.replay_task_id)] : null));
  }
  if (links.workflow_id) {
    items.push(el("li", {}, "workflow ", el("code", { text: links.workflow_id }),
      links.conductor_task_id ? [" Conductor task ", el("code", { text: links.conductor_task_id })] : null));
  }
  if (links.schedule) items.push(el("li", {}, "sent by schedule ", el("code", { text: links.schedule })));
  return items.length ? el("ul", { class: "task-links" }, items) : null;
}

/** The runs in order, each a bar on one time axis (start of the first to end of the last). */
function timeline(attempts) {
  if (!attempts.length) return note("No run recorded yet (history follows the workers by a moment).");
  const at = (value) => (value ? new Date(value).getTime() : null);
  const starts = attempts.map((a) => at(a.received_at) ?? at(a.started_at)).filter((v) => v !== null);
  const ends = attempts.map((a) => at(a.ended_at) ?? Date.now());
  const from = Math.min(...starts, ...ends);
  const span = Math.max(Math.max(...ends) - from, 1);
  return el("ol", { class: "timeline" }, attempts.map((a) => {
    const start = at(a.received_at) ?? at(a.started_at) ?? from;
    const end = at(a.ended_at) ?? Date.now();
    const bar = el("div", { class: "bar o-" + a.outcome });
    // CSSOM, not a style attribute: the page's CSP allows no inline styles
    bar.style.marginLeft = ((start - from) / span) * 100 + "%";
    bar.style.width = Math.max(((end - start) / span) * 100, 0.5) + "%";
    return el("li", { "data-run": a.run, "data-outcome": a.outcome },
      el("div", { class: "run" }, el("b", { text: "run " + a.run }), " attempt " + a.attempt, " ",
        badge(a.outcome, "o-"), " ", el("code", { text: a.worker || "?" })),
      el("div", { class: "track" }, bar),
      el("div", { class: "note" }, "started " + fmtTime(a.started_at) + " · ended "
        + fmtTime(a.ended_at) + " · " + ms(a.runtime_ms)),
      a.exception ? el("div", { class: "error", text: a.exception + (a.message ? ": " + a.message : "") }) : null);
  }));
}

function outcome(task, letter) {
  if (task.state === "SUCCESS") return [el("h3", { text: "Result" }), el("pre", { class: "result", text: json(task.result) })];
  if (!task.error && !(letter && letter.traceback)) return null;
  const error = task.error ? task.error.type + ": " + task.error.message : "";
  return [el("h3", { text: "Error" }), error ? el("p", { class: "error", text: error }) : null,
    letter && letter.traceback ? el("pre", { class: "traceback", text: letter.traceback }) : null];
}

/** "Run again": a new task with the same arguments, where the page can tell it may be
 * (a failed or revoked task of a project the token holds, its arguments whole); the
 * server checks the rest (a public task, or an operator-only one for an operator). */
function runAgain(task) {
  const projects = (state.claims && state.claims.projects) || [];
  // history keeps 1,000 characters of each: longer arguments are a cut string, not JSON
  const whole = Array.isArray(task.args) && task.kwargs && typeof task.kwargs === "object";
  if (!RUN_AGAIN.includes(task.state) || !task.project_id || !whole
      || !(projects.includes("*") || projects.includes(task.project_id))) return null;
  const out = el("span", { class: "note" });
  const button = el("button", { type: "button", text: "Run again", "data-action": "run-again",
    onclick: async () => {
      button.disabled = true;
      const result = await api("POST", "/api/tasks", { task: task.task, args: task.args,
        kwargs: task.kwargs, project_id: task.project_id });
      if (result.ok) { location.hash = PAGE_PARAM + "=" + seg(result.data.task_id); return; }
      button.disabled = false;
      out.textContent = " " + errorText(result);
    } });
  return el("span", { class: "run-again" }, button, out);
}

/** The dead letter's replay: as it was, or with edited arguments; both open the new task. */
function letterSection(letter, task) {
  if (letter.error) return el("p", { class: "error", text: "dead letter #" + letter.id + ": " + letter.error });
  if (letter.status !== "dead") return null;
  const open = (answer) => { location.hash = PAGE_PARAM + "=" + seg(answer.replay_task_id); };
  const out = el("span", { class: "note" });
  const replay = el("button", { type: "button", class: "primary", text: "Replay",
    "data-action": "replay", onclick: async () => {
      replay.disabled = true;
      const result = await api("POST", "/api/dlq/" + seg(letter.id) + "/replay", {});
      if (result.ok) { open(result.data); return; }
      replay.disabled = false;
      out.textContent = " " + errorText(result);
    } });
  return el("section", { class: "letter-actions", "data-letter-id": letter.id, "data-task-id": task.task_id },
    el("h3", { text: "Dead letter #" + letter.id }), el("div", {}, replay, out),
    editReplayForm(letter, open));
}
