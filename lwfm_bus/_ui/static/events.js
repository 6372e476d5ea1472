// Events: a live tail of the bus with a subject filter (NATS wildcards), the latest 1,000 kept.

import { el, clear, shown, time } from "./dom.js";
import { Live } from "./live.js";

const KEEP = 1000;
const BACKLOG = 200;

function summary(event) {
  const d = event.data || {};
  if (event.type === "lwfm.job.status") {
    return `job ${shown(d.job_id)} ${shown(d.state)}` + (d.exit_code !== null && d.exit_code !== undefined ? ` exit=${d.exit_code}` : "") +
      (d.name ? ` ${shown(d.name)}` : "") + (d.info ? ` ${shown(d.info)}` : "");
  }
  if (event.type === "lwfm.data.arrived") return `data ${shown(d.location)} on ${shown(d.site)}`;
  if (event.type === "lwfm.site.heartbeat") return `site ${shown(d.site)} ${shown(d.status)}`;
  if (event.type === "lwfm.workflow.defined") return `workflow ${shown(d.workflow_id)} ${shown(d.name)}`;
  return shown(event.type.replace(/^lwfm\./, ""));
}

export async function eventsPage(main, session) {
  const input = el("input", { type: "text", id: "ev-filter", value: "lwfm.>", "aria-label": "subject filter", size: 40 });
  const count = el("span", { id: "ev-count", "data-count": 0, text: "0 events" });
  const problem = el("p", { id: "ev-error", class: "error" });
  const body = el("tbody", { id: "ev-rows" });
  const form = el("form", { id: "ev-form" }, el("label", {}, "Subject filter ", input), el("button", { type: "submit", text: "Follow" }), " ", count);
  main.append(el("h1", { text: "Events" }), form, problem,
    el("table", { class: "grid", id: "events" },
      el("thead", {}, el("tr", {}, ...["Seq", "Time", "Type", "Subject", "What"].map((h) => el("th", { text: h })))), body));
  let live = null;

  function follow() {
    if (live) live.close();
    clear(body);
    problem.textContent = "";
    let total = 0;
    live = new Live(input.value.trim() || "lwfm.>", Math.max(0, session.seq - BACKLOG), (batch) => {
      const rows = batch.map(({ seq, subject, event }) => el("tr", { "data-seq": seq },
        el("td", { text: seq }), el("td", { text: time(event.time) }), el("td", { text: shown(event.type) }),
        el("td", { class: "mono", text: shown(subject) }), el("td", { text: summary(event) })));
      body.prepend(...rows.reverse());
      while (body.childElementCount > KEEP) body.lastElementChild.remove();
      total += batch.length;
      count.dataset.count = total;
      count.textContent = `${total} events`;
    }, (why) => { problem.textContent = shown(why); });
  }
  form.addEventListener("submit", (e) => { e.preventDefault(); follow(); });
  follow();
  return () => live && live.close();
}
