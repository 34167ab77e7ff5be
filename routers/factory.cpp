#include <fmt/format.h>

#include "routers/lb.hpp"
#include "routers/noisy.hpp"
#include "routers/router.hpp"
#include "routers/sinkhorn_router.hpp"
#include "routers/ssr.hpp"
#include "routers/swin_moe_gate.hpp"
#include "routers/vanilla.hpp"
#include "routers/zloss.hpp"

namespace ssr::routers {

Router make_router(const config::Config& cfg, int64_t d_model, int64_t n_experts, int64_t top_k) {
  if (top_k > n_experts)
    throw config::ConfigError(fmt::format("model.top_k: {} is more than model.n_experts {}", top_k, n_experts));
  const std::string& name = cfg.s("router.name");
  if (name == "vanilla") return std::make_shared<VanillaRouter>(top_k);
  if (name == "lb") return std::make_shared<LbRouter>(top_k, cfg.f("router.lb_coef"), lb_form(cfg.s("router.lb_form")));
  if (name == "zloss")
    return std::make_shared<ZLossRouter>(top_k, cfg.f("router.lb_coef"), lb_form(cfg.s("router.lb_form")),
                                         cfg.f("router.z_coef"));
  if (name == "noisy") return std::make_shared<NoisyRouter>(d_model, n_experts, top_k, cfg.f("router.noisy_coef"));
  if (name == "sinkhorn")
    return std::make_shared<SinkhornRouter>(top_k, cost_kind(cfg.s("router.cost")), sinkhorn_options(cfg));
  if (name == "ssr") return std::make_shared<SsrRouter>(top_k, ssr_options(cfg));
  if (name == "swin-moe")
    return std::make_shared<SwinMoeGate>(top_k, cfg.f("router.gate_noise"), cfg.f("router.capacity_factor"),
                                         cfg.f("router.lb_coef"));
  throw config::ConfigError(fmt::format("router.name: '{}' is not a router", name));
}

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
