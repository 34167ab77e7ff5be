// Quantile balancing (Megatron-Core): top-k of S - beta, with beta per expert the dual variable of
// the balanced assignment LP, estimated per call as a column quantile and moved after each step.
#pragma once
#include <utility>

#include "routers/router.hpp"

namespace ssr::routers {

// One call's dual coordinate-descent step. logits (tokens, experts), beta (experts):
//   experts = top-k of S - beta (tokens, k);
//   alpha_t = the (k+1)-th largest of S_t - beta (each token's admission threshold);
//   beta_new[e] = the (c+1)-th largest over tokens of S[t, e] - alpha_t, c = floor(tokens k / experts),
// the bias at which expert e would admit c tokens given the others. Returns (experts, beta_new).
// `refuse_indivisible`: throw config::ConfigError unless tokens k divides by experts (Megatron).
std::pair<torch::Tensor, torch::Tensor> quantile_step(const torch::Tensor& logits, const torch::Tensor& beta, int64_t k,
                                                      bool refuse_indivisible = false);

class QuantileRouter : public RouterImpl {
 public:
  QuantileRouter(int64_t n_experts, int64_t top_k, double ema, bool refuse_indivisible);
  void end_step(const SumOverRanks& sum_over_ranks) override;

  torch::Tensor beta;  // (experts) float32 buffer, used only to select

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  int64_t k_;
  double ema_;
  bool refuse_;
  torch::Tensor accum_;  // (experts + 1) float32: summed beta_new of this step's training calls, then their count
};

}  // namespace ssr::routers
