// Swin Transformer with MoE blocks (Swin-MoE; ../shared/spec/reference-setup.md section 5,
// microsoft/Swin-Transformer swin_transformer_moe.py): patch embedding, stages of shifted-window
// attention blocks with a relative position bias, patch merging between stages, stochastic depth,
// and MoE feed-forward layers (models::MoE with GELU experts, any router of routers/) in the
// blocks model.moe_every selects. Pre-LN blocks, no absolute position embedding, QKV bias.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "harness/config/config.hpp"
#include "models/moe.hpp"
#include "models/switch_lm.hpp"
#include "routers/router.hpp"

namespace ssr::models {

// x (B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C): windows in row-major window order.
torch::Tensor window_partition(const torch::Tensor& x, int64_t ws);
// Inverse of window_partition: windows (B * nW, ws*ws, C) -> (B, H, W, C).
torch::Tensor window_reverse(const torch::Tensor& windows, int64_t ws, int64_t H, int64_t W);
// Additive mask of shifted-window attention on an H x W map cyclically shifted by `shift`:
// (nW, ws*ws, ws*ws) with 0 where two positions came from the same region of the unshifted map
// and -100 where the roll made them neighbours. Undefined when shift == 0 (nothing to mask).
torch::Tensor shifted_window_mask(int64_t H, int64_t W, int64_t ws, int64_t shift);
// Index into the ((2 ws - 1)^2, heads) bias table of each query/key pair: (ws*ws, ws*ws) int64.
torch::Tensor relative_position_index(int64_t ws);
// The inputs of the continuous position bias, one row per relative offset (dh, dw) in the table's
// order: each offset scaled to [-8, 8] by (ws - 1), then sign(x) log2(|x| + 1) / log2(8).
// ((2 ws - 1)^2, 2)
torch::Tensor log_relative_coords(int64_t ws);
// Stochastic depth: each sample's residual branch x (B, ...) is zeroed with probability p and the
// rest scaled by 1/(1-p); mask from `gen` when it lives on x's device type. Identity in eval.
torch::Tensor drop_path(const torch::Tensor& x, double p, bool training, torch::Generator& gen);

// Multi-head self-attention inside windows, with Swin-MoE's continuous relative position bias:
// a 2 -> 512 -> heads MLP (ReLU, no bias on the second layer) of log-spaced offsets.
class WindowAttentionImpl : public torch::nn::Module {
 public:
  WindowAttentionImpl(int64_t dim, int64_t ws, int64_t heads, double init_std);
  // x (B * nW, ws*ws, dim), mask (nW, ws*ws, ws*ws) or undefined -> (B * nW, ws*ws, dim)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& mask);

  torch::nn::Linear qkv{nullptr}, proj{nullptr};         // dim -> 3 dim, dim -> dim, both with bias
  torch::nn::Linear cpb_fc1{nullptr}, cpb_fc2{nullptr};  // 2 -> 512 (bias), 512 -> heads (none)
  torch::Tensor coords;                                  // ((2 ws - 1)^2, 2) buffer: log_relative_coords
  torch::Tensor index;                                   // (ws*ws, ws*ws) buffer

 private:
  int64_t heads_;
};
TORCH_MODULE(WindowAttention);

// x = x + DropPath(WAttn(LN(x)));  x = x + DropPath(FFN(LN(x))) with FFN dense or MoE.
class SwinBlockImpl : public torch::nn::Module {
 public:
  // res: the stage's resolution (H = W = res); window and shift already fitted to it.
  SwinBlockImpl(const config::Config& cfg, int64_t dim, int64_t res, int64_t heads, int64_t window, int64_t shift,
                double drop_path, bool moe);
  // x (B, res*res, dim) -> same; adds the router's auxiliary loss to aux.
  torch::Tensor forward(const torch::Tensor& x, torch::Tensor& aux, torch::Generator& gen);

  torch::nn::LayerNorm norm1{nullptr}, norm2{nullptr};
  WindowAttention attn{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};  // dense FFN (null in an MoE block)
  MoE moe{nullptr};                              // MoE FFN (null in a dense block)
  torch::Tensor mask;                            // (nW, ws*ws, ws*ws) buffer, undefined if no shift

 private:
  int64_t res_, window_, shift_;
  double drop_path_;
};
TORCH_MODULE(SwinBlock);

// 2x2 neighbourhoods concatenated, LN, linear: (B, res*res, C) -> (B, res*res/4, 2C).
class PatchMergingImpl : public torch::nn::Module {
 public:
  PatchMergingImpl(int64_t dim, int64_t res, double init_std);
  torch::Tensor forward(const torch::Tensor& x);

  torch::nn::LayerNorm norm{nullptr};    // 4 dim
  torch::nn::Linear reduction{nullptr};  // 4 dim -> 2 dim, no bias

 private:
  int64_t res_;
};
TORCH_MODULE(PatchMerging);

class SwinMoEImpl : public torch::nn::Module {
 public:
  // Reads the model.* Swin keys (model.embed_dim, model.depths, ...) and, for MoE blocks,
  // model.n_experts, model.top_k, model.dropout and router.*. Bad geometry throws ConfigError.
  explicit SwinMoEImpl(const config::Config& cfg);

  // images (B, in_chans, image_size, image_size) -> logits (B, num_classes); adds the routers'
  // auxiliary losses to aux (a () tensor).
  torch::Tensor forward(const torch::Tensor& images, torch::Tensor& aux, torch::Generator& gen);

  // By component, ending with "total" (what `ssr params` prints).
  std::vector<ParamCount> parameter_count() const;
  // Parameters that AdamW should not decay: biases, norms, the relative position tables.
  std::vector<torch::Tensor> no_decay_parameters() const;

  torch::nn::Conv2d patch_embed{nullptr};  // in_chans -> embed_dim, kernel = stride = patch_size
  torch::nn::LayerNorm embed_norm{nullptr}, norm{nullptr};
  std::vector<std::vector<SwinBlock>> stages;  // stages[s][b]
  std::vector<PatchMerging> merges;            // after every stage but the last
  torch::nn::Linear head{nullptr};             // features -> num_classes
  std::vector<MoE> moe_layers;                 // every MoE layer, in order (callers visit these)
};
TORCH_MODULE(SwinMoE);

// Builds the model of cfg and returns its parameter breakdown.
std::vector<ParamCount> swin_parameter_count(const config::Config& cfg);

}  // namespace ssr::models
