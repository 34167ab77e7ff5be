// /api/compare: `ssr compare`'s comparison (analysis::compare) and each group's curve as
// `ssr plot` computes it (analysis::plot_runs), so the page and the CLI cannot disagree.
#include <set>
#include <sstream>

#include "analysis/compare.hpp"
#include "analysis/plot.hpp"
#include "harness/config/config.hpp"
#include "harness/store/query.hpp"
#include "harness/ui/endpoints.hpp"

namespace ssr::ui {
namespace {

json estimate_json(const analysis::Estimate& e) { return {{"mean", number(e.mean)}, {"ci", number(e.ci)}, {"n", e.n}}; }

// "1,2,5" as run ids.
std::vector<int64_t> id_list(const std::string& text) {
  std::vector<int64_t> ids;
  std::stringstream ss(text);
  for (std::string part; std::getline(ss, part, ',');) {
    if (part.empty()) continue;
    const auto id = whole(part);
    if (!id) throw Refused{400, fmt::format("ids: '{}' is not a run id", part)};
    ids.push_back(*id);
  }
  return ids;
}

}  // namespace

json compare_page(const store::Store& s, const Params& p) {
  analysis::CompareRequest req;
  req.ids = id_list(param(p, "ids"));
  std::vector<std::string> where = params(p, "where");
  if (const auto sweep = param(p, "sweep"); !sweep.empty()) {
    if (!whole(sweep)) throw Refused{400, fmt::format("sweep: '{}' is not a sweep id", sweep)};
    where.push_back("sweep=" + sweep);
  }
  req.where = store::join_where(where);
  for (const auto& m : params(p, "metric"))
    if (!m.empty()) req.metrics.push_back(m);
  req.by = param(p, "by");
  const auto c = analysis::compare(s, req);

  json out = {{"groups", c.groups}};
  out["runs"] = json::array();
  for (size_t i = 0; i < c.runs.size(); ++i)
    out["runs"].push_back({{"id", c.runs[i].id},
                           {"group", c.group_of[i]},
                           {"seed", c.runs[i].seed},
                           {"status", c.runs[i].shown_status(60)}});
  out["differing"] = json::array();
  for (const auto& [key, values] : c.differing) out["differing"].push_back({{"key", key}, {"values", values}});
  out["results"] = json::array();
  for (const auto& r : c.results) {
    json values = json::array();
    for (const auto& v : r.values) values.push_back(v ? number(*v) : json(nullptr));
    out["results"].push_back(
        {{"result", r.split + "/" + r.name}, {"unit", analysis::unit_of(r.name)}, {"values", values}});
  }
  out["by_group"] = json::array();
  for (const auto& g : c.by_group)
    out["by_group"].push_back({{"group", g.group},
                               {"result", g.split + "/" + g.name},
                               {"unit", analysis::unit_of(g.name)},
                               {"value", estimate_json(g.value)}});
  out["paired"] = json::array();
  for (const auto& d : c.paired)
    out["paired"].push_back({{"group", d.group},
                             {"result", d.split + "/" + d.name},
                             {"delta", estimate_json(d.delta)},
                             {"relative", d.relative ? estimate_json(*d.relative) : json(nullptr)},
                             {"excludes_zero", d.delta.n > 1 && std::abs(d.delta.mean) > d.delta.ci},
                             {"left_out", d.left_out}});

  // One curve per group: a logged metric, SPLIT/NAME (train/layer*/load_cv: the mean over layers).
  std::string curve = param(p, "curve");
  analysis::PlotRequest plot;
  for (const auto& r : c.runs) plot.runs.push_back(r.id);
  plot.labels = c.group_of;
  if (curve.empty()) {
    // The validation loss where it is a curve; a run validated only at its end has one point.
    std::set<int64_t> valid_steps;
    for (const auto& r : c.runs)
      for (const auto& m : s.metrics(r.id))
        if (m.split == "valid" && m.name == "loss") valid_steps.insert(m.step);
    curve = valid_steps.size() > 1 ? "valid/loss" : "train/loss";
  }
  const auto slash = curve.find('/');
  if (slash == std::string::npos) throw Refused{400, fmt::format("curve: '{}' is not SPLIT/NAME", curve)};
  plot.split = curve.substr(0, slash);
  plot.metric = curve.substr(slash + 1);
  out["curve"] = {{"name", curve}};
  try {
    const auto drawn = analysis::plot_runs(s, plot);
    const int64_t points = positive(p, "points", 300, 100000);
    json series = json::array();
    for (size_t i = 0; i < drawn.series.size(); ++i) {
      json pts = json::array();
      const auto& all = drawn.points[i];
      for (const size_t at : thinned(all.size(), points))
        pts.push_back({all[at].step, number(all[at].mean), number(all[at].ci), all[at].n});
      series.push_back({{"name", drawn.series[i]}, {"points", pts}});
    }
    out["curve"]["series"] = series;
  } catch (const config::ConfigError& e) {
    out["curve"]["error"] = e.what();  // the tables stand without it
  }
  return out;
}

}  // namespace ssr::ui
