/* Workflows: GET /api/workflows (definitions and recent runs), POST …/<name>/start. */

import { api, errorText, seg } from "../api.js";
import { $, badge, debounce, el, fmtTime } from "../dom.js";
import { state } from "../state.js";
import { dataTable, loadPanel } from "../table.js";

const RUNS_SHOWN = 30;

const DEFINITIONS = [
  { head: "workflow", title: (d) => d.description || "", cell: (d) => el("b", { text: d.name }) },
  { head: "version", cell: (d) => d.version },
  { head: "registered", cell: (d) => d.registered_versions ? d.registered_versions.join(", ") || "no" : "—" },
  { head: "input (JSON)", cell: (d) => el("input", { type: "text", value: "{}", "aria-label": "input for " + d.name }) },
  { head: "", class: "actions", cell: (d) => [
    el("button", { type: "button", text: "Start", onclick: (e) => start(d.name, e.currentTarget.closest("tr")) }),
    el("span", { class: "note" })] },
];

const RUNS = [
  { head: "run", title: (x) => x.workflow_id, cell: (x) => el("code", { text: String(x.workflow_id).slice(0, 12) }) },
  { head: "workflow", cell: (x) => (x.name || "") + (x.version ? " v" + x.version : "") },
  { head: "status", cell: (x) => badge(x.status || "unknown") },
  { head: "project", cell: (x) => x.project_id },
  { head: "started", cell: (x) => fmtTime(x.started_at) },
];

export function loadWorkflows() {
  return loadPanel($("workflows-body"), "/api/workflows", (data) => [
    el("h3", { text: "Definitions" }),
    dataTable({ columns: DEFINITIONS, items: data.definitions, empty: "No workflow definitions.",
                rowAttrs: (d) => ({ "data-workflow": d.name }) }),
    el("h3", { text: "Recent runs" }),
    dataTable({ columns: RUNS, items: data.executions.slice(0, RUNS_SHOWN), empty: "No recent runs.",
                rowAttrs: (x) => ({ "data-workflow-id": x.workflow_id }) })]);
}

async function start(name, row) {
  const out = row.querySelector(".note");
  let input;
  try { input = JSON.parse(row.querySelector("input").value || "{}"); } catch (err) {
    out.textContent = "input: not JSON"; return;
  }
  const result = await api("POST", "/api/workflows/" + seg(name) + "/start",
                           { input, project_id: state.project });
  out.textContent = !result.ok ? errorText(result)
    : result.data.workflow_id ? "started " + result.data.workflow_id
    : "Conductor unreachable: the start is queued as task " + result.data.task_id;
  if (result.ok) debounce("workflows", loadWorkflows, 500);
}
