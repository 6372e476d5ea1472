// DOM helpers: every piece of data becomes a text node, never markup.

export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = String(value);
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
  return node;
}

export function time(text) {
  if (!text) return "-";
  const d = new Date(text);
  return isNaN(d) ? String(text) : d.toLocaleString();
}

// Control characters shown as escapes, so a name cannot hide or fake what follows it.
export function shown(text) {
  if (text === null || text === undefined) return "";
  return String(text).replace(/[\u0000-\u001f\u007f-\u009f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]/g,
    (ch) => "\\u" + ch.charCodeAt(0).toString(16).padStart(4, "0"));
}

export function link(href, text) {
  return el("a", { href }, shown(text));
}

export async function getJSON(url) {
  const response = await fetch(url, { headers: { accept: "application/json" } });
  if (!response.ok) {
    let why = response.statusText;
    try { why = (await response.json()).error || why; } catch { /* not JSON */ }
    throw new Error(why);
  }
  return response.json();
}

export async function post(url, csrf) {
  const response = await fetch(url, { method: "POST", headers: { "x-csrf-token": csrf } });
  const text = await response.text();
  if (!response.ok) {
    let why = text.trim() || response.statusText;
    try { why = JSON.parse(text).error || why; } catch { /* plain text */ }
    throw new Error(why);
  }
  return JSON.parse(text);
}

// The canonical states and their partial order (lwfm_bus._states): nothing replaces a terminal
// state, and a later-or-equal rank replaces an earlier one.
const RANK = { READY: 0, PENDING: 1, RUNNING: 2, INFO: 2, FINISHING: 3, COMPLETE: 4, FAILED: 4, CANCELLED: 4 };
export const STATES = Object.keys(RANK);
export function isTerminal(state) { return RANK[state] === 4; }
export function supersedes(next, current) {
  if (!current) return true;
  if (isTerminal(current)) return false;
  return (RANK[next] ?? -1) >= (RANK[current] ?? -1);
}

// A reload that never overlaps itself: called while one runs, it runs once more after it
// (however many calls came meanwhile), so a burst of events costs at most two fetches.
export function coalesced(reload) {
  let running = false, again = false;
  return async function run() {
    if (running) { again = true; return; }
    running = true;
    try {
      await reload();
    } finally {
      running = false;
      if (again) { again = false; run(); }
    }
  };
}
