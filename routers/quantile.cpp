// Quantile balancing, as Megatron-Core's router implements it (NVIDIA/Megatron-LM
// megatron/core/transformer/moe/moe_utils.py qb_dual_update, router.py quantile_balancing,
// finalize_model_grads.py _update_router_qb_beta; moe_router_load_balancing_type=quantile_balancing):
//   experts = top-k of S - beta (no auxiliary loss); in training each call also estimates
//   beta_new (quantile_step, the dual coordinate-descent step of the balanced assignment LP with
//   every expert at tokens k / experts); after each optimizer step
//   beta = ema beta + (1 - ema) mean(beta_new over the step's calls and ranks), minus its mean.
// Combine weights: softmax of S over the k selected logits, as `vanilla` (beta never enters them).
// Interpretations: Megatron's weights follow its score function and top-k scaling options; the
// harness's top-k routers all use the softmax over the selected logits, so this one does too.
// Megatron's EMA default is 0.0 (transformer_config.py moe_router_quantile_balancing_ema at
// d98e8a64: the bias replaced each step), which router=quantile selects; the key's own default 0.9
// (the value public descriptions of the change give) is what runs stored before 2026-12-08 used.
// Megatron asserts that tokens x k divides by the experts (qb_dual_update); router.qb_rounding
// refuse does the same, floor (the key's default, what earlier runs did) takes the column target
// floor(T k / E).
// Differentiated: the weights, in S. Not differentiated: beta (a buffer) and the selection.
// It is the closest production relative of Sinkhorn routing: both balance by dual variables of the
// same transport problem; Sinkhorn solves it per call, this takes one step per call and carries
// the duals across steps.
#include "routers/quantile.hpp"

#include <fmt/format.h>

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"
#include "routers/vanilla.hpp"

namespace ssr::routers {

std::pair<torch::Tensor, torch::Tensor> quantile_step(const torch::Tensor& logits, const torch::Tensor& beta, int64_t k,
                                                      bool refuse_indivisible) {
  torch::NoGradGuard no_grad;
  const auto s = at_least_float(logits.detach());  // (tokens, experts)
  const int64_t n = s.size(0), e = s.size(1);
  if (refuse_indivisible && (n * k) % e != 0)
    throw config::ConfigError(fmt::format(
        "router.qb_rounding=refuse: a router call of {} tokens x top-{} = {} assignments does not divide by {} experts "
        "(Megatron-Core asserts the same); choose a batch whose tokens per call make it whole, or "
        "router.qb_rounding=floor",
        n, k, n * k, e));
  const int64_t width = std::min(k + 1, e);
  auto [vals, idx] = stable_top_k(s - beta, width);  // (tokens, k+1) each
  auto experts = idx.narrow(1, 0, k);                // (tokens, k)
  if (width == k) return {experts, beta.clone()};    // k = experts: everyone gets every expert
  auto alpha = vals.narrow(1, k, 1);                 // (tokens, 1) admission thresholds
  const int64_t c = std::min<int64_t>(n - 1, n * k / e);
  auto beta_new = std::get<0>((s - alpha).topk(c + 1, /*dim=*/0)).select(0, c);  // (experts)
  return {experts, beta_new};
}

QuantileRouter::QuantileRouter(int64_t n_experts, int64_t top_k, double ema, bool refuse_indivisible)
    : k_(top_k), ema_(ema), refuse_(refuse_indivisible), accum_(torch::zeros({n_experts + 1})) {
  beta = register_buffer("qb_beta", torch::zeros({n_experts}));
}

Routing QuantileRouter::decide(const RouteInput& in, Mode mode, torch::Generator&) {
  // Megatron estimates (and asserts) only in training; at inference beta is only read.
  auto [experts, beta_new] = quantile_step(in.logits, beta, k_, refuse_ && mode == Mode::Train);
  Routing r;
  r.experts = experts;                         // (tokens, k)
  r.weights = softmax_at(in.logits, experts);  // (tokens, k)
  r.aux_loss = torch::zeros({}, in.logits.options());
  if (mode == Mode::Train) {
    if (accum_.device() != beta.device()) accum_ = accum_.to(beta.device());
    const int64_t e = beta.size(0);
    accum_.narrow(0, 0, e).add_(beta_new);
    accum_[e] += 1;
  }
  return r;
}

void QuantileRouter::end_step(const SumOverRanks& sum_over_ranks) {
  torch::NoGradGuard no_grad;
  const int64_t e = beta.size(0);
  const auto total = sum_over_ranks(accum_);  // (experts + 1)
  const double calls = total[e].item<double>();
  if (calls > 0) {
    auto mean = total.narrow(0, 0, e) / calls;  // (experts)
    auto next = ema_ * beta + (1.0 - ema_) * mean;
    beta.copy_(next - next.mean());
  }
  accum_.zero_();
}

RouterSpec quantile_spec() {
  RouterSpec s;
  s.name = "quantile";
  s.summary = "top-k of S - beta, beta the balanced-assignment dual from a per-call column quantile, moved each step";
  s.source = "Megatron-Core quantile_balancing (qb_dual_update; _update_router_qb_beta)";
  s.caps.stateful = true;
  s.keys = {
      config::keys::unhashed_at_default(config::keys::F(
          "router.qb_ema", 0.9, 0, 1,
          "quantile: EMA of beta across steps (beta = ema beta + (1 - ema) quantile; router=quantile: 0, Megatron's)")),
      // It changes no result, only whether an indivisible call is refused.
      config::keys::C("router.qb_rounding", "floor", {"floor", "refuse"},
                      "quantile: tokens x k not divisible by the experts: floor the column target, or refuse "
                      "(Megatron; router=quantile)",
                      /*hashed=*/false)};
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<QuantileRouter>(sh.n_experts, sh.top_k, cfg.f("router.qb_ema"),
                                            cfg.s("router.qb_rounding") == "refuse");
  };
  s.bench = {{"quantile (train)", {}}};
  return s;
}

}  // namespace ssr::routers
