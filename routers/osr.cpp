// OSR, Orthogonal Sinkhorn Routing (SPECTRA; the paper is not public: read from its authors' code,
// github.com/ppijbb/llm_training, models/spectra_runnable_legacy.py compute_osr_cost and
// log_sinkhorn_stabilized, and paperworks/04_method.txt Sec. 3.4):
//   sim[t, e] = cos(x_t, w_e)   x_t the gate's input, w_e the gate's row e (the expert embedding)
//   G = w_hat w_hat^T with diag(G) = 0;  C = -sim + lambda |sim| (G o G)   (a matrix product)
//   Pi = Sinkhorn plan of the score -C (rows 1, columns tokens/experts); experts = top-k of Pi;
//   weights = softmax of the gate logits S at those experts (as the Sinkhorn baseline).
// A token pays for expert j in proportion to how strongly it prefers experts correlated with j.
// Where we differ from that code, and why:
//   - The code passes C to its Sinkhorn as if higher were better, against its own docstring
//     ("lower is better"); we solve on -C, the reading the docstring and the method text give.
//   - The method text's hinge beta ReLU(|sim| - tau)^2 is not in the code; left out.
//   - Its epsilon grows with an EMA of the load CV and its expert embeddings are batch means of a
//     projector; here epsilon is router.xi and the embeddings are the gate's rows (no state).
//   - Its optional Expert-Choice quota is not applied (model.capacity_factor can be).
// At lambda = 0 the choice is exactly the Sinkhorn router's on the cosine scores (test).
// Differentiated: the weights, through S. Not differentiated: sim, G and the plan (detached).
#include "routers/osr.hpp"

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

OsrRouter::OsrRouter(int64_t top_k, double repulsion, Cost cost, SinkhornOptions opt)
    : k_(top_k), repulsion_(repulsion), cost_(cost), opt_(opt) {}

Routing OsrRouter::decide(const RouteInput& in, Mode, torch::Generator&) {
  if (!in.gate_weight.defined() || in.hidden.size(1) == 0)
    throw std::logic_error("osr router: called without hidden states or gate weights");
  torch::Tensor score;  // (tokens, experts)
  {
    torch::NoGradGuard no_grad;
    score = osr_score(in.hidden.detach(), in.gate_weight.detach(), repulsion_);
  }
  auto res = sinkhorn(transport_cost(score, cost_), opt_);
  Routing r;
  r.experts = stable_top_k(res.plan, k_).second;  // (tokens, k)
  r.weights = softmax_at(in.logits, r.experts);   // (tokens, k)
  r.aux_loss = torch::zeros({}, in.logits.options());
  fill_sinkhorn_fields(r, res);
  return r;
}

RouterSpec osr_spec() {
  RouterSpec s;
  s.name = "osr";
  s.summary = "Sinkhorn plan on cosine scores minus a repulsion between correlated experts; weights from the logits";
  s.source = "SPECTRA (ppijbb/llm_training: compute_osr_cost; paperworks/04_method.txt Sec. 3.4)";
  s.caps.hidden = s.caps.gate_weight = true;
  s.keys = sinkhorn_keys();
  s.keys.insert(s.keys.begin(),
                {cost_key(),
                 config::keys::unhashed_at_default(config::keys::F(
                     "router.osr_repulsion", 0.5, 0, config::keys::kInf,
                     "osr: lambda, the weight of the repulsion |sim| (G o G) in the cost (0 = Sinkhorn on cosines)"))});
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<OsrRouter>(sh.top_k, cfg.f("router.osr_repulsion"), cost_kind(cfg.s("router.cost")),
                                       sinkhorn_options(cfg));
  };
  s.sinkhorn_p = [](const config::Config&) { return 1.0; };
  s.bench = {{"osr", {}}};
  return s;
}

}  // namespace ssr::routers
