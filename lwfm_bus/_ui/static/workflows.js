// Workflows: the recent ones with their jobs per state, sites, start and end; filterable; kept
// up to date by the bus's job and workflow events (one reload at a time, at most one per frame).

import { el, clear, getJSON, link, shown, time, STATES, coalesced } from "./dom.js";
import { Live } from "./live.js";

export async function workflowsPage(main, session) {
  const filter = el("input", { type: "search", id: "wf-filter", placeholder: "filter by name, id or site", "aria-label": "filter" });
  const body = el("tbody", { id: "wf-rows" });
  const table = el("table", { class: "grid", id: "workflows" },
    el("thead", {}, el("tr", {}, ...["Workflow", "Id", "Jobs", "States", "Sites", "Started", "Ended"].map((h) => el("th", { text: h })))),
    body);
  main.append(el("h1", { text: "Workflows" }), filter, table);
  let rows = [];

  function render() {
    const needle = filter.value.trim().toLowerCase();
    clear(body);
    for (const wf of rows) {
      const hay = [wf.name || "", wf.workflow_id, ...wf.sites].join(" ").toLowerCase();
      if (needle && !hay.includes(needle)) continue;
      const states = el("span", { class: "states" });
      for (const state of STATES) {
        if (wf.states[state]) states.append(el("span", { class: "chip", "data-state": state, text: `${state} ${wf.states[state]}` }));
      }
      body.append(el("tr", { "data-workflow": wf.workflow_id },
        el("td", {}, link("#/workflow/" + encodeURIComponent(wf.workflow_id), wf.name || "(unnamed)")),
        el("td", { class: "mono", text: wf.workflow_id }),
        el("td", { text: wf.jobs }),
        el("td", {}, states),
        el("td", { text: wf.sites.map(shown).join(", ") }),
        el("td", { text: time(wf.started_at) }),
        el("td", { text: time(wf.ended_at) })));
    }
  }

  const load = coalesced(async () => {
    rows = (await getJSON("api/workflows")).workflows;
    render();
  });
  filter.addEventListener("input", render);
  await load();
  const live = new Live("lwfm.>", session.seq, (batch) => {
    if (batch.some((p) => p.event.type === "lwfm.job.status" || p.event.type === "lwfm.workflow.defined")) load();
  });
  return () => live.close();
}
