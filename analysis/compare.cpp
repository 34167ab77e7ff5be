#include "analysis/compare.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

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

std::string estimate_text(const Estimate& x) {
  return x.n > 1 ? fmt::format("{:+.4g} ± {:.2g}{}", x.mean, x.ci, std::abs(x.mean) > x.ci ? " *" : "")
                 : fmt::format("{:+.4g}", x.mean);
}

}  // namespace

std::string unit_of(const std::string& name) {
  static const std::map<std::string, std::string> units = {
      {"ppl", "perplexity"}, {"bpc", "bits/char"}, {"loss", "nats/token"}, {"top1", "%"},   {"top5", "%"},
      {"aupr", "%"},         {"auroc", "%"},       {"fpr95", "%"},         {"seconds", "s"}};
  const auto it = units.find(name);
  return it == units.end() ? "" : it->second;
}

Comparison compare(const store::Store& store, const CompareRequest& req) {
  if (!req.by.empty()) store::require_known_key(req.by, "--by");
  std::vector<int64_t> ids = req.ids;
  if (!req.where.empty()) {
    for (const auto& r : store::filter_runs(store.runs(), req.where, 60, &store))
      if (std::find(ids.begin(), ids.end(), r.id) == ids.end()) ids.push_back(r.id);
    if (ids.size() < 2)
      throw config::ConfigError(
          fmt::format("compare: {} run(s) match {} in {}; give two or more", ids.size(), req.where, store.path()));
  }
  if (ids.size() < 2)
    throw config::ConfigError("compare: give two or more runs (ids, --where or --sweep; ssr runs lists them)");
  Comparison c;
  std::vector<config::Config> cfgs;
  for (auto id : ids) {
    auto r = store.run(id);
    if (!r) throw config::ConfigError(fmt::format("compare: no run {} in {} (ssr runs lists them)", id, store.path()));
    cfgs.push_back(store::stored_config(*r));
    c.runs.push_back(std::move(*r));
  }
  const size_t n = c.runs.size();

  std::set<std::string> names;
  for (const auto& cfg : cfgs)
    for (const auto& [k, v] : cfg.values()) names.insert(k);
  std::vector<std::string> hashed;  // hashed keys other than run.seed that differ: the default groups
  for (const auto& k : names) {
    std::vector<std::string> values;
    for (const auto& cfg : cfgs) values.push_back(cfg.has(k) ? text(cfg.at(k)) : "-");
    if (std::set<std::string>(values.begin(), values.end()).size() < 2) continue;
    const auto* key = config::find_key(k);
    if (k != "run.seed" && (!key || key->hashed)) hashed.push_back(k);
    c.differing.emplace_back(k, std::move(values));
  }

  // The group label keeps only the keys that tell groups apart: router.xi and router.numerics follow
  // from router.name in a sweep over routers, so they would only lengthen every label.
  const auto groups_with = [&](const std::vector<std::string>& keys) {
    std::set<std::string> labels;
    for (const auto& cfg : cfgs) {
      std::string g;
      for (const auto& k : keys) g += k + "=" + (cfg.has(k) ? text(cfg.at(k)) : "-") + " ";
      labels.insert(g);
    }
    return labels.size();
  };
  const size_t n_groups = groups_with(hashed);
  std::vector<std::string> by_values = hashed;
  std::stable_sort(by_values.begin(), by_values.end(),
                   [&](const std::string& a, const std::string& b) { return groups_with({a}) < groups_with({b}); });
  for (const auto& k : by_values) {
    std::vector<std::string> fewer;
    for (const auto& h : hashed)
      if (h != k) fewer.push_back(h);
    if (!fewer.empty() && groups_with(fewer) == n_groups) hashed = fewer;
  }

  // Results, restricted to the requested ones.
  std::map<std::pair<std::string, std::string>, std::vector<std::optional<double>>> results;
  for (size_t i = 0; i < n; ++i)
    for (const auto& x : store.results(c.runs[i].id)) {
      auto& row = results[{x.split, x.name}];
      row.resize(n);
      row[i] = x.value;
    }
  std::vector<std::string> known;
  for (const auto& [key, row] : results) known.push_back(key.first + "/" + key.second);
  for (const auto& m : req.metrics)
    if (std::find(known.begin(), known.end(), m) == known.end()) {
      const auto near = config::closest(m, known);
      throw config::ConfigError(fmt::format(
          "--metric {}: none of these runs has that result{}", m,
          near.empty() ? " (ssr show RUN lists a run's results)" : fmt::format("; did you mean {}?", near)));
    }
  for (auto& [key, row] : results) {
    if (!req.metrics.empty() &&
        std::find(req.metrics.begin(), req.metrics.end(), key.first + "/" + key.second) == req.metrics.end())
      continue;
    row.resize(n);
    c.results.push_back({key.first, key.second, row});
  }

  // Groups: by the chosen key's value, or by every hashed key that differs except the seed.
  for (size_t i = 0; i < n; ++i) {
    std::string g;
    if (!req.by.empty()) {
      g = req.by + "=" + store::lookup(c.runs[i], req.by, 0).value_or("");
    } else {
      for (const auto& k : hashed) g += (g.empty() ? "" : " ") + k + "=" + text(cfgs[i].at(k));
    }
    c.group_of.push_back(g.empty() ? "all" : g);
    if (std::find(c.groups.begin(), c.groups.end(), c.group_of[i]) == c.groups.end()) c.groups.push_back(c.group_of[i]);
  }
  for (const auto& group : c.groups)
    for (const auto& row : c.results) {
      std::vector<double> v;
      for (size_t i = 0; i < n; ++i)
        if (c.group_of[i] == group && row.values[i] && std::isfinite(*row.values[i])) v.push_back(*row.values[i]);
      if (!v.empty()) c.by_group.push_back({group, row.split, row.name, estimate(v)});
    }
  for (size_t g = 1; g < c.groups.size(); ++g)
    for (const auto& row : c.results) {
      if (row.name == "seconds") continue;
      Paired p{c.groups[g], row.split, row.name};
      std::vector<double> d, rel;
      bool relative = true;
      for (size_t i = 0; i < n; ++i) {
        if (c.group_of[i] != c.groups[g] || !row.values[i]) continue;
        for (size_t j = 0; j < n; ++j)
          if (c.group_of[j] == c.groups[0] && c.runs[j].seed == c.runs[i].seed && row.values[j]) {
            const double a = *row.values[i], b = *row.values[j];
            if (!std::isfinite(a) || !std::isfinite(b)) {
              ++p.left_out;
            } else {
              d.push_back(a - b);
              if (b == 0)
                relative = false;
              else
                rel.push_back(100.0 * (a - b) / b);
            }
            break;
          }
      }
      if (d.empty() && p.left_out == 0) continue;
      p.delta = estimate(d);
      if (relative && !rel.empty()) p.relative = estimate(rel);
      c.paired.push_back(p);
    }
  return c;
}

namespace {

std::string paired_markdown(const Comparison& c) {
  std::string out;
  if (c.groups.size() < 2) return out;
  out += fmt::format(
      "\n## Paired differences against {} (runs of the same seed; mean ± 95 % Student-t interval over seeds)\n",
      c.groups[0]);
  bool left_out = false;
  for (size_t g = 1; g < c.groups.size(); ++g) {
    out += fmt::format("\n### {}\n\n| result | Δ | Δ % | seeds |\n|---|---|---|---|\n", c.groups[g]);
    for (const auto& p : c.paired) {
      if (p.group != c.groups[g]) continue;
      left_out = left_out || p.left_out > 0;
      const std::string seeds =
          p.left_out ? fmt::format("{} ({} left out)", p.delta.n, p.left_out) : std::to_string(p.delta.n);
      out += fmt::format("| {}/{} | {} | {} | {} |\n", p.split, p.name, p.delta.n ? estimate_text(p.delta) : "-",
                         p.relative ? estimate_text(*p.relative) : "-", seeds);
    }
  }
  out += "\n* the interval excludes 0.";
  if (left_out) out += " Left out: seeds where either run's value is nan or inf.";
  return out + "\n";
}

// More runs than fit side by side: each group's runs, and its results as mean ± interval.
std::string groups_markdown(const Comparison& c) {
  std::string out = "## Groups\n\n| group | runs | seeds |\n|---|---|---|\n";
  for (const auto& g : c.groups) {
    std::string ids;
    std::set<int64_t> seeds;
    for (size_t i = 0; i < c.runs.size(); ++i)
      if (c.group_of[i] == g) {
        ids += (ids.empty() ? "" : " ") + std::to_string(c.runs[i].id);
        seeds.insert(c.runs[i].seed);
      }
    out += fmt::format("| {} | {} | {} |\n", g, ids, seeds.size());
  }
  out +=
      "\n## Results by group (mean ± 95 % Student-t interval over its runs)\n\n| group | result | value | runs "
      "|\n|---|---|---|---|\n";
  for (const auto& r : c.by_group) {
    const std::string unit = unit_of(r.name);
    out += fmt::format(
        "| {} | {}/{}{} | {} | {} |\n", r.group, r.split, r.name, unit.empty() ? "" : " (" + unit + ")",
        r.value.n > 1 ? fmt::format("{:.6g} ± {:.2g}", r.value.mean, r.value.ci) : fmt::format("{:.6g}", r.value.mean),
        r.value.n);
  }
  return out;
}

}  // namespace

std::string to_markdown(const Comparison& c) {
  if (c.runs.size() > 8) return groups_markdown(c) + paired_markdown(c);
  std::string cols, rule = "|---|";  // " run 1 | run 3 |"
  for (const auto& r : c.runs) {
    cols += fmt::format(" run {} |", r.id);
    rule += "---|";
  }
  const auto table = [&](const std::string& first) { return "| " + first + " |" + cols + "\n" + rule + "\n"; };
  std::string out = "## Runs\n\n" + table("") + "| status |";
  for (const auto& r : c.runs) out += " " + status_line(r) + " |";
  out += "\n| seed |";
  for (const auto& r : c.runs) out += fmt::format(" {} |", r.seed);
  out += "\n\n## Config: the keys that differ\n\n" + table("key");
  for (const auto& [k, values] : c.differing) {
    out += "| " + k + " |";
    for (const auto& v : values) out += " " + v + " |";
    out += "\n";
  }
  out += "\n## Results\n\n" + table("result");
  for (const auto& row : c.results) {
    const std::string unit = unit_of(row.name);
    out += fmt::format("| {}/{}{} |", row.split, row.name, unit.empty() ? "" : " (" + unit + ")");
    for (const auto& v : row.values) out += " " + (v ? value_text(*v) : "-") + " |";
    out += "\n";
  }
  return out + paired_markdown(c);
}

}  // namespace ssr::analysis
