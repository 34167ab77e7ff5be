// Score-based top-k routing as production MoE frameworks do it (DeepSeek-V3, Megatron-Core,
// torchtitan): sigmoid (or softmax) scores, selection by the top-k of score + a per-expert bias
// that an auxiliary-loss-free rule moves towards balance after every step, combine weights from
// the unbiased scores normalised over the selected experts, and DeepSeek-V3's optional
// sequence-wise balance loss. Registered as `sigmoid` (no bias) and `aux-free`.
#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

enum class Score { Sigmoid, Softmax };

struct ScoreRouterOptions {
  Score score = Score::Sigmoid;
  double bias_rate = 0;           // u: b_i += u * sign(mean load - load_i) after each step (0 = no bias)
  bool bias_recenter = false;     // subtract the update's mean, so the biases keep zero mean (torchtitan)
  double seq_aux_coef = 0;        // alpha of the sequence-wise balance loss (0 = off)
  bool k1_raw = false;            // top-1: the raw score as the weight (Megatron-Core), not normalised to 1
  bool bias_counts_kept = false;  // the bias follows the slots kept after capacity (Megatron-Core), not all routed
};

// DeepSeek-V3's complementary balance loss over one router call's T tokens (treated as one
// sequence): sum_i f_i P_i with f_i = E / (k T) * (tokens that chose i) and P_i the mean over
// tokens of s_i / sum_j s_j. scores (tokens, experts), experts (tokens, k) -> () (coefficient not applied).
torch::Tensor sequence_balance_loss(const torch::Tensor& scores, const torch::Tensor& experts);

class ScoreRouterImpl : public RouterImpl {
 public:
  ScoreRouterImpl(int64_t n_experts, int64_t top_k, ScoreRouterOptions opt);
  void end_step(const SumOverRanks& sum_over_ranks) override;
  void observe(const Routing& final, Mode mode) override;

  torch::Tensor expert_bias;  // (experts) float32 buffer, used only to select

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  int64_t k_;
  ScoreRouterOptions opt_;
  torch::Tensor load_;  // (experts) float32: tokens each expert took in training calls since the last step
};

}  // namespace ssr::routers
