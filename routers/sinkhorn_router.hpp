#pragma once
#include "routers/router.hpp"
#include "routers/sinkhorn.hpp"

namespace ssr::routers {

enum class Cost {
  Linear,   // C = S (SSR-L)
  Softmax,  // C = row-softmax(S) (SSR-S)
};

Cost cost_kind(const std::string& name);
// The transport cost of the gating scores, detached. logits: (tokens, experts).
torch::Tensor transport_cost(const torch::Tensor& logits, Cost cost);

// Poisons weights with NaN when the plan overflowed, so that a run fails visibly (paper Table 6
// records NaN) instead of routing on a garbage plan.
void fill_sinkhorn_fields(Routing& r, const SinkhornResult& res);

// Sinkhorn-based SMoE baseline (the SSR authors' prototype, reference-setup 1.6): at every
// forward, train and eval, Pi from C; experts = top-k of Pi's row; weights = softmax of the
// original logits at those experts. No auxiliary loss.
class SinkhornRouter : public RouterImpl {
 public:
  SinkhornRouter(int64_t top_k, Cost cost, SinkhornOptions opt);

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 public:
 private:
  int64_t k_;
  Cost cost_;
  SinkhornOptions opt_;
};

// router.cost, shared by the routers that build a transport cost.
config::Key cost_key();

}  // namespace ssr::routers
