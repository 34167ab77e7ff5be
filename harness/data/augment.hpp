// Swin's train augmentation beyond crop and flip (reference-setup 5), as timm implements it:
// random erasing per image, and mixup / cutmix per batch with soft targets. Every draw comes from
// the batch's own generator, so a batch stays a function of (seed, batch index).
#pragma once
#include <torch/torch.h>

#include <random>

#include "harness/config/config.hpp"

namespace ssr::data {

struct AugmentOptions {
  int64_t randaug_n = 0;                     // data.randaug_n (0 = off)
  double randaug_m = 9, randaug_mstd = 0.5;  // data.randaug_m, data.randaug_mstd
  double erase_prob = 0;                     // data.random_erase
  double mixup_alpha = 0, cutmix_alpha = 0;  // data.mixup, data.cutmix (0 = off)
  double mix_prob = 1, switch_prob = 0.5;    // data.mix_prob, data.mix_switch_prob
  double label_smoothing = 0;                // train.label_smoothing, folded into the soft targets
  int64_t classes = 0;                       // model.num_classes
  static AugmentOptions from(const config::Config& cfg);
  bool mixing() const { return mixup_alpha > 0 || cutmix_alpha > 0; }
};

// timm RandomErasing (mode 'pixel', one box): with probability p a box of 2 %..1/3 of the image
// area, aspect ratio log-uniform in [0.3, 1/0.3], is filled with N(0, 1) noise (the image is
// already normalised). `image` is (C, S, S).
void random_erase(torch::Tensor& image, double p, std::mt19937_64& rng);

// timm Mixup (mode 'batch'): with probability mix_prob the batch is mixed with its reverse, by
// cutmix (chance switch_prob when both are on) or mixup, with lam ~ Beta(alpha, alpha); cutmix's
// lam is the kept area of the pasted box. Returns the soft targets (B, classes):
// lam * smooth(y) + (1 - lam) * smooth(reversed y), with smoothing off = s / classes.
// `images` (B, C, S, S) is mixed in place.
torch::Tensor mix_batch(torch::Tensor& images, const torch::Tensor& labels, const AugmentOptions& opt,
                        std::mt19937_64& rng);

}  // namespace ssr::data

namespace ssr::data {

// timm RandAugment with the increasing ops ("rand-mM-mstdS-inc1", Swin's recipe rand-m9-mstd0.5-
// inc1): `n` ops drawn with replacement from the 15 below, each applied with probability 0.5 at a
// magnitude drawn from N(m, mstd) clipped to [0, 10]. `image` is (C, H, W) in [0, 1] (before
// normalisation); geometric ops fill with grey 0.5 (timm's 128).
enum class RandOp {
  AutoContrast,
  Equalize,
  Invert,
  Rotate,
  Posterize,
  Solarize,
  SolarizeAdd,
  Color,
  Contrast,
  Brightness,
  Sharpness,
  ShearX,
  ShearY,
  TranslateX,
  TranslateY
};
constexpr int kRandOps = 15;
// One op at magnitude m in [0, 10]; `negate` flips the sign of signed magnitudes (rotation, shear,
// translation, enhancement factor).
torch::Tensor rand_op(const torch::Tensor& image, RandOp op, double m, bool negate);
torch::Tensor rand_augment(const torch::Tensor& image, int64_t n, double m, double mstd, std::mt19937_64& rng);

}  // namespace ssr::data
