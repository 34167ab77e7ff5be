#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

// Expert capacity of the Tutel gate for `tokens` tokens: k * int(factor * ceil(tokens / experts)).
int64_t swin_moe_capacity(int64_t tokens, int64_t experts, int64_t k, double factor);

// Tutel's balance loss: (cv^2(importance) + cv^2(load)) / 2 with importance = column sums of
// probs, load = column sums of Phi((probs - threshold) / (gate_noise / E)) and threshold the
// noisy logit of each token's k-th choice. cv^2 = unbiased var / (mean^2 + 1e-10).
// probs (tokens, experts) softmax of the clean logits, threshold (tokens) -> ().
torch::Tensor swin_moe_balance_loss(const torch::Tensor& probs, const torch::Tensor& threshold, double gate_noise);

class SwinMoeGate : public RouterImpl {
 public:
  SwinMoeGate(int64_t top_k, double gate_noise, double capacity_factor, double coef);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 public:
 private:
  int64_t k_;
  double gate_noise_, capacity_factor_, coef_;
};

}  // namespace ssr::routers
