/* The live task feed and the per-type counters of the shown project. */

import { $, clear, el, fmtClock } from "./dom.js";
import { state } from "./state.js";

const FEED_MAX = 200;  // rows kept in the feed: enough to scroll back, cheap to render
export const TYPES = ["received", "started", "retried", "succeeded", "failed", "dead"];

let counters = {};

/** A task_event: count it and put it on top of the feed (events of other projects: no). */
export function showTaskEvent(event) {
  if (state.project && event.project_id && event.project_id !== state.project) return;
  counters[event.type] = (counters[event.type] || 0) + 1;
  renderCounters();
  const detail = [];
  if (event.attempt) detail.push("attempt " + event.attempt);
  if (event.exception) detail.push(event.exception + (event.message ? ": " + event.message : ""));
  if (event.runtime_ms !== undefined && event.runtime_ms !== null) detail.push(event.runtime_ms + " ms");
  prepend(el("li", { "data-task-id": event.task_id, "data-type": event.type },
    el("span", { class: "time", text: fmtClock(event.ts || Date.now() / 1000) }),
    el("span", { class: "badge t-" + event.type, text: event.type }),
    el("span", { class: "what", title: detail.join(" · ") },
       el("b", { text: event.task_name || "?" }), " ", detail.join(" · ")),
    el("span", { class: "id", text: (event.task_id || "").slice(0, 8) })));
}

/** A line of the page's own news (a replay, a refusal) in the feed. */
export function feedNote(kind, text) {
  prepend(el("li", { "data-type": kind },
    el("span", { class: "time", text: fmtClock(Date.now() / 1000) }),
    el("span", { class: "badge t-" + (kind === "error" ? "failed" : "retried"), text: kind }),
    el("span", { class: "what", text }), el("span")));
}

/** Empty the feed and the counters (another project was picked). */
export function resetFeed() {
  counters = {};
  clear($("feed"));
  $("feed-count").textContent = "";
  renderCounters();
}

function prepend(row) {
  const feed = $("feed");
  feed.prepend(row);
  while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
  $("feed-count").textContent = feed.children.length + " shown (newest first, max " + FEED_MAX + ")";
}

export function renderCounters() {
  clear($("counters"), TYPES.map((type) => el("div", { class: "counter t-" + type },
    el("b", { text: String(counters[type] || 0) }), type)));
}
