// Load-balancing loss routing (GShard / Switch; reference-setup 1.6): vanilla top-k softmax
// routing plus lb_coef * E * sum_e f_e P_e, computed per call (per micro-batch, per layer).
// Differentiated: the weights (as vanilla) and P_e (softmax over all logits) in S.
// Not differentiated: f_e (counts of a discrete top-k) and the choice of experts.
// The loss is computed in eval mode too (it is just not used there).
#include "routers/lb.hpp"

#include <fmt/format.h>

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"
#include "routers/vanilla.hpp"

namespace ssr::routers {

LbForm lb_form(const std::string& name) {
  if (name == "reference") return LbForm::Reference;
  if (name == "switch") return LbForm::Switch;
  throw config::ConfigError(fmt::format("router.lb_form: '{}' is not reference or switch", name));
}

torch::Tensor load_balance_loss(const torch::Tensor& logits, const torch::Tensor& experts, LbForm form) {
  const int64_t n_tok = logits.size(0), n_exp = logits.size(1), k = experts.size(1);
  const double slots = static_cast<double>(n_tok * k);
  auto probs = at_least_float(logits).softmax(-1);  // (tokens, experts)
  auto counts = torch::zeros({n_exp}, probs.options())
                    .index_add_(0, experts.reshape(-1), torch::ones({experts.numel()}, probs.options()));  // (experts)
  auto f = counts / slots;                                                                                 // (experts)
  auto p = probs.sum(0) / (form == LbForm::Reference ? slots : static_cast<double>(n_tok));                // (experts)
  return static_cast<double>(n_exp) * (f * p).sum();                                                       // ()
}

LbRouter::LbRouter(int64_t top_k, double coef, LbForm form) : k_(top_k), coef_(coef), form_(form) {}

Routing LbRouter::decide(const RouteInput& in, Mode, torch::Generator&) {
  const auto& logits = in.logits;  // (tokens, experts)
  auto r = top_k_softmax(logits, k_);
  r.aux_loss = coef_ * load_balance_loss(logits, r.experts, form_);
  return r;
}

config::Key lb_coef_key() {
  return config::keys::F("router.lb_coef", 0.01, 0, config::keys::kInf, "load-balancing loss coefficient");
}

config::Key lb_form_key() {
  return config::keys::C("router.lb_form", "reference", {"reference", "switch"},
                         "lb normalisation: reference divides importance by N*k; switch by N");
}

RouterSpec lb_spec() {
  RouterSpec s;
  s.name = "lb";
  s.summary = "vanilla routing plus the Switch/GShard load-balancing loss";
  s.source = "Fedus et al. 2021 (Switch) Eq. 4; reference-setup 1.6";
  s.caps.aux_loss = true;
  s.keys = {lb_coef_key(), lb_form_key()};
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<LbRouter>(sh.top_k, cfg.f("router.lb_coef"), lb_form(cfg.s("router.lb_form")));
  };
  s.bench = {{"lb", {}}};
  return s;
}

}  // namespace ssr::routers
