// `ssr bench ...`: benchmarks that print tables (speed is measured here, never in tests).
#include <iostream>

#include "harness/bench/bench.hpp"
#include "harness/cli/commands.hpp"

namespace ssr::cli {

void add_bench_commands(CLI::App& app, Context& ctx) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (tables on stdout)");
  bench->require_subcommand(1);
  auto args = std::make_shared<bench::BenchArgs>();
  auto* routers = bench->add_subcommand("routers", "Forward time of every router; Sinkhorn iterations by xi, cost and solver");
  routers->add_flag("--quick", args->quick, "smallest size only, fewer repeats (a smoke run)");
  routers->add_option("--warmup", args->warmup, "untimed calls before timing")->capture_default_str();
  routers->add_option("--repeats", args->repeats, "timed calls; the median is reported")->capture_default_str();
  routers->add_option("--device", args->device, "cpu or cuda")->check(CLI::IsMember({"cpu", "cuda"}))->capture_default_str();
  routers->add_option("--threads", args->threads, "intra-op CPU threads (0 = LibTorch default)")->capture_default_str();
  routers->add_option("--seed", args->seed, "seed of the random gating logits")->capture_default_str();
  routers->add_option("--scale", args->scale, "standard deviation of the random gating logits")->capture_default_str();
  routers->add_option("--tokens", args->tokens, "token counts m (default 3072 6144 24576)");
  routers->add_option("--experts", args->experts, "expert counts n (default 16 32)");
  routers->footer("Examples:\n  ssr bench routers --threads 1\n  ssr bench routers --quick\n  ssr bench routers --tokens 6144 --experts 16 --device cuda");
  routers->callback([args, &ctx] { ctx.exit_code = bench::run_router_bench(*args, std::cout); });
}

}  // namespace ssr::cli
