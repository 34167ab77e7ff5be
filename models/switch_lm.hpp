// The reference Switch-style LM of the paper's language-modelling experiments
// (../shared/spec/reference-setup.md section 1): interleaved attention / SMoE layers, post-LN,
// a fixed attention span over a cache of previous segments' layer inputs, untied output layer.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "harness/config/config.hpp"
#include "routers/router.hpp"

namespace ssr::models {

// Per-stream memory carried across consecutive segments: one cache per layer.
struct LMState {
  std::vector<torch::Tensor> cache;  // n_layers x (streams, attn_span, d_model), detached
};

struct LMOutput {
  torch::Tensor nll;  // () mean negative log-likelihood over the segment's target tokens
  torch::Tensor aux;  // () sum of the routers' auxiliary losses over layers
};

class SwitchLMImpl : public torch::nn::Module {
 public:
  SwitchLMImpl(const config::Config& cfg, int64_t vocab_size);

  // Zero caches for `streams` streams (the reference starts every stream from zeros).
  LMState initial_state(int64_t streams) const;

  // tokens, targets: (streams, seq_len) int64. Updates `state` to the next segment's caches.
  LMOutput forward(const torch::Tensor& tokens, const torch::Tensor& targets, LMState& state,
                   torch::Generator& gen);

  // Per-layer routing statistics accumulated since the last call (and reset them).
  std::vector<routers::RouterStats> take_router_stats();
  // Ask the MoE layers to accumulate statistics during the next forwards (logging steps only).
  void collect_router_stats(bool on);
};
TORCH_MODULE(SwitchLM);

}  // namespace ssr::models
