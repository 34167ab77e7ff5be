#include "analysis/report_data.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "analysis/stats.hpp"
#include "harness/config/config.hpp"

namespace ssr::analysis {

using config::ConfigError;

std::string str(const json& j, const std::string& key, const std::string& def) {
  if (!j.contains(key)) return def;
  return j[key].is_string() ? j[key].get<std::string>() : j[key].dump();
}

std::string label_of(const json& spec, const std::string& map, const std::string& value) {
  if (spec.contains(map) && spec[map].contains(value)) return spec[map][value].get<std::string>();
  return value;
}

std::optional<double> value_of(const JobRun& jr, const std::string& split, const std::string& name, int64_t step) {
  if (!jr.run) return std::nullopt;
  if (step >= 0) {
    if (auto it = jr.logged.find({split, name, step}); it != jr.logged.end()) return it->second;
  } else if (auto it = jr.results.find({split, name}); it != jr.results.end()) {
    return it->second;
  }
  if (jr.run->status == "nan") return NAN;
  return std::nullopt;
}

std::optional<StepTime> step_time(const store::Store& store, int64_t run, const std::string& phase) {
  std::vector<double> t;
  for (const auto& x : store.timings(run))
    if (x.phase == phase) t.push_back(x.seconds);
  const size_t skip = std::max<size_t>(1, t.size() / 10);
  if (t.size() <= skip + 1) return std::nullopt;
  StepTime s;
  s.n = static_cast<int64_t>(t.size() - skip);
  for (size_t i = skip; i < t.size(); ++i) s.mean += t[i];
  s.mean /= static_cast<double>(s.n);
  for (size_t i = skip; i < t.size(); ++i) s.var += (t[i] - s.mean) * (t[i] - s.mean);
  s.var /= static_cast<double>(s.n - 1);
  return s;
}

Column parse_column(const json& c, const std::string& where) {
  Column col;
  if (!c.is_object()) throw ConfigError(fmt::format("{}: expected {{label: ..., split: ..., metric: ...}}", where));
  for (const auto& [k, v] : c.items())
    if (k != "label" && k != "split" && k != "metric" && k != "delta" && k != "overhead" && k != "better" &&
        k != "layer_metric" && k != "relative" && k != "step" && k != "correction")
      throw ConfigError(fmt::format(
          "{}.{}: unknown key (label, split, metric, step, delta, relative, correction, overhead, layer_metric, "
          "better)",
          where, k));
  col.label = str(c, "label");
  col.split = str(c, "split");
  col.metric = str(c, "metric");
  col.delta_of = str(c, "delta");
  col.overhead = str(c, "overhead");
  col.layer_metric = str(c, "layer_metric");
  col.relative = str(c, "relative", "false") == "true";
  if (col.relative && col.delta_of.empty())
    throw ConfigError(fmt::format("{}: relative: true needs delta: COLUMN", where));
  if (c.contains("step")) {
    const std::string step = str(c, "step");
    if (step.empty() || step.size() > 12 || step.find_first_not_of("0123456789") != std::string::npos)
      throw ConfigError(fmt::format("{}.step: a training step (a whole number >= 0), not {}", where, step));
    col.step = std::stoll(step);
  }
  col.correction = str(c, "correction");
  if (!col.correction.empty() && (col.correction != "holm" || col.delta_of.empty()))
    throw ConfigError(fmt::format("{}.correction: 'holm' on a delta: column (Holm's step-down over its rows), not '{}'",
                                  where, col.correction));
  if (col.delta_of.empty() && col.overhead.empty() && col.layer_metric.empty() &&
      (col.split.empty() || col.metric.empty()))
    throw ConfigError(fmt::format("{}: a column needs split and metric, delta: COLUMN, or overhead: PHASE", where));
  static const std::set<std::string> lower_is_better = {"ppl", "bpc", "loss", "fpr95"};
  col.lower = c.contains("better") ? str(c, "better") == "lower"
                                   : (!col.overhead.empty() || lower_is_better.count(col.metric) > 0);
  const std::string better = str(c, "better");
  if (!better.empty() && better != "lower" && better != "higher" && better != "none")
    throw ConfigError(fmt::format("{}.better: lower, higher or none (not ranked), not '{}'", where, better));
  col.rank = col.delta_of.empty() && col.overhead.empty() && better != "none";
  return col;
}

std::string fmt_value(const Cell& c, const Column& col) {
  if (!c.mean) return "–";
  if (std::isnan(*c.mean)) return "NaN";
  if (!col.overhead.empty()) {
    const std::string busy = c.max_load > 1 ? " †" : "";  // timed on an oversubscribed machine
    return c.ci > 0 ? fmt::format("{:.2f} ± {:.2f}%{}", *c.mean * 100, c.ci * 100, busy)
                    : fmt::format("{:.2f}%{}", *c.mean * 100, busy);
  }
  if (!col.delta_of.empty()) {
    // Paired: * marks an interval that excludes 0.
    const std::string unit = col.relative ? " %" : "";
    const int digits = col.relative ? 2 : 3;
    if (c.n < 2) return fmt::format("{:+.{}f}{}", *c.mean, digits, unit);
    const bool mark = col.correction.empty() ? std::abs(*c.mean) > c.ci : c.p && *c.p < 0.05;
    return fmt::format("{:+.{}f} ± {:.{}f}{}{}", *c.mean, digits, c.ci, digits, unit, mark ? " *" : "");
  }
  return c.ci > 0 ? fmt::format("{:.3f} ± {:.3f}", *c.mean, c.ci) : fmt::format("{:.3f}", *c.mean);
}

Data load_data(const std::string& file, const std::string& scale, const std::vector<std::string>& overrides,
               const store::Store& store) {
  Data d{sweep::load(file, overrides, scale), {}, &store};
  for (const auto& j : d.spec.jobs) {
    JobRun jr;
    jr.job = &j;
    // A hash leaves out the compute paths (model.expert_impl, ...): keep the timings of this one.
    const auto timing = j.config.timing();
    if (auto id = store.done_run(j.config.hash())) {
      jr.run = store.run(*id);
      for (const auto& r : store.results(*id)) jr.results[{r.split, r.name}] = r.value;
      for (const auto& m : store.metrics(*id))
        if (m.split != "train") jr.logged[{m.split, m.name, m.step}] = m.value;
      jr.run_timed_as_job = jr.run && config::timing_of(jr.run->config) == timing;
    }
    for (auto& c : store.bench_cases(j.config.hash()))
      if (config::timing_of(c.config) == timing) jr.bench.push_back(std::move(c));
    d.jobs.push_back(std::move(jr));
  }
  return d;
}

bool matches_where(const JobRun& jr, const json& spec) {
  if (!spec.contains("where")) return true;
  for (const auto& [k, v] : spec["where"].items())
    if (jr.job->label(k) != (v.is_string() ? v.get<std::string>() : v.dump())) return false;
  return true;
}

const JobRun* baseline_of(const Data& d, const JobRun& jr, const std::string& row_axis, const std::string& baseline) {
  for (const auto& b : d.jobs)
    if (jr.job->pairs_with(*b.job, row_axis, baseline)) return &b;
  return nullptr;
}

std::optional<std::pair<int64_t, std::vector<double>>> bench_ratios(const JobRun& jr, const JobRun& base) {
  for (const auto& c : jr.bench)
    for (const auto& b : base.bench)
      if (c.session == b.session && c.seconds.size() == b.seconds.size() && c.seconds.size() >= 2) {
        std::vector<double> r;
        for (size_t k = 0; k < c.seconds.size(); ++k) r.push_back(c.seconds[k] / b.seconds[k] - 1);
        return std::make_pair(c.session, r);
      }
  return std::nullopt;
}

Cell overhead_cell(const Data& d, const std::vector<const JobRun*>& cell, const std::string& row_axis,
                   const std::string& baseline, const std::string& phase) {
  Cell c;
  std::vector<double> ratios;
  double pair_ci = 0;
  size_t other_hardware = 0, other_compute = 0;
  for (const auto* jr : cell) {
    const auto* b = baseline_of(d, *jr, row_axis, baseline);
    if (!b) continue;
    if (phase == "step")
      if (auto br = bench_ratios(*jr, *b)) {
        const auto e = estimate(br->second);
        ratios.push_back(e.mean);
        pair_ci = e.ci;
        c.bench_sessions.insert(br->first);
        for (const auto& bc : jr->bench)
          if (bc.session == br->first && bc.load_per_core) c.max_load = std::max(c.max_load, *bc.load_per_core);
        continue;
      }
    if (!jr->run || !b->run) continue;
    if (jr->run->info.device != b->run->info.device || jr->run->info.host != b->run->info.host) {
      ++other_hardware;
      continue;
    }
    if (!jr->run_timed_as_job || !b->run_timed_as_job) {
      ++other_compute;
      continue;
    }
    auto m = step_time(*d.store, jr->run->id, phase), v = step_time(*d.store, b->run->id, phase);
    if (!m || !v) continue;
    const double r = m->mean / v->mean;
    ratios.push_back(r - 1);
    ++c.run_pairs;
    for (const int64_t id : {jr->run->id, b->run->id})
      for (const auto& metric : d.store->metrics(id))
        if (metric.split == "train" && metric.name == "machine_load") c.max_load = std::max(c.max_load, metric.value);
    // Delta method for one ratio of two means of independent step times.
    pair_ci = 1.96 * r * std::sqrt(m->var / (m->n * m->mean * m->mean) + v->var / (v->n * v->mean * v->mean));
  }
  if (const size_t skipped = other_hardware + other_compute) {
    std::string why = other_hardware ? "different hardware than the baseline" : "";
    if (other_compute) why += std::string(why.empty() ? "" : " or ") + "compute paths other than the report's";
    c.note = fmt::format("{} of {} run pairs skipped ({})", skipped, ratios.size() + skipped, why);
  }
  if (ratios.empty()) return c;
  const auto e = estimate(ratios);
  c.mean = e.mean;
  c.n = e.n;
  c.ci = e.n > 1 ? e.ci : pair_ci;
  return c;
}

std::string timing_source(const std::vector<const Cell*>& cells) {
  std::set<int64_t> sessions;
  int64_t bench = 0, runs = 0;
  double max_load = 0;
  for (const auto* c : cells) {
    sessions.insert(c->bench_sessions.begin(), c->bench_sessions.end());
    runs += c->run_pairs;
    bench += c->n - c->run_pairs;
    max_load = std::max(max_load, c->max_load);
  }
  if (bench == 0 && runs == 0) return "";
  std::string ids;
  for (auto id : sessions) ids += (ids.empty() ? "" : ", ") + std::to_string(id);
  std::string s = "\nStep-time overheads: ";
  if (bench > 0)
    s += fmt::format(
        "{} job pairs timed interleaved by `ssr bench step` (session{} {}; interval over rounds for one pair)", bench,
        sessions.size() > 1 ? "s" : "", ids);
  if (runs > 0)
    s += fmt::format("{}{} job pairs from the training runs' logged step times", bench > 0 ? "; " : "", runs);
  s += ".";
  if (max_load > 1)
    s += fmt::format(
        " † Timed on an oversubscribed machine (load up to {:.1f} per core: more threads wanted to run than there "
        "were cores): not the hardware's speed; time it again on an idle machine.",
        max_load);
  return s;
}

Cell metric_cell(const std::vector<const JobRun*>& cell, const std::string& split, const std::string& metric,
                 int64_t step) {
  Cell c;
  std::vector<double> v;
  bool nan = false;
  for (const auto* jr : cell)
    if (auto x = value_of(*jr, split, metric, step)) {
      if (std::isnan(*x))
        nan = true;
      else
        v.push_back(*x);
    }
  if (nan) {
    c.mean = NAN;
    return c;
  }
  if (v.empty()) return c;
  const auto e = estimate(v);
  c.mean = e.mean;
  c.ci = e.ci;
  c.n = e.n;
  return c;
}

std::string provenance(const Data& d, const std::vector<const JobRun*>& used, std::vector<std::string>& missing,
                       const std::string& seeds_axis, bool bench_only) {
  std::map<std::string, int> revs, hw;
  std::vector<std::string> hashes;
  int64_t have = 0;
  // Sinkhorn solves over the runs used (the results of runs where Sinkhorn ran at all).
  double forwards = 0, unconverged = 0, fallbacks = 0;
  int64_t sinkhorn_runs = 0;
  for (const auto* jr : used) {
    const store::RunInfo* info = jr->run                            ? &jr->run->info
                                 : bench_only && !jr->bench.empty() ? &jr->bench.front().info
                                                                    : nullptr;
    if (!info) {
      missing.push_back(fmt::format("job {} ({}) hash {}", jr->job->num, jr->job->describe(), jr->job->config.hash()));
      continue;
    }
    ++have;
    hashes.push_back(jr->job->config.hash());
    ++revs[info->git_rev];
    ++hw[info->device + " on " + info->host];
    auto result = [&](const char* name) {
      auto it = jr->results.find({"train", name});
      return it == jr->results.end() ? 0.0 : it->second;
    };
    if (jr->results.count({"train", "sinkhorn_forwards"})) {
      ++sinkhorn_runs;
      forwards += result("sinkhorn_forwards");
      unconverged += result("sinkhorn_unconverged");
      fallbacks += result("sinkhorn_fallbacks");
    }
  }
  auto counted = [](const std::map<std::string, int>& m) {
    std::string s;
    for (const auto& [k, n] : m) s += (s.empty() ? "" : "; ") + fmt::format("{} ({} runs)", k, n);
    return s.empty() ? std::string("-") : s;
  };
  std::string s =
      fmt::format("Built from {} of {} planned runs of {}{} in the run store {}.", have, used.size(), d.spec.file,
                  d.spec.scale.empty() ? "" : " (scale " + d.spec.scale + ")", d.store->path());
  s += fmt::format(" Cells: mean ± 95 % Student-t interval over {} when there are several runs.", seeds_axis);
  s += "\nGit revisions: " + counted(revs) + ".\nHardware: " + counted(hw) + ".";
  std::string hs;
  for (const auto& h : hashes) hs += (hs.empty() ? "" : " ") + h;
  s += "\nConfig hashes: " + (hs.empty() ? std::string("-") : hs) + ".";
  if (sinkhorn_runs > 0)
    s += fmt::format(
        "\nSinkhorn solves in training ({} runs): {:.0f}, of which {:.0f} stopped at router.max_iter above "
        "router.delta "
        "(unconverged; the paper's protocol keeps them) and {:.0f} fell back from Newton to log sweeps.",
        sinkhorn_runs, forwards, unconverged, fallbacks);
  if (!missing.empty()) {
    std::string over;
    for (const auto& o : d.spec.cli_overrides) over += " " + o;
    s += fmt::format("\nMissing ({}), shown as –; run them with `ssr sweep {}{}{}`:", missing.size(), d.spec.file,
                     d.spec.scale.empty() ? "" : " --scale " + d.spec.scale, over);
    for (const auto& m : missing) s += "\n  " + m;
  }
  return s;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

std::vector<std::string> distinct(const std::vector<const JobRun*>& jobs, const std::string& axis) {
  std::vector<std::string> out;
  for (const auto* jr : jobs) {
    const auto v = jr->job->label(axis);
    if (!v.empty() && std::find(out.begin(), out.end(), v) == out.end()) out.push_back(v);
  }
  return out;
}

void check_axes(const std::vector<const JobRun*>& jobs, const std::set<std::string>& named, const std::string& where) {
  std::map<std::string, std::set<std::string>> seen;
  for (const auto* jr : jobs)
    for (const auto& [k, v] : jr->job->labels) seen[k].insert(v);
  for (const auto& [k, vals] : seen)
    if (vals.size() > 1 && !named.count(k) && !(k != "sample" && seen.count("sample") && named.count("sample")))
      throw ConfigError(
          fmt::format("{}: axis {} varies but is neither rows, sections, series, x nor seeds; "
                      "add it to the report or filter it with where:",
                      where, k));
}

std::string series_of(const json& spec, const std::vector<std::string>& series_axes, const JobRun& jr) {
  std::string s;
  for (const auto& a : series_axes) {
    const auto v = jr.job->label(a);
    if (v.empty()) continue;
    const auto l = label_of(spec, "series_labels", v);
    s += (s.empty() ? "" : " ") + (l == v && a != "variant" ? a + "=" + v : l);
  }
  return s.empty() ? std::string("all") : s;
}

}  // namespace ssr::analysis
