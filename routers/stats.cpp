// Routing statistics of every router (declared in router.hpp): expert loads, MaxVio, dead
// experts, gate entropy, Sinkhorn counts and the token/expert mutual information, as the run log
// stores them (layerL/*).
#include "routers/router.hpp"

#include <cmath>

namespace ssr::routers {

void set_load(RouterStats& s, const std::vector<int64_t>& tokens_per_expert) {
  s.tokens_per_expert = tokens_per_expert;
  auto load = torch::tensor(tokens_per_expert, torch::kDouble);  // (experts)
  const double mean = load.mean().item<double>();
  s.load_cv = mean > 0 ? load.std(/*unbiased=*/false).item<double>() / mean : 0.0;
  s.max_vio = mean > 0 ? load.max().item<double>() / mean - 1.0 : 0.0;
  s.dead_experts = (load == 0).sum().item<int64_t>();
}

void set_sinkhorn(RouterStats& s, const SinkhornTally& tally) {
  s.sinkhorn_calls = tally.sinkhorn_calls;
  if (tally.calls > 0) s.sinkhorn_frac = static_cast<double>(tally.sinkhorn_calls) / static_cast<double>(tally.calls);
  if (tally.sinkhorn_calls > 0) {
    s.sinkhorn_iters = static_cast<double>(tally.iters_sum) / static_cast<double>(tally.sinkhorn_calls);
    s.sinkhorn_error = tally.error_sum / static_cast<double>(tally.sinkhorn_calls);
  }
  s.sinkhorn_unconverged = tally.unconverged;
  s.sinkhorn_fallbacks = tally.fallbacks;
}

RouterStats routing_stats(const torch::Tensor& logits, const Routing& routing, int64_t n_experts) {
  SinkhornTally one;
  one.calls = 1;
  if (routing.used_sinkhorn) {
    one.sinkhorn_calls = 1;
    one.iters_sum = routing.sinkhorn_iters;
    one.error_sum = routing.sinkhorn_error;
    one.unconverged = !routing.sinkhorn_converged;
    one.fallbacks = routing.sinkhorn_fallback;
  }
  return routing_stats(logits, routing, n_experts, one);
}

RouterStats routing_stats(const torch::Tensor& logits, const Routing& routing, int64_t n_experts,
                          const SinkhornTally& tally) {
  RouterStats s;
  auto slots = routing.experts.reshape(-1).cpu();  // (tokens*k)
  if (routing.kept.defined()) {
    const auto kept = routing.kept.cpu();  // (tokens, k)
    slots = slots.masked_select(kept.reshape(-1));
    s.drop_rate = 1.0 - kept.to(torch::kDouble).mean().item<double>();
    s.unrouted = (~kept.any(1)).to(torch::kDouble).mean().item<double>();
  }
  auto counts = torch::bincount(slots, {}, n_experts);  // (experts)
  set_load(s, std::vector<int64_t>(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + n_experts));
  auto logp = logits.detach().to(torch::kFloat).log_softmax(-1);  // (tokens, experts)
  s.entropy = -(logp.exp() * logp).sum(-1).mean().item<double>();
  set_sinkhorn(s, tally);
  return s;
}

void TokenExpertCounts::add(const torch::Tensor& token_ids, const Routing& routing) {
  const int64_t n = routing.experts.size(0), k = routing.experts.size(1);
  auto ids =
      token_ids.reshape({n, 1}).expand({n, k}).reshape(-1).to(torch::kCPU, torch::kLong).contiguous();  // (tokens*k)
  auto experts = routing.experts.reshape(-1).to(torch::kCPU, torch::kLong).contiguous();                // (tokens*k)
  torch::Tensor kept;                                                                                   // (tokens*k)
  if (routing.kept.defined()) kept = routing.kept.reshape(-1).to(torch::kCPU).contiguous();
  const auto* id = ids.data_ptr<int64_t>();
  const auto* ex = experts.data_ptr<int64_t>();
  const bool* keep = kept.defined() ? kept.data_ptr<bool>() : nullptr;
  for (int64_t i = 0; i < n * k; ++i) {
    if (keep && !keep[i]) continue;
    ++joint_[{id[i], ex[i]}];
    ++total_;
  }
}

double TokenExpertCounts::mutual_information() const {
  if (total_ == 0) return 0;
  std::map<int64_t, int64_t> by_token, by_expert;
  for (const auto& [te, c] : joint_) {
    by_token[te.first] += c;
    by_expert[te.second] += c;
  }
  const double n = static_cast<double>(total_);
  double mi = 0;
  // p(t,e) log(p(t,e) / (p(t) p(e))) = c/n * log(c n / (c_t c_e))
  for (const auto& [te, c] : joint_) {
    const double ct = static_cast<double>(by_token.at(te.first)), ce = static_cast<double>(by_expert.at(te.second));
    mi += static_cast<double>(c) / n * std::log(static_cast<double>(c) * n / (ct * ce));
  }
  return std::max(0.0, mi);  // rounding can leave -1e-17 for independent counts
}

}  // namespace ssr::routers
