// Eigenbasis-guided routing (EMoE; Cheng et al. 2026, arXiv 2601.12137), read from its authors'
// code: github.com/Belis0811/EMoE, moe_layers.py (EigenRouter, ENNBasis, MoEAdapterBranch):
//   z = Q^T h                                 Q (d_model, r) with orthonormal columns
//   e_j = z_j^2 / (sum_i z_i^2 + 1e-6)        the share of the token's energy along direction j
//   l_x = sum_j e_j gamma_j softmax_x(M)_j + b_x      M (experts, r), softmax over the experts
//   p = softmax(l / tau);  experts = top-k of p;  weights = p at those experts (not renormalised)
//   aux = ortho * |Q^T Q - I|_F^2
// and after every optimizer step Q is retracted onto orthonormal columns by QR.
// Interpretations, and what is left out:
//   - The paper's text was not available to us, so its equation numbers are not given.
//   - The code retracts at the start of every training forward; here it is after every optimizer
//     step (end_step), the same schedule when a step is one forward, and it keeps the graph of an
//     earlier router call of the same step (router.group_tokens, micro-batches) valid.
//   - The code's torch.linalg.qr may flip a column's sign at every retraction, which leaves the
//     routing unchanged (it reads z^2) but reverses that column's gradient against Adam's moments;
//     the signs are fixed here so that R's diagonal is positive (the standard QR retraction).
//   - The code's second basis P and its eigenvalues enter nothing but P's own orthogonality
//     penalty, so they are left out; the loss keeps Q's part.
//   - The code's experts are adapters beside a frozen ViT block; here the router drives the
//     harness's MoE layer like any other router.
// Differentiated: everything; the retraction is not.
#include "routers/emoe.hpp"

#include <fmt/format.h>

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"

namespace ssr::routers {

namespace {

// The Q factor of x (rows, cols), rows >= cols, with R's diagonal made positive: unique, and equal
// to x when x's columns are already orthonormal.
torch::Tensor orthonormal_columns(const torch::Tensor& x) {
  auto [q, r] = torch::linalg_qr(x, "reduced");                         // (rows, cols), (cols, cols)
  auto sign = torch::where(r.diagonal() < 0, -1.0, 1.0).to(q.dtype());  // (cols)
  return q * sign;                                                      // (rows, cols)
}

}  // namespace

EmoeRouter::EmoeRouter(int64_t d_model, int64_t n_experts, int64_t top_k, int64_t rank, double tau, double ortho_coef)
    : k_(top_k), tau_(tau), ortho_(ortho_coef) {
  torch::NoGradGuard no_grad;
  auto gen = forked_default_generator();
  // nn.init.orthogonal_ as the code uses it: QR of a standard normal draw, signs fixed.
  basis = register_parameter("basis", orthonormal_columns(torch::randn({d_model, rank}, gen)));
  gamma = register_parameter("gamma", torch::ones({rank}));
  masks = register_parameter("masks", torch::randn({n_experts, rank}, gen));
  bias = register_parameter("bias", torch::zeros({n_experts}));
}

Routing EmoeRouter::decide(const RouteInput& in, Mode mode, torch::Generator&) {
  if (in.hidden.size(1) == 0) throw std::logic_error("emoe router: called without hidden states");
  auto h = at_least_float(in.hidden);                                  // (tokens, d_model)
  auto z = h.matmul(basis);                                            // (tokens, rank)
  auto energy = z.square();                                            // (tokens, rank)
  energy = energy / (energy.sum(-1, /*keepdim=*/true) + 1e-6);         // (tokens, rank)
  auto logits = (energy * gamma).matmul(masks.softmax(0).t()) + bias;  // (tokens, experts)
  auto scores = logits / tau_;                                         // (tokens, experts)
  auto [top, idx] = stable_top_k(scores.softmax(-1), k_);              // (tokens, k) each
  Routing r;
  r.experts = idx;
  r.weights = top.to(in.logits.scalar_type());
  r.scores = scores;
  if (mode == Mode::Eval || ortho_ == 0) {
    r.aux_loss = torch::zeros({}, h.options());
    return r;
  }
  auto gram = basis.t().matmul(basis);                                                     // (rank, rank)
  r.aux_loss = ortho_ * (gram - torch::eye(gram.size(0), gram.options())).square().sum();  // ()
  return r;
}

void EmoeRouter::end_step(const SumOverRanks&) {
  torch::NoGradGuard no_grad;
  basis.copy_(orthonormal_columns(basis));
}

RouterSpec emoe_spec() {
  RouterSpec s;
  s.name = "emoe";
  s.summary = "top-k of softmax over expert masks on the token's energy along a learned orthonormal basis (EMoE)";
  s.source =
      "EMoE, eigenbasis-guided routing (Cheng et al. 2026, arXiv 2601.12137), from its authors' code "
      "(moe_layers.py, EigenRouter)";
  s.caps.aux_loss = s.caps.hidden = s.caps.stateful = true;
  namespace k = config::keys;
  s.keys = {
      k::unhashed_at_default(
          k::I("router.emoe_rank", 0, 0, 1 << 16,
               "emoe: directions in the basis; 0: ceil(d_model / 6), the code's 128 at d_model 768")),
      k::unhashed_at_default(k::F("router.emoe_tau", 1.0, 1e-6, k::kInf, "emoe: softmax temperature of the scores")),
      k::unhashed_at_default(k::F("router.emoe_ortho", 1e-3, 0, k::kInf,
                                  "emoe: coefficient of |Q^T Q - I|_F^2 (the code's ortho_lambda)")),
  };
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    int64_t rank = cfg.i("router.emoe_rank");
    if (rank == 0) rank = (sh.d_model + 5) / 6;
    if (rank > sh.d_model)
      throw config::ConfigError(fmt::format(
          "router.emoe_rank={}: the basis cannot have more directions than d_model={}; set it to at most {}", rank,
          sh.d_model, sh.d_model));
    return std::make_shared<EmoeRouter>(sh.d_model, sh.n_experts, sh.top_k, rank, cfg.f("router.emoe_tau"),
                                        cfg.f("router.emoe_ortho"));
  };
  s.bench = {{"emoe", {}}};
  return s;
}

}  // namespace ssr::routers
