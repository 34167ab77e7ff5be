// Noisy top-k gating (Shazeer et al. 2017, "SMoE w/ noise"): see noisy.hpp.
// Differentiated: the weights in S and in W_noise (the noisy top-k logits depend on the learned
// noise scale), the importance term in S and W_noise, and the smooth load estimator
// Phi((S - threshold) / noise_std) in S and W_noise. Not differentiated: the choice of experts,
// the standard-normal draws. Eval: no noise, no draw, weights as vanilla, load = hard counts.
#include "routers/noisy.hpp"

#include <cmath>

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"

namespace ssr::routers {
namespace {
constexpr double kNoiseFloor = 1e-2;  // Shazeer's noise_epsilon: keeps the std away from 0
}

torch::Tensor cv_squared(const torch::Tensor& x) {
  if (x.size(0) == 1) return torch::zeros({}, x.options());
  return x.var() / (x.mean().square() + 1e-10);  // ()
}

NoisyRouter::NoisyRouter(int64_t d_model, int64_t n_experts, int64_t top_k, double coef) : k_(top_k), coef_(coef) {
  w_noise = register_parameter("w_noise", torch::zeros({d_model, n_experts}));
}

Routing NoisyRouter::decide(const RouteInput& in, Mode mode, torch::Generator& gen) {
  const auto& logits = in.logits;  // (tokens, experts)
  const auto& hidden = in.hidden;  // (tokens, d_model)
  const int64_t n_exp = logits.size(1);
  auto clean = at_least_float(logits);  // (tokens, experts)
  const bool noisy = mode == Mode::Train;
  torch::Tensor std_dev, scores;  // (tokens, experts) each
  if (noisy) {
    std_dev = torch::softplus(hidden.to(clean.scalar_type()).matmul(w_noise.to(clean.scalar_type()))) + kNoiseFloor;
    scores = clean + draw_normal(clean, gen) * std_dev;
  } else {
    scores = clean;
  }
  // k+1 values: the (k+1)-th is the threshold an expert already in the top-k must stay above.
  auto [top, idx] = stable_top_k(scores, std::min(k_ + 1, n_exp));  // (tokens, k+1)
  Routing r;
  r.experts = idx.narrow(1, 0, k_);                                                                // (tokens, k)
  r.weights = top.narrow(1, 0, k_).softmax(-1).to(logits.scalar_type());                           // (tokens, k)
  auto gates = torch::zeros_like(clean).scatter(1, r.experts, r.weights.to(clean.scalar_type()));  // (tokens, experts)
  auto importance = gates.sum(0);                                                                  // (experts)
  torch::Tensor load;                                                                              // (experts)
  if (noisy && k_ < n_exp) {
    auto thr_in = top.narrow(1, k_, 1);       // (tokens, 1) (k+1)-th noisy score
    auto thr_out = top.narrow(1, k_ - 1, 1);  // (tokens, 1) k-th noisy score
    auto is_in = scores > thr_in;             // (tokens, experts)
    auto phi = [](const torch::Tensor& z) { return 0.5 * (1.0 + torch::erf(z / std::sqrt(2.0))); };
    auto prob =
        torch::where(is_in, phi((clean - thr_in) / std_dev), phi((clean - thr_out) / std_dev));  // (tokens, experts)
    load = prob.sum(0);
  } else {
    load = (gates > 0).to(clean.scalar_type()).sum(0);
  }
  r.aux_loss = coef_ * (cv_squared(importance) + cv_squared(load));
  return r;
}

RouterSpec noisy_spec() {
  RouterSpec s;
  s.name = "noisy";
  s.summary = "noisy top-k gating with a trainable noise scale and the importance + load loss";
  s.source = "Shazeer et al. 2017 Eqs. 3-5, 6-10";
  s.caps.aux_loss = s.caps.draws = s.caps.hidden = true;
  s.keys = {config::keys::F("router.noisy_coef", 0.01, 0, config::keys::kInf,
                            "importance+load loss coefficient of noisy top-k gating")};
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<NoisyRouter>(sh.d_model, sh.n_experts, sh.top_k, cfg.f("router.noisy_coef"));
  };
  s.bench = {{"noisy (train)", {}}};
  return s;
}

}  // namespace ssr::routers
