#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

// cv^2 = unbiased variance / mean^2 of a vector (Shazeer's balance measure). x: (experts); ().
torch::Tensor cv_squared(const torch::Tensor& x);

// Shazeer et al. (2017) noisy top-k gating: H = S + N(0,1) * (softplus(x W_noise) + 0.01) in
// training, top-k of H, weights softmax over those k noisy logits, aux = coef * (cv^2(importance) +
// cv^2(load)) with the smooth normal-CDF load estimator. W_noise (d, experts) is trainable and
// zero-initialised as in Shazeer's paper (fastmoe's kaiming init is not used).
class NoisyRouter : public RouterImpl {
 public:
  NoisyRouter(int64_t d_model, int64_t n_experts, int64_t top_k, double coef);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 public:
  torch::Tensor w_noise;  // (d_model, experts)

 private:
  int64_t k_;
  double coef_;
};

}  // namespace ssr::routers
