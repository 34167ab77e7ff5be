// Router z-loss (ST-MoE, Zoph et al. 2022) on top of the lb loss: aux = lb_coef * lb + z_coef *
// mean_i logsumexp_j(S_ij)^2. Not in any public reference code; written from the ST-MoE paper.
// Differentiated: the weights (as vanilla), the lb importance term and the whole z-loss, in S.
// Not differentiated: the choice of experts and the lb counts.
#include "routers/zloss.hpp"

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"
#include "routers/vanilla.hpp"

namespace ssr::routers {

torch::Tensor z_loss(const torch::Tensor& logits) {
  return torch::logsumexp(at_least_float(logits), -1).square().mean();  // ()
}

ZLossRouter::ZLossRouter(int64_t top_k, double lb_coef, LbForm form, double z_coef)
    : k_(top_k), lb_coef_(lb_coef), z_coef_(z_coef), form_(form) {}

Routing ZLossRouter::decide(const RouteInput& in, Mode, torch::Generator&) {
  const auto& logits = in.logits;  // (tokens, experts)
  auto r = top_k_softmax(logits, k_);
  r.aux_loss = lb_coef_ * load_balance_loss(logits, r.experts, form_) + z_coef_ * z_loss(logits);
  return r;
}

RouterSpec zloss_spec() {
  RouterSpec s;
  s.name = "zloss";
  s.summary = "lb routing plus the ST-MoE router z-loss";
  s.source = "Zoph et al. 2022 (ST-MoE) Eq. 5";
  s.caps.aux_loss = true;
  s.keys = {lb_coef_key(), lb_form_key(),
            config::keys::F("router.z_coef", 0.001, 0, config::keys::kInf, "router z-loss coefficient")};
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<ZLossRouter>(sh.top_k, cfg.f("router.lb_coef"), lb_form(cfg.s("router.lb_form")),
                                         cfg.f("router.z_coef"));
  };
  s.bench = {{"zloss", {}}};
  return s;
}

}  // namespace ssr::routers
