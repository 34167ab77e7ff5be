// Mixed precision: `train.precision=bf16` runs the forward under LibTorch's autocast (matmuls in
// bfloat16, reductions and norms in float32); parameters, gradients and Adam stay float32.
#pragma once
#include <ATen/autocast_mode.h>
#include <torch/torch.h>

namespace ssr::models {

// Autocast to bfloat16 on `device` for the guard's lifetime when `bf16`; otherwise nothing.
class AutocastGuard {
 public:
  AutocastGuard(torch::Device device, bool bf16) : type_(device.type()), on_(bf16) {
    if (!on_) return;
    prev_enabled_ = at::autocast::is_autocast_enabled(type_);
    prev_dtype_ = at::autocast::get_autocast_dtype(type_);
    at::autocast::set_autocast_enabled(type_, true);
    at::autocast::set_autocast_dtype(type_, at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~AutocastGuard() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(type_, prev_enabled_);
    at::autocast::set_autocast_dtype(type_, prev_dtype_);
  }
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  at::DeviceType type_;
  bool on_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kFloat;
};

// The dtype autocast gives matmuls on `t`'s device right now (float32 when autocast is off).
inline at::ScalarType matmul_dtype(const torch::Tensor& t) {
  const auto type = t.device().type();
  return at::autocast::is_autocast_enabled(type) ? at::autocast::get_autocast_dtype(type) : t.scalar_type();
}

}  // namespace ssr::models
