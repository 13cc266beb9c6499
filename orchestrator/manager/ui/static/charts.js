// bertctl dashboard charts: plain SVG drawn here (no library, no network). Every value reaches the
// page as an attribute or a text node, never as markup.
"use strict";

const BertCharts = (() => {
  const NS = "http://www.w3.org/2000/svg";

  function svg(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function titled(node, title) {
    node.appendChild(svg("title", {}, title));
    return node;
  }

  function compact(v) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e4) return (v / 1e3).toFixed(1) + "k";
    if (a >= 100) return v.toFixed(0);
    if (a >= 1) return v.toFixed(2);
    if (a === 0) return "0";
    return v.toPrecision(3);
  }

  function scale(d0, d1, r0, r1) {
    if (d0 === d1) { d0 -= 1; d1 += 1; }
    return v => r0 + (v - d0) / (d1 - d0) * (r1 - r0);
  }

  function extent(values) {
    let lo = Infinity, hi = -Infinity;
    for (const v of values) { if (v < lo) lo = v; if (v > hi) hi = v; }
    return [lo, hi];
  }

  // The attempts' ends (other than success) and the world-size changes, as steps to mark.
  function markersOf(points, attempts) {
    const out = [];
    for (const a of attempts) {
      if (a.state === "ended" && a.end_reason && a.end_reason !== "succeeded") {
        out.push({step: a.last_step, kind: "end", label: `attempt ${a.number}: ${a.end_reason}`});
      }
    }
    let prev = null;
    for (const p of points) {
      if (p.world_size !== null && prev !== null && prev.world_size !== null && p.world_size !== prev.world_size) {
        out.push({step: p.step, kind: "resize", label: `workers ${prev.world_size} → ${p.world_size}`});
      }
      if (p.world_size !== null) prev = p;
    }
    return out;
  }

  function axes(root, box, xs, ys, fmt) {
    const {L, R, T, B, W, H} = box;
    root.appendChild(svg("line", {class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}));
    root.appendChild(svg("line", {class: "axis", x1: L, y1: T, x2: L, y2: H - B}));
    root.appendChild(svg("text", {x: L - 4, y: T + 8, "text-anchor": "end"}, fmt(ys[1])));
    root.appendChild(svg("text", {x: L - 4, y: H - B, "text-anchor": "end"}, fmt(ys[0])));
    root.appendChild(svg("text", {x: L, y: H - B + 14, "text-anchor": "start"}, "step " + xs[0]));
    root.appendChild(svg("text", {x: W - R, y: H - B + 14, "text-anchor": "end"}, "step " + xs[1]));
  }

  function drawMarkers(root, box, markers, sx) {
    const {T, B, H} = box;
    for (const m of markers) {
      const x = sx(m.step);
      root.appendChild(titled(svg("line", {class: `marker ${m.kind}`, "data-kind": m.kind, x1: x, x2: x, y1: T, y2: H - B}),
                              m.label));
      const label = svg("text", {class: m.kind === "end" ? "marker-label" : "resize-label", x: x + 3,
                                 y: m.kind === "end" ? T + 10 : T + 22}, m.label);
      root.appendChild(label);
    }
  }

  // One line per attempt of ``key`` over steps; ends of attempts and resizes marked.
  function lineChart(points, key, attempts, title) {
    const box = {W: 420, H: 210, L: 46, R: 10, T: 10, B: 22};
    const root = svg("svg", {viewBox: `0 0 ${box.W} ${box.H}`, class: "chart", "data-metric": key, role: "img",
                             "aria-label": title});
    const pts = points.filter(p => p[key] !== null && p[key] !== undefined);
    if (!pts.length) {
      root.appendChild(svg("text", {class: "empty", x: box.W / 2, y: box.H / 2, "text-anchor": "middle"}, "no data yet"));
      return root;
    }
    const xs = extent(pts.map(p => p.step)), ys = extent(pts.map(p => p[key]));
    const sx = scale(xs[0], xs[1], box.L, box.W - box.R), sy = scale(ys[0], ys[1], box.H - box.B, box.T);
    axes(root, box, xs, ys, compact);
    const byAttempt = new Map();
    for (const p of pts) {
      if (!byAttempt.has(p.attempt)) byAttempt.set(p.attempt, []);
      byAttempt.get(p.attempt).push(`${sx(p.step).toFixed(1)},${sy(p[key]).toFixed(1)}`);
    }
    for (const [attempt, coords] of byAttempt) {
      root.appendChild(titled(svg("polyline", {class: `series a${(attempt - 1) % 6}`, "data-attempt": attempt,
                                               "data-points": coords.length, points: coords.join(" ")}),
                              `attempt ${attempt}`));
    }
    drawMarkers(root, box, markersOf(points, attempts), sx);
    return root;
  }

  function timelineRow(root, a, i, ctx) {
    const {sx, y, now, checkpoints} = ctx;
    const end = a.ended_at || now, cls = `a${(a.number - 1) % 6}`;
    root.appendChild(svg("text", {x: 4, y: y + 13}, `attempt ${a.number}`));
    root.appendChild(titled(svg("rect", {class: `tl-attempt ${cls}`, "data-attempt": a.number,
                                         "data-end-reason": a.end_reason || "", x: sx(a.created_at), y,
                                         width: Math.max(1, sx(end) - sx(a.created_at)), height: 18}),
                            `attempt ${a.number}: launched, ${a.state}`));
    if (a.first_step_at) {
      const x = sx(a.first_step_at);
      root.appendChild(titled(svg("line", {class: "tl-first-step", x1: x, x2: x, y1: y - 2, y2: y + 20}),
                              `first step (${a.first_step})`));
    }
    for (const c of checkpoints.filter(c => c.attempt === a.number)) {
      const x = sx(c.created_at);
      root.appendChild(titled(svg("line", {class: "tl-checkpoint", x1: x, x2: x, y1: y + 3, y2: y + 15}),
                              `checkpoint at step ${c.step}`));
    }
    const endText = a.state === "ended" ? (a.end_reason || "ended") + (a.exit_code !== null ? ` (exit ${a.exit_code})` : "")
                                         : (a.state === "running" ? "running" : "launching");
    root.appendChild(svg("text", {class: "tl-end", "data-attempt": a.number, x: sx(end) + 4, y: y + 13}, endText));
  }

  // Attempts over wall time: launched → end, first step, checkpoints, the end reason, and the
  // recovery gaps (an attempt's failure to the next one's first step).
  function timeline(attempts, checkpoints, now) {
    const rowH = 28, W = 900, L = 80, R = 170;
    const H = Math.max(1, attempts.length) * rowH + 20;
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, id: "timeline-svg", role: "img", "aria-label": "attempts timeline"});
    if (!attempts.length) {
      root.appendChild(svg("text", {class: "empty", x: W / 2, y: H / 2, "text-anchor": "middle"}, "no attempt yet"));
      return root;
    }
    const t0 = attempts[0].created_at, t1 = Math.max(now, ...attempts.map(a => a.ended_at || now));
    const sx = scale(t0, t1, L, W - R);
    attempts.forEach((a, i) => {
      const y = 6 + i * rowH, prev = attempts[i - 1];
      if (prev && prev.ended_at) {
        const until = a.first_step_at || (a.state === "ended" ? a.ended_at : now);
        root.appendChild(titled(svg("rect", {class: "tl-gap", "data-attempt": a.number, x: sx(prev.ended_at), y: y - 4,
                                             width: Math.max(1, sx(until) - sx(prev.ended_at)), height: 26}),
                                `recovery: ${(until - prev.ended_at).toFixed(1)} s`));
      }
      timelineRow(root, a, i, {sx, y, now, checkpoints});
    });
    root.appendChild(svg("text", {x: L, y: H - 2}, new Date(t0 * 1000).toLocaleTimeString()));
    root.appendChild(svg("text", {x: W - R, y: H - 2, "text-anchor": "end"}, new Date(t1 * 1000).toLocaleTimeString()));
    return root;
  }

  const GOODPUT_PARTS = [["productive", "productive_s"], ["checkpoint", "checkpoint_s"], ["recovery", "recovery_s"]];

  // The job's wall time split into productive steps, checkpointing, recovery and the rest.
  function goodputBar(g) {
    const W = 640, H = 26;
    const root = svg("svg", {viewBox: `0 0 ${W} ${H}`, id: "goodput-svg", role: "img", "aria-label": "goodput"});
    const wall = g.wall_s || 0;
    if (wall <= 0) return root;
    let x = 0;
    const parts = GOODPUT_PARTS.map(([name, key]) => [name, Math.max(0, g[key] || 0)]);
    const used = parts.reduce((s, [, v]) => s + v, 0);
    parts.push(["other", Math.max(0, wall - used)]);
    for (const [name, seconds] of parts) {
      const w = Math.min(W - x, seconds / Math.max(wall, used) * W);
      root.appendChild(titled(svg("rect", {class: `gp-${name}`, x, y: 0, width: Math.max(0, w), height: H}),
                              `${name}: ${seconds.toFixed(1)} s`));
      x += w;
    }
    return root;
  }

  return {lineChart, timeline, goodputBar, compact, markersOf};
})();
