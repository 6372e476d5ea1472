// Sites: every configured site (and any that reported), its unfinished jobs by state -- the queue --
// and its health: "ok" unless its agent said otherwise (agents publish a heartbeat only when a site's
// health changes, so none means no trouble was reported), else the status, why, and since when.
// Then the federation pane: every site this bus's stream holds events of (at a hub: every member's,
// sourced), its role, where its events come from and how far behind, its jobs and its latest ones;
// and the lag of each stream this bus sources.  Reloaded when a job or site event arrives.

import { el, clear, getJSON, link, shown, time, STATES, coalesced } from "./dom.js";
import { Live } from "./live.js";

function healthCell(h) {
  if (h.status === "ok") return el("span", { class: "health", "data-health": "ok", text: "ok" });
  return el("span", { class: "health error", "data-health": h.status },
    `${shown(h.status)} since ${time(h.since)}`, h.info ? `: ${shown(h.info)}` : "");
}

function chips(jobs) {
  const box = el("span", { class: "states" });
  let total = 0;
  for (const state of STATES) {
    const n = jobs[state];
    if (n) { total += n; box.append(el("span", { class: "chip", "data-state": state, text: `${state} ${n}` })); }
  }
  return [box, total];
}

function eventsCell(ev) {
  if (ev.from === "here") return el("span", { "data-from": "here", text: "this bus" });
  if (ev.from === "nowhere") return el("span", { class: "muted", "data-from": "nowhere", text: "not sourced here" });
  const active = ev.active_s === null ? "never active" : `active ${ev.active_s.toFixed(1)} s ago`;
  return el("span", { "data-from": "sourced", "data-lag": ev.lag },
    `sourced from ${shown(ev.stream)}: lag ${ev.lag}, ${active}`, ev.error ? el("span", { class: "error", text: ` \u00b7 ${shown(ev.error)}` }) : null);
}

export async function sitesPage(main, session) {
  const body = el("tbody", { id: "site-rows" });
  const sources = el("tbody", { id: "source-rows" });
  const fedRows = el("tbody", { id: "fed-rows" });
  const fedNote = el("p", { id: "fed-note", class: "muted" });
  main.append(el("h1", { text: "Sites" }),
    el("table", { class: "grid", id: "sites" },
      el("thead", {}, el("tr", {}, ...["Site", "Adapter", "Queue (unfinished jobs)", "Health", ""].map((h) => el("th", { text: h })))), body),
    el("h2", { text: "Federation: every site this bus holds events of" }), fedNote,
    el("table", { class: "grid", id: "federation" },
      el("thead", {}, el("tr", {}, ...["Site", "Member", "Events", "Health", "Jobs", "Latest jobs"].map((h) => el("th", { text: h })))), fedRows),
    el("h2", { text: "Federation: events sourced from other sites" }),
    el("table", { class: "grid compact", id: "sources" },
      el("thead", {}, el("tr", {}, ...["Source stream", "Lag (messages)", "Last active"].map((h) => el("th", { text: h })))), sources));

  function render(doc) {
    clear(body);
    for (const s of doc.sites) {
      const [queue, total] = chips(s.jobs);
      if (!total) queue.append(el("span", { class: "muted", text: "empty" }));
      body.append(el("tr", { "data-site": s.site, "data-queued": total, "data-health": s.health.status },
        el("td", { class: "mono", text: shown(s.site) }),
        el("td", { text: shown(s.adapter || "(not configured here)") }),
        el("td", {}, queue), el("td", {}, healthCell(s.health)),
        el("td", { class: "error", text: s.broken ? "broken: " + shown(s.broken) : "" })));
    }
    const fed = doc.federation;
    fedNote.textContent = fed
      ? `${fed.is_hub ? "This bus is the hub" : "This bus is a leaf"} (site ${shown(fed.site)}) of a federation of ${fed.members.length}: ${fed.members.map(shown).join(", ")}; its hub: ${shown(fed.hub)}.`
      : "This bus stands alone: every site below is its own.";
    clear(fedRows);
    for (const s of doc.pane) {
      const [jobs, total] = chips(s.jobs);
      if (!total) jobs.append(el("span", { class: "muted", text: "none" }));
      const latest = el("ul", { class: "latest" });
      for (const j of s.latest) {
        latest.append(el("li", { "data-job": j.job_id, "data-state": j.state },
          link("#/job/" + encodeURIComponent(j.job_id), j.name || j.job_id), ` ${j.state}`));
      }
      fedRows.append(el("tr", { "data-site": s.site, "data-role": s.role || "", "data-jobs": total },
        el("td", { class: "mono", text: shown(s.site) }),
        el("td", { text: s.member ? `${shown(s.member)} (${s.role})` : "-" }),
        el("td", {}, eventsCell(s.events)), el("td", {}, healthCell(s.health)),
        el("td", {}, jobs), el("td", {}, latest)));
    }
    clear(sources);
    if (!doc.sources.length) sources.append(el("tr", {}, el("td", { class: "muted", text: "none: this bus sources no other site" })));
    for (const src of doc.sources) {
      sources.append(el("tr", { "data-source": src.name },
        el("td", { class: "mono", text: shown(src.name) }), el("td", { text: src.lag ?? "?" }),
        el("td", { text: src.active_ms === null ? "-" : `${(src.active_ms / 1000).toFixed(1)} s ago` })));
    }
  }

  const load = coalesced(async () => {
    render(await getJSON("api/sites"));
  });
  await load();
  const live = new Live("lwfm.>", session.seq, (batch) => {
    if (batch.some((p) => p.event.type === "lwfm.job.status" || p.event.type === "lwfm.site.heartbeat")) load();
  });
  return () => { live.close(); };
}
