// Sinkhorn solver: marginals, plain vs log vs Newton, exact double-precision references, overflow.
#include <catch2/catch.hpp>

#include <cmath>

#include "models/precision.hpp"
#include "routers/sinkhorn.hpp"
#include "tests/helpers.hpp"

using namespace ssr::routers;

namespace {

using ssr::testing::random_logits;

SinkhornOptions opts(double xi, Numerics num, double delta, int64_t max_iter, int64_t check_every = 10) {
  SinkhornOptions o;
  o.xi = xi;
  o.numerics = num;
  o.delta = delta;
  o.max_iter = max_iter;
  o.check_every = check_every;
  return o;
}

// Marginal error recomputed in double, independently of marginal_error().
double error_double(const torch::Tensor& plan) {
  auto p = plan.to(torch::kFloat64);  // (m, n)
  const double m = static_cast<double>(p.size(0)), n = static_cast<double>(p.size(1));
  double rows = (p.sum(1) - 1.0).abs().mean().item<double>();
  double cols = (p.sum(0) - m / n).abs().sum().item<double>() / m;
  return std::max(rows, cols);
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

}  // namespace

TEST_CASE("sinkhorn: marginals within delta for every xi, cost and numerics", "[sinkhorn]") {
  struct Row {
    double xi;
    bool softmax;
    Numerics num;
  };
  std::vector<Row> table;
  for (double xi : {0.05, 0.1, 0.5, 1.0})
    for (bool sm : {false, true})
      for (Numerics num : {Numerics::Plain, Numerics::Log}) table.push_back({xi, sm, num});
  auto logits = random_logits(256, 8, 1.0, 7);  // (256, 8), |S| < ~4: plain does not overflow here
  for (const auto& row : table) {
    auto cost = row.softmax ? logits.softmax(-1) : logits;
    auto res = sinkhorn(cost, opts(row.xi, row.num, 1e-4, 20000));
    INFO("xi " << row.xi << " softmax " << row.softmax << " plain " << (row.num == Numerics::Plain));
    REQUIRE(res.finite);
    CHECK(res.converged);
    CHECK(res.error <= 1e-4);
    CHECK(error_double(res.plan) <= 1e-4 + 1e-6);  // float32 sums: a little slack
    // Pi > 0 holds exactly, but entries below ~1e-38 underflow to 0 in float32 for xi = 0.05.
    CHECK((res.plan >= 0).all().item<bool>());
  }
}

TEST_CASE("sinkhorn: bf16 autocast leaves the solve in float32", "[sinkhorn][precision]") {
  const auto cost = random_logits(512, 16, 1.0, 5);  // (tokens, experts)
  struct Case {
    const char* name;
    SinkhornOptions o;
  };
  auto sns = opts(0.5, Numerics::Log, 1e-4, 100);
  sns.newton_steps = 8;
  const std::vector<Case> cases = {
      {"plain", opts(0.5, Numerics::Plain, 1e-4, 100)}, {"log", opts(0.5, Numerics::Log, 1e-4, 100)}, {"sns", sns}};
  for (const auto& c : cases) {
    INFO(c.name);
    const auto want = sinkhorn(cost, c.o);
    SinkhornResult got;
    {
      ssr::models::AutocastGuard autocast(torch::kCPU, true);
      got = sinkhorn(cost, c.o);
    }
    CHECK(got.plan.scalar_type() == torch::kFloat32);
    CHECK(got.iters == want.iters);
    CHECK(torch::equal(got.plan, want.plan));
    CHECK(got.converged);
  }
}

TEST_CASE("sinkhorn: log and plain agree where plain is finite", "[sinkhorn]") {
  for (double xi : {0.1, 0.5, 1.0}) {
    auto cost = random_logits(128, 16, 1.0, 11, torch::kFloat64);  // (128, 16)
    auto plain = sinkhorn(cost, opts(xi, Numerics::Plain, 1e-10, 50000));
    auto logd = sinkhorn(cost, opts(xi, Numerics::Log, 1e-10, 50000));
    INFO("xi " << xi);
    REQUIRE(plain.finite);
    REQUIRE(plain.converged);
    REQUIRE(logd.converged);
    CHECK((plain.plan - logd.plan).abs().max().item<double>() < 1e-8);
  }
}

TEST_CASE("sinkhorn: 2x2 matches the closed form", "[sinkhorn]") {
  // Rows sum to 1, columns to 1: Pi = [[a, 1-a], [1-a, a]]; stationarity gives
  // log(Pi11 Pi22 / (Pi12 Pi21)) = (C11 + C22 - C12 - C21) / xi, so a = sigmoid(D / (2 xi)).
  struct Row {
    double c11, c12, c21, c22, xi;
  };
  const std::vector<Row> table = {
      {1.0, 0.0, 0.0, 1.0, 0.5}, {2.0, -1.0, 0.5, 0.3, 1.0}, {0.2, 0.9, -0.4, 0.1, 0.05}, {3.0, 3.0, 3.0, 3.0, 0.1}};
  for (const auto& r : table) {
    auto cost = torch::tensor({r.c11, r.c12, r.c21, r.c22}, torch::kFloat64).reshape({2, 2});  // (2, 2)
    const double a = sigmoid((r.c11 + r.c22 - r.c12 - r.c21) / (2 * r.xi));
    for (Numerics num : {Numerics::Plain, Numerics::Log}) {
      auto res = sinkhorn(cost, opts(r.xi, num, 1e-13, 100000, 1));
      INFO("xi " << r.xi << " a " << a);
      REQUIRE(res.converged);
      auto p = res.plan;
      CHECK(p[0][0].item<double>() == Approx(a).margin(1e-10));
      CHECK(p[0][1].item<double>() == Approx(1 - a).margin(1e-10));
      CHECK(p[1][0].item<double>() == Approx(1 - a).margin(1e-10));
      CHECK(p[1][1].item<double>() == Approx(a).margin(1e-10));
    }
  }
}

TEST_CASE("sinkhorn: m x 2 plans match a double-precision bisection on the dual", "[sinkhorn]") {
  // With two experts Pi_i1 = sigmoid((C_i1 - C_i2) / xi + d) for one scalar d fixed by the
  // column constraint sum_i Pi_i1 = m / 2, which is monotone in d: bisection is exact to 1e-15.
  for (int64_t m : {3, 5, 9}) {
    for (double xi : {0.1, 0.5, 1.0}) {
      auto cost = random_logits(m, 2, 1.5, 100 + m, torch::kFloat64);  // (m, 2)
      auto c = cost.accessor<double, 2>();
      auto col1 = [&](double d) {
        double s = 0;
        for (int64_t i = 0; i < m; ++i) s += sigmoid((c[i][0] - c[i][1]) / xi + d);
        return s;
      };
      double lo = -200, hi = 200;
      for (int it = 0; it < 200; ++it) {
        double mid = 0.5 * (lo + hi);
        (col1(mid) < m / 2.0 ? lo : hi) = mid;
      }
      const double d = 0.5 * (lo + hi);
      auto res = sinkhorn(cost, opts(xi, Numerics::Log, 1e-13, 200000, 1));
      SinkhornOptions newton = opts(xi, Numerics::Log, 1e-13, 0, 1);
      newton.newton_steps = 50;
      auto res_n = sinkhorn(cost, newton);
      INFO("m " << m << " xi " << xi);
      REQUIRE(res.converged);
      REQUIRE(res_n.converged);
      for (int64_t i = 0; i < m; ++i) {
        const double ref = sigmoid((c[i][0] - c[i][1]) / xi + d);
        CHECK(res.plan[i][0].item<double>() == Approx(ref).margin(1e-10));
        CHECK(res_n.plan[i][0].item<double>() == Approx(ref).margin(1e-10));
        CHECK(res.plan[i][1].item<double>() == Approx(1 - ref).margin(1e-10));
      }
    }
  }
}

TEST_CASE("sinkhorn: plain reports non-finite for xi 0.05 on large linear costs", "[sinkhorn]") {
  // exp(C / 0.05 - 1) overflows float32 once C exceeds ~4.5: the paper's Table 6 NaN.
  auto cost = random_logits(1024, 16, 5.0, 3);  // (1024, 16), max |S| ~ 18
  auto plain = sinkhorn(cost, opts(0.05, Numerics::Plain, 1e-4, 100));
  CHECK_FALSE(plain.finite);
  CHECK_FALSE(plain.converged);
  CHECK_FALSE(std::isfinite(plain.error));
  CHECK(plain.iters <= 10);  // stops at the first check instead of iterating on NaN
  // The log domain stays finite on the same input, and SNS converges in a few steps.
  auto logd = sinkhorn(cost, opts(0.05, Numerics::Log, 1e-4, 100));
  CHECK(logd.finite);
  CHECK(torch::isfinite(logd.plan).all().item<bool>());
  SinkhornOptions sns = opts(0.05, Numerics::Log, 1e-4, 0, 1);
  sns.newton_steps = 30;
  auto newton = sinkhorn(cost, sns);
  CHECK(newton.converged);
  CHECK(error_double(newton.plan) <= 1e-4 + 1e-6);
}

TEST_CASE("sinkhorn: Newton (SNS) converges in few steps and matches converged Sinkhorn", "[sinkhorn]") {
  for (double xi : {0.05, 0.1, 0.5, 1.0}) {
    for (bool softmax : {false, true}) {
      auto logits = random_logits(256, 16, 2.0, 21, torch::kFloat64);  // (256, 16)
      auto cost = softmax ? logits.softmax(-1) : logits;
      SinkhornOptions sns = opts(xi, Numerics::Log, 1e-9, 0, 1);
      sns.newton_steps = 30;
      auto n = sinkhorn(cost, sns);
      auto ref = sinkhorn(cost, opts(xi, Numerics::Log, 1e-11, 200000));
      INFO("xi " << xi << " softmax " << softmax << " newton iters " << n.iters << " sinkhorn iters " << ref.iters);
      REQUIRE(ref.converged);
      REQUIRE(n.converged);
      CHECK(n.iters <= sns.newton_warmup + 15);
      CHECK((n.plan - ref.plan).abs().max().item<double>() < 1e-7);
    }
  }
}

TEST_CASE("sinkhorn: iteration count and checks", "[sinkhorn]") {
  auto cost = random_logits(300, 16, 1.0, 5);  // (300, 16)
  auto every = sinkhorn(cost, opts(0.5, Numerics::Log, 1e-4, 1000, 1));
  REQUIRE(every.converged);
  REQUIRE(every.iters > 1);
  // check_every = 1 reports the first converged sweep: one sweep fewer is not converged.
  auto fewer = sinkhorn(cost, opts(0.5, Numerics::Log, 1e-4, every.iters - 1, 1));
  CHECK_FALSE(fewer.converged);
  // Sparse checks stop at the next multiple of check_every (or at max_iter).
  auto sparse = sinkhorn(cost, opts(0.5, Numerics::Log, 1e-4, 1000, 10));
  CHECK(sparse.iters == (every.iters + 9) / 10 * 10);
  auto capped = sinkhorn(cost, opts(0.5, Numerics::Log, 1e-12, 7, 10));
  CHECK(capped.iters == 7);
  CHECK_FALSE(capped.converged);
}

TEST_CASE("sinkhorn: the prototype's stop rule (u first, L1 change of u and v)", "[sinkhorn]") {
  auto proto = [](double delta, int64_t max_iter) {
    SinkhornOptions o = opts(1.0, Numerics::Plain, delta, max_iter, 1);
    o.stop = StopRule::Scaling;
    return o;
  };
  // One sweep by hand: K = exp(C), u = 1 / (K 1), v = (m/n) / (K^T u), plan = diag(u) K diag(v).
  // Algorithm 1's order (v first) would give exact rows here; u first gives exact columns.
  auto cost = random_logits(6, 3, 1.0, 21, torch::kFloat64);  // (6, 3)
  auto k = cost.exp();
  auto u = 1.0 / k.sum(1);
  auto v = 2.0 / u.matmul(k);
  auto by_hand = u.unsqueeze(1) * k * v.unsqueeze(0);
  auto one = sinkhorn(cost, proto(1e-2, 1));
  CHECK(one.iters == 1);
  CHECK(torch::allclose(one.plan, by_hand, 1e-12, 1e-12));
  CHECK(torch::allclose(one.plan.sum(0), torch::full({3}, 2.0, torch::kFloat64), 1e-12, 1e-12));
  // Run to a tight tolerance it reaches Algorithm 1's plan; the prototype's 1e-2 stops earlier.
  auto big = random_logits(300, 16, 1.0, 5);  // (300, 16)
  auto tight = sinkhorn(big, proto(1e-7, 1000));
  auto ref = sinkhorn(big, opts(1.0, Numerics::Log, 1e-7, 1000, 1));
  CHECK(torch::allclose(tight.plan, ref.plan, 1e-4, 1e-6));
  auto loose = sinkhorn(big, proto(1e-2, 100));
  CHECK(loose.iters < tight.iters);
  // It needs the plain scaling of the prototype.
  ssr::config::Config cfg;
  ssr::config::apply_overrides(cfg, {"router.stop_rule=scaling"}, {});
  CHECK_THROWS_WITH(sinkhorn_options(cfg), Catch::Contains("router.stop_rule"));
  ssr::config::apply_overrides(cfg, {"router.numerics=plain"}, {});
  CHECK(sinkhorn_options(cfg).stop == StopRule::Scaling);
}

TEST_CASE("sinkhorn: the plan carries no gradient", "[sinkhorn]") {
  auto cost = random_logits(16, 4, 1.0, 9).requires_grad_(true);  // (16, 4)
  auto res = sinkhorn(cost, opts(0.5, Numerics::Log, 1e-4, 100));
  CHECK_FALSE(res.plan.requires_grad());
}

TEST_CASE("sinkhorn: Newton with plain numerics is a config error", "[sinkhorn]") {
  ssr::config::Config cfg;
  cfg.set("router.numerics", "plain", "test");
  cfg.set("router.newton_steps", 4, "test");
  CHECK_THROWS_AS(sinkhorn_options(cfg), ssr::config::ConfigError);
  CHECK_THROWS_WITH(sinkhorn_options(cfg), Catch::Contains("router.numerics"));
}

TEST_CASE("sinkhorn: fused solver is refused where it cannot run", "[sinkhorn]") {
  ssr::config::Config cfg;
  ssr::config::apply_overrides(cfg, {"router.solver=fused"}, {});
#ifdef SSR_WITH_CUDA
  SinkhornOptions o = sinkhorn_options(cfg);
  CHECK(o.solver == Solver::Fused);
  o.xi = 0.5;
  CHECK_THROWS_WITH(sinkhorn(random_logits(16, 4, 1.0, 1), o), Catch::Contains("router.solver"));  // a CPU cost
#else
  CHECK_THROWS_WITH(sinkhorn_options(cfg), Catch::Contains("router.solver: fused"));
#endif
  ssr::config::Config newton;
  ssr::config::apply_overrides(newton, {"router.solver=fused", "router.newton_steps=4"}, {});
  CHECK_THROWS_WITH(sinkhorn_options(newton), Catch::Contains("router.solver"));
}

#ifdef SSR_WITH_CUDA
// The CUDA path against the CPU reference: same problem, converged plans and top-2 choices agree.
TEST_CASE("sinkhorn: fused CUDA kernel matches the CPU log-domain solver", "[sinkhorn][cuda]") {
  if (!torch::cuda::is_available()) {
    WARN("no CUDA device here: the fused kernel was compiled, not run");
    return;
  }
  // Both solve to delta 1e-6 in float32 with their own reduction orders. At small xi the plans
  // then differ by more than rounding: on an H200 (2026-12-04) by 2.5e-5 at xi 0.1 and 3.9e-4 at
  // xi 0.05 with scale-5 logits, and on 7 x 3 at xi 0.05 the kernel's marginal error stalled just
  // above 1e-6 (so it ran to the cap) where the CPU's got below: tolerances are those measurements
  // with a margin, and that row does not compare the stop.
  struct Row {
    int64_t m, n;
    double scale, xi;
    bool softmax;
    double tol;
    bool same_stop = true;
  };
  const std::vector<Row> table = {
      {6144, 16, 1.0, 0.5, false, 2e-5}, {24576, 16, 2.0, 0.1, false, 1e-4},    {3072, 32, 1.0, 0.5, true, 2e-5},
      {100, 64, 0.6, 1.0, false, 2e-5},  {7, 3, 1.0, 0.05, false, 2e-5, false}, {4096, 16, 5.0, 0.05, false, 1e-3},
  };
  for (const auto& r : table) {
    INFO(r.m << "x" << r.n << " scale " << r.scale << " xi " << r.xi << " softmax " << r.softmax);
    auto logits = random_logits(r.m, r.n, r.scale, 3);  // (m, n)
    auto cost = r.softmax ? logits.softmax(-1) : logits;
    SinkhornOptions o = opts(r.xi, Numerics::Log, 1e-6, 5000, 1);
    auto ref = sinkhorn(cost, o);
    o.solver = Solver::Fused;
    auto got = sinkhorn(cost.cuda(), o);
    REQUIRE(got.finite);
    if (r.same_stop) CHECK(got.converged == ref.converged);
    CHECK(error_double(got.plan.cpu()) <= 1e-6 + 1e-5);
    CHECK((got.plan.cpu() - ref.plan).abs().max().item<double>() <= r.tol);
    auto same = (std::get<1>(got.plan.cpu().topk(2, 1)) == std::get<1>(ref.plan.topk(2, 1))).to(torch::kFloat64);
    CHECK(same.mean().item<double>() >= 0.999);
  }
}
#endif

TEST_CASE("sinkhorn: a singular Newton system hands over to log-domain sweeps instead of failing", "[sinkhorn]") {
  // 64 tokens, N(0, 3^2) logits, linear cost, xi <= 0.1: columns of the plan underflow and the
  // Newton system becomes singular (linalg_solve threw here and killed the run).
  int fell_back = 0;
  for (uint64_t seed = 1; seed <= 10; ++seed)
    for (double xi : {0.1, 0.05, 0.02}) {
      INFO("seed " << seed << " xi " << xi);
      auto o = opts(xi, Numerics::Log, 1e-4, 100);
      o.newton_steps = 30;
      SinkhornResult r;
      REQUIRE_NOTHROW(r = sinkhorn(random_logits(64, 8, 3.0, seed), o));
      CHECK(std::isfinite(r.error));
      CHECK(torch::isfinite(r.plan).all().item<bool>());
      fell_back += r.newton_fallback;
      // A fallback's plan is the log-domain solver's, run afresh with its own budget.
      if (r.newton_fallback)
        CHECK(r.error == sinkhorn(random_logits(64, 8, 3.0, seed), opts(xi, Numerics::Log, 1e-4, 100)).error);
    }
  CHECK(fell_back > 0);
}

namespace {

// The plan of a (m, n) cost by log-domain Sinkhorn in plain C++ doubles, swept until both marginals
// are within 1e-14: a reference that shares no code or tensor op with the solver.
std::vector<double> reference_plan_f64(const torch::Tensor& cost, double xi) {
  const auto c = cost.to(torch::kFloat64).contiguous();
  const int64_t m = c.size(0), n = c.size(1);
  const double* C = c.data_ptr<double>();
  const double log_s = std::log(static_cast<double>(m) / static_cast<double>(n));
  std::vector<double> f(m, 0.0), g(n, 0.0), plan(m * n);
  const auto lk = [&](int64_t i, int64_t j) { return C[i * n + j] / xi - 1.0; };
  for (int sweep = 0; sweep < 100000; ++sweep) {
    for (int64_t j = 0; j < n; ++j) {  // columns to m/n
      double mx = -INFINITY, acc = 0;
      for (int64_t i = 0; i < m; ++i) mx = std::max(mx, lk(i, j) + f[i]);
      for (int64_t i = 0; i < m; ++i) acc += std::exp(lk(i, j) + f[i] - mx);
      g[j] = log_s - mx - std::log(acc);
    }
    for (int64_t i = 0; i < m; ++i) {  // rows to 1
      double mx = -INFINITY, acc = 0;
      for (int64_t j = 0; j < n; ++j) mx = std::max(mx, lk(i, j) + g[j]);
      for (int64_t j = 0; j < n; ++j) acc += std::exp(lk(i, j) + g[j] - mx);
      f[i] = -mx - std::log(acc);
    }
    double col_err = 0;
    for (int64_t j = 0; j < n; ++j) {
      double col = 0;
      for (int64_t i = 0; i < m; ++i) col += plan[i * n + j] = std::exp(lk(i, j) + f[i] + g[j]);
      col_err += std::abs(col - static_cast<double>(m) / static_cast<double>(n));
    }
    if (col_err / static_cast<double>(m) < 1e-14) break;
  }
  return plan;
}

double max_abs_diff(const torch::Tensor& plan, const std::vector<double>& ref) {
  const auto p = plan.to(torch::kFloat64).contiguous();
  double d = 0;
  for (int64_t i = 0; i < p.numel(); ++i) d = std::max(d, std::abs(p.data_ptr<double>()[i] - ref[i]));
  return d;
}

}  // namespace

TEST_CASE("sinkhorn: router.precision=float64 matches a float64 reference to the tolerance asked", "[sinkhorn]") {
  // N(0,1) logits, 512 tokens x 64 experts, xi 0.1: where float32 plans differ from float64 by ~2e-5.
  const auto cost = random_logits(512, 64, 1.0, 7);  // (tokens, experts) float32
  const auto ref = reference_plan_f64(cost, 0.1);
  struct Case {
    bool f64;
    Numerics numerics;
    double delta, tol;
  };
  // delta bounds the marginals, not the plan: measured 2.2e-8 at 1e-9 and 2.1e-11 at 1e-12 (about
  // 22 delta) on these logits; float32 measured 1.8e-5 at delta 1e-6.
  for (const auto& c : std::vector<Case>{{true, Numerics::Log, 1e-9, 1e-7},
                                         {true, Numerics::Log, 1e-12, 1e-10},
                                         {true, Numerics::Plain, 1e-12, 1e-10},
                                         {false, Numerics::Log, 1e-6, 1e-4}}) {
    SinkhornOptions o = opts(0.1, c.numerics, c.delta, 100000, 1);
    o.float64 = c.f64;
    const auto r = sinkhorn(cost, o);
    INFO("float64 " << c.f64 << " delta " << c.delta << " error " << r.error << " iters " << r.iters);
    CHECK(r.converged);
    CHECK(r.plan.scalar_type() == (c.f64 ? torch::kFloat64 : torch::kFloat32));
    const double d = max_abs_diff(r.plan, ref);
    INFO("max |plan - reference| " << d);
    CHECK(d <= c.tol);
  }
  ssr::config::Config cfg;
  cfg.set("router.precision", std::string("float64"), "test");
  CHECK(sinkhorn_options(cfg).float64);
}

TEST_CASE("sinkhorn: the plain solver stops at the first sweep whose plan meets delta", "[sinkhorn]") {
  const auto cost = random_logits(256, 16, 1.0, 3);  // (tokens, experts)
  for (const double delta : {1e-3, 1e-5, 1e-6}) {
    const auto r = sinkhorn(cost, opts(0.5, Numerics::Plain, delta, 10000, 1));
    INFO("delta " << delta << " iters " << r.iters << " error " << r.error);
    REQUIRE(r.converged);
    REQUIRE(r.iters > 1);
    const auto before = sinkhorn(cost, opts(0.5, Numerics::Plain, delta, r.iters - 1, 1));
    CHECK(before.error > delta);  // one sweep fewer has not met it: the loop stopped at the first that did
  }
}
