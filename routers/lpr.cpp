// Latent Prototype Routing (Yang 2025, arXiv 2506.21328), read from its authors' code:
// github.com/RANDO11199/LatentPrototypeRouter, model_zoo/router.py (TokenDistributionRouter, the
// "VectorSimilarity"/"Cosine" path), model_zoo/Metrics.py (CosineSimilarity), model_zoo/Qwen3Moe.py
// (how the block uses it) and config/Qwen3MoeLPR.yaml (the settings, our defaults):
//   x~ = SiLU(LayerNorm(h));  [mu, log var] = x~ W_enc + b_enc;  z = mu + eps * exp(log var / 2)
//   s[t, e] = cos(mu_t, K_e)            K (experts, latent) the prototypes, N(0, 1) at start
//   experts = top-k of s;  weights = softmax of the k selected s
//   expert input = h + (softmax(s_t) K) W_out + b_out     (the aligner; the residual is unchanged)
//   aux = coef * ( div * (D(mu) + D(K)) + kl * KL(N(mu, var) || N(0, I)) + align * |K - sg(R^T z)|_mean )
// with D(X) = mean((X_hat X_hat^T - I)^2) and R = softmax over experts of a vector that holds the
// selected s and 0 elsewhere (the code's "hard" routing matrix).
// Interpretations, and what is left out:
//   - The paper's text (its equations) was not available here; everything above is the code's.
//   - R^T z sums over the call's tokens, as in the code, so the alignment target grows with the
//     tokens per router call (router.group_tokens); we keep that rather than guess a mean.
//   - The code's EMA update of the prototypes (update_expert_keys) is never called by its trainer
//     (commented out); not implemented. Its Gaussian-distance variants are not implemented.
//   - At evaluation there is no draw and no loss; routing reads mu only, as in training.
// Differentiated: everything except the alignment target.
#include "routers/lpr.hpp"

#include <cmath>

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"

namespace ssr::routers {

namespace {

torch::Tensor unit_rows(const torch::Tensor& x) {
  return torch::nn::functional::normalize(x, torch::nn::functional::NormalizeFuncOptions().dim(1));
}

}  // namespace

torch::Tensor lpr_diversity(const torch::Tensor& x) {
  auto x_hat = unit_rows(at_least_float(x));                        // (rows, dim)
  auto g = x_hat.matmul(x_hat.t());                                 // (rows, rows)
  return (g - torch::eye(g.size(0), g.options())).square().mean();  // ()
}

LprRouter::LprRouter(int64_t d_model, int64_t n_experts, int64_t top_k, int64_t latent, Weights w)
    : k_(top_k), latent_(latent), w_(w) {
  torch::NoGradGuard no_grad;
  auto gen = forked_default_generator();
  // nn.Linear's and nn.LayerNorm's initialisations, as the code gets them from PyTorch.
  auto linear = [&](int64_t out, int64_t in) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(in));
    return std::make_pair(torch::empty({out, in}).uniform_(-bound, bound, gen),
                          torch::empty({out}).uniform_(-bound, bound, gen));
  };
  auto [ew, eb] = linear(2 * latent, d_model);
  auto [ow, ob] = linear(d_model, latent);
  ln_w = register_parameter("ln_w", torch::ones({d_model}));
  ln_b = register_parameter("ln_b", torch::zeros({d_model}));
  enc_w = register_parameter("enc_w", ew);
  enc_b = register_parameter("enc_b", eb);
  out_w = register_parameter("out_w", ow);
  out_b = register_parameter("out_b", ob);
  keys = register_parameter("keys", torch::randn({n_experts, latent}, gen));
}

Routing LprRouter::decide(const RouteInput& in, Mode mode, torch::Generator& gen) {
  if (in.hidden.size(1) == 0) throw std::logic_error("lpr router: called without hidden states");
  auto h = at_least_float(in.hidden);                                                 // (tokens, d_model)
  auto x = torch::silu(torch::layer_norm(h, {h.size(1)}, ln_w, ln_b));                // (tokens, d_model)
  auto stats = torch::linear(x, enc_w, enc_b);                                        // (tokens, 2 latent)
  auto mu = stats.narrow(1, 0, latent_), logvar = stats.narrow(1, latent_, latent_);  // (tokens, latent) each
  auto s = unit_rows(mu).matmul(unit_rows(keys).t());                                 // (tokens, experts)
  auto [top, idx] = stable_top_k(s, k_);                                              // (tokens, k) each
  Routing r;
  r.experts = idx;
  r.weights = top.softmax(-1);  // (tokens, k)
  r.scores = s;
  r.input_shift = torch::linear(s.softmax(-1).matmul(keys), out_w, out_b);  // (tokens, d_model)
  if (mode == Mode::Eval) {
    r.aux_loss = torch::zeros({}, s.options());
    return r;
  }
  auto z = mu + draw_normal(mu, gen) * (0.5 * logvar).exp();                  // (tokens, latent)
  auto kl = -0.5 * (1 + logvar - mu.square() - logvar.exp()).sum(-1).mean();  // ()
  auto routed = torch::zeros_like(s).scatter(1, idx, top).softmax(-1);        // (tokens, experts)
  auto target = routed.t().matmul(z).detach();                                // (experts, latent)
  auto align = (keys - target).abs().mean();                                  // ()
  r.aux_loss = w_.coef * (w_.div * (lpr_diversity(mu) + lpr_diversity(keys)) + w_.kl * kl + w_.align * align);
  return r;
}

RouterSpec lpr_spec() {
  RouterSpec s;
  s.name = "lpr";
  s.summary = "top-k by cosine between a token's latent code and learned expert prototypes, with LPR's regulariser";
  s.source = "Latent Prototype Routing (Yang 2025, arXiv 2506.21328), from its authors' code (model_zoo/router.py)";
  s.caps.aux_loss = s.caps.draws = s.caps.hidden = true;
  namespace k = config::keys;
  s.keys = {
      k::unhashed_at_default(
          k::I("router.lpr_latent_dim", 16, 1, 1 << 16, "lpr: latent dimension of codes and prototypes")),
      k::unhashed_at_default(k::F("router.lpr_coef", 0.01, 0, k::kInf, "lpr: coefficient of the whole regulariser")),
      k::unhashed_at_default(
          k::F("router.lpr_div", 1.0, 0, k::kInf, "lpr: weight of the diversity terms D(mu) + D(K)")),
      k::unhashed_at_default(k::F("router.lpr_kl", 0.01, 0, k::kInf, "lpr: weight of KL(q(z|x) || N(0, I))")),
      k::unhashed_at_default(
          k::F("router.lpr_align", 0.1, 0, k::kInf, "lpr: weight of |K - sg(R^T z)| (prototype alignment)")),
  };
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<LprRouter>(sh.d_model, sh.n_experts, sh.top_k, cfg.i("router.lpr_latent_dim"),
                                       LprRouter::Weights{cfg.f("router.lpr_coef"), cfg.f("router.lpr_div"),
                                                          cfg.f("router.lpr_kl"), cfg.f("router.lpr_align")});
  };
  s.bench = {{"lpr", {}}};
  return s;
}

}  // namespace ssr::routers
