// The optimizer and learning-rate schedule of every trainer, from the train.* keys.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <vector>

#include "harness/config/config.hpp"

namespace ssr::train {

// lr of update `step` (1-based): linear from train.warmup_lr to train.lr over train.warmup steps
// (the reference LM's LambdaLR at warmup_lr 0), then constant, or cosine down to train.min_lr at
// train.steps (timm's and nanoGPT's decay).
double learning_rate(const config::Config& cfg, int64_t step);

// train.optimizer over `params`: adam (L2 weight decay on every parameter, the reference LM's) or
// adamw (decoupled decay, none on `no_decay`: biases, norms, position tables, as timm and nanoGPT
// group them).
std::unique_ptr<torch::optim::Optimizer> make_optimizer(const config::Config& cfg,
                                                        const std::vector<torch::Tensor>& params,
                                                        const std::vector<torch::Tensor>& no_decay);

// Sets every parameter group's lr.
void set_learning_rate(torch::optim::Optimizer& opt, double lr);

}  // namespace ssr::train
