// Sinkhorn solvers: plain-domain scaling (reference numerics), log-domain scaling, and the
// Sinkhorn-Newton (SNS) variant on the semi-dual. See sinkhorn.hpp; nothing is differentiated.
#include "routers/sinkhorn.hpp"

#include <fmt/format.h>

#include <cmath>
#include <stdexcept>

#include "harness/config/choice.hpp"
#include "harness/config/declare.hpp"
#include "routers/util.hpp"

#ifdef SSR_WITH_CUDA
#include <c10/cuda/CUDAStream.h>

#include "routers/cuda/sinkhorn_fused.cuh"
#endif

namespace ssr::routers {
namespace {

// Column error only: every sweep ends with the row update, so rows are exact up to rounding.
torch::Tensor column_error(const torch::Tensor& col_sums, double target, int64_t m) {  // col_sums: (experts)
  return (col_sums - target).abs().sum() / static_cast<double>(m);                     // ()
}

bool should_check(int64_t it, int64_t last, int64_t every) { return it % every == 0 || it == last; }

SinkhornResult finish(torch::Tensor plan, int64_t iters, double delta) {
  SinkhornResult r;
  r.error = marginal_error(plan).item<double>();
  r.plan = std::move(plan);
  r.iters = iters;
  r.finite = std::isfinite(r.error);
  r.converged = r.finite && r.error <= delta;
  return r;
}

// Algorithm 1 with r = 1, s = m/n: v = s / K^T u, u = 1 / K v.
SinkhornResult solve_plain(const torch::Tensor& log_k, const SinkhornOptions& o) {
  const int64_t m = log_k.size(0), n = log_k.size(1);
  const double s = static_cast<double>(m) / static_cast<double>(n);
  auto k = log_k.exp();                        // (tokens, experts) inf when C/xi > ~89
  auto u = torch::ones({m}, log_k.options());  // (tokens)
  torch::Tensor v;                             // (experts)
  int64_t it = 0;
  while (it < o.max_iter) {
    ++it;
    v = s / u.matmul(k);  // (experts)
    u = 1.0 / k.mv(v);    // (tokens)
    // The check the result reports (marginal_error of the plan itself), so the loop stops at the
    // first checked sweep whose plan meets delta: a column sum taken as v * (u K) rounds otherwise
    // and kept a plan that already met delta sweeping to max_iter.
    if (should_check(it, o.max_iter, o.check_every)) {
      const double err = marginal_error(u.unsqueeze(1) * k * v.unsqueeze(0)).item<double>();
      if (!std::isfinite(err) || err <= o.delta) break;
    }
  }
  return finish(u.unsqueeze(1) * k * v.unsqueeze(0), it, o.delta);  // (tokens, experts)
}

// The authors' prototype (spec 1.6): K = exp(C / xi) without appendix D's -1 (the sizes of u
// and v, which its rule compares, depend on it), u = v = 1; each sweep u' = 1 / (K v) first, then
// v' = s / (K^T u'); stop once |u' - u|_1 < delta and |v' - v|_1 < delta.
SinkhornResult solve_scaling(const torch::Tensor& log_k, const SinkhornOptions& o) {
  const int64_t m = log_k.size(0), n = log_k.size(1);
  const double s = static_cast<double>(m) / static_cast<double>(n);
  auto k = (log_k + 1.0).exp();                // (tokens, experts)
  auto u = torch::ones({m}, log_k.options());  // (tokens)
  auto v = torch::ones({n}, log_k.options());  // (experts)
  int64_t it = 0;
  while (it < o.max_iter) {
    ++it;
    auto u_next = 1.0 / k.mv(v);         // (tokens)
    auto v_next = s / u_next.matmul(k);  // (experts)
    bool stop = false;
    if (should_check(it, o.max_iter, o.check_every)) {
      const double change = torch::maximum((u_next - u).abs().sum(), (v_next - v).abs().sum()).item<double>();
      stop = !std::isfinite(change) || change < o.delta;
    }
    u = u_next;
    v = v_next;
    if (stop) break;
  }
  return finish(u.unsqueeze(1) * k * v.unsqueeze(0), it, o.delta);  // (tokens, experts)
}

// The same sweeps on the log potentials a = log u, b = log v.
struct LogState {
  torch::Tensor a;  // (tokens)
  torch::Tensor b;  // (experts)
};

// check_every <= 0: no convergence checks (no host sync).
LogState log_sweeps(const torch::Tensor& log_k, int64_t sweeps, int64_t check_every, double delta, int64_t& it) {
  const int64_t m = log_k.size(0), n = log_k.size(1);
  const double log_s = std::log(static_cast<double>(m) / static_cast<double>(n));
  LogState st{torch::zeros({m}, log_k.options()), torch::zeros({n}, log_k.options())};
  for (int64_t done = 0; done < sweeps;) {
    ++done;
    ++it;
    st.b = log_s - torch::logsumexp(log_k + st.a.unsqueeze(1), 0);  // (experts)
    st.a = -torch::logsumexp(log_k + st.b.unsqueeze(0), 1);         // (tokens)
    if (check_every > 0 && should_check(done, sweeps, check_every)) {
      auto cols = (log_k + st.a.unsqueeze(1) + st.b.unsqueeze(0)).exp().sum(0);  // (experts)
      if (column_error(cols, std::exp(log_s), m).item<double>() <= delta) break;
    }
  }
  return st;
}

SinkhornResult solve_log(const torch::Tensor& log_k, const SinkhornOptions& o) {
  int64_t it = 0;
  auto st = log_sweeps(log_k, o.max_iter, o.check_every, o.delta, it);
  auto plan = (log_k + st.a.unsqueeze(1) + st.b.unsqueeze(0)).exp();  // (tokens, experts)
  return finish(plan, it, o.delta);
}

// SNS on the semi-dual: for column potentials b the row constraint is met exactly by
// Pi = row-softmax(log K + b); b maximises F(b) = s.b - sum_i logsumexp_j(log K_ij + b_j), whose
// gradient is s - colsum(Pi) and Hessian -(diag(colsum Pi) - Pi^T Pi), an n x n dense matrix.
SinkhornResult solve_newton(const torch::Tensor& log_k, const SinkhornOptions& o) {
  const int64_t m = log_k.size(0), n = log_k.size(1);
  const double s = static_cast<double>(m) / static_cast<double>(n);
  int64_t it = 0;
  auto b = log_sweeps(log_k, o.newton_warmup, 0, 0.0, it).b;  // (experts)
  // Backtracking without a host sync: every step length is tried at once and the one with the
  // smallest gradient norm (column error) wins; column sums are accurate in float32 where F is not.
  auto steps = torch::tensor({1.0, 0.5, 0.25, 0.125, 0.0625}, log_k.options());  // (steps)
  auto pi = (log_k + b.unsqueeze(0)).softmax(1);                                 // (tokens, experts)
  auto cols = pi.sum(0);                                                         // (experts)
  auto dbl = log_k.options().dtype(torch::kFloat64);
  // The Hessian is singular along 1 (shifting b changes nothing); adding a multiple of 1 1^T makes
  // it definite without changing the solution, because the gradient sums to zero.
  auto ones_nn = torch::full({n, n}, s / static_cast<double>(n), dbl);    // (experts, experts)
  auto singular = torch::zeros({}, log_k.options().dtype(torch::kBool));  // () a Newton system had no solution
  for (int64_t step = 0; step < o.newton_steps;) {
    ++step;
    ++it;
    auto hess = torch::diag(cols.to(torch::kFloat64)) - pi.t().mm(pi).to(torch::kFloat64);  // (experts, experts)
    auto grad = (s - cols).to(torch::kFloat64);                                             // (experts)
    // At small xi a column of the plan can underflow to zero and the system become singular; the
    // step is then skipped (a zero direction), and the next check hands over to the log solver.
    auto [sol, info] = torch::linalg_solve_ex(hess + ones_nn, grad.unsqueeze(1));
    auto dir = sol.squeeze(1).to(log_k.scalar_type());                     // (experts)
    auto bad = info.ne(0).logical_or(dir.isfinite().all().logical_not());  // ()
    singular = singular.logical_or(bad);
    dir = torch::where(bad, torch::zeros_like(dir), dir);
    auto cand = b.unsqueeze(0) + steps.unsqueeze(1) * dir.unsqueeze(0);  // (steps, experts)
    auto pis = (log_k.unsqueeze(0) + cand.unsqueeze(1)).softmax(2);      // (steps, tokens, experts)
    auto cand_cols = pis.sum(1);                                         // (steps, experts)
    auto best = (cand_cols - s).square().sum(1).argmin();                // ()
    b = cand.index_select(0, best.unsqueeze(0)).squeeze(0);
    pi = pis.index_select(0, best.unsqueeze(0)).squeeze(0);
    cols = cand_cols.index_select(0, best.unsqueeze(0)).squeeze(0);
    if (should_check(step, o.newton_steps, o.check_every)) {
      if (singular.item<bool>()) break;
      if (column_error(cols, s, m).item<double>() <= o.delta) break;
    }
  }
  if (singular.item<bool>()) {
    // The potentials reached before the singular step can be far off (the plan collapsed onto a
    // few columns), so the log-domain solver starts afresh, with its own sweep budget.
    auto r = solve_log(log_k, o);
    r.iters += it;
    r.newton_fallback = true;
    return r;
  }
  return finish(pi, it, o.delta);
}

#ifdef SSR_WITH_CUDA
// Log-domain sweeps in one kernel launch; the convergence check runs on the device every sweep.
SinkhornResult solve_fused(const torch::Tensor& log_k, const SinkhornOptions& o) {
  const int64_t m = log_k.size(0), n = log_k.size(1);
  if (!log_k.is_cuda() || n > cuda::kFusedMaxExperts)
    throw std::invalid_argument(
        fmt::format("router.solver: fused needs the cost on a CUDA device and at most {} experts (got {}, {} experts); "
                    "use router.solver=eager",
                    cuda::kFusedMaxExperts, log_k.device().str(), n));
  auto lk = log_k.to(torch::kFloat32).contiguous();  // (tokens, experts)
  const int blocks = cuda::fused_sinkhorn_blocks(m);
  auto plan = torch::empty_like(lk);             // (tokens, experts)
  auto stats = torch::empty({2}, lk.options());  // (sweeps, column error)
  auto scratch = torch::empty({cuda::fused_sinkhorn_scratch_floats(blocks, static_cast<int>(n))}, lk.options());
  auto status =
      cuda::fused_log_sinkhorn(lk.data_ptr<float>(), plan.data_ptr<float>(), stats.data_ptr<float>(),
                               scratch.data_ptr<float>(), blocks, m, static_cast<int>(n), static_cast<float>(o.delta),
                               static_cast<int>(o.max_iter), c10::cuda::getCurrentCUDAStream());
  TORCH_CHECK(status == cudaSuccess, "fused Sinkhorn kernel: ", cudaGetErrorString(status));
  const auto sweeps = static_cast<int64_t>(stats[0].item<float>());
  return finish(plan.to(log_k.scalar_type()), sweeps, o.delta);
}
#endif

}  // namespace

torch::Tensor marginal_error(const torch::Tensor& plan) {
  const int64_t m = plan.size(0), n = plan.size(1);
  auto rows = (plan.sum(1) - 1.0).abs().mean();                                               // ()
  auto cols = column_error(plan.sum(0), static_cast<double>(m) / static_cast<double>(n), m);  // ()
  return torch::maximum(rows, cols);
}

SinkhornResult sinkhorn(const torch::Tensor& cost, const SinkhornOptions& opt) {
  TORCH_CHECK(cost.dim() == 2 && cost.size(0) > 0 && cost.size(1) > 0, "sinkhorn: cost must be (tokens, experts)");
  torch::NoGradGuard no_grad;
  // Under train.precision=bf16 autocast would run the scaling's matmuls in bfloat16: 8-bit
  // mantissas cannot reach delta = 1e-4, and the plain scaling failed on the mixed dtypes
  // ("expected scalar type Float but found BFloat16").
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
  const auto c = opt.float64 ? cost.detach().to(torch::kFloat64) : at_least_float(cost.detach());
  auto log_k = c / opt.xi - 1.0;  // (tokens, experts)
#ifdef SSR_WITH_CUDA
  if (opt.solver == Solver::Fused) return solve_fused(log_k, opt);
#endif
  if (opt.newton_steps > 0) return solve_newton(log_k, opt);
  if (opt.stop == StopRule::Scaling) return solve_scaling(log_k, opt);
  return opt.numerics == Numerics::Plain ? solve_plain(log_k, opt) : solve_log(log_k, opt);
}

std::vector<config::Key> sinkhorn_keys() {
  using namespace config::keys;
  return {
      F("router.xi", 0.5, 1e-6, kInf, "Sinkhorn entropic regularisation xi"),
      F("router.delta", 1e-4, 0, kInf,
        "Sinkhorn tolerance on the marginal error (L1 of the normalised row/column marginals)"),
      I("router.max_iter", 100, 1, 1000000, "Sinkhorn iteration limit eta"),
      C("router.numerics", "log", {"plain", "log"},
        "Sinkhorn scaling in the plain domain (reference; overflows for small xi) or log domain"),
      I("router.check_every", 10, 1, 1000000,
        "Sinkhorn iterations between convergence checks (each check syncs with the host)"),
      I("router.newton_steps", 0, 0, 1000,
        "Newton steps on the dual potential after the Sinkhorn sweeps (0 = off; SNS; needs numerics log)"),
      I("router.newton_warmup", 3, 0, 1000, "log-domain Sinkhorn sweeps before the Newton stage"),
      unhashed_at_default(
          C("router.stop_rule", "marginal", {"marginal", "scaling"},
            "Sinkhorn stop: marginal errors <= router.delta (paper Algorithm 1), or u and v changing by < router.delta "
            "in L1 (the authors' prototype: u first, kernel exp(C/xi); plain numerics)")),
      unhashed_at_default(C("router.precision", "float32", {"float32", "float64"},
                            "Sinkhorn arithmetic: float32, or float64 from the float32 cost (plans exact to ~1e-11 at "
                            "router.delta 1e-12, for comparisons with float64 references such as POT; eager solver)")),
      C("router.solver", "eager", {"eager", "fused"},
        "Sinkhorn implementation: eager LibTorch ops, or one fused CUDA kernel (log domain, <= 64 experts, CUDA "
        "builds)"),
  };
}

SinkhornOptions sinkhorn_options(const config::Config& cfg) {
  SinkhornOptions o;
  o.xi = cfg.f("router.xi");
  o.delta = cfg.f("router.delta");
  o.max_iter = cfg.i("router.max_iter");
  o.numerics = config::choice<Numerics>(cfg, "router.numerics", {{"log", Numerics::Log}, {"plain", Numerics::Plain}});
  o.check_every = cfg.i("router.check_every");
  o.newton_steps = cfg.i("router.newton_steps");
  o.newton_warmup = cfg.i("router.newton_warmup");
  o.solver = config::choice<Solver>(cfg, "router.solver", {{"eager", Solver::Eager}, {"fused", Solver::Fused}});
  if (o.solver == Solver::Fused) {
#ifndef SSR_WITH_CUDA
    throw config::ConfigError(
        "router.solver: fused is a CUDA kernel and this ssr was built without CUDA (make build CUDA=ON); use eager");
#endif
    if (o.numerics == Numerics::Plain || o.newton_steps > 0)
      throw config::ConfigError(
          "router.solver: fused runs log-domain sweeps only; set router.numerics=log and router.newton_steps=0");
  }
  o.float64 = cfg.s("router.precision") == "float64";
  if (o.float64 && o.solver == Solver::Fused)
    throw config::ConfigError("router.precision: float64 runs on the eager solver; set router.solver=eager");
  o.stop = config::choice<StopRule>(cfg, "router.stop_rule",
                                    {{"marginal", StopRule::Marginal}, {"scaling", StopRule::Scaling}});
  if (o.stop == StopRule::Scaling && (o.numerics != Numerics::Plain || o.newton_steps > 0 || o.solver != Solver::Eager))
    throw config::ConfigError(
        "router.stop_rule: scaling is the authors' plain-domain prototype; set router.numerics=plain, "
        "router.newton_steps=0 and router.solver=eager (or router.stop_rule=marginal)");
  if (o.newton_steps > 0 && o.numerics == Numerics::Plain)
    throw config::ConfigError(
        "router.numerics: plain cannot be combined with router.newton_steps > 0 (the Newton stage is log-domain)");
  return o;
}

}  // namespace ssr::routers
