/* DOM and formatting helpers. Server text only ever enters the page through
 * textContent or text nodes (el()), never innerHTML: a task name or an exception
 * message containing markup is shown as the characters it is. */

export const $ = (id) => document.getElementById(id);

/** el("td", {class: "x", text: value, onclick: fn, "data-id": id}, ...children) */
export function el(tag, attrs, ...children) {
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

export function clear(node, ...children) {
  node.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
  return node;
}

export function badge(value, prefix = "s-") {
  return el("span", { class: "badge " + prefix + value, text: value });
}

export function note(text) { return el("p", { class: "empty", text }); }

export function fmtTime(value) {
  if (value === null || value === undefined || value === "") return "—";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toLocaleString([], { month: "short", day: "2-digit", hour: "2-digit",
                                   minute: "2-digit", second: "2-digit", hour12: false });
}

export function fmtClock(ts) {
  return new Date(ts * 1000).toLocaleTimeString([], { hour12: false });
}

export function json(value) {
  try { return JSON.stringify(value, null, 2); } catch (e) { return String(value); }
}

const timers = {};
/** Run fn once, ms after the last of a burst of calls with the same key. */
export function debounce(key, fn, ms) {
  clearTimeout(timers[key]);
  timers[key] = setTimeout(fn, ms);
}
