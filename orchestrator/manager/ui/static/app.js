// bertctl dashboard: the jobs table (#/) and a job's page (#/jobs/ID), refreshed by polling the API.
// The session is an HttpOnly cookie the page never sees; a request that changes something (cancel)
// carries the CSRF value the server put in <meta name="bertctl-csrf">.
"use strict";

const POLL_MS = 2000;
const TERMINAL = new Set(["SUCCEEDED", "FAILED", "CANCELLED"]);
const CSRF = document.querySelector('meta[name="bertctl-csrf"]').content;
const state = {timer: null, route: null, events: [], lastEventId: 0, jobId: null};

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "text") node.textContent = String(v); else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function table(id, headers, rows) {
  const head = el("tr", {}, ...headers.map(([label, cls]) => el("th", {class: cls || null, text: label})));
  const body = rows.map(cells => el("tr", cells.attrs || {}, ...cells.map(([value, cls]) =>
    el("td", {class: cls || null}, value instanceof Node ? value : String(value ?? "–")))));
  return el("table", {id}, el("thead", {}, head), el("tbody", {}, ...body));
}

const fmt = v => BertCharts.compact(v);
const pct = v => (v === null || v === undefined) ? "–" : (v * 100).toFixed(1) + "%";
const secs = v => (v === null || v === undefined) ? "–" : v < 120 ? v.toFixed(1) + " s" : v < 7200 ?
  (v / 60).toFixed(1) + " min" : (v / 3600).toFixed(1) + " h";
const clock = t => t ? new Date(t * 1000).toLocaleString() : "–";
const phase = p => el("span", {class: `phase phase-${p}`, "data-phase": p, text: p});

async function api(path, options) {
  const resp = await fetch(path, {credentials: "same-origin", ...options});
  if (resp.status === 401) { window.location.replace("/ui"); throw new Error("signed out"); }
  if (!resp.ok) throw new Error(`${path}: HTTP ${resp.status}`);
  return resp.json();
}

function schedule(fn) {
  clearTimeout(state.timer);
  state.timer = setTimeout(fn, POLL_MS);
}

function refreshed(ok, message) {
  document.getElementById("refreshed").textContent = ok ? `updated ${new Date().toLocaleTimeString()}` : message;
}

// -- the jobs table -------------------------------------------------------------------------------

function jobRow(j, now) {
  const link = el("a", {href: `#/jobs/${encodeURIComponent(j.id)}`, text: j.id});
  const row = [[link], [phase(j.phase)], [`${j.step} / ${j.max_steps}`, "num"], [fmt(j.tokens_per_s), "num"],
               [pct(j.goodput), "num"], [j.attempts, "num"], [secs(now - j.created_at), "num"]];
  row.attrs = {"data-job-id": j.id};
  return row;
}

async function showJobs() {
  const view = document.getElementById("view");
  try {
    const data = await api("/ui/api/jobs");
    const headers = [["job"], ["phase"], ["step", "num"], ["tokens/s", "num"], ["goodput", "num"],
                     ["attempts", "num"], ["age", "num"]];
    const content = data.jobs.length ? table("jobs", headers, data.jobs.map(j => jobRow(j, data.now)))
      : el("p", {class: "muted", id: "no-jobs", text: "No jobs yet: `bertctl submit FILE` adds one."});
    view.replaceChildren(el("h1", {text: "Jobs"}), content);
    refreshed(true);
  } catch (err) {
    refreshed(false, `refresh failed: ${err.message}`);
  }
  if (state.route === "jobs") schedule(showJobs);
}

// -- one job --------------------------------------------------------------------------------------

function chartCard(title, points, key, attempts) {
  return el("div", {class: "card"}, el("h3", {text: title}), BertCharts.lineChart(points, key, attempts, title));
}

function attemptsTable(attempts) {
  const headers = [["#", "num"], ["launched"], ["first step", "num"], ["last step", "num"], ["ended"], ["end reason"],
                   ["exit", "num"], ["steps lost", "num"], ["recovery", "num"]];
  return table("attempts", headers, attempts.map(a => {
    const row = [[a.number, "num"], [clock(a.created_at)], [a.first_step, "num"], [a.last_step, "num"],
                 [clock(a.ended_at)], [a.end_reason || a.state], [a.exit_code, "num"], [a.steps_lost, "num"],
                 [secs(a.recovery_s), "num"]];
    row.attrs = {"data-attempt": a.number, "data-end-reason": a.end_reason || ""};
    return row;
  }));
}

function goodputCard(g) {
  const items = [["productive", g.productive_s], ["checkpoint", g.checkpoint_s], ["recovery", g.recovery_s]];
  const legend = el("ul", {class: "legend"}, ...items.map(([name, s]) =>
    el("li", {}, el("span", {class: `swatch sw-${name}`}), `${name} ${secs(s)}`)),
    el("li", {}, el("span", {class: "swatch sw-other"}), "other"));
  const facts = el("p", {id: "goodput-summary"}, `productive fraction ${pct(g.productive_fraction)} of ${secs(g.wall_s)}; `
    + `${g.steps_lost} step(s) lost; ${g.restarts} restart(s)`);
  return el("div", {class: "card"}, facts, BertCharts.goodputBar(g), legend);
}

function checkpointsTable(checkpoints) {
  const rows = [...checkpoints].reverse().map(c => [[c.step, "num"], [c.attempt, "num"], [c.world_size, "num"],
                                                    [secs(c.save_seconds), "num"], [clock(c.created_at)], [c.uri]]);
  return table("checkpoints", [["step", "num"], ["attempt", "num"], ["workers", "num"], ["save", "num"],
                               ["committed"], ["uri"]], rows);
}

function eventsTable(events) {
  const rows = events.slice(-200).reverse().map(e => {
    const row = [[clock(e.ts)], [e.type], [e.attempt, "num"], [e.message]];
    row.attrs = {"data-type": e.type};
    return row;
  });
  return table("events", [["time"], ["type"], ["attempt", "num"], ["message"]], rows);
}

function evaluationsTable(evaluations) {  // spec.evaluation: each due checkpoint step, its tasks' scores
  const task = t => t.status === "succeeded" ?
    `${t.task}: ${Object.entries(t.metrics).map(([k, v]) => `${k} ${v.toFixed(4)}`).join(", ")}` :
    `${t.task} failed: ${t.message}`;
  const rows = [...evaluations].reverse().map(e => {
    const row = [[e.step, "num"], [e.state], [e.tasks.map(task).join("; ") || e.message || "–"]];
    row.attrs = {"data-step": e.step, "data-state": e.state};
    return row;
  });
  return table("evaluations", [["step", "num"], ["state"], ["scores"]], rows);
}

function cancelButton(job) {
  const button = el("button", {id: "cancel", class: "danger", type: "button", text: "Cancel job",
                               disabled: TERMINAL.has(job.phase) || job.cancel_requested});
  button.addEventListener("click", () => confirmCancel(job.id));
  return button;
}

function confirmCancel(jobId) {
  const dialog = document.getElementById("confirm-cancel");
  document.getElementById("confirm-job").textContent = jobId;
  dialog.addEventListener("close", async () => {
    if (dialog.returnValue !== "cancel") return;
    try {
      await api(`/v1/jobs/${encodeURIComponent(jobId)}/cancel`, {method: "POST", headers: {"X-CSRF-Token": CSRF}});
      refreshed(true);
      showJob(jobId);
    } catch (err) {
      refreshed(false, `cancel failed: ${err.message}`);
    }
  }, {once: true});
  dialog.showModal();
}

function jobPage(job, points, checkpoints, now, evaluations) {
  const head = el("div", {class: "job-head"}, el("h1", {id: "job-id", text: job.id}), phase(job.phase),
                  el("span", {id: "job-step", text: `step ${job.step} of ${job.max_steps}`}),
                  el("span", {class: "muted", text: job.message || ""}), el("span", {class: "actions"}, cancelButton(job)));
  const charts = el("div", {class: "grid"}, chartCard("Loss", points, "loss", job.attempts),
                    chartCard("MLM accuracy", points, "mlm_accuracy", job.attempts),
                    chartCard("Tokens/s", points, "tokens_per_s", job.attempts));
  const timeline = el("div", {class: "card", id: "timeline"}, BertCharts.timeline(job.attempts, checkpoints, now));
  return [el("p", {}, el("a", {href: "#/", text: "← all jobs"})), head, charts,
          el("h2", {text: "Attempts"}), timeline, attemptsTable(job.attempts),
          el("h2", {text: "Goodput"}), goodputCard(job.goodput),
          el("h2", {text: `Checkpoints (${job.checkpoints}${job.checkpoints > checkpoints.length ?
            `, the newest ${checkpoints.length} shown` : ""})`}), checkpointsTable(checkpoints),
          ...(evaluations.length ? [el("h2", {text: "Evaluations"}), evaluationsTable(evaluations)] : []),
          el("h2", {text: "Events"}), eventsTable(state.events)];
}

async function loadEvents(jobId) {
  if (state.jobId !== jobId) Object.assign(state, {jobId, events: [], lastEventId: 0});
  const data = await api(`/v1/jobs/${encodeURIComponent(jobId)}/events?after=${state.lastEventId}`);
  for (const e of data.events) {  // a refresh and a cancel's refresh may overlap: keep each event once
    if (e.id > state.lastEventId) { state.events.push(e); state.lastEventId = e.id; }
  }
}

async function showJob(jobId) {
  const id = encodeURIComponent(jobId);
  try {
    const [detail, metrics, , scored] = await Promise.all([api(`/ui/api/jobs/${id}`), api(`/v1/jobs/${id}/metrics`),
                                                           loadEvents(jobId), api(`/v1/jobs/${id}/evaluations`)]);
    const view = document.getElementById("view");
    const scroll = window.scrollY;
    view.replaceChildren(...jobPage(detail.job, metrics.points, detail.checkpoints, detail.now, scored.evaluations));
    view.dataset.points = String(metrics.points.length);
    window.scrollTo(0, scroll);
    refreshed(true);
  } catch (err) {
    refreshed(false, `refresh failed: ${err.message}`);
  }
  if (state.route === `job:${jobId}`) schedule(() => showJob(jobId));
}

// -- routing --------------------------------------------------------------------------------------

function route() {
  clearTimeout(state.timer);
  const match = window.location.hash.match(/^#\/jobs\/(.+)$/);
  if (match) {
    const jobId = decodeURIComponent(match[1]);
    state.route = `job:${jobId}`;
    showJob(jobId);
  } else {
    state.route = "jobs";
    showJobs();
  }
}

window.addEventListener("hashchange", route);
route();
