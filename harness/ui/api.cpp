#include "harness/ui/api.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <sstream>

#include "analysis/compare.hpp"
#include "harness/config/config.hpp"
#include "harness/store/query.hpp"
#include "harness/store/store.hpp"
#include "harness/ui/endpoints.hpp"
#include "harness/ui/page.hpp"

namespace ssr::ui {
namespace {

namespace fs = std::filesystem;

int64_t run_id(const std::string& text) {
  const auto v = whole(text);
  if (!v) throw Refused{400, fmt::format("'{}' is not a run id", text)};
  return *v;
}

json results_json(const std::vector<store::Result>& results) {
  json out = json::object();
  for (const auto& r : results) out[r.split][r.name] = number(r.value);
  return out;
}

// Each result name's unit, as `ssr compare` labels it.
json units_json(const std::vector<store::Result>& results) {
  json out = json::object();
  for (const auto& r : results)
    if (const auto u = analysis::unit_of(r.name); !u.empty()) out[r.name] = u;
  return out;
}

}  // namespace

json runs_page(const store::Store& s, const Params& p) {
  const double stale_after = 60;
  auto list = store::filter_runs(s.runs(), store::join_where(params(p, "where")), stale_after, &s);
  // Extra columns, as `ssr runs --columns` takes them: config keys, groups, results.
  std::vector<std::string> columns;
  std::stringstream ss(param(p, "columns"));
  for (std::string c; std::getline(ss, c, ',');)
    if (!c.empty()) {
      store::require_known_key(c, "columns");
      columns.push_back(c);
    }
  const int64_t limit = positive(p, "limit", 1000, 100000);
  std::reverse(list.begin(), list.end());  // newest first, as a dashboard reads
  if (static_cast<int64_t>(list.size()) > limit) list.resize(static_cast<size_t>(limit));
  json out = json::array();
  const double t = store::now();
  for (const auto& r : list) {
    const auto results = s.results(r.id);
    json row = {{"id", r.id},
                {"status", r.shown_status(stale_after)},
                {"router", store::router_label(r)},
                {"model", store::lookup(r, "model", 0).value_or("")},
                {"data", store::lookup(r, "data", 0).value_or("")},
                {"seed", r.seed},
                {"step", r.step},
                {"steps", store::lookup(r, "train.steps", 0).value_or("")},
                {"name", store::lookup(r, "run.name", 0).value_or("")},
                {"results", results_json(results)},
                {"hash", r.config_hash}};
    if (r.sweep_id) row["sweep"] = *r.sweep_id;
    if (r.status == "running") row["heartbeat_age_s"] = t - r.heartbeat_at;
    if (r.config.contains("tags")) row["tags"] = r.config["tags"];
    json extra = json::object();
    for (const auto& c : columns) {
      auto v = store::lookup(r, c, stale_after);
      if (!v) v = store::result_value(results, c);
      extra[c] = v.value_or("");
    }
    row["columns"] = extra;
    out.push_back(row);
  }
  return {{"runs", out}, {"store", s.path()}, {"columns", columns}};
}

json run_page(const store::Store& s, int64_t id) {
  const auto r = s.run(id);
  if (!r) throw Refused{404, fmt::format("no run {} in {}", id, s.path())};
  json config = json::array();
  if (r->damage.empty()) {
    const auto cfg = store::stored_config(*r);
    for (const auto& [key, value] : cfg.values()) {
      const auto* k = config::find_key(key);
      config.push_back(
          {{"key", key}, {"value", value}, {"doc", k ? k->doc : ""}, {"default", k ? value == k->def : false}});
    }
  }
  std::map<std::string, std::pair<double, int64_t>> phase;
  for (const auto& t : s.timings(id)) {
    phase[t.phase].first += t.seconds;
    ++phase[t.phase].second;
  }
  json timings = json::object();
  for (const auto& [name, v] : phase) timings[name] = v.first / static_cast<double>(v.second);
  json out = {{"id", r->id},
              {"status", r->shown_status(60)},
              {"router", store::router_label(*r)},
              {"hash", r->config_hash},
              {"seed", r->seed},
              {"step", r->step},
              {"error", r->error},
              {"damage", r->damage},
              {"config", config},
              {"results", results_json(s.results(id))},
              {"units", units_json(s.results(id))},
              {"timings_mean_s", timings},
              {"provenance",
               {{"git", r->info.git_rev},
                {"host", r->info.host},
                {"device", r->info.device},
                {"torch", r->info.torch_version},
                {"world_size", r->info.world_size}}},
              {"created_at", r->created_at},
              {"started_at", r->started_at},
              {"ended_at", r->ended_at},
              {"heartbeat_at", r->heartbeat_at}};
  if (r->sweep_id) out["sweep"] = *r->sweep_id;
  return out;
}

// Every curve, at most `points` of them each.
json run_metrics(const store::Store& s, int64_t id, int64_t points) {
  if (!s.run(id)) throw Refused{404, fmt::format("no run {} in {}", id, s.path())};
  std::map<std::string, std::vector<std::pair<int64_t, double>>> curves;
  for (const auto& m : s.metrics(id)) curves[m.split + "/" + m.name].emplace_back(m.step, m.value);
  json out = json::object();
  for (const auto& [name, c] : curves) {
    json series = json::array();
    for (const size_t at : thinned(c.size(), points)) series.push_back({c[at].first, number(c[at].second)});
    out[name] = series;
  }
  return {{"id", id}, {"series", out}};
}

// Per layer, each logged window's share of tokens per expert: (steps, experts), at most `points`
// windows.
json run_loads(const store::Store& s, int64_t id, int64_t points) {
  if (!s.run(id)) throw Refused{404, fmt::format("no run {} in {}", id, s.path())};
  std::map<int64_t, std::vector<store::ExpertLoad>> by_layer;
  for (auto& l : s.expert_loads(id)) by_layer[l.layer].push_back(std::move(l));
  json layers = json::array();
  for (const auto& [layer, rows] : by_layer) {
    json steps = json::array(), share = json::array();
    for (const size_t at : thinned(rows.size(), points)) {
      const auto& r = rows[at];
      double total = 0;
      for (const auto t : r.tokens) total += static_cast<double>(t);
      json row = json::array();
      for (const auto t : r.tokens) row.push_back(total > 0 ? static_cast<double>(t) / total : 0.0);
      steps.push_back(r.step);
      share.push_back(row);
    }
    layers.push_back({{"layer", layer}, {"steps", steps}, {"share", share}});
  }
  return {{"id", id}, {"layers", layers}};
}

namespace {

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

}  // namespace

std::string chart_js_path() {
  for (const char* p : {"/usr/share/javascript/chart.js/chart.min.js", "/usr/share/javascript/chart.js/Chart.min.js"})
    if (fs::exists(p)) return p;
  return "";
}

Reply handle(const Site& site, const std::string& path, const Params& params) {
  try {
    if (path == "/" || path == "/index.html") return {200, "text/html; charset=utf-8", page_html()};
    if (path == "/chart.js") {
      const auto js = chart_js_path();
      if (js.empty()) throw Refused{404, "Chart.js is not installed (apt-get install libjs-chart.js; make deps)"};
      return {200, "application/javascript", read_file(js)};
    }
    // /api/KIND[/ID[/PART]], nothing deeper.
    std::vector<std::string> parts;
    for (size_t at = 1; at <= path.size();) {
      const size_t next = std::min(path.find('/', at), path.size());
      parts.push_back(path.substr(at, next - at));
      at = next + 1;
    }
    const auto refuse = [&] { return Refused{404, fmt::format("no such page: {}", path)}; };
    if (parts.size() < 2 || parts.size() > 4 || parts[0] != "api") throw refuse();
    const std::string& kind = parts[1];
    const auto ok = [](const json& j) { return Reply{200, "application/json", j.dump()}; };
    if (kind == "reports" && parts.size() <= 3) {
      if (parts.size() == 2) return ok(reports_page(site.experiments));
      const store::Store s(site.db, store::Store::Access::read);
      return ok(report_page(s, site.experiments, parts[2], params));
    }
    if (kind != "runs" && kind != "compare" && kind != "sweeps") throw refuse();
    const store::Store s(site.db, store::Store::Access::read);
    if (kind == "compare" && parts.size() == 2) return ok(compare_page(s, params));
    if (kind == "sweeps" && parts.size() == 2) return ok(sweeps_page(s));
    if (kind == "sweeps" && parts.size() == 3) {
      const auto id = whole(parts[2]);
      if (!id) throw Refused{400, fmt::format("'{}' is not a sweep id", parts[2])};
      return ok(sweep_page(s, *id));
    }
    if (kind != "runs") throw refuse();
    if (parts.size() == 2) return ok(runs_page(s, params));
    const int64_t id = run_id(parts[2]);
    if (parts.size() == 3) return ok(run_page(s, id));
    if (parts[3] == "metrics") return ok(run_metrics(s, id, positive(params, "points", 400, 100000)));
    if (parts[3] == "load") return ok(run_loads(s, id, positive(params, "points", 200, 100000)));
    throw refuse();
  } catch (const Refused& e) {
    return {e.status, "application/json", json{{"error", e.message}}.dump()};
  } catch (const config::ConfigError& e) {
    return {400, "application/json", json{{"error", e.what()}}.dump()};
  } catch (const std::exception& e) {
    return {500, "application/json", json{{"error", e.what()}}.dump()};
  }
}

}  // namespace ssr::ui
