/* The one way a panel shows a list: load → error → empty → table.
 *
 *   const COLUMNS = [{ head: "breaker", cell: (b) => b.name },
 *                    { head: "state", cell: (b) => badge(b.state) }];
 *   loadPanel($("breakers-body"), "/api/breakers", (data) => dataTable({
 *     columns: COLUMNS, items: data.breakers, empty: "No breaker has been used yet.",
 *     rowAttrs: (b) => ({ "data-breaker": b.name }) }));
 *
 * A cell is text (set as textContent) or nodes built with el(). */

import { api, errorNote } from "./api.js";
import { clear, el, note } from "./dom.js";

function cell(column, item) {
  const value = column.cell(item);
  const td = el("td", { class: column.class, title: column.title ? column.title(item) : null });
  if (value instanceof Node || Array.isArray(value)) td.append(...[value].flat().filter(Boolean));
  else td.textContent = value === null || value === undefined ? "" : String(value);
  return td;
}

/** One <tr> for `item` (also used to append a further page to a table). */
export function tableRow(columns, item, rowAttrs) {
  return el("tr", rowAttrs ? rowAttrs(item) : {}, columns.map((column) => cell(column, item)));
}

/** A table of `items`, or the `empty` sentence when there are none. */
export function dataTable({ columns, items, empty, rowAttrs, id }) {
  if (!items || !items.length) return note(empty);
  return el("table", { id },
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { text: c.head || "" })))),
    el("tbody", {}, items.map((item) => tableRow(columns, item, rowAttrs))));
}

const latest = new WeakMap();  // panel body -> number of its newest load

/** A keyset-paged list ({items, next_cursor}) as a table in `body`: the first page of
 * pathFor(null), then a "Load more" button that appends pathFor(cursor) while there is a
 * next page. Returns the first page's data, like loadPanel. */
export async function loadPages(body, pathFor, { columns, empty, rowAttrs, id }) {
  const data = await loadPanel(body, pathFor(null), (page) => dataTable({
    id, columns, items: page.items, rowAttrs, empty }));
  const offerMore = (cursor) => {
    body.querySelector(".more")?.remove();
    if (cursor) body.append(el("button", { type: "button", class: "more", text: "Load more",
      onclick: (e) => more(e.currentTarget, cursor) }));
  };
  const more = async (button, cursor) => {
    button.disabled = true;
    const result = await api("GET", pathFor(cursor));
    if (!result.ok) { button.replaceWith(errorNote(result, "span")); return; }
    const tbody = body.querySelector("tbody");
    for (const item of result.data.items) tbody.append(tableRow(columns, item, rowAttrs));
    offerMore(result.data.next_cursor);
  };
  if (data) offerMore(data.next_cursor);
  return data;
}

/** GET `path` and put render(data) in `body`, or the API's error. Returns the data, or
 * null on an error or when a newer load of the same body overtook this one. */
export async function loadPanel(body, path, render) {
  const mine = (latest.get(body) || 0) + 1;
  latest.set(body, mine);
  const result = await api("GET", path);
  if (latest.get(body) !== mine) return null;  // a slower, older answer: drop it
  if (!result.ok) { clear(body, errorNote(result)); return null; }
  clear(body, render(result.data));
  return result.data;
}
