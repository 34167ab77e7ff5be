// What every report reads and how its cells are built: the expanded sweep with each job's run,
// column specs, metric and overhead cells, pairing with the baseline, and the provenance footer.
// Internal to analysis/: tables (table.cpp) and figures (figure.cpp) are built from these.
#pragma once
#include <nlohmann/json.hpp>

#include <map>
#include <tuple>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "analysis/report.hpp"
#include "harness/store/store.hpp"
#include "harness/sweep/sweep.hpp"

namespace ssr::analysis {

using json = nlohmann::json;

// One job, its newest done run, and its `ssr bench step` cases (newest session first).
struct JobRun {
  const sweep::Job* job = nullptr;
  std::optional<store::Run> run;
  std::map<std::pair<std::string, std::string>, double> results;
  // (split, name, step) -> value of the run's logged evaluations (every split but train).
  std::map<std::tuple<std::string, std::string, int64_t>, double> logged;
  std::vector<store::BenchCase> bench;  // sessions of the job's compute paths, newest first
  // Runs serve every compute path's results, but their step times only the path they ran.
  bool run_timed_as_job = false;
};

struct StepTime {
  double mean = 0, var = 0;
  int64_t n = 0;
};

struct Column {
  std::string label, split, metric, delta_of, overhead, layer_metric;
  bool lower = true, rank = true;
  bool relative = false;   // delta: in percent of the baseline's value, pair by pair
  int64_t step = -1;       // >= 0: the value logged at this step (a partial evaluation), not the result
  std::string correction;  // delta: "holm" marks by Holm-adjusted p-values over the column's rows
};

struct Cell {
  std::optional<double> mean;  // nullopt: missing; NaN: diverged
  double ci = 0;
  int64_t n = 0;
  std::string note;
  std::optional<double> p;           // delta with a correction: the adjusted p-value of the paired t-test
  std::set<int64_t> bench_sessions;  // overhead cells: sessions that timed the pairs
  int64_t run_pairs = 0;             // overhead cells: pairs timed from training runs instead
  double max_load = 0;               // overhead cells: the highest machine load per core of its timings
};

// Everything a report reads: the expanded sweep and each job's run.
struct Data {
  sweep::Spec spec;
  std::vector<JobRun> jobs;
  const store::Store* store = nullptr;
};

// j[key] as text (a string as is, anything else as JSON), `def` when absent.
std::string str(const json& j, const std::string& key, const std::string& def = "");

// spec[map][value] when the spec names a label for value, else value.
std::string label_of(const json& spec, const std::string& map, const std::string& value);

// nullopt: no value (no run, or the run lacks it); NaN: the run diverged (status nan). With
// step >= 0, the value the run logged at that step.
std::optional<double> value_of(const JobRun& jr, const std::string& split, const std::string& name, int64_t step = -1);

// Per-step time of a run over its logged steps, the first tenth dropped (allocator and cache
// warm-up make the first steps slower on every device).
std::optional<StepTime> step_time(const store::Store& store, int64_t run, const std::string& phase);

// A column (or a figure's y) spec; `where` names it in errors.
Column parse_column(const json& c, const std::string& where);

// A cell as the table shows it: mean ± CI, a paired Δ with * when its interval excludes 0 (with a
// correction: when its adjusted p-value is below 0.05).
std::string fmt_value(const Cell& c, const Column& col);

// The sweep of `file` at `scale` expanded, and each job's newest done run and bench cases.
Data load_data(const std::string& file, const std::string& scale, const std::vector<std::string>& overrides,
               const store::Store& store);

// Whether the job passes the spec's where: filter.
bool matches_where(const JobRun& jr, const json& spec);

// The job of the baseline row that pairs with `jr`: same labels except the row axis.
const JobRun* baseline_of(const Data& d, const JobRun& jr, const std::string& row_axis, const std::string& baseline);

// The newest bench session that timed both cases over the same rounds, as per-round ratios - 1.
std::optional<std::pair<int64_t, std::vector<double>>> bench_ratios(const JobRun& jr, const JobRun& base);

// Step-time overhead of the cell's jobs against their baseline jobs, on the same hardware: from
// an `ssr bench step` session that timed both, interleaved (phase step only), else from the two
// training runs' logged step times.
Cell overhead_cell(const Data& d, const std::vector<const JobRun*>& cell, const std::string& row_axis,
                   const std::string& baseline, const std::string& phase);

// Where a report's overhead numbers came from, for its footer ("" when it has none).
std::string timing_source(const std::vector<const Cell*>& cells);

// Mean ± CI of split/metric (at `step`, see value_of) over the cell's runs; NaN if any of them diverged.
Cell metric_cell(const std::vector<const JobRun*>& cell, const std::string& split, const std::string& metric,
                 int64_t step = -1);

// The footer every output carries: what the cells were built from.
// `bench_only`: the report shows step-time overheads only, so a job timed by `ssr bench step` is
// not missing even without a training run.
std::string provenance(const Data& d, const std::vector<const JobRun*>& used, std::vector<std::string>& missing,
                       const std::string& seeds_axis, bool bench_only = false);

// A CSV field, quoted when it must be.
std::string csv_field(const std::string& s);

// The values `axis` takes among `jobs`, in order of appearance.
std::vector<std::string> distinct(const std::vector<const JobRun*>& jobs, const std::string& axis);

// Axes other than the named ones that take several values among `jobs`: they would be averaged
// silently, so the report refuses them.
void check_axes(const std::vector<const JobRun*>& jobs, const std::set<std::string>& named, const std::string& where);

// A figure's series name for a job: its labels on the series axes, each by series_labels (an
// unlabelled value other than a variant as AXIS=VALUE); "all" without series axes.
std::string series_of(const json& spec, const std::vector<std::string>& series_axes, const JobRun& jr);

// Report builders (table.cpp, figure.cpp): `name` is the report's key in d.spec.reports.
Output build_table(const Data& d, const json& spec, const std::string& name);
Output build_figure(const Data& d, const json& spec, const std::string& name);

}  // namespace ssr::analysis
