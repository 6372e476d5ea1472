// One workflow: the metro map recoloured live with done/expected per station, the job table,
// a timeline of its jobs (queued, then running, per job), and failures with the tail of their stderr.
//
// The page's job states come from the workflow's events, replayed from the first one: the
// count of events it applied is shown (#wf-events), and a duplicate is counted apart
// (#wf-duplicates), so a test can check that a broken connection neither lost nor repeated one.

import { el, clear, getJSON, post, link, shown, time, supersedes, isTerminal, STATES } from "./dom.js";
import { Live } from "./live.js";

const SVG_NS = "http://www.w3.org/2000/svg";
const COLOURS = { pending: "#cfd8dc", running: "#ffd54f", complete: "#66bb6a", failed: "#e53935", mixed: "#ff8a65" };
const SVG_TAGS = new Set(["svg", "g", "title", "desc", "rect", "circle", "text", "polyline", "line", "set", "tspan"]);
const ACTIVE = ["RUNNING", "INFO", "FINISHING"];
const WAITING = ["READY", "PENDING"];
const BAD = ["FAILED", "CANCELLED"];
const ROW_HEIGHT = 28; // px: .vrow's height in style.css
const VIEW_ROWS = 17; // rows in view at once; the list scrolls beyond
const TIMELINE_ROWS = 300; // more jobs than this: the first ones are drawn, and a note says so
const BAR_COLOURS = { COMPLETE: "#66bb6a", FAILED: "#e53935", CANCELLED: "#ff8a65" };

// The server escapes every name in the map; this keeps only the drawing elements and plain
// attributes anyway, so even a map that was not escaped could not run script or load anything.
function sanitizedSvg(text) {
  const doc = new DOMParser().parseFromString(text, "image/svg+xml");
  const root = doc.documentElement;
  if (root.nodeName !== "svg" || doc.getElementsByTagName("parsererror").length) return null;
  const walk = (node) => {
    for (const child of [...node.children]) {
      if (!SVG_TAGS.has(child.localName) || child.namespaceURI !== SVG_NS) { child.remove(); continue; }
      for (const attr of [...child.attributes]) {
        const name = attr.name.toLowerCase();
        if (name.startsWith("on") || name.includes("href") || name === "style") child.removeAttribute(attr.name);
      }
      walk(child);
    }
  };
  walk(root);
  return document.importNode(root, true);
}

function stationState(counts, expected) {
  const n = (states) => states.reduce((sum, s) => sum + (counts[s] || 0), 0);
  const total = n(STATES), bad = n(BAD), complete = counts.COMPLETE || 0;
  if (total === 0) return null;
  if (bad) return bad === total ? "failed" : "mixed";
  if (n(ACTIVE) || (n(WAITING) && complete)) return "running";
  if (n(WAITING)) return "pending";
  return total >= expected ? "complete" : "running";
}

// The step path a pipeline job ran for: "<pipeline>:<path>[<run>]@<iteration>"; null for a gate job
// ("...#why") or another pipeline's job.  Only paths of this map count.
function stationOf(name, pipeline, paths) {
  if (!name || !name.startsWith(pipeline + ":")) return null;
  const rest = name.slice(pipeline.length + 1).replace(/@(0|[1-9][0-9]{0,8})$/, "").replace(/\[[^\[\]]{1,64}\]$/, "");
  return paths.has(rest) ? rest : null;
}

export async function workflowPage(main, session, workflowId) {
  const doc = await getJSON("api/workflows/" + encodeURIComponent(workflowId));
  const wf = doc.workflow;
  const jobs = new Map();
  const mapInfo = doc.map;
  const stations = mapInfo ? mapInfo.stations : [];
  const paths = new Set(stations.map((s) => s.path));

  const title = el("h1", { id: "wf-title" }, shown(wf.name || "(unnamed workflow)"));
  const counts = el("div", { id: "wf-counts", class: "states" });
  const eventsSeen = el("span", { id: "wf-events", "data-count": 0, text: "0 events" });
  const duplicates = el("span", { id: "wf-duplicates", "data-count": 0, text: "" });
  const actions = el("div", { class: "actions" });
  main.append(title, el("p", { class: "muted mono" }, "workflow ", shown(wf.workflow_id), " \u00b7 started ", time(wf.created_at)),
    counts, el("p", { class: "muted" }, eventsSeen, " ", duplicates), actions);

  if (session.allow_actions) {
    const result = el("span", { id: "wf-cancel-result", class: "muted" });
    const really = el("button", { id: "wf-cancel-confirm", class: "danger", hidden: true, text: "Really cancel every job of this workflow" });
    const ask = el("button", { id: "wf-cancel", text: "Cancel workflow\u2026" });
    ask.addEventListener("click", () => { really.hidden = false; });
    really.addEventListener("click", async () => {
      really.disabled = true;
      result.textContent = "cancelling\u2026";
      try {
        const stop = await post("api/workflows/" + encodeURIComponent(wf.workflow_id) + "/cancel", session.csrf);
        result.textContent = `cancelled ${stop.jobs_cancelled.length} job(s), withdrew ${stop.triggers_withdrawn.length} trigger(s)` +
          (stop.still_active.length ? `; still active: ${stop.still_active.length}` : "");
      } catch (error) {
        result.textContent = "refused: " + error.message;
      } finally {
        really.disabled = false;
        really.hidden = true;
      }
    });
    actions.append(ask, " ", really, " ", result);
    if (typeof wf.properties.pipeline === "string" && wf.properties.pipeline) {
      // A failed or interrupted run goes on as 'lwfm-bus run FILE --resume W', started by the
      // dashboard: what failed or was cancelled runs again as new attempts, seen here live.
      const resumed = el("span", { id: "wf-resume-result", class: "muted" });
      const resume = el("button", { id: "wf-resume", text: "Resume run" });
      resume.addEventListener("click", async () => {
        resume.disabled = true;
        resumed.textContent = "starting\u2026";
        try {
          const started = await post("api/workflows/" + encodeURIComponent(wf.workflow_id) + "/resume", session.csrf);
          resumed.dataset.pid = started.pid;
          resumed.textContent = `resuming (process ${started.pid}): ${started.argv.slice(3).join(" ")}; its output: ${started.log}`;
        } catch (error) {
          resumed.textContent = "refused: " + error.message;
        } finally {
          resume.disabled = false;
        }
      });
      actions.append(el("br"), resume, " ", resumed);
    }
  }

  // -- the metro map, and a table of its stations (the same numbers, as text)
  let svg = null;
  const stationBody = el("tbody", { id: "station-rows" });
  if (mapInfo) {
    svg = sanitizedSvg(mapInfo.svg);
    const holder = el("div", { id: "map", class: "map" });
    if (svg) holder.append(svg);
    main.append(el("h2", { text: "Map" }), holder,
      el("table", { class: "grid compact", id: "stations" },
        el("thead", {}, el("tr", {}, ...["Station", "Done", "State"].map((h) => el("th", { text: h })))), stationBody));
  } else if (doc.map_note) {
    main.append(el("p", { class: "muted", id: "map-note", text: doc.map_note }));
  }
  const stationRows = new Map();
  for (const s of stations) {
    const row = el("tr", { "data-station": s.path, "data-status": "" },
      el("td", { class: "mono", text: s.path }), el("td", { class: "done", text: "-" }), el("td", { class: "state", text: "" }));
    stationRows.set(s.path, row);
    stationBody.append(row);
  }

  // -- jobs (a virtualised list: only the rows in view exist, so 10,000 jobs open and scroll as 10),
  // the timeline and failures
  const jobHeader = el("div", { class: "vrow vhead" },
    ...["Job", "State", "Site", "Exit", "Updated", "Info"].map((h) => el("span", { text: h })));
  const jobRows = el("div", { id: "job-rows", class: "vrows" });
  const spacer = el("div", { class: "vspacer" }, jobRows);
  const viewport = el("div", { id: "jobs", class: "vlist" }, spacer);
  const jobCount = el("span", { id: "job-count", class: "muted" });
  const failures = el("div", { id: "failures" });
  const timeline = el("div", { id: "timeline", class: "timeline" });
  const timelineNote = el("p", { class: "muted", id: "timeline-note" });
  const spans = new Map(); // job id -> {created, started, ended} (ms since the epoch)
  main.append(el("h2", {}, "Jobs ", jobCount), jobHeader, viewport,
    el("h2", { text: "Timeline" }), timeline, timelineNote,
    el("h2", { text: "Failures" }), failures);
  const order = []; // job ids, in the order they became known
  const failedShown = new Set();
  let windowFrame = 0;

  function upsert(job) {
    const current = jobs.get(job.job_id);
    if (current && !supersedes(job.state, current.state)) return false;
    const merged = { ...(current || {}), ...job };
    if (!merged.station && mapInfo) merged.station = stationOf(merged.name, mapInfo.pipeline, paths);
    if (!current) order.push(job.job_id);
    jobs.set(job.job_id, merged);
    if (merged.state === "FAILED" && !failedShown.has(job.job_id)) {
      failedShown.add(job.job_id);
      showFailure(merged);
    }
    return true;
  }

  function rowOf(job) {
    return el("div", { class: "vrow", "data-job": job.job_id, "data-state": job.state },
      el("span", {}, link("#/job/" + encodeURIComponent(job.job_id), job.name || job.job_id)),
      el("span", { class: "state", "data-state": job.state, text: job.state }),
      el("span", { text: shown(job.site) }),
      el("span", { text: job.exit_code ?? "" }),
      el("span", { text: time(job.updated_at) }),
      el("span", { text: shown(job.info || job.native_info || "") }));
  }

  // Draws the rows in view (and a few beyond) over a spacer as tall as every row.
  function renderWindow() {
    windowFrame = 0;
    spacer.style.height = `${order.length * ROW_HEIGHT}px`;
    viewport.style.height = `${Math.min(VIEW_ROWS, Math.max(order.length, 1)) * ROW_HEIGHT + 2}px`;
    const first = Math.max(0, Math.floor(viewport.scrollTop / ROW_HEIGHT) - 5);
    const last = Math.min(order.length, first + Math.ceil((viewport.clientHeight || 600) / ROW_HEIGHT) + 10);
    jobRows.style.transform = `translateY(${first * ROW_HEIGHT}px)`;
    clear(jobRows);
    for (let i = first; i < last; i++) jobRows.append(rowOf(jobs.get(order[i])));
    jobCount.textContent = `(${order.length})`;
    jobCount.dataset.count = order.length;
  }
  const scheduleWindow = () => { if (!windowFrame) windowFrame = requestAnimationFrame(renderWindow); };
  viewport.addEventListener("scroll", scheduleWindow, { passive: true });

  function noteTime(jobId, state, when) {
    const t = Date.parse(when);
    if (isNaN(t)) return;
    const span = spans.get(jobId) || {};
    if (span.created === undefined || t < span.created) span.created = t;
    if (["RUNNING", "INFO", "FINISHING"].includes(state) && (span.started === undefined || t < span.started)) span.started = t;
    if (isTerminal(state) && span.ended === undefined) span.ended = t;
    spans.set(jobId, span);
  }

  function renderTimeline() {
    clear(timeline);
    const rows = [...jobs.values()].filter((j) => spans.has(j.job_id))
      .sort((a, b) => spans.get(a.job_id).created - spans.get(b.job_id).created);
    timelineNote.textContent = rows.length > TIMELINE_ROWS ? `the first ${TIMELINE_ROWS} of ${rows.length} jobs` : "";
    const shownRows = rows.slice(0, TIMELINE_ROWS);
    if (!shownRows.length) return;
    const now = Date.now();
    const t0 = Math.min(...shownRows.map((j) => spans.get(j.job_id).created));
    const t1 = Math.max(...shownRows.map((j) => spans.get(j.job_id).ended ?? now), t0 + 1000);
    const labelW = 220, width = 900, rowH = 16, plot = width - labelW - 10;
    const x = (t) => labelW + ((t - t0) / (t1 - t0)) * plot;
    const svgNode = document.createElementNS(SVG_NS, "svg");
    const height = shownRows.length * rowH + 24;
    for (const [k, v] of Object.entries({ width, height, viewBox: `0 0 ${width} ${height}`, "font-size": 11, class: "gantt" })) {
      svgNode.setAttribute(k, v);
    }
    const svgEl = (tag, attrs, text) => {
      const node = document.createElementNS(SVG_NS, tag);
      for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
      if (text !== undefined) node.textContent = text;
      return node;
    };
    shownRows.forEach((job, i) => {
      const span = spans.get(job.job_id);
      const y = i * rowH + 4;
      const row = svgEl("g", { class: "bar", "data-job": job.job_id, "data-state": job.state });
      const label = shown(job.name || job.job_id);
      row.append(svgEl("text", { x: 0, y: y + 11, fill: "#212121" }, label.length > 34 ? label.slice(0, 33) + "\u2026" : label));
      const start = span.started ?? span.created, end = span.ended ?? now;
      if (span.started !== undefined && span.started > span.created) {
        row.append(svgEl("rect", { class: "queued", x: x(span.created), y: y + 4, width: Math.max(1, x(span.started) - x(span.created)), height: 4, fill: "#b0bec5" }));
      }
      row.append(svgEl("rect", { class: "ran", x: x(start), y, width: Math.max(2, x(end) - x(start)), height: 12, rx: 2,
        fill: BAR_COLOURS[job.state] || "#ffd54f" }));
      row.append(svgEl("title", {}, `${label}: ${job.state}, ${((end - start) / 1000).toFixed(1)} s` +
        (span.started !== undefined ? ` (queued ${((span.started - span.created) / 1000).toFixed(1)} s)` : "")));
      svgNode.append(row);
    });
    const axisY = shownRows.length * rowH + 18;
    svgNode.append(svgEl("text", { x: labelW, y: axisY, fill: "#607d8b" }, new Date(t0).toLocaleTimeString()));
    svgNode.append(svgEl("text", { x: width - 4, y: axisY, fill: "#607d8b", "text-anchor": "end" },
      `${new Date(t1).toLocaleTimeString()} (${((t1 - t0) / 1000).toFixed(1)} s)`));
    timeline.append(svgNode);
  }

  async function showFailure(job) {
    const tail = el("pre", { class: "log", text: "reading stderr\u2026" });
    failures.append(el("div", { class: "failure", "data-job": job.job_id },
      el("h3", {}, link("#/job/" + encodeURIComponent(job.job_id), job.name || job.job_id), ` exit ${job.exit_code ?? "?"}`), tail));
    try {
      const log = await getJSON("api/jobs/" + encodeURIComponent(job.job_id) + "/log?stream=stderr");
      const lines = log.text.split("\n").filter((line) => line.trim());
      tail.textContent = lines.slice(-20).map(shown).join("\n") || (log.error ? shown(log.error) : "(stderr is empty)");
    } catch (error) {
      tail.textContent = "stderr cannot be read: " + error.message;
    }
  }

  function recount() {
    const total = {};
    const byStation = new Map(stations.map((s) => [s.path, {}]));
    // A resumed run runs a failed step again as a new attempt, under the same name: a
    // station counts each run's latest attempt only.
    const latest = new Map();
    for (const job of jobs.values()) {
      if (!job.station || !job.name) continue;
      const other = latest.get(job.name);
      if (!other || (spans.get(job.job_id)?.created ?? 0) >= (spans.get(other.job_id)?.created ?? 0)) latest.set(job.name, job);
    }
    for (const job of jobs.values()) {
      total[job.state] = (total[job.state] || 0) + 1;
      if (job.station && job.name && latest.get(job.name) !== job) continue;
      if (job.station && byStation.has(job.station)) {
        const c = byStation.get(job.station);
        c[job.state] = (c[job.state] || 0) + 1;
      }
    }
    clear(counts);
    for (const state of STATES) {
      if (total[state]) counts.append(el("span", { class: "chip", "data-state": state, text: `${state} ${total[state]}` }));
    }
    // Nested pipelines sum their stations; a station that has not started counts as one run to come.
    const summary = new Map();
    const info = new Map(stations.map((s) => [s.path, s]));
    const sumOf = (path) => {
      if (summary.has(path)) return summary.get(path);
      const s = info.get(path);
      const own = byStation.get(path) || {};
      const seen = Object.values(own).reduce((a, b) => a + b, 0);
      let result;
      if (!s.children) {
        result = seen ? { counts: own, expected: Math.max(seen, s.runs || 0) } : null;
      } else {
        const c = { ...own };
        let expected = 0, any = seen > 0;
        for (const inner of s.children) {
          const sub = sumOf(inner);
          if (!sub) { expected += info.get(inner).runs || 1; continue; }
          any = true;
          for (const [k, v] of Object.entries(sub.counts)) c[k] = (c[k] || 0) + v;
          expected += sub.expected;
        }
        result = any ? { counts: c, expected } : null;
      }
      summary.set(path, result);
      return result;
    };
    for (const s of stations) {
      const sum = sumOf(s.path);
      const state = sum ? stationState(sum.counts, sum.expected) : null;
      const done = sum ? (sum.counts.COMPLETE || 0) : 0;
      const expected = sum ? sum.expected : (s.runs || 0);
      const row = stationRows.get(s.path);
      row.dataset.status = state || "";
      row.dataset.done = done;
      row.dataset.expected = expected;
      row.querySelector(".done").textContent = sum ? `${done}/${expected}` : "-";
      row.querySelector(".state").textContent = state || "";
      if (svg) paintStation(s.path, state, sum ? `${done}/${expected}` : null);
    }
  }

  function paintStation(path, state, badge) {
    const group = [...svg.querySelectorAll("g.station")].find((g) => g.getAttribute("data-step") === path);
    if (!group) return;
    if (state) group.setAttribute("data-status", state); else group.removeAttribute("data-status");
    const marker = group.querySelector(":scope > .marker, :scope > rect.frame");
    if (marker && state) {
      if (marker.classList.contains("frame")) marker.setAttribute("stroke", COLOURS[state]);
      else marker.setAttribute("fill", COLOURS[state]);
    }
    if (!badge) return;
    let count = group.querySelector(":scope > g.count");
    if (!count && marker) {
      const box = marker.getBBox();
      const x = Math.round(box.x + box.width + 7), y = Math.round(box.y + box.height / 2 - 8);
      count = document.createElementNS(SVG_NS, "g");
      count.setAttribute("class", "count");
      const rect = document.createElementNS(SVG_NS, "rect");
      rect.setAttribute("x", x); rect.setAttribute("y", y - 8); rect.setAttribute("height", 15); rect.setAttribute("rx", 7);
      rect.setAttribute("fill", "#212121");
      const text = document.createElementNS(SVG_NS, "text");
      text.setAttribute("y", y + 3); text.setAttribute("text-anchor", "middle"); text.setAttribute("font-size", 10);
      text.setAttribute("fill", "#ffffff");
      count.append(rect, text);
      group.append(count);
    }
    if (!count) return;
    const rect = count.querySelector("rect"), text = count.querySelector("text");
    const width = badge.length * 6 + 8;
    rect.setAttribute("width", width);
    text.setAttribute("x", Number(rect.getAttribute("x")) + Math.floor(width / 2));
    text.textContent = badge;
  }

  for (const job of doc.jobs) {
    upsert(job);
    noteTime(job.job_id, "READY", job.created_at);
    if (isTerminal(job.state)) noteTime(job.job_id, job.state, job.updated_at);
  }
  renderWindow();
  recount();
  renderTimeline();

  const live = new Live(doc.subject, 0, (batch, source) => {
    const changed = new Set();
    for (const { event } of batch) {
      if (event.type !== "lwfm.job.status") continue;
      const d = event.data;
      noteTime(d.job_id, d.state, event.time);
      if (upsert({ job_id: d.job_id, name: d.name, site: d.site, state: d.state, exit_code: d.exit_code,
        info: d.info, native_info: d.native_info, native_state: d.native_state, parent_ids: d.parent_ids,
        updated_at: event.time })) changed.add(d.job_id);
    }
    if (changed.size) {
      renderWindow();
      recount();
    }
    renderTimeline();
    eventsSeen.dataset.count = source.received;
    eventsSeen.textContent = `${source.received} events`;
    duplicates.dataset.count = source.duplicates;
    duplicates.textContent = source.duplicates ? `${source.duplicates} duplicates dropped` : "";
  });
  window.lwfmLive = live; // for tests and the curious: its lastSeq, received and duplicates
  return () => { live.close(); if (window.lwfmLive === live) window.lwfmLive = null; };
}
