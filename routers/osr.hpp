// OSR, Orthogonal Sinkhorn Routing (SPECTRA): Sinkhorn routing on cosine scores with a repulsive
// cost between correlated experts, in two readings of its sources (router.osr_reading).
#pragma once
#include "routers/router.hpp"
#include "routers/sinkhorn.hpp"
#include "routers/sinkhorn_router.hpp"

namespace ssr::routers {

// The OSR score (the negated cost) of hidden states x (tokens, d) against gate rows w (experts, d):
//   sim = cos(x_t, w_e); G = w_hat w_hat^T with its diagonal zeroed;
//   score = sim - repulsion * |sim| (G o G)       -> (tokens, experts)
torch::Tensor osr_score(const torch::Tensor& x, const torch::Tensor& w, double repulsion);

// The authors' log-domain Sinkhorn (log_sinkhorn_stabilized) as their router calls it: `score`
// (tokens, experts) is maximised at temperature eps for `iters` row-then-column sweeps (rows to 1,
// columns to tokens/experts), and the plan's rows are renormalised to 1. Differentiable.
struct AuthorsPlan {
  torch::Tensor plan;  // (tokens, experts)
  double max_vio = 0;  // the larger marginal violation of the returned plan
};
AuthorsPlan authors_sinkhorn(const torch::Tensor& score, double eps, int64_t iters);

// The reading of the sources (docs/routers.md, `osr`).
enum class OsrReading { Authors, Docstring };

struct OsrOptions {
  OsrReading reading = OsrReading::Docstring;
  double repulsion = 0.5;
  Cost cost = Cost::Linear;
  SinkhornOptions sinkhorn;  // docstring: the solver and its keys
  double eps = 0.1;          // authors: base epsilon
  int64_t iters = 3;         // authors: Sinkhorn sweeps
  bool quota = true;         // authors: the Expert-Choice quota in training
  double quota_factor = 1.25;
};

class OsrRouter : public RouterImpl {
 public:
  OsrRouter(int64_t n_experts, int64_t top_k, OsrOptions opt);
  void end_step(const SumOverRanks& sum_over_ranks) override;

  // authors: the EMA of the load's coefficient of variation that scales epsilon; () fp32, starts at 1.
  torch::Tensor cv_ema;

 protected:
  Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) override;

 private:
  Routing decide_authors(const RouteInput& in, Mode mode);
  int64_t k_;
  OsrOptions opt_;
  torch::Tensor load_;  // (experts) authors: the soft load of this step's training calls
};

}  // namespace ssr::routers
