/* Schedules: GET/POST /api/scheduler/jobs, PATCH …/<name> (pause, resume), POST …/<name>/run. */

import { api, errorText, seg } from "../api.js";
import { $, badge, el, fmtTime } from "../dom.js";
import { feedNote } from "../feed.js";
import { state } from "../state.js";
import { dataTable, loadPanel } from "../table.js";

const timingText = (job) => job.cron ? "cron " + job.cron : job.every ? "every " + job.every + " s" : "—";

const COLUMNS = [
  { head: "name", cell: (job) => [el("b", { text: job.name }),
    job.project_id ? el("div", { class: "note", text: job.project_id }) : null,
    job.error ? el("div", { class: "error", text: job.error }) : null] },
  { head: "task", cell: (job) => job.task },
  { head: "when", title: timingText, cell: (job) => job.description || timingText(job) },
  { head: "next fire", cell: (job) => job.enabled ? fmtTime((job.next_runs || [])[0]) : "paused" },
  { head: "last run", cell: (job) => [fmtTime(job.last_run_at), " ",
    job.last_status ? badge(job.last_status) : null] },
  { head: "on time", title: () => "fires on time / fires due",
    cell: (job) => job.uptime && job.uptime.due ? job.uptime.on_time + " / " + job.uptime.due : "—" },
  { head: "", cell: (job) => badge(job.enabled ? "enabled" : "paused") },
  { head: "", class: "actions", cell: (job) => [
    el("button", { type: "button", text: job.enabled ? "Pause" : "Resume",
      onclick: () => act("PATCH", job.name, "", { enabled: !job.enabled }) }),
    el("button", { type: "button", text: "Run now", onclick: () => act("POST", job.name, "/run") })] },
];

export function loadSchedules() {
  return loadPanel($("schedules-body"), "/api/scheduler/jobs", (data) => dataTable({
    columns: COLUMNS, items: data.jobs, empty: "No schedules yet.",
    rowAttrs: (job) => ({ "data-job": job.name }) }));
}

async function act(method, name, suffix, body) {
  const result = await api(method, "/api/scheduler/jobs/" + seg(name) + suffix, body);
  if (!result.ok) feedNote("error", name + ": " + errorText(result));
  else if (suffix === "/run") feedNote("schedule", "ran " + name + " now");
  loadSchedules();
}

/** The "Add a schedule" form's submit handler. */
export async function addSchedule(event) {
  event.preventDefault();
  const form = event.currentTarget;
  const out = $("schedule-add-result");
  const value = (name) => form.elements[name].value.trim();
  const body = { name: value("name"), task: value("task"), enabled: true };
  if (value("cron")) body.cron = value("cron");
  if (value("every")) body.every = Number(value("every"));
  if (value("timezone")) body.timezone = value("timezone");
  try {
    body.kwargs = value("kwargs") ? JSON.parse(value("kwargs")) : {};
  } catch (err) { out.textContent = "kwargs: not JSON"; return; }
  if (state.project) body.project_id = state.project;  // the job runs for this project
  const result = await api("POST", "/api/scheduler/jobs", body);
  out.textContent = result.ok ? "added" : errorText(result);
  if (result.ok) { form.reset(); loadSchedules(); }
}
