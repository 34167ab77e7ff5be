// The Swin-MoE gate (reference-setup 5; Tutel's TopKGate as configured by Swin-MoE): in training
// gate_noise * N(0,1) / E is added to the logits; scores = softmax over all experts; experts =
// top-k of the scores; combine weights = the raw softmax probabilities (not renormalised over
// the k). Each expert takes at most k * int(1.25 * ceil(N / E)) slots, in training and eval;
// slots are filled in batch-prioritised order (every token's first choice before any second
// choice, tokens by descending top-1 score) and the overflow is dropped: its weight is 0, so the
// token's output for that slot is zero and only the residual carries it.
// Differentiated: the weights and the balance loss, in the logits. Not differentiated: the
// choice of experts, the capacity order, the noise.
#include "routers/swin_moe_gate.hpp"

#include <cmath>

#include "harness/config/declare.hpp"
#include "routers/lb.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"

namespace ssr::routers {

int64_t swin_moe_capacity(int64_t tokens, int64_t experts, int64_t k, double factor) {
  const int64_t per_expert = (tokens + experts - 1) / experts;
  return k * static_cast<int64_t>(factor * static_cast<double>(per_expert));
}

torch::Tensor swin_moe_balance_loss(const torch::Tensor& probs, const torch::Tensor& threshold, double gate_noise) {
  const double sigma = gate_noise / static_cast<double>(probs.size(1));
  auto cv2 = [](const torch::Tensor& v) { return v.var() / (v.mean().square() + 1e-10); };  // ()
  auto importance = probs.sum(0);                                                           // (experts)
  auto z = (probs - threshold.unsqueeze(1)) / (sigma * std::sqrt(2.0));                     // (tokens, experts)
  auto load = (0.5 * torch::erfc(-z)).sum(0);                                               // (experts)
  return (cv2(importance) + cv2(load)) / 2.0;
}

SwinMoeGate::SwinMoeGate(int64_t top_k, double gate_noise, double capacity_factor, double coef)
    : k_(top_k), gate_noise_(gate_noise), capacity_factor_(capacity_factor), coef_(coef) {}

Routing SwinMoeGate::decide(const RouteInput& in, Mode mode, torch::Generator& gen) {
  const auto& logits = in.logits;  // (tokens, experts)
  const int64_t n = logits.size(0), e = logits.size(1);
  auto clean = at_least_float(logits);  // (tokens, experts)
  auto noisy = clean;                   // (tokens, experts)
  if (mode == Mode::Train && gate_noise_ > 0)
    noisy = clean + draw_normal(clean, gen) * (gate_noise_ / static_cast<double>(e));
  auto scores = noisy.softmax(-1);                 // (tokens, experts)
  auto [top, experts] = stable_top_k(scores, k_);  // (tokens, k) each

  // Batch-prioritised slot positions: rank tokens by their best score, then count, expert by
  // expert, the slots taken before each one (all choice-j slots precede choice-(j+1) slots).
  torch::Tensor keep;  // (tokens, k) bool: slot within its expert's capacity
  {
    torch::NoGradGuard no_grad;
    const int64_t cap = swin_moe_capacity(n, e, k_, capacity_factor_);
    auto priority = std::get<1>(top.select(1, 0).sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));  // (tokens)
    auto ranked = experts.index_select(0, priority);                                                      // (tokens, k)
    auto onehot = torch::one_hot(ranked.t().reshape({-1}), e);                     // (k*tokens, experts)
    auto position = (onehot.cumsum(0) - 1).mul_(onehot).sum(1).view({k_, n}).t();  // (tokens, k) ranked order
    auto kept_ranked = position < cap;                                             // (tokens, k)
    keep = torch::empty_like(kept_ranked).index_copy_(0, priority, kept_ranked);   // (tokens, k)
  }
  Routing r;
  r.experts = experts;                                                        // (tokens, k)
  r.weights = top * keep.to(top.scalar_type());                               // (tokens, k), 0 for dropped slots
  auto threshold = noisy.gather(1, experts.narrow(1, k_ - 1, 1)).squeeze(1);  // (tokens)
  r.aux_loss = coef_ * swin_moe_balance_loss(clean.softmax(-1), threshold, gate_noise_);
  return r;
}

RouterSpec swin_moe_spec() {
  using namespace config::keys;
  RouterSpec s;
  s.name = "swin-moe";
  s.summary = "Tutel's top-k gate of Swin-MoE: gate noise, expert capacity with dropping, balance loss";
  s.source = "Swin-MoE (Hwang et al. 2022, Tutel) as in microsoft/Swin-Transformer; reference-setup 5";
  s.caps.aux_loss = s.caps.draws = s.caps.own_capacity = true;
  s.keys = {lb_coef_key(),
            F("router.gate_noise", 1.0, 1e-6, kInf,
              "swin-moe: training noise gate_noise * N(0,1) / E on the logits; also the load loss's normal std * E"),
            F("router.capacity_factor", 1.25, 0.01, kInf,
              "swin-moe: expert capacity k * int(factor * ceil(tokens / experts)); the overflow is dropped")};
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<SwinMoeGate>(sh.top_k, cfg.f("router.gate_noise"), cfg.f("router.capacity_factor"),
                                         cfg.f("router.lb_coef"));
  };
  s.bench = {{"swin-moe gate (train)", {}}};
  return s;
}

}  // namespace ssr::routers
