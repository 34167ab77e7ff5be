// Expert Choice (Zhou et al. 2022, Sec. 3.1, Eq. 1): S = softmax(X W_g) over experts; each expert
// e takes the c tokens of the call with the largest S[:, e] (G, I = TopK(S^T, c)), c =
// round(router.ec_factor * tokens * k / experts), so on average k experts per token; a taken
// token's output is sum over the experts that took it of S[t, e] * expert_e(x_t).
// The result has one slot per expert a token got, padded to the widest token (kept false, weight
// 0, not computed); tokens no expert took are counted (unrouted) and keep their residual path.
// Differentiated: the weights S[t, e], in S. Not differentiated: which tokens each expert takes.
// Interpretation: the selection compares the tokens of one router call (a micro-batch, or
// router.group_tokens tokens); in a causal LM a token's experts then depend on other positions of
// the batch, later ones included, at training and at evaluation alike (the paper's LM evaluation
// does the same). Ties between tokens go to the lower token index.
#include "routers/expert_choice.hpp"

#include <cmath>

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"

namespace ssr::routers {

int64_t expert_choice_capacity(int64_t tokens, int64_t experts, int64_t k, double factor) {
  const auto c =
      static_cast<int64_t>(std::llround(factor * static_cast<double>(tokens * k) / static_cast<double>(experts)));
  return std::clamp<int64_t>(c, 1, tokens);
}

ExpertChoiceRouter::ExpertChoiceRouter(int64_t top_k, double factor) : k_(top_k), factor_(factor) {}

Routing ExpertChoiceRouter::decide(const RouteInput& in, Mode, torch::Generator&) {
  const auto& logits = in.logits;  // (tokens, experts)
  const int64_t n = logits.size(0), e = logits.size(1);
  auto s = at_least_float(logits).softmax(-1);  // (tokens, experts)
  const int64_t c = expert_choice_capacity(n, e, k_, factor_);
  auto taken_by = stable_top_k(s.detach().t(), c).second;  // (experts, c) token ids
  auto taken = torch::zeros({e, n}, torch::TensorOptions().dtype(torch::kBool).device(s.device()))
                   .scatter_(1, taken_by, true)
                   .t();  // (tokens, experts)
  const int64_t width = std::max<int64_t>(1, taken.sum(1).max().item<int64_t>());
  // A token's taken experts first, by score; then untaken experts as padding.
  auto order = stable_top_k(taken.to(s.scalar_type()) * 2 + s.detach(), width).second;  // (tokens, width)
  Routing r;
  r.experts = order;
  r.kept = taken.gather(1, order);                                                         // (tokens, width)
  r.weights = (s.gather(1, order) * r.kept.to(s.scalar_type())).to(logits.scalar_type());  // (tokens, width)
  r.aux_loss = torch::zeros({}, s.options());
  return r;
}

RouterSpec expert_choice_spec() {
  RouterSpec s;
  s.name = "expert-choice";
  s.summary = "each expert takes its top-c tokens of the call; a token gets any number of experts";
  s.source = "Zhou et al. 2022 (arXiv 2202.09368) Sec. 3.1, Eq. 1";
  s.caps.own_capacity = true;
  s.keys = {config::keys::unhashed_at_default(
      config::keys::F("router.ec_factor", 1.0, 1e-6, config::keys::kInf,
                      "expert-choice: capacity factor; each expert takes round(factor * tokens * k / experts) "
                      "tokens of a call (k = model.top_k experts per token on average)"))};
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<ExpertChoiceRouter>(sh.top_k, cfg.f("router.ec_factor"));
  };
  s.bench = {{"expert-choice", {}}};
  return s;
}

}  // namespace ssr::routers
