// Small pieces shared by the routers: deterministic top-k and draws from the caller's generator.
#pragma once
#include <torch/torch.h>

#include <utility>

namespace ssr::routers {

// Top-k along the last dim, descending, ties to the lower index on every device (a stable sort;
// torch::topk does not promise an order among equal values). Returns (values, indices), each (rows, k).
std::pair<torch::Tensor, torch::Tensor> stable_top_k(const torch::Tensor& x, int64_t k);

// Half and bfloat16 promoted to float32, float32 and float64 kept: losses and plans are computed
// at least in float32.
torch::Tensor at_least_float(const torch::Tensor& x);

// One U(0,1) draw from gen (a host sync when gen is a CUDA generator).
double draw_uniform(torch::Generator& gen);

// Standard normal draws shaped and placed like `like`, from gen (drawn on gen's device, then moved).
torch::Tensor draw_normal(const torch::Tensor& like, torch::Generator& gen);

// A CPU generator seeded from a copy of torch's default one, which is not advanced: a router that
// initialises its own parameters from it leaves every layer built after it where it would be with
// any other router (same-seed runs then differ by routing alone).
torch::Generator forked_default_generator();

}  // namespace ssr::routers
