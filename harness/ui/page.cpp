#include "harness/ui/page.hpp"

namespace ssr::ui {

// Every string from the store reaches the document through textContent, never as HTML, so a run
// named or tagged `<script>...` shows that text.
const std::string& page_html() {
  static const std::string page = R"html(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>ssr</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body { font: 14px system-ui, sans-serif; margin: 0 1.5em 2em; color: #222; }
header { display: flex; gap: 1.5em; align-items: baseline; border-bottom: 1px solid #ddd; padding: .6em 0; }
header a { color: #225; font-weight: 600; text-decoration: none; }
table { border-collapse: collapse; margin: .6em 0; }
th, td { padding: .2em .7em; border-bottom: 1px solid #eee; text-align: left; vertical-align: top; }
th { background: #f6f6f6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.live { color: #080; font-weight: 600; }
.bad { color: #b00; }
.muted { color: #888; }
.charts { display: grid; grid-template-columns: repeat(auto-fill, minmax(420px, 1fr)); gap: 1em; }
.chart { border: 1px solid #eee; padding: .5em; }
input[type=text] { width: 28em; }
code { background: #f4f4f4; padding: 0 .3em; }
</style></head>
<body>
<header><a href="#/">ssr runs</a><span id="store" class="muted"></span><span id="updated" class="muted"></span></header>
<main id="main"></main>
<script src="/chart.js"></script>
<script>
"use strict";
const main = document.getElementById("main");
let timer = null, charts = [];
const palette = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"];

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}
function fmt(v) {
  if (typeof v !== "number") return v === undefined || v === null ? "-" : String(v);
  return Math.abs(v) >= 1000 || Math.abs(v) < 0.01 ? v.toPrecision(4) : v.toFixed(3);
}
function headline(results, split) {
  const r = (results || {})[split] || {};
  for (const name of ["ppl", "bpc", "top1"]) if (name in r) return fmt(r[name]) + " " + name;
  return "-";
}
async function get(url) {
  const r = await fetch(url);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}
function stamp() { document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString(); }
function error(e) { main.replaceChildren(el("p", {class: "bad", id: "error"}, "error: " + e.message)); }

async function runsPage() {
  const where = new URLSearchParams(location.hash.split("?")[1] || "").get("where") || "";
  const form = el("form", {id: "filter"}, "where ", el("input", {type: "text", name: "where", placeholder: "router=ssr_l,status=finished,valid<30"}), " ", el("button", {}, "filter"));
  form.where.value = where;
  form.onsubmit = (ev) => { ev.preventDefault(); location.hash = "#/?where=" + encodeURIComponent(form.where.value); };
  const data = await get("/api/runs?where=" + encodeURIComponent(where));
  document.getElementById("store").textContent = data.store;
  const head = el("tr", {}, ...["id", "status", "router", "data", "model", "seed", "step", "valid", "test", "sweep", "name / tags"].map(h => el("th", {}, h)));
  const rows = data.runs.map(r => {
    const status = el("td", {class: r.status === "running" ? "live" : (r.status === "failed" || r.status === "damaged" ? "bad" : "")}, r.status);
    if (r.status === "running") status.append(el("span", {class: "muted"}, " (" + Math.round(r.heartbeat_age_s) + " s ago)"));
    const tags = r.tags ? Object.entries(r.tags).map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join(" ") : "";
    return el("tr", {class: "run"}, el("td", {}, el("a", {href: "#/run/" + r.id}, r.id)), status, el("td", {}, r.router), el("td", {}, r.data), el("td", {}, r.model),
      el("td", {class: "num"}, r.seed), el("td", {class: "num"}, r.step + (r.steps ? " / " + r.steps : "")),
      el("td", {class: "num"}, headline(r.results, "valid")), el("td", {class: "num"}, headline(r.results, "test")),
      el("td", {}, r.sweep === undefined ? "" : r.sweep), el("td", {}, [r.name, tags].filter(Boolean).join(" ")));
  });
  main.replaceChildren(form, el("table", {id: "runs"}, head, ...rows), el("p", {class: "muted"}, data.runs.length + " runs"));
  stamp();
  if (data.runs.some(r => r.status === "running")) timer = setTimeout(route, 5000);
}

// (steps, experts) shares as a canvas: a column per logged window, a row per expert.
function heatmap(l) {
  const experts = l.share[0].length, steps = l.share.length, cw = Math.max(1, Math.floor(400 / steps)), ch = Math.max(4, Math.floor(160 / experts));
  const c = el("canvas", {width: steps * cw, height: experts * ch, "data-layer": l.layer, "data-cells": steps * experts, title: "expert load, layer " + l.layer});
  const g = c.getContext("2d");
  l.share.forEach((row, x) => row.forEach((v, e) => {
    const r = Math.min(2, v * experts);  // 1 = the uniform share
    const t = r < 1 ? r : 2 - r;          // 0 at the ends, 1 at uniform
    g.fillStyle = r < 1 ? `rgb(${Math.round(255 * t)},${Math.round(255 * t)},255)` : `rgb(255,${Math.round(255 * t)},${Math.round(255 * t)})`;
    g.fillRect(x * cw, e * ch, cw, ch);
  }));
  return c;
}

function curveGroups(series) {
  // One chart per metric name; the layers of a per-layer metric (layer0/load_cv, ...) share one.
  const groups = {};
  for (const [name, points] of Object.entries(series)) {
    const [split, ...rest] = name.split("/");
    const metric = rest.join("/");
    const layer = metric.match(/^layer(\d+)\/(.*)$/);
    const key = split + "/" + (layer ? layer[2] : metric);
    (groups[key] = groups[key] || []).push({label: layer ? "layer " + layer[1] : split, points});
  }
  return groups;
}

async function runPage(id) {
  const [run, m, load] = await Promise.all([get("/api/runs/" + id), get("/api/runs/" + id + "/metrics?points=400"), get("/api/runs/" + id + "/load?points=200")]);
  for (const c of charts) c.destroy();
  charts = [];
  const title = el("h2", {}, "run " + run.id + " ", el("span", {class: run.status === "running" ? "live" : (run.status === "failed" ? "bad" : "muted")}, run.status), " " + run.router);
  const facts = el("p", {class: "muted"}, `seed ${run.seed} · step ${run.step} · hash ${run.hash} · git ${run.provenance.git} · ${run.provenance.host} · ${run.provenance.device} · torch ${run.provenance.torch}`);
  const parts = [title, facts];
  if (run.error) parts.push(el("p", {class: "bad"}, "error: " + run.error));
  if (run.damage) parts.push(el("p", {class: "bad"}, "damaged: " + run.damage));
  const res = el("table", {id: "results"}, el("tr", {}, el("th", {}, "split"), el("th", {}, "result"), el("th", {}, "value")));
  for (const [split, names] of Object.entries(run.results)) for (const [name, v] of Object.entries(names)) res.append(el("tr", {}, el("td", {}, split), el("td", {}, name), el("td", {class: "num"}, fmt(v))));
  parts.push(el("h3", {}, "results"), res);
  if (load.layers.length) {
    const maps = el("div", {class: "charts", id: "heatmaps"});
    for (const l of load.layers) maps.append(el("div", {class: "chart"}, el("div", {}, "layer " + l.layer + ": steps " + l.steps[0] + " to " + l.steps[l.steps.length - 1]), heatmap(l)));
    parts.push(el("h3", {}, "expert load per layer (rows: experts; colour: share of tokens / uniform share, blue 0, white 1, red 2 or more)"), maps);
  }
  const grid = el("div", {class: "charts", id: "charts"});
  parts.push(el("h3", {}, "curves"), grid);
  const groups = curveGroups(m.series);
  for (const [name, lines] of Object.entries(groups).sort()) {
    const canvas = el("canvas", {"data-metric": name, "data-points": lines.reduce((n, l) => n + l.points.length, 0)});
    grid.append(el("div", {class: "chart"}, el("div", {}, name), canvas));
    if (window.Chart) charts.push(new Chart(canvas, {type: "line", data: {datasets: lines.map((l, i) => ({label: l.label, data: l.points.map(([x, y]) => ({x, y: typeof y === "number" ? y : null})), pointRadius: 0, borderWidth: 1.5, borderColor: palette[i % palette.length], backgroundColor: palette[i % palette.length]}))},
      options: {animation: false, parsing: true, scales: {x: {type: "linear", title: {display: true, text: "step"}}}, plugins: {legend: {display: lines.length > 1}}}}));
  }
  if (!window.Chart) parts.push(el("p", {class: "bad"}, "Chart.js did not load (apt-get install libjs-chart.js): curves are listed, not drawn"));
  const tm = el("table", {id: "timings"}, el("tr", {}, el("th", {}, "phase"), el("th", {}, "mean s / step")));
  for (const [p, v] of Object.entries(run.timings_mean_s)) tm.append(el("tr", {}, el("td", {}, p), el("td", {class: "num"}, v.toFixed(4))));
  parts.push(el("h3", {}, "timings"), tm);
  const cfg = el("table", {id: "config"}, el("tr", {}, el("th", {}, "key"), el("th", {}, "value"), el("th", {}, "doc")));
  for (const k of run.config) cfg.append(el("tr", {class: k.default ? "muted" : ""}, el("td", {}, el("code", {}, k.key)), el("td", {}, typeof k.value === "string" ? k.value : JSON.stringify(k.value)), el("td", {}, k.doc)));
  parts.push(el("h3", {}, "config (defaults greyed)"), cfg);
  main.replaceChildren(...parts);
  stamp();
  if (run.status === "running") timer = setTimeout(route, 5000);
}

function route() {
  clearTimeout(timer);
  const h = location.hash || "#/";
  const m = h.match(/^#\/run\/(\d+)/);
  (m ? runPage(m[1]) : runsPage()).catch(error);
}
window.addEventListener("hashchange", route);
route();
</script></body></html>
)html";
  return page;
}

}  // namespace ssr::ui
