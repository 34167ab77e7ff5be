// `ssr bench ...`: micro-benchmarks that print tables (not tests: nothing here asserts a time).
#pragma once
#include <cstdint>
#include <functional>
#include <iosfwd>
#include <string>
#include <vector>

namespace ssr::bench {

struct BenchArgs {
  bool quick = false;          // --quick: smallest sizes and fewer repeats (a smoke run)
  int warmup = 1;              // --warmup: untimed calls before the repeats
  int repeats = 5;             // --repeats: timed calls; the median is reported
  std::string device = "cpu";  // --device: cpu or cuda
  int threads = 0;             // --threads: intra-op CPU threads (0 = LibTorch default)
  uint64_t seed = 1;           // --seed: of the random gating logits
  double scale = 1.0;          // --scale: standard deviation of the random gating logits
  std::vector<int64_t> tokens;   // --tokens: token counts m (default 3072 6144 24576)
  std::vector<int64_t> experts;  // --experts: expert counts n (default 16 32)
};

struct Timing {
  double median_ms = 0;
  double min_ms = 0;
};

// The harness timer: `warmup` untimed calls, then `repeats` calls timed with steady_clock, each
// followed by `sync` (a device synchronisation; empty on CPU). Median and minimum in ms.
Timing time_it(const std::function<void()>& fn, int warmup, int repeats,
               const std::function<void()>& sync = {});

// `ssr bench routers`: forward time of every router, and Sinkhorn iterations to delta = 1e-4 for
// xi in {0.05, 0.1, 0.5, 1}, both costs, plain vs log vs Newton (SNS). Returns the exit code.
int run_router_bench(const BenchArgs& args, std::ostream& out);

}  // namespace ssr::bench
