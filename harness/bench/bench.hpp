// `ssr bench ...`: micro-benchmarks that print tables (not tests: nothing here asserts a time).
#pragma once
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

namespace ssr::bench {

struct BenchArgs {
  bool quick = false;            // --quick: smallest sizes and fewer repeats (a smoke run)
  int warmup = 1;                // --warmup: untimed calls before the repeats
  int repeats = 5;               // --repeats: timed calls; the median is reported
  std::string device = "cpu";    // --device: cpu or cuda
  int threads = 0;               // --threads: intra-op CPU threads (0 = LibTorch default)
  uint64_t seed = 1;             // --seed: of the random gating logits
  double scale = 1.0;            // --scale: standard deviation of the random gating logits
  std::vector<int64_t> tokens;   // --tokens: token counts m (default 3072 6144 24576)
  std::vector<int64_t> experts;  // --experts: expert counts n (default 16 32)
};

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
};

// The harness timer: `warmup` untimed calls, then `repeats` calls timed with steady_clock, each
// followed by `sync` (a device synchronisation; empty on CPU). Median and minimum in ms.
Timing time_it(const std::function<void()>& fn, int warmup, int repeats, const std::function<void()>& sync = {});

// `ssr bench routers`: forward time of every router, and Sinkhorn iterations to delta = 1e-4 for
// xi in {0.05, 0.1, 0.5, 1}, both costs, plain vs log vs Newton (SNS). Returns the exit code.
int run_router_bench(const BenchArgs& args, std::ostream& out);

struct SinkhornBenchArgs {
  int64_t tokens = 6144, experts = 16;  // --tokens, --experts
  double xi = 0.5, delta = 1e-4;        // --xi, --delta
  int64_t max_iter = 1000;              // --max-iter: sweep cap of every solver
  std::string cost = "linear";          // --cost: linear (SSR-L) or softmax (SSR-S)
  double scale = 1.0;                   // --scale: standard deviation of the logits
  std::string device = "cpu";           // --device
  int threads = 0, warmup = 3, repeats = 20;
  uint64_t seed = 1;
};
// `ssr bench sinkhorn`: one solve with every solver of this build (plain, log, SNS, fused CUDA).
int run_sinkhorn_bench(const SinkhornBenchArgs& args, std::ostream& out);

struct StepBenchArgs {
  std::string config;                         // CONFIG.yaml, or a sweep file (its jobs are the cases)
  std::vector<std::string> overrides;         // key=value (sweep files: as `ssr sweep` takes them)
  std::vector<std::string> routers;           // --routers: router groups of a config (default: the paper's nine)
  std::string scale;                          // --scale: of a sweep file
  std::vector<std::string> where;             // --where AXIS=VALUE: keep these sweep jobs
  int64_t vocab = 0;                          // --vocab: 0 = the data's vocabulary (the paper's when absent)
  int threads = 0, warmup = 2, repeats = 10;  // warmup: untimed rounds after each case's own first step
  uint64_t seed = 1;
  std::string csv;         // --csv: per-round times, tidy
  std::string trace;       // --trace: Chrome trace of each case's trace_steps steps, and the phase table
  int trace_steps = 3;     // --trace-steps
  double peak_tflops = 0;  // --peak-tflops: the device's peak for MFU (0 = known cards' bf16/fp32 dense peak)
  std::string db;          // --db: run store for the session ("" = not stored)
  std::string command;     // the command line, kept with the session
};
// `ssr bench step`: training-step time of every case, overhead vs its baseline with a 95 % CI.
int run_step_bench(const StepBenchArgs& args, std::ostream& out);

}  // namespace ssr::bench
