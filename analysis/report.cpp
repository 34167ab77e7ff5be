#include "analysis/report.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <set>

#include "harness/config/config.hpp"
#include "harness/sweep/sweep.hpp"

namespace fs = std::filesystem;

namespace ssr::analysis {

using config::ConfigError;
using json = nlohmann::json;

double t95(int64_t df) {
  static const double table[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                                 2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                                 2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  if (df < 1) return NAN;
  if (df <= 30) return table[df - 1];
  return 1.960 + 2.4 / static_cast<double>(df);  // within 0.002 of the quantile beyond 30
}

Estimate estimate(const std::vector<double>& v) {
  Estimate e;
  e.n = static_cast<int64_t>(v.size());
  if (v.empty()) return e;
  for (double x : v) e.mean += x;
  e.mean /= static_cast<double>(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - e.mean) * (x - e.mean);
    e.ci = t95(e.n - 1) * std::sqrt(ss / static_cast<double>(e.n - 1) / static_cast<double>(e.n));
  }
  return e;
}

namespace {

std::string str(const json& j, const std::string& key, const std::string& def = "") {
  if (!j.contains(key)) return def;
  return j[key].is_string() ? j[key].get<std::string>() : j[key].dump();
}

std::string label_of(const json& spec, const std::string& map, const std::string& value) {
  if (spec.contains(map) && spec[map].contains(value)) return spec[map][value].get<std::string>();
  return value;
}

// One job, its newest done run, and its `ssr bench step` cases (newest session first).
struct JobRun {
  const sweep::Job* job = nullptr;
  std::optional<store::Run> run;
  std::map<std::pair<std::string, std::string>, double> results;
  std::vector<store::BenchCase> bench;  // sessions of the job's compute paths, newest first
  // Runs serve every compute path's results, but their step times only the path they ran.
  bool run_timed_as_job = false;
};

// nullopt: no value (no run, or the run lacks it); NaN: the run diverged (status nan).
std::optional<double> value_of(const JobRun& jr, const std::string& split, const std::string& name) {
  if (!jr.run) return std::nullopt;
  if (auto it = jr.results.find({split, name}); it != jr.results.end()) return it->second;
  if (jr.run->status == "nan") return NAN;
  return std::nullopt;
}

struct StepTime {
  double mean = 0, var = 0;
  int64_t n = 0;
};
// Per-step time of a run over its logged steps, the first tenth dropped (allocator and cache
// warm-up make the first steps slower on every device).
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

struct Column {
  std::string label, split, metric, delta_of, overhead, layer_metric;
  bool lower = true, rank = true;
  bool relative = false;  // delta: in percent of the baseline's value, pair by pair
};

Column parse_column(const json& c, const std::string& where) {
  Column col;
  if (!c.is_object()) throw ConfigError(fmt::format("{}: expected {{label: ..., split: ..., metric: ...}}", where));
  for (const auto& [k, v] : c.items())
    if (k != "label" && k != "split" && k != "metric" && k != "delta" && k != "overhead" && k != "better" &&
        k != "layer_metric" && k != "relative")
      throw ConfigError(fmt::format(
          "{}.{}: unknown key (label, split, metric, delta, relative, overhead, layer_metric, better)", where, k));
  col.label = str(c, "label");
  col.split = str(c, "split");
  col.metric = str(c, "metric");
  col.delta_of = str(c, "delta");
  col.overhead = str(c, "overhead");
  col.layer_metric = str(c, "layer_metric");
  col.relative = str(c, "relative", "false") == "true";
  if (col.relative && col.delta_of.empty())
    throw ConfigError(fmt::format("{}: relative: true needs delta: COLUMN", where));
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

struct Cell {
  std::optional<double> mean;  // nullopt: missing; NaN: diverged
  double ci = 0;
  int64_t n = 0;
  std::string note;
  std::set<int64_t> bench_sessions;  // overhead cells: sessions that timed the pairs
  int64_t run_pairs = 0;             // overhead cells: pairs timed from training runs instead
};

std::string fmt_value(const Cell& c, const Column& col) {
  if (!c.mean) return "–";
  if (std::isnan(*c.mean)) return "NaN";
  if (!col.overhead.empty())
    return c.ci > 0 ? fmt::format("{:.2f} ± {:.2f}%", *c.mean * 100, c.ci * 100)
                    : fmt::format("{:.2f}%", *c.mean * 100);
  if (!col.delta_of.empty()) {
    // Paired: * marks an interval that excludes 0.
    const std::string unit = col.relative ? " %" : "";
    const int digits = col.relative ? 2 : 3;
    if (c.n < 2) return fmt::format("{:+.{}f}{}", *c.mean, digits, unit);
    return fmt::format("{:+.{}f} ± {:.{}f}{}{}", *c.mean, digits, c.ci, digits, unit,
                       std::abs(*c.mean) > c.ci ? " *" : "");
  }
  return c.ci > 0 ? fmt::format("{:.3f} ± {:.3f}", *c.mean, c.ci) : fmt::format("{:.3f}", *c.mean);
}

// Everything a report reads: the expanded sweep and each job's run.
struct Data {
  sweep::Spec spec;
  std::vector<JobRun> jobs;
  const store::Store* store = nullptr;
};

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

// The job of the baseline row that pairs with `jr`: same labels except the row axis.
const JobRun* baseline_of(const Data& d, const JobRun& jr, const std::string& row_axis, const std::string& baseline) {
  for (const auto& b : d.jobs)
    if (jr.job->pairs_with(*b.job, row_axis, baseline)) return &b;
  return nullptr;
}

// The newest bench session that timed both cases over the same rounds, as per-round ratios - 1.
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

// Step-time overhead of the cell's jobs against their baseline jobs, on the same hardware: from
// an `ssr bench step` session that timed both, interleaved (phase step only), else from the two
// training runs' logged step times.
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

// Where a report's overhead numbers came from, for its footer ("" when it has none).
std::string timing_source(const std::vector<const Cell*>& cells) {
  std::set<int64_t> sessions;
  int64_t bench = 0, runs = 0;
  for (const auto* c : cells) {
    sessions.insert(c->bench_sessions.begin(), c->bench_sessions.end());
    runs += c->run_pairs;
    bench += c->n - c->run_pairs;
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
  return s + ".";
}

Cell metric_cell(const std::vector<const JobRun*>& cell, const std::string& split, const std::string& metric) {
  Cell c;
  std::vector<double> v;
  bool nan = false;
  for (const auto* jr : cell)
    if (auto x = value_of(*jr, split, metric)) {
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

// The footer every output carries: what the cells were built from.
// `bench_only`: the report shows step-time overheads only, so a job timed by `ssr bench step` is
// not missing even without a training run.
std::string provenance(const Data& d, const std::vector<const JobRun*>& used, std::vector<std::string>& missing,
                       const std::string& seeds_axis, bool bench_only = false) {
  std::map<std::string, int> revs, hw;
  std::vector<std::string> hashes;
  int64_t have = 0;
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
  if (!missing.empty()) {
    std::string over;
    for (const auto& o : d.spec.cli_overrides) over += " " + o;
    s += fmt::format("\nMissing ({}), shown as –; run them with `ssr sweep {}{}{}`:", missing.size(), d.spec.file,
                     d.spec.scale.empty() ? "" : " --scale " + d.spec.scale, over);
    for (const auto& m : missing) s += "\n  " + m;
  }
  return s;
}

std::string tex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '%' || c == '&' || c == '_' || c == '#') out += '\\';
    out += c;
  }
  std::string r;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out.compare(i, 2, "±") == 0) {
      r += "$\\pm$";
      ++i;
      continue;
    }
    if (out.compare(i, 3, "–") == 0) {
      r += "--";
      i += 2;
      continue;
    }
    if (out.compare(i, 2, "Δ") == 0) {
      r += "$\\Delta$";
      ++i;
      continue;
    }
    if (out.compare(i, 2, "ξ") == 0) {
      r += "$\\xi$";
      ++i;
      continue;
    }
    if (out.compare(i, 2, "α") == 0) {
      r += "$\\alpha$";
      ++i;
      continue;
    }
    r += out[i];
  }
  return r;
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

// Axes other than the named ones that take several values among `jobs`: they would be averaged
// silently, so the report refuses them.
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

Output build_table(const Data& d, const json& spec, const std::string& name) {
  const std::string where = d.spec.file + ": reports." + name;
  const std::string row_axis = str(spec, "rows"), sec_axis = str(spec, "sections"),
                    seeds = str(spec, "seeds", "run.seed"), baseline = str(spec, "baseline");
  std::vector<std::string> modes;
  if (spec.contains("row_modes"))
    for (const auto& m : spec["row_modes"]) modes.push_back(m.get<std::string>());
  if (row_axis.empty() == modes.empty())
    throw ConfigError(fmt::format("{}: give rows: AXIS or row_modes: [modes]", where));
  if (!spec.contains("columns") || !spec["columns"].is_array())
    throw ConfigError(fmt::format("{}: columns: expected a list", where));
  std::vector<Column> cols;
  for (size_t i = 0; i < spec["columns"].size(); ++i)
    cols.push_back(parse_column(spec["columns"][i], fmt::format("{}.columns[{}]", where, i)));
  for (const auto& c : cols)
    if ((!c.delta_of.empty() || !c.overhead.empty()) && baseline.empty())
      throw ConfigError(fmt::format("{}: column '{}' needs baseline: ROW", where, c.label));

  std::vector<const JobRun*> used;
  for (const auto& jr : d.jobs)
    if (matches_where(jr, spec)) used.push_back(&jr);
  check_axes(used, {row_axis, sec_axis, seeds}, where);
  std::vector<std::string> sections = sec_axis.empty() ? std::vector<std::string>{""} : distinct(used, sec_axis);
  std::vector<std::string> rows = modes.empty() ? distinct(used, row_axis) : modes;

  // cells[section][row][column]
  std::vector<std::vector<std::vector<Cell>>> cells(
      sections.size(), std::vector<std::vector<Cell>>(rows.size(), std::vector<Cell>(cols.size())));
  for (size_t s = 0; s < sections.size(); ++s)
    for (size_t r = 0; r < rows.size(); ++r) {
      std::vector<const JobRun*> cell;
      for (const auto* jr : used)
        if ((sec_axis.empty() || jr->job->label(sec_axis) == sections[s]) &&
            (!modes.empty() || jr->job->label(row_axis) == rows[r]))
          cell.push_back(jr);
      const std::string suffix = modes.empty() || rows[r] == "none" ? "" : "@" + rows[r];
      for (size_t c = 0; c < cols.size(); ++c)
        if (!cols[c].overhead.empty()) {
          if (rows[r] == baseline)
            cells[s][r][c].mean = 0.0;
          else
            cells[s][r][c] = overhead_cell(d, cell, row_axis, baseline, cols[c].overhead);
        } else if (cols[c].delta_of.empty()) {
          cells[s][r][c] = metric_cell(cell, cols[c].split + suffix, cols[c].metric);
        }
    }
  // Deltas against the baseline row of the same section, paired: each job minus its baseline job
  // (the same labels but the row, so the same seed), mean and interval over the pairs.
  for (size_t c = 0; c < cols.size(); ++c) {
    if (cols[c].delta_of.empty()) continue;
    auto of = std::find_if(cols.begin(), cols.end(), [&](const Column& x) { return x.label == cols[c].delta_of; });
    if (of == cols.end() || !of->delta_of.empty() || !of->overhead.empty())
      throw ConfigError(fmt::format("{}: delta: no metric column labelled '{}'", where, cols[c].delta_of));
    if (std::find(rows.begin(), rows.end(), baseline) == rows.end())
      throw ConfigError(fmt::format("{}: baseline '{}' is not a row", where, baseline));
    for (size_t s = 0; s < sections.size(); ++s)
      for (size_t r = 0; r < rows.size(); ++r) {
        if (rows[r] == baseline) continue;
        std::vector<double> diffs;
        bool nan = false;
        for (const auto* jr : used) {
          if (!sec_axis.empty() && jr->job->label(sec_axis) != sections[s]) continue;
          std::optional<double> v, b;
          if (modes.empty()) {
            if (jr->job->label(row_axis) != rows[r]) continue;
            const auto* bj = baseline_of(d, *jr, row_axis, baseline);
            if (!bj) continue;
            v = value_of(*jr, of->split, of->metric);
            b = value_of(*bj, of->split, of->metric);
          } else {  // inference modes of one run: the same job under the row's and the baseline's mode
            auto at = [&](const std::string& mode) { return of->split + (mode == "none" ? "" : "@" + mode); };
            v = value_of(*jr, at(rows[r]), of->metric);
            b = value_of(*jr, at(baseline), of->metric);
          }
          if (!v || !b) continue;
          if (std::isnan(*v) || std::isnan(*b))
            nan = true;
          else
            diffs.push_back(cols[c].relative ? 100 * (*v - *b) / *b : *v - *b);
        }
        Cell& cell = cells[s][r][c];
        if (nan)
          cell.mean = NAN;
        else if (!diffs.empty()) {
          const auto e = estimate(diffs);
          cell.mean = e.mean;
          cell.ci = e.ci;
          cell.n = e.n;
        }
      }
  }
  // Best (bold) and second best (underlined) per section and ranked column.
  std::vector<std::vector<std::vector<int>>> place(
      sections.size(), std::vector<std::vector<int>>(rows.size(), std::vector<int>(cols.size(), 0)));
  for (size_t s = 0; s < sections.size(); ++s)
    for (size_t c = 0; c < cols.size(); ++c) {
      if (!cols[c].rank) continue;
      std::vector<std::pair<double, size_t>> v;
      for (size_t r = 0; r < rows.size(); ++r)
        if (cells[s][r][c].mean && std::isfinite(*cells[s][r][c].mean))
          v.push_back({cols[c].lower ? *cells[s][r][c].mean : -*cells[s][r][c].mean, r});
      std::sort(v.begin(), v.end());
      if (v.size() >= 2) place[s][v[0].second][c] = 1, place[s][v[1].second][c] = 2;
    }

  Output out;
  out.kind = "table";
  const std::string title = str(spec, "title", name);
  const std::string row_head = str(spec, "row_header", modes.empty() ? "Model" : "Inference");
  auto arrow = [](const Column& c) { return c.rank ? (c.lower ? " ↓" : " ↑") : ""; };
  // Markdown
  out.md = title + "\n\n| " + row_head;
  for (const auto& c : cols) out.md += " | " + c.label + arrow(c);
  out.md += " |\n|---";
  for (size_t c = 0; c < cols.size(); ++c) out.md += "|---";
  out.md += "|\n";
  // LaTeX (booktabs)
  out.tex =
      "% " + title + "\n\\begin{tabular}{l" + std::string(cols.size(), 'r') + "}\n\\toprule\n" + tex_escape(row_head);
  for (const auto& c : cols) out.tex += " & " + tex_escape(c.label + arrow(c));
  out.tex += " \\\\\n\\midrule\n";
  out.csv = "report,section,row,column,value,ci,n\n";
  for (size_t s = 0; s < sections.size(); ++s) {
    if (!sec_axis.empty()) {
      const auto sl = label_of(spec, "section_labels", sections[s]);
      out.md += "| *" + sl + "*";
      for (size_t c = 0; c < cols.size(); ++c) out.md += " |";
      out.md += " |\n";
      out.tex += fmt::format("\\multicolumn{{{}}}{{l}}{{\\textit{{{}}}}} \\\\\n", cols.size() + 1, tex_escape(sl));
    }
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto rl = label_of(spec, "row_labels", rows[r]);
      out.md += "| " + rl;
      out.tex += tex_escape(rl);
      for (size_t c = 0; c < cols.size(); ++c) {
        const auto& cell = cells[s][r][c];
        std::string v = (!cols[c].delta_of.empty() && rows[r] == baseline) ? "–" : fmt_value(cell, cols[c]);
        const int p = place[s][r][c];
        out.md += " | " + (p == 1 ? "**" + v + "**" : p == 2 ? "<u>" + v + "</u>" : v);
        const auto tv = tex_escape(v);
        out.tex += " & " + (p == 1 ? "\\textbf{" + tv + "}" : p == 2 ? "\\underline{" + tv + "}" : tv);
        out.csv += fmt::format("{},{},{},{},{},{},{}\n", name, csv_field(sec_axis.empty() ? "" : sections[s]),
                               csv_field(rows[r]), csv_field(cols[c].label),
                               !cell.mean               ? ""
                               : std::isnan(*cell.mean) ? "NaN"
                                                        : fmt::format("{}", *cell.mean),
                               cell.ci > 0 ? fmt::format("{}", cell.ci) : "", cell.n);
      }
      out.md += " |\n";
      out.tex += " \\\\\n";
    }
  }
  out.tex += "\\bottomrule\n\\end{tabular}\n";
  std::string foot = provenance(d, used, out.missing, seeds);
  std::vector<const Cell*> overheads;
  for (size_t s = 0; s < sections.size(); ++s)
    for (size_t r = 0; r < rows.size(); ++r)
      for (size_t c = 0; c < cols.size(); ++c)
        if (!cols[c].overhead.empty()) overheads.push_back(&cells[s][r][c]);
  foot += timing_source(overheads);
  for (size_t c = 0; c < cols.size(); ++c) {
    if (cols[c].delta_of.empty()) continue;
    std::vector<double> half;
    int64_t pairs = 0;
    for (size_t s = 0; s < sections.size(); ++s)
      for (size_t r = 0; r < rows.size(); ++r)
        if (cells[s][r][c].n >= 2 && cells[s][r][c].mean && std::isfinite(*cells[s][r][c].mean)) {
          half.push_back(cells[s][r][c].ci);
          pairs = std::max(pairs, cells[s][r][c].n);
        }
    foot += fmt::format(
        "\n{}: paired, each run minus its {} run of the same {}{}; mean ± 95 % Student-t interval over "
        "the pairs, * where it excludes 0.",
        cols[c].label, label_of(spec, "row_labels", baseline), seeds, sec_axis.empty() ? "" : " and " + sec_axis);
    if (!half.empty()) {
      std::sort(half.begin(), half.end());
      foot += fmt::format(" Smallest difference this design resolves (median half-width, up to {} pairs): ±{:.{}f}{}.",
                          pairs, half[half.size() / 2], cols[c].relative ? 2 : 3, cols[c].relative ? " %" : "");
    }
  }
  for (size_t s = 0; s < sections.size(); ++s)
    for (size_t r = 0; r < rows.size(); ++r)
      for (size_t c = 0; c < cols.size(); ++c)
        if (!cells[s][r][c].note.empty())
          foot += fmt::format("\nNote: {}{}, {}: {}.", label_of(spec, "row_labels", rows[r]),
                              sec_axis.empty() ? "" : " (" + label_of(spec, "section_labels", sections[s]) + ")",
                              cols[c].label, cells[s][r][c].note);
  out.md += "\n**Best** and <u>second best</u> per column" +
            std::string(sec_axis.empty() ? "" : " within each setting") + ". " + foot + "\n";
  std::string tex_foot;
  for (char ch : foot) tex_foot += ch == '\n' ? std::string("\n% ") : std::string(1, ch);
  out.tex += "% " + tex_foot + "\n";
  return out;
}

// A figure's series name for a job: its labels on the series axes, each by series_labels (an
// unlabelled value other than a variant as AXIS=VALUE); "all" without series axes.
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

YAML::Node reports_of(const fs::path& file) {
  try {
    return YAML::LoadFile(file.string())["reports"];
  } catch (const YAML::Exception&) {
    return YAML::Node();  // not a sweep file with reports; `ssr sweep` reports its syntax errors
  }
}

std::vector<fs::path> experiment_files(const std::string& dir) {
  std::vector<fs::path> files;
  if (!fs::is_directory(dir)) throw ConfigError(fmt::format("{}: no experiments folder", dir));
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".yaml") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

std::vector<std::string> report_names(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& f : experiment_files(dir))
    if (auto r = reports_of(f); r && r.IsMap())
      for (const auto& kv : r) names.push_back(kv.first.Scalar());
  return names;
}

std::string find_report(const std::string& name, const std::string& dir) {
  for (const auto& f : experiment_files(dir))
    if (auto r = reports_of(f); r && r.IsMap() && r[name]) return f.string();
  std::string known;
  for (const auto& n : report_names(dir)) known += (known.empty() ? "" : ", ") + n;
  throw ConfigError(fmt::format("report {}: no experiment in {} declares it (reports: {})", name, dir, known));
}

Output build(const std::string& name, const std::string& file, const std::string& scale,
             const std::vector<std::string>& overrides, const store::Store& store) {
  const Data d = load_data(file, scale, overrides, store);
  if (!d.spec.reports.contains(name)) throw ConfigError(fmt::format("{}: reports: has no {}", file, name));
  const json& spec = d.spec.reports[name];
  return spec.contains("figure") ? build_figure(d, spec, name) : build_table(d, spec, name);
}

}  // namespace ssr::analysis
