// `ssr bench ...`: benchmarks that print tables (speed is measured here, never in tests).
#include <iostream>

#include "harness/bench/bench.hpp"
#include "harness/cli/commands.hpp"
#ifdef SSR_WITH_UI
#include "harness/ui/bench.hpp"
#endif

namespace ssr::cli {

void add_bench_commands(CLI::App& app, Context& ctx) {
  auto* bench = app.add_subcommand("bench", "Benchmarks (tables on stdout)");
  bench->require_subcommand(1);
  auto args = std::make_shared<bench::BenchArgs>();
  auto* routers =
      bench->add_subcommand("routers", "Forward time of every router; Sinkhorn iterations by xi, cost and solver");
  routers->add_flag("--quick", args->quick, "smallest size only, fewer repeats (a smoke run)");
  routers->add_option("--warmup", args->warmup, "untimed calls before timing")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000000));
  routers->add_option("--repeats", args->repeats, "timed calls; the median is reported")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  routers->add_option("--device", args->device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  routers->add_option("--threads", args->threads, "intra-op CPU threads (0 = LibTorch default)")->capture_default_str();
  routers->add_option("--seed", args->seed, "seed of the random gating logits")->capture_default_str();
  routers->add_option("--scale", args->scale, "standard deviation of the random gating logits")->capture_default_str();
  routers->add_option("--tokens", args->tokens, "token counts m (default 3072 6144 24576)")
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  routers->add_option("--experts", args->experts, "expert counts n (default 16 32)")
      ->check(CLI::Range(int64_t{1}, int64_t{4096}));
  routers->footer(
      "Examples:\n  ssr bench routers --threads 1\n  ssr bench routers --quick\n  ssr bench routers --tokens 6144 "
      "--experts 16 --device cuda");
  routers->callback([args, &ctx] { ctx.exit_code = bench::run_router_bench(*args, std::cout); });

  auto sk = std::make_shared<bench::SinkhornBenchArgs>();
  auto* sinkhorn = bench->add_subcommand("sinkhorn", "One routing OT solve with every Sinkhorn solver of this build");
  sinkhorn->add_option("--tokens", sk->tokens, "tokens m (rows)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  sinkhorn->add_option("--experts", sk->experts, "experts n (columns)")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 20));
  sinkhorn->add_option("--xi", sk->xi, "entropic regularisation")->capture_default_str()->check(CLI::Range(1e-6, 1e6));
  sinkhorn->add_option("--delta", sk->delta, "tolerance on the marginal error")->capture_default_str();
  sinkhorn->add_option("--max-iter", sk->max_iter, "sweep cap")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  sinkhorn->add_option("--cost", sk->cost, "linear (SSR-L) or softmax (SSR-S)")
      ->check(CLI::IsMember({"linear", "softmax"}))
      ->capture_default_str();
  sinkhorn->add_option("--scale", sk->scale, "standard deviation of the random logits")->capture_default_str();
  sinkhorn->add_option("--device", sk->device, "cpu or cuda")
      ->check(CLI::IsMember({"cpu", "cuda"}))
      ->capture_default_str();
  sinkhorn->add_option("--threads", sk->threads, "intra-op CPU threads (0 = LibTorch default)")->capture_default_str();
  sinkhorn->add_option("--warmup", sk->warmup, "untimed solves")->capture_default_str()->check(CLI::Range(0, 1000000));
  sinkhorn->add_option("--repeats", sk->repeats, "timed solves; the median is reported")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  sinkhorn->add_option("--seed", sk->seed, "seed of the logits")->capture_default_str();
  sinkhorn->footer(
      "Examples:\n  ssr bench sinkhorn --threads 1\n  ssr bench sinkhorn --device cuda\n  ssr bench sinkhorn --xi 0.05 "
      "--scale 3");
  sinkhorn->callback([sk, &ctx] { ctx.exit_code = bench::run_sinkhorn_bench(*sk, std::cout); });

  auto st = std::make_shared<bench::StepBenchArgs>();
  auto no_store = std::make_shared<bool>(false);
  auto* step = bench->add_subcommand("step",
                                     "Training-step time of every router of a config, or every job of a sweep file; "
                                     "overhead vs the baseline; stored in the run store");
  step->add_option("config", st->config, "experiment YAML (model, batch, device), or a sweep file whose jobs are timed")
      ->required()
      ->check(CLI::ExistingFile);
  step->add_option("overrides", st->overrides, "key=value overrides (for every job of a sweep file)");
  step->add_option("--routers", st->routers,
                   "router groups of a config to time (default: the paper's nine; vanilla is always added)")
      ->delimiter(',');
  step->add_option("--scale", st->scale, "scale of a sweep file (default: its first)");
  step->add_option("--where", st->where,
                   "keep the sweep jobs with AXIS=VALUE (repeatable or comma-separated; all must hold)")
      ->delimiter(',');
  step->add_option("--vocab", st->vocab,
                   "vocabulary size of the synthetic token ids (default: the data's, built as training would; "
                   "WikiText-103's 267735 or enwik8's 205 when its files are absent)")
      ->check(CLI::Range(int64_t{2}, int64_t{1} << 30));
  step->add_option("--threads", st->threads,
                   "intra-op CPU threads: sets run.threads of every case (0 = the config's run.threads)")
      ->capture_default_str();
  step->add_option("--warmup", st->warmup, "untimed rounds, after each case's own first step")
      ->capture_default_str()
      ->check(CLI::Range(0, 1000000));
  step->add_option("--repeats", st->repeats, "timed rounds (each times every case once)")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  step->add_option("--seed", st->seed, "seed of the weights and token ids")->capture_default_str();
  step->add_option("--csv", st->csv, "also write every round's time as tidy CSV to this file");
  step->add_option("--trace", st->trace,
                   "also profile each case (Kineto): its Chrome trace to this file (FILE-N.json for case N when "
                   "several) and the time per phase");
  step->add_option("--trace-steps", st->trace_steps, "steps each --trace profile covers")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  step->add_option("--peak-tflops", st->peak_tflops,
                   "the device's peak TFLOP/s for the MFU column (default: H100/H200 dense bf16 989, fp32 67; none "
                   "on CPU)")
      ->check(CLI::NonNegativeNumber);
  step->add_option("--db", ctx.db, "run store that keeps the session")->capture_default_str();
  step->add_flag("--no-store", *no_store, "print only; keep nothing in the run store");
  step->footer(
      "Examples:\n  ssr bench step experiments/demo.yaml model=wt103-medium train.batch_size=48 train.seq_len=512 "
      "train.batch_split=2 run.device=cuda\n"
      "  ssr bench step experiments/demo.yaml --vocab 10000 --routers vanilla,sinkhorn,ssr_l --threads 1\n"
      "  ssr bench step experiments/table1.yaml --scale paper --where model.block=vanilla  # then: make fig4\n"
      "  ssr bench step experiments/demo.yaml --csv results/bench/step.csv --no-store");
  step->callback([st, no_store, &ctx] {
    st->db = *no_store ? "" : ctx.db;
    for (size_t i = 0; i < ctx.argv.size(); ++i) st->command += (i ? " " : "") + ctx.argv[i];
    ctx.exit_code = bench::run_step_bench(*st, std::cout);
  });

#ifdef SSR_WITH_UI
  auto ub = std::make_shared<ui::UiBenchArgs>();
  auto* ui_bench = bench->add_subcommand("ui", "How long ssr ui's pages take on a large store it builds");
  ui_bench->add_option("--runs", ub->runs, "runs in the store")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 30));
  ui_bench->add_option("--rows", ub->rows, "metric rows in the store, in all")
      ->capture_default_str()
      ->check(CLI::Range(int64_t{1}, int64_t{1} << 40));
  ui_bench->add_option("--repeats", ub->repeats, "requests per page; the median is reported")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000));
  ui_bench->add_option("--db", ub->db, "build the store here and keep it (default: a scratch file, removed)");
  ui_bench->footer("Examples:\n  ssr bench ui\n  ssr bench ui --runs 100 --rows 10000 --repeats 3");
  ui_bench->callback([ub, &ctx] { ctx.exit_code = ui::run_ui_bench(*ub, std::cout); });
#endif
}

}  // namespace ssr::cli
