// Sigmoid scores and auxiliary-loss-free balancing.
//   s = sigmoid(S) (DeepSeek-V3 Eq. 13) or softmax(S); experts = top-k of s + b (Eq. 16; Wang et
//   al. 2024 Eq. 3); weights = s at those experts / their sum (Eq. 14). With softmax scores the
//   weights equal vanilla's softmax over the k selected logits.
//   After each optimizer step: b_i += u * sign(mean_j load_j - load_i), the load counted over every
//   training call of the step on every rank (Wang et al. 2024 Algorithm 1; Megatron-Core's
//   get_updated_expert_bias), optionally minus the update's mean (torchtitan).
// Differentiated: the weights, through s, in S; the sequence-wise loss through P_i.
// Not differentiated: the selection and the bias (a buffer, not a parameter; fp32).
// Interpretation: DeepSeek-V3's sequence-wise loss runs over one sequence; a router call here sees
// a micro-batch of several streams (or router.group_tokens tokens), which is treated as the
// sequence. Megatron-Core readings (moe_utils.py topk_routing_with_score_function and
// get_updated_expert_bias at d98e8a64): router.k1_weight=raw (the sigmoid itself at top-1) and
// router.bias_load=kept (the load counted after capacity dropping); ties between equal scores go
// to the lower expert here and wherever torch.topk puts them there (unspecified; not reproducible).
#include "routers/aux_free.hpp"

#include "harness/config/choice.hpp"
#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"

namespace ssr::routers {

torch::Tensor sequence_balance_loss(const torch::Tensor& scores, const torch::Tensor& experts) {
  const int64_t n_tok = scores.size(0), n_exp = scores.size(1), k = experts.size(1);
  auto chosen = torch::zeros({n_exp}, scores.options())
                    .index_add_(0, experts.reshape(-1), torch::ones({experts.numel()}, scores.options()));  // (experts)
  auto f = chosen * (static_cast<double>(n_exp) / static_cast<double>(k * n_tok));                          // (experts)
  auto p = (scores / scores.sum(-1, /*keepdim=*/true)).mean(0);                                             // (experts)
  return (f * p).sum();                                                                                     // ()
}

ScoreRouterImpl::ScoreRouterImpl(int64_t n_experts, int64_t top_k, ScoreRouterOptions opt)
    : k_(top_k), opt_(opt), load_(torch::zeros({n_experts})) {
  expert_bias = register_buffer("expert_bias", torch::zeros({n_experts}));
}

Routing ScoreRouterImpl::decide(const RouteInput& in, Mode mode, torch::Generator&) {
  const auto& logits = in.logits;  // (tokens, experts)
  auto s = opt_.score == Score::Sigmoid ? at_least_float(logits).sigmoid()
                                        : at_least_float(logits).softmax(-1);  // (tokens, experts)
  Routing r;
  r.experts = stable_top_k(s.detach() + expert_bias, k_).second;  // (tokens, k)
  auto picked = s.gather(1, r.experts);                           // (tokens, k)
  // Megatron-Core returns the score itself at top-1 (probs = scores if topk == 1); DeepSeek-V3's
  // Eq. 14 divides by the sum, which makes it 1.
  r.weights = (k_ == 1 && opt_.k1_raw ? picked : picked / picked.sum(-1, /*keepdim=*/true))
                  .to(logits.scalar_type());  // (tokens, k)
  r.aux_loss =
      opt_.seq_aux_coef > 0 ? opt_.seq_aux_coef * sequence_balance_loss(s, r.experts) : torch::zeros({}, s.options());
  if (mode == Mode::Train && opt_.bias_rate > 0 && !opt_.bias_counts_kept) {
    if (load_.device() != logits.device()) load_ = load_.to(logits.device());
    load_.index_add_(0, r.experts.reshape(-1), torch::ones({r.experts.numel()}, load_.options()));
  }
  return r;
}

void ScoreRouterImpl::observe(const Routing& final, Mode mode) {
  if (mode != Mode::Train || opt_.bias_rate <= 0 || !opt_.bias_counts_kept) return;
  torch::NoGradGuard no_grad;
  if (load_.device() != final.experts.device()) load_ = load_.to(final.experts.device());
  auto ones = final.kept.defined() ? final.kept.reshape(-1).to(load_.scalar_type())  // (tokens*k)
                                   : torch::ones({final.experts.numel()}, load_.options());
  load_.index_add_(0, final.experts.reshape(-1), ones);
}

void ScoreRouterImpl::end_step(const SumOverRanks& sum_over_ranks) {
  if (opt_.bias_rate <= 0) return;
  torch::NoGradGuard no_grad;
  const auto load = sum_over_ranks(load_);  // (experts)
  if (load.sum().item<double>() > 0) {
    auto delta = opt_.bias_rate * torch::sign(load.mean() - load);  // (experts)
    if (opt_.bias_recenter) delta = delta - delta.mean();
    expert_bias.add_(delta.to(expert_bias.device()));
  }
  load_.zero_();
}

namespace {

config::Key seq_aux_key() {
  // Keys added after runs were stored stay out of the hash at their defaults (schema.cpp).
  return config::keys::unhashed_at_default(
      config::keys::F("router.seq_aux_coef", 0, 0, config::keys::kInf,
                      "alpha of DeepSeek-V3's sequence-wise balance loss (0 = off; DeepSeek-V3: 1e-4)"));
}

config::Key k1_weight_key() {
  return config::keys::unhashed_at_default(config::keys::C(
      "router.k1_weight", "normalised", {"normalised", "raw"},
      "sigmoid/aux-free at top-1: the selected score normalised to 1 (DeepSeek-V3 Eq. 14) or the raw score "
      "(Megatron-Core)"));
}

ScoreRouterOptions score_options(const config::Config& cfg, bool with_bias) {
  ScoreRouterOptions o;
  o.seq_aux_coef = cfg.f("router.seq_aux_coef");
  o.k1_raw = cfg.s("router.k1_weight") == "raw";
  if (!with_bias) return o;
  o.bias_counts_kept = cfg.s("router.bias_load") == "kept";
  o.score = config::choice<Score>(cfg, "router.score", {{"sigmoid", Score::Sigmoid}, {"softmax", Score::Softmax}});
  o.bias_rate = cfg.f("router.bias_rate");
  o.bias_recenter = cfg.b("router.bias_recenter");
  return o;
}

}  // namespace

RouterSpec sigmoid_spec() {
  RouterSpec s;
  s.name = "sigmoid";
  s.summary = "top-k of sigmoid scores, weights normalised over the selected experts (no bias)";
  s.source = "DeepSeek-V3 (arXiv 2412.19437) Eqs. 13-14, 17-20";
  s.caps.aux_loss = true;
  s.keys = {seq_aux_key(), k1_weight_key()};
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<ScoreRouterImpl>(sh.n_experts, sh.top_k, score_options(cfg, false));
  };
  s.bench = {{"sigmoid", {}}};
  return s;
}

RouterSpec aux_free_spec() {
  using namespace config::keys;
  RouterSpec s;
  s.name = "aux-free";
  s.summary = "auxiliary-loss-free balancing: a per-expert bias on the scores for selection, moved after each step";
  s.source = "Wang et al. 2024 (arXiv 2408.15664) Eq. 3, Algorithm 1; DeepSeek-V3 Eq. 16";
  s.caps.aux_loss = s.caps.stateful = true;
  s.keys = {unhashed_at_default(
                C("router.score", "sigmoid", {"sigmoid", "softmax"}, "aux-free: gating scores (DeepSeek-V3: sigmoid)")),
            unhashed_at_default(F("router.bias_rate", 1e-3, 0, kInf,
                                  "aux-free: bias update speed u (b_i += u * sign(mean load - load_i))")),
            unhashed_at_default(B("router.bias_recenter", false,
                                  "aux-free: subtract the bias update's mean (torchtitan), keeping mean 0")),
            unhashed_at_default(C("router.bias_load", "routed", {"routed", "kept"},
                                  "aux-free: the load the bias follows: every routed slot (Wang et al.), or the "
                                  "slots model.capacity_factor kept (Megatron-Core)")),
            seq_aux_key(),
            k1_weight_key()};
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<ScoreRouterImpl>(sh.n_experts, sh.top_k, score_options(cfg, true));
  };
  s.bench = {{"aux-free (train)", {}}};
  return s;
}

}  // namespace ssr::routers
