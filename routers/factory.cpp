#include <fmt/format.h>

#include "routers/router.hpp"
#include "routers/vanilla.hpp"

namespace ssr::routers {

Router make_router(const config::Config& cfg, int64_t d_model, int64_t n_experts, int64_t top_k) {
  if (top_k > n_experts)
    throw config::ConfigError(fmt::format("model.top_k: {} is more than model.n_experts {}", top_k, n_experts));
  const std::string& name = cfg.s("router.name");
  if (name == "vanilla") return std::make_shared<VanillaRouter>(top_k);
  throw config::ConfigError(fmt::format("router.name: '{}' is not implemented yet", name));
}

RouterStats routing_stats(const torch::Tensor& logits, const Routing& routing, int64_t n_experts) {
  RouterStats s;
  auto counts = torch::bincount(routing.experts.reshape(-1).cpu(), {}, n_experts);  // (experts)
  s.tokens_per_expert.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + n_experts);
  auto load = counts.to(torch::kDouble);
  double mean = load.mean().item<double>();
  s.load_cv = mean > 0 ? (load.std(/*unbiased=*/false).item<double>() / mean) : 0.0;
  s.max_over_mean = mean > 0 ? load.max().item<double>() / mean : 0.0;
  s.dead_experts = (counts == 0).sum().item<int64_t>();
  auto logp = logits.detach().to(torch::kFloat).log_softmax(-1);  // (tokens, experts)
  s.entropy = -(logp.exp() * logp).sum(-1).mean().item<double>();
  if (routing.used_sinkhorn) {
    s.sinkhorn_frac = 1.0;
    s.sinkhorn_iters = static_cast<double>(routing.sinkhorn_iters);
    s.sinkhorn_error = routing.sinkhorn_error;
  }
  return s;
}

}  // namespace ssr::routers
