#include "harness/train/memory.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cmath>

#ifdef SSR_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace ssr::train {
namespace {

// float32 weight, gradient, Adam m and v.
constexpr double kBytesPerParam = 16;

double device_bytes(torch::Device device) {
#ifdef SSR_WITH_CUDA
  if (device.is_cuda()) return static_cast<double>(at::cuda::getDeviceProperties(device.index())->totalGlobalMem);
#endif
  (void)device;
  return static_cast<double>(::sysconf(_SC_PHYS_PAGES)) * static_cast<double>(::sysconf(_SC_PAGE_SIZE));
}

double gib(double bytes) { return bytes / (1 << 30); }

}  // namespace

double lm_params_lower_bound(const config::Config& cfg, int64_t vocab) {
  const auto f = [&](const char* key) { return static_cast<double>(cfg.i(key)); };
  const double d = f("model.d_model"), v = static_cast<double>(vocab);
  // Embedding and output layer; per layer the four attention projections, every expert's two
  // matrices and the gate.
  return 2 * v * d + f("model.n_layers") * (4 * d * d + f("model.n_experts") * (2 * d * f("model.d_inner") + d));
}

double swin_params_lower_bound(const config::Config& cfg) {
  const auto depths = cfg.ints("model.depths"), every = cfg.ints("model.moe_every");
  const double experts = static_cast<double>(cfg.i("model.n_experts")), ratio = cfg.f("model.mlp_ratio");
  double d = static_cast<double>(cfg.i("model.embed_dim")), total = 0;
  for (size_t s = 0; s < depths.size(); ++s) {
    const int64_t m = s < every.size() ? every[s] : 0;
    for (int64_t b = 0; b < depths[s]; ++b) {
      const bool moe = m > 0 && b % m == m - 1;
      // Attention (qkv and proj), then the MLP or every expert's two matrices.
      total += 4 * d * d + (moe ? experts : 1.0) * 2 * d * ratio * d;
    }
    if (s + 1 < depths.size()) {
      total += 8 * d * d;  // patch merging: 4d -> 2d
      d *= 2;
    }
  }
  return total + d * static_cast<double>(cfg.i("model.num_classes"));
}

void check_lm_memory(const config::Config& cfg, torch::Device device, int64_t rows, int64_t vocab) {
  const double layers = static_cast<double>(cfg.i("model.n_layers")), d = static_cast<double>(cfg.i("model.d_model"));
  const double span = static_cast<double>(cfg.i("model.attn_span")), m = static_cast<double>(cfg.i("train.seq_len"));
  const double micro = std::ceil(static_cast<double>(rows) / static_cast<double>(cfg.i("train.batch_split")));
  // The attention caches (every layer keeps its streams' last attn_span hidden states) and one
  // micro-batch's attention probabilities, saved in every layer for the backward pass.
  const double attention =
      4 * layers *
      (static_cast<double>(rows) * span * d + micro * static_cast<double>(cfg.i("model.n_heads")) * m * (span + m));
  const double params = kBytesPerParam * lm_params_lower_bound(cfg, vocab);
  const double total = device_bytes(device);
  if (attention + params <= total) return;
  const std::string what = device.is_cuda() ? "GPU" : "machine";
  if (params >= attention)
    throw config::ConfigError(fmt::format(
        "model.d_model={}, model.n_experts={}, model.d_inner={}, model.n_layers={}: training needs at least {:.1f} "
        "GiB (weights, gradients and Adam moments of {:.3g} parameters), more than the {:.1f} GiB of this {}; make "
        "the model smaller",
        cfg.i("model.d_model"), cfg.i("model.n_experts"), cfg.i("model.d_inner"), cfg.i("model.n_layers"),
        gib(attention + params), params / kBytesPerParam, gib(total), what));
  throw config::ConfigError(fmt::format(
      "model.attn_span={}, train.batch_size={}, train.seq_len={}: training needs at least {:.1f} GiB (attention "
      "caches and probabilities over {} layers, and the parameters), more than the {:.1f} GiB of this {}; lower "
      "model.attn_span, train.batch_size or train.seq_len, or raise train.batch_split",
      cfg.i("model.attn_span"), cfg.i("train.batch_size"), cfg.i("train.seq_len"), gib(attention + params),
      cfg.i("model.n_layers"), gib(total), what));
}

void check_vision_memory(const config::Config& cfg, torch::Device device) {
  // Activations: at least each block's input, saved for the backward pass.
  const auto depths = cfg.ints("model.depths");
  double side = static_cast<double>(cfg.i("model.image_size") / cfg.i("model.patch_size"));
  double d = static_cast<double>(cfg.i("model.embed_dim")), saved = 0;
  for (size_t s = 0; s < depths.size(); ++s) {
    saved += static_cast<double>(depths[s]) * side * side * d;
    side = std::ceil(side / 2);
    d *= 2;
  }
  const double activations = 4 * static_cast<double>(cfg.i("train.batch_size")) * saved;
  const double params = kBytesPerParam * swin_params_lower_bound(cfg);
  const double total = device_bytes(device);
  if (activations + params <= total) return;
  throw config::ConfigError(fmt::format(
      "model.embed_dim={}, model.n_experts={}, model.mlp_ratio={}, model.image_size={}, train.batch_size={}: training "
      "needs at least {:.1f} GiB ({:.3g} parameters with their gradients and Adam moments, and each block's saved "
      "input), more than the {:.1f} GiB of this {}; make the model or the batch smaller",
      cfg.i("model.embed_dim"), cfg.i("model.n_experts"), cfg.f("model.mlp_ratio"), cfg.i("model.image_size"),
      cfg.i("train.batch_size"), gib(activations + params), params / kBytesPerParam, gib(total),
      device.is_cuda() ? "GPU" : "machine"));
}

}  // namespace ssr::train
