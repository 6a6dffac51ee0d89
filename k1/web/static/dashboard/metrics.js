/* Validation metrics against their targets (cards) and the last hour per minute (charts):
 * GET /api/metrics once, then the `metrics` broadcast every 5 s. Chart is the vendored
 * Chart.js (a classic script, loaded before this module). */

import { setUnmet } from "./banner.js";
import { api, errorNote } from "./api.js";
import { $, clear, el, fmtClock, json } from "./dom.js";

const HOUR_S = 3600;  // the charts show the last hour

let report = null;  // the newest metrics report, its series merged over the hour
const charts = {};

export async function loadMetrics() {
  const result = await api("GET", "/api/metrics");
  if (result.ok) { report = result.data; render(); }
  else clear($("metric-cards"), errorNote(result));
}

/** The broadcast carries the newest minutes only: merge them into the hour loaded. */
export function onMetricsBroadcast(update) {
  const byMinute = new Map((report ? report.series || [] : []).map((p) => [p.t, p]));
  for (const point of update.series || []) byMinute.set(point.t, point);
  const newest = Math.max(...byMinute.keys());
  update.series = [...byMinute.values()].filter((p) => p.t > newest - HOUR_S).sort((a, b) => a.t - b.t);
  report = update;
  render();
}

function verdict(m) {
  return m.met === true ? ["met", " ✓ met"] : m.met === false ? ["unmet", " ✗ not met"] : ["na", " · no data yet"];
}

function render() {
  clear($("metric-cards"), report.metrics.map((m) => el("div", {
    class: "card " + verdict(m)[0], "data-metric": m.name, title: json(m.detail) },
    el("div", { class: "label", text: m.label }),
    el("div", { class: "value", text: m.display }),
    el("div", { class: "target", text: "target " + m.target + verdict(m)[1] }))));
  renderCharts(report.series || []);
  setUnmet(report.metrics.filter((m) => m.met === false));
}

function makeChart(id, datasets, yOptions) {
  return new Chart($(id), {
    type: "line",
    data: { labels: [], datasets: datasets.map((d) => ({ label: d.label, data: [],
      borderColor: d.color, backgroundColor: d.color, borderWidth: 2, pointRadius: 2,
      tension: 0.2, spanGaps: true })) },
    options: { animation: false, responsive: true, maintainAspectRatio: false,
      plugins: { legend: { display: datasets.length > 1, labels: { boxWidth: 10 } } },
      scales: { x: { ticks: { maxTicksLimit: 6 } }, y: Object.assign({ beginAtZero: true }, yOptions) } },
  });
}

function renderCharts(series) {
  if (!charts.throughput) {
    charts.throughput = makeChart("chart-throughput", [
      { label: "succeeded", color: "#1b7f3b" }, { label: "failed", color: "#b3261e" },
      { label: "retried", color: "#c98a00" }]);
    charts.success = makeChart("chart-success", [{ label: "success %", color: "#1d5fbf" }],
      { suggestedMin: 90, max: 100, beginAtZero: false });
    charts.latency = makeChart("chart-latency", [{ label: "p95 ms", color: "#6d28d9" }]);
  }
  const labels = series.map((p) => fmtClock(p.t).slice(0, 5));
  const set = (chart, columns) => {
    chart.data.labels = labels;
    columns.forEach((values, i) => { chart.data.datasets[i].data = values; });
    chart.update("none");
  };
  set(charts.throughput, [series.map((p) => p.succeeded), series.map((p) => p.failed),
                          series.map((p) => p.retried)]);
  set(charts.success, [series.map((p) => {
    const done = p.succeeded + p.failed;
    return done ? Math.round((1000 * p.succeeded) / done) / 10 : null;
  })]);
  set(charts.latency, [series.map((p) => p.latency_p95_ms)]);
}
