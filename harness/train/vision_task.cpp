#include "harness/train/vision_task.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include <chrono>
#include <cmath>

#include "harness/data/images.hpp"
#include "harness/train/memory.hpp"
#include "harness/train/metrics.hpp"
#include "models/precision.hpp"
#include "models/swin_moe.hpp"

namespace ssr::train {
namespace {

struct SplitScores {
  int64_t images = 0, top1 = 0, top5 = 0, skipped = 0;
  double nll = 0;
  std::vector<torch::Tensor> ood_score, ood_positive;  // per batch: (B) -MSP, (B) bool
};

double top1_of(const SplitScores& s) { return s.images > 0 ? 100.0 * s.top1 / s.images : NAN; }

class VisionTask final : public Task {
 public:
  VisionTask(const config::Config& cfg, const Options& /*opts*/)
      : cfg_(cfg), device_(device_of(cfg)), gen_(seeded(cfg)), data_(data::load_images(cfg)), model_(nullptr) {
    for (const auto& name : cfg.strings("eval.splits"))
      if (!data_.splits.count(name))
        throw config::ConfigError(fmt::format(
            "eval.splits: no split '{}' in {} (data.valid, data.test, data.imagenet_a/r/o)", name, cfg.s("data.dir")));
    if (cfg.i("train.eval_every") > 0 && !data_.splits.count("valid"))
      throw config::ConfigError(
          "train.eval_every: partial validation needs a valid split (set data.valid or data.holdout, or "
          "train.eval_every=0)");
    check_vision_memory(cfg, device_);
    model_ = models::SwinMoE(cfg);
    model_->to(device_);
    // The loader's shuffling and augmentation seed comes from the run's generator.
    const auto loader_seed = static_cast<uint64_t>(torch::randint(1LL << 62, {1}, gen_, torch::kInt64).item<int64_t>());
    loader_ = std::make_unique<data::ImageLoader>(data_.splits.at("train"), cfg, cfg.i("train.batch_size"),
                                                  /*train=*/true, loader_seed);
    // Routers draw from their own stream, as in the LM: a router's draws do not move the others'.
    router_gen_ = at::make_generator<at::CPUGeneratorImpl>(dist::stream_seed(cfg.i("run.seed"), dist::kRouterStream));
    for (auto& m : model_->moe_layers) m->use_router_generator(router_gen_);
  }

  torch::nn::Module& model() override { return *model_; }
  std::vector<models::MoE> moe_layers() override { return model_->moe_layers; }
  std::vector<torch::Tensor> no_decay_parameters() override { return model_->no_decay_parameters(); }
  torch::Device device() const override { return device_; }
  store::RunInfo run_info() const override { return store::this_machine(cfg_.s("run.device")); }
  std::string unit() const override { return "img"; }
  std::string rate_metric() const override { return "images_per_s"; }
  std::string describe() const override {
    return fmt::format("{} steps of {} images ({} per epoch)", cfg_.i("train.steps"), cfg_.i("train.batch_size"),
                       data_.splits.at("train").size());
  }

  StepResult forward_backward(int64_t /*step*/, bool bf16) override {
    StepResult r;
    data::ImageBatch batch;
    auto t0 = Clock::now();
    loader_->next(batch);
    r.t_data = seconds_since(t0);
    if (batch.labels.size(0) == 0) return r;  // every image of the batch was unreadable
    t0 = Clock::now();
    auto aux = torch::zeros({}, torch::TensorOptions().device(device_));
    torch::Tensor logits;  // (B, classes)
    {
      models::AutocastGuard autocast(device_, bf16);
      logits = model_->forward(batch.images.to(device_), aux, gen_);
    }
    logits = logits.to(torch::kFloat);
    // Mixed batches (mixup / cutmix) carry soft targets with the label smoothing folded in.
    auto ce_loss = batch.targets.defined()
                       ? -(batch.targets.to(device_) * logits.log_softmax(-1)).sum(-1).mean()
                       : torch::nn::functional::cross_entropy(logits, batch.labels.to(device_), ce_);
    auto loss = ce_loss + aux;
    sync();
    r.t_forward = seconds_since(t0);
    r.loss_sum = ce_loss.item<double>();
    r.aux_sum = aux.item<double>();
    r.units = batch.labels.size(0);
    if (!std::isfinite(r.loss_sum) || !std::isfinite(r.aux_sum)) return r;  // the loop records nan
    t0 = Clock::now();
    loss.backward();
    sync();
    r.t_backward = seconds_since(t0);
    return r;
  }

  void log_metrics(int64_t step, RunLog& log) override {
    log.metric(step, "train", "skipped_images", static_cast<double>(loader_->skipped()));
  }

  Validation validate(int64_t /*step*/, bool bf16) override {
    const auto v = score(data_.splits.at("valid"), bf16);
    const double top1 = top1_of(v);
    return {-top1,
            {{"top1", top1}, {"loss", v.nll / static_cast<double>(v.images)}},
            fmt::format("valid top1 {:.2f} %", top1)};
  }

  // The loader draws batch t from t alone, so the step and the skipped count are its position.
  void save(torch::serialize::OutputArchive& ar, int64_t /*step*/) override {
    ar.write("gen_state", gen_.get_state());
    ar.write("router_gen_state", router_gen_.get_state());
    ar.write("data_position", torch::tensor({loader_->skipped()}));
  }
  void load(torch::serialize::InputArchive& ar, int64_t step) override {
    // A fresh tensor for every read: reading into a defined tensor re-points it (set_).
    torch::Tensor g, r, position;
    ar.read("gen_state", g);
    gen_.set_state(g.cpu());
    ar.read("router_gen_state", r);
    router_gen_.set_state(r.cpu());
    ar.read("data_position", position);
    loader_->seek(step, position[0].item<int64_t>());
  }

  double evaluate(const std::string& name, const std::string& stored_as, bool bf16, RunLog& log,
                  Progress& progress) override {
    const auto& split = data_.splits.at(name);
    const auto s = score(split, bf16);
    log.result(stored_as, "images", static_cast<double>(s.images));
    log.result(stored_as, "skipped_images", static_cast<double>(s.skipped));
    if (name == "imagenet-o") {
      const auto m = ood_metrics(torch::cat(s.ood_score), torch::cat(s.ood_positive));
      log.result(stored_as, "aupr", m.aupr);
      log.result(stored_as, "auroc", m.auroc);
      log.result(stored_as, "fpr95", m.fpr95);
      progress.message(fmt::format("run {}: {} aupr {:.2f} auroc {:.2f} fpr95 {:.2f}", log.id(), stored_as, m.aupr,
                                   m.auroc, m.fpr95));
      return 0;  // OOD scores have no loss
    }
    const double top1 = top1_of(s), top5 = s.images > 0 ? 100.0 * s.top5 / s.images : NAN;
    log.result(stored_as, "top1", top1);
    if (split.class_subset.empty()) {
      log.result(stored_as, "top5", top5);
      log.result(stored_as, "loss", s.nll / static_cast<double>(s.images));
    }
    progress.message(fmt::format("run {}: {} top1 {:.2f} % top5 {:.2f} %{}", log.id(), stored_as, top1, top5,
                                 s.skipped > 0 ? fmt::format(" ({} unreadable images skipped)", s.skipped) : ""));
    return s.nll;
  }

 private:
  static torch::Device device_of(const config::Config& cfg) {
    if (cfg.i("run.nproc") > 1)
      throw config::ConfigError(
          "run.nproc: data-parallel training is implemented for the language model only; "
          "train model.arch=swin_moe with run.nproc=1");
    if (cfg.i("run.threads") > 0) torch::set_num_threads(static_cast<int>(cfg.i("run.threads")));
    if (cfg.s("run.device") == "cuda" && !torch::cuda::is_available())
      throw config::ConfigError("run.device: cuda requested but no CUDA device is available (use run.device=cpu)");
    return torch::Device(cfg.s("run.device") == "cuda" ? torch::kCUDA : torch::kCPU);
  }
  // Seeds torch's default generator (initial weights) and returns the run's own (dropout, drop
  // path, the loader's seed).
  static torch::Generator seeded(const config::Config& cfg) {
    const auto seed = static_cast<uint64_t>(cfg.i("run.seed"));
    torch::manual_seed(seed);
    return at::make_generator<at::CPUGeneratorImpl>(seed);
  }
  void sync() const {
    if (device_.is_cuda()) torch::cuda::synchronize();
  }

  // One pass over an eval split with the logits masked to its class subset.
  SplitScores score(const data::ImageSplit& split, bool bf16) {
    torch::NoGradGuard no_grad;
    model_->eval();
    data::ImageLoader loader(split, cfg_, cfg_.i("eval.batch_size"), /*train=*/false, 0);
    SplitScores s;
    data::ImageBatch b;
    while (loader.next(b)) {
      if (b.labels.size(0) == 0) continue;
      auto aux = torch::zeros({}, torch::TensorOptions().device(device_));
      torch::Tensor logits;  // (B, C)
      {
        models::AutocastGuard autocast(device_, bf16);
        logits = model_->forward(b.images.to(device_), aux, gen_);
      }
      logits = train::mask_logits(logits.to(torch::kFloat).cpu(), split.class_subset);  // (B, C)
      auto in_dist = b.labels >= 0;                                                     // (B)
      auto known = logits.index({in_dist});                                             // (B_in, C)
      auto labels = b.labels.index({in_dist});                                          // (B_in)
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
    model_->train();
    return s;
  }

  const config::Config& cfg_;
  const torch::Device device_;
  torch::Generator gen_;  // dropout, drop path, the loader's seed
  const data::ImageData data_;
  models::SwinMoE model_;
  std::unique_ptr<data::ImageLoader> loader_;
  torch::Generator router_gen_;
  const torch::nn::functional::CrossEntropyFuncOptions ce_ =
      torch::nn::functional::CrossEntropyFuncOptions().label_smoothing(cfg_.f("train.label_smoothing"));
};

}  // namespace

std::unique_ptr<Task> make_vision_task(const config::Config& cfg, const Options& opts) {
  return std::make_unique<VisionTask>(cfg, opts);
}

}  // namespace ssr::train
