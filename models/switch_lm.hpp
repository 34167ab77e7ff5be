// The reference Switch-style LM of the paper's language-modelling experiments
// (../shared/spec/reference-setup.md section 1): interleaved attention / SMoE layers, post-LN,
// a fixed attention span over a cache of previous segments' layer inputs, untied output layer.
#pragma once
#include <torch/torch.h>

#include <optional>
#include <string>
#include <vector>

#include "harness/config/config.hpp"
#include "models/moe.hpp"
#include "routers/router.hpp"

namespace ssr::models {

// Per-stream memory carried across consecutive segments: one cache per layer.
struct LMState {
  std::vector<torch::Tensor> cache;  // n_layers x (streams, attn_span, d_model), detached
};

struct LMOutput {
  torch::Tensor nll;  // () mean negative log-likelihood over the segment's target tokens
  torch::Tensor aux;  // () sum of the routers' auxiliary losses over layers
};

// One row of the parameter breakdown (`ssr params`); the last row is "total".
struct ParamCount {
  std::string component;  // embedding, output, attention, experts, gates, routers, layer_norms, key_pe
  int64_t count = 0;
};

// Sum over rows of -log softmax(h W^T + b)[target], computed `chunk` rows at a time so that the
// (rows, vocab) logits never exist at once. Differentiable in h, weight and bias: when gradients
// are needed, each chunk's gradient is formed in the forward pass and only the (rows, d),
// (vocab, d), (vocab) gradients are kept for backward.
// vocab_multiple > 1 pads the vocabulary of the matmuls to a multiple of it (masked; same result):
// cuBLAS runs an odd vocabulary such as 267,735 several times slower than 267,776.
// h (rows, d), weight (vocab, d), bias (vocab), targets (rows) int64 -> () sum.
torch::Tensor chunked_nll_sum(const torch::Tensor& h, const torch::Tensor& weight, const torch::Tensor& bias,
                              const torch::Tensor& targets, int64_t chunk, int64_t vocab_multiple = 1);

// The band of the reference's adaptive-span attention (spec 1.3): query i of a segment (absolute
// index L+i in cat(cache, h)) attends to concatenated indices i .. i+L-1, i.e. exactly the L
// previous positions, excluding itself. x (..., M, L+M) -> (..., M, L) with out[i][j] = x[i][i+j].
torch::Tensor unskew(const torch::Tensor& x, int64_t span);
// Inverse placement: p (..., M, L) -> (..., M, L+M) with out[i][i+j] = p[i][j], `fill` elsewhere.
torch::Tensor skew(const torch::Tensor& p, double fill = 0);

// Multi-head attention over the L previous positions with the shared relative position tensor
// key_pe (1, head_dim, L): score(i, j) = q_i . (k_{i+j} + key_pe[:, j]) / sqrt(head_dim).
// `sdpa` (model.attn_impl=sdpa): the same attention as one scaled_dot_product_attention over the
// L+M keys, the band and the position term folded into its additive mask, so a fused kernel
// (memory-efficient attention on CUDA) does softmax, dropout and the value product; its dropout
// draws from torch's default generator instead of `gen`. With `head_multiple` > 1 its query, key
// and value heads are zero-padded to a multiple of it (model.attn_head_multiple): the same scores
// and outputs, and a head size that CUDA's memory-efficient and cuDNN kernels take (44 is not).
class SeqAttentionImpl : public torch::nn::Module {
 public:
  SeqAttentionImpl(int64_t d_model, int64_t n_heads, int64_t span, double dropout, bool sdpa = false,
                   int64_t head_multiple = 1);
  // h (streams, M, d_model), cache (streams, L, d_model), key_pe (1, head_dim, L)
  // -> (streams, M, d_model)
  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& cache, const torch::Tensor& key_pe,
                        torch::Generator& gen);

  torch::nn::Linear q{nullptr}, k{nullptr}, v{nullptr}, o{nullptr};  // d_model -> d_model, no bias

 private:
  int64_t n_heads_, head_dim_, span_;
  double dropout_;
  bool sdpa_;
  int64_t head_pad_;  // zero columns added to each head for the sdpa kernels
};
TORCH_MODULE(SeqAttention);

// Attention + SMoE block with the reference's post-LN and doubled residual/LN (spec 1.4):
//   h = LN1(h + Attn(h));  s = LN_s(h + Drop(MoE(h)));  h = LN2(h + s)
// or, with model.block=momentum (spec 1.7), p = mu p + gamma Drop(MoE(h)); s = LN_s(h - p).
class LayerImpl : public torch::nn::Module {
 public:
  explicit LayerImpl(const config::Config& cfg);
  // h (streams, M, d_model), cache (streams, L, d_model); momentum (streams, M, d_model) is read
  // and updated by the momentum block only; tokens (streams, M) the input ids at these positions
  // (for routers that read them). Adds the router's auxiliary loss to aux.
  torch::Tensor forward(const torch::Tensor& h, const torch::Tensor& cache, const torch::Tensor& key_pe,
                        torch::Tensor& momentum, torch::Tensor& aux, torch::Generator& gen,
                        const torch::Tensor& tokens);

  SeqAttention attn{nullptr};
  MoE moe{nullptr};
  torch::nn::LayerNorm norm1{nullptr}, moe_norm{nullptr}, norm2{nullptr};
  // The reference registers a third LayerNorm it never applies; model.unused_norm keeps it so
  // parameter counts (and optimizer state sizes) equal the reference's. Null when off.
  torch::nn::LayerNorm norm3{nullptr};

 private:
  bool momentum_block_;
  double mu_, gamma_, dropout_;
};
TORCH_MODULE(Layer);

class SwitchLMImpl : public torch::nn::Module {
 public:
  SwitchLMImpl(const config::Config& cfg, int64_t vocab_size);

  // Zero caches for `streams` streams (the reference starts every stream from zeros), on the
  // device and dtype of the model's parameters.
  LMState initial_state(int64_t streams) const;

  // Parameters AdamW leaves undecayed: biases and norms (rank 1), as nanoGPT groups them; weights
  // and embeddings decay.
  std::vector<torch::Tensor> no_decay_parameters() const;

  // tokens, targets: (streams, seq_len) int64. Updates `state` to the next segment's caches.
  // Randomness (dropout, routers) comes from `gen`; dropout masks fall back to torch's seeded
  // default generator when `gen` lives on another device type than the model.
  LMOutput forward(const torch::Tensor& tokens, const torch::Tensor& targets, LMState& state, torch::Generator& gen);

  // Final hidden states before the output layer: (streams, seq_len, d_model); advances `state`
  // and adds the routers' auxiliary losses to `aux` (a () tensor).
  torch::Tensor hidden(const torch::Tensor& tokens, LMState& state, torch::Tensor& aux, torch::Generator& gen);

  // Parameters by component, in a fixed order, ending with "total" (what `ssr params` prints).
  std::vector<ParamCount> parameter_count() const;

  int64_t n_layers() const { return static_cast<int64_t>(layers.size()); }

  torch::nn::Embedding embed{nullptr};  // (vocab, d_model), N(0, 1)
  torch::nn::Linear out{nullptr};       // d_model -> vocab, with bias, untied
  torch::Tensor key_pe;                 // (1, head_dim, attn_span) shared by all layers, N(0, 1)
  std::vector<Layer> layers;
  // Every layer's MoE, in order: callers visit these for routing statistics, router generators,
  // timing, eval modes and output norms (one loop at the call site instead of a method per job).
  std::vector<MoE> moe_layers;

 private:
  int64_t d_model_, span_, loss_chunk_, vocab_multiple_;
  bool momentum_block_;
};
TORCH_MODULE(SwitchLM);

// Builds the model of `cfg` for a vocabulary of `vocab_size` and returns its parameter breakdown
// (`ssr params CONFIG`; the vocabulary size comes from data::load_corpus(cfg).vocab_size()).
std::vector<ParamCount> parameter_count(const config::Config& cfg, int64_t vocab_size);

// Floating-point operations of one training step (forward + backward) by count: 2 per multiply-add of
// every matmul, backward twice the forward (docs/bench/flops.md gives each formula). Rows: output
// layer, attention, experts (the k active per token), gates, total. For MFU: flops / (time x peak).
std::vector<std::pair<std::string, double>> step_flops(const config::Config& cfg, int64_t vocab_size);

// How many router calls of a run's training may solve Sinkhorn, on one rank (the one whose
// counts the store records): its MoE layers x train.steps x calls per step (micro-batches x
// router.group_tokens groups). SSR solves in each with probability router.p, the Sinkhorn
// baseline in all; nullopt for routers that never solve. The paper's WikiText-103 runs: 80,000
// steps x 6 layers x 2 micro-batches x 1 group, so p = 1e-3 expects 960 on each GPU.
struct SinkhornExpectation {
  int64_t router_calls = 0;  // training router calls over the run
  double p = 0;              // probability that one of them solves Sinkhorn
  double expected() const { return p * static_cast<double>(router_calls); }
};
std::optional<SinkhornExpectation> sinkhorn_expectation(const config::Config& cfg);

}  // namespace ssr::models
