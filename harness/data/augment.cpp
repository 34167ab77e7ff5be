#include "harness/data/augment.hpp"

#include <algorithm>
#include <cmath>
#include <vector>

namespace ssr::data {
namespace {

double uniform(std::mt19937_64& rng, double lo, double hi) {
  return std::uniform_real_distribution<double>(lo, hi)(rng);
}

double beta(std::mt19937_64& rng, double alpha) {
  std::gamma_distribution<double> g(alpha, 1.0);
  const double x = g(rng), y = g(rng);
  return x / (x + y);
}

}  // namespace

AugmentOptions AugmentOptions::from(const config::Config& cfg) {
  AugmentOptions o;
  o.randaug_n = cfg.i("data.randaug_n");
  o.randaug_m = cfg.f("data.randaug_m");
  o.randaug_mstd = cfg.f("data.randaug_mstd");
  o.erase_prob = cfg.f("data.random_erase");
  o.mixup_alpha = cfg.f("data.mixup");
  o.cutmix_alpha = cfg.f("data.cutmix");
  o.mix_prob = cfg.f("data.mix_prob");
  o.switch_prob = cfg.f("data.mix_switch_prob");
  o.label_smoothing = cfg.f("train.label_smoothing");
  o.classes = cfg.i("model.num_classes");
  return o;
}

void random_erase(torch::Tensor& image, double p, std::mt19937_64& rng) {
  if (p <= 0 || uniform(rng, 0, 1) >= p) return;
  const int64_t c = image.size(0), h = image.size(1), w = image.size(2);
  const double area = static_cast<double>(h * w);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * uniform(rng, 0.02, 1.0 / 3);
    const double aspect = std::exp(uniform(rng, std::log(0.3), std::log(1 / 0.3)));
    const auto eh = static_cast<int64_t>(std::lround(std::sqrt(target * aspect)));
    const auto ew = static_cast<int64_t>(std::lround(std::sqrt(target / aspect)));
    if (eh <= 0 || ew <= 0 || eh >= h || ew >= w) continue;
    const auto top = std::uniform_int_distribution<int64_t>(0, h - eh)(rng);
    const auto left = std::uniform_int_distribution<int64_t>(0, w - ew)(rng);
    std::normal_distribution<float> n(0, 1);
    std::vector<float> noise(static_cast<size_t>(c * eh * ew));
    for (auto& v : noise) v = n(rng);
    image.narrow(1, top, eh).narrow(2, left, ew).copy_(torch::tensor(noise).view({c, eh, ew}));
    return;
  }
}

torch::Tensor mix_batch(torch::Tensor& images, const torch::Tensor& labels, const AugmentOptions& opt,
                        std::mt19937_64& rng) {
  const double off = opt.label_smoothing / static_cast<double>(opt.classes), on = 1 - opt.label_smoothing + off;
  auto smooth = [&](const torch::Tensor& y) {  // (B) -> (B, classes)
    return torch::full({y.size(0), opt.classes}, off).scatter_(1, y.view({-1, 1}), on);
  };
  double lam = 1;
  if (opt.mixing() && uniform(rng, 0, 1) < opt.mix_prob) {
    const bool cutmix = opt.cutmix_alpha > 0 && (opt.mixup_alpha <= 0 || uniform(rng, 0, 1) < opt.switch_prob);
    const auto reversed = images.flip({0});  // (B, C, S, S)
    if (cutmix) {
      lam = beta(rng, opt.cutmix_alpha);
      const int64_t h = images.size(2), w = images.size(3);
      const double cut = std::sqrt(1 - lam);
      const auto ch = static_cast<int64_t>(h * cut), cw = static_cast<int64_t>(w * cut);
      const auto cy = std::uniform_int_distribution<int64_t>(0, h - 1)(rng);
      const auto cx = std::uniform_int_distribution<int64_t>(0, w - 1)(rng);
      const int64_t y0 = std::clamp<int64_t>(cy - ch / 2, 0, h), y1 = std::clamp<int64_t>(cy + ch / 2, 0, h);
      const int64_t x0 = std::clamp<int64_t>(cx - cw / 2, 0, w), x1 = std::clamp<int64_t>(cx + cw / 2, 0, w);
      if (y1 > y0 && x1 > x0) {
        images.narrow(2, y0, y1 - y0)
            .narrow(3, x0, x1 - x0)
            .copy_(reversed.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0));
      }
      lam = 1 - static_cast<double>((y1 - y0) * (x1 - x0)) / static_cast<double>(h * w);
    } else {
      lam = beta(rng, opt.mixup_alpha);
      images = images * lam + reversed * (1 - lam);
    }
  }
  return smooth(labels) * lam + smooth(labels.flip({0})) * (1 - lam);
}

}  // namespace ssr::data

namespace ssr::data {
namespace {

// (C, H, W) in [0, 1] <-> PIL's 8-bit levels, where posterize, solarize and equalize are defined.
torch::Tensor levels(const torch::Tensor& x) { return (x * 255).round().clamp(0, 255); }

torch::Tensor grey(const torch::Tensor& x) {  // (1, H, W): PIL's L = 0.299 R + 0.587 G + 0.114 B
  if (x.size(0) == 1) return x;
  return (x[0] * 0.299 + x[1] * 0.587 + x[2] * 0.114).unsqueeze(0);
}

// PIL ImageEnhance: degenerate * (1 - f) + image * f, clipped.
torch::Tensor blend(const torch::Tensor& degenerate, const torch::Tensor& x, double f) {
  return (degenerate + (x - degenerate) * f).clamp(0, 1);
}

// Output pixel (u, v) samples input (a u + b v + c, d u + e v + f) in pixels about the centre
// (PIL's Image.transform with AFFINE), bilinear, grey outside.
torch::Tensor affine(const torch::Tensor& x, double a, double b, double c, double d, double e, double f) {
  const double h = static_cast<double>(x.size(1)), w = static_cast<double>(x.size(2));
  // Normalised coordinates: u_n = 2u / w, so the pixel offsets scale by 2 / size.
  auto theta = torch::tensor({a, b * h / w, 2 * c / w, d * w / h, e, 2 * f / h}, torch::kFloat).view({1, 2, 3});
  auto grid = torch::nn::functional::affine_grid(theta, {1, x.size(0), x.size(1), x.size(2)}, false);  // (1, H, W, 2)
  namespace F = torch::nn::functional;
  auto out = F::grid_sample(
      (x - 0.5).unsqueeze(0), grid,
      F::GridSampleFuncOptions().mode(torch::kBilinear).padding_mode(torch::kZeros).align_corners(false));
  return out.squeeze(0) + 0.5;  // (C, H, W)
}

// PIL ImageOps.equalize on one channel of levels.
torch::Tensor equalize_channel(const torch::Tensor& q) {
  auto hist = torch::bincount(q.flatten().to(torch::kLong), {}, 256);  // (256)
  const auto* h = hist.data_ptr<int64_t>();
  int64_t last = 255;
  while (last > 0 && h[last] == 0) --last;
  const int64_t step = (q.numel() - h[last]) / 255;
  if (step == 0) return q;
  std::vector<float> lut(256);
  int64_t n = step / 2;
  for (int i = 0; i < 256; ++i) {
    lut[i] = static_cast<float>(std::min<int64_t>(n / step, 255));
    n += h[i];
  }
  return torch::tensor(lut).index({q.to(torch::kLong)});
}

}  // namespace

torch::Tensor rand_op(const torch::Tensor& x, RandOp op, double m, bool negate) {
  const double t = m / 10, sign = negate ? -1 : 1;
  const double factor = 1 + sign * t * 0.9;  // the increasing enhancement ops
  switch (op) {
    case RandOp::AutoContrast: {
      auto lo = x.amin({1, 2}, true), hi = x.amax({1, 2}, true);  // (C, 1, 1)
      auto range = hi - lo;
      return torch::where(range > 0, (x - lo) / range.clamp_min(1e-12), x);
    }
    case RandOp::Equalize: {
      auto q = levels(x);
      std::vector<torch::Tensor> channels;
      for (int64_t c = 0; c < x.size(0); ++c) channels.push_back(equalize_channel(q[c]));
      return torch::stack(channels) / 255;
    }
    case RandOp::Invert: return 1 - x;
    case RandOp::Rotate: {
      // PIL's Image.rotate: counter-clockwise about the centre.
      const double a = sign * t * 30 * M_PI / 180, cs = std::cos(a), sn = std::sin(a);
      return affine(x, cs, -sn, 0, sn, cs, 0);
    }
    case RandOp::Posterize: {
      const int bits = 4 - static_cast<int>(t * 4);
      const double keep = std::pow(2.0, 8 - bits);
      return (levels(x) / keep).floor() * keep / 255;
    }
    case RandOp::Solarize: {
      const double thresh = 256 - static_cast<int>(t * 256);
      auto q = levels(x);
      return torch::where(q >= thresh, 255 - q, q) / 255;
    }
    case RandOp::SolarizeAdd: {
      const double add = static_cast<int>(t * 110);
      auto q = levels(x);
      return torch::where(q < 128, (q + add).clamp_max(255), q) / 255;
    }
    case RandOp::Color: return blend(grey(x).expand_as(x), x, factor);
    case RandOp::Contrast:
      return blend(torch::full_like(x, std::floor(grey(levels(x)).mean().item<double>() + 0.5) / 255), x, factor);
    case RandOp::Brightness: return blend(torch::zeros_like(x), x, factor);
    case RandOp::Sharpness: {
      // PIL's SMOOTH kernel on the interior; the border keeps the image.
      if (x.size(1) < 3 || x.size(2) < 3) return x;
      auto k =
          torch::tensor({1, 1, 1, 1, 5, 1, 1, 1, 1}, torch::kFloat).view({1, 1, 3, 3}).repeat({x.size(0), 1, 1, 1}) /
          13;
      auto smooth = x.clone();
      smooth.narrow(1, 1, x.size(1) - 2)
          .narrow(2, 1, x.size(2) - 2)
          .copy_(torch::nn::functional::conv2d(x.unsqueeze(0), k,
                                               torch::nn::functional::Conv2dFuncOptions().groups(x.size(0)))
                     .squeeze(0));
      return blend(smooth, x, factor);
    }
    // timm shears about the top-left corner (PIL AFFINE (1, s, 0, 0, 1, 0)); affine() is centred.
    case RandOp::ShearX: {
      const double sh = sign * t * 0.3;
      return affine(x, 1, sh, sh * static_cast<double>(x.size(1)) / 2, 0, 1, 0);
    }
    case RandOp::ShearY: {
      const double sh = sign * t * 0.3;
      return affine(x, 1, 0, 0, sh, 1, sh * static_cast<double>(x.size(2)) / 2);
    }
    case RandOp::TranslateX: return affine(x, 1, 0, sign * t * 0.45 * static_cast<double>(x.size(2)), 0, 1, 0);
    case RandOp::TranslateY: return affine(x, 1, 0, 0, 0, 1, sign * t * 0.45 * static_cast<double>(x.size(1)));
  }
  return x;
}

torch::Tensor rand_augment(const torch::Tensor& image, int64_t n, double m, double mstd, std::mt19937_64& rng) {
  auto x = image;
  std::uniform_int_distribution<int> pick(0, kRandOps - 1);
  std::uniform_real_distribution<double> U(0, 1);
  std::normal_distribution<double> magnitude(m, mstd > 0 ? mstd : 1);
  for (int64_t i = 0; i < n; ++i) {
    const auto op = static_cast<RandOp>(pick(rng));
    if (U(rng) >= 0.5) continue;  // timm applies each chosen op with probability 0.5
    const double level = std::clamp(mstd > 0 ? magnitude(rng) : m, 0.0, 10.0);
    x = rand_op(x, op, level, U(rng) < 0.5);
  }
  return x;
}

}  // namespace ssr::data
