// Hash routing (Roller et al. 2021, "Hash Layers For Large Sparse Models", arXiv 2106.04426,
// Sec. 3 "Random Hash"): token t goes to expert hash(x_t), a fixed random function of its input
// token id chosen before training; the layer's output is that expert's output, with no gating
// weight. Every layer hashes the same input token.
// Interpretations: (1) the random table is a seeded hash of (router.hash_seed, token id), so it
// needs no vocabulary size and equals a table drawn once; every MoE layer uses this one
// table. (2) With model.top_k = k > 1 a token goes to k distinct
// experts (the first k of its own random permutation), each with weight 1/k; the paper's
// MultiHash splits the FFN instead, which this harness does not do.
// Differentiated: nothing (the gate's logits are not read, so the gate gets no gradient).
#include "routers/hash.hpp"

#include <algorithm>
#include <numeric>

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"

namespace ssr::routers {

namespace {

// SplitMix64's finaliser (Steele et al. 2014): a bijection on 64 bits that mixes every input bit.
uint64_t mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

std::vector<int64_t> hashed_experts(uint64_t seed, int64_t id, int64_t n_experts, int64_t k) {
  const uint64_t key = mix(mix(seed) ^ static_cast<uint64_t>(id));
  std::vector<uint64_t> rank(n_experts);  // (experts) the token's random preference for each expert
  for (int64_t e = 0; e < n_experts; ++e) rank[e] = mix(key + 0x9e3779b97f4a7c15ULL * static_cast<uint64_t>(e + 1));
  std::vector<int64_t> order(n_experts);
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + k, order.end(),
                    [&](int64_t a, int64_t b) { return rank[a] > rank[b] || (rank[a] == rank[b] && a < b); });
  order.resize(k);
  return order;
}

HashRouter::HashRouter(int64_t n_experts, int64_t top_k, uint64_t seed)
    : n_experts_(n_experts), k_(top_k), seed_(seed) {}

Routing HashRouter::decide(const RouteInput& in, Mode, torch::Generator&) {
  if (!in.token_ids.defined()) throw std::logic_error("hash router: called without token ids");
  const int64_t n = in.logits.size(0);
  auto ids = in.token_ids.to(torch::kCPU, torch::kLong).contiguous();  // (tokens)
  auto experts = torch::empty({n, k_}, torch::kLong);                  // (tokens, k)
  const auto* id = ids.data_ptr<int64_t>();
  auto* out = experts.data_ptr<int64_t>();
  for (int64_t t = 0; t < n; ++t) {
    const auto e = hashed_experts(seed_, id[t], n_experts_, k_);
    std::copy(e.begin(), e.end(), out + t * k_);
  }
  Routing r;
  r.experts = experts.to(in.logits.device());                                            // (tokens, k)
  r.weights = torch::full({n, k_}, 1.0 / static_cast<double>(k_), in.logits.options());  // (tokens, k)
  r.aux_loss = torch::zeros({}, in.logits.options());
  return r;
}

RouterSpec hash_spec() {
  RouterSpec s;
  s.name = "hash";
  s.summary = "a fixed random map from input token id to experts, weight 1/k; the gate is not used";
  s.source = "Roller et al. 2021 (arXiv 2106.04426) Sec. 3, Random Hash";
  s.caps.token_ids = true;
  s.keys = {config::keys::unhashed_at_default(
      config::keys::I("router.hash_seed", 0, 0, 9.0e15, "hash: seed of the token-id-to-expert table"))};
  s.make = [](const config::Config& cfg, const RouterShape& sh) -> Router {
    return std::make_shared<HashRouter>(sh.n_experts, sh.top_k, static_cast<uint64_t>(cfg.i("router.hash_seed")));
  };
  s.bench = {{"hash", {}}};
  return s;
}

}  // namespace ssr::routers
