// Refuses, before any allocation, a training run that cannot fit its device: a lower bound on the
// bytes it needs (weights, gradients and Adam's two moments in float32, plus what the model
// keeps per step), so that nothing that fits is refused and nothing that cannot ends in an
// allocator's message that names no key.
#pragma once
#include <torch/torch.h>

#include <cstdint>

#include "harness/config/config.hpp"

namespace ssr::train {

// The Switch-style LM over `vocab` tokens, `rows` streams on this rank.
void check_lm_memory(const config::Config& cfg, torch::Device device, int64_t rows, int64_t vocab);
// Swin(-MoE) at train.batch_size images.
void check_vision_memory(const config::Config& cfg, torch::Device device);

// Lower bounds on the parameter counts, from the config alone (the models' parameter_count()
// builds the model, which is what must not happen first).
double lm_params_lower_bound(const config::Config& cfg, int64_t vocab);
double swin_params_lower_bound(const config::Config& cfg);

}  // namespace ssr::train
