/* Queues and Workers: the fleet at a glance (GET /api/queues, GET /api/workers).
 *
 * Queue depths and worker heartbeats change with no event saying so: each panel is
 * polled while its tab is shown (and the page is), as the Limits panel is. Polling is
 * cheap for the fleet: the server answers workers from heartbeats kept in Redis and one
 * cached inspect broadcast per few seconds, shared by every page (k1/flow/fleet.py).
 * main.js loads both on sign-in and reconnects and calls watchFleet() once. */

import { $, badge, el, note } from "../dom.js";
import { dataTable, loadPanel } from "../table.js";
import { state } from "../state.js";

const FLEET_POLL_MS = 3000;  // a depth or a heartbeat on the page is at most this old
const TASKS_SHOWN = 10;      // active tasks per worker on the page

const dash = (value) => value === null || value === undefined ? "—" : value;

/** 75.4 -> "1 min 15 s"; seconds below a minute with one decimal. */
function seconds(value) {
  if (value === null || value === undefined) return "—";
  if (value < 60) return value.toFixed(1) + " s";
  const minutes = Math.floor(value / 60);
  if (minutes < 60) return minutes + " min " + Math.floor(value % 60) + " s";
  return Math.floor(minutes / 60) + " h " + (minutes % 60) + " min";
}

const perMinute = (rate) => (rate * 60).toFixed(1);

const QUEUE_COLUMNS = [
  { head: "queue", cell: (q) => [el("b", { text: q.queue }), q.paused ? " " : null, q.paused ? badge("paused") : null] },
  { head: "waiting", cell: (q) => String(q.depth) },
  { head: "oldest waiting", cell: (q) => seconds(q.oldest_age_s) },
  { head: "in / min", cell: (q) => perMinute(q.enqueue_rate), title: () => "published, over the last minute" },
  { head: "out / min", cell: (q) => perMinute(q.dequeue_rate), title: () => "fetched by workers, over the last minute" },
];

export function loadQueues() {
  return loadPanel($("queues-body"), "/api/queues", (data) => dataTable({
    columns: QUEUE_COLUMNS, items: data.queues, empty: "No queue is configured or consumed.",
    rowAttrs: (q) => ({ "data-queue": q.queue, "data-depth": q.depth, "data-paused": String(q.paused) }) }));
}

function activeItem(task) {
  return el("li", { "data-task-id": task.id },
    el("code", { text: task.id.slice(0, 8), title: task.id }), " ",
    el("span", { text: dash(task.name) }), " ",
    el("span", { class: "note", text: seconds(task.runtime_s) }));
}

function activeCell(worker) {
  if (!worker.active.length) {
    return note(worker.active_count ? worker.active_count + " running (not yours to see)" : "idle");
  }
  const hidden = worker.active.length - TASKS_SHOWN;
  return [el("ul", { class: "usage" }, worker.active.slice(0, TASKS_SHOWN).map(activeItem)),
    hidden > 0 ? el("div", { class: "note", text: "and " + hidden + " more" }) : null];
}

const WORKER_COLUMNS = [
  { head: "worker", cell: (w) => el("b", { text: w.hostname }) },
  { head: "pool", cell: (w) => w.pool === null ? "—" : w.pool + ", concurrency " + dash(w.concurrency) },
  { head: "queues", cell: (w) => w.queues ? w.queues.join(", ") : "—" },
  { head: "processed", cell: (w) => String(dash(w.processed)) },
  { head: "last heartbeat", cell: (w) => seconds(w.heartbeat_age_s) + " ago" },
  { head: "running now", cell: activeCell },
];

export function loadWorkers() {
  return loadPanel($("workers-body"), "/api/workers", (data) => dataTable({
    columns: WORKER_COLUMNS, items: data.workers, empty: "No worker is online.",
    rowAttrs: (w) => ({ "data-worker": w.hostname, "data-active-count": w.active_count }) }));
}

const LOADERS = { queues: loadQueues, workers: loadWorkers };

function shown(tab) {
  return state.token && !document.hidden && !$("tab-" + tab).hidden;
}

/** Load a fleet tab when it is opened, and poll it while it is shown. */
export function watchFleet() {
  for (const [tab, load] of Object.entries(LOADERS)) {
    const button = document.querySelector('.tabs button[data-tab="' + tab + '"]');
    button.addEventListener("click", () => { if (shown(tab)) load(); });
    setInterval(() => { if (shown(tab)) load(); }, FLEET_POLL_MS);
  }
}
