// Top-k routing with a regulariser on the router: the orthogonality of the experts' gate rows, or
// the entropy of the gate's distribution. Registered as `ortho` and `entropy`.
#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

// ||W_hat W_hat^T - I||_F^2 over the unit-normalised gate rows w (experts, d): the squared
// cosines of every ordered pair of distinct rows. Differentiable in w. Returns ().
torch::Tensor gate_orthogonality_loss(const torch::Tensor& w);

// Mean over tokens of the entropy of softmax(S), in nats. logits (tokens, experts) -> ().
torch::Tensor gate_entropy_loss(const torch::Tensor& logits);

enum class Regulariser { Orthogonality, Entropy };

// Vanilla top-k softmax routing plus coef * the regulariser.
class RegularisedRouter : public RouterImpl {
 public:
  RegularisedRouter(int64_t top_k, Regulariser reg, double coef);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  int64_t k_;
  Regulariser reg_;
  double coef_;
};

}  // namespace ssr::routers
