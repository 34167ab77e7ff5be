// Routing statistics of every router (declared in router.hpp): expert loads, MaxVio, dead
// experts, gate entropy and Sinkhorn counts, as the run log stores them (layerL/*).
#include "routers/router.hpp"

#include <cmath>

namespace ssr::routers {

void set_load(RouterStats& s, const std::vector<int64_t>& tokens_per_expert) {
  s.tokens_per_expert = tokens_per_expert;
  auto load = torch::tensor(tokens_per_expert, torch::kDouble);  // (experts)
  const double mean = load.mean().item<double>();
  s.load_cv = mean > 0 ? load.std(/*unbiased=*/false).item<double>() / mean : 0.0;
  s.max_vio = mean > 0 ? load.max().item<double>() / mean - 1.0 : 0.0;
  s.dead_experts = (load == 0).sum().item<int64_t>();
}

void set_sinkhorn(RouterStats& s, const SinkhornTally& tally) {
  s.sinkhorn_calls = tally.sinkhorn_calls;
  if (tally.calls > 0) s.sinkhorn_frac = static_cast<double>(tally.sinkhorn_calls) / static_cast<double>(tally.calls);
  if (tally.sinkhorn_calls > 0) {
    s.sinkhorn_iters = static_cast<double>(tally.iters_sum) / static_cast<double>(tally.sinkhorn_calls);
    s.sinkhorn_error = tally.error_sum / static_cast<double>(tally.sinkhorn_calls);
  }
}

RouterStats routing_stats(const torch::Tensor& logits, const Routing& routing, int64_t n_experts) {
  SinkhornTally one;
  one.calls = 1;
  if (routing.used_sinkhorn) {
    one.sinkhorn_calls = 1;
    one.iters_sum = routing.sinkhorn_iters;
    one.error_sum = routing.sinkhorn_error;
  }
  return routing_stats(logits, routing, n_experts, one);
}

RouterStats routing_stats(const torch::Tensor& logits, const Routing& routing, int64_t n_experts,
                          const SinkhornTally& tally) {
  RouterStats s;
  auto slots = routing.experts.reshape(-1).cpu();  // (tokens*k)
  if (routing.kept.defined()) {
    const auto kept = routing.kept.cpu();  // (tokens, k)
    slots = slots.masked_select(kept.reshape(-1));
    s.drop_rate = 1.0 - kept.to(torch::kDouble).mean().item<double>();
    s.unrouted = (~kept.any(1)).to(torch::kDouble).mean().item<double>();
  }
  auto counts = torch::bincount(slots, {}, n_experts);  // (experts)
  set_load(s, std::vector<int64_t>(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + n_experts));
  auto logp = logits.detach().to(torch::kFloat).log_softmax(-1);  // (tokens, experts)
  s.entropy = -(logp.exp() * logp).sum(-1).mean().item<double>();
  set_sinkhorn(s, tally);
  return s;
}

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
