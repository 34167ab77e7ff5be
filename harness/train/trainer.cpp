#include "harness/train/trainer.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <csignal>

#include "harness/data/corpus.hpp"
#include "harness/train/progress.hpp"
#include "models/switch_lm.hpp"

namespace ssr::train {
namespace {

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal = sig; }

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

torch::Device device_of(const config::Config& cfg) {
  if (cfg.s("run.device") == "cuda") {
    if (!torch::cuda::is_available())
      throw config::ConfigError("run.device: cuda requested but no CUDA device is available (use run.device=cpu)");
    return torch::Device(torch::kCUDA);
  }
  return torch::Device(torch::kCPU);
}

// The metric a split reports: bits per character for byte-level data, perplexity otherwise.
std::pair<std::string, double> headline(const config::Config& cfg, double nll) {
  if (cfg.s("data.format") == "byte") return {"bpc", nll / std::log(2.0)};
  return {"ppl", std::exp(nll)};
}

// Splits the B streams into batch_split contiguous row groups (the reference's micro-batches).
std::vector<std::pair<int64_t, int64_t>> row_groups(int64_t streams, int64_t parts) {
  std::vector<std::pair<int64_t, int64_t>> out;
  for (int64_t j = 0; j < parts; ++j) {
    int64_t lo = streams * j / parts, hi = streams * (j + 1) / parts;
    if (hi > lo) out.emplace_back(lo, hi - lo);
  }
  return out;
}

// Mean NLL over the evaluation walk of a split (spec section 4): zero caches, segments in order,
// mean of per-segment means. `max_segments` < 0 walks the whole split.
double evaluate(models::SwitchLM& model, const torch::Tensor& ids, int64_t streams, int64_t seq_len,
                int64_t max_segments, torch::Device device, torch::Generator& gen) {
  torch::NoGradGuard no_grad;
  model->eval();
  data::StreamBatcher batcher(ids, streams, seq_len);
  int64_t n = batcher.eval_segments();
  if (max_segments >= 0) n = std::min(n, max_segments);
  if (n == 0)
    throw config::ConfigError(fmt::format(
        "eval.batch_size: {} streams of {} tokens leave no full segment in a split of {} tokens; lower it",
        streams, seq_len, ids.numel()));
  auto state = model->initial_state(streams);
  double total = 0;
  for (int64_t i = 0; i < n; ++i) {
    auto batch = batcher.segment(i);
    auto out = model->forward(batch.tokens.to(device), batch.targets.to(device), state, gen);
    total += out.nll.item<double>();
  }
  model->train();
  return total / static_cast<double>(n);
}

}  // namespace

Outcome train(const config::Config& cfg, store::Store& store, const Options& opts) {
  if (cfg.i("run.threads") > 0) torch::set_num_threads(static_cast<int>(cfg.i("run.threads")));
  const torch::Device device = device_of(cfg);
  const int64_t seed = cfg.i("run.seed");
  torch::manual_seed(static_cast<uint64_t>(seed));
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));

  // Everything that can reject the job happens before the run row exists.
  data::Corpus corpus = data::load_corpus(cfg);
  const int64_t B = cfg.i("train.batch_size"), M = cfg.i("train.seq_len");
  const int64_t steps = cfg.i("train.steps"), split = cfg.i("train.batch_split");
  if (split > B)
    throw config::ConfigError(fmt::format("train.batch_split: {} micro-batches need at least as many streams "
                                          "(train.batch_size is {})", split, B));
  models::SwitchLM model(cfg, corpus.vocab_size());
  model->to(device);
  torch::optim::Adam optimizer(model->parameters(),
                               torch::optim::AdamOptions(cfg.f("train.lr"))
                                   .betas({cfg.f("train.beta1"), cfg.f("train.beta2")})
                                   .weight_decay(cfg.f("train.weight_decay")));
  data::StreamBatcher batcher(corpus.splits.at("train"), B, M);

  const store::RunInfo info = store::this_machine(cfg.s("run.device"));
  int64_t run_id;
  if (opts.queued_run) {
    run_id = *opts.queued_run;
    store.start_run(run_id, info);
  } else {
    run_id = store.create_run(cfg.hash(), cfg.to_json(), seed, info);
  }

  g_signal = 0;
  auto old_int = std::signal(SIGINT, on_signal);
  auto old_term = std::signal(SIGTERM, on_signal);
  struct Restore {
    decltype(old_int) i, t;
    ~Restore() { std::signal(SIGINT, i); std::signal(SIGTERM, t); }
  } restore{old_int, old_term};

  Progress progress(steps, cfg.i("run.log_every"), opts.quiet);
  progress.message(fmt::format("run {}: {} steps of {} x {} tokens, {} parameters, config {}", run_id, steps, B, M,
                               [&] {
                                 int64_t n = 0;
                                 for (const auto& p : model->parameters()) n += p.numel();
                                 return n;
                               }(),
                               cfg.hash()));
  const auto groups = row_groups(B, split);
  std::vector<models::LMState> states;
  for (const auto& [lo, rows] : groups) states.push_back(model->initial_state(rows));
  for (auto& s : states)
    for (auto& c : s.cache) c = c.to(device);

  const int64_t log_every = cfg.i("run.log_every");
  const double heartbeat_s = cfg.f("run.heartbeat_s");
  const auto t_start = Clock::now();
  auto last_heartbeat = Clock::now();
  std::vector<store::Metric> metrics;
  std::vector<store::Timing> timings;
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  auto flush = [&](int64_t step) {
    store.add_metrics(run_id, metrics);
    store.add_timings(run_id, timings);
    metrics.clear();
    timings.clear();
    store.heartbeat(run_id, step);
    last_heartbeat = Clock::now();
  };

  try {
    model->train();
    for (int64_t step = 1; step <= steps; ++step) {
      if (g_signal) {
        flush(step - 1);
        store.finish_run(run_id, "failed", fmt::format("interrupted by signal {} at step {}", int(g_signal), step - 1));
        progress.finish();
        return {run_id, "failed"};
      }
      const bool log_step = step % log_every == 0 || step == steps;
      model->collect_router_stats(log_step);
      const double warmup = static_cast<double>(cfg.i("train.warmup"));
      const double lr = cfg.f("train.lr") * (warmup > 0 ? std::min(1.0, step / warmup) : 1.0);
      for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamOptions&>(g.options()).lr(lr);

      auto batch = batcher.next(gen);
      if (batch.reset)
        for (auto& s : states)
          for (auto& c : s.cache) c.zero_();
      optimizer.zero_grad();
      double nll_sum = 0, aux_sum = 0, t_fwd = 0, t_bwd = 0;
      for (size_t j = 0; j < groups.size(); ++j) {
        const auto [lo, rows] = groups[j];
        auto tokens = batch.tokens.narrow(0, lo, rows).to(device);    // (rows, seq_len)
        auto targets = batch.targets.narrow(0, lo, rows).to(device);  // (rows, seq_len)
        auto t0 = Clock::now();
        auto out = model->forward(tokens, targets, states[j], gen);
        auto loss = (out.nll + out.aux) / static_cast<double>(groups.size());
        sync();
        t_fwd += seconds_since(t0);
        t0 = Clock::now();
        loss.backward();
        sync();
        t_bwd += seconds_since(t0);
        nll_sum += out.nll.item<double>();
        aux_sum += out.aux.item<double>();
      }
      const double nll = nll_sum / static_cast<double>(groups.size());
      if (!std::isfinite(nll) || !std::isfinite(aux_sum)) {
        metrics.push_back({step, "train", "loss", nll, seconds_since(t_start)});
        flush(step);
        store.finish_run(run_id, "nan", fmt::format("loss became {} at step {}", nll, step));
        progress.message(fmt::format("run {}: loss became {} at step {}; recorded as nan", run_id, nll, step));
        return {run_id, "nan"};
      }
      auto t0 = Clock::now();
      if (cfg.f("train.clip") > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), cfg.f("train.clip"));
      optimizer.step();
      sync();
      const double t_opt = seconds_since(t0);
      timings.push_back({step, "forward", t_fwd});
      timings.push_back({step, "backward", t_bwd});
      timings.push_back({step, "optimizer", t_opt});
      timings.push_back({step, "step", t_fwd + t_bwd + t_opt});
      progress.update(step, nll, B * M);

      if (log_step) {
        const double wall = seconds_since(t_start);
        metrics.push_back({step, "train", "loss", nll, wall});
        metrics.push_back({step, "train", "aux", aux_sum / groups.size(), wall});
        metrics.push_back({step, "train", "lr", lr, wall});
        metrics.push_back({step, "train", "tokens_per_s", B * M / (t_fwd + t_bwd + t_opt), wall});
        const auto stats = model->take_router_stats();
        for (size_t l = 0; l < stats.size(); ++l) {
          const auto& s = stats[l];
          const std::string p = fmt::format("layer{}/", l);
          metrics.push_back({step, "train", p + "load_cv", s.load_cv, wall});
          metrics.push_back({step, "train", p + "max_over_mean", s.max_over_mean, wall});
          metrics.push_back({step, "train", p + "dead_experts", double(s.dead_experts), wall});
          metrics.push_back({step, "train", p + "entropy", s.entropy, wall});
          metrics.push_back({step, "train", p + "sinkhorn_frac", s.sinkhorn_frac, wall});
          metrics.push_back({step, "train", p + "sinkhorn_iters", s.sinkhorn_iters, wall});
          metrics.push_back({step, "train", p + "sinkhorn_error", s.sinkhorn_error, wall});
        }
      }
      if (log_step || seconds_since(last_heartbeat) > heartbeat_s) flush(step);
    }
    flush(steps);
    progress.finish();

    for (const auto& split_name : cfg.strings("eval.splits")) {
      if (!corpus.splits.count(split_name))
        throw config::ConfigError(fmt::format("eval.splits: no split '{}' in data.dir {}", split_name, cfg.s("data.dir")));
      const double loss = evaluate(model, corpus.splits.at(split_name), cfg.i("eval.batch_size"), M, -1, device, gen);
      const auto [metric, value] = headline(cfg, loss);
      store.set_result(run_id, split_name, "loss", loss);
      store.set_result(run_id, split_name, metric, value);
      progress.message(fmt::format("run {}: {} {} {:.3f}", run_id, split_name, metric, value));
      if (!std::isfinite(loss)) {
        store.finish_run(run_id, "nan", fmt::format("{} loss is {}", split_name, loss));
        return {run_id, "nan"};
      }
    }
    store.set_result(run_id, "train", "seconds", seconds_since(t_start));
    store.finish_run(run_id, "finished");
    return {run_id, "finished"};
  } catch (const std::exception& e) {
    progress.finish();
    store.finish_run(run_id, "failed", e.what());
    throw;
  }
}

}  // namespace ssr::train
