// The router seam: a function of the gating logits (plus an RNG, and for trainable-noise gating
// the hidden states). Routers know nothing about models, data or the store.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>

#include "harness/config/config.hpp"

namespace ssr::routers {

enum class Mode { Train, Eval };

struct Routing {
  torch::Tensor experts;  // (tokens, k) int64 expert ids, row-wise in descending preference
  torch::Tensor weights;  // (tokens, k) float combine weights (0 in a slot that is not kept)
  // (tokens, k) bool: false for a slot dropped by a capacity or padding a token that got fewer
  // experts than k (Expert Choice); the layer computes no expert for it. Undefined: all kept.
  torch::Tensor kept;
  torch::Tensor aux_loss;  // () scalar added to the training loss (zero when the method has none)
  // Sinkhorn bookkeeping of this call (zeros when Sinkhorn did not run).
  bool used_sinkhorn = false;
  int64_t sinkhorn_iters = 0;   // Sinkhorn sweeps plus Newton steps
  double sinkhorn_error = 0.0;  // final marginal error (NaN/inf when the plan overflowed)
  bool sinkhorn_finite = true;  // false: the plan overflowed; the weights are then NaN on purpose
};

// Sinkhorn usage of one router over several calls (e.g. one logging window).
struct SinkhornTally {
  int64_t calls = 0;           // route() calls
  int64_t sinkhorn_calls = 0;  // of which used Sinkhorn
  int64_t iters_sum = 0;       // summed over the Sinkhorn calls
  double error_sum = 0;        // summed over the Sinkhorn calls
};

// Routing statistics of one call, for logging (computed only on logging steps). The metric names
// in the run store (layerL/NAME) are these fields' names.
struct RouterStats {
  std::vector<int64_t> tokens_per_expert;  // (experts)
  double load_cv = 0;                      // std/mean of tokens per expert (population std)
  double max_vio = 0;                      // MaxVio: max load / mean load - 1 (arXiv 2408.15664, eq. 4)
  int64_t dead_experts = 0;                // experts that received no token
  double drop_rate = 0;                    // share of the token x k slots dropped (capacity) or unfilled
  double unrouted = 0;                     // share of tokens that no expert processed
  double entropy = 0;                      // mean entropy of softmax(logits) over all experts
  int64_t sinkhorn_calls = 0;  // calls since the last reset that used Sinkhorn (summed: the run's observed count)
  double sinkhorn_frac = 0;    // fraction of calls since the last reset that used Sinkhorn
  double sinkhorn_iters = 0;   // mean iterations over the calls that used Sinkhorn
  double sinkhorn_error = 0;   // mean final marginal error over those calls
};

class RouterImpl : public torch::nn::Module {
 public:
  // logits: (tokens, experts) gating scores S; hidden: (tokens, d) the gate's input. Every call is
  // counted here (the Sinkhorn tally), whatever the router decides.
  Routing route(const torch::Tensor& logits, const torch::Tensor& hidden, Mode mode, torch::Generator& gen) {
    Routing r = decide(logits, hidden, mode, gen);
    ++tally_.calls;
    if (r.used_sinkhorn) {
      ++tally_.sinkhorn_calls;
      tally_.iters_sum += r.sinkhorn_iters;
      tally_.error_sum += r.sinkhorn_error;
    }
    return r;
  }

  // Called once after every optimizer step. A router with state that follows the training load
  // (an expert bias) updates it here; `sum_over_ranks` sums a tensor over data-parallel ranks
  // (identity with one rank), so every rank applies the same update.
  using SumOverRanks = std::function<torch::Tensor(const torch::Tensor&)>;
  virtual void end_step(const SumOverRanks& /*sum_over_ranks*/) {}

  // Counts since construction or the last reset.
  const SinkhornTally& sinkhorn_tally() const { return tally_; }
  void reset_sinkhorn_tally() { tally_ = {}; }

 protected:
  // The router's own part of route().
  virtual Routing decide(const torch::Tensor& logits, const torch::Tensor& hidden, Mode mode,
                         torch::Generator& gen) = 0;

 private:
  SinkhornTally tally_;
};
using Router = std::shared_ptr<RouterImpl>;

// Builds the router named by router.name with its router.* keys.
Router make_router(const config::Config& cfg, int64_t d_model, int64_t n_experts, int64_t top_k);

// Fills the load fields (tokens_per_expert, load_cv, max_vio, dead_experts) from expert loads.
void set_load(RouterStats& s, const std::vector<int64_t>& tokens_per_expert);
// Fills the Sinkhorn fields from a tally.
void set_sinkhorn(RouterStats& s, const SinkhornTally& tally);

// Switch/GShard expert capacity: each expert keeps at most ceil(factor * tokens * k / experts)
// slots, first choices before second choices, in token order within a choice; the others are
// dropped (kept false, weight 0; the token keeps its residual path).
Routing with_capacity(Routing r, int64_t n_experts, double factor);

// Statistics of one routing decision (logits (tokens, experts), routing.experts (tokens, k)).
// The Sinkhorn fields then describe this one call only.
RouterStats routing_stats(const torch::Tensor& logits, const Routing& routing, int64_t n_experts);
// Same, with the Sinkhorn fields taken from a tally (fraction and means over a logging window).
RouterStats routing_stats(const torch::Tensor& logits, const Routing& routing, int64_t n_experts,
                          const SinkhornTally& tally);

}  // namespace ssr::routers
