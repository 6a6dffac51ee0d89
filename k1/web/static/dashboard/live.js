/* The Socket.IO connection (the vendored socket.io-client's global `io`): connect with
 * the token, (re)subscribe to the shown project, and measure delivery latency.
 *
 * Latency: on connect the page asks the server's clock three times and keeps the offset
 * of the fastest round trip (NTP style); each event's latency is now + offset - event.ts,
 * reported in batches with `latency {samples}`. */

import { renderBanner } from "./banner.js";
import { $ } from "./dom.js";
import { state } from "./state.js";

const LATENCY_REPORT_MS = 5000;   // how often measured latencies are sent to the server
const MAX_SAMPLES = 200;          // per report: the server takes no more
const MAX_LATENCY_MS = 600000;    // anything longer is a clock problem, not a delivery
const CLOCK_PROBES = 3;
const CLOCK_TIMEOUT_MS = 5000;
const RECONNECT_DELAY_MAX_MS = 5000;

let clockOffsetMs = 0;
let samples = [];

/** Connect with the session's token. `onConnect` runs on every (re)connect, `onRefused`
 * when the server refuses the token; `handlers` maps server events to functions. */
export function connect({ onConnect, onRefused, handlers }) {
  disconnect();
  const socket = io({ auth: { token: state.token }, transports: ["websocket", "polling"],
                      reconnectionDelayMax: RECONNECT_DELAY_MAX_MS });
  state.socket = socket;
  socket.on("connect", () => {
    setConnected(true);
    syncClock(socket);
    subscribe();
    onConnect();
  });
  socket.on("disconnect", (reason) => {
    setConnected(false);
    // Closed by the server on purpose: the client will not reconnect by itself.
    if (reason === "io server disconnect") onRefused("the server closed the connection");
  });
  socket.on("connect_error", (err) => {
    setConnected(false);
    if (!socket.active) onRefused(err && err.message);  // refused by the server, not the network
  });
  for (const [name, handler] of Object.entries(handlers)) {
    socket.on(name, (event) => { measure(event); handler(event); });
  }
}

/** The server's clock (ms since the epoch), as well as the clock probes tell. */
export function serverNow() { return Date.now() + clockOffsetMs; }

export function disconnect() {
  if (state.socket) { state.socket.disconnect(); state.socket = null; }
  setConnected(false);
}

/** Join the shown project's room. Once the server confirms, #connection carries
 * data-subscribed="<project>": events of that project now reach the page. */
export function subscribe() {
  const project = state.project;
  if (!state.socket || !state.connected || !project) return;
  state.socket.emit("subscribe", { project_id: project }, (ack) => {
    if (ack && ack.ok && state.project === project) $("connection").dataset.subscribed = project;
  });
}

export function unsubscribe(project) {
  if (state.socket && state.connected && project) {
    state.socket.emit("unsubscribe", { project_id: project });
  }
  delete $("connection").dataset.subscribed;
}

function setConnected(on) {
  state.connected = on;
  const node = $("connection");
  if (!on) delete node.dataset.subscribed;
  node.textContent = on ? "live" : "offline";
  node.className = "connection " + (on ? "on" : "off");
  renderBanner();
}

function syncClock(socket) {
  let best = null;
  let left = CLOCK_PROBES;
  const probe = () => {
    const sent = Date.now();
    socket.timeout(CLOCK_TIMEOUT_MS).emit("clock", {}, (err, reply) => {
      const back = Date.now();
      if (!err && reply && typeof reply.now_ms === "number") {
        const rtt = back - sent;
        if (!best || rtt < best.rtt) best = { rtt, offset: reply.now_ms - (sent + back) / 2 };
        clockOffsetMs = best.offset;
      }
      if (--left > 0) probe();
    });
  };
  probe();
}

function measure(event) {
  if (!event || typeof event.ts !== "number") return;
  const latency = serverNow() - event.ts * 1000;
  if (latency >= 0 && latency < MAX_LATENCY_MS && samples.length < MAX_SAMPLES) {
    samples.push(Math.round(latency * 10) / 10);
  }
}

setInterval(() => {
  if (!state.socket || !state.connected || !samples.length) return;
  state.socket.emit("latency", { samples });
  samples = [];
}, LATENCY_REPORT_MS);
