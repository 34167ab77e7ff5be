// BASE layers (Lewis et al. 2021, "BASE Layers: Simplifying Training of Large, Sparse Models",
// arXiv 2103.16716, Sec. 2; fairseq's base_layer.py): in training the tokens of a call are
// assigned to experts by the balanced assignment that maximises sum_t h_t . w_a(t), every expert
// taking the same number of tokens, solved with an auction algorithm; at evaluation each token
// takes its best expert (greedy). A token's output is sigmoid(h_t . w_a(t)) * expert_a(t)(h_t).
// Interpretations: (1) the scores are the gate's logits S (h . w_e plus the gate's bias; BASE
// has no bias). (2) With model.top_k = k > 1 (BASE is top-1) the assignment runs k rounds, each
// balanced, a token never getting the same expert twice; each slot's weight is sigmoid(S[t, e]).
// (3) Capacity ceil(tokens / experts) per round, so a call whose tokens do not divide evenly
// leaves a few slots empty instead of favouring some experts. (4) eps = 1e-3 * (max S - min S)
// per call: the assignment is within tokens * eps of the optimum (fairseq calls a compiled
// auction whose tolerance we did not reproduce).
// Differentiated: the weights sigmoid(S[t, e]), in S. Not differentiated: the assignment.
#include "routers/base.hpp"

#include <cmath>
#include <deque>
#include <limits>
#include <set>

#include "harness/config/declare.hpp"
#include "routers/registry.hpp"
#include "routers/util.hpp"

namespace ssr::routers {

std::vector<int64_t> balanced_assignment(const torch::Tensor& scores, int64_t capacity, double eps) {
  const auto a = scores.to(torch::kCPU, torch::kDouble).contiguous();  // (tokens, experts)
  const int64_t n = a.size(0), e = a.size(1);
  if (n > capacity * e) throw std::logic_error("balanced_assignment: more tokens than slots");
  const double* s = a.data_ptr<double>();
  constexpr double kNone = -std::numeric_limits<double>::infinity();
  // Each expert's slots ordered by price, (price, owner); untaken slots cost 0 and have no owner.
  std::vector<std::multiset<std::pair<double, int64_t>>> slots(e);
  for (auto& h : slots)
    for (int64_t c = 0; c < capacity; ++c) h.insert({0.0, -1});
  std::deque<int64_t> unassigned;
  for (int64_t t = 0; t < n; ++t) unassigned.push_back(t);
  std::vector<int64_t> expert_of(n, -1);
  // A feasible problem ends long before this; an infeasible one (a token with no allowed expert
  // left) would otherwise bid forever.
  const int64_t max_bids = 1000 * n * e + 1000;
  for (int64_t bids = 0; !unassigned.empty(); ++bids) {
    if (bids > max_bids) throw std::logic_error("balanced_assignment: the auction did not end (infeasible?)");
    const int64_t t = unassigned.front();
    unassigned.pop_front();
    // Best and second-best net value a[t, j] - price over slots (each slot is one object).
    int64_t best = -1;
    double v1 = kNone, v2 = kNone;
    for (int64_t j = 0; j < e; ++j) {
      if (s[t * e + j] == kNone) continue;
      const double v = s[t * e + j] - slots[j].begin()->first;
      if (v > v1) {
        v2 = v1;
        v1 = v;
        best = j;
      } else if (v > v2) {
        v2 = v;
      }
    }
    if (best < 0) throw std::logic_error("balanced_assignment: a token has no allowed expert");
    auto cheapest = slots[best].begin();
    if (capacity > 1) v2 = std::max(v2, s[t * e + best] - std::next(cheapest)->first);
    // The price at which t would be indifferent between its best and second-best slot, plus eps.
    const double bid = s[t * e + best] - (v2 == kNone ? v1 : v2) + eps;
    const int64_t evicted = cheapest->second;
    slots[best].erase(cheapest);
    slots[best].insert({bid, t});
    expert_of[t] = best;
    if (evicted >= 0) {
      expert_of[evicted] = -1;
      unassigned.push_back(evicted);
    }
  }
  return expert_of;
}

BaseRouter::BaseRouter(int64_t top_k) : k_(top_k) {}

Routing BaseRouter::decide(const RouteInput& in, Mode mode, torch::Generator&) {
  const auto s = at_least_float(in.logits);  // (tokens, experts)
  const int64_t n = s.size(0), e = s.size(1);
  Routing r;
  if (mode == Mode::Eval) {
    r.experts = stable_top_k(s.detach(), k_).second;  // (tokens, k)
  } else {
    auto scores = s.detach().to(torch::kCPU, torch::kDouble).clone();  // (tokens, experts)
    const double range = (scores.max() - scores.min()).item<double>();
    const double eps = 1e-3 * std::max(range, 1e-12);
    const int64_t capacity = (n + e - 1) / e;
    auto experts = torch::empty({n, k_}, torch::kLong);  // (tokens, k)
    auto chosen = experts.accessor<int64_t, 2>();
    auto score = scores.accessor<double, 2>();
    for (int64_t round = 0; round < k_; ++round) {
      const auto a = balanced_assignment(scores, capacity, eps);
      for (int64_t t = 0; t < n; ++t) {
        chosen[t][round] = a[t];
        score[t][a[t]] = -std::numeric_limits<double>::infinity();  // not the same expert twice
      }
    }
    r.experts = experts.to(s.device());
  }
  r.weights = s.gather(1, r.experts).sigmoid().to(in.logits.scalar_type());  // (tokens, k)
  r.aux_loss = torch::zeros({}, s.options());
  return r;
}

RouterSpec base_spec() {
  RouterSpec s;
  s.name = "base";
  s.summary =
      "training: balanced assignment of the call's tokens (equal load, maximal score) by an auction; eval: greedy";
  s.source = "Lewis et al. 2021 (arXiv 2103.16716) Sec. 2; fairseq base_layer.py";
  s.caps.own_capacity = true;
  s.make = [](const config::Config&, const RouterShape& sh) -> Router {
    return std::make_shared<BaseRouter>(sh.top_k);
  };
  s.bench = {{"base (train, auction)", {}}};
  return s;
}

}  // namespace ssr::routers
