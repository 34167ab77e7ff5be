#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

// Top-k of logits (tokens, experts) with weights softmax over the k selected logits.
Routing top_k_softmax(const torch::Tensor& logits, int64_t k);

// Weights softmax over the logits at given experts (tokens, k): differentiable in logits.
torch::Tensor softmax_at(const torch::Tensor& logits, const torch::Tensor& experts);

class VanillaRouter : public RouterImpl {
 public:
  explicit VanillaRouter(int64_t top_k);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 public:
 private:
  int64_t k_;
};

}  // namespace ssr::routers
