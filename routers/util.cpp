#include "routers/util.hpp"

#include <ATen/CPUGeneratorImpl.h>

#include <limits>
#include <vector>

namespace ssr::routers {

std::pair<torch::Tensor, torch::Tensor> stable_top_k(const torch::Tensor& x, int64_t k) {
  torch::Tensor idx;  // (rows, k)
  if (k <= 4) {
    // k rounds of argmax (documented to return the first maximum) beat a full sort for the
    // router's k. Infinities become the extreme finite values first, so that a masked (-inf)
    // entry can never tie with an unmasked one; NaN stays NaN (argmax picks it, like topk).
    auto work = torch::nan_to_num(x.detach(), std::numeric_limits<double>::quiet_NaN());  // (rows, n)
    std::vector<torch::Tensor> picks;
    for (int64_t r = 0; r < k; ++r) {
      auto i = work.argmax(-1, /*keepdim=*/true);  // (rows, 1)
      picks.push_back(i);
      if (r + 1 < k) work = work.scatter(-1, i, -std::numeric_limits<double>::infinity());
    }
    idx = torch::cat(picks, -1);
  } else {
    idx = std::get<1>(x.detach().sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true)).narrow(-1, 0, k);
  }
  return {x.gather(-1, idx), idx};  // (rows, k) each; the values keep x's autograd graph
}

torch::Tensor at_least_float(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
}

double draw_uniform(torch::Generator& gen) {
  return torch::rand({1}, gen, torch::TensorOptions().dtype(torch::kFloat64).device(gen.device())).item<double>();
}

torch::Tensor draw_normal(const torch::Tensor& like, torch::Generator& gen) {
  auto z = torch::randn(like.sizes(), gen, like.options().device(gen.device()).requires_grad(false));  // like's shape
  return z.to(like.device());
}

torch::Generator forked_default_generator() {
  auto copy = at::detail::getDefaultCPUGenerator().clone();
  return at::make_generator<at::CPUGeneratorImpl>(copy.get<at::CPUGeneratorImpl>()->random64());
}

}  // namespace ssr::routers
