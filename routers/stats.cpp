// Routing statistics of every router (declared in router.hpp): expert loads, MaxVio, dead
// experts, gate entropy and Sinkhorn counts, as the run log stores them (layerL/*).
#include "routers/router.hpp"

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
  auto counts = torch::bincount(routing.experts.reshape(-1).cpu(), {}, n_experts);  // (experts)
  set_load(s, std::vector<int64_t>(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + n_experts));
  auto logp = logits.detach().to(torch::kFloat).log_softmax(-1);  // (tokens, experts)
  s.entropy = -(logp.exp() * logp).sum(-1).mean().item<double>();
  set_sinkhorn(s, tally);
  return s;
}

}  // namespace ssr::routers
