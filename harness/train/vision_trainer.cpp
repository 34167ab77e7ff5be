#include "harness/train/vision_trainer.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <cmath>
#include <filesystem>

#include "harness/data/images.hpp"
#include "harness/train/metrics.hpp"
#include "harness/train/checkpoint.hpp"
#include "harness/train/progress.hpp"
#include "harness/train/run_log.hpp"
#include "harness/train/schedule.hpp"
#include "models/swin_moe.hpp"

namespace fs = std::filesystem;

namespace ssr::train {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

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
    auto logits =
        train::mask_logits(model->forward(b.images.to(device), aux, gen).cpu(), split.class_subset);  // (B, C)
    auto in_dist = b.labels >= 0;                                                                     // (B)
    auto known = logits.index({in_dist});                                                             // (B_in, C)
    auto labels = b.labels.index({in_dist});                                                          // (B_in)
    if (labels.size(0) > 0) {
      s.top1 += top_k_correct(known, labels, 1);
      s.top5 += top_k_correct(known, labels, 5);
      s.nll += torch::nn::functional::cross_entropy(
                   known, labels, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum))
                   .item<double>();
    }
    s.images += labels.size(0);
    s.ood_score.push_back(-logits.softmax(-1).amax(-1));  // (B)
    s.ood_positive.push_back(~in_dist);                   // (B)
  }
  s.skipped = loader.skipped();
  model->train();
  return s;
}

double top1_of(const SplitScores& s) { return s.images > 0 ? 100.0 * s.top1 / s.images : NAN; }

// What a bit-for-bit continuation needs besides weights and optimiser moments: the loader draws
// batch t from t alone, so the step is its position.
struct Snapshot {
  int64_t step = 0, best_step = 0, skipped = 0;
  double best_valid = -1;  // best partial-validation top-1 so far
};

void save_checkpoint(const fs::path& path, models::SwinMoE& model, torch::optim::Optimizer& opt,
                     const torch::Generator& gen, const torch::Generator& router_gen, const Snapshot& snap) {
  torch::serialize::OutputArchive ar, m, o;
  model->save(m);
  opt.save(o);
  ar.write("model", m);
  ar.write("optimizer", o);
  ar.write("gen_state", gen.get_state());
  ar.write("router_gen_state", router_gen.get_state());
  ar.write("default_gen_state", at::detail::getDefaultCPUGenerator().get_state());
  ar.write("counters", torch::tensor({snap.step, snap.best_step, snap.skipped}));
  ar.write("best_valid", torch::tensor(snap.best_valid, torch::kDouble));
  save_atomically(ar, path);
}

// Weights only without `opt` (the final evaluation of best.pt).
Snapshot load_checkpoint(const fs::path& path, models::SwinMoE& model, torch::optim::Optimizer* opt,
                         torch::Generator* gen, torch::Generator* router_gen, torch::Device device) {
  torch::serialize::InputArchive ar, m;
  ar.load_from(path.string(), device);
  ar.read("model", m);
  model->load(m);
  Snapshot snap;
  if (!opt) return snap;
  torch::serialize::InputArchive o;
  ar.read("optimizer", o);
  opt->load(o);
  torch::Tensor g, r, d, counters, best;
  ar.read("gen_state", g);
  ar.read("router_gen_state", r);
  ar.read("default_gen_state", d);
  gen->set_state(g.cpu());
  router_gen->set_state(r.cpu());
  at::Generator default_gen = at::detail::getDefaultCPUGenerator();  // shares the global state
  default_gen.set_state(d.cpu());
  ar.read("counters", counters);
  ar.read("best_valid", best);
  snap.step = counters[0].item<int64_t>();
  snap.best_step = counters[1].item<int64_t>();
  snap.skipped = counters[2].item<int64_t>();
  snap.best_valid = best.item<double>();
  return snap;
}

}  // namespace

Outcome train_vision(const config::Config& cfg, store::Store& store, const Options& opts) {
  if (cfg.i("run.nproc") > 1)
    throw config::ConfigError(
        "run.nproc: data-parallel training is implemented for the language model only; "
        "train model.arch=swin_moe with run.nproc=1");
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
      throw config::ConfigError(fmt::format(
          "eval.splits: no split '{}' in {} (data.valid, data.test, data.imagenet_a/r/o)", name, cfg.s("data.dir")));
  const int64_t eval_every = cfg.i("train.eval_every");
  if (eval_every > 0 && !data.splits.count("valid"))
    throw config::ConfigError(
        "train.eval_every: partial validation needs a valid split (set data.valid or data.holdout, or "
        "train.eval_every=0)");
  models::SwinMoE model(cfg);
  model->to(device);
  auto optimizer = make_optimizer(cfg, model->parameters(), model->no_decay_parameters());
  const int64_t B = cfg.i("train.batch_size"), steps = cfg.i("train.steps");
  // The loader's shuffling and augmentation seed comes from the run's generator.
  const auto loader_seed = static_cast<uint64_t>(torch::randint(1LL << 62, {1}, gen, torch::kInt64).item<int64_t>());
  data::ImageLoader loader(data.splits.at("train"), cfg, B, /*train=*/true, loader_seed);
  // Routers draw from their own stream, as in the LM trainer: a router's draws do not move the others'.
  torch::Generator router_gen = at::make_generator<at::CPUGeneratorImpl>(dist::stream_seed(seed, dist::kRouterStream));
  model->use_router_generator(router_gen);
  int64_t n_params = 0;
  for (const auto& p : model->parameters()) n_params += p.numel();

  Snapshot snap;
  if (opts.run) {
    const fs::path last = run_dir(cfg.s("run.out_dir"), store, *opts.run) / "last.pt";
    if (fs::exists(last)) {
      snap = load_checkpoint(last, model, optimizer.get(), &gen, &router_gen, device);
      loader.seek(snap.step, snap.skipped);
    }
  }
  RunLog log(store, cfg, /*lead=*/true);
  const int64_t run_id = log.open(store::this_machine(cfg.s("run.device")), opts.run, snap.step);
  const fs::path ckpt_dir = run_dir(cfg.s("run.out_dir"), store, run_id);
  auto snapshot = [&](int64_t step) {
    snap.step = step;
    snap.skipped = loader.skipped();
    return snap;
  };

  Progress progress(steps, cfg.i("run.log_every"), opts.quiet, "img");
  progress.message(fmt::format("run {}: {} steps of {} images ({} per epoch), {} parameters, config {}", run_id, steps,
                               B, data.splits.at("train").size(), n_params, cfg.hash()));

  const int64_t log_every = cfg.i("run.log_every"), ckpt_every = cfg.i("train.checkpoint_every");
  const double clip = cfg.f("train.clip");
  auto sync = [&] {
    if (device.is_cuda()) torch::cuda::synchronize();
  };
  const auto ce = torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(cfg.f("train.label_smoothing"));
  try {
    model->train();
    for (int64_t step = snap.step + 1; step <= steps; ++step) {
      if (const int sig = log.interrupted()) {
        log.flush(step - 1);
        log.finish("failed", fmt::format("interrupted by signal {} at step {}", sig, step - 1));
        progress.finish();
        return {run_id, "failed"};
      }
      const bool log_step = step % log_every == 0 || step == steps;
      model->collect_router_stats(log_step);
      const double lr = learning_rate(cfg, step);
      set_learning_rate(*optimizer, lr);

      data::ImageBatch batch;
      const auto t_data = Clock::now();
      loader.next(batch);
      const double t_load = seconds_since(t_data);
      if (batch.labels.size(0) == 0) continue;  // every image of the batch was unreadable
      auto t0 = Clock::now();
      optimizer->zero_grad();
      auto aux = torch::zeros({}, torch::TensorOptions().device(device));
      auto logits = model->forward(batch.images.to(device), aux, gen);  // (B, classes)
      // Mixed batches (mixup / cutmix) carry soft targets with the label smoothing folded in.
      auto ce_loss = batch.targets.defined()
                         ? -(batch.targets.to(device) * logits.log_softmax(-1)).sum(-1).mean()
                         : torch::nn::functional::cross_entropy(logits, batch.labels.to(device), ce);
      auto loss = ce_loss + aux;
      sync();
      const double t_fwd = seconds_since(t0);
      const double ce_value = ce_loss.item<double>(), aux_value = aux.item<double>();
      if (!std::isfinite(ce_value) || !std::isfinite(aux_value)) {
        log.metric(step, "train", "loss", ce_value);
        log.flush(step);
        log.finish("nan", fmt::format("loss became {} at step {}", ce_value, step));
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
      log.timing(step, "data", t_load);
      log.timing(step, "forward", t_fwd);
      log.timing(step, "backward", t_bwd);
      log.timing(step, "optimizer", t_opt);
      log.timing(step, "step", t_fwd + t_bwd + t_opt);
      progress.update(step, ce_value, batch.labels.size(0));

      if (log_step) {
        log.metric(step, "train", "loss", ce_value);
        log.metric(step, "train", "aux", aux_value);
        log.metric(step, "train", "lr", lr);
        log.metric(step, "train", "images_per_s", batch.labels.size(0) / (t_fwd + t_bwd + t_opt));
        log.metric(step, "train", "skipped_images", static_cast<double>(loader.skipped()));
        log.router_stats(step, model->take_router_stats());
      }
      if (eval_every > 0 && (step % eval_every == 0 || step == steps)) {
        const auto v = evaluate(model, data.splits.at("valid"), cfg, device, gen);
        const double top1 = top1_of(v);
        log.metric(step, "valid", "top1", top1);
        log.metric(step, "valid", "loss", v.nll / static_cast<double>(v.images));
        progress.message(fmt::format("run {}: step {} valid top1 {:.2f} %", run_id, step, top1));
        if (top1 > snap.best_valid) {
          snap.best_valid = top1;
          snap.best_step = step;
          save_checkpoint(ckpt_dir / "best.pt", model, *optimizer, gen, router_gen, snapshot(step));
        }
      }
      if ((ckpt_every > 0 && step % ckpt_every == 0) || step == steps)
        save_checkpoint(ckpt_dir / "last.pt", model, *optimizer, gen, router_gen, snapshot(step));
      if (log_step)
        log.flush(step);
      else
        log.flush_if_due(step);
    }
    log.flush(steps);
    progress.finish();

    // Final evaluation of the best partial-validation checkpoint (eval.checkpoint=best) or the last step.
    if (cfg.s("eval.checkpoint") == "best" && fs::exists(ckpt_dir / "best.pt")) {
      load_checkpoint(ckpt_dir / "best.pt", model, nullptr, nullptr, nullptr, device);
      log.result("train", "best_step", static_cast<double>(snap.best_step));
    }
    for (const auto& name : cfg.strings("eval.splits")) {
      const auto& split = data.splits.at(name);
      const auto s = evaluate(model, split, cfg, device, gen);
      log.result(name, "images", static_cast<double>(s.images));
      log.result(name, "skipped_images", static_cast<double>(s.skipped));
      if (name == "imagenet-o") {
        const auto m = ood_metrics(torch::cat(s.ood_score), torch::cat(s.ood_positive));
        log.result(name, "aupr", m.aupr);
        log.result(name, "auroc", m.auroc);
        log.result(name, "fpr95", m.fpr95);
        progress.message(
            fmt::format("run {}: {} aupr {:.2f} auroc {:.2f} fpr95 {:.2f}", run_id, name, m.aupr, m.auroc, m.fpr95));
        continue;
      }
      const double top1 = top1_of(s), top5 = s.images > 0 ? 100.0 * s.top5 / s.images : NAN;
      log.result(name, "top1", top1);
      if (split.class_subset.empty()) {
        log.result(name, "top5", top5);
        log.result(name, "loss", s.nll / static_cast<double>(s.images));
      }
      progress.message(fmt::format("run {}: {} top1 {:.2f} % top5 {:.2f} %{}", run_id, name, top1, top5,
                                   s.skipped > 0 ? fmt::format(" ({} unreadable images skipped)", s.skipped) : ""));
      if (!std::isfinite(s.nll)) {
        log.finish("nan", fmt::format("{} loss is {}", name, s.nll));
        return {run_id, "nan"};
      }
    }
    log.result("train", "seconds", log.wall());
    log.finish("finished");
    return {run_id, "finished"};
  } catch (const std::exception& e) {
    progress.finish();
    log.finish("failed", e.what());
    throw;
  }
}

}  // namespace ssr::train
