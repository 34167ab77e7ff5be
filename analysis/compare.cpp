#include "analysis/compare.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <optional>
#include <set>

#include "analysis/stats.hpp"
#include "harness/config/config.hpp"
#include "harness/store/query.hpp"

namespace ssr::analysis {
namespace {

using json = nlohmann::json;

std::string text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// "finished", or "nan (loss became nan at step 12)".
std::string status_line(const store::Run& r) {
  return r.error.empty() ? r.status : fmt::format("{} ({})", r.status, r.error.substr(0, r.error.find('\n')));
}

std::string value_text(double v) { return std::isnan(v) ? "NaN" : fmt::format("{:.6g}", v); }

}  // namespace

std::string unit_of(const std::string& name) {
  static const std::map<std::string, std::string> units = {
      {"ppl", "perplexity"}, {"bpc", "bits/char"}, {"loss", "nats/token"}, {"top1", "%"},   {"top5", "%"},
      {"aupr", "%"},         {"auroc", "%"},       {"fpr95", "%"},         {"seconds", "s"}};
  const auto it = units.find(name);
  return it == units.end() ? "" : it->second;
}

std::string compare_runs(const store::Store& store, const std::vector<int64_t>& ids) {
  if (ids.size() < 2) throw config::ConfigError("compare: give two or more run ids (ssr runs lists them)");
  std::vector<store::Run> runs;
  std::vector<config::Config> cfgs;
  for (auto id : ids) {
    auto r = store.run(id);
    if (!r) throw config::ConfigError(fmt::format("compare: no run {} in {} (ssr runs lists them)", id, store.path()));
    cfgs.push_back(store::stored_config(*r));
    runs.push_back(std::move(*r));
  }
  std::string cols, rule = "|---|";  // " run 1 | run 3 |"
  for (const auto& r : runs) {
    cols += fmt::format(" run {} |", r.id);
    rule += "---|";
  }
  const auto table = [&](const std::string& first) { return "| " + first + " |" + cols + "\n" + rule + "\n"; };
  std::string out = "## Runs\n\n" + table("") + "| status |";
  for (const auto& r : runs) out += " " + status_line(r) + " |";
  out += "\n| config hash |";
  for (const auto& r : runs) out += " " + r.config_hash + " |";
  out += "\n| seed |";
  for (const auto& r : runs) out += fmt::format(" {} |", r.seed);
  out += "\n\n## Config: the keys that differ\n\n" + table("key");
  std::set<std::string> names;
  for (const auto& c : cfgs)
    for (const auto& [k, v] : c.values()) names.insert(k);
  std::vector<std::string> differing;  // hashed keys other than run.seed that differ
  for (const auto& k : names) {
    std::set<std::string> seen;
    for (const auto& c : cfgs) seen.insert(c.has(k) ? text(c.at(k)) : "-");
    if (seen.size() < 2) continue;
    out += "| " + k + " |";
    for (const auto& c : cfgs) out += " " + (c.has(k) ? text(c.at(k)) : "-") + " |";
    out += "\n";
    const auto* key = config::find_key(k);
    if (k != "run.seed" && (!key || key->hashed)) differing.push_back(k);
  }

  // Final results side by side.
  std::map<std::pair<std::string, std::string>, std::vector<std::optional<double>>> results;
  for (size_t i = 0; i < runs.size(); ++i)
    for (const auto& x : store.results(runs[i].id)) {
      auto& row = results[{x.split, x.name}];
      row.resize(runs.size());
      row[i] = x.value;
    }
  out += "\n## Results\n\n" + table("result");
  for (auto& [key, row] : results) {
    row.resize(runs.size());
    const std::string unit = unit_of(key.second);
    out += fmt::format("| {}/{}{} |", key.first, key.second, unit.empty() ? "" : " (" + unit + ")");
    for (const auto& v : row) out += " " + (v ? value_text(*v) : "-") + " |";
    out += "\n";
  }

  // Groups: runs whose configs agree on every differing key except the seed.
  std::vector<std::string> group_of(runs.size());
  std::vector<std::string> groups;
  for (size_t i = 0; i < runs.size(); ++i) {
    std::string g;
    for (const auto& k : differing) g += (g.empty() ? "" : " ") + k + "=" + text(cfgs[i].at(k));
    group_of[i] = g.empty() ? "all" : g;
    if (std::find(groups.begin(), groups.end(), group_of[i]) == groups.end()) groups.push_back(group_of[i]);
  }
  if (groups.size() < 2) return out;
  out += fmt::format(
      "\n## Paired differences against {} (runs of the same seed; mean ± 95 % Student-t interval over seeds)\n\n",
      groups[0]);
  out += "| group | result | Δ | Δ % | seeds |\n|---|---|---|---|---|\n";
  for (size_t g = 1; g < groups.size(); ++g)
    for (const auto& [key, row] : results) {
      std::vector<double> d, rel;
      for (size_t i = 0; i < runs.size(); ++i) {
        if (group_of[i] != groups[g] || !row[i]) continue;
        for (size_t j = 0; j < runs.size(); ++j)
          if (group_of[j] == groups[0] && runs[j].seed == runs[i].seed && row[j]) {
            d.push_back(*row[i] - *row[j]);
            rel.push_back(100.0 * (*row[i] - *row[j]) / *row[j]);
            break;
          }
      }
      if (d.empty() || key.second == "seconds") continue;
      const auto e = estimate(d), r = estimate(rel);
      const auto fmt_e = [](const Estimate& x) {
        return x.n > 1 ? fmt::format("{:+.4g} ± {:.2g}{}", x.mean, x.ci, std::abs(x.mean) > x.ci ? " *" : "")
                       : fmt::format("{:+.4g}", x.mean);
      };
      out += fmt::format("| {} | {}/{} | {} | {} | {} |\n", groups[g], key.first, key.second, fmt_e(e), fmt_e(r), e.n);
    }
  out += "\n* the interval excludes 0.\n";
  return out;
}

}  // namespace ssr::analysis
