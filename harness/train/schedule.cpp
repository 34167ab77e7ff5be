#include "harness/train/schedule.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>

#include "harness/train/fused_adam.hpp"

namespace ssr::train {

double learning_rate(const config::Config& cfg, int64_t step) {
  const double lr = cfg.f("train.lr"), warmup_lr = cfg.f("train.warmup_lr"), min_lr = cfg.f("train.min_lr");
  const int64_t warmup = cfg.i("train.warmup"), steps = cfg.i("train.steps");
  // (step / warmup) first: at warmup_lr 0 this is the reference LM's lr * min(1, step / warmup) to the bit.
  if (warmup > 0 && step <= warmup)
    return warmup_lr + (lr - warmup_lr) * (static_cast<double>(step) / static_cast<double>(warmup));
  if (cfg.s("train.schedule") == "constant" || steps <= warmup) return lr;
  const double t = static_cast<double>(step - warmup) / static_cast<double>(steps - warmup);  // (0, 1]
  return min_lr + 0.5 * (lr - min_lr) * (1 + std::cos(std::numbers::pi * t));
}

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const config::Config& cfg,
                                                        const std::vector<torch::Tensor>& params,
                                                        const std::vector<torch::Tensor>& no_decay) {
  const double lr = cfg.f("train.lr"), wd = cfg.f("train.weight_decay");
  const std::tuple<double, double> betas{cfg.f("train.beta1"), cfg.f("train.beta2")};
  const bool fused = cfg.s("train.optimizer_impl") == "fused";
  if (cfg.s("train.optimizer") == "adam") {
    const auto o = torch::optim::AdamOptions(lr).betas(betas).weight_decay(wd);
    if (fused) return std::make_unique<FusedAdam>(params, o);
    return std::make_unique<torch::optim::Adam>(params, o);
  }
  std::vector<torch::Tensor> decay;
  for (const auto& p : params)
    if (std::none_of(no_decay.begin(), no_decay.end(), [&](const torch::Tensor& q) { return q.is_same(p); }))
      decay.push_back(p);
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(lr).betas(betas).weight_decay(wd)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(lr).betas(betas).weight_decay(0)));
  const auto o = torch::optim::AdamWOptions(lr).betas(betas).weight_decay(wd);
  if (fused) return std::make_unique<FusedAdamW>(std::move(groups), o);
  return std::make_unique<torch::optim::AdamW>(std::move(groups), o);
}

void set_learning_rate(torch::optim::Optimizer& opt, double lr) {
  for (auto& g : opt.param_groups()) g.options().set_lr(lr);
}

}  // namespace ssr::train
