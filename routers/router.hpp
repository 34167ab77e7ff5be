// The router seam: a function of the gating logits (plus an RNG, and where a router's capabilities
// ask for them the hidden states, the input token ids or the gate's weights). Routers know nothing
// about models, data or the store.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>

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
  // (tokens, experts) the scores the router chose by, where they are not the gate logits (LPR's
  // cosines): the layer's entropy statistic reads them. Undefined: the gate logits.
  torch::Tensor scores;
  // (tokens, d_model) added to the token's input of every expert it goes to (LPR's aligner); the
  // residual path is unchanged. Undefined: none.
  torch::Tensor input_shift;
  // Sinkhorn bookkeeping of this call (zeros when Sinkhorn did not run).
  bool used_sinkhorn = false;
  int64_t sinkhorn_iters = 0;      // Sinkhorn sweeps plus Newton steps
  double sinkhorn_error = 0.0;     // final marginal error (NaN/inf when the plan overflowed)
  bool sinkhorn_finite = true;     // false: the plan overflowed; the weights are then NaN on purpose
  bool sinkhorn_converged = true;  // false: the solve stopped at router.max_iter above router.delta
  bool sinkhorn_fallback = false;  // SNS met a singular Newton system and fell back to log sweeps
};

// What a router reads. The layer fills `hidden`, `token_ids` and `gate_weight` only for routers
// whose capabilities ask for them (routers/registry.hpp); the others see them undefined or empty.
struct RouteInput {
  torch::Tensor logits;       // (tokens, experts) gating scores S, float32
  torch::Tensor hidden;       // (tokens, d_model) the gate's input; (tokens, 0) unless caps.hidden
  torch::Tensor token_ids;    // (tokens) int64 input token ids at these positions (caps.token_ids; LM only)
  torch::Tensor gate_weight;  // (experts, d_model) the gate's rows (caps.gate_weight)
};

// Sinkhorn usage of one router over several calls (e.g. one logging window).
struct SinkhornTally {
  int64_t calls = 0;           // route() calls
  int64_t sinkhorn_calls = 0;  // of which used Sinkhorn
  int64_t iters_sum = 0;       // summed over the Sinkhorn calls
  double error_sum = 0;        // summed over the Sinkhorn calls
  int64_t unconverged = 0;     // Sinkhorn calls that stopped at the iteration limit above delta
  int64_t fallbacks = 0;       // Sinkhorn calls whose Newton stage fell back to log sweeps
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
  double entropy = 0;                      // mean entropy of softmax(logits) (or Routing::scores) over all experts
  // I(input token id; expert) in nats over the window's kept slots (plug-in estimate; see
  // TokenExpertCounts). Empty where the model has no token ids (Swin-MoE).
  std::optional<double> token_mi;
  int64_t sinkhorn_calls = 0;        // calls since the last reset that used Sinkhorn (summed: the run's observed count)
  double sinkhorn_frac = 0;          // fraction of calls since the last reset that used Sinkhorn
  double sinkhorn_iters = 0;         // mean iterations over the calls that used Sinkhorn
  double sinkhorn_error = 0;         // mean final marginal error over those calls
  int64_t sinkhorn_unconverged = 0;  // of those calls, how many stopped at router.max_iter above router.delta
  int64_t sinkhorn_fallbacks = 0;    // of those calls, how many SNS solves fell back to log sweeps
};

// Joint counts of (input token id, expert) over kept routing slots, for the mutual information
// between what a token is and where it goes (docs/routers.md, "Specialisation").
class TokenExpertCounts {
 public:
  // token_ids (tokens) int64; routing.experts (tokens, k); slots that are not kept do not count.
  void add(const torch::Tensor& token_ids, const Routing& routing);
  bool empty() const { return total_ == 0; }
  // Plug-in estimate sum_{t,e} p(t,e) log(p(t,e) / (p(t) p(e))) in nats (0 when empty). It is
  // biased upwards by about (distinct ids - 1)(experts - 1) / (2 slots) (Miller-Madow), so compare
  // it between runs over the same windows, not against zero.
  double mutual_information() const;

 private:
  std::map<std::pair<int64_t, int64_t>, int64_t> joint_;  // (token id, expert) -> slots
  int64_t total_ = 0;
};

class RouterImpl : public torch::nn::Module {
 public:
  // Every call is counted here (the Sinkhorn tally), whatever the router decides.
  Routing route(const RouteInput& in, Mode mode, torch::Generator& gen) {
    Routing r = decide(in, mode, gen);
    ++tally_.calls;
    if (r.used_sinkhorn) {
      ++tally_.sinkhorn_calls;
      tally_.iters_sum += r.sinkhorn_iters;
      tally_.error_sum += r.sinkhorn_error;
      tally_.unconverged += !r.sinkhorn_converged;
      tally_.fallbacks += r.sinkhorn_fallback;
    }
    return r;
  }
  // logits: (tokens, experts) gating scores S; hidden: (tokens, d) the gate's input.
  Routing route(const torch::Tensor& logits, const torch::Tensor& hidden, Mode mode, torch::Generator& gen) {
    return route(RouteInput{logits, hidden, {}, {}}, mode, gen);
  }

  // Called once after every optimizer step. A router with state that follows the training load
  // (an expert bias) updates it here; `sum_over_ranks` sums a tensor over data-parallel ranks
  // (identity with one rank), so every rank applies the same update.
  using SumOverRanks = std::function<torch::Tensor(const torch::Tensor&)>;
  virtual void end_step(const SumOverRanks& /*sum_over_ranks*/) {}
  // The routing the experts compute, after the layer's capacity dropped what it drops (called by
  // route_with_capacity after every route()): a router whose state follows the kept load counts it here.
  virtual void observe(const Routing& /*final*/, Mode /*mode*/) {}

  // What stays on at inference, for routers with inference modes (caps.eval_modes; the values of
  // router.eval_mode): one trained model is then evaluated several ways (eval.router_modes).
  virtual void set_eval_mode(const std::string& mode) {
    throw config::ConfigError("eval.router_modes: this router has no inference modes (SSR has: router.name=ssr)");
  }

  // Counts since construction or the last reset.
  const SinkhornTally& sinkhorn_tally() const { return tally_; }
  void reset_sinkhorn_tally() { tally_ = {}; }

 protected:
  // The router's own part of route().
  virtual Routing decide(const RouteInput& in, Mode mode, torch::Generator& gen) = 0;

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

// Which slots an expert over its capacity keeps (model.drop_policy):
//   Choice:   first choices before second choices, in token order within a choice (Switch/GShard);
//   Position: its earliest tokens, whatever the choice (Megatron-Core's "position");
//   Probs:    its highest-weight slots, ties to the earlier token (Megatron-Core's default "probs").
enum class DropPolicy { Choice, Position, Probs };

// Expert capacity: each expert keeps at most ceil(factor * tokens * k / experts) slots, chosen by
// `policy`; the others are dropped (kept false, weight 0; the token keeps its residual path).
Routing with_capacity(Routing r, int64_t n_experts, double factor, DropPolicy policy = DropPolicy::Choice);
// What the MoE layer does per router call: route(), the capacity (factor 0: none), then observe().
Routing route_with_capacity(RouterImpl& router, const RouteInput& in, Mode mode, torch::Generator& gen,
                            int64_t n_experts, double factor, DropPolicy policy);

// Statistics of one routing decision (logits (tokens, experts), routing.experts (tokens, k)).
// The Sinkhorn fields then describe this one call only.
RouterStats routing_stats(const torch::Tensor& logits, const Routing& routing, int64_t n_experts);
// Same, with the Sinkhorn fields taken from a tally (fraction and means over a logging window).
RouterStats routing_stats(const torch::Tensor& logits, const Routing& routing, int64_t n_experts,
                          const SinkhornTally& tally);

}  // namespace ssr::routers
