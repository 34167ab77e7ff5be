#include "analysis/plot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <map>
#include <set>
#include <stdexcept>

#include "analysis/report_data.hpp"
#include "analysis/stats.hpp"
#include "harness/config/config.hpp"
#include "harness/store/query.hpp"

namespace ssr::analysis {
namespace {

using config::ConfigError;

// step -> value of one run: the metric itself, or the mean over layers of layerL/NAME.
std::map<int64_t, double> series_of_run(const store::Store& store, int64_t run, const PlotRequest& r,
                                        std::set<std::string>& logged) {
  const bool over_layers = r.metric.rfind("layer*/", 0) == 0;
  const std::string suffix = over_layers ? r.metric.substr(6) : "";  // "/load_cv"
  std::map<int64_t, std::pair<double, int64_t>> acc;
  for (const auto& m : store.metrics(run)) {
    if (m.split != r.split) continue;
    logged.insert(m.name);
    const bool layer_row =
        over_layers && m.name.rfind("layer", 0) == 0 && m.name.size() > suffix.size() && m.name.ends_with(suffix);
    if (!layer_row && m.name != r.metric) continue;
    auto& a = acc[m.step];
    a.first += m.value;
    a.second += 1;
  }
  std::map<int64_t, double> out;
  for (const auto& [step, a] : acc) out[step] = a.first / static_cast<double>(a.second);
  return out;
}

}  // namespace

Plot plot_runs(const store::Store& store, const PlotRequest& r) {
  if (r.runs.empty()) throw ConfigError("plot: give one or more run ids (ssr runs lists them)");
  if (!r.by.empty()) store::require_known_key(r.by, "--by");
  // Series names: "run 3" each, or "router.name=ssr_l" per group in the order first seen.
  std::vector<std::string> names;
  std::map<std::string, std::vector<std::map<int64_t, double>>> curves;
  std::set<std::string> logged;
  if (!r.labels.empty() && r.labels.size() != r.runs.size())
    throw std::logic_error("plot_runs: one label per run, or none");
  for (size_t i = 0; i < r.runs.size(); ++i) {
    const int64_t id = r.runs[i];
    const auto run = store.run(id);
    if (!run) throw ConfigError(fmt::format("plot: no run {} in {} (ssr runs lists them)", id, store.path()));
    store::stored_config(*run);  // refuses a damaged row by name
    const std::string value = r.by.empty() ? "" : store::lookup(*run, r.by, 0).value_or("-");
    std::string name = !r.labels.empty() ? r.labels[i]
                       : r.by.empty()    ? fmt::format("run {}", id)
                                         : fmt::format("{}={}", r.by, value);
    if (auto it = r.legend.find(name); it != r.legend.end())
      name = it->second;
    else if (it = r.legend.find(value); !value.empty() && it != r.legend.end())
      name = it->second;
    if (std::find(names.begin(), names.end(), name) == names.end()) names.push_back(name);
    auto points = series_of_run(store, id, r, logged);
    if (!points.empty()) curves[name].push_back(std::move(points));
  }
  if (curves.empty()) {
    std::string known;
    for (const auto& n : logged) known += (known.empty() ? "" : ", ") + n;
    const auto near = config::closest(r.metric, {logged.begin(), logged.end()});
    throw ConfigError(fmt::format("--metric {} --split {}: no such metric in these runs{} (logged under {}: {})",
                                  r.metric, r.split, near.empty() ? "" : "; did you mean " + near + "?", r.split,
                                  known.empty() ? "nothing" : known));
  }
  Plot p;
  p.series = names;
  p.ylabel = fmt::format("{} ({})", r.metric, r.split);
  p.title = r.by.empty() ? p.ylabel : fmt::format("{}: mean over runs of each {}, 95 % band", p.ylabel, r.by);
  p.csv = "series,x,y,ci,n,series_index,x_index\n";
  p.points.resize(names.size());
  for (size_t si = 0; si < names.size(); ++si) {
    const auto& runs = curves[names[si]];
    if (runs.empty()) continue;
    // Steps every run of the series logged: a run still going does not bend the mean.
    for (const auto& [step, first] : runs.front()) {
      std::vector<double> v{first};
      for (size_t i = 1; i < runs.size(); ++i)
        if (auto it = runs[i].find(step); it != runs[i].end()) v.push_back(it->second);
      if (v.size() < runs.size()) continue;
      const auto e = estimate(v);
      p.points[si].push_back({step, e.mean, e.ci, e.n});
      p.csv += fmt::format("{},{},{},{},{},{},{}\n", csv_field(names[si]), step, e.mean, e.ci, e.n, si, step);
    }
  }
  return p;
}

}  // namespace ssr::analysis
