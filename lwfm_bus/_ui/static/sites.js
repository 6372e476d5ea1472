// Sites: every configured site (and any that reported), its unfinished jobs by state -- the queue --
// its last heartbeat and how old it is, and the lag of each site's events this bus sources
// (federation).  Reloaded when a job or site event arrives; the ages tick in the page.

import { el, clear, getJSON, shown, time, STATES } from "./dom.js";
import { Live } from "./live.js";

function age(node) {
  const t = Date.parse(node.dataset.time);
  if (isNaN(t)) return;
  const seconds = Math.max(0, (Date.now() - t) / 1000);
  const interval = Number(node.dataset.interval || 0);
  node.textContent = `${seconds.toFixed(0)} s ago`;
  node.dataset.late = interval && seconds > 2 * interval ? "yes" : "no";
}

export async function sitesPage(main, session) {
  const body = el("tbody", { id: "site-rows" });
  const sources = el("tbody", { id: "source-rows" });
  main.append(el("h1", { text: "Sites" }),
    el("table", { class: "grid", id: "sites" },
      el("thead", {}, el("tr", {}, ...["Site", "Adapter", "Queue (unfinished jobs)", "Last heartbeat", ""].map((h) => el("th", { text: h })))), body),
    el("h2", { text: "Federation: events sourced from other sites" }),
    el("table", { class: "grid compact", id: "sources" },
      el("thead", {}, el("tr", {}, ...["Source stream", "Lag (messages)", "Last active"].map((h) => el("th", { text: h })))), sources));

  function render(doc) {
    clear(body);
    for (const s of doc.sites) {
      const queue = el("span", { class: "states" });
      let total = 0;
      for (const state of STATES) {
        const n = s.jobs[state];
        if (n) { total += n; queue.append(el("span", { class: "chip", "data-state": state, text: `${state} ${n}` })); }
      }
      if (!total) queue.append(el("span", { class: "muted", text: "empty" }));
      const hb = s.heartbeat;
      const beat = hb ? el("span", {}, `${shown(hb.status)} (${shown(hb.adapter)}) `, el("span", { class: "age", "data-time": hb.time, "data-interval": hb.interval_s || "" }),
        hb.info ? ` \u00b7 ${shown(hb.info)}` : "") : el("span", { class: "muted", text: "none received" });
      body.append(el("tr", { "data-site": s.site, "data-queued": total },
        el("td", { class: "mono", text: shown(s.site) }),
        el("td", { text: shown(s.adapter || "(not configured here)") }),
        el("td", {}, queue), el("td", {}, beat),
        el("td", { class: "error", text: s.broken ? "broken: " + shown(s.broken) : "" })));
    }
    clear(sources);
    if (!doc.sources.length) sources.append(el("tr", {}, el("td", { class: "muted", text: "none: this bus sources no other site" })));
    for (const src of doc.sources) {
      sources.append(el("tr", { "data-source": src.name },
        el("td", { class: "mono", text: shown(src.name) }), el("td", { text: src.lag ?? "?" }),
        el("td", { text: src.active_ms === null ? "-" : `${(src.active_ms / 1000).toFixed(1)} s ago` })));
    }
    body.querySelectorAll(".age").forEach(age);
  }

  let loading = false, again = false;
  async function load() {
    if (loading) { again = true; return; }
    loading = true;
    try {
      render(await getJSON("api/sites"));
    } finally {
      loading = false;
      if (again) { again = false; load(); }
    }
  }
  await load();
  const live = new Live("lwfm.>", session.seq, (batch) => {
    if (batch.some((p) => p.event.type === "lwfm.job.status" || p.event.type === "lwfm.site.heartbeat")) load();
  });
  const clock = setInterval(() => body.querySelectorAll(".age").forEach(age), 1000); // ages only: nothing is fetched
  return () => { live.close(); clearInterval(clock); };
}
