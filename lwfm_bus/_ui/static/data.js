// Data: a find form with typed predicates (equals, glob, numeric range, present), the records
// found, and one record with its provenance chain (the job that made it, and that job's ancestors).

import { el, clear, getJSON, link, shown, time } from "./dom.js";

const OPS = [["=", "equals"], ["~", "matches glob"], [">=", "\u2265"], [">", ">"], ["<=", "\u2264"], ["<", "<"], ["?", "is present"]];
const RANGE = { ">=": "ge", ">": "gt", "<=": "le", "<": "lt" };

// A typed value, as the command line reads one: JSON where it parses (3, true, "x"), else the text.
function typed(text) {
  try { return JSON.parse(text); } catch { return text; }
}

function predicate(op, value) {
  if (op === "=") return { op: "eq", value: typed(value) };
  if (op === "~") return { op: "glob", pattern: value };
  if (op === "?") return { op: "present" };
  return { op: "range", [RANGE[op]]: Number(value) };
}

function conditionRow() {
  const key = el("input", { type: "text", class: "cond-key", placeholder: "key", "aria-label": "key" });
  const op = el("select", { class: "cond-op", "aria-label": "operator" }, ...OPS.map(([v, label]) => el("option", { value: v, text: label })));
  const value = el("input", { type: "text", class: "cond-value", placeholder: "value", "aria-label": "value" });
  const remove = el("button", { type: "button", text: "\u00d7", "aria-label": "remove condition" });
  const row = el("div", { class: "condition" }, key, " ", op, " ", value, " ", remove);
  remove.addEventListener("click", () => row.remove());
  return row;
}

function metaText(metadata) {
  return Object.entries(metadata || {}).map(([k, v]) => `${shown(k)}=${shown(JSON.stringify(v))}`).join("  ");
}

export async function dataPage(main) {
  const conditions = el("div", { id: "conditions" }, conditionRow());
  const add = el("button", { type: "button", id: "add-condition", text: "+ condition" });
  const site = el("input", { type: "text", id: "find-site", placeholder: "any site", "aria-label": "site" });
  const workflow = el("input", { type: "text", id: "find-workflow", placeholder: "any workflow", "aria-label": "workflow" });
  const form = el("form", { id: "find-form" }, conditions, add, " site ", site, " workflow ", workflow, " ",
    el("button", { type: "submit", text: "Find" }));
  const problem = el("p", { id: "find-error", class: "error" });
  const body = el("tbody", { id: "data-rows" });
  main.append(el("h1", { text: "Data" }), form, problem,
    el("table", { class: "grid", id: "data" },
      el("thead", {}, el("tr", {}, ...["Location", "Site", "Metadata", "Arrived", "Job"].map((h) => el("th", { text: h })))), body));
  add.addEventListener("click", () => conditions.append(conditionRow()));

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    problem.textContent = "";
    const where = {};
    for (const row of conditions.querySelectorAll(".condition")) {
      const key = row.querySelector(".cond-key").value.trim();
      if (key) where[key] = predicate(row.querySelector(".cond-op").value, row.querySelector(".cond-value").value);
    }
    const query = { where, limit: 500 };
    if (site.value.trim()) query.site = site.value.trim();
    if (workflow.value.trim()) query.workflow_id = workflow.value.trim();
    try {
      const doc = await getJSON("api/data?" + new URLSearchParams({ q: JSON.stringify(query) }).toString());
      clear(body);
      for (const r of doc.records) {
        body.append(el("tr", { "data-id": r.data_id },
          el("td", {}, link("#/data/" + encodeURIComponent(r.data_id), r.location)),
          el("td", { text: shown(r.site) }), el("td", { class: "mono", text: metaText(r.metadata) }),
          el("td", { text: time(r.time) }),
          el("td", {}, r.job_id ? link("#/job/" + encodeURIComponent(r.job_id), r.job_id) : "")));
      }
      body.dataset.count = doc.records.length;
    } catch (error) {
      problem.textContent = shown(error.message);
    }
  });
  return null;
}

export async function dataRecordPage(main, session, dataId) {
  const doc = await getJSON("api/data/" + encodeURIComponent(dataId));
  const r = doc.record;
  main.append(el("h1", { id: "data-title" }, shown(r.location)),
    el("p", { class: "muted mono" }, "data ", shown(r.data_id), " on ", shown(r.site), ` \u00b7 ${time(r.time)}`,
      r.size !== null ? ` \u00b7 ${r.size} bytes` : "", r.checksum ? ` \u00b7 ${shown(r.checksum)}` : ""),
    el("h2", { text: "Metadata" }),
    el("table", { class: "grid compact", id: "metadata" }, el("tbody", {},
      ...Object.entries(r.metadata).map(([k, v]) => el("tr", {}, el("td", { class: "mono", text: shown(k) }), el("td", { text: shown(JSON.stringify(v)) }))))),
    el("h2", { text: "Provenance" }));
  const chain = [doc.job, ...doc.ancestors].filter(Boolean);
  if (!chain.length) main.append(el("p", { class: "muted", id: "provenance", text: "No job is known to have produced it." }));
  else {
    main.append(el("ol", { id: "provenance" }, ...chain.map((j, i) => el("li", { "data-job": j.job_id },
      i === 0 ? "made by " : "after ", link("#/job/" + encodeURIComponent(j.job_id), j.name || j.job_id), ` ${j.state}`))));
  }
  return null;
}
