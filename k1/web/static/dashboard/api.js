/* The REST API: one call shape for every panel.
 *
 *   const result = await api("GET", "/api/breakers");
 *   if (!result.ok) panel.append(errorNote(result));   // "redis unavailable: ..."
 *
 * A call never throws: a network failure is {status: 0, ok: false}. A 401 tells the
 * page (onUnauthorized) that the token is no longer accepted. */

import { el, json } from "./dom.js";
import { state } from "./state.js";

let unauthorized = () => {};

/** Called with a message when the API refuses the token (401). */
export function onUnauthorized(handler) { unauthorized = handler; }

/** fetch() as {status, ok, data}; the bearer token is state.token unless `token` is given. */
export async function request(method, path, body, token = state.token) {
  const init = { method, headers: {} };
  if (token) init.headers.Authorization = "Bearer " + token;
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
  return { status: response.status, ok: response.ok, data };
}

/** request() with the session's token; a 401 signs the page out. */
export async function api(method, path, body) {
  const result = await request(method, path, body);
  if (result.status === 401) {
    unauthorized("Your token was refused (" + errorText(result) + "). Sign in again.");
  }
  return result;
}

/** The API's {"error", "detail"} as one line. */
export function errorText(result) {
  const d = result.data || {};
  const detail = typeof d.detail === "string" ? d.detail : d.detail ? json(d.detail) : "";
  return (d.error || "HTTP " + result.status) + (detail ? ": " + detail : "");
}

export function errorNote(result, tag = "p") {
  return el(tag, { class: "error", text: errorText(result) });
}

/** A path segment: names and ids go into URLs encoded. */
export const seg = encodeURIComponent;
