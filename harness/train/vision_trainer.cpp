#include "harness/train/vision_trainer.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <atomic>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <numbers>

#include "harness/data/images.hpp"
#include "harness/train/metrics.hpp"
#include "harness/train/progress.hpp"
#include "models/swin_moe.hpp"

namespace fs = std::filesystem;

namespace ssr::train {
namespace {

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal = sig; }

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const config::Config& cfg, models::SwinMoE& model) {
  const double lr = cfg.f("train.lr"), wd = cfg.f("train.weight_decay");
  const std::tuple<double, double> betas{cfg.f("train.beta1"), cfg.f("train.beta2")};
  if (cfg.s("train.optimizer") == "adam")
    return std::make_unique<torch::optim::Adam>(model->parameters(),
                                                torch::optim::AdamOptions(lr).betas(betas).weight_decay(wd));
  // timm's param groups: no decay on biases, norms and the relative position tables.
  std::vector<torch::Tensor> decay, no_decay = model->no_decay_parameters();
  for (const auto& p : model->parameters())
    if (std::none_of(no_decay.begin(), no_decay.end(), [&](const torch::Tensor& q) { return q.is_same(p); }))
      decay.push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(lr).betas(betas).weight_decay(wd)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(lr).betas(betas).weight_decay(0)));
  return std::make_unique<torch::optim::AdamW>(std::move(groups),
                                               torch::optim::AdamWOptions(lr).betas(betas).weight_decay(wd));
}

struct SplitScores {
  int64_t images = 0, top1 = 0, top5 = 0, skipped = 0;
  double nll = 0;
  std::vector<torch::Tensor> ood_score, ood_positive;  // per batch: (B) -MSP, (B) bool
};

// One pass over an eval split with the logits masked to its class subset.
SplitScores evaluate(models::SwinMoE& model, const data::ImageSplit& split, const config::Config& cfg,
                     torch::Device device, torch::Generator& gen) {
  torch::NoGradGuard no_grad;
  model->eval();
  data::ImageLoader loader(split, cfg, cfg.i("eval.batch_size"), /*train=*/false, 0);
  SplitScores s;
  data::ImageBatch b;
  while (loader.next(b)) {
    if (b.labels.size(0) == 0) continue;
    auto aux = torch::zeros({}, torch::TensorOptions().device(device));
    auto logits = train::mask_logits(model->forward(b.images.to(device), aux, gen).cpu(), split.class_subset);  // (B, C)
    auto in_dist = b.labels >= 0;                                                                                // (B)
    auto known = logits.index({in_dist});                                                                        // (B_in, C)
    auto labels = b.labels.index({in_dist});                                                                     // (B_in)
    if (labels.size(0) > 0) {
      s.top1 += top_k_correct(known, labels, 1);
      s.top5 += top_k_correct(known, labels, 5);
      s.nll += torch::nn::functional::cross_entropy(
                   known, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                   .item<double>();
    }
    s.images += labels.size(0);
    s.ood_score.push_back(-logits.softmax(-1).amax(-1));  // (B)
    s.ood_positive.push_back(~in_dist);                    // (B)
  }
  s.skipped = loader.skipped();
  model->train();
  return s;
}

double top1_of(const SplitScores& s) { return s.images > 0 ? 100.0 * s.top1 / s.images : NAN; }

}  // namespace

double vision_lr(const config::Config& cfg, int64_t step) {
  const double lr = cfg.f("train.lr"), warmup_lr = cfg.f("train.warmup_lr"), min_lr = cfg.f("train.min_lr");
  const int64_t warmup = cfg.i("train.warmup"), steps = cfg.i("train.steps");
  if (step <= warmup) return warmup_lr + (lr - warmup_lr) * static_cast<double>(step) / static_cast<double>(warmup);
  if (cfg.s("train.schedule") == "constant" || steps <= warmup) return lr;
  const double t = static_cast<double>(step - warmup) / static_cast<double>(steps - warmup);  // (0, 1]
  return min_lr + 0.5 * (lr - min_lr) * (1 + std::cos(std::numbers::pi * t));
}

Outcome train_vision(const config::Config& cfg, store::Store& store, const Options& opts) {
  if (opts.resume_run)
    throw config::ConfigError("--resume: model.arch=swin_moe runs keep no resumable checkpoint; start a new run");
  if (cfg.i("run.threads") > 0) torch::set_num_threads(static_cast<int>(cfg.i("run.threads")));
  if (cfg.s("run.device") == "cuda" && !torch::cuda::is_available())
    throw config::ConfigError("run.device: cuda requested but no CUDA device is available (use run.device=cpu)");
  const torch::Device device(cfg.s("run.device") == "cuda" ? torch::kCUDA : torch::kCPU);
  const int64_t seed = cfg.i("run.seed");
  torch::manual_seed(static_cast<uint64_t>(seed));
  torch::Generator gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));

  // Everything that can reject the job happens before the run row exists.
  const data::ImageData data = data::load_images(cfg);
  for (const auto& name : cfg.strings("eval.splits"))
    if (!data.splits.count(name))
      throw config::ConfigError(fmt::format("eval.splits: no split '{}' in {} (data.valid, data.test, data.imagenet_a/r/o)",
                                            name, cfg.s("data.dir")));
  const int64_t eval_every = cfg.i("train.eval_every");
  if (eval_every > 0 && !data.splits.count("valid"))
    throw config::ConfigError("train.eval_every: partial validation needs a valid split (set data.valid or data.holdout, or train.eval_every=0)");
  models::SwinMoE model(cfg);
  model->to(device);
  auto optimizer = make_optimizer(cfg, model);
  const int64_t B = cfg.i("train.batch_size"), steps = cfg.i("train.steps");
  // The loader's shuffling and augmentation seed comes from the run's generator.
  const auto loader_seed = static_cast<uint64_t>(torch::randint(1LL << 62, {1}, gen, torch::kInt64).item<int64_t>());
  data::ImageLoader loader(data.splits.at("train"), cfg, B, /*train=*/true, loader_seed);
  int64_t n_params = 0;
  for (const auto& p : model->parameters()) n_params += p.numel();

  const store::RunInfo info = store::this_machine(cfg.s("run.device"));
  int64_t run_id;
  if (opts.queued_run) {
    run_id = *opts.queued_run;
    store.start_run(run_id, info);
  } else {
    run_id = store.create_run(cfg.hash(), cfg.to_json(), seed, info);
  }
  const fs::path ckpt_dir = fs::path(cfg.s("run.out_dir")) / std::to_string(run_id);

  g_signal = 0;
  auto old_int = std::signal(SIGINT, on_signal);
  auto old_term = std::signal(SIGTERM, on_signal);
  struct Restore {
    decltype(old_int) i, t;
    ~Restore() { std::signal(SIGINT, i); std::signal(SIGTERM, t); }
  } restore{old_int, old_term};

  Progress progress(steps, cfg.i("run.log_every"), opts.quiet, "img");
  progress.message(fmt::format("run {}: {} steps of {} images ({} per epoch), {} parameters, config {}", run_id, steps,
                               B, data.splits.at("train").size(), n_params, cfg.hash()));

  const int64_t log_every = cfg.i("run.log_every");
  const double heartbeat_s = cfg.f("run.heartbeat_s"), clip = cfg.f("train.clip");
  const auto ce = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(cfg.f("train.label_smoothing"));
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
    double best_valid = -1;
    for (int64_t step = 1; step <= steps; ++step) {
      if (g_signal) {
        flush(step - 1);
        store.finish_run(run_id, "failed", fmt::format("interrupted by signal {} at step {}", int(g_signal), step - 1));
        progress.finish();
        return {run_id, "failed"};
      }
      const bool log_step = step % log_every == 0 || step == steps;
      model->collect_router_stats(log_step);
      const double lr = vision_lr(cfg, step);
      for (auto& g : optimizer->param_groups()) g.options().set_lr(lr);

      data::ImageBatch batch;
      const auto t_data = Clock::now();
      loader.next(batch);
      const double t_load = seconds_since(t_data);
      if (batch.labels.size(0) == 0) continue;  // every image of the batch was unreadable
      auto t0 = Clock::now();
      optimizer->zero_grad();
      auto aux = torch::zeros({}, torch::TensorOptions().device(device));
      auto logits = model->forward(batch.images.to(device), aux, gen);  // (B, classes)
      auto ce_loss = torch::nn::functional::cross_entropy(logits, batch.labels.to(device), ce);
      auto loss = ce_loss + aux;
      sync();
      const double t_fwd = seconds_since(t0);
      const double ce_value = ce_loss.item<double>(), aux_value = aux.item<double>();
      if (!std::isfinite(ce_value) || !std::isfinite(aux_value)) {
        metrics.push_back({step, "train", "loss", ce_value, seconds_since(t_start)});
        flush(step);
        store.finish_run(run_id, "nan", fmt::format("loss became {} at step {}", ce_value, step));
        progress.message(fmt::format("run {}: loss became {} at step {}; recorded as nan", run_id, ce_value, step));
        return {run_id, "nan"};
      }
      t0 = Clock::now();
      loss.backward();
      sync();
      const double t_bwd = seconds_since(t0);
      t0 = Clock::now();
      if (clip > 0) torch::nn::utils::clip_grad_norm_(model->parameters(), clip);
      optimizer->step();
      sync();
      const double t_opt = seconds_since(t0);
      timings.push_back({step, "data", t_load});
      timings.push_back({step, "forward", t_fwd});
      timings.push_back({step, "backward", t_bwd});
      timings.push_back({step, "optimizer", t_opt});
      timings.push_back({step, "step", t_fwd + t_bwd + t_opt});
      progress.update(step, ce_value, batch.labels.size(0));

      const double wall = seconds_since(t_start);
      if (log_step) {
        metrics.push_back({step, "train", "loss", ce_value, wall});
        metrics.push_back({step, "train", "aux", aux_value, wall});
        metrics.push_back({step, "train", "lr", lr, wall});
        metrics.push_back({step, "train", "images_per_s", batch.labels.size(0) / (t_fwd + t_bwd + t_opt), wall});
        metrics.push_back({step, "train", "skipped_images", static_cast<double>(loader.skipped()), wall});
        const auto stats = model->take_router_stats();
        for (size_t l = 0; l < stats.size(); ++l) {
          const auto& s = stats[l];
          const std::string p = fmt::format("layer{}/", l);
          metrics.push_back({step, "train", p + "load_cv", s.load_cv, wall});
          metrics.push_back({step, "train", p + "max_over_mean", s.max_over_mean, wall});
          metrics.push_back({step, "train", p + "dead_experts", double(s.dead_experts), wall});
          metrics.push_back({step, "train", p + "entropy", s.entropy, wall});
          metrics.push_back({step, "train", p + "sinkhorn_frac", s.sinkhorn_frac, wall});
        }
      }
      if (eval_every > 0 && (step % eval_every == 0 || step == steps)) {
        const auto v = evaluate(model, data.splits.at("valid"), cfg, device, gen);
        const double top1 = top1_of(v);
        metrics.push_back({step, "valid", "top1", top1, wall});
        metrics.push_back({step, "valid", "loss", v.nll / static_cast<double>(v.images), wall});
        progress.message(fmt::format("run {}: step {} valid top1 {:.2f} %", run_id, step, top1));
        if (top1 > best_valid) {
          best_valid = top1;
          fs::create_directories(ckpt_dir);
          torch::save(model, (ckpt_dir / "best.pt").string());
          store.set_result(run_id, "train", "best_step", static_cast<double>(step));
        }
      }
      if (log_step || seconds_since(last_heartbeat) > heartbeat_s) flush(step);
    }
    flush(steps);
    progress.finish();
    fs::create_directories(ckpt_dir);
    torch::save(model, (ckpt_dir / "last.pt").string());

    // Final evaluation of the best partial-validation checkpoint (eval.checkpoint=best) or the last step.
    if (cfg.s("eval.checkpoint") == "best" && fs::exists(ckpt_dir / "best.pt"))
      torch::load(model, (ckpt_dir / "best.pt").string(), device);
    for (const auto& name : cfg.strings("eval.splits")) {
      const auto& split = data.splits.at(name);
      const auto s = evaluate(model, split, cfg, device, gen);
      store.set_result(run_id, name, "images", static_cast<double>(s.images));
      store.set_result(run_id, name, "skipped_images", static_cast<double>(s.skipped));
      if (name == "imagenet-o") {
        const auto m = ood_metrics(torch::cat(s.ood_score), torch::cat(s.ood_positive));
        store.set_result(run_id, name, "aupr", m.aupr);
        store.set_result(run_id, name, "auroc", m.auroc);
        store.set_result(run_id, name, "fpr95", m.fpr95);
        progress.message(fmt::format("run {}: {} aupr {:.2f} auroc {:.2f} fpr95 {:.2f}", run_id, name, m.aupr,
                                     m.auroc, m.fpr95));
        continue;
      }
      const double top1 = top1_of(s), top5 = s.images > 0 ? 100.0 * s.top5 / s.images : NAN;
      store.set_result(run_id, name, "top1", top1);
      if (split.class_subset.empty()) {
        store.set_result(run_id, name, "top5", top5);
        store.set_result(run_id, name, "loss", s.nll / static_cast<double>(s.images));
      }
      progress.message(fmt::format("run {}: {} top1 {:.2f} % top5 {:.2f} %{}", run_id, name, top1, top5,
                                   s.skipped > 0 ? fmt::format(" ({} unreadable images skipped)", s.skipped) : ""));
      if (!std::isfinite(s.nll)) {
        store.finish_run(run_id, "nan", fmt::format("{} loss is {}", name, s.nll));
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
