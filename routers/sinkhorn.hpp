// Entropic maximum-compatibility optimal transport between tokens and experts (paper Eq. 3-4,
// kernel exp(C/xi - 1) of appendix D): rows of the plan sum to 1, columns to tokens/experts.
// Nothing here is differentiated: the solver runs on a detached cost under NoGradGuard, because
// the paper trains W_g only through the softmax steps (section 4.2).
#pragma once
#include <torch/torch.h>

#include "harness/config/config.hpp"

namespace ssr::routers {

enum class Solver {
  Eager,  // LibTorch ops, on the cost's device (CPU or CUDA)
  Fused,  // one cooperative CUDA kernel, log domain, experts <= 64, no host sync inside (CUDA builds)
};

enum class Numerics {
  Plain,  // scaling vectors u, v in the plain domain, like the reference; overflows for small xi
  Log,    // potentials in the log domain (logsumexp updates); stable for every xi
};

enum class StopRule {
  Marginal,  // both marginal errors (marginal_error) <= delta: the paper's Algorithm 1
  Scaling,   // u and v each changed by < delta (L1) in the last sweep: the authors' prototype
};

struct SinkhornOptions {
  double xi = 0.5;         // entropic regularisation
  double delta = 1e-4;     // tolerance on marginal_error
  int64_t max_iter = 100;  // Sinkhorn sweeps (eta); the Newton stage has its own budget
  Numerics numerics = Numerics::Log;
  int64_t check_every = 10;   // sweeps between convergence checks: each check is one host sync
  int64_t newton_steps = 0;   // > 0: SNS, newton_warmup log sweeps then up to this many Newton steps
  int64_t newton_warmup = 3;  // log-domain sweeps before the Newton stage
  Solver solver = Solver::Eager;
  StopRule stop = StopRule::Marginal;  // Scaling: plain numerics and the eager solver only
  bool float64 = false;                // solve in float64 from the cost's values (plans to ~1e-11; eager solver only)
};

struct SinkhornResult {
  torch::Tensor plan;            // (tokens, experts) the plan, float32 (float64 for a float64 cost)
  int64_t iters = 0;             // sweeps plus Newton steps run
  double error = 0;              // marginal_error(plan)
  bool converged = false;        // error <= delta
  bool finite = true;            // false: the plain scaling overflowed and plan holds inf/NaN
  bool newton_fallback = false;  // SNS met a singular Newton system; the log-domain solver gave the plan
};

// Solves for the plan of a cost (tokens, experts); larger cost = more compatible.
SinkhornResult sinkhorn(const torch::Tensor& cost, const SinkhornOptions& opt);

// L1 distance of the plan's marginals from the targets, both normalised to probability vectors
// (so that it is scale-free in the token count): max(mean_i |row_i - 1|, sum_j |col_j - m/n| / m).
// plan: (tokens, experts); returns a () tensor on the plan's device (no host sync).
torch::Tensor marginal_error(const torch::Tensor& plan);

// Reads router.xi, delta, max_iter, numerics, check_every, newton_steps, newton_warmup, solver,
// stop_rule, precision.
SinkhornOptions sinkhorn_options(const config::Config& cfg);

// The Sinkhorn solver's router.* keys (xi, delta, max_iter, ...), shared by the routers that solve.
std::vector<config::Key> sinkhorn_keys();

}  // namespace ssr::routers
