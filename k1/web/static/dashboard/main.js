/* K1 dashboard: ES modules, no build step (loaded by templates/dashboard.html).
 *
 * Data comes from the REST API (api.js, the bearer token from sessionStorage) and from
 * Socket.IO (live.js). Every list panel loads through table.js; each panel is a module
 * under panels/. On every (re)connect the page subscribes again and reloads every panel,
 * so a server restart loses nothing but the live feed's history. */

import { api, errorText, onUnauthorized } from "./api.js";
import { loadHealth, renderBanner } from "./banner.js";
import { $, debounce, json } from "./dom.js";
import { feedNote, renderCounters, resetFeed, showTaskEvent } from "./feed.js";
import { connect, disconnect, serverNow, subscribe, unsubscribe } from "./live.js";
import { loadMetrics, onMetricsBroadcast } from "./metrics.js";
import { loadBreakers } from "./panels/breakers.js";
import { loadDlq } from "./panels/dlq.js";
import { loadQueues, loadWorkers, watchFleet } from "./panels/fleet.js";
import { loadLimits } from "./panels/limits.js";
import { addSchedule, loadSchedules } from "./panels/schedules.js";
import { initTasks, loadTasks, onTaskEvent } from "./panels/tasks.js";
import { loadWorkflows } from "./panels/workflows.js";
import { adopt, exchangeLinkToken, forget, savedToken, setProject, showSignIn, takeLinkToken }
  from "./session.js";
import { state } from "./state.js";

const HEALTH_POLL_MS = 10000;   // the banner notices a dependency going down within 10 s
const RELOAD_DEBOUNCE_MS = 300;  // a burst of events reloads a panel once
const LIMITS_POLL_MS = 5000;     // live use of the limits, while their tab is shown
const MAX_TIMER_MS = 2 ** 31 - 1;  // setTimeout fires at once beyond this (24.8 days)

// Server events: what each one changes on the page (every one also measures latency).
const HANDLERS = {
  task_event: (event) => {
    showTaskEvent(event);
    onTaskEvent(event);
    if (event.type === "dead") debounce("dlq", loadDlq, RELOAD_DEBOUNCE_MS);
  },
  task_completed: () => {},  // the succeeded task_event shows it; this one only measures latency
  dlq_changed: () => debounce("dlq", loadDlq, RELOAD_DEBOUNCE_MS),
  breaker_state: (event) => {
    feedNote("breaker", "breaker " + event.name + " " + event.type);
    debounce("breakers", loadBreakers, RELOAD_DEBOUNCE_MS);
  },
  schedule_fired: () => debounce("schedules", loadSchedules, RELOAD_DEBOUNCE_MS),
  workflow_event: () => debounce("workflows", loadWorkflows, RELOAD_DEBOUNCE_MS),
  limit_state: (event) => {
    feedNote("limit", "limit " + event.name + (event.key ? " [" + event.key + "]" : "") + " "
      + event.type + " (" + event.running + " of " + event.concurrency + " running)");
    debounce("limits", loadLimits, RELOAD_DEBOUNCE_MS);
  },
  metrics: onMetricsBroadcast,
  error: (refusal) => {
    // action "connection": the server is closing this connection (token expired or revoked)
    if (refusal && refusal.action === "connection") {
      signOut("The server closed the live connection: " + refusal.error + ". Sign in again.");
      return;
    }
    feedNote("error", "server refused " + ((refusal && refusal.action) || "a request")
      + ": " + ((refusal && refusal.error) || json(refusal)));
  },
};

let expiryTimer = null;

// Sign out when the token expires, saying so, rather than failing request by request.
function watchExpiry() {
  clearTimeout(expiryTimer);
  if (!state.claims || !state.claims.exp) return;
  const left = state.claims.exp * 1000 - serverNow();
  if (left <= 0) { signOut("Your token expired; sign in again."); return; }
  expiryTimer = setTimeout(watchExpiry, Math.min(left, MAX_TIMER_MS));
}

function refreshAll() {
  if (!state.token) return;
  loadTasks();
  loadHealth();
  loadMetrics();
  loadDlq();
  loadBreakers();
  loadSchedules();
  loadWorkflows();
  loadLimits();
  loadQueues();
  loadWorkers();
}

function signIn(token) {
  const refused = adopt(token);
  if (refused) { showSignIn(refused); return; }
  connect({
    onConnect: refreshAll,  // resynchronise after a restart or a network cut
    onRefused: (why) => signOut("The live connection was refused: " + why
      + ". Your token may have expired; sign in again."),
    handlers: HANDLERS,
  });
  watchExpiry();
  refreshAll();
}

function signOut(message) {
  clearTimeout(expiryTimer);
  disconnect();
  forget(message);
  renderBanner();
}

async function signInWithLink() {
  const linkToken = takeLinkToken();
  if (linkToken === null) return false;
  showSignIn("Signing in with the link…");
  const exchanged = await exchangeLinkToken(linkToken);
  if (exchanged.token) signIn(exchanged.token);
  else { if (state.token) signOut(exchanged.error); else showSignIn(exchanged.error); }
  return true;
}

function changeProject(value) {
  const previous = state.project;
  if (!setProject(value)) return;
  unsubscribe(previous);
  resetFeed();
  subscribe();
  refreshAll();
}

async function runTask(event) {
  event.preventDefault();
  const out = $("run-task-result");
  let kwargs;
  try { kwargs = JSON.parse($("run-task-kwargs").value || "{}"); } catch (err) {
    out.textContent = "kwargs: not JSON"; return;
  }
  if (!state.project) { out.textContent = "pick a project first"; return; }
  const result = await api("POST", "/api/tasks", { task: $("run-task-name").value.trim(),
    kwargs, project_id: state.project });
  out.textContent = result.ok ? "started " + result.data.task_id.slice(0, 8) : errorText(result);
}

function selectTab(name) {
  for (const button of document.querySelectorAll(".tabs button")) {
    button.setAttribute("aria-selected", String(button.dataset.tab === name));
  }
  for (const panel of document.querySelectorAll(".tab")) panel.hidden = panel.id !== "tab-" + name;
  if (name === "limits" && state.token) loadLimits();  // its use moved on while hidden
}

// Slots taken and freed below a limit send no event: poll, but only a panel someone sees.
function pollLimits() {
  if (state.token && !$("tab-limits").hidden && !document.hidden) loadLimits();
}

// A module runs once the document is parsed: the elements below exist.
onUnauthorized(signOut);
$("sign-in-form").addEventListener("submit", (e) => {
  e.preventDefault();
  signIn($("token-input").value.trim());
});
$("sign-out").addEventListener("click", () => signOut(""));
$("project-select").addEventListener("change", (e) => changeProject(e.target.value));
$("project-input").addEventListener("change", (e) => changeProject(e.target.value));
$("dlq-filters").addEventListener("submit", (e) => { e.preventDefault(); loadDlq(); });
$("schedule-add").addEventListener("submit", addSchedule);
$("run-task").addEventListener("submit", runTask);
initTasks();
for (const button of document.querySelectorAll(".tabs button")) {
  button.addEventListener("click", () => selectTab(button.dataset.tab));
}
window.addEventListener("hashchange", signInWithLink);  // a link opened in this tab again
renderCounters();
loadHealth();
setInterval(loadHealth, HEALTH_POLL_MS);
setInterval(pollLimits, LIMITS_POLL_MS);
watchFleet();
if (!(await signInWithLink())) {
  const saved = savedToken();
  if (saved) signIn(saved); else showSignIn("");
}
