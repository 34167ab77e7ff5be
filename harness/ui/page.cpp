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
.chart.wide { grid-column: 1 / -1; height: 460px; padding-bottom: 2.5em; }
input[type=text] { width: 28em; }
form.wide label { display: inline-block; margin: 0 1em .3em 0; }
form.wide input[type=text] { width: 14em; }
.star { color: #b00; font-weight: 600; }
pre { background: #f8f8f8; padding: .5em; }
code { background: #f4f4f4; padding: 0 .3em; }
</style></head>
<body>
<header><a href="#/">runs</a><a href="#/compare">compare</a><a href="#/sweeps">sweeps</a><a href="#/reports">reports</a><span id="store" class="muted"></span><span id="updated" class="muted"></span></header>
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
function headlineValue(results, split) {
  const r = (results || {})[split] || {};
  for (const name of ["ppl", "bpc", "top1"]) if (name in r) return r[name];
  return null;
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
function query() { return new URLSearchParams(location.hash.split("?")[1] || ""); }
function duration(s) {
  if (s === null || s === undefined) return "-";
  s = Math.round(s);
  const h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60);
  return h ? `${h}h${String(m).padStart(2, "0")}m` : m ? `${m}m${String(s % 60).padStart(2, "0")}s` : `${s}s`;
}
function statusClass(s) { return s === "running" ? "live" : (s === "failed" || s === "damaged" || s === "stale" ? "bad" : ""); }
function table(id, heads, rows) { return el("table", {id}, el("tr", {}, ...heads.map(h => el("th", {}, h))), ...rows); }
function estimateText(e) {
  if (!e) return "-";
  const mean = (e.mean >= 0 ? "+" : "") + fmt(e.mean);
  return e.n > 1 ? mean + " ± " + fmt(e.ci) : mean;
}
function stamp() { document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString(); }
function error(e) { main.replaceChildren(el("p", {class: "bad", id: "error"}, "error: " + e.message)); }

async function runsPage() {
  const q = query(), where = q.get("where") || "", columns = q.get("columns") || "", sort = q.get("sort") || "";
  const form = el("form", {id: "filter", class: "wide"}, el("label", {}, "where ", el("input", {type: "text", name: "where", placeholder: "router=ssr_l,status=finished,valid<30"})),
    el("label", {}, "columns ", el("input", {type: "text", name: "columns", placeholder: "router.p,valid/ppl"})), el("button", {}, "show"));
  form.where.value = where;
  form.columns.value = columns;
  const link = (s) => "#/?" + new URLSearchParams({where: form.where.value, columns: form.columns.value, sort: s}).toString();
  form.onsubmit = (ev) => { ev.preventDefault(); location.hash = link(sort); };
  const data = await get("/api/runs?" + new URLSearchParams({where, columns}).toString());
  document.getElementById("store").textContent = data.store;
  // Sorted by a clicked column: numbers by value, "-" first for descending.
  const value = (r, k) => k === "valid" || k === "test" ? headlineValue(r.results, k) : k in r.columns ? r.columns[k] : r[k];
  if (sort) {
    const k = sort.replace(/^-/, ""), dir = sort.startsWith("-") ? -1 : 1;
    const num = (v) => v === "" || v === null || v === undefined || isNaN(Number(v)) ? null : Number(v);
    data.runs.sort((a, b) => {
      const x = value(a, k), y = value(b, k), nx = num(x), ny = num(y);
      if (nx !== null && ny !== null) return dir * (nx - ny);
      if (nx === null && ny === null) return dir * String(x ?? "").localeCompare(String(y ?? ""));
      return nx === null ? 1 : -1;  // runs without a number last
    });
  }
  const sortable = (label, key) => el("th", {}, el("a", {href: link(sort === key ? "-" + key : key), class: "sort"}, label + (sort === key ? " ▲" : sort === "-" + key ? " ▼" : "")));
  const head = el("tr", {}, el("th", {}, ""), ...[["id", "id"], ["status", "status"], ["router", "router"], ["data", "data"], ["model", "model"], ["seed", "seed"], ["step", "step"], ["valid", "valid"], ["test", "test"], ["sweep", "sweep"]].map(([l, k]) => sortable(l, k)),
    ...data.columns.map(c => sortable(c, c)), el("th", {}, "name / tags"));
  const pick = el("button", {id: "compare-selected", type: "button"}, "compare selected");
  pick.onclick = () => {
    const ids = [...document.querySelectorAll("input.pick:checked")].map(c => c.value);
    location.hash = "#/compare?ids=" + ids.join(",");
  };
  const rows = data.runs.map(r => {
    const status = el("td", {class: r.status === "running" ? "live" : (r.status === "failed" || r.status === "damaged" ? "bad" : "")}, r.status);
    if (r.status === "running") status.append(el("span", {class: "muted"}, " (" + Math.round(r.heartbeat_age_s) + " s ago)"));
    const tags = r.tags ? Object.entries(r.tags).map(([k, v]) => k + "=" + (typeof v === "string" ? v : JSON.stringify(v))).join(" ") : "";
    return el("tr", {class: "run"}, el("td", {}, el("input", {type: "checkbox", class: "pick", value: r.id})), el("td", {}, el("a", {href: "#/run/" + r.id}, r.id)), status, el("td", {}, r.router), el("td", {}, r.data), el("td", {}, r.model),
      el("td", {class: "num"}, r.seed), el("td", {class: "num"}, r.step + (r.steps ? " / " + r.steps : "")),
      el("td", {class: "num"}, headline(r.results, "valid")), el("td", {class: "num"}, headline(r.results, "test")),
      el("td", {}, r.sweep === undefined ? "" : el("a", {href: "#/sweep/" + r.sweep}, r.sweep)),
      ...data.columns.map(c => el("td", {class: "num"}, isNaN(Number(r.columns[c])) || r.columns[c] === "" ? r.columns[c] : fmt(Number(r.columns[c])))),
      el("td", {}, [r.name, tags].filter(Boolean).join(" ")));
  });
  main.replaceChildren(form, el("table", {id: "runs"}, head, ...rows), el("p", {class: "muted"}, data.runs.length + " runs "), pick);
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
  const res = el("table", {id: "results"}, el("tr", {}, el("th", {}, "split"), el("th", {}, "result"), el("th", {}, "value"), el("th", {}, "unit")));
  for (const [split, names] of Object.entries(run.results)) for (const [name, v] of Object.entries(names)) res.append(el("tr", {}, el("td", {}, split), el("td", {}, name), el("td", {class: "num"}, fmt(v)), el("td", {class: "muted"}, run.units[name] || "")));
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

// The mean of each group's curve with its 95 % band: a lower and an upper edge filled between
// (legend hidden), then the mean on top.
function bandChart(canvas, series) {
  const datasets = [];
  series.forEach((s, i) => {
    const c = palette[i % palette.length];
    const pts = s.points.filter(p => typeof p[1] === "number");
    const lo = pts.map(p => ({x: p[0], y: p[1] - (typeof p[2] === "number" ? p[2] : 0)}));
    const hi = pts.map(p => ({x: p[0], y: p[1] + (typeof p[2] === "number" ? p[2] : 0)}));
    datasets.push({label: "_lo", data: lo, pointRadius: 0, borderWidth: 0, fill: false});
    datasets.push({label: "_hi", data: hi, pointRadius: 0, borderWidth: 0, fill: "-1", backgroundColor: c + "33"});
    datasets.push({label: s.name, data: pts.map(p => ({x: p[0], y: p[1]})), pointRadius: pts.length < 30 ? 2 : 0, borderWidth: 1.8,
      borderColor: c, backgroundColor: c, borderDash: [[], [6, 3], [2, 2], [8, 3, 2, 3]][i % 4]});
  });
  return new Chart(canvas, {type: "line", data: {datasets}, options: {animation: false, maintainAspectRatio: false,
    scales: {x: {type: "linear", title: {display: true, text: "step"}}},
    plugins: {legend: {position: series.length > 4 ? "right" : "top", labels: {filter: l => !l.text.startsWith("_")}}}}});
}

async function comparePage() {
  const q = query();
  const fields = ["ids", "where", "sweep", "by", "metric", "curve"];
  const form = el("form", {id: "compare-form", class: "wide"}, ...fields.map(f => el("label", {}, f + " ", el("input", {type: "text", name: f}))), el("button", {}, "compare"));
  for (const f of fields) form[f].value = q.get(f) || "";
  form.ids.placeholder = "1,2,3"; form.where.placeholder = "router=ssr_l"; form.by.placeholder = "router"; form.metric.placeholder = "valid/ppl"; form.curve.placeholder = "valid/loss";
  form.onsubmit = (ev) => {
    ev.preventDefault();
    const p = new URLSearchParams();
    for (const f of fields) if (form[f].value) p.set(f, form[f].value);
    location.hash = "#/compare?" + p.toString();
  };
  if (![...q.keys()].length) {
    main.replaceChildren(el("h2", {}, "compare"), form, el("p", {class: "muted"}, "Pick runs on the runs page, give ids, a --where condition or a sweep; group by a key such as router."));
    return;
  }
  const api = new URLSearchParams();
  for (const f of fields) if (q.get(f)) api.set(f, q.get(f));
  api.set("points", "300");
  let data;
  try { data = await get("/api/compare?" + api.toString()); } catch (e) { main.replaceChildren(el("h2", {}, "compare"), form, el("p", {class: "bad", id: "error"}, "error: " + e.message)); return; }
  for (const c of charts) c.destroy();
  charts = [];
  const parts = [el("h2", {}, `compare: ${data.runs.length} runs in ${data.groups.length} groups`), form,
    el("p", {class: "muted"}, "baseline: " + data.groups[0] + " · runs: ", ...data.runs.slice(0, 40).map(r => el("span", {}, el("a", {href: "#/run/" + r.id}, r.id), " ")), data.runs.length > 40 ? "…" : "")];
  const paired = data.paired.map(d => el("tr", {class: "delta"}, el("td", {}, d.group), el("td", {}, d.result),
    el("td", {class: "num"}, estimateText(d.delta), d.excludes_zero ? el("span", {class: "star"}, " *") : ""),
    el("td", {class: "num"}, estimateText(d.relative)), el("td", {class: "num"}, d.delta.n + (d.left_out ? ` (${d.left_out} left out)` : ""))));
  if (data.groups.length > 1) parts.push(el("h3", {}, "paired differences against " + data.groups[0] + " (same seed; mean ± 95 % Student-t interval; * excludes 0)"),
    table("paired", ["group", "result", "Δ", "Δ %", "seeds"], paired));
  const curve = el("div", {class: "chart wide"}, el("div", {}, data.curve.name + ": mean over each group's runs, 95 % band"));
  if (data.curve.error) curve.append(el("p", {class: "bad"}, data.curve.error));
  else {
    const canvas = el("canvas", {id: "compare-curve", "data-series": data.curve.series.length, "data-points": data.curve.series.reduce((n, s) => n + s.points.length, 0)});
    curve.append(canvas);
    if (window.Chart) charts.push(bandChart(canvas, data.curve.series));
  }
  parts.push(el("h3", {}, "curves"), el("div", {class: "charts"}, curve));
  parts.push(el("h3", {}, "results by group (mean ± 95 % interval over its runs)"), table("by-group", ["group", "result", "value", "runs"], data.by_group.map(g =>
    el("tr", {}, el("td", {}, g.group), el("td", {}, g.result + (g.unit ? " (" + g.unit + ")" : "")), el("td", {class: "num"}, estimateText(g.value).replace(/^\+/, "")), el("td", {class: "num"}, g.value.n)))));
  if (data.runs.length <= 12) {  // side by side only while it fits
    const ids = data.runs.map(r => "run " + r.id);
    parts.push(el("h3", {}, "results"), table("compare-results", ["result", ...ids], data.results.map(r =>
      el("tr", {}, el("td", {}, r.result + (r.unit ? " (" + r.unit + ")" : "")), ...r.values.map(v => el("td", {class: "num"}, fmt(v)))))));
    parts.push(el("h3", {}, "config: the keys that differ"), table("differing", ["key", ...ids], data.differing.map(d =>
      el("tr", {}, el("td", {}, el("code", {}, d.key)), ...d.values.map(v => el("td", {}, v))))));
  }
  main.replaceChildren(...parts);
  stamp();
  if (data.runs.some(r => r.status === "running")) timer = setTimeout(route, 5000);
}

async function sweepsPage() {
  const data = await get("/api/sweeps");
  document.getElementById("store").textContent = data.store;
  const rows = data.sweeps.map(s => el("tr", {class: "sweep"}, el("td", {}, el("a", {href: "#/sweep/" + s.id}, s.id)), el("td", {}, s.name),
    el("td", {}, s.scale), el("td", {}, s.overrides.join(" ")), el("td", {class: s.summary.failed ? "bad" : (s.summary.running ? "live" : "")}, s.summary.line),
    el("td", {class: "num"}, duration(s.eta_s)), el("td", {}, new Date(s.created_at * 1000).toLocaleString())));
  main.replaceChildren(el("h2", {}, "sweeps"), table("sweeps", ["id", "name", "scale", "command-line axes", "progress", "ETA", "planned"], rows));
  stamp();
  if (data.sweeps.some(s => s.summary.running)) timer = setTimeout(route, 5000);
}

async function sweepPage(id) {
  const s = await get("/api/sweeps/" + id);
  const rows = s.jobs.map(j => el("tr", {class: "job"}, el("td", {class: "num"}, j.num), el("td", {}, j.labels), el("td", {class: statusClass(j.status)}, j.status),
    el("td", {}, j.run ? el("a", {href: "#/run/" + j.run}, j.run) : "-"), el("td", {class: "num"}, j.step === undefined ? "-" : j.step),
    el("td", {class: "num"}, duration(j.seconds)), el("td", {class: "bad"}, j.error || "")));
  main.replaceChildren(el("h2", {}, `sweep ${s.id}: ${s.name}`),
    el("p", {id: "progress"}, s.summary.line + " · ETA " + duration(s.eta_s)),
    el("p", {class: "muted"}, `${s.file} · scale ${s.scale || "-"} · ${s.overrides.join(" ")}`),
    el("p", {}, el("a", {href: "#/compare?sweep=" + s.id, id: "compare-sweep"}, "compare this sweep's runs")),
    table("jobs", ["job", "labels", "status", "run", "step", "time", "error"], rows));
  stamp();
  if (s.summary.running) timer = setTimeout(route, 5000);
}

// A report's Markdown (headings, pipe tables, paragraphs) as elements, every cell as text.
function markdown(md) {
  const out = [];
  let rows = null;
  for (const line of md.split("\n")) {
    if (line.startsWith("|")) {
      const cells = line.replace(/^\||\|$/g, "").split("|").map(c => c.trim());
      if (cells.every(c => /^:?-+:?$/.test(c))) continue;
      if (!rows) { rows = el("table", {class: "report"}); out.push(rows); rows.append(el("tr", {}, ...cells.map(c => el("th", {}, c)))); }
      else rows.append(el("tr", {}, ...cells.map(c => el("td", {}, c))));
      continue;
    }
    rows = null;
    const h = line.match(/^(#+)\s*(.*)$/);
    if (h) out.push(el("h3", {}, h[2]));
    else if (line.trim()) out.push(el("p", {}, line.replace(/\*\*/g, "")));
  }
  return out;
}

async function reportsPage() {
  const data = await get("/api/reports");
  main.replaceChildren(el("h2", {}, "reports"), el("p", {class: "muted"}, "declared in " + data.experiments + " (ssr report --list)"),
    table("reports", ["report", "experiment file"], data.reports.map(r => el("tr", {}, el("td", {}, el("a", {href: "#/report/" + r.name}, r.name)), el("td", {}, r.file)))));
  stamp();
}

async function reportPage(name) {
  const q = query();
  const form = el("form", {class: "wide"}, el("label", {}, "scale ", el("input", {type: "text", name: "scale", placeholder: "demo"})), el("button", {}, "render"));
  form.scale.value = q.get("scale") || "";
  form.onsubmit = (ev) => { ev.preventDefault(); location.hash = "#/report/" + name + (form.scale.value ? "?scale=" + encodeURIComponent(form.scale.value) : ""); };
  const r = await get("/api/reports/" + encodeURIComponent(name) + (q.get("scale") ? "?scale=" + encodeURIComponent(q.get("scale")) : ""));
  const parts = [el("h2", {}, "report " + r.name), el("p", {class: "muted"}, r.file + " · the same table as ssr report " + r.name), form, el("div", {id: "report"}, ...markdown(r.md))];
  if (r.missing.length) parts.push(el("h3", {}, r.missing.length + " planned runs missing"), el("pre", {}, r.missing.join("\n")));
  main.replaceChildren(...parts);
  stamp();
}

function route() {
  clearTimeout(timer);
  const h = (location.hash || "#/").split("?")[0];
  let m;
  const page = (m = h.match(/^#\/run\/(\d+)$/)) ? runPage(m[1])
    : (m = h.match(/^#\/sweep\/(\d+)$/)) ? sweepPage(m[1])
    : (m = h.match(/^#\/report\/([\w.-]+)$/)) ? reportPage(m[1])
    : h === "#/compare" ? comparePage()
    : h === "#/sweeps" ? sweepsPage()
    : h === "#/reports" ? reportsPage()
    : runsPage();
  page.catch(error);
}
window.addEventListener("hashchange", route);
route();
</script></body></html>
)html";
  return page;
}

}  // namespace ssr::ui
