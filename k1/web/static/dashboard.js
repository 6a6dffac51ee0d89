/* K1 dashboard: plain JS, no build step.
 *
 * Data comes from the REST API (bearer token from sessionStorage) and Socket.IO
 * (task_event, task_completed, dlq_changed, breaker_state, schedule_fired,
 * workflow_event, metrics). Text from the server is only ever put in the page with
 * textContent (the el() helper), never innerHTML. On every (re)connect the page
 * subscribes again and reloads its panels from the API, so a server restart loses
 * nothing but the live feed's history.
 */
(function () {
  "use strict";

  const TOKEN_KEY = "k1.token";
  const PROJECT_KEY = "k1.project";
  const FEED_MAX = 200;             // rows kept in the live feed
  const LATENCY_REPORT_MS = 5000;   // how often measured delivery latencies are reported
  const HEALTH_POLL_MS = 10000;
  const TYPES = ["received", "started", "retried", "succeeded", "failed", "dead"];

  const state = {
    token: null, claims: null, project: null, socket: null, clockOffsetMs: 0,
    latencySamples: [], counters: {}, metrics: null, health: null, connected: false,
    charts: {}, dlqCursor: null,
  };

  // ---- DOM helpers --------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function clear(node, ...children) { node.replaceChildren(...children); return node; }

  function fmtTime(value) {
    if (value === null || value === undefined || value === "") return "—";
    const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    if (Number.isNaN(date.getTime())) return String(value);
    return date.toLocaleString([], { month: "short", day: "2-digit", hour: "2-digit",
                                     minute: "2-digit", second: "2-digit", hour12: false });
  }

  function fmtClock(ts) {
    return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
  }

  function json(value) {
    try { return JSON.stringify(value, null, 2); } catch (e) { return String(value); }
  }

  function unavailable(text) { return el("p", { class: "unavailable", text }); }

  // ---- token and API ------------------------------------------------------------------
  function decodeClaims(token) {
    const part = token.split(".")[1];
    if (!part) throw new Error("not a token");
    const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
    const claims = JSON.parse(decodeURIComponent(Array.from(atob(b64),
      (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join("")));
    if (!claims.sub || !Array.isArray(claims.projects)) throw new Error("not a K1 token");
    return claims;
  }

  async function api(method, path, body) {
    const init = { method, headers: { Authorization: "Bearer " + state.token } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      return { status: 0, ok: false, data: { error: "network error", detail: String(err) } };
    }
    let data = null;
    try { data = await response.json(); } catch (e) { data = null; }
    if (response.status === 401) signOut("Your token was refused (" +
      ((data && (data.detail || data.error)) || "401") + "). Sign in again.");
    return { status: response.status, ok: response.ok, data };
  }

  function errorText(result) {
    const d = result.data || {};
    const detail = typeof d.detail === "string" ? d.detail : d.detail ? json(d.detail) : "";
    return (d.error || "HTTP " + result.status) + (detail ? ": " + detail : "");
  }

  // ---- sign in / out ------------------------------------------------------------------
  function showSignIn(message) {
    $("app").hidden = true;
    $("sign-in").hidden = false;
    $("sign-out").hidden = true;
    $("project-select").hidden = true;
    $("project-input").hidden = true;
    $("whoami").textContent = "";
    $("sign-in-error").textContent = message || "";
  }

  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    state.token = null;
    if (state.socket) { state.socket.disconnect(); state.socket = null; }
    setConnection(false);
    showSignIn(message);
  }

  function signIn(token) {
    let claims;
    try { claims = decodeClaims(token); } catch (err) {
      showSignIn("That does not look like a K1 token: " + err.message);
      return;
    }
    if (claims.exp && claims.exp * 1000 < Date.now()) {
      showSignIn("That token has expired; create a new one.");
      return;
    }
    state.token = token;
    state.claims = claims;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("sign-in").hidden = true;
    $("app").hidden = false;
    $("sign-out").hidden = false;
    $("whoami").textContent = claims.sub;
    setupProjectPicker();
    connectSocket();
    refreshAll();
  }

  function setupProjectPicker() {
    const projects = state.claims.projects;
    const operator = projects.includes("*");
    const saved = sessionStorage.getItem(PROJECT_KEY);
    const select = $("project-select");
    const input = $("project-input");
    if (operator) {
      select.hidden = true;
      input.hidden = false;
      input.value = saved || "";
      state.project = input.value.trim() || null;
    } else {
      input.hidden = true;
      select.hidden = false;
      clear(select, ...projects.map((p) => el("option", { value: p, text: p })));
      state.project = projects.includes(saved) ? saved : projects[0];
      select.value = state.project;
    }
  }

  function changeProject(project) {
    project = (project || "").trim() || null;
    if (project === state.project) return;
    if (state.socket && state.connected && state.project) {
      state.socket.emit("unsubscribe", { project_id: state.project });
    }
    state.project = project;
    if (project) sessionStorage.setItem(PROJECT_KEY, project);
    state.counters = {};
    clear($("feed"));
    renderCounters();
    subscribe();
    refreshAll();
  }

  // ---- Socket.IO ----------------------------------------------------------------------
  function setConnection(on) {
    state.connected = on;
    const node = $("connection");
    node.textContent = on ? "live" : "offline";
    node.className = "connection " + (on ? "on" : "off");
    renderBanner();
  }

  function connectSocket() {
    if (state.socket) state.socket.disconnect();
    const socket = io({ auth: { token: state.token }, transports: ["websocket", "polling"],
                        reconnectionDelayMax: 5000 });
    state.socket = socket;
    socket.on("connect", () => {
      setConnection(true);
      syncClock();
      subscribe();
      refreshAll();   // resynchronise after a restart or a network cut
    });
    socket.on("disconnect", () => setConnection(false));
    socket.on("connect_error", (err) => {
      setConnection(false);
      if (!socket.active) {  // refused by the server (token), not a network problem
        signOut("The live connection was refused: " + (err && err.message) +
                ". Your token may have expired; sign in again.");
      }
    });
    socket.on("error", (payload) => {
      const text = payload && payload.error ? payload.error : json(payload);
      feedNote("error", "server refused " + ((payload && payload.action) || "a request") + ": " + text);
    });
    socket.on("task_event", onTaskEvent);
    socket.on("task_completed", (event) => measure(event));
    socket.on("dlq_changed", (event) => { measure(event); debounce("dlq", loadDlq, 300); });
    socket.on("breaker_state", (event) => {
      measure(event);
      feedNote("breaker", "breaker " + event.name + " " + event.type);
      debounce("breakers", loadBreakers, 300);
    });
    socket.on("schedule_fired", (event) => {
      measure(event);
      debounce("schedules", loadSchedules, 500);
    });
    socket.on("workflow_event", (event) => {
      measure(event);
      debounce("workflows", loadWorkflows, 500);
    });
    socket.on("metrics", onMetricsBroadcast);
  }

  function subscribe() {
    if (state.socket && state.connected && state.project) {
      state.socket.emit("subscribe", { project_id: state.project });
    }
  }

  // The server's clock, NTP style: offset = server - midpoint of the round trip.
  function syncClock() {
    let best = null;
    let left = 3;
    const probe = () => {
      const sent = Date.now();
      state.socket.timeout(5000).emit("clock", {}, (err, reply) => {
        const back = Date.now();
        if (!err && reply && typeof reply.now_ms === "number") {
          const rtt = back - sent;
          if (!best || rtt < best.rtt) best = { rtt, offset: reply.now_ms - (sent + back) / 2 };
          state.clockOffsetMs = best.offset;
        }
        if (--left > 0) probe();
      });
    };
    probe();
  }

  function measure(event) {
    if (!event || typeof event.ts !== "number") return;
    const latency = Date.now() + state.clockOffsetMs - event.ts * 1000;
    if (latency >= 0 && latency < 600000 && state.latencySamples.length < 200) {
      state.latencySamples.push(Math.round(latency * 10) / 10);
    }
  }

  setInterval(() => {
    if (!state.socket || !state.connected || !state.latencySamples.length) return;
    const samples = state.latencySamples.splice(0, state.latencySamples.length);
    state.socket.emit("latency", { samples });
  }, LATENCY_REPORT_MS);

  const timers = {};
  function debounce(key, fn, ms) {
    clearTimeout(timers[key]);
    timers[key] = setTimeout(fn, ms);
  }

  // ---- live feed and counters ---------------------------------------------------------
  function onTaskEvent(event) {
    measure(event);
    if (state.project && event.project_id && event.project_id !== state.project) return;
    state.counters[event.type] = (state.counters[event.type] || 0) + 1;
    renderCounters();
    const detail = [];
    if (event.attempt) detail.push("attempt " + event.attempt);
    if (event.exception) detail.push(event.exception + (event.message ? ": " + event.message : ""));
    if (event.runtime_ms !== undefined && event.runtime_ms !== null) detail.push(event.runtime_ms + " ms");
    const row = el("li", { "data-task-id": event.task_id, "data-type": event.type },
      el("span", { class: "time", text: fmtClock(event.ts || Date.now() / 1000) }),
      el("span", { class: "badge t-" + event.type, text: event.type }),
      el("span", { class: "what", title: detail.join(" · ") },
         el("b", { text: event.task_name || "?" }), " ", detail.join(" · ")),
      el("span", { class: "id", text: (event.task_id || "").slice(0, 8) }));
    prependFeed(row);
    if (event.type === "dead") debounce("dlq", loadDlq, 300);
  }

  function feedNote(kind, text) {
    prependFeed(el("li", { "data-type": kind },
      el("span", { class: "time", text: fmtClock(Date.now() / 1000) }),
      el("span", { class: "badge t-" + (kind === "error" ? "failed" : "retried"), text: kind }),
      el("span", { class: "what", text }), el("span")));
  }

  function prependFeed(row) {
    const feed = $("feed");
    feed.prepend(row);
    while (feed.children.length > FEED_MAX) feed.lastElementChild.remove();
    $("feed-count").textContent = feed.children.length + " shown (newest first, max " + FEED_MAX + ")";
  }

  function renderCounters() {
    clear($("counters"), ...TYPES.map((type) => el("div", { class: "counter t-" + type },
      el("b", { text: String(state.counters[type] || 0) }), type)));
  }

  // ---- health banner and metrics ------------------------------------------------------
  async function loadHealth() {
    try {
      const response = await fetch("/api/health");
      state.health = await response.json();
    } catch (err) {
      state.health = { ok: false, unreachable: true };
    }
    renderBanner();
  }

  function renderBanner() {
    const banner = $("banner");
    const problems = [];
    let level = "ok";
    const health = state.health;
    if (!health) level = "unknown";
    else if (health.unreachable) { level = "bad"; problems.push("K1 web is unreachable"); }
    else {
      for (const name of ["redis", "database", "conductor"]) {
        if (health[name] && health[name].status === "down") {
          level = "bad"; problems.push(name + " down");
        }
      }
    }
    if (state.token && !state.connected) {
      if (level === "ok") level = "warn";
      problems.push("live updates disconnected, reconnecting");
    }
    const unmet = state.metrics ? state.metrics.metrics.filter((m) => m.met === false) : [];
    for (const m of unmet) {
      if (level === "ok") level = "warn";
      problems.push(m.label + " " + m.display + " (target " + m.target + ")");
    }
    const titles = { ok: "Healthy", warn: "Degraded", bad: "Down", unknown: "Checking…" };
    banner.className = "banner " + level;
    $("banner-title").textContent = titles[level];
    $("banner-detail").textContent = problems.length ? problems.join(" · ")
      : level === "ok" ? "all dependencies up, every metric within target" : "";
  }

  async function loadMetrics() {
    const result = await api("GET", "/api/metrics");
    if (result.ok) { state.metrics = result.data; renderMetrics(); }
    else if (result.status === 404) clear($("metric-cards"), unavailable("Metrics not available."));
  }

  // The broadcast (every 5 s) carries the newest minutes only: merge them into the hour.
  function onMetricsBroadcast(report) {
    const previous = state.metrics ? state.metrics.series || [] : [];
    const byMinute = new Map(previous.map((p) => [p.t, p]));
    for (const point of report.series || []) byMinute.set(point.t, point);
    const newest = Math.max(...byMinute.keys());
    report.series = [...byMinute.values()].filter((p) => p.t > newest - 3600)
      .sort((a, b) => a.t - b.t);
    state.metrics = report;
    renderMetrics();
  }

  function renderMetrics() {
    const report = state.metrics;
    if (!report) return;
    clear($("metric-cards"), ...report.metrics.map((m) => el("div", {
      class: "card " + (m.met === true ? "met" : m.met === false ? "unmet" : "na"),
      "data-metric": m.name, title: json(m.detail) },
      el("div", { class: "label", text: m.label }),
      el("div", { class: "value", text: m.display }),
      el("div", { class: "target", text: "target " + m.target +
        (m.met === true ? " ✓ met" : m.met === false ? " ✗ not met" : " · no data yet") }))));
    renderCharts(report.series || []);
    renderBanner();
  }

  function makeChart(id, datasets, yOptions) {
    if (typeof Chart === "undefined") return null;
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
    if (!state.charts.throughput) {
      state.charts.throughput = makeChart("chart-throughput", [
        { label: "succeeded", color: "#1b7f3b" }, { label: "failed", color: "#b3261e" },
        { label: "retried", color: "#c98a00" }]);
      state.charts.success = makeChart("chart-success", [{ label: "success %", color: "#1d5fbf" }],
        { suggestedMin: 90, max: 100, beginAtZero: false });
      state.charts.latency = makeChart("chart-latency", [{ label: "p95 ms", color: "#6d28d9" }]);
    }
    const labels = series.map((p) => fmtClock(p.t).slice(0, 5));
    const set = (chart, columns) => {
      if (!chart) return;
      chart.data.labels = labels;
      columns.forEach((values, i) => { chart.data.datasets[i].data = values; });
      chart.update("none");
    };
    set(state.charts.throughput, [series.map((p) => p.succeeded), series.map((p) => p.failed),
                                  series.map((p) => p.retried)]);
    set(state.charts.success, [series.map((p) => {
      const done = p.succeeded + p.failed;
      return done ? Math.round((1000 * p.succeeded) / done) / 10 : null;
    })]);
    set(state.charts.latency, [series.map((p) => p.latency_p95_ms)]);
  }

  // ---- DLQ ----------------------------------------------------------------------------
  function dlqQuery(cursor) {
    const form = $("dlq-filters");
    const params = new URLSearchParams();
    for (const name of ["task", "exception", "status"]) {
      const value = form.elements[name].value.trim();
      if (value) params.set(name, value);
    }
    const since = form.elements.since.value;
    if (since) params.set("since", new Date(since).toISOString());
    if (state.project) params.set("project_id", state.project);
    params.set("limit", "50");
    if (cursor) params.set("cursor", cursor);
    return params.toString();
  }

  async function loadDlq(more) {
    const body = $("dlq-body");
    const [list, stats] = await Promise.all([
      api("GET", "/api/dlq?" + dlqQuery(more ? state.dlqCursor : null)),
      more ? Promise.resolve(null) : api("GET", "/api/dlq/stats")]);
    if (stats) renderDlqStats(stats);
    if (list.status === 404) { clear(body, unavailable("Dead-letter queue not available on this server.")); return; }
    if (!list.ok) { clear(body, el("p", { class: "error", text: errorText(list) })); return; }
    const items = list.data.items || [];
    state.dlqCursor = list.data.next_cursor || null;
    let tbody = body.querySelector("tbody");
    if (!more || !tbody) {
      tbody = el("tbody");
      clear(body, el("table", { id: "dlq-table" },
        el("thead", {}, el("tr", {}, ["died", "task", "exception", "attempts", "project", "status", ""]
          .map((h) => el("th", { text: h })))), tbody));
      if (!items.length) tbody.append(el("tr", {}, el("td", { colspan: 7, class: "unavailable",
        text: "No dead letters match." })));
    }
    for (const letter of items) tbody.append(dlqRow(letter));
    body.querySelector(".more")?.remove();
    if (state.dlqCursor) body.append(el("button", { type: "button", class: "more", text: "Load more",
      onclick: () => loadDlq(true) }));
  }

  function renderDlqStats(stats) {
    const node = $("dlq-stats");
    if (stats.status === 404) { clear(node); return; }
    if (!stats.ok) { clear(node, el("span", { class: "error", text: errorText(stats) })); return; }
    const s = stats.data;
    const top = (obj) => Object.entries(obj || {}).sort((a, b) => b[1] - a[1]).slice(0, 3)
      .map(([k, v]) => k + " (" + v + ")").join(", ") || "—";
    clear(node,
      el("span", { class: "note", text: "all your projects:" }),
      el("span", {}, el("b", { text: String(s.depth ?? "—") }), " dead"),
      el("span", {}, "daily avg ", el("b", { text: s.daily_avg_depth == null ? "n/a" : String(Math.round(s.daily_avg_depth * 100) / 100) })),
      el("span", {}, "oldest ", fmtTime(s.oldest_at)),
      el("span", {}, "top tasks: ", top(s.by_task)),
      el("span", {}, "top errors: ", top(s.by_exception)));
  }

  function dlqRow(letter) {
    const row = el("tr", { "data-letter-id": letter.id, "data-task-id": letter.task_id });
    const actions = el("td", { class: "actions" });
    const detailButton = el("button", { type: "button", text: "Details",
      onclick: () => toggleDlqDetail(row, letter) });
    actions.append(detailButton);
    if (letter.status === "dead") {
      actions.append(
        el("button", { type: "button", class: "primary", text: "Replay", "data-action": "replay",
          onclick: (e) => replayLetter(letter, e.currentTarget, false) }),
        el("button", { type: "button", class: "danger", text: "Discard", "data-action": "discard",
          onclick: (e) => discardLetter(letter, e.currentTarget) }));
    }
    row.append(
      el("td", { text: fmtTime(letter.died_at) }),
      el("td", { text: letter.task_name }),
      el("td", { title: letter.exception_message || "", text: letter.exception_type }),
      el("td", { text: String(letter.attempts ?? "") }),
      el("td", { text: letter.project_id || "" }),
      el("td", {}, el("span", { class: "badge s-" + letter.status, text: letter.status })),
      actions);
    return row;
  }

  async function toggleDlqDetail(row, letter) {
    const next = row.nextElementSibling;
    if (next && next.classList.contains("detail")) { next.remove(); return; }
    const result = await api("GET", "/api/dlq/" + encodeURIComponent(letter.id));
    const full = result.ok ? result.data : letter;
    const fields = ["id", "task_id", "queue", "worker", "first_failed_at", "died_at",
      "idempotency_key", "workflow_id", "conductor_task_id", "replay_count", "replay_task_id"];
    const cell = el("td", { colspan: 7 },
      el("div", { class: "stats" }, fields.filter((f) => full[f] !== null && full[f] !== undefined)
        .map((f) => el("span", {}, f + ": ", el("code", { text: String(full[f]) })))),
      el("h3", { text: (full.exception_type || "") + ": " + (full.exception_message || "") }),
      el("pre", { class: "traceback", text: full.traceback || "(no traceback)" }),
      el("h3", { text: "args / kwargs" }),
      el("pre", { text: json({ args: full.args, kwargs: full.kwargs }) }),
      full.breaker_states ? el("pre", { text: "breakers: " + json(full.breaker_states) }) : null);
    row.after(el("tr", { class: "detail" }, cell));
  }

  async function replayLetter(letter, button, force) {
    button.disabled = true;
    const result = await api("POST", "/api/dlq/" + encodeURIComponent(letter.id) + "/replay", { force });
    if (result.ok) {
      feedNote("dlq", "replayed " + letter.task_name + " as " + (result.data.replay_task_id || "?"));
      loadDlq();
      return;
    }
    button.disabled = false;
    const row = button.closest("tr");
    const note = el("span", { class: "error", text: " " + errorText(result) + " " });
    button.parentElement.append(note);
    if (result.status === 409 && !force) {
      note.append(el("button", { type: "button", text: "Force replay",
        onclick: (e) => replayLetter(letter, e.currentTarget, true) }));
    }
    row.dataset.error = "1";
  }

  async function discardLetter(letter, button) {
    if (button.dataset.confirm !== "1") {   // two clicks, no modal dialog
      button.dataset.confirm = "1";
      button.textContent = "Confirm discard";
      setTimeout(() => { button.dataset.confirm = ""; button.textContent = "Discard"; }, 4000);
      return;
    }
    button.disabled = true;
    const result = await api("DELETE", "/api/dlq/" + encodeURIComponent(letter.id));
    if (result.ok) loadDlq();
    else { button.disabled = false; button.after(el("span", { class: "error", text: errorText(result) })); }
  }

  // ---- breakers -----------------------------------------------------------------------
  async function loadBreakers() {
    const body = $("breakers-body");
    const result = await api("GET", "/api/breakers");
    if (result.status === 404) { clear(body, unavailable("Circuit breakers not available on this server.")); return; }
    if (!result.ok) { clear(body, el("p", { class: "error", text: errorText(result) })); return; }
    const breakers = result.data.breakers || [];
    if (!breakers.length) { clear(body, unavailable("No breaker has been used yet.")); return; }
    clear(body, el("table", {},
      el("thead", {}, el("tr", {}, ["breaker", "state", "failures", "reset after", "opened", "half-open at", ""]
        .map((h) => el("th", { text: h })))),
      el("tbody", {}, breakers.map((b) => el("tr", { "data-breaker": b.name },
        el("td", { text: b.name }),
        el("td", {}, el("span", { class: "badge s-" + b.state, text: b.state })),
        el("td", { text: b.fail_counter + " / " + b.fail_max }),
        el("td", { text: b.reset_timeout + " s" }),
        el("td", { text: fmtTime(b.opened_at) }),
        el("td", { text: fmtTime(b.next_half_open_at) }),
        el("td", { class: "actions" }, el("button", { type: "button", text: "Reset",
          onclick: async (e) => {
            e.currentTarget.disabled = true;
            const r = await api("POST", "/api/breakers/" + encodeURIComponent(b.name) + "/reset");
            if (!r.ok) feedNote("error", "reset " + b.name + ": " + errorText(r));
            loadBreakers();
          } })))))));
  }

  // ---- schedules ----------------------------------------------------------------------
  async function loadSchedules() {
    const body = $("schedules-body");
    const result = await api("GET", "/api/scheduler/jobs");
    $("schedule-add").hidden = result.status === 404;
    if (result.status === 404) { clear(body, unavailable("Schedules not available on this server.")); return; }
    if (!result.ok) { clear(body, el("p", { class: "error", text: errorText(result) })); return; }
    const jobs = result.data.jobs || [];
    if (!jobs.length) { clear(body, unavailable("No schedules yet.")); return; }
    clear(body, el("table", {},
      el("thead", {}, el("tr", {}, ["name", "task", "when", "next fire", "last run", "", ""]
        .map((h) => el("th", { text: h })))),
      el("tbody", {}, jobs.map((job) => el("tr", { "data-job": job.name },
        el("td", { title: job.description || "" }, el("b", { text: job.name }),
           job.project_id ? el("div", { class: "note", text: job.project_id }) : null),
        el("td", { text: job.task }),
        el("td", { text: job.cron ? "cron " + job.cron : job.every ? "every " + job.every + " s" : "—" }),
        el("td", { text: job.enabled ? fmtTime((job.next_runs || [])[0]) : "paused" }),
        el("td", {}, fmtTime(job.last_run_at), " ",
           job.last_status ? el("span", { class: "badge s-" + job.last_status, text: job.last_status }) : null),
        el("td", {}, el("span", { class: "badge s-" + (job.enabled ? "enabled" : "paused"),
                                  text: job.enabled ? "enabled" : "paused" })),
        el("td", { class: "actions" },
          el("button", { type: "button", text: job.enabled ? "Pause" : "Resume",
            onclick: () => scheduleAction("PATCH", job.name, "", { enabled: !job.enabled }) }),
          el("button", { type: "button", text: "Run now",
            onclick: () => scheduleAction("POST", job.name, "/run") })))))));
  }

  async function scheduleAction(method, name, suffix, body) {
    const result = await api(method, "/api/scheduler/jobs/" + encodeURIComponent(name) + suffix, body);
    if (!result.ok) feedNote("error", name + ": " + errorText(result));
    else if (suffix === "/run") feedNote("schedule", "ran " + name + " now");
    loadSchedules();
  }

  async function addSchedule(event) {
    event.preventDefault();
    const form = event.currentTarget;
    const out = $("schedule-add-result");
    const body = { name: form.elements.name.value.trim(), task: form.elements.task.value.trim(),
                   enabled: true };
    if (form.elements.cron.value.trim()) body.cron = form.elements.cron.value.trim();
    if (form.elements.every.value) body.every = Number(form.elements.every.value);
    if (form.elements.description.value.trim()) body.description = form.elements.description.value.trim();
    try {
      body.kwargs = form.elements.kwargs.value.trim() ? JSON.parse(form.elements.kwargs.value) : {};
    } catch (err) { out.textContent = "kwargs: not JSON"; return; }
    if (state.project) body.project_id = state.project;  // the job runs for this project
    const result = await api("POST", "/api/scheduler/jobs", body);
    out.textContent = result.ok ? "added" : errorText(result);
    if (result.ok) { form.reset(); loadSchedules(); }
  }

  // ---- workflows ----------------------------------------------------------------------
  async function loadWorkflows() {
    const body = $("workflows-body");
    const result = await api("GET", "/api/workflows");
    if (result.status === 404) { clear(body, unavailable("Workflows not available on this server.")); return; }
    if (!result.ok) { clear(body, el("p", { class: "error", text: errorText(result) })); return; }
    const definitions = result.data.definitions || [];
    const executions = result.data.executions || [];
    const defs = definitions.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["workflow", "version", "input (JSON)", ""].map((h) => el("th", { text: h })))),
      el("tbody", {}, definitions.map((d) => {
        const name = typeof d === "string" ? d : d.name;
        const input = el("input", { type: "text", value: "{}", "aria-label": "input for " + name });
        const out = el("span", { class: "note" });
        return el("tr", { "data-workflow": name },
          el("td", { title: (d && d.description) || "" }, el("b", { text: name })),
          el("td", { text: d && d.version !== undefined ? String(d.version) : "" }),
          el("td", {}, input),
          el("td", { class: "actions" }, el("button", { type: "button", text: "Start",
            onclick: async () => {
              let parsed;
              try { parsed = JSON.parse(input.value || "{}"); } catch (err) { out.textContent = "input: not JSON"; return; }
              const r = await api("POST", "/api/workflows/" + encodeURIComponent(name) + "/start",
                                  { input: parsed, project_id: state.project });
              out.textContent = r.ok ? "started " + r.data.workflow_id : errorText(r);
              if (r.ok) debounce("workflows", loadWorkflows, 500);
            } }), out));
      }))) : unavailable("No workflow definitions.");
    const runs = executions.length ? el("table", {},
      el("thead", {}, el("tr", {}, ["run", "workflow", "status", "project", "started"].map((h) => el("th", { text: h })))),
      el("tbody", {}, executions.slice(0, 30).map((x) => el("tr", { "data-workflow-id": x.workflow_id },
        el("td", { title: x.workflow_id || "" }, el("code", { text: String(x.workflow_id || "").slice(0, 12) })),
        el("td", { text: (x.name || "") + (x.version ? " v" + x.version : "") }),
        el("td", {}, el("span", { class: "badge s-" + (x.status || "unknown"), text: x.status || "unknown" })),
        el("td", { text: x.project_id || "" }),
        el("td", { text: fmtTime(x.started_at) }))))) : unavailable("No recent runs.");
    clear(body, el("h3", { text: "Definitions" }), defs, el("h3", { text: "Recent runs" }), runs);
  }

  // ---- wiring -------------------------------------------------------------------------
  function refreshAll() {
    if (!state.token) return;
    loadHealth();
    loadMetrics();
    loadDlq();
    loadBreakers();
    loadSchedules();
    loadWorkflows();
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
  }

  document.addEventListener("DOMContentLoaded", () => {
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
    for (const button of document.querySelectorAll(".tabs button")) {
      button.addEventListener("click", () => selectTab(button.dataset.tab));
    }
    renderCounters();
    loadHealth();
    setInterval(loadHealth, HEALTH_POLL_MS);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) signIn(saved); else showSignIn("");
  });
})();
