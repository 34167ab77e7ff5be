// OSR, Orthogonal Sinkhorn Routing (SPECTRA; the paper is not public: read from its authors' code,
// github.com/ppijbb/llm_training at 49b148ca, models/spectra_runnable_legacy.py: compute_osr_cost,
// log_sinkhorn_stabilized, SPECTRARouter.forward; method text paperworks/04_method.txt Sec. 3.4):
//   sim[t, e] = cos(x_t, w_e)   x_t the gate's input, w_e the gate's row e (the expert embedding)
//   G = w_hat w_hat^T with diag(G) = 0;  C = -sim + lambda |sim| (G o G)   (a matrix product)
// Two readings (router.osr_reading; router=osr selects authors):
// authors, the code as it runs:
//   - its Sinkhorn maximises C (the code passes the cost where its solver takes "logits, higher =
//     better"), in the log domain for router.osr_iters sweeps (3) at epsilon = router.osr_eps (0.1)
//     x (1 + min(cv, 5)) x (1 + min(cv, 3)) in training and x (1 + min(cv, 3)) at inference (the
//     router and the solver each scale it), cv an EMA (0.95, from 1) of the coefficient of variation
//     of the soft load; the plan's rows renormalised to 1;
//   - in training its Expert-Choice quota picks (router.osr_quota): each expert takes the
//     ceil(T k / E x router.osr_quota_factor) tokens of highest bid, each token keeps its k best
//     offers, weighted by the softmax of those bids (an offer it lacks counts -1e4); the bid is
//     sim plus a per-token priority from a head of the authors' model, which has no counterpart
//     here: priority 0 (interpretation);
//   - otherwise the top-k of the plan, weighted by the plan renormalised over them;
//   - gradients flow through sim, G and the plan, as in the code.
// docstring, the reading this harness shipped first: Sinkhorn on -C (the docstring's "lower is
//   better" and the method text's Q = exp(-C/eps)), solved by the Sinkhorn baseline's solver and
//   keys; weights the softmax of the gate logits at the chosen experts; sim, G and the plan
//   detached. At lambda = 0 its choice is exactly the Sinkhorn router's on the cosine scores (test).
// Neither reading has the code's GRU expert bias, its learned expression projector (the gate's rows
// stand in) or its auxiliary losses; the method text's hinge beta ReLU(|sim| - tau)^2 is in neither.
#include "routers/osr.hpp"

#include <algorithm>
#include <cmath>

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"
#include "routers/vanilla.hpp"

namespace ssr::routers {

torch::Tensor osr_score(const torch::Tensor& x, const torch::Tensor& w, double repulsion) {
  auto x_hat = torch::nn::functional::normalize(at_least_float(x),
                                                torch::nn::functional::NormalizeFuncOptions().dim(1));  // (tokens, d)
  auto w_hat = torch::nn::functional::normalize(at_least_float(w),
                                                torch::nn::functional::NormalizeFuncOptions().dim(1));  // (experts, d)
  auto sim = x_hat.matmul(w_hat.t());  // (tokens, experts)
  if (repulsion == 0) return sim;
  auto g = w_hat.matmul(w_hat.t());  // (experts, experts)
  g.fill_diagonal_(0);
  return sim - repulsion * sim.abs().matmul(g * g);  // (tokens, experts)
}

AuthorsPlan authors_sinkhorn(const torch::Tensor& score, double eps, int64_t iters) {
  const int64_t n = score.size(0), e = score.size(1);
  auto m = score.to(torch::kFloat) / std::max(eps, 1e-4);     // (tokens, experts)
  m = m - std::get<0>(m.max(-1, /*keepdim=*/true)).detach();  // a shift the row sweep takes back
  auto f = torch::zeros({n, 1}, m.options());                 // (tokens, 1) log row scaling
  auto g = torch::zeros({1, e}, m.options());                 // (1, experts) log column scaling
  const double log_col = std::log(static_cast<double>(n) / static_cast<double>(e) + 1e-10);
  for (int64_t i = 0; i < iters; ++i) {
    f = -torch::logsumexp(m + g, -1, /*keepdim=*/true);
    g = log_col - torch::logsumexp(m + f, 0, /*keepdim=*/true);
  }
  auto p = torch::exp(f + m + g);                // (tokens, experts)
  p = p / (p.sum(-1, /*keepdim=*/true) + 1e-8);  // rows exactly 1, as the code ends
  AuthorsPlan out{p, 0};
  if (iters > 0) {
    torch::NoGradGuard no_grad;
    const double row = (p.sum(-1) - 1).abs().max().item<double>();
    const double col = (p.sum(0) - static_cast<double>(n) / static_cast<double>(e)).abs().max().item<double>();
    out.max_vio = std::max(row, col);
  }
  return out;
}

OsrRouter::OsrRouter(int64_t n_experts, int64_t top_k, OsrOptions opt)
    : k_(top_k), opt_(opt), load_(torch::zeros({n_experts})) {
  // Only the authors' reading has state, so a docstring run's checkpoint stays as it was.
  if (opt_.reading == OsrReading::Authors) cv_ema = register_buffer("osr_cv_ema", torch::ones({}));
}

Routing OsrRouter::decide(const RouteInput& in, Mode mode, torch::Generator&) {
  if (!in.gate_weight.defined() || in.hidden.size(1) == 0)
    throw std::logic_error("osr router: called without hidden states or gate weights");
  if (opt_.reading == OsrReading::Authors) return decide_authors(in, mode);
  torch::Tensor score;  // (tokens, experts)
  {
    torch::NoGradGuard no_grad;
    score = osr_score(in.hidden.detach(), in.gate_weight.detach(), opt_.repulsion);
  }
  auto res = sinkhorn(transport_cost(score, opt_.cost), opt_.sinkhorn);
  Routing r;
  r.experts = stable_top_k(res.plan, k_).second;  // (tokens, k)
  r.weights = softmax_at(in.logits, r.experts);   // (tokens, k)
  r.aux_loss = torch::zeros({}, in.logits.options());
  fill_sinkhorn_fields(r, res);
  return r;
}

Routing OsrRouter::decide_authors(const RouteInput& in, Mode mode) {
  const bool train = mode == Mode::Train;
  auto x_hat = torch::nn::functional::normalize(at_least_float(in.hidden),
                                                torch::nn::functional::NormalizeFuncOptions().dim(1));  // (tokens, d)
  auto w_hat = torch::nn::functional::normalize(at_least_float(in.gate_weight),
                                                torch::nn::functional::NormalizeFuncOptions().dim(1));  // (experts, d)
  auto sim = x_hat.matmul(w_hat.t());  // (tokens, experts)
  auto g = w_hat.matmul(w_hat.t());    // (experts, experts)
  g = g * (1 - torch::eye(g.size(0), g.options()));
  auto cost = -sim + opt_.repulsion * sim.abs().matmul(g * g);  // (tokens, experts)
  const double cv = cv_ema.item<double>();
  const double eps = opt_.eps * (train ? 1 + std::min(cv, 5.0) : 1.0) * (1 + std::min(cv, 3.0));
  const auto solved = authors_sinkhorn(cost, eps, opt_.iters);  // the cost maximised, as the code runs it
  const int64_t n = sim.size(0), e = sim.size(1);
  Routing r;
  torch::Tensor soft_load;  // (tokens, experts) what the CV's EMA counts
  if (train && opt_.quota) {
    const int64_t cap = std::clamp<int64_t>(
        static_cast<int64_t>(std::ceil(static_cast<double>(n * k_) / static_cast<double>(e) * opt_.quota_factor)), 1,
        std::min(n * k_, n));
    torch::Tensor offered;  // (tokens, experts) bool: the expert took the token
    {
      torch::NoGradGuard no_grad;
      const auto taken = stable_top_k(sim.detach().t(), cap).second;  // (experts, cap) token ids
      offered = torch::zeros({e, n}, torch::kBool).to(sim.device()).scatter_(1, taken, true).t();
    }
    const auto no_offer = torch::full({}, -1e4, sim.options());
    auto bids = torch::where(offered, sim, no_offer);    // (tokens, experts)
    r.experts = stable_top_k(bids.detach(), k_).second;  // (tokens, k)
    r.weights = bids.gather(1, r.experts).softmax(-1);   // (tokens, k)
    soft_load = torch::where(offered, sim, torch::full({}, -20.0, sim.options())).softmax(-1);
  } else {
    auto [top, experts] = stable_top_k(solved.plan, k_);  // (tokens, k)
    r.experts = experts;
    top = top.clamp_min(0);
    r.weights = top / (top.sum(-1, /*keepdim=*/true) + 1e-8);  // (tokens, k)
    soft_load = solved.plan;
  }
  r.weights = r.weights.to(in.logits.scalar_type());
  r.aux_loss = torch::zeros({}, in.logits.options());
  r.scores = sim.detach();
  r.used_sinkhorn = true;
  r.sinkhorn_iters = opt_.iters;
  r.sinkhorn_error = solved.max_vio;
  r.sinkhorn_finite = std::isfinite(solved.max_vio);
  r.sinkhorn_converged = true;  // a fixed number of sweeps: nothing to converge to
  if (train) {
    torch::NoGradGuard no_grad;
    if (load_.device() != sim.device()) load_ = load_.to(sim.device());
    load_.add_(soft_load.detach().sum(0));
  }
  return r;
}

void OsrRouter::end_step(const SumOverRanks& sum_over_ranks) {
  if (opt_.reading != OsrReading::Authors) return;
  torch::NoGradGuard no_grad;
  const auto load = sum_over_ranks(load_);  // (experts)
  const double total = load.sum().item<double>();
  // The code updates after every training forward; here after the step, over the step's calls.
  if (total > 0) {
    const auto share = load / total;                                        // (experts)
    const auto cv = share.std(/*unbiased=*/false) / (share.mean() + 1e-6);  // ()
    cv_ema.mul_(0.95).add_(0.05 * cv.to(cv_ema.device()));
  }
  load_.zero_();
}

RouterSpec osr_spec() {
  using namespace config::keys;
  RouterSpec s;
  s.name = "osr";
  s.summary =
      "Sinkhorn plan on cosine scores with a repulsion between correlated experts (authors' or docstring reading)";
  s.source =
      "SPECTRA (ppijbb/llm_training: compute_osr_cost, log_sinkhorn_stabilized; paperworks/04_method.txt Sec. 3.4)";
  s.caps.hidden = s.caps.gate_weight = s.caps.stateful = true;
  const auto authors_only = [](config::Key k) {
    k.when.emplace_back("router.osr_reading", std::vector<std::string>{"authors"});
    return unhashed_at_default(k);
  };
  s.keys = sinkhorn_keys();
  s.keys.insert(
      s.keys.begin(),
      {cost_key(),
       unhashed_at_default(
           F("router.osr_repulsion", 0.5, 0, kInf,
             "osr: lambda, the weight of the repulsion |sim| (G o G) in the cost (0 = Sinkhorn on cosines)")),
       // Runs stored before the key were the docstring reading: that stays the key's default, and
       // router=osr (experiments/router/osr.yaml) selects the authors'.
       unhashed_at_default(C("router.osr_reading", "docstring", {"authors", "docstring"},
                             "osr: authors (their code as it runs; router=osr) or docstring (Sinkhorn on -C, logit "
                             "weights)")),
       authors_only(F("router.osr_eps", 0.1, 1e-4, kInf,
                      "osr authors: base epsilon of the log-domain Sinkhorn, scaled by the load CV's EMA")),
       authors_only(I("router.osr_iters", 3, 1, 10000, "osr authors: Sinkhorn sweeps (fixed; no convergence test)")),
       authors_only(
           B("router.osr_quota", true, "osr authors: the Expert-Choice quota picks in training (their default)")),
       authors_only(F("router.osr_quota_factor", 1.25, 1e-3, kInf,
                      "osr authors: quota capacity factor, ceil(T k / E x factor) tokens per expert"))});
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    OsrOptions o;
    o.reading = cfg.s("router.osr_reading") == "authors" ? OsrReading::Authors : OsrReading::Docstring;
    o.repulsion = cfg.f("router.osr_repulsion");
    o.cost = cost_kind(cfg.s("router.cost"));
    o.sinkhorn = sinkhorn_options(cfg);
    o.eps = cfg.f("router.osr_eps");
    o.iters = cfg.i("router.osr_iters");
    o.quota = cfg.b("router.osr_quota");
    o.quota_factor = cfg.f("router.osr_quota_factor");
    return std::make_shared<OsrRouter>(sh.n_experts, sh.top_k, o);
  };
  s.sinkhorn_p = [](const config::Config&) { return 1.0; };
  s.bench = {{"osr (authors, train)", {"osr_reading=authors"}}, {"osr (docstring)", {}}};
  return s;
}

}  // namespace ssr::routers
