/* Schedules: GET/POST /api/scheduler/jobs, PATCH …/<name> (pause, resume), POST …/<name>/run. */

import { api, errorText, seg } from "../api.js";
import { $, badge, el, fmtTime } from "../dom.js";
import { feedNote } from "../feed.js";
import { state } from "../state.js";
import { dataTable, loadPanel } from "../table.js";

const COLUMNS = [
  { head: "name", title: (job) => job.description || "", cell: (job) => [
    el("b", { text: job.name }), job.project_id ? el("div", { class: "note", text: job.project_id }) : null] },
  { head: "task", cell: (job) => job.task },
  { head: "when", cell: (job) => job.cron ? "cron " + job.cron : job.every ? "every " + job.every + " s" : "—" },
  { head: "next fire", cell: (job) => job.enabled ? fmtTime((job.next_runs || [])[0]) : "paused" },
  { head: "last run", cell: (job) => [fmtTime(job.last_run_at), " ",
    job.last_status ? badge(job.last_status) : null] },
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
  if (value("description")) body.description = value("description");
  try {
    body.kwargs = value("kwargs") ? JSON.parse(value("kwargs")) : {};
  } catch (err) { out.textContent = "kwargs: not JSON"; return; }
  if (state.project) body.project_id = state.project;  // the job runs for this project
  const result = await api("POST", "/api/scheduler/jobs", body);
  out.textContent = result.ok ? "added" : errorText(result);
  if (result.ok) { form.reset(); loadSchedules(); }
}
