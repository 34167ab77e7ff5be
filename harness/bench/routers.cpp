// `ssr bench routers`: see bench.hpp. Gating logits are N(0, scale^2); hidden states (noisy gating,
// OSR) are N(0, 1) with d = 352 (the reference model width), gate rows N(0, 1/d), token ids
// uniform over a 10,000-word vocabulary (hash routing).
#include <fmt/format.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <ostream>

#include "harness/bench/bench.hpp"
#include "harness/config/config.hpp"
#include "routers/registry.hpp"
#include "routers/router.hpp"
#include "routers/sinkhorn.hpp"

namespace ssr::bench {

Timing time_it(const std::function<void()>& fn, int warmup, int repeats, const std::function<void()>& sync) {
  for (int i = 0; i < warmup; ++i) fn();
  if (sync) sync();
  std::vector<double> ms;
  for (int i = 0; i < std::max(repeats, 1); ++i) {
    auto t0 = std::chrono::steady_clock::now();
    fn();
    if (sync) sync();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const size_t n = ms.size();
  return {n % 2 ? ms[n / 2] : 0.5 * (ms[n / 2 - 1] + ms[n / 2]), ms.front()};
}

namespace {

constexpr int64_t kDModel = 352;
constexpr int64_t kTopK = 2;
constexpr int64_t kVocab = 10000;

struct RouterCase {
  std::string label;
  std::vector<std::string> overrides;  // router.* values
};

// Every registered router's bench rows (routers/registry.hpp).
std::vector<RouterCase> router_cases() {
  std::vector<RouterCase> cases;
  for (const auto& spec : routers::registry())
    for (const auto& [label, overrides] : spec.bench) {
      RouterCase c{label, {"name=" + spec.name}};
      c.overrides.insert(c.overrides.end(), overrides.begin(), overrides.end());
      cases.push_back(std::move(c));
    }
  return cases;
}

config::Config router_config(const std::vector<std::string>& overrides) {
  config::Config cfg;
  std::vector<std::string> full;
  for (const auto& o : overrides) full.push_back("router." + o);
  config::apply_overrides(cfg, full, {});
  return cfg;
}

std::string iters_cell(const routers::SinkhornResult& r, int64_t cap) {
  if (!r.finite) return "NaN";
  if (!r.converged) return fmt::format(">{}", cap);
  return fmt::format("{}", r.iters);
}

}  // namespace

int run_router_bench(const BenchArgs& args, std::ostream& out) {
  if (args.threads > 0) torch::set_num_threads(args.threads);
  const torch::Device device(args.device);
  std::function<void()> sync;
  if (device.is_cuda()) sync = [] { torch::cuda::synchronize(); };
  std::vector<int64_t> tokens = args.tokens, experts = args.experts;
  if (tokens.empty()) tokens = args.quick ? std::vector<int64_t>{3072} : std::vector<int64_t>{3072, 6144, 24576};
  if (experts.empty()) experts = args.quick ? std::vector<int64_t>{16} : std::vector<int64_t>{16, 32};
  const int repeats = args.quick ? std::min(args.repeats, 3) : args.repeats;
  torch::NoGradGuard no_grad;
  auto gen = at::make_generator<at::CPUGeneratorImpl>(args.seed);

  out << fmt::format(
      "# ssr bench routers: device {}, {} threads, logits N(0, {}^2), top-{}, median of {} after {} warm-up\n\n",
      args.device, torch::get_num_threads(), args.scale, kTopK, repeats, args.warmup);

  // --- 1. forward time of each router
  out << "## Router forward time (ms, median)\n\n";
  std::string head = fmt::format("| {:<32} |", "router");
  std::string rule = "|" + std::string(34, '-') + "|";
  for (auto m : tokens)
    for (auto n : experts) {
      head += fmt::format(" {:>11} |", fmt::format("{}x{}", m, n));
      rule += std::string(13, '-') + "|";
    }
  out << head << "\n" << rule << "\n";
  for (const auto& rc : router_cases()) {
    std::string line = fmt::format("| {:<32} |", rc.label);
    for (auto m : tokens) {
      for (auto n : experts) {
        auto router = routers::make_router(router_config(rc.overrides), kDModel, n, kTopK);
        router->to(device);
        auto opts = torch::TensorOptions().device(device);
        auto logits = (args.scale * torch::randn({m, n}, gen)).to(opts);  // (tokens, experts)
        routers::RouteInput in;
        in.logits = logits;
        in.hidden = torch::randn({m, kDModel}, gen).to(opts);                       // (tokens, d)
        in.token_ids = torch::randint(0, kVocab, {m}, gen, torch::kLong).to(opts);  // (tokens)
        in.gate_weight =
            (torch::randn({n, kDModel}, gen) / std::sqrt(static_cast<double>(kDModel))).to(opts);  // (experts, d)
        // Routers draw on their generator's device: a CUDA generator keeps noise draws on the GPU.
        torch::Generator g = device.is_cuda() ? at::globalContext().defaultGenerator(device)
                                              : at::make_generator<at::CPUGeneratorImpl>(args.seed);
        auto t = time_it([&] { router->route(in, routers::Mode::Train, g); }, args.warmup, repeats, sync);
        line += fmt::format(" {:>11.3f} |", t.median_ms);
      }
    }
    out << line << std::endl;
  }

  // --- 2. iterations to delta for plain / log / Newton
  const double delta = 1e-4;
  const int64_t cap = args.quick ? 300 : 500;
  const int64_t newton_cap = 30;
  out << fmt::format("\n## Sinkhorn iterations to delta = {} (marginal L1 error), checked every iteration\n", delta);
  out << fmt::format(
      "cap {} sweeps (plain, log), 3 log sweeps + {} Newton steps (SNS); NaN = plain overflow; "
      "time = one solve in ms; err = final marginal error\n\n",
      cap, newton_cap);
  out << "| m x n | cost | xi | plain iters | plain ms | log iters | log ms | log err | SNS iters | SNS ms | SNS err "
         "|\n";
  out << "|---|---|---|---|---|---|---|---|---|---|---|\n";
  for (auto m : tokens) {
    for (auto n : experts) {
      auto logits = (args.scale * torch::randn({m, n}, gen)).to(device);  // (tokens, experts)
      for (const char* cost : {"linear", "softmax"}) {
        auto c = std::string(cost) == "linear" ? logits : logits.softmax(-1);  // (tokens, experts)
        for (double xi : {0.05, 0.1, 0.5, 1.0}) {
          routers::SinkhornOptions o;
          o.xi = xi;
          o.delta = delta;
          o.max_iter = cap;
          o.check_every = 1;
          auto run = [&](routers::SinkhornOptions oo, routers::SinkhornResult& res) {
            auto t0 = std::chrono::steady_clock::now();
            res = routers::sinkhorn(c, oo);
            if (sync) sync();
            return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
          };
          routers::SinkhornResult plain, logd, sns;
          o.numerics = routers::Numerics::Plain;
          double t_plain = run(o, plain);
          o.numerics = routers::Numerics::Log;
          double t_log = run(o, logd);
          o.newton_steps = newton_cap;
          double t_sns = run(o, sns);
          out << fmt::format("| {}x{} | {} | {} | {} | {:.1f} | {} | {:.1f} | {:.1e} | {} | {:.1f} | {:.1e} |\n", m, n,
                             cost, xi, iters_cell(plain, cap), t_plain, iters_cell(logd, cap), t_log, logd.error,
                             iters_cell(sns, newton_cap + o.newton_warmup), t_sns, sns.error);
          out.flush();
        }
      }
    }
  }
  return 0;
}

}  // namespace ssr::bench
