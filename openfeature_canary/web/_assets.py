"""The status page's HTML, script and style (served from memory: no files to install).

The script draws every value with ``textContent`` and ``createElement``, never ``innerHTML``,
so a reason or flag key is shown as text whatever it holds; the one value the server puts into
the HTML (the title) goes through :func:`html.escape`. The page's Content-Security-Policy
allows scripts and styles from the page only, so the script is a file, not inline.
"""

from __future__ import annotations

import html

__all__ = ["APP_CSS", "APP_JS", "page_html"]

#: Seconds between two reads of ``/api/status``.
POLL_MS = 1000


def page_html(title: str) -> bytes:
    """The page's HTML with ``title`` escaped."""
    safe = html.escape(title, quote=True)
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{safe} status</title>
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head>
<body>
<header>
<h1>{safe}</h1>
<p id="decider">loading&hellip;</p>
<p id="updated" class="muted"></p>
<p id="problem" class="problem" hidden></p>
</header>
<main id="flags"></main>
<footer class="muted">Read-only. Updated every {POLL_MS // 1000} s from
<a href="/api/status">/api/status</a>.</footer>
</body>
</html>
""".encode()


APP_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin: 0 0 .2em; }
h2 { font-size: 1.15em; margin: 0 0 .4em; }
h3 { font-size: 1em; margin: 1em 0 .3em; }
.muted { color: #777; }
.problem { color: #b00020; font-weight: bold; }
section.flag { background: #fff; border: 1px solid #ddd; border-radius: 6px; padding: 1em;
  margin: 1em 0; }
.summary span { margin-right: 1.2em; }
.status { font-weight: bold; padding: .1em .5em; border-radius: 3px; background: #eee; }
.status.running { background: #dbeafe; } .status.completed { background: #dcfce7; }
.status.rolled_back { background: #fee2e2; } .status.paused { background: #fef3c7; }
ol.timeline { display: flex; list-style: none; padding: 0; margin: 0; gap: 4px; }
ol.timeline li { flex: 1; padding: .4em; border-radius: 4px; background: #eee; font-size: .9em; }
ol.timeline li.done { background: #bbf7d0; } ol.timeline li.running { background: #93c5fd; }
ol.timeline li.paused { background: #fde68a; } ol.timeline li.rolled_back { background: #fca5a5; }
table { border-collapse: collapse; margin: .2em 0; }
td, th { border-bottom: 1px solid #eee; padding: .2em .6em; text-align: left;
  vertical-align: top; }
.bar { position: relative; width: 220px; height: 10px; background: #f1f1f1; }
.bar .fill { position: absolute; left: 0; top: 0; bottom: 0; }
.bar .canary { background: #2563eb; } .bar .baseline { background: #9ca3af; }
.bar .line { position: absolute; top: -3px; bottom: -3px; width: 2px; background: #b00020; }
.breached { color: #b00020; font-weight: bold; }
code { font-size: .92em; }
.charts { display: flex; gap: 1.5em; flex-wrap: wrap; }
figure.chart { margin: .5em 0; } figure.chart figcaption { font-size: .85em; color: #555; }
figure.chart svg { background: #fcfcfc; border: 1px solid #eee; }
"""


APP_JS = """
"use strict";
const POLL_MS = __POLL_MS__;

function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}
function dur(s) {
  if (s === null || s === undefined) return "\\u2013";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), r = s % 60;
  return (h ? h + "h " : "") + (h || m ? m + "m " : "") + r + "s";
}
function when(t) {
  return t ? new Date(t * 1000).toISOString().replace(".000Z", "Z") : "\\u2013";
}
function num(v, unit) {
  if (v === null || v === undefined) return "\\u2013";
  if (unit === "ratio") return (100 * v).toFixed(2) + " %";
  if (unit === "ms") return v.toFixed(1) + " ms";
  return typeof v === "number" ? String(Math.round(v * 1000) / 1000) : String(v);
}
function numbers(obj) {
  return Object.entries(obj || {})
    .filter(([, v]) => v !== null && v !== "")
    .map(([k, v]) => k + "=" + num(v)).join(" ");
}
function summary(f) {
  const p = el("p", "summary");
  const status = el("span", "status " + f.status, f.status.replace("_", " "));
  status.dataset.field = "status";
  const stage = el("span", "stage", "stage " + f.stage + " of " + f.stages_total);
  stage.dataset.field = "stage";
  const pct = el("span", "percent", num(f.percent) + " %");
  pct.dataset.field = "percent";
  p.append(status, stage, pct, el("span", "muted", "in stage " + dur(f.in_stage_s)));
  const d = f.last_decision;
  const last = el("p", "last-decision",
    d ? "last decision: " + d.action + " \\u2014 " + d.reason + " at " + when(d.at) +
        (numbers(d.numbers) ? " (" + numbers(d.numbers) + ")" : "")
      : "last decision: none yet");
  last.dataset.field = "last-decision";
  return [p, last];
}
function timeline(f) {
  const ol = el("ol", "timeline");
  for (const s of f.timeline) {
    const li = el("li", s.where);
    li.append(el("div", null, "stage " + s.index + ": " + num(s.percent) + " %"));
    li.append(el("div", "muted", "hold " + dur(s.duration_s) +
      (s.left_s !== undefined ? ", " + dur(s.left_s) + " left" : "")));
    li.append(el("div", "muted", s.where));
    ol.append(li);
  }
  return ol;
}
function bar(canary, baseline, line) {
  const top = Math.max(canary || 0, baseline || 0, line || 0) * 1.1 || 1;
  const box = el("div", "bar");
  for (const [cls, v] of [["baseline", baseline], ["canary", canary]]) {
    if (v === null || v === undefined) continue;
    const fill = el("div", "fill " + cls);
    fill.style.width = (100 * v / top) + "%";
    if (cls === "canary") { fill.style.top = "5px"; } else { fill.style.bottom = "5px"; }
    box.append(fill);
  }
  if (line !== null && line !== undefined) {
    const mark = el("div", "line");
    mark.style.left = (100 * line / top) + "%";
    box.append(mark);
  }
  return box;
}
function evidence(f) {
  const e = f.evidence;
  if (!e) return el("p", "muted", "no evidence gathered in this stage yet");
  const t = el("table", "evidence");
  const head = el("tr");
  for (const h of ["signal", "canary", "baseline", "line", ""]) head.append(el("th", null, h));
  t.append(head);
  const rows = [["error rate", "error_rate", "ratio"], ["p95", "p95_ms", "ms"],
                ["p99", "p99_ms", "ms"]];
  for (const [name, key, unit] of rows) {
    const c = e.canary[key], b = e.baseline[key], line = e.lines[key];
    const tr = el("tr");
    tr.append(el("td", null, name),
      el("td", line !== null && c !== null && c > line ? "breached" : null, num(c, unit)),
      el("td", null, num(b, unit)), el("td", null, num(line, unit)));
    const cell = el("td"); cell.append(bar(c, b, line)); tr.append(cell);
    t.append(tr);
  }
  const n = el("tr");
  n.append(el("td", null, "requests (5xx)"),
    el("td", null, e.canary.n + " (" + e.canary.errors + ")"),
    el("td", null, e.baseline.n + " (" + e.baseline.errors + ")"),
    el("td", "muted", "since " + when(e.started)), el("td"));
  t.append(n);
  return t;
}
const SVG = "http://www.w3.org/2000/svg";
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}
// Canary and baseline per gate window of this stage, against the stage's line.
function chart(f, title, key, unit) {
  const W = 360, H = 120, L = 56, B = 18;
  const rows = f.windows.filter(w => w[key] !== null || w["baseline_" + key] !== null);
  const line = f.stage >= 1 ? f.timeline[f.stage - 1].lines[key] : null;
  const box = el("figure", "chart");
  box.dataset.chart = key;
  box.append(el("figcaption", null, title + " per window: canary (blue), baseline (grey)" +
    (line !== null ? ", line (red) " + num(line, unit) : "")));
  const s = svg("svg", {width: W, height: H, viewBox: `0 0 ${W} ${H}`, role: "img"});
  const values = rows.flatMap(w => [w[key], w["baseline_" + key]]).filter(v => v !== null);
  const top = Math.max(...values, line || 0, 0) * 1.15 || 1;
  const x = i => L + (rows.length > 1 ? i * (W - L - 8) / (rows.length - 1) : (W - L) / 2);
  const y = v => H - B - (v / top) * (H - B - 8);
  s.append(svg("line", {x1: L, y1: H - B, x2: W, y2: H - B, stroke: "#999"}));
  s.append(svg("text", {x: 2, y: 12, "font-size": 10}, num(top, unit)));
  s.append(svg("text", {x: 2, y: H - B, "font-size": 10}, num(0, unit)));
  s.append(svg("text", {x: L, y: H - 4, "font-size": 10},
    rows.length ? rows.length + " window(s)" : "no window judged yet"));
  if (line !== null) {
    s.append(svg("line", {x1: L, y1: y(line), x2: W, y2: y(line), stroke: "#b00020",
      "stroke-dasharray": "4 3"}));
  }
  for (const [k, color] of [["baseline_" + key, "#9ca3af"], [key, "#2563eb"]]) {
    const pts = rows.map((w, i) => [i, w[k]]).filter(([, v]) => v !== null);
    if (!pts.length) continue;
    s.append(svg("polyline", {points: pts.map(([i, v]) => x(i) + "," + y(v)).join(" "),
      fill: "none", stroke: color, "stroke-width": 2}));
    for (const [i, v] of pts) s.append(svg("circle", {cx: x(i), cy: y(v), r: 2.5, fill: color}));
  }
  box.append(s);
  return box;
}
function charts(f) {
  const div = el("div", "charts");
  div.append(chart(f, "error rate", "error_rate", "ratio"), chart(f, "p95", "p95_ms", "ms"));
  return div;
}
function triggers(f) {
  if (!f.triggers.length) return el("p", "muted", "no triggers");
  const t = el("table", "triggers");
  const head = el("tr");
  for (const h of ["trigger", "signal", "rule", "reading", "n", "read at"]) {
    head.append(el("th", null, h));
  }
  t.append(head);
  for (const g of f.triggers) {
    const tr = el("tr");
    tr.append(el("td", null, g.name), el("td", null, g.signal),
      el("td", null, g.op + " " + num(g.threshold) + " over " + dur(g.window_s)),
      el("td", g.error ? "breached" : null, g.error ? "error: " + g.error : num(g.value)),
      el("td", null, g.n === null ? "\\u2013" : g.n), el("td", null, when(g.at)));
    t.append(tr);
  }
  return t;
}
function decisions(f) {
  const t = el("table", "log");
  const head = el("tr");
  for (const h of ["at", "action", "reason", "numbers"]) head.append(el("th", null, h));
  t.append(head);
  for (const d of f.log) {
    const tr = el("tr");
    tr.append(el("td", null, when(d.at)), el("td", null, d.action), el("td", null, d.reason),
      el("td", "muted", numbers(d.numbers)));
    t.append(tr);
  }
  return t;
}
function flagSection(f) {
  const s = el("section", "flag");
  s.dataset.flag = f.key;
  s.append(el("h2", null, f.key), ...summary(f));
  s.append(el("h3", null, "Stages"), timeline(f));
  s.append(el("h3", null, "Canary vs baseline (this stage)"), evidence(f));
  if (f.stage >= 1) s.append(charts(f));
  s.append(el("h3", null, "Triggers"), triggers(f));
  s.append(el("h3", null, "Decision log (newest first)"), decisions(f));
  return s;
}
function render(data) {
  const d = data.decider;
  document.getElementById("decider").textContent =
    "Shown by " + d.process + (d.deciding ? " (deciding)" : " (not deciding)") +
    (d.lease_holder ? "; lease held by " + d.lease_holder : "") + " \\u2014 store " + data.store;
  document.getElementById("updated").textContent = "as of " + when(data.now);
  const main = document.getElementById("flags");
  main.replaceChildren(...data.flags.map(flagSection));
  document.body.dataset.now = String(data.now);
}
async function poll() {
  const problem = document.getElementById("problem");
  try {
    const r = await fetch("/api/status", {cache: "no-store"});
    const data = await r.json();
    if (!r.ok) throw new Error(data.error || r.status);
    render(data);
    problem.hidden = true;
  } catch (err) {
    problem.textContent = "cannot read the status: " + err.message;
    problem.hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}
document.addEventListener("DOMContentLoaded", poll);
""".replace("__POLL_MS__", str(POLL_MS))
