// A sweep file describes a study once: a base config, common overrides, named variants, grid
// axes, seeded random search and seeds, at one of several scales. Expanding it gives the jobs,
// in a deterministic order, each a resolved config. Planning, running and reports all start here.
//
//   base: ../demo.yaml               # config file, relative to the sweep file
//   overrides: [train.steps=80000]   # applied to every job
//   scales:                          # --scale NAME picks one (the first is the default):
//     paper: [train.steps=80000]     #   overrides, or
//     demo: {base: lm-demo.yaml, overrides: [...], seeds: [1, 2]}   # another base and seeds
//   variants:                        # outermost axis "variant": name -> overrides
//     vanilla: [router=vanilla]
//     ssr_l: [router=ssr_l]
//     noisy: {overrides: [router=noisy], cross: [run.seed]}   # crossed only with these axes
//   grid:                            # one axis per key: a list, "a,b,c" or "range(0,10,2)"
//     model.block: [vanilla, momentum]
//   random:                          # n samples of every param, from `seed`
//     n: 8
//     seed: 0
//     params: {router.p: {log_uniform: [1e-5, 1e-1]}, router.cost: {values: [linear, softmax]}}
//   seeds: [1, 2]                    # innermost axis run.seed
//   order: seeds-first               # run seed by seed (default `axes`: the order above)
//   slurm: {time: "24:00:00", gpus-per-task: 1, parallel: 4}   # sbatch options of --launcher slurm;
//                                    # a scale's own `slurm:` goes over them (0 drops an option)
//   reports: {...}                   # tables and figures built from these jobs (analysis/report.hpp)
#pragma once
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "harness/config/config.hpp"

namespace ssr::sweep {

using json = nlohmann::json;

struct Job {
  int64_t num = 0;                     // position in the expansion: 0 .. jobs-1
  std::vector<std::string> overrides;  // every override of this job, in application order
  // Axis name -> the value's text: "variant" -> "ssr_l", "router.p" -> "1e-3", "run.seed" -> "2";
  // random samples add "sample" -> "0".. and one entry per sampled key.
  std::vector<std::pair<std::string, std::string>> labels;
  config::Config config;  // resolved
  // Command-line overrides for every job that this job's router (or model) does not use, left out
  // of it: `router=vanilla,ssr_l router.p=0.5` sets router.p on the ssr_l jobs only.
  std::vector<std::string> left_out;
  std::string label(const std::string& axis) const;  // "" when the job has no such axis
  std::string describe() const;                      // "variant=lb model.block=momentum"
  // Whether `base` is this job's baseline: `axis` = `value`, every other label equal (or absent
  // from base, e.g. a variant crossed only with seeds). Reports and `ssr bench step` pair by this.
  bool pairs_with(const Job& base, const std::string& axis, const std::string& value) const;
};

struct Spec {
  std::string file;                        // the sweep file as given
  std::string name;                        // file stem unless `name:` is set
  std::string scale;                       // "" when the file has no scales
  std::string base;                        // resolved path of the base config
  std::vector<std::string> cli_overrides;  // as given on the command line
  std::vector<Job> jobs;
  json slurm = json::object();    // sbatch options, the scale's over the file's ("parallel" is the array's %P)
  json reports = json::object();  // name -> report spec, as written in the file
  // What the store keeps for the sweep: file, scale, overrides and every job's hash and labels.
  json to_json() const;
  // SHA-256 prefix of the job list (hashes in order): the same plan gives the same value.
  std::string plan_hash() const;
};

// Reads and expands a sweep file. `overrides` from the command line: `key=a,b` or
// `key=range(...)` adds an axis, anything else applies to every job. Throws config::ConfigError
// naming the file, the key or the job on any bad input.
Spec load(const std::string& file, const std::vector<std::string>& overrides, const std::string& scale = "");

// Planning runs: two jobs with one configuration hash would be one run (the second reuses the
// first), e.g. an axis over a compute path such as model.expert_impl. Throws ConfigError naming
// both jobs and the keys they differ in.
void check_distinct_runs(const Spec& spec);

// `a,b,[c,d]` -> {"a", "b", "[c,d]"}; commas inside brackets or parentheses do not split.
std::vector<std::string> split_top_level(const std::string& text);
// `range(start, stop[, step])`, stop excluded, integers when all three are: {"0", "2", "4"}.
// Returns nullopt when `text` is not a range expression.
std::optional<std::vector<std::string>> expand_range(const std::string& text);

}  // namespace ssr::sweep
