// Paper tables and figures, rebuilt from the run store. A report is declared in the `reports:`
// section of the experiment (sweep) file that produces its runs; the report expands that sweep,
// finds the newest finished (or nan) run of every job by config hash, and aggregates over seeds.
// Nothing is ever invented: a job without a run is a "–" cell and is listed as missing.
//
// Table spec (reports.NAME):
//   title: "Table 1. ..."
//   sections: model.block            # optional axis: one block of rows per value
//   section_labels: {vanilla: Conventional setting}
//   rows: variant                    # the axis whose values are the rows
//   row_labels: {vanilla: Vanilla SMoE}
//   row_modes: [none, sinkhorn]      # instead of rows: one row per inference mode (split@mode)
//   seeds: run.seed                  # axis averaged into mean ± 95 % CI (default run.seed)
//   where: {model.block: momentum}   # keep only these jobs
//   baseline: vanilla                # row for the delta and overhead columns
//   columns:
//     - {label: Test PPL, split: test, metric: ppl}        # better: lower|higher (inferred)|none
//     - {label: Δ Test PPL, delta: Test PPL}               # paired: each run minus its baseline
//                                                          # run (same seed and section), mean ± CI
//     - {label: Δ %, delta: Test PPL, relative: true}      # the same in % of the baseline run's value
//     - {label: PPL at 1000, split: valid, metric: ppl, step: 1000}  # the value logged at a step
//     - {label: Δ %, delta: Test PPL, correction: holm}    # * by Holm-adjusted paired t-test p < 0.05
//     - {label: Overhead, overhead: step}                  # step time ratio vs baseline - 1
// Figure spec: figure: bars|lines, x: AXIS|layer, series: [AXES], y: one column spec as above
// (or {layer_metric: output_norm, split: valid} with x: layer), baseline, title, xlabel, ylabel,
// logx: true. figure: curves draws a logged metric against the step, mean over seeds with a 95 %
// band: y: {split: valid, metric: loss} or {split: train, layer_metric: load_cv} (mean over layers).
#pragma once
#include <string>
#include <vector>

#include "analysis/stats.hpp"
#include "harness/store/store.hpp"

namespace ssr::analysis {

struct Output {
  std::string kind;                  // table | figure
  std::string figure;                // figures: bars | lines (the analysis/<figure>.gp that draws it)
  std::string md, tex, csv;          // tables: all three; figures: csv (tidy) and md (a preview table)
  std::string gnuplot;               // figures: gnuplot variables for analysis/<figure kind>.gp
  std::vector<std::string> missing;  // "job 3 (variant=lb run.seed=2) hash 1a2b..."
};

// The experiment file under `dir` whose reports: section declares `name`; throws
// config::ConfigError listing the known report names when none does.
std::string find_report(const std::string& name, const std::string& dir);
// Every report name declared under `dir`, in file order.
std::vector<std::string> report_names(const std::string& dir);

// Builds report `name` of experiment `file` at `scale` from the store; `overrides` are those the
// sweep was run with (`ssr sweep FILE key=value`), which are part of every job's config hash.
Output build(const std::string& name, const std::string& file, const std::string& scale,
             const std::vector<std::string>& overrides, const store::Store& store);

}  // namespace ssr::analysis
