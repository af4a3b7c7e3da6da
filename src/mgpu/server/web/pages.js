// The dashboard's pages. Each returns { view, url(), event(name, data), tick(), error() }:
// url() is the stream it needs, event() draws what the stream sends.
import { api, h } from "./stream.js";

const STREAM = "/api/v1/dash/stream";
const PAGE_SIZE = 100;
const LOG_KEEP = 256 * 1024; // characters of output kept on the page (the tail)
const ENDED = new Set(["completed", "failed", "cancelled", "timeout", "node_fail"]);

export function fmtDuration(s) {
  if (s === null || s === undefined || !isFinite(s)) return "";
  s = Math.max(0, Math.floor(s));
  const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60), ss = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  const hms = `${hh ? `${hh}:` : ""}${hh ? two(mm) : mm}:${two(ss)}`;
  return d ? `${d}-${two(hh)}:${two(mm)}:${two(ss)}` : hms;
}

const epoch = (t) => (t ? Date.parse(t) / 1000 : null);
const nowAt = (clock) => Date.now() / 1000 + clock.skew;
const when = (t) => (t ? new Date(t).toLocaleString() : "");
const limitOf = (j) => (j.time_limit ? fmtDuration(j.time_limit) : "none");

function elapsedCell(job, clock) {
  const started = epoch(job.started_at);
  const cell = h("td", { class: "elapsed" });
  if (started !== null && job.state === "running") {
    cell.dataset.started = String(started);
    cell.textContent = fmtDuration(nowAt(clock) - started);
  }
  return cell;
}

function tickElapsed(root, clock) {
  for (const cell of root.querySelectorAll("[data-started]")) {
    cell.textContent = fmtDuration(nowAt(clock) - Number(cell.dataset.started));
  }
}

const stateTag = (state) => h("span", { class: `state ${state}`, text: state });

// -------------------------------------------------------------------- Queue

export function queuePage(ctx) {
  const states = ctx.params.get("state") || "pending,running";
  const offset = Math.max(0, Number(ctx.params.get("offset")) || 0);
  const go = (o, s = states) => ctx.go(`#/queue?state=${encodeURIComponent(s)}&offset=${o}`);
  const select = h("select", { id: "state-filter", onchange: () => go(0, select.value) },
    ...[["pending,running", "pending and running"], ["running", "running"],
      ["pending", "pending"], ["completed,failed,cancelled,timeout,node_fail", "ended"]]
      .map(([v, t]) => h("option", { value: v, selected: v === states, text: t })));
  const range = h("span", { id: "range", class: "range" });
  const prev = h("button", { id: "prev", type: "button", text: "‹ Prev", disabled: true,
    onclick: () => go(Math.max(0, offset - PAGE_SIZE)) });
  const next = h("button", { id: "next", type: "button", text: "Next ›", disabled: true,
    onclick: () => go(offset + PAGE_SIZE) });
  const body = h("tbody", { id: "queue-rows" });
  const table = h("table", { id: "queue", class: "jobs" },
    h("thead", {}, h("tr", {}, ...["ID", "Name", "User", "State", "GPUs", "Node / GPU ids",
      "Elapsed", "Limit", "Why pending / expected start", "Submitted"].map((t) => h("th", { text: t })))),
    body);
  ctx.main.replaceChildren(h("section", { class: "page" },
    h("div", { class: "toolbar" }, h("h1", { text: "Queue" }), select, prev, range, next),
    h("div", { class: "scroll" }, table)));

  return {
    view: "queue",
    url: () => `${STREAM}?view=queue&state=${encodeURIComponent(states)}&offset=${offset}&limit=${PAGE_SIZE}`,
    tick: () => tickElapsed(body, ctx.clock),
    error: (msg) => body.replaceChildren(h("tr", {}, h("td", { colspan: 10, class: "error", text: msg }))),
    event(name, q) {
      if (name !== "queue") return;
      const last = Math.min(q.total, q.offset + q.jobs.length);
      range.textContent = q.total ? `${q.offset + 1}-${last} of ${q.total}` : "no jobs";
      prev.disabled = q.offset === 0;
      next.disabled = last >= q.total;
      body.replaceChildren(...q.jobs.map((j) => h("tr", { "data-job": j.id, class: j.state },
        h("td", {}, h("a", { href: `#/job/${j.id}`, text: j.id })),
        h("td", { class: "name", text: j.name }),
        h("td", { text: j.user }),
        h("td", {}, stateTag(j.state)),
        h("td", { class: "num", text: j.gpus }),
        h("td", { text: j.node ? `${j.node} [${j.gpu_ids.join(",")}]` : "" }),
        elapsedCell(j, ctx.clock),
        h("td", { text: limitOf(j) }),
        h("td", { class: "reason", text: j.state === "pending"
          ? [j.reason, j.expected_start ? `starts ~${when(j.expected_start)}` : null]
            .filter(Boolean).join(" · ") : "" }),
        h("td", { text: when(j.submitted_at) }))));
    },
  };
}

// -------------------------------------------------------------------- Nodes

function gpuFigures(g) {
  // Figures a node reports once it measures them (NVML); absent with fake GPUs.
  const util = g.utilization;
  const used = g.memory_used_mib;
  const out = [];
  if (util !== undefined && util !== null) out.push(h("span", { class: "bar", title: `${util}% busy` },
    h("span", { style: `width:${Math.min(100, util)}%` }), h("em", { text: `${util}%` })));
  out.push(h("span", { class: "mem", text: used !== undefined && used !== null
    ? `${used} / ${g.memory_total_mib} MiB` : `${g.memory_total_mib} MiB` }));
  if (g.busy_outside) out.push(h("span", { class: "outside", text: "busy outside mgpu" }));
  return out;
}

export function nodesPage(ctx) {
  const list = h("div", { id: "nodes", class: "nodes" });
  ctx.main.replaceChildren(h("section", { class: "page" }, h("h1", { text: "Nodes" }), list));
  return {
    view: "nodes",
    url: () => `${STREAM}?view=nodes`,
    error: (msg) => list.replaceChildren(h("p", { class: "error", text: msg })),
    event(name, data) {
      if (name !== "nodes") return;
      if (!data.nodes.length) {
        list.replaceChildren(h("p", { text: "No node has joined yet: start one with `mgpu node`." }));
        return;
      }
      list.replaceChildren(...data.nodes.map((n) => h("article", { class: `node ${n.state}`, "data-node": n.node_id },
        h("h2", {}, n.node_id, " ", stateTag(n.state),
          n.hostname && n.hostname !== n.node_id ? h("small", { text: ` ${n.hostname}` }) : null),
        n.reason ? h("p", { class: "reason", text: n.reason }) : null,
        n.users ? h("p", { class: "users", text: `runs jobs of: ${n.users.join(", ")}` }) : null,
        h("table", { class: "gpus" },
          h("thead", {}, h("tr", {}, ...["GPU", "Model", "Memory / load", "Held by"].map((t) => h("th", { text: t })))),
          h("tbody", {}, ...n.gpus.map((g) => {
            const holder = g.job_id !== null && g.job_id !== undefined ? data.holders[g.job_id] : null;
            return h("tr", { class: g.job_id ? "held" : "free", "data-gpu": g.index },
              h("td", { class: "num", text: g.index }),
              h("td", { text: g.name }),
              h("td", {}, ...gpuFigures(g)),
              h("td", {}, g.job_id ? h("a", { href: `#/job/${g.job_id}`,
                text: `job ${g.job_id}${holder ? ` · ${holder.user} · ${holder.name}` : ""}` }) : "free"));
          }))))));
    },
  };
}

// -------------------------------------------------------------------- Job

export function jobPage(ctx, id) {
  let logOffset = 0;
  let shown = 0;
  const title = h("h1", { text: `Job ${id}` });
  const details = h("dl", { id: "job-details", class: "details" });
  const message = h("p", { id: "job-message", class: "message" });
  const cancel = h("button", { id: "cancel", type: "button", text: "Cancel job", hidden: true,
    onclick: async () => {
      if (!confirm(`Cancel job ${id}?`)) return;
      cancel.disabled = true;
      try {
        const r = await api(ctx.token, "/api/v1/jobs/cancel", { job_ids: [id] });
        const res = r.results[0];
        message.textContent = res.ok ? "cancel requested" : res.error ?? "not cancelled";
      } catch (e) {
        message.textContent = e.message;
        cancel.disabled = false;
      }
    } });
  const log = h("pre", { id: "log", class: "log" });
  const logNote = h("p", { id: "log-note", class: "note" });
  ctx.main.replaceChildren(h("section", { class: "page" },
    h("div", { class: "toolbar" }, h("a", { href: "#/queue", text: "‹ Queue" }), title, cancel),
    message, details, h("h2", { text: "Output" }), logNote, log));

  function row(k, v) { return v === null || v === undefined || v === "" ? [] : [h("dt", { text: k }), h("dd", {}, v)]; }

  return {
    view: "job",
    url: () => `${STREAM}?view=job&job=${id}&log=${logOffset}`,
    tick: () => tickElapsed(details, ctx.clock),
    error: (msg) => { message.textContent = msg; },
    event(name, data) {
      if (name === "error") { message.textContent = data.error; return; }
      if (name === "log") {
        const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        logOffset = data.offset;
        shown += data.text.length;
        log.append(data.text);
        if (shown > LOG_KEEP * 2) { // keep the tail: a long log must not fill the page
          log.textContent = log.textContent.slice(-LOG_KEEP);
          shown = LOG_KEEP;
          logNote.textContent = "(older output not shown: `mgpu logs ID` has all of it)";
        }
        if (atEnd) log.scrollTop = log.scrollHeight;
        return;
      }
      if (name !== "job") return;
      const j = data.job;
      title.replaceChildren(`Job ${j.id} · ${j.name} `, stateTag(j.state));
      cancel.hidden = !data.may_act || ENDED.has(j.state);
      if (!data.may_act) logNote.textContent = `only ${j.user} or an admin may read this job's output`;
      const started = epoch(j.started_at);
      const elapsed = j.state === "running" && started !== null
        ? h("span", { "data-started": started, text: fmtDuration(nowAt(ctx.clock) - started) })
        : started !== null && j.ended_at ? fmtDuration(epoch(j.ended_at) - started) : null;
      details.replaceChildren(
        ...row("State", j.state), ...row("Why", j.reason), ...row("User", j.user),
        ...row("Command", h("code", { text: j.command })), ...row("Directory", j.cwd),
        ...row("GPUs", String(j.gpus)),
        ...row("Node", j.node ? `${j.node} (GPU ids ${j.gpu_ids.join(", ")})` : null),
        ...row("Jobs ahead", data.ahead === null ? null : String(data.ahead)),
        ...row("Expected start", when(j.expected_start)),
        ...row("Submitted", when(j.submitted_at)), ...row("Started", when(j.started_at)),
        ...row("Ended", when(j.ended_at)), ...row("Elapsed", elapsed),
        ...row("Time limit", limitOf(j)),
        ...row("Exit code", j.exit_code === null ? null : String(j.exit_code)),
        ...row("End cause", j.end_cause), ...row("Requeues", j.requeues ? String(j.requeues) : null));
    },
  };
}

// -------------------------------------------------------------------- Usage

// GPU time in the unit that reads best: hours, else minutes, else seconds.
export function fmtGpuTime(seconds) {
  if (seconds >= 360) return `${(seconds / 3600).toFixed(1)} GPU-h`;
  if (seconds >= 60) return `${(seconds / 60).toFixed(1)} GPU-min`;
  return `${seconds.toFixed(1)} GPU-s`;
}

function bars(rows) {
  const NS = "http://www.w3.org/2000/svg";
  const max = Math.max(...rows.map((r) => r.gpu_seconds), 1e-9);
  const w = 640, rowH = 22, left = 160, room = w - left - 110;
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${rows.length * rowH + 4}`);
  svg.setAttribute("class", "chart");
  const mk = (tag, attrs, text) => {
    const el = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
    return el;
  };
  rows.forEach((r, i) => {
    const y = i * rowH + 2, len = r.gpu_seconds > 0 ? Math.max(1, (room * r.gpu_seconds) / max) : 0;
    mk("text", { x: left - 6, y: y + 15, "text-anchor": "end", class: "label" }, r.key);
    mk("rect", { x: left, y, width: len, height: rowH - 6, "data-key": r.key })
      .append(Object.assign(document.createElementNS(NS, "title"),
        { textContent: `${r.key}: ${fmtGpuTime(r.gpu_seconds)}, ${r.jobs} jobs` }));
    mk("text", { x: left + len + 6, y: y + 15, class: "value" }, fmtGpuTime(r.gpu_seconds));
  });
  return svg;
}

export function usagePage(ctx) {
  const body = h("div", { id: "usage" }, h("p", { text: "Loading…" }));
  ctx.main.replaceChildren(h("section", { class: "page" }, h("h1", { text: "Usage" }), body));
  let ended = null;
  let loading = false;
  let again = false; // a job ended while loading: load once more after

  async function load() {
    if (loading) { again = true; return; }
    loading = true;
    try {
      const [byUser, byDay] = await Promise.all(["user", "day"].map(
        (by) => api(ctx.token, `/api/v1/usage?by=${by}`)));
      const t = byUser.total;
      const wait = t.avg_wait_s === null ? "" : ` · average wait ${fmtDuration(t.avg_wait_s)}`;
      body.replaceChildren(
        h("p", { id: "usage-total", class: "total", text: `${byUser.user ?? "everyone"}, `
          + `${new Date(byUser.since).toLocaleDateString()} to now: ${fmtGpuTime(t.gpu_seconds)}`
          + ` · ${t.jobs} job${t.jobs === 1 ? "" : "s"} · ${t.runs} run${t.runs === 1 ? "" : "s"}${wait}` }),
        h("h2", { text: "GPU time by user" }),
        byUser.rows.length ? bars(byUser.rows) : h("p", { text: "nothing recorded yet this month" }),
        h("h2", { text: "GPU time by day" }),
        byDay.rows.length ? bars(byDay.rows) : h("p", { text: "nothing recorded yet this month" }),
        h("p", { class: "note", text: "`mgpu usage --since 2026-11-01 --by node` gives "
          + "other windows and groupings." }));
    } catch (e) {
      body.replaceChildren(h("p", { class: "note", text: e.status === 404
        ? "This master keeps no accounting (GET /api/v1/usage): usage plots appear once it does."
        : `usage: ${e.message}` }));
    } finally {
      loading = false;
      if (again) { again = false; load(); }
    }
  }
  load();
  return {
    view: "usage",
    url: () => `${STREAM}?view=usage`,
    event(name, data) {
      // A job that ends adds to the usage: load it again then, not on a timer.
      if (name !== "cluster") return;
      const now = ["completed", "failed", "cancelled", "timeout", "node_fail"]
        .reduce((n, s) => n + (data.jobs[s] ?? 0), 0);
      if (ended !== null && now !== ended) load();
      ended = now;
    },
  };
}
