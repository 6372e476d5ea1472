// One job: its state history with the site's own state word, the tail of its logs (read again
// when the job reports something), its parents and children, and a cancel button with --allow-actions.

import { el, clear, getJSON, post, link, shown, time, isTerminal } from "./dom.js";
import { Live } from "./live.js";

function jobList(jobs) {
  if (!jobs.length) return el("p", { class: "muted", text: "none" });
  return el("ul", {}, ...jobs.map((j) => el("li", { "data-job": j.job_id },
    link("#/job/" + encodeURIComponent(j.job_id), j.name || j.job_id), ` ${j.state}`)));
}

export async function jobPage(main, session, jobId) {
  const doc = await getJSON("api/jobs/" + encodeURIComponent(jobId));
  const job = doc.job;
  const state = el("span", { id: "job-state", class: "chip", "data-state": job.state, text: job.state });
  main.append(el("h1", { id: "job-title" }, shown(job.name || job.job_id), " ", state),
    el("p", { class: "muted mono" }, "job ", shown(job.job_id), " on ", shown(job.site),
      job.workflow_id ? el("span", {}, " in workflow ", link("#/workflow/" + encodeURIComponent(job.workflow_id), job.workflow_id)) : null));

  if (session.allow_actions) {
    const result = el("span", { id: "job-cancel-result", class: "muted" });
    const button = el("button", { id: "job-cancel", class: "danger", text: "Cancel job", disabled: isTerminal(job.state) });
    button.addEventListener("click", async () => {
      button.disabled = true;
      try {
        await post("api/jobs/" + encodeURIComponent(job.job_id) + "/cancel", session.csrf);
        result.textContent = "cancel requested";
      } catch (error) {
        result.textContent = "refused: " + error.message;
        button.disabled = false;
      }
    });
    main.append(el("div", { class: "actions" }, button, " ", result));
  }

  const history = el("tbody", { id: "history-rows" });
  main.append(el("h2", { text: "States" }),
    el("table", { class: "grid", id: "history" },
      el("thead", {}, el("tr", {}, ...["Seq", "Time", "State", "Site's state", "Exit", "Info"].map((h) => el("th", { text: h })))), history));
  const addHistory = (h) => history.append(el("tr", { "data-seq": h.seq },
    el("td", { text: h.seq }), el("td", { text: time(h.time) }), el("td", { text: h.state }),
    el("td", { text: shown(h.native_state || "") }), el("td", { text: h.exit_code ?? "" }),
    el("td", { text: shown([h.info, h.native_info].filter(Boolean).join(" \u00b7 ")) })));
  doc.history.forEach(addHistory);

  main.append(el("h2", { text: "Parents" }), jobList(doc.parents), el("h2", { text: "Children" }), jobList(doc.children));

  const logs = {};
  for (const stream of ["stdout", "stderr"]) {
    logs[stream] = el("pre", { class: "log", id: "log-" + stream, text: "" });
    main.append(el("h2", { text: stream }), logs[stream]);
  }
  let reading = false, again = false;
  async function readLogs() {
    if (reading) { again = true; return; }
    reading = true;
    try {
      for (const stream of ["stdout", "stderr"]) {
        const log = await getJSON(`api/jobs/${encodeURIComponent(job.job_id)}/log?stream=${stream}`);
        const lines = log.text.split("\n");
        logs[stream].textContent = lines.slice(-200).map(shown).join("\n") || (log.error ? shown(log.error) : "(empty)");
      }
    } catch (error) {
      logs.stdout.textContent = "logs cannot be read: " + error.message;
    } finally {
      reading = false;
      if (again) { again = false; readLogs(); }
    }
  }
  readLogs();

  const live = new Live(doc.subject, doc.seq, (batch) => {
    let news = false;
    for (const { seq, event } of batch) {
      if (event.type !== "lwfm.job.status") continue;
      const d = event.data;
      addHistory({ seq, time: event.time, ...d });
      state.textContent = d.state;
      state.dataset.state = d.state;
      news = true;
    }
    if (news) readLogs();
  });
  return () => live.close();
}
