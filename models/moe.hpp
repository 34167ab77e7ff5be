// Sparse mixture-of-experts feed-forward layer (reference: fastmoe FMoE with world_size 1, spec
// section 1.5): a linear gate, a router from routers/, E two-layer experts (ReLU; GELU for
// Swin-MoE's Tutel layer, spec section 5). The layer has no capacity limit of its own: a router
// that drops a slot (swin-moe) gives it weight 0. Tokens are dispatched by sorting their (token, choice) slots by
// expert id so that every expert sees one contiguous block of rows.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "harness/config/config.hpp"
#include "routers/router.hpp"

namespace ssr::models {

// Dropout with its mask drawn from `gen` when the generator lives on x's device type, otherwise
// from torch's default generator of that device (seeded by torch::manual_seed). Identity when
// not training or p == 0.
torch::Tensor dropout(const torch::Tensor& x, double p, bool training, torch::Generator& gen);

// Fills t with N(0, std^2) truncated to [a, b] (timm's trunc_normal_, which LibTorch lacks; its
// bounds are absolute, so at std 0.005 the truncation at +-2 never binds), by the inverse CDF of
// a uniform draw from torch's default generator.
void trunc_normal_(torch::Tensor t, double std, double a = -2, double b = 2);

// Per-expert affine map on rows already sorted by expert: rows [o_e, o_e + group_sizes[e]) go
// through expert e. This is the seam for a grouped-GEMM kernel: replace the body, keep the
// signature. x_sorted (rows, in), weight (experts, out, in), bias (experts, out) -> (rows, out).
torch::Tensor grouped_linear(const torch::Tensor& x_sorted, const std::vector<int64_t>& group_sizes,
                             const torch::Tensor& weight, const torch::Tensor& bias);

// The same map as one grouped GEMM (at::_grouped_mm): no per-expert loop and no host sync, since
// the group ends stay on the device. offsets (experts) int32 cumulative row counts; row_expert
// (rows) the expert of each sorted row (for the bias). Needs in and out multiples of 8 (the
// kernel wants 16-byte-aligned rows in every dtype it takes).
torch::Tensor grouped_linear_gemm(const torch::Tensor& x_sorted, const torch::Tensor& offsets,
                                  const torch::Tensor& row_expert, const torch::Tensor& weight,
                                  const torch::Tensor& bias);

// Accumulated routing statistics of one MoE layer between two take_stats() calls.
struct MoEStatsAccumulator {
  std::vector<int64_t> tokens_per_expert;   // (experts) summed over calls
  double entropy_sum = 0;                   // sum over calls of mean entropy x tokens
  int64_t tokens = 0;                       // tokens routed
  double output_norm_sum = 0;               // sum over tokens of ||MoE(x)||_2 (paper Fig. 2)
  int64_t norm_tokens = 0;                  // tokens in output_norm_sum
  double dropped_slots = 0;                 // slots not kept (capacity, Expert Choice padding)
  double unrouted_tokens = 0;               // tokens no expert processed
  int64_t slots = 0;                        // tokens x k over calls
  routers::TokenExpertCounts token_expert;  // (input token id, expert) pairs of kept slots (LM only)
};

enum class Activation { Relu, Gelu };

// What differs between the LM's MoE layers and Swin-MoE's (whose width changes by stage).
struct MoEShape {
  int64_t d_model = 0, d_inner = 0;
  Activation activation = Activation::Relu;
  bool gate_bias = true;  // Tutel's gate is Linear(d, E, bias=False)
  // > 0: Tutel's init, expert weights trunc-normal(std) in +-2 std, zero biases, fc2 bias frozen;
  // 0: model.expert_init decides.
  double init_std = 0;
  bool token_ids = true;  // forward() gets the input token ids (false: Swin-MoE's patches have none)
};

class MoEImpl : public torch::nn::Module {
 public:
  // Reads model.d_model, model.d_inner, model.n_experts, model.top_k, model.dropout,
  // model.expert_init, model.expert_impl and the router.* keys (through routers::make_router).
  explicit MoEImpl(const config::Config& cfg);
  // The same keys except model.d_model and model.d_inner, which `shape` gives.
  MoEImpl(const config::Config& cfg, const MoEShape& shape);

  // x: (tokens, d_model) -> (tokens, d_model) = sum_k w_k * expert_{e_k}(x). Adds the router's
  // auxiliary loss of this call to `aux` (a () tensor). token_ids: (tokens) int64, the input token
  // at each row (for routers that read them and the token/expert statistics); undefined: none.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor& aux, torch::Generator& gen,
                        const torch::Tensor& token_ids = {});

  // Every expert on every token, combined with the routing weights (zero for unselected experts):
  // the dense reference the sparse dispatch must equal. Uses the routing of `routing`.
  torch::Tensor dense_reference(const torch::Tensor& x, const routers::Routing& routing);
  // The expert FFN on rows sorted by expert (the part a grouped GEMM replaces).
  torch::Tensor experts_sorted(const torch::Tensor& x_sorted, const std::vector<int64_t>& group_sizes,
                               torch::Generator& gen);
  // Routes x (tokens, d_model) without computing experts; token_ids as in forward().
  routers::Routing route(const torch::Tensor& x, torch::Generator& gen, const torch::Tensor& token_ids = {});

  // Every data-parallel rank's rows concatenated in rank order, with autograd
  // (dist::Group::gather_rows).
  using Gather = std::function<torch::Tensor(const torch::Tensor&)>;
  // router.global_batch: route the global micro-batch. The gate logits of all ranks are gathered
  // and every rank runs the router on all of them with `gen`, seeded alike on every rank so that
  // all ranks decide alike; each keeps its own rows (this is rank `rank`).
  void route_globally(Gather gather, int64_t rank, torch::Generator gen);
  // The router draws (SSR's coin, cost noise, noisy gating) from `gen` instead of the forward's
  // generator, so that a router's draws change neither dropout masks nor any other draw.
  void use_router_generator(torch::Generator gen) { router_gen_ = std::move(gen); }

  void collect_stats(bool on) { collect_ = on; }
  // Time the router calls (gate logits to routing decision; on CUDA each timed call syncs).
  void time_router(bool on) { time_router_ = on; }
  // Seconds spent in router calls since the last call, then reset.
  double take_router_seconds();
  // Tokens per router call from now on (router.group_tokens; 0 = the whole call).
  void set_group_tokens(int64_t n) { group_tokens_ = n; }
  // Statistics since the last call, then reset.
  routers::RouterStats take_stats();
  // Forgets the routing statistics collected since the last take_stats() (an evaluation's
  // forwards), keeping the Sinkhorn tally and the output norms.
  void drop_stats();
  // Mean L2 norm of this layer's MoE output per token since the last call (0 if none), then reset.
  double take_output_norm();
  // Mean over expert pairs of the cosine similarity of their flattened weights (w1, b1, w2, b2):
  // near 1 when the experts learnt the same function, near 0 for independent ones.
  double expert_similarity() const;

  torch::nn::Linear gate{nullptr};  // d_model -> experts, with bias, fp32
  torch::Tensor w1, b1;             // (experts, d_inner, d_model), (experts, d_inner)
  torch::Tensor w2, b2;             // (experts, d_model, d_inner), (experts, d_model)
  routers::Router router;

 private:
  // The router's decision on `in` (logits and x of this rank's rows) in the module's mode.
  routers::Routing route_logits(const routers::RouteInput& in, torch::Generator& gen);
  // logits (tokens, experts) of x (tokens, d_model) in float32 whatever autocast says, and the
  // router's decision on them.
  std::pair<torch::Tensor, routers::Routing> gate_and_route(const torch::Tensor& x, const torch::Tensor& token_ids,
                                                            torch::Generator& gen);
  // The router on one call's rows, in groups of router.group_tokens.
  routers::Routing route_rows(const routers::RouteInput& in, torch::Generator& gen);

  torch::Tensor activate(const torch::Tensor& h) const;  // (rows, d_inner) -> same

  int64_t n_experts_;
  Activation activation_;
  double dropout_;
  bool grouped_gemm_;                // model.expert_impl == grouped
  int64_t group_tokens_;             // router.group_tokens: tokens per router call (0 = the whole call)
  bool reads_hidden_;                // the router reads hidden states, so they are passed (and gathered) too
  bool reads_gate_;                  // the router reads the gate's rows
  bool reads_tokens_;                // the router reads the input token ids
  Gather gather_;                    // set by route_globally
  double capacity_factor_;           // model.capacity_factor (0: no capacity), unless the router has its own
  routers::DropPolicy drop_policy_;  // model.drop_policy
  int64_t rank_ = 0;
  torch::Generator router_gen_;  // undefined: the router draws from the forward's generator
  bool time_router_ = false;
  double router_seconds_ = 0;
  bool collect_ = false;
  MoEStatsAccumulator acc_;
};
TORCH_MODULE(MoE);

}  // namespace ssr::models
