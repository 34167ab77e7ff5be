#include "routers/util.hpp"

namespace ssr::routers {

std::pair<torch::Tensor, torch::Tensor> stable_top_k(const torch::Tensor& x, int64_t k) {
  auto [vals, idx] = x.sort(/*stable=*/true, /*dim=*/-1, /*descending=*/true);  // (rows, n)
  return {vals.narrow(-1, 0, k), idx.narrow(-1, 0, k)};                          // (rows, k)
}

torch::Tensor at_least_float(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
}

double draw_uniform(torch::Generator& gen) {
  return torch::rand({1}, gen, torch::TensorOptions().dtype(torch::kFloat64).device(gen.device()))
      .item<double>();
}

torch::Tensor draw_normal(const torch::Tensor& like, torch::Generator& gen) {
  auto z = torch::randn(like.sizes(), gen, like.options().device(gen.device()).requires_grad(false));
  return z.to(like.device());
}

}  // namespace ssr::routers
