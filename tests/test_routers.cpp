// Routers: paper formulas, auxiliary losses by hand, Prop. 4.1 and 4.3, SSR's train/eval contract,
// gradients, statistics and the config files. Table-driven; tolerances are stated per check.
#include <catch2/catch.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "routers/aux_free.hpp"
#include "routers/base.hpp"
#include "routers/expert_choice.hpp"
#include "routers/hash.hpp"
#include "routers/lb.hpp"
#include "routers/emoe.hpp"
#include "routers/lpr.hpp"
#include "routers/noisy.hpp"
#include "routers/osr.hpp"
#include "routers/quantile.hpp"
#include "routers/regularised.hpp"
#include "routers/registry.hpp"
#include "routers/router.hpp"
#include "routers/sinkhorn_router.hpp"
#include "routers/ssr.hpp"
#include "routers/util.hpp"
#include "routers/vanilla.hpp"
#include "routers/zloss.hpp"
#include "tests/helpers.hpp"

using namespace ssr::routers;
namespace fs = std::filesystem;

namespace {

using ssr::testing::cpu_gen;
using ssr::testing::normal_cdf;
using ssr::testing::random_logits;

ssr::config::Config router_cfg(std::initializer_list<std::pair<const char*, ssr::config::json>> kv) {
  ssr::config::Config cfg;
  for (const auto& [k, v] : kv) cfg.set(std::string("router.") + k, v, "test");
  return cfg;
}

Router build(std::initializer_list<std::pair<const char*, ssr::config::json>> kv, int64_t d = 8, int64_t n = 4,
             int64_t k = 2) {
  return make_router(router_cfg(kv), d, n, k);
}

bool same(const torch::Tensor& a, const torch::Tensor& b) { return a.sizes() == b.sizes() && a.equal(b); }

}  // namespace

TEST_CASE("vanilla: weights follow the paper's formula, ties go to the lower expert id", "[routers]") {
  struct Row {
    std::vector<double> s;
    int64_t k;
    std::vector<int64_t> experts;
  };
  const std::vector<Row> table = {
      {{1.0, 3.0, 2.0, 0.0}, 2, {1, 2}},    {{-1.0, -0.5, 4.0, 0.25}, 1, {2}},
      {{0.5, 0.5, 0.5, 0.5}, 2, {0, 1}},     // all tied
      {{0.0, 2.0, 2.0, 2.0}, 2, {1, 2}},     // tie at the boundary
      {{1.0, 1.0, 3.0, 1.0}, 3, {2, 0, 1}},  // tie below the leader
  };
  auto gen = cpu_gen(1);
  for (const auto& row : table) {
    auto logits = torch::tensor(row.s, torch::kFloat64).unsqueeze(0);  // (1, 4)
    auto router = build({{"name", "vanilla"}}, 8, 4, row.k);
    auto r = router->route(logits, torch::zeros({1, 8}), Mode::Train, gen);
    double denom = 0;
    for (auto e : row.experts) denom += std::exp(row.s[e]);
    for (int64_t j = 0; j < row.k; ++j) {
      CHECK(r.experts[0][j].item<int64_t>() == row.experts[j]);
      CHECK(r.weights[0][j].item<double>() == Approx(std::exp(row.s[row.experts[j]]) / denom).epsilon(1e-12));
    }
    CHECK(r.aux_loss.item<double>() == 0.0);
    CHECK_FALSE(r.used_sinkhorn);
  }
  // Many tied rows: the same answer every time, in training and eval.
  auto tied = torch::zeros({64, 16});  // (64, 16)
  auto router = build({{"name", "vanilla"}}, 8, 16, 2);
  auto r = router->route(tied, torch::zeros({64, 8}), Mode::Eval, gen);
  CHECK((r.experts.select(1, 0) == 0).all().item<bool>());
  CHECK((r.experts.select(1, 1) == 1).all().item<bool>());
}

TEST_CASE("lb: both normalisations against hand-computed values", "[routers]") {
  // 3 tokens, 3 experts, k = 1. Top-1: token0 -> e0, token1 -> e0, token2 -> e2, so f = (2/3, 0, 1/3).
  const std::vector<std::vector<double>> s = {{2.0, 0.0, 1.0}, {1.0, 0.5, -1.0}, {0.0, 0.1, 0.3}};
  auto logits = torch::tensor({2.0, 0.0, 1.0, 1.0, 0.5, -1.0, 0.0, 0.1, 0.3}, torch::kFloat64).reshape({3, 3});
  double p_sum[3] = {0, 0, 0};
  for (const auto& row : s) {
    double z = 0;
    for (double v : row) z += std::exp(v);
    for (int e = 0; e < 3; ++e) p_sum[e] += std::exp(row[e]) / z;
  }
  const double f[3] = {2.0 / 3, 0.0, 1.0 / 3};
  double ref = 0;  // with k = 1, N*k = N: both forms coincide
  for (int e = 0; e < 3; ++e) ref += f[e] * p_sum[e] / 3.0;
  auto gen = cpu_gen(1);
  auto r1 = build({{"name", "lb"}, {"lb_form", "reference"}, {"lb_coef", 0.5}}, 8, 3, 1)
                ->route(logits, torch::zeros({3, 8}), Mode::Train, gen);
  CHECK(r1.aux_loss.item<double>() == Approx(0.5 * 3 * ref).epsilon(1e-12));
  auto r1s = build({{"name", "lb"}, {"lb_form", "switch"}, {"lb_coef", 0.5}}, 8, 3, 1)
                 ->route(logits, torch::zeros({3, 8}), Mode::Train, gen);
  CHECK(r1s.aux_loss.item<double>() == Approx(0.5 * 3 * ref).epsilon(1e-12));

  // k = 2: top-2 slots token0 {e0, e2}, token1 {e0, e1}, token2 {e2, e1}: f = (2, 2, 2) / 6.
  double ref2 = 0, sw2 = 0;
  for (int e = 0; e < 3; ++e) {
    ref2 += (2.0 / 6) * p_sum[e] / 6.0;  // reference: importance / (N*k)
    sw2 += (2.0 / 6) * p_sum[e] / 3.0;   // switch: importance / N
  }
  auto r2 = build({{"name", "lb"}, {"lb_form", "reference"}, {"lb_coef", 1.0}}, 8, 3, 2)
                ->route(logits, torch::zeros({3, 8}), Mode::Train, gen);
  auto r2s = build({{"name", "lb"}, {"lb_form", "switch"}, {"lb_coef", 1.0}}, 8, 3, 2)
                 ->route(logits, torch::zeros({3, 8}), Mode::Train, gen);
  CHECK(r2.aux_loss.item<double>() == Approx(3 * ref2).epsilon(1e-12));
  CHECK(r2s.aux_loss.item<double>() == Approx(3 * sw2).epsilon(1e-12));
  CHECK(r2s.aux_loss.item<double>() == Approx(2 * r2.aux_loss.item<double>()).epsilon(1e-12));  // the k = 2 halving
}

TEST_CASE("zloss: lb plus the ST-MoE z-loss by hand", "[routers]") {
  const std::vector<std::vector<double>> s = {{2.0, 0.0, 1.0}, {1.0, 0.5, -1.0}};
  auto logits = torch::tensor({2.0, 0.0, 1.0, 1.0, 0.5, -1.0}, torch::kFloat64).reshape({2, 3});
  double z = 0;
  for (const auto& row : s) {
    double acc = 0;
    for (double v : row) acc += std::exp(v);
    z += std::log(acc) * std::log(acc);
  }
  z /= 2;
  auto gen = cpu_gen(1);
  auto lb = load_balance_loss(logits, top_k_softmax(logits, 2).experts, LbForm::Reference).item<double>();
  auto r = build({{"name", "zloss"}, {"lb_coef", 0.01}, {"z_coef", 0.001}}, 8, 3, 2)
               ->route(logits, torch::zeros({2, 8}), Mode::Train, gen);
  CHECK(r.aux_loss.item<double>() == Approx(0.01 * lb + 0.001 * z).epsilon(1e-12));
  CHECK(z_loss(logits).item<double>() == Approx(z).epsilon(1e-12));
}

TEST_CASE("noisy: Shazeer gating and its importance/load loss by hand", "[routers]") {
  const int64_t m = 6, n = 4, k = 2, d = 3;
  auto logits = random_logits(m, n, 1.0, 31, torch::kFloat64);  // (6, 4)
  auto hidden = random_logits(m, d, 1.0, 32, torch::kFloat64);  // (6, 3)
  auto router = std::dynamic_pointer_cast<NoisyRouter>(build({{"name", "noisy"}, {"noisy_coef", 0.01}}, d, n, k));
  REQUIRE(router);
  CHECK(router->named_parameters().contains("w_noise"));
  CHECK(router->w_noise.abs().sum().item<double>() == 0.0);  // Shazeer's zero init
  auto gen = cpu_gen(5);
  auto r = router->route(logits, hidden, Mode::Train, gen);

  // Same draws by hand: std = softplus(0) + 0.01 for the zero-initialised W_noise.
  auto gen2 = cpu_gen(5);
  auto eps = torch::randn({m, n}, gen2, torch::kFloat64);  // (6, 4)
  const double sd = std::log(2.0) + 0.01;
  auto c = logits.accessor<double, 2>();
  auto e = eps.accessor<double, 2>();
  std::vector<double> importance(n, 0), load(n, 0);
  for (int64_t i = 0; i < m; ++i) {
    std::vector<std::pair<double, int64_t>> h;
    for (int64_t j = 0; j < n; ++j) h.push_back({c[i][j] + sd * e[i][j], j});
    std::stable_sort(h.begin(), h.end(), [](auto a, auto b) { return a.first > b.first; });
    const double z = std::exp(h[0].first) + std::exp(h[1].first);
    for (int64_t r2 = 0; r2 < k; ++r2) {
      CHECK(r.experts[i][r2].item<int64_t>() == h[r2].second);
      CHECK(r.weights[i][r2].item<double>() == Approx(std::exp(h[r2].first) / z).epsilon(1e-12));
      importance[h[r2].second] += std::exp(h[r2].first) / z;
    }
    for (int64_t j = 0; j < n; ++j) {
      const bool in = (j == h[0].second || j == h[1].second);
      const double thr = in ? h[2].first : h[1].first;
      load[j] += normal_cdf((c[i][j] - thr) / sd);
    }
  }
  auto cv2 = [](const std::vector<double>& x) {
    double mean = 0, var = 0;
    for (double v : x) mean += v / x.size();
    for (double v : x) var += (v - mean) * (v - mean) / (x.size() - 1);
    return var / (mean * mean + 1e-10);
  };
  CHECK(r.aux_loss.item<double>() == Approx(0.01 * (cv2(importance) + cv2(load))).epsilon(1e-9));

  // Gradients reach W_noise (through the noisy top-k logits and the load) and the logits.
  auto lg = logits.clone().requires_grad_(true);
  auto gen3 = cpu_gen(5);
  auto r3 = router->route(lg, hidden, Mode::Train, gen3);
  (r3.aux_loss + r3.weights.select(1, 0).sum()).backward();
  REQUIRE(router->w_noise.grad().defined());
  CHECK(router->w_noise.grad().abs().sum().item<double>() > 0);
  CHECK(lg.grad().abs().sum().item<double>() > 0);

  // Eval: no noise and no draw; routing equals vanilla.
  auto gen4 = cpu_gen(9);
  auto before = gen4.get_state();
  auto ev = router->route(logits, hidden, Mode::Eval, gen4);
  auto van = top_k_softmax(logits, k);
  CHECK(same(ev.experts, van.experts));
  CHECK(ev.weights.allclose(van.weights));
  CHECK(gen4.get_state().equal(before));
}

TEST_CASE("sinkhorn router: experts from the plan, weights from the logits, train and eval", "[routers]") {
  auto logits = random_logits(64, 8, 1.0, 41).requires_grad_(true);  // (64, 8)
  auto router = build({{"name", "sinkhorn"}, {"xi", 1.0}, {"numerics", "plain"}}, 8, 8, 2);
  auto gen = cpu_gen(1);
  SinkhornOptions o;
  o.xi = 1.0;
  o.numerics = Numerics::Plain;
  auto plan = sinkhorn(logits, o).plan;  // (64, 8)
  for (Mode mode : {Mode::Train, Mode::Eval}) {
    auto r = router->route(logits, torch::zeros({64, 8}), mode, gen);
    CHECK(r.used_sinkhorn);
    CHECK(r.sinkhorn_iters > 0);
    CHECK(r.sinkhorn_error <= 1e-4);
    CHECK(same(r.experts, stable_top_k(plan, 2).second));
    CHECK(r.weights.allclose(softmax_at(logits, r.experts)));
    CHECK(r.weights.requires_grad());  // softmax of the logits: W_g trains on every forward
  }
  // The baseline's choice is batch-dependent: balancing can move a token off its top-2 logits.
  auto skewed = random_logits(32, 4, 0.5, 42);  // (32, 4) every token prefers experts 0 and 1
  skewed.narrow(1, 0, 2).add_(2.0);
  auto r = build({{"name", "sinkhorn"}, {"xi", 1.0}}, 8, 4, 2)->route(skewed, torch::zeros({32, 8}), Mode::Eval, gen);
  auto counts = torch::bincount(r.experts.reshape(-1), {}, 4);  // (4)
  CHECK(counts.min().item<int64_t>() > 0);
}

TEST_CASE("ssr: p = 0 is exactly vanilla, p = 1 always uses Sinkhorn", "[routers]") {
  auto logits = random_logits(128, 16, 1.0, 51).requires_grad_(true);  // (128, 16)
  auto hidden = torch::zeros({128, 8});
  for (const char* cost : {"linear", "softmax"}) {
    auto p0 = build({{"name", "ssr"}, {"p", 0.0}, {"cost", cost}, {"noise", 1.0}}, 8, 16, 2);
    auto gen = cpu_gen(3);
    auto before = gen.get_state();
    for (int call = 0; call < 5; ++call) {
      auto r = p0->route(logits, hidden, Mode::Train, gen);
      auto v = top_k_softmax(logits, 2);
      CHECK(same(r.experts, v.experts));
      CHECK(same(r.weights, v.weights));
      CHECK_FALSE(r.used_sinkhorn);
    }
    CHECK(gen.get_state().equal(before));  // nothing drawn: noise is Sinkhorn-only by default
    CHECK(p0->sinkhorn_tally().sinkhorn_calls == 0);

    auto p1 = build({{"name", "ssr"}, {"p", 1.0}, {"cost", cost}}, 8, 16, 2);
    SinkhornOptions o;
    auto c = transport_cost(logits, std::string(cost) == "linear" ? Cost::Linear : Cost::Softmax);
    auto plan = sinkhorn(c, o).plan;  // (128, 16)
    auto [top, idx] = stable_top_k(plan, 2);
    for (int call = 0; call < 5; ++call) {
      auto r = p1->route(logits, hidden, Mode::Train, gen);
      CHECK(r.used_sinkhorn);
      CHECK(same(r.experts, idx));
      CHECK(r.weights.allclose(top / top.sum(-1, true)));
      CHECK_FALSE(r.weights.requires_grad());  // Pi is not differentiated
    }
    CHECK(p1->sinkhorn_tally().calls == 5);
    CHECK(p1->sinkhorn_tally().sinkhorn_calls == 5);
  }
}

TEST_CASE("ssr: the Sinkhorn fraction follows p", "[routers]") {
  auto router = build({{"name", "ssr"}, {"p", 0.3}, {"max_iter", 1}}, 8, 4, 2);
  auto logits = random_logits(8, 4, 1.0, 61);  // (8, 4)
  auto gen = cpu_gen(4);
  const int calls = 600;
  for (int i = 0; i < calls; ++i) router->route(logits, torch::zeros({8, 8}), Mode::Train, gen);
  const double frac = static_cast<double>(router->sinkhorn_tally().sinkhorn_calls) / calls;
  CHECK(std::abs(frac - 0.3) < 4 * std::sqrt(0.3 * 0.7 / calls));  // 4 binomial standard errors
  auto stats = routing_stats(logits, top_k_softmax(logits, 2), 4, router->sinkhorn_tally());
  CHECK(stats.sinkhorn_frac == Approx(frac));
  CHECK(stats.sinkhorn_calls == router->sinkhorn_tally().sinkhorn_calls);
  CHECK(stats.sinkhorn_iters == Approx(1.0));
  // Seeded runs repeat exactly: the same sequence of Sinkhorn forwards.
  auto flags = [&](uint64_t seed) {
    auto r2 = build({{"name", "ssr"}, {"p", 0.3}, {"max_iter", 1}}, 8, 4, 2);
    auto g2 = cpu_gen(seed);
    std::vector<bool> used;
    for (int i = 0; i < 100; ++i)
      used.push_back(r2->route(logits, torch::zeros({8, 8}), Mode::Train, g2).used_sinkhorn);
    return used;
  };
  CHECK(flags(4) == flags(4));
  CHECK(flags(4) != flags(5));
}

TEST_CASE("ssr: eval runs no Sinkhorn, draws no noise, and is batch-independent", "[routers]") {
  auto batch = random_logits(50, 16, 2.0, 71);  // (50, 16)
  auto hidden = torch::zeros({50, 8});
  for (const char* cfg_cost : {"linear", "softmax"}) {
    auto router =
        build({{"name", "ssr"}, {"p", 1.0}, {"cost", cfg_cost}, {"noise", 1.0}, {"noise_scope", "all"}}, 8, 16, 2);
    auto gen = cpu_gen(8);
    auto before = gen.get_state();
    auto whole = router->route(batch, hidden, Mode::Eval, gen);
    CHECK_FALSE(whole.used_sinkhorn);
    CHECK(gen.get_state().equal(before));
    for (int64_t i : {0, 17, 49}) {
      auto alone = router->route(batch.narrow(0, i, 1), hidden.narrow(0, i, 1), Mode::Eval, gen);
      CHECK(same(alone.experts, whole.experts.narrow(0, i, 1)));
      CHECK(alone.weights.allclose(whole.weights.narrow(0, i, 1)));
    }
    // The paper's other inference modes are options.
    auto keep = build({{"name", "ssr"}, {"p", 1.0}, {"cost", cfg_cost}, {"eval_mode", "sinkhorn"}}, 8, 16, 2);
    CHECK(keep->route(batch, hidden, Mode::Eval, gen).used_sinkhorn);
  }
}

TEST_CASE("ssr: an overflowing plain plan gives NaN weights, not garbage", "[routers]") {
  auto logits = random_logits(1024, 16, 5.0, 3);  // (1024, 16)
  auto router = build({{"name", "ssr"}, {"p", 1.0}, {"xi", 0.05}, {"numerics", "plain"}}, 8, 16, 2);
  auto gen = cpu_gen(1);
  auto r = router->route(logits, torch::zeros({1024, 8}), Mode::Train, gen);
  CHECK(r.used_sinkhorn);
  CHECK_FALSE(r.sinkhorn_finite);
  CHECK(torch::isnan(r.weights).all().item<bool>());
  // The log domain routes the same input.
  auto stable = build({{"name", "ssr"}, {"p", 1.0}, {"xi", 0.05}, {"numerics", "log"}}, 8, 16, 2);
  auto rl = stable->route(logits, torch::zeros({1024, 8}), Mode::Train, gen);
  CHECK(rl.sinkhorn_finite);
  CHECK(torch::isfinite(rl.weights).all().item<bool>());
}

TEST_CASE("Prop. 4.1: SSR weights minimise KL(alpha || Pi_i) over k-sparse alpha", "[routers]") {
  const int64_t n = 5, k = 2;
  auto logits = random_logits(40, n, 1.5, 81, torch::kFloat64);  // (40, 5)
  auto router = build({{"name", "ssr"}, {"p", 1.0}, {"delta", 1e-10}, {"max_iter", 10000}}, 8, n, k);
  auto gen = cpu_gen(1);
  auto r = router->route(logits, torch::zeros({40, 8}), Mode::Train, gen);
  SinkhornOptions o;
  o.delta = 1e-10;
  o.max_iter = 10000;
  auto plan = sinkhorn(logits, o).plan;  // (40, 5)
  auto search = cpu_gen(2);
  for (int64_t i = 0; i < 8; ++i) {
    auto pi = plan[i];  // (5)
    auto kl = [&](const std::vector<double>& a) {
      double s = 0;
      for (int64_t j = 0; j < n; ++j)
        if (a[j] > 0) s += a[j] * std::log(a[j] / pi[j].item<double>());
      return s;
    };
    std::vector<double> ssr_a(n, 0.0);
    for (int64_t r2 = 0; r2 < k; ++r2) ssr_a[r.experts[i][r2].item<int64_t>()] = r.weights[i][r2].item<double>();
    const double best = kl(ssr_a);
    // Every support of size 1 or 2, each with 200 random weightings on the simplex.
    for (int64_t a = 0; a < n; ++a) {
      for (int64_t b = a; b < n; ++b) {
        for (int t = 0; t < 200; ++t) {
          std::vector<double> alpha(n, 0.0);
          double w = a == b ? 1.0 : torch::rand({1}, search, torch::kFloat64).item<double>();
          alpha[a] += w;
          alpha[b] += 1 - w;
          CHECK(kl(alpha) >= best - 1e-12);
        }
      }
    }
  }
}

namespace {
// Exact P(expert i is the top-1 of g + alpha * eps), eps ~ N(0, sigma^2) iid, by integrating over
// eps_i (trapezoid on [-10, 10] standard deviations): prod_j Phi((g_i - g_j + a s z) / (a s)) phi(z).
double exact_top1(const std::vector<double>& g, int64_t i, double alpha, double sigma) {
  const int steps = 8000;
  const double lo = -10, hi = 10, h = (hi - lo) / steps;
  double acc = 0;
  for (int t = 0; t <= steps; ++t) {
    const double z = lo + t * h;
    double prod = std::exp(-0.5 * z * z) / std::sqrt(2 * M_PI);
    for (size_t j = 0; j < g.size(); ++j)
      if (static_cast<int64_t>(j) != i) prod *= normal_cdf((g[i] - g[j] + alpha * sigma * z) / (alpha * sigma));
    acc += (t == 0 || t == steps ? 0.5 : 1.0) * prod;
  }
  return acc * h;
}
// The paper's product formula, which treats the pairwise events as independent.
double paper_top1(const std::vector<double>& g, int64_t i, double alpha, double sigma) {
  double prod = 1;
  for (size_t j = 0; j < g.size(); ++j)
    if (static_cast<int64_t>(j) != i) prod *= normal_cdf((g[i] - g[j]) / (std::sqrt(2.0) * sigma * alpha));
  return prod;
}
}  // namespace

TEST_CASE("Prop. 4.3: top-1 frequency under cost noise", "[routers]") {
  // The router under test: SSR with p = 0, k = 1 and noise_scope all, i.e. experts = top-1 of
  // S + alpha * N(0, sigma^2); m copies of one token give m independent draws.
  struct Row {
    std::vector<double> g;
    double alpha, sigma;
  };
  const std::vector<Row> table = {
      {{0.3, -0.2}, 1.0, 1.0}, {{1.0, 0.0, -0.5, 0.2}, 0.5, 1.0}, {{0.8, 0.7, -1.0, 0.0, 0.3}, 1.0, 0.6}};
  const int64_t m = 40000;
  for (const auto& row : table) {
    const int64_t n = static_cast<int64_t>(row.g.size());
    auto router = build(
        {{"name", "ssr"}, {"p", 0.0}, {"noise", row.alpha}, {"noise_std", row.sigma}, {"noise_scope", "all"}}, 8, n, 1);
    auto logits = torch::tensor(row.g, torch::kFloat32).unsqueeze(0).expand({m, n}).contiguous();  // (m, n)
    auto gen = cpu_gen(12);
    auto r = router->route(logits, torch::zeros({m, 8}), Mode::Train, gen);
    auto counts = torch::bincount(r.experts.reshape(-1), {}, n);  // (n)
    double exact_sum = 0, paper_sum = 0;
    for (int64_t i = 0; i < n; ++i) {
      const double exact = exact_top1(row.g, i, row.alpha, row.sigma);
      const double paper = paper_top1(row.g, i, row.alpha, row.sigma);
      const double freq = counts[i].item<double>() / m;
      const double se = std::sqrt(exact * (1 - exact) / m);
      INFO("n " << n << " expert " << i << " freq " << freq << " exact " << exact << " paper " << paper);
      CHECK(std::abs(freq - exact) < 4 * se + 1e-4);  // 4 standard errors
      CHECK(paper <= exact + 1e-9);                   // the pairwise events are positively correlated (shared eps_i)
      if (n == 2) CHECK(paper == Approx(exact).margin(1e-7));  // a single pair: the formula is exact
      exact_sum += exact;
      paper_sum += paper;
    }
    CHECK(exact_sum == Approx(1.0).margin(1e-6));
    // For n > 2 the product is an approximation (a lower bound); its probabilities do not even sum to 1.
    if (n > 2) CHECK(paper_sum < 0.9);
  }
  // How far the product is from the truth, as numbers, for the 4-expert row: the leader 0.819
  // exact vs 0.789 by the product; expert 1 0.059 vs 0.023, 30 sampling standard errors apart at
  // m = 40000, so the measured frequencies reject the paper's formula for n > 2.
  const std::vector<double> g = {1.0, 0.0, -0.5, 0.2};
  CHECK(exact_top1(g, 0, 0.5, 1.0) - paper_top1(g, 0, 0.5, 1.0) == Approx(0.0304).margin(0.001));
  CHECK(exact_top1(g, 1, 0.5, 1.0) / paper_top1(g, 1, 0.5, 1.0) == Approx(2.55).margin(0.05));
}

TEST_CASE("gradients flow where they should", "[routers]") {
  auto gen = cpu_gen(1);
  auto hidden = torch::zeros({32, 8});
  struct Row {
    const char* name;
    bool weights_grad;
    bool aux_grad;
  };
  const std::vector<Row> table = {{"vanilla", true, false},
                                  {"lb", true, true},
                                  {"zloss", true, true},
                                  {"noisy", true, true},
                                  {"sinkhorn", true, false}};
  for (const auto& row : table) {
    auto logits = random_logits(32, 4, 1.0, 91).requires_grad_(true);  // (32, 4)
    auto r = build({{"name", row.name}}, 8, 4, 2)->route(logits, hidden, Mode::Train, gen);
    INFO(row.name);
    CHECK(r.weights.requires_grad() == row.weights_grad);
    CHECK(r.aux_loss.requires_grad() == row.aux_grad);
    if (row.aux_grad) {
      auto g = torch::autograd::grad({r.aux_loss}, {logits})[0];  // (32, 4)
      CHECK(g.abs().sum().item<double>() > 0);
    }
  }
  // The lb importance gradient matches central finite differences (float64).
  auto logits = random_logits(6, 3, 1.0, 92, torch::kFloat64).requires_grad_(true);  // (6, 3)
  auto experts = top_k_softmax(logits.detach(), 2).experts;
  auto g = torch::autograd::grad({load_balance_loss(logits, experts, LbForm::Reference)}, {logits})[0];
  auto z = torch::autograd::grad({z_loss(logits)}, {logits})[0];
  const double h = 1e-6;
  for (int64_t i = 0; i < 6; ++i)
    for (int64_t j = 0; j < 3; ++j) {
      auto up = logits.detach().clone(), dn = logits.detach().clone();
      up[i][j] += h;
      dn[i][j] -= h;
      double fd =
          (load_balance_loss(up, experts, LbForm::Reference) - load_balance_loss(dn, experts, LbForm::Reference))
              .item<double>() /
          (2 * h);
      double fz = (z_loss(up) - z_loss(dn)).item<double>() / (2 * h);
      CHECK(g[i][j].item<double>() == Approx(fd).margin(1e-7));
      CHECK(z[i][j].item<double>() == Approx(fz).margin(1e-7));
    }
}

TEST_CASE("routing_stats: loads, dead experts, entropy", "[routers]") {
  Routing r;
  r.experts = torch::tensor({0, 1, 0, 1, 0, 2}, torch::kInt64).reshape({3, 2});  // (3, 2)
  auto logits = torch::zeros({3, 4});                                            // (3, 4) uniform: entropy log 4
  auto s = routing_stats(logits, r, 4);
  CHECK(s.tokens_per_expert == std::vector<int64_t>{3, 2, 1, 0});
  CHECK(s.dead_experts == 1);
  CHECK(s.max_vio == Approx(1.0));  // max 3 over mean 1.5
  CHECK(s.load_cv == Approx(std::sqrt(1.25) / 1.5));
  CHECK(s.entropy == Approx(std::log(4.0)));
  CHECK(s.sinkhorn_frac == 0.0);
}

TEST_CASE("router configs: every experiments/router file builds its router", "[routers]") {
  const fs::path dir = fs::path(SSR_SOURCE_DIR) / "experiments" / "router";
  const fs::path empty = fs::temp_directory_path() / "ssr_test_routers_empty.yaml";
  std::ofstream(empty) << "{}\n";
  int files = 0;
  auto gen = cpu_gen(1);
  for (const auto& entry : fs::directory_iterator(dir)) {
    if (entry.path().extension() != ".yaml") continue;
    ++files;
    const std::string name = entry.path().stem().string();
    INFO(name);
    auto cfg = ssr::config::resolve(empty.string(), {"router=" + name});
    auto router = make_router(cfg, 8, 16, 2);
    RouteInput in;
    in.logits = random_logits(64, 16, 1.0, 5);                       // (tokens, experts)
    in.hidden = torch::randn({64, 8}, gen);                          // (tokens, d)
    in.token_ids = torch::randint(0, 100, {64}, gen, torch::kLong);  // (tokens)
    in.gate_weight = torch::randn({16, 8}, gen);                     // (experts, d)
    auto r = router->route(in, Mode::Train, gen);
    CHECK(r.experts.size(0) == 64);
    // Expert Choice gives a token as many slots as experts took it; top-k routers give k.
    if (!router_spec(cfg.s("router.name")).caps.own_capacity) CHECK(r.experts.size(1) == 2);
    CHECK(torch::isfinite(r.weights).all().item<bool>());
  }
  CHECK(files >= 9);
  CHECK_THROWS_AS(build({{"name", "vanilla"}}, 8, 2, 3), ssr::config::ConfigError);
}

TEST_CASE("sigmoid scores: top-k of sigmoid(S), weights normalised over the selected experts", "[routers]") {
  // s = sigmoid([2, 0, -1, 1]) = [.880797, .5, .268941, .731059]; top-2 = experts 0, 3.
  auto gen = cpu_gen(0);
  const auto logits = torch::tensor({{2.0, 0.0, -1.0, 1.0}});
  const auto r = build({{"name", "sigmoid"}}, 8, 4, 2)->route(logits, torch::zeros({1, 8}), Mode::Train, gen);
  CHECK(r.experts.equal(torch::tensor({{0, 3}}, torch::kInt64)));
  CHECK(r.weights[0][0].item<double>() == Approx(0.880797 / (0.880797 + 0.731059)).epsilon(1e-5));
  CHECK(r.weights[0][1].item<double>() == Approx(0.731059 / (0.880797 + 0.731059)).epsilon(1e-5));
  CHECK(r.aux_loss.item<double>() == 0);
}

TEST_CASE("DeepSeek-V3's sequence-wise balance loss by hand", "[routers]") {
  // Two tokens, two experts, k = 1, both choose expert 0: f = [2, 0] * E / (k T) = [2, 0];
  // rows of s normalised: [.8, .2], [.5, .5], so P = [.65, .35]; loss = 2 * .65 = 1.3.
  const auto s = torch::tensor({{0.8, 0.2}, {0.6, 0.6}});
  const auto experts = torch::tensor({{0}, {0}}, torch::kInt64);
  CHECK(sequence_balance_loss(s, experts).item<double>() == Approx(1.3).epsilon(1e-6));
}

TEST_CASE("aux-free: the expert bias over two steps, and only selection sees it", "[routers]") {
  // Every token has logits [2, 0, 0, 0], s = [.8808, .5, .5, .5], k = 1, u = 0.5.
  // Step 1 (b = 0): all take expert 0, load [4, 0, 0, 0], mean 1: b = u * sign(1 - load) = [-.5, .5, .5, .5].
  // Step 2: s + b = [.3808, 1, 1, 1], ties to the lowest id: all take expert 1, load [0, 4, 0, 0]:
  // b = [0, 0, 1, 1]. Re-centred (torchtitan): [-.75, .25, .25, .25], then [-.5, -.5, .5, .5].
  struct Row {
    bool recenter;
    std::vector<double> after1, after2;
  };
  for (const Row& row : {Row{false, {-0.5, 0.5, 0.5, 0.5}, {0, 0, 1, 1}},
                         Row{true, {-0.75, 0.25, 0.25, 0.25}, {-0.5, -0.5, 0.5, 0.5}}}) {
    INFO("recenter " << row.recenter);
    auto router = build({{"name", "aux-free"}, {"bias_rate", 0.5}, {"bias_recenter", row.recenter}}, 8, 4, 1);
    auto* r = dynamic_cast<ScoreRouterImpl*>(router.get());
    REQUIRE(r);
    auto gen = cpu_gen(0);
    const auto logits = torch::tensor({2.0, 0.0, 0.0, 0.0}).repeat({4, 1});  // (4 tokens, 4 experts)
    const auto identity = [](const torch::Tensor& t) { return t; };
    auto first = router->route(logits, torch::zeros({4, 8}), Mode::Train, gen);
    CHECK((first.experts == 0).all().item<bool>());
    router->route(logits, torch::zeros({4, 8}), Mode::Eval, gen);  // evaluation calls do not count as load
    router->end_step(identity);
    CHECK(torch::allclose(r->expert_bias, torch::tensor(row.after1, torch::kFloat), 0, 1e-6));
    auto second = router->route(logits, torch::zeros({4, 8}), Mode::Train, gen);
    CHECK((second.experts == 1).all().item<bool>());
    CHECK(second.weights.eq(1).all().item<bool>());  // k = 1: the unbiased score normalised
    router->end_step(identity);
    CHECK(torch::allclose(r->expert_bias, torch::tensor(row.after2, torch::kFloat), 0, 1e-6));
    router->end_step(identity);  // a step without training calls leaves the bias alone
    CHECK(torch::allclose(r->expert_bias, torch::tensor(row.after2, torch::kFloat), 0, 1e-6));
  }
}

TEST_CASE("aux-free with softmax scores and no bias update routes as vanilla", "[routers]") {
  auto gen = cpu_gen(5);
  const auto logits = random_logits(64, 8, 2.0, 11);
  const auto a = build({{"name", "aux-free"}, {"score", "softmax"}, {"bias_rate", 0.0}}, 8, 8, 2)
                     ->route(logits, torch::zeros({64, 8}), Mode::Train, gen);
  const auto b = build({{"name", "vanilla"}}, 8, 8, 2)->route(logits, torch::zeros({64, 8}), Mode::Train, gen);
  CHECK(a.experts.equal(b.experts));
  CHECK(torch::allclose(a.weights, b.weights, 1e-6, 1e-6));
}

TEST_CASE("Expert Choice by hand: 6 tokens, 3 experts, each expert takes 2", "[routers]") {
  // S = softmax over experts of each row. Expert 0's column: t0 .909, t1 .787, t3 .665 -> t0, t1.
  // Expert 1: t2 .909, t5 .778 -> t2, t5. Expert 2: t4 .333, t5 .116, t1 .107 -> t4, t5. So t5
  // has experts 1 and 2 (by score), t3 none (unrouted), the others one each.
  const auto logits = torch::tensor(
      {{3.0, 0.0, 0.0}, {2.0, 0.0, 0.0}, {0.0, 3.0, 0.0}, {1.0, 0.0, -1.0}, {0.0, 0.0, 0.0}, {0.0, 2.0, 0.1}});
  const auto s = logits.softmax(-1);
  CHECK(expert_choice_capacity(6, 3, 1, 1.0) == 2);
  auto gen = cpu_gen(0);
  const auto r = build({{"name", "expert-choice"}}, 8, 3, 1)->route(logits, torch::zeros({6, 8}), Mode::Train, gen);
  REQUIRE(r.kept.defined());
  REQUIRE(r.experts.sizes() == torch::IntArrayRef({6, 2}));  // t5 needs two slots
  const std::vector<std::vector<int64_t>> expected = {{0}, {0}, {1}, {}, {2}, {1, 2}};
  for (int64_t t = 0; t < 6; ++t) {
    INFO("token " << t);
    std::vector<int64_t> got;
    for (int64_t j = 0; j < 2; ++j)
      if (r.kept[t][j].item<bool>()) {
        const int64_t e = r.experts[t][j].item<int64_t>();
        got.push_back(e);
        CHECK(r.weights[t][j].item<double>() == Approx(s[t][e].item<double>()).epsilon(1e-6));
      } else {
        CHECK(r.weights[t][j].item<double>() == 0);
      }
    CHECK(got == expected[t]);
  }
  const auto stats = routing_stats(logits, r, 3);
  CHECK(stats.tokens_per_expert == std::vector<int64_t>{2, 2, 2});  // every expert full
  CHECK(stats.unrouted == Approx(1.0 / 6));
  CHECK(stats.drop_rate == Approx(6.0 / 12));  // 6 of the 12 slots hold a choice
}

TEST_CASE("expert capacity (Switch/GShard): first choices first, the overflow dropped", "[routers]") {
  // 4 tokens, 2 experts, k = 2. Factor 1: capacity 4, nothing dropped. Factor 0.5: capacity 2.
  // First choices: expert 0 takes t0, t1 (t3 dropped), expert 1 takes t2. Second choices: expert
  // 1 takes t0 (its 2nd), drops t1 and t3; expert 0 already has 2, drops t2's.
  Routing r;
  r.experts = torch::tensor({{0, 1}, {0, 1}, {1, 0}, {0, 1}}, torch::kInt64);
  r.weights = torch::full({4, 2}, 0.5);
  r.aux_loss = torch::zeros({});
  const auto all = with_capacity(r, 2, 1.0);
  CHECK(all.kept.all().item<bool>());
  const auto half = with_capacity(r, 2, 0.5);
  const auto expected = torch::tensor({{true, true}, {true, false}, {true, false}, {false, false}});
  CHECK(half.kept.equal(expected));
  CHECK(half.weights.equal(0.5 * expected.to(torch::kFloat)));
  const auto stats = routing_stats(torch::zeros({4, 2}), half, 2);
  CHECK(stats.drop_rate == Approx(4.0 / 8));
  CHECK(stats.unrouted == Approx(1.0 / 4));
  CHECK(stats.tokens_per_expert == std::vector<int64_t>{2, 2});
}

TEST_CASE("drop policies by hand: GShard's choice order, Megatron-Core's position and probs", "[routers]") {
  // 3 tokens, 2 experts, k = 2, factor 0.5: capacity ceil(0.5 * 3 * 2 / 2) = 2.
  // choice: expert 0's queue t0 (1st), t2 (1st), t1 (2nd) -> t1's 2nd dropped; expert 1's t1, t0, t2 -> t2's 2nd.
  // position: each expert's earliest tokens t0, t1 -> t2 loses both slots.
  // probs: expert 0 keeps .8 (t2) and .7 (t0), drops t1's .4; expert 1 keeps .6 (t1) and .3 (t0), drops t2's .2.
  // k = 1 (factor 1, capacity 2 of 4): position keeps expert 0's t0, t1; probs its .9 (t1) and .7 (t2).
  struct Row {
    std::string what;
    DropPolicy policy;
    std::vector<std::vector<int64_t>> experts;
    std::vector<std::vector<double>> weights;
    double factor;
    std::vector<std::vector<int>> kept;
  };
  const std::vector<std::vector<int64_t>> e3 = {{0, 1}, {1, 0}, {0, 1}}, e4 = {{0}, {0}, {0}, {1}};
  const std::vector<std::vector<double>> w3 = {{.7, .3}, {.6, .4}, {.8, .2}}, w4 = {{.6}, {.9}, {.7}, {1}};
  const std::vector<Row> table = {{"choice, k 2", DropPolicy::Choice, e3, w3, 0.5, {{1, 1}, {1, 0}, {1, 0}}},
                                  {"position, k 2", DropPolicy::Position, e3, w3, 0.5, {{1, 1}, {1, 1}, {0, 0}}},
                                  {"probs, k 2", DropPolicy::Probs, e3, w3, 0.5, {{1, 1}, {1, 0}, {1, 0}}},
                                  {"choice, k 1", DropPolicy::Choice, e4, w4, 1.0, {{1}, {1}, {0}, {1}}},
                                  {"position, k 1", DropPolicy::Position, e4, w4, 1.0, {{1}, {1}, {0}, {1}}},
                                  {"probs, k 1", DropPolicy::Probs, e4, w4, 1.0, {{0}, {1}, {1}, {1}}}};
  const auto tensor2d = [](const auto& rows, auto dtype) {
    std::vector<double> flat;
    for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
    return torch::tensor(flat).reshape({static_cast<int64_t>(rows.size()), -1}).to(dtype);
  };
  for (const auto& row : table) {
    INFO(row.what);
    Routing r;
    r.experts = tensor2d(row.experts, torch::kInt64);
    r.weights = tensor2d(row.weights, torch::kFloat);
    r.aux_loss = torch::zeros({});
    const auto out = with_capacity(r, 2, row.factor, row.policy);
    CHECK(out.kept.equal(tensor2d(row.kept, torch::kBool)));
  }
}

TEST_CASE("aux-free as Megatron-Core runs it: the bias follows the kept load, the top-1 weight is the raw score",
          "[routers]") {
  // 9 tokens, 3 experts, k = 1, capacity factor 1 (3 slots an expert): 6 tokens pick expert 0,
  // 3 pick expert 1. Routed loads (6, 3, 0): mean 3, b += u sign(3 - load) = (-1, 0, +1). Kept loads
  // (3, 3, 0): mean 2, b += (-1, -1, +1) (Megatron's get_updated_expert_bias counts after dropping).
  std::vector<std::vector<double>> rows;
  for (int t = 0; t < 9; ++t) rows.push_back(t < 6 ? std::vector<double>{2, 0, -2} : std::vector<double>{0, 2, -2});
  std::vector<double> flat;
  for (const auto& row : rows) flat.insert(flat.end(), row.begin(), row.end());
  const auto logits = torch::tensor(flat).reshape({9, 3}).to(torch::kFloat);
  for (const auto& [load, bias] :
       std::vector<std::pair<std::string, std::vector<double>>>{{"routed", {-1, 0, 1}}, {"kept", {-1, -1, 1}}}) {
    INFO(load);
    auto router = build({{"name", "aux-free"}, {"bias_rate", 1.0}, {"bias_load", load}}, 8, 3, 1);
    auto gen = cpu_gen(0);
    route_with_capacity(*router, RouteInput{logits, torch::zeros({9, 0}), {}, {}}, Mode::Train, gen, 3, 1.0,
                        DropPolicy::Choice);
    router->end_step([](const torch::Tensor& t) { return t; });
    auto* score = dynamic_cast<ScoreRouterImpl*>(router.get());
    REQUIRE(score);
    CHECK(torch::allclose(score->expert_bias, torch::tensor(bias).to(torch::kFloat)));
  }
  // Top-1 sigmoid weights: normalised to 1 (DeepSeek-V3 Eq. 14), or sigmoid(2) = 0.8807971 (Megatron).
  auto gen = cpu_gen(0);
  const auto one = build({{"name", "sigmoid"}}, 8, 3, 1)->route(logits, torch::zeros({9, 0}), Mode::Train, gen);
  CHECK(torch::allclose(one.weights, torch::ones({9, 1})));
  const auto raw = build({{"name", "sigmoid"}, {"k1_weight", "raw"}}, 8, 3, 1)
                       ->route(logits, torch::zeros({9, 0}), Mode::Train, gen);
  CHECK(raw.weights[0][0].item<double>() == Approx(0.8807971).margin(1e-6));
  const auto two = build({{"name", "sigmoid"}, {"k1_weight", "raw"}}, 8, 3, 2)
                       ->route(logits, torch::zeros({9, 0}), Mode::Train, gen);  // k 2: normalised either way
  CHECK(torch::allclose(two.weights.sum(-1), torch::ones({9})));
}

TEST_CASE("hash: a fixed random table of token ids, k distinct experts, weight 1/k, gate ignored", "[routers]") {
  // The table is a function of (seed, id) only.
  CHECK(hashed_experts(0, 17, 8, 2) == hashed_experts(0, 17, 8, 2));
  int64_t moved = 0;
  for (int64_t id = 0; id < 100; ++id) {
    const auto e = hashed_experts(0, id, 8, 3);
    REQUIRE(e.size() == 3);
    CHECK(std::set<int64_t>(e.begin(), e.end()).size() == 3);
    moved += hashed_experts(1, id, 8, 3) != e;
  }
  CHECK(moved > 90);  // another seed is another table
  // Balanced over a vocabulary: 40,000 ids over 4 experts, each share 0.25 +- 0.01 (binomial sd 0.0022).
  std::vector<int64_t> count(4, 0);
  for (int64_t id = 0; id < 40000; ++id) ++count[hashed_experts(7, id, 4, 1)[0]];
  for (const auto c : count) CHECK(std::abs(static_cast<double>(c) / 40000 - 0.25) < 0.01);

  auto gen = cpu_gen(0);
  auto router = build({{"name", "hash"}}, 8, 8, 2);
  RouteInput in;
  in.logits = random_logits(6, 8, 1.0, 1);  // (tokens, experts)
  in.hidden = torch::zeros({6, 0});
  in.token_ids = torch::tensor({5, 9, 5, 0, 123456789, 9}, torch::kInt64);
  const auto r = router->route(in, Mode::Train, gen);
  for (int64_t t = 0; t < 6; ++t) {
    const auto e = hashed_experts(0, in.token_ids[t].item<int64_t>(), 8, 2);
    CHECK(r.experts[t][0].item<int64_t>() == e[0]);
    CHECK(r.experts[t][1].item<int64_t>() == e[1]);
  }
  CHECK(torch::allclose(r.weights, torch::full({6, 2}, 0.5)));
  CHECK(r.experts[0].equal(r.experts[2]));  // same id, same experts
  in.logits = random_logits(6, 8, 5.0, 2);  // other logits, same routing, in eval too
  CHECK(router->route(in, Mode::Eval, gen).experts.equal(r.experts));
}

TEST_CASE("osr: the score by hand, and repulsion 0 is Sinkhorn routing on the cosine scores", "[routers]") {
  // x = (1, 0); gate rows (1, 0), (0, 1), (1, 1). sim = [1, 0, 1/sqrt 2]; G o G off the diagonal:
  // (0,2) and (1,2) are 1/2. |sim| (G o G) = [0.35355, 0.35355, 0.5]; lambda 0.5 subtracts half.
  const auto x = torch::tensor({{1.0, 0.0}});
  const auto w = torch::tensor({{1.0, 0.0}, {0.0, 1.0}, {1.0, 1.0}});
  const auto score = osr_score(x, w, 0.5);
  const std::vector<double> expected = {0.8232233, -0.1767767, 0.4571068};
  for (int64_t e = 0; e < 3; ++e) CHECK(score[0][e].item<double>() == Approx(expected[e]).margin(1e-6));
  CHECK(torch::allclose(osr_score(x, w, 0.0), torch::tensor({{1.0, 0.0, 1.0 / std::sqrt(2.0)}}), 1e-6, 1e-6));

  auto gen = cpu_gen(0);
  RouteInput in;
  in.hidden = torch::randn({32, 8}, gen);      // (tokens, d)
  in.gate_weight = torch::randn({4, 8}, gen);  // (experts, d)
  in.logits = random_logits(32, 4, 1.0, 3);    // (tokens, experts)
  const auto cos = osr_score(in.hidden, in.gate_weight, 0.0);
  const auto plain = build({{"name", "sinkhorn"}})->route(cos, in.hidden, Mode::Train, gen);
  const auto osr0 = build({{"name", "osr"}, {"osr_repulsion", 0.0}})->route(in, Mode::Train, gen);
  CHECK(osr0.experts.equal(plain.experts));
  CHECK(torch::allclose(osr0.weights, softmax_at(in.logits, osr0.experts), 1e-6, 1e-6));
  CHECK(osr0.used_sinkhorn);
  // Two nearly parallel experts repel each other: strong repulsion moves some choices; the
  // weights still come from the logits.
  in.gate_weight[1] = in.gate_weight[0] + 0.1 * torch::randn({8}, gen);
  const auto osr0b = build({{"name", "osr"}, {"osr_repulsion", 0.0}})->route(in, Mode::Train, gen);
  const auto osr = build({{"name", "osr"}, {"osr_repulsion", 2.0}})->route(in, Mode::Train, gen);
  CHECK_FALSE(osr.experts.equal(osr0b.experts));
  CHECK(torch::allclose(osr.weights, softmax_at(in.logits, osr.experts), 1e-6, 1e-6));
}

TEST_CASE("osr authors' reading: their log-domain Sinkhorn by hand", "[routers]") {
  // score [[0, ln 3], [0, 0]], eps 1, one sweep. Rows: f = -log(4/3), -log 2, giving rows [1/4, 3/4]
  // and [1/2, 1/2]; columns sum to 3/4 and 5/4 against 1: g = log(4/3), log(4/5). The plan
  // [[1/3, 3/5], [2/3, 2/5]] with rows renormalised: [[5/14, 9/14], [5/8, 3/8]]; its columns miss
  // 1 by 1/56.
  const auto solved = authors_sinkhorn(torch::tensor({{0.0, std::log(3.0)}, {0.0, 0.0}}), 1.0, 1);
  const auto want = torch::tensor({{5.0 / 14, 9.0 / 14}, {5.0 / 8, 3.0 / 8}});
  CHECK(torch::allclose(solved.plan.to(torch::kDouble), want.to(torch::kDouble), 0, 1e-6));
  CHECK(solved.max_vio == Approx(1.0 / 56).margin(1e-6));
}

TEST_CASE("osr readings against the authors' code's behaviour, by hand", "[routers]") {
  struct Row {
    std::string what, reading;
    Mode mode;
    std::vector<std::vector<double>> x;  // (tokens, 2) hidden states; gate rows are (1, 0), (0, 1)
    int64_t k;
    double quota_factor;
    std::vector<std::vector<int64_t>> experts;
    std::vector<std::vector<double>> weights;
  };
  const double s96 = 0.6637387, s10 = 0.7310586, s80 = 0.5498340;  // softmaxes of bid pairs (.96,.28) (1,0) (.8,.6)
  const std::vector<Row> table = {
      // The case: the code maximises C = -sim, so each token goes to the other expert;
      // the docstring reading (Sinkhorn on -C) keeps them. The plan's top-1 renormalised is 1.
      {"sign, authors", "authors", Mode::Eval, {{1, 0}, {0, 1}}, 1, 1.25, {{1}, {0}}, {{1}, {1}}},
      {"sign, docstring", "docstring", Mode::Eval, {{1, 0}, {0, 1}}, 1, 1.25, {{0}, {1}}, {}},
      // Training: the quota decides. cap = ceil(4 * 1 / 2 * 1.25) = 3: expert 0 takes tokens 0, 1, 2,
      // expert 1 tokens 3, 2, 1; each token keeps its best offer (bid = sim).
      {"quota k 1",
       "authors",
       Mode::Train,
       {{1, 0}, {0.96, 0.28}, {0.6, 0.8}, {0, 1}},
       1,
       1.25,
       {{0}, {0}, {1}, {1}},
       {{1}, {1}, {1}, {1}}},
      // k 2: cap = min(ceil(5), 4 tokens) = 4, every offer made; softmax over each token's two bids.
      {"quota k 2",
       "authors",
       Mode::Train,
       {{1, 0}, {0.96, 0.28}, {0.6, 0.8}, {0, 1}},
       2,
       1.25,
       {{0, 1}, {0, 1}, {1, 0}, {1, 0}},
       {{s10, 1 - s10}, {s96, 1 - s96}, {s80, 1 - s80}, {s10, 1 - s10}}},
      // cap 1: tokens 1 and 2 get no offer; their slots tie at -1e4, so expert 0 (the code's
      // torch.topk order is unspecified there; ours is the lowest index) at full weight.
      {"quota, no offer",
       "authors",
       Mode::Train,
       {{1, 0}, {0.96, 0.28}, {0.6, 0.8}, {0, 1}},
       1,
       0.5,
       {{0}, {0}, {0}, {1}},
       {{1}, {1}, {1}, {1}}},
  };
  for (const auto& row : table) {
    INFO(row.what);
    auto router = make_router(router_cfg({{"name", "osr"},
                                          {"osr_reading", row.reading},
                                          {"osr_quota_factor", row.reading == "authors" ? row.quota_factor : 1.25}}),
                              2, 2, row.k);
    RouteInput in;
    std::vector<double> flat;
    for (const auto& v : row.x) flat.insert(flat.end(), v.begin(), v.end());
    in.hidden = torch::tensor(flat).reshape({-1, 2}).to(torch::kFloat);  // (tokens, 2)
    in.gate_weight = torch::eye(2);                                      // (experts, 2)
    in.logits = torch::zeros({in.hidden.size(0), 2});                    // (tokens, experts)
    auto gen = cpu_gen(0);
    const auto r = router->route(in, row.mode, gen);
    for (size_t t = 0; t < row.experts.size(); ++t)
      for (int64_t j = 0; j < row.k; ++j) {
        CHECK(r.experts[t][j].item<int64_t>() == row.experts[t][j]);
        if (!row.weights.empty()) CHECK(r.weights[t][j].item<double>() == Approx(row.weights[t][j]).margin(1e-6));
      }
  }
}

TEST_CASE("osr authors' reading: the load CV's EMA moves after a step and scales epsilon", "[routers]") {
  auto router =
      make_router(router_cfg({{"name", "osr"}, {"osr_reading", "authors"}, {"osr_quota_factor", 1.25}}), 2, 2, 1);
  auto* osr = dynamic_cast<OsrRouter*>(router.get());
  REQUIRE(osr);
  CHECK(osr->cv_ema.item<double>() == 1.0);
  RouteInput in;
  in.hidden = torch::tensor({{1.0, 0.0}, {0.96, 0.28}, {0.6, 0.8}, {0.0, 1.0}}).to(torch::kFloat);
  in.gate_weight = torch::eye(2);
  in.logits = torch::zeros({4, 2});
  auto gen = cpu_gen(0);
  router->route(in, Mode::Train, gen);
  CHECK(osr->cv_ema.item<double>() == 1.0);  // moved only after the optimizer step
  router->end_step([](const torch::Tensor& t) { return t; });
  // Soft loads: softmax of the offered bids (-20 where none): 2.1139047 and 1.8860953; shares
  // 0.528476, 0.471524; CV = 0.0569522; EMA 0.95 + 0.05 CV.
  CHECK(osr->cv_ema.item<double>() == Approx(0.9528476).margin(1e-6));
  // The buffer is saved with the weights; the docstring reading has none.
  CHECK(router->named_buffers().contains("osr_cv_ema"));
  CHECK_FALSE(build({{"name", "osr"}})->named_buffers().contains("osr_cv_ema"));
}

TEST_CASE("regularisers by hand: gate-row orthogonality and gate entropy", "[routers]") {
  // Rows (1, 0) and (1, 1): cosine 1/sqrt 2, so ||G - I||_F^2 = 2 * 1/2 = 1. Orthogonal rows: 0.
  CHECK(gate_orthogonality_loss(torch::tensor({{1.0, 0.0}, {1.0, 1.0}})).item<double>() == Approx(1.0).margin(1e-6));
  CHECK(gate_orthogonality_loss(torch::tensor({{2.0, 0.0}, {0.0, -3.0}})).item<double>() == Approx(0).margin(1e-7));
  // Entropy: uniform over 2 is ln 2; logits (0, ln 3) give (1/4, 3/4): 0.5623351.
  CHECK(gate_entropy_loss(torch::tensor({{0.0, 0.0}, {0.0, std::log(3.0)}})).item<double>() ==
        Approx((std::log(2.0) + 0.5623351) / 2).margin(1e-6));

  auto gen = cpu_gen(0);
  RouteInput in;
  in.logits = random_logits(16, 4, 1.0, 5).requires_grad_(true);
  in.hidden = torch::zeros({16, 0});
  in.gate_weight = torch::randn({4, 8}, gen).requires_grad_(true);
  const auto vanilla = build({{"name", "vanilla"}})->route(in, Mode::Train, gen);
  const auto ortho = build({{"name", "ortho"}, {"ortho_coef", 0.5}})->route(in, Mode::Train, gen);
  CHECK(ortho.experts.equal(vanilla.experts));  // the regulariser only adds a loss
  CHECK(ortho.aux_loss.item<double>() ==
        Approx(0.5 * gate_orthogonality_loss(in.gate_weight).item<double>()).epsilon(1e-6));
  ortho.aux_loss.backward();
  REQUIRE(in.gate_weight.grad().defined());
  CHECK(in.gate_weight.grad().abs().sum().item<double>() > 0);
  const auto ent = build({{"name", "entropy"}, {"entropy_coef", 0.1}})->route(in, Mode::Train, gen);
  CHECK(ent.experts.equal(vanilla.experts));
  CHECK(ent.aux_loss.item<double>() == Approx(0.1 * gate_entropy_loss(in.logits).item<double>()).epsilon(1e-6));
}

TEST_CASE("token/expert mutual information by hand", "[routers]") {
  const auto routed = [](std::vector<int64_t> experts, torch::Tensor kept = {}) {
    Routing r;
    r.experts = torch::tensor(experts, torch::kInt64).view({-1, 1});  // (tokens, 1)
    r.kept = kept;
    return r;
  };
  const auto ids = torch::tensor({1, 1, 2, 2}, torch::kInt64);
  struct Case {
    std::vector<int64_t> experts;
    double mi;
  };
  // The expert is the token: ln 2. Independent: 0. (1,0) (1,1) (2,1) (2,1):
  // 1/4 ln 2 + 1/4 ln(2/3) + 1/2 ln(4/3) = 0.2157616.
  for (const auto& c :
       std::vector<Case>{{{0, 0, 1, 1}, std::log(2.0)}, {{0, 1, 0, 1}, 0.0}, {{0, 1, 1, 1}, 0.2157616}}) {
    TokenExpertCounts counts;
    counts.add(ids, routed(c.experts));
    CHECK(counts.mutual_information() == Approx(c.mi).margin(1e-6));
  }
  // Dropped slots do not count: without the 2nd token the expert is the token again.
  TokenExpertCounts counts;
  counts.add(ids, routed({0, 1, 1, 1}, torch::tensor({true, false, true, true}).view({-1, 1})));
  CHECK(counts.mutual_information() == Approx(std::log(3.0) - (2.0 / 3) * std::log(2.0)).margin(1e-6));
  CHECK(TokenExpertCounts().mutual_information() == 0);
}

TEST_CASE("quantile balancing by hand: the dual step and the bias update", "[routers]") {
  // 4 tokens, 2 experts, k = 1, beta = 0. Every token's 2nd value is its threshold alpha:
  // alpha = (0, 0, 0, 0), experts (0, 0, 0, 1). Each expert should admit c = 4 / 2 = 2 tokens:
  // beta_new[e] = 3rd largest of S[:, e] - alpha: column 0 (2, .8, 3, 0) -> .8; column 1 -> 0.
  const auto s = torch::tensor({{2.0, 0.0}, {0.8, 0.0}, {3.0, 0.0}, {0.0, 1.0}});
  auto [experts, beta_new] = quantile_step(s, torch::zeros({2}), 1);
  CHECK(experts.view(-1).equal(torch::tensor({0, 0, 0, 1}, torch::kInt64)));
  CHECK(torch::allclose(beta_new, torch::tensor({0.8, 0.0})));
  // After the step, ema 0.5: beta = 0.5 * (0.8, 0) = (0.4, 0), centred: (0.2, -0.2). An
  // evaluation call in between counts for nothing.
  auto router = std::make_shared<QuantileRouter>(2, 1, 0.5, false);
  auto gen = cpu_gen(0);
  const auto r = router->route(s, torch::zeros({4, 0}), Mode::Train, gen);
  CHECK(r.experts.equal(experts));
  CHECK(torch::allclose(r.weights, torch::ones({4, 1})));  // softmax over one selected logit
  router->route(s + 5.0, torch::zeros({4, 0}), Mode::Eval, gen);
  router->end_step([](const torch::Tensor& t) { return t; });
  CHECK(torch::allclose(router->beta, torch::tensor({0.2, -0.2})));
  // Steps on one popular expert's data even the load out (vanilla: about 210 of 256 on expert 0).
  auto logits = random_logits(256, 4, 1.0, 9) + torch::tensor({2.0, 0.0, 0.0, 0.0});
  auto balanced = std::make_shared<QuantileRouter>(4, 1, 0.5, false);
  for (int step = 0; step < 50; ++step) {
    balanced->route(logits, torch::zeros({256, 0}), Mode::Train, gen);
    balanced->end_step([](const torch::Tensor& t) { return t; });
  }
  const auto load =
      torch::bincount(balanced->route(logits, torch::zeros({256, 0}), Mode::Eval, gen).experts.view(-1), {}, 4);
  INFO(load);
  CHECK((load - 64).abs().max().item<int64_t>() <= 6);
}

TEST_CASE("quantile as Megatron-Core runs it (router=quantile): no EMA, and an indivisible call refused", "[routers]") {
  // 3 tokens x top-1 against 2 experts: Megatron's qb_dual_update asserts (3 % 2 != 0); the floor
  // reading takes c = 1. Inference only reads beta, so it routes either way.
  const auto s = torch::tensor({{2.0, 0.0}, {0.8, 0.0}, {0.0, 1.0}});
  auto gen = cpu_gen(0);
  auto megatron = make_router(router_cfg({{"name", "quantile"}, {"qb_ema", 0.0}, {"qb_rounding", "refuse"}}), 8, 2, 1);
  CHECK_THROWS_WITH(megatron->route(s, torch::zeros({3, 0}), Mode::Train, gen),
                    Catch::Contains("router.qb_rounding=refuse: a router call of 3 tokens x top-1 = 3 assignments does "
                                    "not divide by 2 experts"));
  CHECK_NOTHROW(megatron->route(s, torch::zeros({3, 0}), Mode::Eval, gen));
  CHECK_NOTHROW(build({{"name", "quantile"}}, 8, 2, 1)->route(s, torch::zeros({3, 0}), Mode::Train, gen));
  // EMA 0: beta is the step's estimate, centred. The 4-token case above: (0.8, 0) -> (0.4, -0.4).
  const auto s4 = torch::tensor({{2.0, 0.0}, {0.8, 0.0}, {3.0, 0.0}, {0.0, 1.0}});
  auto router = std::make_shared<QuantileRouter>(2, 1, 0.0, true);
  router->route(s4, torch::zeros({4, 0}), Mode::Train, gen);
  router->end_step([](const torch::Tensor& t) { return t; });
  CHECK(torch::allclose(router->beta, torch::tensor({0.4, -0.4})));
}

TEST_CASE("BASE: the auction's balanced assignment is optimal, by hand and against brute force", "[routers]") {
  // Greedy gives (0, 0, 0, 1); the balanced optimum (2 tokens each) is (0, 0, 1, 1) with 12,
  // ahead of (0, 1, 0, 1) with 11 and (1, 0, 0, 1) with 10.
  const auto hand = torch::tensor({{5.0, 1.0}, {4.0, 1.0}, {3.0, 1.0}, {2.0, 2.0}});
  CHECK(balanced_assignment(hand, 2, 1e-3) == std::vector<int64_t>{0, 0, 1, 1});
  // 8 tokens, 4 experts, 2 each: every assignment (4^8) enumerated.
  for (uint64_t seed : {1, 2, 3, 4, 5}) {
    INFO("seed " << seed);
    const auto scores = random_logits(8, 4, 1.0, seed, torch::kDouble);
    const auto a = scores.accessor<double, 2>();
    const double eps = 1e-4;
    const auto got = balanced_assignment(scores, 2, eps);
    double got_sum = 0;
    std::vector<int> load(4, 0);
    for (int t = 0; t < 8; ++t) {
      got_sum += a[t][got[t]];
      ++load[got[t]];
    }
    CHECK(load == std::vector<int>{2, 2, 2, 2});
    double best = -1e300;
    for (int code = 0; code < (1 << 16); ++code) {
      std::vector<int> l(4, 0);
      double sum = 0;
      bool ok = true;
      for (int t = 0; t < 8 && ok; ++t) {
        const int j = (code >> (2 * t)) & 3;
        ok = ++l[j] <= 2;
        sum += a[t][j];
      }
      if (ok) best = std::max(best, sum);
    }
    CHECK(got_sum >= best - 8 * eps);
  }
  // The router: k balanced rounds in training (16 tokens, 4 experts, k = 2: every expert 8 slots,
  // never the same expert twice), weights sigmoid(S); greedy top-k at evaluation.
  auto gen = cpu_gen(0);
  const auto s = random_logits(16, 4, 2.0, 7);
  auto router = build({{"name", "base"}}, 8, 4, 2);
  const auto r = router->route(s, torch::zeros({16, 0}), Mode::Train, gen);
  CHECK(torch::bincount(r.experts.view(-1), {}, 4).equal(torch::full({4}, 8, torch::kInt64)));
  CHECK((r.experts.select(1, 0) != r.experts.select(1, 1)).all().item<bool>());
  CHECK(torch::allclose(r.weights, s.gather(1, r.experts).sigmoid()));
  const auto ev = router->route(s, torch::zeros({16, 0}), Mode::Eval, gen);
  CHECK(ev.experts.equal(stable_top_k(s, 2).second));
}

TEST_CASE("lpr by hand: cosine top-k over prototypes, the aligner's shift and the regulariser", "[routers]") {
  // d_model 4, latent 2, prototypes (1, 0), (0, 1), (-1, 0). The encoder passes the first two of
  // SiLU(LayerNorm(h)) through as mu and gives log var 0. h = (1, -1, 1, -1) normalises to
  // (1, -1, 1, -1) / sqrt(1 + 1e-5), so mu = (SiLU(1), SiLU(-1)) = (0.731054, -0.268941) (and
  // swapped for the second token). Values computed by hand with the formulas in routers/lpr.cpp.
  LprRouter r(4, 3, 2, 2, {1.0, 1.0, 1.0, 0.0});
  {
    torch::NoGradGuard no_grad;
    r.enc_w.zero_();
    r.enc_w[0][0] = 1;
    r.enc_w[1][1] = 1;
    r.enc_b.zero_();
    r.out_w.zero_();
    r.out_w[0][0] = 1;
    r.out_w[1][1] = 1;
    r.out_b.zero_();
    r.keys.copy_(torch::tensor({{1.0, 0.0}, {0.0, 1.0}, {-1.0, 0.0}}));
  }
  RouteInput in;
  in.hidden = torch::tensor({{1.0, -1.0, 1.0, -1.0}, {-1.0, 1.0, -1.0, 1.0}});  // (tokens, d_model)
  in.logits = torch::zeros({2, 3});                                             // the gate's logits are not read
  auto gen = cpu_gen(0);
  const auto t = r.route(in, Mode::Train, gen);
  // Cosines: token 0 (0.938507, -0.345259, -0.938507), token 1 (-0.345259, 0.938507, 0.345259).
  CHECK(t.experts.equal(torch::tensor({{0, 1}, {1, 2}}, torch::kLong)));
  const double w[2][2] = {{0.783090, 0.216910}, {0.644110, 0.355890}};
  const double shift[2][2] = {{0.592259, 0.193696}, {-0.150606, 0.546591}};
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) {
      CHECK(t.weights[i][j].item<double>() == Approx(w[i][j]).margin(1e-5));
      CHECK(t.input_shift[i][j].item<double>() == Approx(shift[i][j]).margin(1e-5));
      CHECK(t.input_shift[i][j + 2].item<double>() == 0);
    }
  CHECK(t.scores[0][2].item<double>() == Approx(-0.938507).margin(1e-5));
  // D(mu): one off-diagonal cosine -0.647986 twice over 4 entries; D(K): two -1s over 9 entries;
  // KL with log var 0: mean over tokens of |mu|^2 / 2 = 0.303385. Alignment weight 0 here.
  CHECK(t.aux_loss.item<double>() == Approx(0.209989 + 2.0 / 9 + 0.303385).margin(1e-5));

  // Evaluation: the same choice from mu, no draw, no loss.
  const auto e1 = r.route(in, Mode::Eval, gen);
  const auto e2 = r.route(in, Mode::Eval, gen);
  CHECK(e1.experts.equal(t.experts));
  CHECK(e1.weights.equal(e2.weights));
  CHECK(e1.aux_loss.item<double>() == 0);

  // Alignment alone: |K - R^T z| with z = mu + eps (log var 0), eps the router's draw.
  LprRouter a(4, 3, 2, 2, {1.0, 0.0, 0.0, 1.0});
  {
    torch::NoGradGuard no_grad;
    a.enc_w.copy_(r.enc_w);
    a.enc_b.copy_(r.enc_b);
    a.keys.copy_(r.keys);
  }
  auto g1 = cpu_gen(11), g2 = cpu_gen(11);
  const auto al = a.route(in, Mode::Train, g1);
  auto mu = torch::tensor({{0.731054, -0.268941}, {-0.268941, 0.731054}});
  auto z = mu + draw_normal(mu, g2);  // (tokens, latent)
  auto routed =
      torch::zeros({2, 3}).scatter(1, t.experts, t.scores.gather(1, t.experts)).softmax(-1);  // (tokens, experts)
  const double expected = (a.keys - routed.t().matmul(z)).abs().mean().item<double>();
  CHECK(al.aux_loss.item<double>() == Approx(expected).margin(1e-5));
}

TEST_CASE("emoe by hand: energy shares on the basis, expert masks, temperature and the QR retraction", "[routers]") {
  // d_model 2, rank 2, basis I, gamma 1, masks log p with p's columns summing to 1, so that
  // softmax over the experts gives p = ((0.5, 0.1), (0.3, 0.2), (0.2, 0.7)); bias (0, 0.1, 0),
  // tau 0.5. h = (3, 4) has energy shares (9, 16) / 25, so logits (0.244, 0.336, 0.520);
  // h = (1, 0) has (1, 0), so logits (0.5, 0.4, 0.2). Values computed by hand with the formulas
  // in routers/emoe.cpp.
  EmoeRouter r(2, 3, 2, 2, 0.5, 1e-3);
  {
    torch::NoGradGuard no_grad;
    r.basis.copy_(torch::eye(2));
    r.masks.copy_(torch::tensor({{0.5, 0.1}, {0.3, 0.2}, {0.2, 0.7}}).log());
    r.bias.copy_(torch::tensor({0.0, 0.1, 0.0}));
  }
  RouteInput in;
  in.hidden = torch::tensor({{3.0, 4.0}, {1.0, 0.0}});  // (tokens, d_model)
  in.logits = torch::zeros({2, 3});                     // the gate's logits are not read
  auto gen = cpu_gen(0);
  const auto t = r.route(in, Mode::Train, gen);
  CHECK(t.experts.equal(torch::tensor({{2, 1}, {0, 1}}, torch::kLong)));
  const double w[2][2] = {{0.440934, 0.305178}, {0.422379, 0.345815}};  // softmax(l / 0.5), not renormalised
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j) CHECK(t.weights[i][j].item<double>() == Approx(w[i][j]).margin(1e-5));
  CHECK(t.scores[0][2].item<double>() == Approx(0.52 / 0.5).margin(1e-5));
  CHECK(t.aux_loss.item<double>() == Approx(0).margin(1e-12));  // an orthonormal basis pays nothing
  CHECK(r.route(in, Mode::Eval, gen).experts.equal(t.experts));

  // The penalty: basis diag(1, 2) gives Q^T Q - I = diag(0, 3), so 1e-3 x 9; evaluation adds none.
  {
    torch::NoGradGuard no_grad;
    r.basis.copy_(torch::tensor({{1.0, 0.0}, {0.0, 2.0}}));
  }
  CHECK(r.route(in, Mode::Train, gen).aux_loss.item<double>() == Approx(9e-3).margin(1e-9));
  CHECK(r.route(in, Mode::Eval, gen).aux_loss.item<double>() == 0);

  // The retraction after a step: the Q of QR with R's diagonal positive, so a column keeps its
  // sign ((-2, 0) becomes (-1, 0), where LAPACK's own QR may return (1, 0)), and an orthonormal
  // basis does not move.
  const auto no_ranks = [](const torch::Tensor& x) { return x; };
  for (const auto& [before, after] : std::vector<std::pair<torch::Tensor, torch::Tensor>>{
           {torch::tensor({{-2.0, 0.0}, {0.0, 1.0}}), torch::tensor({{-1.0, 0.0}, {0.0, 1.0}})},
           {torch::tensor({{0.0, 2.0}, {1.0, 0.0}}), torch::tensor({{0.0, 1.0}, {1.0, 0.0}})},
           {torch::tensor({{0.6, -0.8}, {0.8, 0.6}}), torch::tensor({{0.6, -0.8}, {0.8, 0.6}})}}) {
    INFO(before);
    {
      torch::NoGradGuard no_grad;
      r.basis.copy_(before);
    }
    r.end_step(no_ranks);
    CHECK(torch::allclose(r.basis, after, 1e-6, 1e-6));
  }
}
