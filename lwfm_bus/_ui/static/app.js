// The dashboard's entry: the session (CSRF token, read-only or not), and a router over #/ paths.

import { el, clear, getJSON } from "./dom.js";
import { workflowsPage } from "./workflows.js";
import { workflowPage } from "./workflow.js";
import { jobPage } from "./job.js";
import { eventsPage } from "./events.js";
import { triggersPage } from "./triggers.js";
import { deadLettersPage } from "./deadletters.js";
import { dataPage, dataRecordPage } from "./data.js";
import { sitesPage } from "./sites.js";

const routes = [
  [/^#\/workflows\/?$/, workflowsPage],
  [/^#\/workflow\/([^/]+)$/, workflowPage],
  [/^#\/job\/([^/]+)$/, jobPage],
  [/^#\/events\/?$/, eventsPage],
  [/^#\/triggers\/?$/, triggersPage],
  [/^#\/dead-letters\/?$/, deadLettersPage],
  [/^#\/sites\/?$/, sitesPage],
  [/^#\/data\/?$/, dataPage],
  [/^#\/data\/([^/]+)$/, dataRecordPage],
];

let session = null;
let dispose = null;

async function route() {
  if (dispose) { dispose(); dispose = null; }
  const main = clear(document.getElementById("main"));
  const hash = location.hash || "#/workflows";
  for (const [pattern, page] of routes) {
    const match = pattern.exec(hash);
    if (match) {
      const args = match.slice(1).map(decodeURIComponent);
      try {
        dispose = await page(main, session, ...args);
      } catch (error) {
        main.append(el("p", { class: "error", text: "Cannot show this page: " + error.message }));
      }
      return;
    }
  }
  main.append(el("p", { class: "error", text: "No such page." }));
}

async function start() {
  session = await getJSON("api/session");
  const mode = document.getElementById("mode");
  mode.textContent = session.allow_actions ? "actions allowed" : "read-only";
  mode.dataset.actions = session.allow_actions ? "yes" : "no";
  window.addEventListener("hashchange", route);
  await route();
}

start().catch((error) => {
  clear(document.getElementById("main")).append(el("p", { class: "error", text: "Cannot reach the dashboard: " + error.message }));
});
