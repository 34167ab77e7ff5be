// train.optimizer_impl=fused: Adam and AdamW whose update is one fused ATen kernel per parameter
// group (at::_fused_adam_ / at::_fused_adamw_, the kernels of PyTorch's `fused=True`) instead of
// torch::optim's dozen tensor ops per parameter. Same update, state and checkpoint format as
// torch::optim::Adam / AdamW (a run can switch between the two on resume); float rounding differs.
#pragma once
#include <torch/torch.h>

namespace ssr::train {

class FusedAdam final : public torch::optim::Adam {
 public:
  using torch::optim::Adam::Adam;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

class FusedAdamW final : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;
};

}  // namespace ssr::train
