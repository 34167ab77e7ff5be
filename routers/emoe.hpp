// Eigenbasis-guided routing (EMoE): tokens go to the experts whose masks weight the directions of
// a learned orthonormal basis in which the token has its energy. Registered as `emoe`.
#pragma once
#include "routers/router.hpp"

namespace ssr::routers {

class EmoeRouter : public RouterImpl {
 public:
  // The parameters draw from a generator forked off torch's default one without advancing it, so
  // the layers built after this router start from the same weights as with any other router.
  EmoeRouter(int64_t d_model, int64_t n_experts, int64_t top_k, int64_t rank, double tau, double ortho_coef);

  torch::Tensor basis;  // (d_model, rank) Q, orthonormal columns (kept so by end_step's retraction)
  torch::Tensor gamma;  // (rank) the weight of each basis direction
  torch::Tensor masks;  // (experts, rank) softmax over experts gives each expert its share of a direction
  torch::Tensor bias;   // (experts)

  // Q <- the Q factor of QR(Q), signs fixed so that R's diagonal is positive (the QR retraction
  // onto orthonormal columns; a no-op on a basis that is already orthonormal).
  void end_step(const SumOverRanks& sum_over_ranks) override;

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  int64_t k_;
  double tau_, ortho_;
};

}  // namespace ssr::routers
