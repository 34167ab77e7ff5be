// `ssr bench sinkhorn`: one routing OT solve (default 6,144 x 16, xi 0.5, delta 1e-4, the SSR-L
// cost of N(0, 1) logits) with every solver this build has, to the same tolerance.
#include <fmt/format.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <ostream>

#include "harness/bench/bench.hpp"
#include "routers/sinkhorn.hpp"

namespace ssr::bench {

int run_sinkhorn_bench(const SinkhornBenchArgs& args, std::ostream& out) {
  if (args.threads > 0) torch::set_num_threads(args.threads);
  const torch::Device device(args.device);
  if (device.is_cuda() && !torch::cuda::is_available())
    throw std::invalid_argument("--device: cuda requested but no CUDA device is available");
  std::function<void()> sync;
  if (device.is_cuda()) sync = [] { torch::cuda::synchronize(); };
  auto gen = at::make_generator<at::CPUGeneratorImpl>(args.seed);
  auto logits = (args.scale * torch::randn({args.tokens, args.experts}, gen)).to(device);  // (tokens, experts)
  auto cost = args.cost == "softmax" ? logits.softmax(-1) : logits;                        // (tokens, experts)

  struct Row {
    std::string label;
    routers::SinkhornOptions o;
  };
  routers::SinkhornOptions base;
  base.xi = args.xi;
  base.delta = args.delta;
  base.max_iter = args.max_iter;
  std::vector<Row> rows;
  auto add = [&](std::string label, auto edit) {
    auto o = base;
    edit(o);
    rows.push_back({std::move(label), o});
  };
  add("plain, check every 10 (reference numerics)", [](auto& o) { o.numerics = routers::Numerics::Plain; });
  add("log, check every 10", [](auto&) {});
  add("log, check every sweep", [](auto& o) { o.check_every = 1; });
  add("SNS: 3 log sweeps + 8 Newton, one check", [](auto& o) {
    o.newton_steps = 8;
    o.check_every = 8;
  });
#ifdef SSR_WITH_CUDA
  if (device.is_cuda())
    add("fused CUDA kernel, log, check every sweep on device", [](auto& o) { o.solver = routers::Solver::Fused; });
#endif

  out << fmt::format(
      "# ssr bench sinkhorn: {} x {} {} cost of N(0, {}^2) logits, xi {}, delta {}, device {}, {} threads, "
      "median of {} after {} warm-up\n\n",
      args.tokens, args.experts, args.cost, args.scale, args.xi, args.delta, args.device, torch::get_num_threads(),
      args.repeats, args.warmup);
  out << "| solver | time (µs, median) | min (µs) | iterations | marginal error | converged "
         "|\n|---|---|---|---|---|---|\n";
  for (const auto& r : rows) {
    routers::SinkhornResult res;
    auto t = time_it([&] { res = routers::sinkhorn(cost, r.o); }, args.warmup, args.repeats, sync);
    out << fmt::format("| {} | {:.1f} | {:.1f} | {} | {:.2e} | {} |\n", r.label, 1000 * t.median_ms, 1000 * t.min_ms,
                       res.iters, res.error, res.converged ? "yes" : (res.finite ? "no" : "NaN"));
    out.flush();
  }
  return 0;
}

}  // namespace ssr::bench
