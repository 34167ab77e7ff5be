// `ssr bench step`: full training steps (forward, backward, Adam) of one model config for every
// router, timed round-robin so that drift of a shared machine hits all routers alike. Overhead is
// the per-round ratio to vanilla, averaged, with a t-interval over rounds: never a time from
// another machine. Token ids are synthetic: timing does not depend on the text.
#include <fmt/format.h>
#include <torch/torch.h>

#include <ATen/CPUGeneratorImpl.h>
#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <ostream>

#include "harness/bench/bench.hpp"
#include "harness/config/config.hpp"
#include "models/precision.hpp"
#include "models/switch_lm.hpp"

namespace ssr::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Two-sided 95 % Student t quantiles for df = 1..30; the normal quantile beyond.
double t95(int64_t df) {
  static const double q[] = {12.706, 4.303, 2.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                             2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                             2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  if (df < 1) return NAN;
  return df <= 30 ? q[df - 1] : 1.960;
}

struct Case {
  std::string router;
  config::Config cfg;
  models::SwitchLM model{nullptr};
  std::unique_ptr<torch::optim::Adam> opt;
  std::vector<models::LMState> states;
  std::vector<double> ms;  // one per timed round
};

}  // namespace

MeanCI mean_ci(const std::vector<double>& x) {
  MeanCI r;
  const auto n = static_cast<int64_t>(x.size());
  if (n == 0) return r;
  double sum = 0;
  for (double v : x) sum += v;
  r.mean = sum / static_cast<double>(n);
  if (n < 2) return r;
  double ss = 0;
  for (double v : x) ss += (v - r.mean) * (v - r.mean);
  r.half_width = t95(n - 1) * std::sqrt(ss / static_cast<double>(n - 1)) / std::sqrt(static_cast<double>(n));
  return r;
}

int run_step_bench(const StepBenchArgs& args, std::ostream& out) {
  if (args.threads > 0) torch::set_num_threads(args.threads);
  std::vector<std::string> routers = args.routers;
  if (routers.empty()) routers = {"vanilla", "lb", "zloss", "noisy", "sinkhorn", "ssr_l", "ssr_s", "ssr_l_noise", "ssr_s_noise"};
  if (std::find(routers.begin(), routers.end(), "vanilla") == routers.end()) routers.insert(routers.begin(), "vanilla");

  std::vector<Case> cases;
  for (const auto& r : routers) {
    auto overrides = args.overrides;
    overrides.push_back("router=" + r);
    cases.push_back(Case{r, config::resolve(args.config, overrides)});
  }
  const auto& base = cases.front().cfg;
  const torch::Device device(base.s("run.device") == "cuda" ? torch::kCUDA : torch::kCPU);
  if (device.is_cuda() && !torch::cuda::is_available())
    throw config::ConfigError("run.device: cuda requested but no CUDA device is available (use run.device=cpu)");
  const int64_t B = base.i("train.batch_size"), M = base.i("train.seq_len"), split = base.i("train.batch_split");
  if (split > B) throw config::ConfigError("train.batch_split: more micro-batches than train.batch_size streams");
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };

  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(args.seed);
  for (auto& c : cases) {
    torch::manual_seed(args.seed);
    c.model = models::SwitchLM(c.cfg, args.vocab);
    c.model->to(device);
    c.opt = std::make_unique<torch::optim::Adam>(c.model->parameters(), torch::optim::AdamOptions(c.cfg.f("train.lr")));
    for (int64_t j = 0; j < split; ++j) c.states.push_back(c.model->initial_state(B / split));
    for (auto& s : c.states)
      for (auto& t : s.cache) t = t.to(device);
  }
  auto tokens = torch::randint(args.vocab, {B / split, M + 1}, gen).to(device);  // (streams per micro-batch, seq_len + 1)
  auto inputs = tokens.narrow(1, 0, M), targets = tokens.narrow(1, 1, M);        // (streams per micro-batch, seq_len)
  auto step = [&](Case& c) {
    c.opt->zero_grad();
    for (auto& s : c.states) {
      models::LMOutput o;
      {
        models::AutocastGuard autocast(device, c.cfg.s("train.precision") == "bf16");
        o = c.model->forward(inputs, targets, s, gen);
      }
      ((o.nll + o.aux) / static_cast<double>(split)).backward();
    }
    c.opt->step();
    sync();
  };

  const int64_t params = [&] {
    int64_t n = 0;
    for (const auto& p : cases.front().model->parameters()) n += p.numel();
    return n;
  }();
  out << fmt::format("# ssr bench step: {} ({} parameters with vanilla), {} x {} tokens in {} micro-batch(es), vocab {}, "
                     "device {}, {}, {} threads; {} warm-up + {} timed rounds, routers interleaved\n\n",
                     args.config, params, B / split * split, M, split, args.vocab, base.s("run.device"),
                     base.s("train.precision"), torch::get_num_threads(), args.warmup, args.repeats);
  for (int w = 0; w < args.warmup; ++w)
    for (auto& c : cases) step(c);
  for (int r = 0; r < args.repeats; ++r)
    for (auto& c : cases) {
      auto t0 = Clock::now();
      step(c);
      c.ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
    }

  const auto& vanilla = cases.front().ms;
  out << "| router | step ms (median) | tokens/s | overhead vs vanilla (mean of per-round ratios, 95 % CI) |\n";
  out << "|---|---|---|---|\n";
  for (auto& c : cases) {
    auto sorted = c.ms;
    std::sort(sorted.begin(), sorted.end());
    const double median = sorted[sorted.size() / 2];
    std::vector<double> ratios;
    for (size_t k = 0; k < c.ms.size(); ++k) ratios.push_back(c.ms[k] / vanilla[k] - 1.0);
    const auto ci = mean_ci(ratios);
    const std::string overhead =
        c.router == "vanilla" ? "–" : fmt::format("{:+.1f} % ± {:.1f}", 100 * ci.mean, 100 * ci.half_width);
    out << fmt::format("| {} | {:.2f} | {:.0f} | {} |\n", c.router, median,
                       static_cast<double>(B / split * split * M) / (median / 1000.0), overhead);
  }
  if (!args.csv.empty()) {
    std::filesystem::path p(args.csv);
    if (p.has_parent_path()) std::filesystem::create_directories(p.parent_path());
    std::FILE* f = std::fopen(args.csv.c_str(), "w");
    if (!f) throw config::ConfigError(fmt::format("--csv: cannot write {}", args.csv));
    std::fputs("router,round,step_ms,device,threads\n", f);
    for (const auto& c : cases)
      for (size_t k = 0; k < c.ms.size(); ++k)
        std::fputs(fmt::format("{},{},{:.4f},{},{}\n", c.router, k, c.ms[k], base.s("run.device"), torch::get_num_threads()).c_str(), f);
    std::fclose(f);
    out << fmt::format("\nper-round times: {}\n", args.csv);
  }
  return 0;
}

}  // namespace ssr::bench
