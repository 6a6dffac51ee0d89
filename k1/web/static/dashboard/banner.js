/* The health banner: dependencies (GET /api/health, no token needed), the live connection
 * and every validation metric off target, in one line at the top. */

import { $ } from "./dom.js";
import { state } from "./state.js";

const TITLES = { ok: "Healthy", warn: "Degraded", bad: "Down", unknown: "Checking…" };
const DEPENDENCIES = ["redis", "database", "conductor"];

let health = null;  // the last /api/health answer; {unreachable: true} when none came
let unmet = [];     // metrics off target: [{label, display, target}]

export async function loadHealth() {
  try {
    const response = await fetch("/api/health");
    health = await response.json();
  } catch (err) {
    health = { unreachable: true };
  }
  renderBanner();
}

/** The metrics panel reports the metrics that miss their target. */
export function setUnmet(metrics) {
  unmet = metrics;
  renderBanner();
}

export function renderBanner() {
  const problems = [];
  let level = "ok";
  const worsen = (to) => { if (level === "ok") level = to; };
  if (!health) level = "unknown";
  else if (health.unreachable) { level = "bad"; problems.push("K1 web is unreachable"); }
  else {
    for (const name of DEPENDENCIES) {
      if (health[name] && health[name].status === "down") { level = "bad"; problems.push(name + " down"); }
    }
  }
  if (state.token && !state.connected) {
    worsen("warn");
    problems.push("live updates disconnected, reconnecting");
  }
  for (const m of unmet) {
    worsen("warn");
    problems.push(m.label + " " + m.display + " (target " + m.target + ")");
  }
  $("banner").className = "banner " + level;
  $("banner-title").textContent = TITLES[level];
  $("banner-detail").textContent = problems.length ? problems.join(" · ")
    : level === "ok" ? "all dependencies up, every metric within target" : "";
}
