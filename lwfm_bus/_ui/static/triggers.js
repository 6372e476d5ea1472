// Triggers: every registered trigger and what became of it (fired, expired, failed, withdrawn, each
// with its reason); for those still waiting, how many upstreams are satisfied of those required and,
// for a join with a window, the time left.  Reloaded when a trigger or job event arrives; the
// countdown ticks in the page.  With --allow-actions a waiting trigger can be withdrawn.

import { el, clear, getJSON, post, link, shown, time, coalesced } from "./dom.js";
import { Live } from "./live.js";

function progressOf(t) {
  const p = t.progress;
  if (!p) return el("span", { class: "muted", text: t.signature ? "waits for data: " + shown(JSON.stringify(t.signature)) : "" });
  const text = `${p.satisfied} of ${p.required} satisfied` + (p.upstreams.length !== p.required ? ` (${p.mode}, ${p.upstreams.length} upstreams)` : "");
  const node = el("span", { class: "progress", "data-satisfied": p.satisfied, "data-required": p.required }, text);
  if (p.within_s) {
    const left = el("span", { class: "countdown", "data-deadline": p.deadline || "" },
      p.deadline ? "" : ` \u00b7 window of ${p.within_s} s opens at the first`);
    node.append(left);
  }
  return node;
}

function tick(root) {
  for (const node of root.querySelectorAll(".countdown[data-deadline]")) {
    if (!node.dataset.deadline) continue;
    const left = (Date.parse(node.dataset.deadline) - Date.now()) / 1000;
    node.textContent = left > 0 ? ` \u00b7 ${left.toFixed(0)} s left` : " \u00b7 window closed";
  }
}

export async function triggersPage(main, session) {
  const filter = el("input", { type: "search", id: "tr-filter", placeholder: "filter by id, name, workflow, state", "aria-label": "filter" });
  const body = el("tbody", { id: "tr-rows" });
  main.append(el("h1", { text: "Triggers" }), filter,
    el("table", { class: "grid", id: "triggers" },
      el("thead", {}, el("tr", {}, ...["Trigger", "Kind", "State", "Starts", "Progress", "Fired", "Reason", "Registered", ""].map((h) => el("th", { text: h })))),
      body));
  let rows = [];

  function render() {
    const needle = filter.value.trim().toLowerCase();
    clear(body);
    for (const t of rows) {
      const hay = [t.trigger_id, t.name || "", t.workflow_id || "", t.state, t.kind].join(" ").toLowerCase();
      if (needle && !hay.includes(needle)) continue;
      let action = null;
      if (session.allow_actions && t.state === "active") {
        action = el("button", { class: "danger withdraw", text: "Withdraw" });
        action.addEventListener("click", async () => {
          action.disabled = true;
          try {
            await post("api/triggers/" + encodeURIComponent(t.trigger_id) + "/withdraw", session.csrf);
            action.textContent = "withdrawing\u2026";
          } catch (error) {
            action.textContent = "refused: " + error.message;
          }
        });
      }
      const starts = el("span", {}, shown(t.downstream.label), ` on ${shown(t.downstream.site)}`);
      body.append(el("tr", { "data-trigger": t.trigger_id, "data-state": t.state },
        el("td", {}, el("div", { class: "mono", text: t.trigger_id }), el("div", { text: shown(t.name || "") }),
          t.workflow_id ? link("#/workflow/" + encodeURIComponent(t.workflow_id), "workflow " + t.workflow_id) : null),
        el("td", { text: t.kind }),
        el("td", { class: "state", text: t.state }),
        el("td", {}, starts, t.last_job_id ? el("div", {}, link("#/job/" + encodeURIComponent(t.last_job_id), "last job")) : null),
        el("td", {}, progressOf(t)),
        el("td", { text: t.fired }),
        el("td", { class: "reason", text: shown(t.reason || "") }),
        el("td", { text: time(t.registered_at) }),
        el("td", {}, action)));
    }
    tick(body);
  }

  const load = coalesced(async () => {
    rows = (await getJSON("api/triggers")).triggers;
    render();
  });
  filter.addEventListener("input", render);
  await load();
  const live = new Live("lwfm.>", session.seq, (batch) => {
    if (batch.some((p) => p.event.type.startsWith("lwfm.trigger.") || p.event.type === "lwfm.job.status")) load();
  });
  const clock = setInterval(() => tick(body), 1000); // the countdown only: nothing is fetched
  return () => { live.close(); clearInterval(clock); };
}
