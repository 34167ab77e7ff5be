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

}  // namespace ssr::routers
