// A tiny DOM builder. Every text goes in as a text node, never as HTML: page titles, URLs and
// excerpts come from scanned pages, and none of them may become markup here.

/**
 * @param {string} tag e.g. "section.card.wide#report" (classes after dots, the id after "#")
 * @param {Record<string, any> | null} attrs attributes; `on*` functions become listeners; `style`
 *   is an object set through the CSSOM (the page's CSP refuses style attributes)
 * @param {...any} children nodes, strings, numbers, arrays, or null/false (skipped)
 */
export function h(tag, attrs, ...children) {
  const [name, ...parts] = tag.split(/(?=[.#])/);
  const node = document.createElement(name);
  for (const part of parts) {
    if (part.startsWith("#")) node.id = part.slice(1);
    else node.classList.add(part.slice(1));
  }
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(node, child);
    else node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

export function clear(node, ...children) {
  node.replaceChildren();
  append(node, children);
  return node;
}

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

/** "3 min ago" for an ISO time; the exact time goes in the title attribute. */
export function ago(iso) {
  const seconds = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (seconds < 45) return "just now";
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 86400) return `${Math.round(seconds / 3600)} h ago`;
  return new Date(iso).toLocaleDateString();
}

export function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(2)} MiB`;
}

export function ms(n) {
  if (n === null || n === undefined) return "–";
  return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${Math.round(n)} ms`;
}
