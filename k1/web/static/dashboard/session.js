/* Signing in and out, and the project the page shows.
 *
 * A token is typed (pasted) into the form, or comes from a sign-in link
 * (`k1 token signin-link` prints http://host/#signin=<single-use token>): the page takes the
 * link's token out of the address bar and history at once, exchanges it for a session
 * token (POST /api/auth/exchange) and keeps that like a typed one, in sessionStorage:
 * this tab only, gone when it closes. */

import { errorText, request } from "./api.js";
import { $, clear, el } from "./dom.js";
import { state } from "./state.js";

const TOKEN_KEY = "k1.token";
const PROJECT_KEY = "k1.project";
const LINK_PARAM = "signin";  // the fragment parameter of a sign-in link

export function savedToken() { return sessionStorage.getItem(TOKEN_KEY); }

function decodeClaims(token) {
  const part = token.split(".")[1];
  if (!part) throw new Error("not a token");
  const b64 = part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "=");
  const claims = JSON.parse(decodeURIComponent(Array.from(atob(b64),
    (c) => "%" + c.charCodeAt(0).toString(16).padStart(2, "0")).join("")));
  if (!claims.sub || !Array.isArray(claims.projects)) throw new Error("not a K1 token");
  return claims;
}

/** Make `token` the session's; returns why not (a sentence) or null. */
export function adopt(token) {
  let claims;
  try { claims = decodeClaims(token); } catch (err) {
    return "That does not look like a K1 token: " + err.message;
  }
  if (claims.exp && claims.exp * 1000 < Date.now()) return "That token has expired; create a new one.";
  state.token = token;
  state.claims = claims;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("sign-in").hidden = true;
  $("app").hidden = false;
  $("sign-out").hidden = false;
  $("whoami").textContent = claims.sub;
  setupProjectPicker();
  return null;
}

/** Drop the token and show the sign-in form with `message`. */
export function forget(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  state.token = null;
  state.claims = null;
  showSignIn(message);
}

export function showSignIn(message) {
  $("app").hidden = true;
  $("sign-in").hidden = false;
  $("sign-out").hidden = true;
  $("project-select").hidden = true;
  $("project-input").hidden = true;
  $("whoami").textContent = "";
  $("sign-in-error").textContent = message || "";
}

/** The token of a sign-in link in the address, removed from the address bar and from the
 * tab's history before anything else happens; null when there is none. */
export function takeLinkToken() {
  const params = new URLSearchParams(location.hash.slice(1));
  if (!params.has(LINK_PARAM)) return null;
  history.replaceState(history.state, "", location.pathname + location.search);
  return params.get(LINK_PARAM);
}

/** Exchange a sign-in link's token: the session token, or {error: why not}. */
export async function exchangeLinkToken(linkToken) {
  const result = await request("POST", "/api/auth/exchange", undefined, linkToken);
  if (result.ok && result.data && typeof result.data.token === "string") return { token: result.data.token };
  return { error: "The sign-in link did not work (" + (result.ok ? "no token in the answer"
    : errorText(result)) + "). Paste a token instead." };
}

function setupProjectPicker() {
  const projects = state.claims.projects;
  const saved = sessionStorage.getItem(PROJECT_KEY);
  const select = $("project-select");
  const input = $("project-input");
  if (projects.includes("*")) {  // an operator may look at any project: type its id
    select.hidden = true;
    input.hidden = false;
    input.value = saved || "";
    state.project = input.value.trim() || null;
  } else {
    input.hidden = true;
    select.hidden = false;
    clear(select, projects.map((p) => el("option", { value: p, text: p })));
    state.project = projects.includes(saved) ? saved : projects[0];
    select.value = state.project;
  }
}

/** Show `project` from now on; false when it already is shown. */
export function setProject(project) {
  project = (project || "").trim() || null;
  if (project === state.project) return false;
  state.project = project;
  if (project) sessionStorage.setItem(PROJECT_KEY, project);
  return true;
}
