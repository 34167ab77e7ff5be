// Figures: bars and lines over an axis (or the layer), and training curves over the step, as a
// tidy CSV, a Markdown preview and the gnuplot variables analysis/<kind>.gp draws.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "analysis/report_data.hpp"
#include "analysis/stats.hpp"
#include "harness/config/config.hpp"

namespace ssr::analysis {

using config::ConfigError;

namespace {

// A gnuplot string literal.
std::string q(const std::string& s) {
  std::string r;
  for (char c : s) r += c == '"' ? std::string("\\\"") : std::string(1, c);
  return "\"" + r + "\"";
}

// Training curves: a logged metric against the step, one line per series, the mean over seeds
// with a 95 % band. y: {split: valid, metric: loss} for a scalar metric, or {split: train,
// layer_metric: load_cv} for the mean over layers of layerL/load_cv. Steps that only some seeds
// of a series logged (a run still going) are left out of it.
Output build_curves(const Data& d, const json& spec, const std::string& name) {
  const std::string where = d.spec.file + ": reports." + name, seeds = str(spec, "seeds", "run.seed");
  std::vector<std::string> series_axes;
  if (spec.contains("series"))
    for (const auto& s : spec["series"]) series_axes.push_back(s.get<std::string>());
  if (!spec.contains("y"))
    throw ConfigError(fmt::format("{}: y: {{split: ..., metric: ...}} or {{split: ..., layer_metric: ...}}", where));
  const Column y = parse_column(spec["y"], where + ".y");
  if (y.split.empty() || (y.metric.empty() == y.layer_metric.empty()))
    throw ConfigError(fmt::format("{}.y: curves need split and either metric or layer_metric", where));
  std::vector<const JobRun*> used;
  for (const auto& jr : d.jobs)
    if (matches_where(jr, spec)) used.push_back(&jr);
  std::set<std::string> named(series_axes.begin(), series_axes.end());
  named.insert(seeds);
  check_axes(used, named, where);

  std::vector<std::string> series_names;
  std::map<std::string, std::map<int64_t, std::vector<double>>> values;  // series -> step -> one value per run
  std::map<std::string, int64_t> runs;                                   // series -> runs with the metric
  for (const auto* jr : used) {
    const std::string sname = series_of(spec, series_axes, *jr);
    if (std::find(series_names.begin(), series_names.end(), sname) == series_names.end()) series_names.push_back(sname);
    if (!jr->run) continue;
    std::map<int64_t, std::pair<double, int64_t>> per_step;  // step -> (sum over layers, layers)
    for (const auto& m : d.store->metrics(jr->run->id)) {
      if (m.split != y.split) continue;
      if (!y.metric.empty()) {
        if (m.name == y.metric) per_step[m.step] = {m.value, 1};
      } else if (m.name.rfind("layer", 0) == 0 && m.name.size() > y.layer_metric.size() + 1 &&
                 m.name.ends_with("/" + y.layer_metric)) {
        auto& acc = per_step[m.step];
        acc.first += m.value;
        acc.second += 1;
      }
    }
    if (per_step.empty()) continue;
    ++runs[sname];
    for (const auto& [step, acc] : per_step) values[sname][step].push_back(acc.first / static_cast<double>(acc.second));
  }

  Output out;
  out.kind = "figure";
  out.figure = "curves";
  out.csv = "series,x,y,ci,n,series_index,x_index\n";
  out.md = str(spec, "title", name) + "\n\n| series | step | value |\n|---|---|---|\n";
  for (size_t si = 0; si < series_names.size(); ++si) {
    const auto& sname = series_names[si];
    for (const auto& [step, v] : values[sname]) {
      if (static_cast<int64_t>(v.size()) < runs[sname]) continue;
      const auto e = estimate(v);
      out.csv += fmt::format("{},{},{},{},{},{},{}\n", csv_field(sname), step, e.mean, e.ci, e.n, si, step);
      out.md += fmt::format("| {} | {} | {} |\n", sname, step, fmt_value(Cell{e.mean, e.ci, e.n, ""}, y));
    }
  }
  out.md += "\n" + provenance(d, used, out.missing, seeds) + "\n";
  const std::string ylabel =
      y.label.empty() ? (y.metric.empty() ? "mean over layers of " + y.layer_metric : y.metric) : y.label;
  out.gnuplot = fmt::format("title = {}\nxlabel = {}\nylabel = {}\nns = {}\nlogy = {}\narray series[{}]\n",
                            q(str(spec, "title", name)), q(str(spec, "xlabel", "step")), q(str(spec, "ylabel", ylabel)),
                            series_names.size(), str(spec, "logy", "false") == "true" ? 1 : 0,
                            std::max<size_t>(1, series_names.size()));
  for (size_t i = 0; i < series_names.size(); ++i)
    out.gnuplot += fmt::format("series[{}] = {}\n", i + 1, q(series_names[i]));
  return out;
}

}  // namespace

Output build_figure(const Data& d, const json& spec, const std::string& name) {
  const std::string where = d.spec.file + ": reports." + name;
  const std::string kind = str(spec, "figure"), x_axis = str(spec, "x"), seeds = str(spec, "seeds", "run.seed"),
                    baseline = str(spec, "baseline");
  if (kind != "bars" && kind != "lines" && kind != "curves")
    throw ConfigError(fmt::format("{}.figure: bars, lines or curves", where));
  if (kind == "curves") return build_curves(d, spec, name);
  if (x_axis.empty()) throw ConfigError(fmt::format("{}: x: AXIS (or layer)", where));
  std::vector<std::string> series_axes;
  if (spec.contains("series"))
    for (const auto& s : spec["series"]) series_axes.push_back(s.get<std::string>());
  if (!spec.contains("y"))
    throw ConfigError(fmt::format("{}: y: {{split: ..., metric: ...}} or {{overhead: step}}", where));
  const Column y = parse_column(spec["y"], where + ".y");
  if (!y.overhead.empty() && baseline.empty())
    throw ConfigError(fmt::format("{}: overhead needs baseline: X-VALUE", where));

  std::vector<const JobRun*> used;
  for (const auto& jr : d.jobs)
    if (matches_where(jr, spec)) used.push_back(&jr);
  std::set<std::string> named(series_axes.begin(), series_axes.end());
  named.insert(x_axis);
  named.insert(seeds);
  check_axes(used, named, where);

  struct Point {
    std::string series, x;
    Cell cell;
  };
  std::vector<Point> points;
  std::vector<std::string> series_names, xs;
  auto add = [&](std::vector<std::string>& v, const std::string& s) {
    if (std::find(v.begin(), v.end(), s) == v.end()) v.push_back(s);
  };
  std::map<std::string, std::vector<const JobRun*>> by_series;
  for (const auto* jr : used) by_series[series_of(spec, series_axes, *jr)].push_back(jr);
  for (const auto* jr : used) add(series_names, series_of(spec, series_axes, *jr));
  for (const auto& sname : series_names) {
    const auto& jobs = by_series[sname];
    if (x_axis == "layer") {
      // Per-layer metric of the final evaluation, e.g. layer3/output_norm on valid (paper Fig. 2).
      std::map<int64_t, std::vector<double>> per_layer;
      for (const auto* jr : jobs) {
        if (!jr->run) continue;
        for (const auto& m : d.store->metrics(jr->run->id)) {
          if (m.split != y.split || m.name.rfind("layer", 0) != 0) continue;
          const auto slash = m.name.find('/');
          if (slash == std::string::npos || m.name.substr(slash + 1) != y.layer_metric) continue;
          per_layer[std::stoll(m.name.substr(5, slash - 5))].push_back(m.value);
        }
      }
      for (const auto& [l, v] : per_layer) {
        const auto e = estimate(v);
        points.push_back({sname, std::to_string(l + 1), Cell{e.mean, e.ci, e.n, ""}});
      }
      continue;
    }
    std::vector<std::string> sx = distinct(jobs, x_axis);
    for (const auto& xv : sx) {
      if (!y.overhead.empty() && xv == baseline) continue;
      std::vector<const JobRun*> cell;
      for (const auto* jr : jobs)
        if (jr->job->label(x_axis) == xv) cell.push_back(jr);
      Cell c = y.overhead.empty() ? metric_cell(cell, y.split, y.metric)
                                  : overhead_cell(d, cell, x_axis, baseline, y.overhead);
      points.push_back({sname, xv, c});
    }
    if (sx.empty()) points.push_back({sname, "", metric_cell(jobs, y.split, y.metric)});  // a reference level
  }
  for (const auto& p : points)
    if (!p.x.empty()) add(xs, p.x);
  // A series without the x axis (a baseline crossed only with seeds) is drawn as a flat line.
  std::vector<Point> expanded;
  for (const auto& p : points) {
    if (!p.x.empty()) {
      expanded.push_back(p);
      continue;
    }
    for (const auto& x : xs) expanded.push_back({p.series, x, p.cell});
  }
  if (kind == "lines") {
    // Lines need numeric x in order within each series.
    auto index = [&](const Point& p) {
      return std::find(series_names.begin(), series_names.end(), p.series) - series_names.begin();
    };
    for (const auto& p : expanded) {
      char* end = nullptr;
      std::strtod(p.x.c_str(), &end);
      if (p.x.empty() || *end != '\0')
        throw ConfigError(
            fmt::format("{}: x axis {} has the non-numeric value '{}'; use figure: bars", where, x_axis, p.x));
    }
    std::stable_sort(expanded.begin(), expanded.end(), [&](const Point& a, const Point& b) {
      return std::make_pair(index(a), std::stod(a.x)) < std::make_pair(index(b), std::stod(b.x));
    });
  }

  Output out;
  out.kind = "figure";
  out.figure = kind;
  out.csv = "series,x,y,ci,n,series_index,x_index\n";
  out.md = str(spec, "title", name) + "\n\n| series | " + x_axis + " | value |\n|---|---|---|\n";
  for (const auto& p : expanded) {
    const auto si = std::find(series_names.begin(), series_names.end(), p.series) - series_names.begin();
    const auto xi = std::find(xs.begin(), xs.end(), p.x) - xs.begin();
    const std::string xl = kind == "bars" ? label_of(spec, "x_labels", p.x) : p.x;
    std::string yv = !p.cell.mean               ? ""
                     : std::isnan(*p.cell.mean) ? "NaN"
                                                : fmt::format("{}", *p.cell.mean * (y.overhead.empty() ? 1 : 100));
    std::string ci = p.cell.ci > 0 ? fmt::format("{}", p.cell.ci * (y.overhead.empty() ? 1 : 100)) : "0";
    out.csv += fmt::format("{},{},{},{},{},{},{}\n", csv_field(p.series), csv_field(xl), yv.empty() ? "NaN" : yv, ci,
                           p.cell.n, si, xi);
    out.md += fmt::format("| {} | {} | {} |\n", p.series, xl, fmt_value(p.cell, y));
  }
  std::vector<const Cell*> overheads;
  if (!y.overhead.empty())
    for (const auto& p : points) overheads.push_back(&p.cell);
  const std::string foot = provenance(d, used, out.missing, seeds, !y.overhead.empty()) + timing_source(overheads);
  out.md += "\n" + foot + "\n";
  // Variables for analysis/<kind>.gp (a gnuplot script per figure kind).
  const bool integer_x = std::all_of(xs.begin(), xs.end(), [](const std::string& x) {
    return !x.empty() && x.find_first_not_of("-0123456789") == std::string::npos;
  });
  out.gnuplot = fmt::format(
      "title = {}\nxlabel = {}\nylabel = {}\nns = {}\nnx = {}\nlogx = {}\ninteger_x = {}\narray series[{}]\n",
      q(str(spec, "title", name)), q(str(spec, "xlabel", x_axis)),
      q(str(spec, "ylabel", y.label.empty() ? y.metric : y.label)), series_names.size(), xs.size(),
      str(spec, "logx", "false") == "true" ? 1 : 0, integer_x ? 1 : 0, std::max<size_t>(1, series_names.size()));
  for (size_t i = 0; i < series_names.size(); ++i)
    out.gnuplot += fmt::format("series[{}] = {}\n", i + 1, q(series_names[i]));
  std::string tics;
  for (size_t i = 0; i < xs.size(); ++i)
    tics += (tics.empty() ? "" : ", ") +
            fmt::format("{} {}", q(kind == "bars" ? label_of(spec, "x_labels", xs[i]) : xs[i]), i);
  out.gnuplot += "xtics_bars = '(" + tics + ")'\n";
  return out;
}

}  // namespace ssr::analysis
