#include "models/swin_moe.hpp"

#include <fmt/format.h>

#include <cmath>

namespace ssr::models {
namespace {

// Swin-MoE's _init_weights: every Linear's weight trunc-normal(init_std), bias 0.
void init_linear(torch::nn::Linear& l, double std) {
  trunc_normal_(l->weight, std);
  if (l->bias.defined()) torch::nn::init::zeros_(l->bias);
}

}  // namespace

torch::Tensor window_partition(const torch::Tensor& x, int64_t ws) {
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  return x.view({B, H / ws, ws, W / ws, ws, C})
      .permute({0, 1, 3, 2, 4, 5})
      .reshape({-1, ws * ws, C});  // (B * nW, ws*ws, C)
}

torch::Tensor window_reverse(const torch::Tensor& windows, int64_t ws, int64_t H, int64_t W) {
  const int64_t C = windows.size(-1), B = windows.size(0) / ((H / ws) * (W / ws));
  return windows.view({B, H / ws, W / ws, ws, ws, C})
      .permute({0, 1, 3, 2, 4, 5})
      .reshape({B, H, W, C});  // (B, H, W, C)
}

torch::Tensor shifted_window_mask(int64_t H, int64_t W, int64_t ws, int64_t shift) {
  if (shift == 0) return {};
  // Label the nine regions the roll creates (bands [0, H-ws), [H-ws, H-shift), [H-shift, H) per
  // axis); positions with different labels must not attend to each other.
  auto region = [&](int64_t i, int64_t n) { return i < n - ws ? 0 : (i < n - shift ? 1 : 2); };
  auto label = torch::empty({1, H, W, 1});  // (1, H, W, 1)
  auto a = label.accessor<float, 4>();
  for (int64_t i = 0; i < H; ++i)
    for (int64_t j = 0; j < W; ++j) a[0][i][j][0] = static_cast<float>(3 * region(i, H) + region(j, W));
  auto windows = window_partition(label, ws).squeeze(-1);   // (nW, ws*ws)
  auto diff = windows.unsqueeze(1) - windows.unsqueeze(2);  // (nW, ws*ws, ws*ws)
  return torch::zeros_like(diff).masked_fill_(diff != 0, -100.0);
}

torch::Tensor relative_position_index(int64_t ws) {
  auto r = torch::arange(ws * ws, torch::kInt64);
  auto row = r.div(ws, "floor"), col = r.remainder(ws);        // (ws*ws) each
  auto drow = row.unsqueeze(1) - row.unsqueeze(0) + (ws - 1);  // (ws*ws, ws*ws) in [0, 2ws-2]
  auto dcol = col.unsqueeze(1) - col.unsqueeze(0) + (ws - 1);
  return drow * (2 * ws - 1) + dcol;  // (ws*ws, ws*ws)
}

torch::Tensor log_relative_coords(int64_t ws) {
  auto d = torch::arange(-(ws - 1), ws, torch::kFloat);  // (2ws-1)
  if (ws > 1) d = d / static_cast<double>(ws - 1) * 8.0;
  d = torch::sign(d) * torch::log2(d.abs() + 1.0) / std::log2(8.0);
  auto grid = torch::meshgrid({d, d}, "ij");                  // 2 x (2ws-1, 2ws-1)
  return torch::stack({grid[0], grid[1]}, -1).view({-1, 2});  // ((2ws-1)^2, 2)
}

torch::Tensor drop_path(const torch::Tensor& x, double p, bool training, torch::Generator& gen) {
  if (!training || p == 0) return x;
  std::vector<int64_t> shape(x.dim(), 1);
  shape[0] = x.size(0);
  std::optional<torch::Generator> g;
  if (gen.defined() && gen.device().type() == x.device().type()) g = gen;
  auto keep = torch::empty(shape, x.options()).bernoulli_(1 - p, g);  // (B, 1, ...)
  return x * keep.div_(1 - p);
}

WindowAttentionImpl::WindowAttentionImpl(int64_t dim, int64_t ws, int64_t heads, double init_std) : heads_(heads) {
  qkv = register_module("qkv", torch::nn::Linear(torch::nn::LinearOptions(dim, 3 * dim).bias(true)));
  proj = register_module("proj", torch::nn::Linear(dim, dim));
  cpb_fc1 = register_module("cpb_fc1", torch::nn::Linear(2, 512));
  cpb_fc2 = register_module("cpb_fc2", torch::nn::Linear(torch::nn::LinearOptions(512, heads).bias(false)));
  coords = register_buffer("coords", log_relative_coords(ws));
  index = register_buffer("index", relative_position_index(ws));
  for (auto* l : {&qkv, &proj, &cpb_fc1, &cpb_fc2}) init_linear(*l, init_std);
}

torch::Tensor WindowAttentionImpl::forward(const torch::Tensor& x, const torch::Tensor& mask) {
  const int64_t Bw = x.size(0), N = x.size(1), C = x.size(2), hd = C / heads_;
  auto qkv_h = qkv->forward(x).view({Bw, N, 3, heads_, hd}).permute({2, 0, 3, 1, 4});  // (3, Bw, heads, N, hd)
  auto q = qkv_h[0] * (1.0 / std::sqrt(static_cast<double>(hd))), k = qkv_h[1], v = qkv_h[2];
  auto attn = torch::matmul(q, k.transpose(-2, -1));                                          // (Bw, heads, N, N)
  auto table = cpb_fc2->forward(torch::relu(cpb_fc1->forward(coords)));                       // ((2ws-1)^2, heads)
  auto bias = table.index_select(0, index.view(-1)).view({N, N, heads_}).permute({2, 0, 1});  // (heads, N, N)
  attn = attn + bias.unsqueeze(0);
  if (mask.defined()) {
    const int64_t nW = mask.size(0);
    attn = (attn.view({Bw / nW, nW, heads_, N, N}) + mask.unsqueeze(1).unsqueeze(0)).view({Bw, heads_, N, N});
  }
  auto out = torch::matmul(attn.softmax(-1), v).transpose(1, 2).reshape({Bw, N, C});  // (Bw, N, C)
  return proj->forward(out);
}

SwinBlockImpl::SwinBlockImpl(const config::Config& cfg, int64_t dim, int64_t res, int64_t heads, int64_t window,
                             int64_t shift, double drop_path, bool moe_block)
    : res_(res), window_(window), shift_(shift), drop_path_(drop_path) {
  const double init_std = cfg.f("model.init_std");
  norm1 = register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  attn = register_module("attn", WindowAttention(dim, window, heads, init_std));
  norm2 = register_module("norm2", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  const auto hidden = static_cast<int64_t>(static_cast<double>(dim) * cfg.f("model.mlp_ratio"));
  if (moe_block) {
    moe = register_module(
        "moe", MoE(cfg, MoEShape{dim, hidden, Activation::Gelu, /*gate_bias=*/false, init_std, /*token_ids=*/false}));
    init_linear(moe->gate, init_std);
    // Rows are image-major, so a group of images is a group of consecutive tokens.
    if (const int64_t images = cfg.i("router.group_images"); images > 0) moe->set_group_tokens(images * res * res);
  } else {
    // MLP_FC2_BIAS False: the dense fc2 has no bias, as the experts' fc2 bias is frozen at 0.
    fc1 = register_module("fc1", torch::nn::Linear(dim, hidden));
    fc2 = register_module("fc2", torch::nn::Linear(torch::nn::LinearOptions(hidden, dim).bias(false)));
    init_linear(fc1, init_std);
    init_linear(fc2, init_std);
  }
  auto m = shifted_window_mask(res, res, window, shift);
  if (m.defined()) mask = register_buffer("mask", m);
}

torch::Tensor SwinBlockImpl::forward(const torch::Tensor& x, torch::Tensor& aux, torch::Generator& gen) {
  const int64_t B = x.size(0), C = x.size(2);
  auto h = norm1->forward(x).view({B, res_, res_, C});  // (B, H, W, C)
  if (shift_ > 0) h = torch::roll(h, {-shift_, -shift_}, {1, 2});
  auto w = attn->forward(window_partition(h, window_), mask);  // (B * nW, ws*ws, C)
  h = window_reverse(w, window_, res_, res_);                  // (B, H, W, C)
  if (shift_ > 0) h = torch::roll(h, {shift_, shift_}, {1, 2});
  auto y = x + drop_path(h.reshape({B, res_ * res_, C}), drop_path_, is_training(), gen);  // (B, L, C)
  auto z = norm2->forward(y);                                                              // (B, L, C)
  torch::Tensor f;                                                                         // (B, L, C)
  if (moe) {
    // One router call per router.group_images images (else the batch): capacity is per call.
    f = moe->forward(z.reshape({-1, C}), aux, gen).view({B, res_ * res_, C});
  } else {
    f = fc2->forward(torch::gelu(fc1->forward(z)));
  }
  return y + drop_path(f, drop_path_, is_training(), gen);
}

PatchMergingImpl::PatchMergingImpl(int64_t dim, int64_t res, double init_std) : res_(res) {
  norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({4 * dim})));
  reduction = register_module("reduction", torch::nn::Linear(torch::nn::LinearOptions(4 * dim, 2 * dim).bias(false)));
  init_linear(reduction, init_std);
}

torch::Tensor PatchMergingImpl::forward(const torch::Tensor& x) {
  using torch::indexing::None;
  using torch::indexing::Slice;
  const int64_t B = x.size(0), C = x.size(2);
  auto h = x.view({B, res_, res_, C});                                 // (B, H, W, C)
  auto x0 = h.index({Slice(), Slice(0, None, 2), Slice(0, None, 2)});  // (B, H/2, W/2, C)
  auto x1 = h.index({Slice(), Slice(1, None, 2), Slice(0, None, 2)});
  auto x2 = h.index({Slice(), Slice(0, None, 2), Slice(1, None, 2)});
  auto x3 = h.index({Slice(), Slice(1, None, 2), Slice(1, None, 2)});
  auto cat = torch::cat({x0, x1, x2, x3}, -1).view({B, -1, 4 * C});  // (B, L/4, 4C)
  return reduction->forward(norm->forward(cat));                     // (B, L/4, 2C)
}

SwinMoEImpl::SwinMoEImpl(const config::Config& cfg) {
  if (cfg.i("router.group_images") > 0 && cfg.i("router.group_tokens") > 0)
    throw config::ConfigError(
        "router.group_images: Swin-MoE groups router calls by images; leave router.group_tokens at 0");
  const double init_std = cfg.f("model.init_std");
  const auto depths = cfg.ints("model.depths"), heads = cfg.ints("model.swin_heads"),
             moe_every = cfg.ints("model.moe_every");
  const int64_t n_stages = static_cast<int64_t>(depths.size());
  if (heads.size() != depths.size() || moe_every.size() != depths.size())
    throw config::ConfigError(
        fmt::format("model.swin_heads and model.moe_every need one entry per stage of "
                    "model.depths ({} stages; got {} and {})",
                    n_stages, heads.size(), moe_every.size()));
  const int64_t image = cfg.i("model.image_size"), patch = cfg.i("model.patch_size"), embed = cfg.i("model.embed_dim");
  if (image % patch != 0)
    throw config::ConfigError(fmt::format("model.patch_size: {} does not divide model.image_size {}", patch, image));
  int64_t res = image / patch;
  if (res % (int64_t{1} << (n_stages - 1)) != 0)
    throw config::ConfigError(
        fmt::format("model.image_size: the {}x{} patch grid cannot be halved {} times by patch "
                    "merging (use a multiple of {} patches)",
                    res, res, n_stages - 1, int64_t{1} << (n_stages - 1)));
  patch_embed = register_module(
      "patch_embed", torch::nn::Conv2d(torch::nn::Conv2dOptions(cfg.i("model.in_chans"), embed, patch).stride(patch)));
  embed_norm = register_module("embed_norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({embed})));

  int64_t total_blocks = 0;
  for (auto d : depths) total_blocks += d;
  const double dp_max = cfg.f("model.drop_path");
  int64_t dim = embed, block_id = 0;
  for (int64_t s = 0; s < n_stages; ++s) {
    if (dim % heads[s] != 0)
      throw config::ConfigError(
          fmt::format("model.swin_heads: {} heads do not divide stage {}'s {} channels", heads[s], s + 1, dim));
    // A window as large as the map is one window over it, and shifting it would change nothing.
    const int64_t window = std::min(cfg.i("model.window"), res);
    if (res % window != 0)
      throw config::ConfigError(
          fmt::format("model.window: {} does not divide stage {}'s {}x{} map "
                      "(pick a divisor of every stage's resolution)",
                      window, s + 1, res, res));
    std::vector<SwinBlock> blocks;
    for (int64_t b = 0; b < depths[s]; ++b, ++block_id) {
      const int64_t shift = (b % 2 == 1 && window < res) ? window / 2 : 0;
      const double dp = total_blocks > 1 ? dp_max * static_cast<double>(block_id) / (total_blocks - 1) : 0.0;
      const bool is_moe = moe_every[s] > 0 && b % moe_every[s] == moe_every[s] - 1;
      blocks.push_back(
          register_module(fmt::format("s{}_b{}", s, b), SwinBlock(cfg, dim, res, heads[s], window, shift, dp, is_moe)));
      if (is_moe) moe_layers.push_back(blocks.back()->moe);
    }
    stages.push_back(std::move(blocks));
    if (s + 1 < n_stages) {
      merges.push_back(register_module(fmt::format("merge{}", s), PatchMerging(dim, res, init_std)));
      dim *= 2;
      res /= 2;
    }
  }
  norm = register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})));
  head = register_module("head", torch::nn::Linear(dim, cfg.i("model.num_classes")));
  init_linear(head, init_std);
}

torch::Tensor SwinMoEImpl::forward(const torch::Tensor& images, torch::Tensor& aux, torch::Generator& gen) {
  auto x = patch_embed->forward(images).flatten(2).transpose(1, 2);  // (B, L, embed)
  x = embed_norm->forward(x);
  for (size_t s = 0; s < stages.size(); ++s) {
    for (auto& block : stages[s]) x = block->forward(x, aux, gen);  // (B, L_s, C_s)
    if (s < merges.size()) x = merges[s]->forward(x);
  }
  return head->forward(norm->forward(x).mean(1));  // (B, num_classes)
}

std::vector<ParamCount> SwinMoEImpl::parameter_count() const {
  std::vector<ParamCount> rows = {{"patch_embed"}, {"attention"},   {"mlp"},           {"experts"}, {"gates"},
                                  {"routers"},     {"layer_norms"}, {"patch_merging"}, {"head"},    {"total"}};
  auto add = [&](const std::string& component, int64_t n) {
    for (auto& r : rows)
      if (r.component == component) r.count += n;
    rows.back().count += n;
  };
  for (const auto& p : named_parameters()) {
    const std::string& k = p.key();
    const int64_t n = p.value().numel();
    auto has = [&](const char* s) { return k.find(s) != std::string::npos; };
    if (has("moe.router"))
      add("routers", n);
    else if (has("moe.gate"))
      add("gates", n);
    else if (has("moe."))
      add("experts", n);
    else if (has("norm"))
      add("layer_norms", n);
    else if (has("attn."))
      add("attention", n);
    else if (has("fc1") || has("fc2"))
      add("mlp", n);
    else if (has("merge"))
      add("patch_merging", n);
    else if (has("patch_embed"))
      add("patch_embed", n);
    else
      add("head", n);
  }
  return rows;
}

std::vector<torch::Tensor> SwinMoEImpl::no_decay_parameters() const {
  std::vector<torch::Tensor> out;
  for (const auto& p : named_parameters()) {
    const std::string& k = p.key();
    // Tutel's expert biases are (experts, d): biases by name, not by rank; the position-bias MLP
    // is exempt too (Swin-MoE's no_weight_decay_keywords "cpb_mlp").
    if (p.value().dim() == 1 || k.ends_with(".b1") || k.ends_with(".b2") || k.find(".cpb_") != std::string::npos)
      out.push_back(p.value());
  }
  return out;
}

std::vector<ParamCount> swin_parameter_count(const config::Config& cfg) {
  torch::NoGradGuard no_grad;
  return SwinMoE(cfg)->parameter_count();
}

}  // namespace ssr::models
