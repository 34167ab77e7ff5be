// Switch/GShard expert capacity for the top-k routers (model.capacity_factor; declared in
// router.hpp). Differentiated: nothing new; a dropped slot's weight is zeroed, so the token keeps
// its residual path only.
#include <cmath>

#include "routers/router.hpp"

namespace ssr::routers {

Routing with_capacity(Routing r, int64_t n_experts, double factor) {
  const int64_t n = r.experts.size(0), k = r.experts.size(1);
  const auto capacity =
      static_cast<int64_t>(std::ceil(factor * static_cast<double>(n * k) / static_cast<double>(n_experts)));
  // Slots in priority order: every token's first choice, then every second choice, ... (GShard).
  auto by_choice = r.experts.t().reshape(-1);                   // (k*tokens)
  auto onehot = torch::one_hot(by_choice, n_experts);           // (k*tokens, experts)
  auto rank = (onehot.cumsum(0) * onehot).sum(1) - 1;           // (k*tokens) place in its expert's queue
  auto kept = (rank < capacity).view({k, n}).t().contiguous();  // (tokens, k)
  r.kept = r.kept.defined() ? r.kept.logical_and(kept) : kept;
  r.weights = r.weights * r.kept.to(r.weights.scalar_type());  // (tokens, k)
  return r;
}

}  // namespace ssr::routers
