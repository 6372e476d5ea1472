// Dead letters: messages readers parked because they were not usable events, counted by reason,
// with the latest of each -- their bytes shown as escaped text, never interpreted.

import { el, clear, getJSON, shown } from "./dom.js";

export async function deadLettersPage(main) {
  const body = el("div", { id: "dl-reasons" });
  const reload = el("button", { id: "dl-reload", text: "Read again" });
  main.append(el("h1", { text: "Dead letters" }),
    el("p", { class: "muted" }, "Parked messages are outside the event stream, so this page is read when opened. ", reload), body);

  async function load() {
    const doc = await getJSON("api/dead-letters");
    clear(body);
    if (!doc.reasons.length) body.append(el("p", { class: "muted", text: "No message was parked." }));
    for (const r of doc.reasons) {
      body.append(el("h2", { "data-reason": r.reason }, shown(r.reason), " ", el("span", { class: "chip", text: r.count })),
        el("table", { class: "grid", "data-reason": r.reason },
          el("thead", {}, el("tr", {}, ...["Seq", "Subject", "Error", "Bytes"].map((h) => el("th", { text: h })))),
          el("tbody", {}, ...r.latest.map((d) => el("tr", { "data-seq": d.seq },
            el("td", { text: d.seq }), el("td", { class: "mono", text: shown(d.subject) }), el("td", { text: shown(d.error) }),
            el("td", {}, el("pre", { class: "log", text: shown(d.data) + (d.size > d.data.length ? " \u2026" : "") })))))));
    }
  }
  reload.addEventListener("click", load);
  await load();
  return null;
}
