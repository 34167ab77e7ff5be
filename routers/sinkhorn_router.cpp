// Sinkhorn-based SMoE baseline (see sinkhorn_router.hpp).
// Differentiated: the weights, in S, through the softmax of the logits at the chosen experts.
// Not differentiated: the plan Pi (solved on a detached cost) and hence the choice of experts.
// The plan depends on the whole batch, at eval too: that is the reference's behaviour.
#include "routers/sinkhorn_router.hpp"

#include <fmt/format.h>

#include <limits>

#include "harness/config/choice.hpp"
#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"
#include "routers/vanilla.hpp"

namespace ssr::routers {

Cost cost_kind(const std::string& name) {
  return config::choose<Cost>("router.cost", name, {{"linear", Cost::Linear}, {"softmax", Cost::Softmax}});
}

torch::Tensor transport_cost(const torch::Tensor& logits, Cost cost) {
  auto s = at_least_float(logits.detach());  // (tokens, experts)
  return cost == Cost::Linear ? s : s.softmax(-1);
}

void fill_sinkhorn_fields(Routing& r, const SinkhornResult& res) {
  r.used_sinkhorn = true;
  r.sinkhorn_iters = res.iters;
  r.sinkhorn_error = res.error;
  r.sinkhorn_finite = res.finite;
  r.sinkhorn_converged = res.converged;
  r.sinkhorn_fallback = res.newton_fallback;
  if (!res.finite) r.weights = torch::full_like(r.weights, std::numeric_limits<double>::quiet_NaN());
}

SinkhornRouter::SinkhornRouter(int64_t top_k, Cost cost, SinkhornOptions opt) : k_(top_k), cost_(cost), opt_(opt) {}

Routing SinkhornRouter::decide(const RouteInput& in, Mode, torch::Generator&) {
  const auto& logits = in.logits;  // (tokens, experts)
  auto res = sinkhorn(transport_cost(logits, cost_), opt_);
  Routing r;
  r.experts = stable_top_k(res.plan, k_).second;  // (tokens, k)
  r.weights = softmax_at(logits, r.experts);      // (tokens, k)
  r.aux_loss = torch::zeros({}, logits.options());
  fill_sinkhorn_fields(r, res);
  return r;
}

config::Key cost_key() {
  return config::keys::C("router.cost", "linear", {"linear", "softmax"},
                         "transport cost: linear (C = S, SSR-L) or row softmax of S (SSR-S)");
}

RouterSpec sinkhorn_spec() {
  RouterSpec s;
  s.name = "sinkhorn";
  s.summary = "Sinkhorn transport plan at every forward, top-k of the plan, weights from the logits";
  s.source = "the SSR authors' prototype (reference-setup 1.6); paper Algorithm 1";
  s.keys = sinkhorn_keys();
  s.keys.insert(s.keys.begin(), cost_key());
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<SinkhornRouter>(sh.top_k, cost_kind(cfg.s("router.cost")), sinkhorn_options(cfg));
  };
  s.sinkhorn_p = [](const config::Config&) { return 1.0; };
  s.bench = {{"sinkhorn baseline (xi 1, plain)", {"xi=1", "numerics=plain"}}};
  return s;
}

}  // namespace ssr::routers
