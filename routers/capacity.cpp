// Expert capacity for the top-k routers (model.capacity_factor, model.drop_policy; declared in
// router.hpp): Switch/GShard's choice order, or Megatron-Core's position and probs policies
// (moe_utils.py apply_router_token_dropping). Differentiated: nothing new; a dropped slot's weight
// is zeroed, so the token keeps its residual path only.
#include <cmath>

#include "routers/router.hpp"

namespace ssr::routers {

Routing with_capacity(Routing r, int64_t n_experts, double factor, DropPolicy policy) {
  const int64_t n = r.experts.size(0), k = r.experts.size(1);
  const auto capacity =
      static_cast<int64_t>(std::ceil(factor * static_cast<double>(n * k) / static_cast<double>(n_experts)));
  torch::Tensor kept;  // (tokens, k)
  if (policy == DropPolicy::Choice) {
    // Slots in priority order: every token's first choice, then every second choice, ... (GShard).
    auto by_choice = r.experts.t().reshape(-1);              // (k*tokens)
    auto onehot = torch::one_hot(by_choice, n_experts);      // (k*tokens, experts)
    auto rank = (onehot.cumsum(0) * onehot).sum(1) - 1;      // (k*tokens) place in its expert's queue
    kept = (rank < capacity).view({k, n}).t().contiguous();  // (tokens, k)
  } else {
    // Each expert's queue in token order, or by weight (a stable sort keeps token order in ties).
    auto flat = r.experts.reshape(-1);  // (tokens*k), token-major
    auto key = policy == DropPolicy::Probs ? -r.weights.detach().reshape(-1).to(torch::kDouble)
                                           : torch::zeros({n * k}, torch::kDouble).to(flat.device());
    auto order =
        std::get<1>(key.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));  // (tokens*k) slots by priority
    auto onehot = torch::one_hot(flat.index_select(0, order), n_experts);         // (tokens*k, experts) in that order
    auto rank_sorted = (onehot.cumsum(0) * onehot).sum(1) - 1;                    // (tokens*k)
    auto rank = torch::empty_like(rank_sorted).scatter_(0, order, rank_sorted);   // back to slot order
    kept = (rank < capacity).view({n, k});                                        // (tokens, k)
  }
  r.kept = r.kept.defined() ? r.kept.logical_and(kept) : kept;
  r.weights = r.weights * r.kept.to(r.weights.scalar_type());  // (tokens, k)
  return r;
}

Routing route_with_capacity(RouterImpl& router, const RouteInput& in, Mode mode, torch::Generator& gen,
                            int64_t n_experts, double factor, DropPolicy policy) {
  Routing r = router.route(in, mode, gen);
  if (factor > 0) r = with_capacity(std::move(r), n_experts, factor, policy);
  router.observe(r, mode);
  return r;
}

}  // namespace ssr::routers
