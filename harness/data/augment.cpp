#include "harness/data/augment.hpp"

#include <algorithm>
#include <cmath>

namespace ssr::data {
namespace {

double uniform(std::mt19937_64& rng, double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

double beta(std::mt19937_64& rng, double alpha) {
  std::gamma_distribution<double> g(alpha, 1.0);
  const double x = g(rng), y = g(rng);
  return x / (x + y);
}

}  // namespace

AugmentOptions AugmentOptions::from(const config::Config& cfg) {
  AugmentOptions o;
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
        images.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0).copy_(reversed.narrow(2, y0, y1 - y0).narrow(3, x0, x1 - x0));
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
