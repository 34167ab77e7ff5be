#include "harness/train/fused_adam.hpp"

#include <ATen/ops/_fused_adam.h>
#include <ATen/ops/_fused_adamw.h>

namespace ssr::train {
namespace {

// One group's tensors in the lists the fused kernels take; advances each parameter's step.
struct Lists {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, steps;
};

template <class State>
Lists gather(torch::optim::OptimizerParamGroup& group,
             ska::flat_hash_map<void*, std::unique_ptr<torch::optim::OptimizerParamState>>& state) {
  Lists l;
  for (auto& p : group.params()) {
    if (!p.grad().defined()) continue;
    auto& slot = state[p.unsafeGetTensorImpl()];
    if (!slot) {  // as torch::optim creates it, so checkpoints of either implementation load in the other
      auto s = std::make_unique<State>();
      s->step(0);
      s->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      s->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      slot = std::move(s);
    }
    auto& s = static_cast<State&>(*slot);
    s.step(s.step() + 1);
    l.params.push_back(p);
    l.grads.push_back(p.grad());
    l.exp_avgs.push_back(s.exp_avg());
    l.exp_avg_sqs.push_back(s.exp_avg_sq());
    // The kernels read the step from a float tensor on the parameter's device (no host sync).
    l.steps.push_back(torch::scalar_tensor(static_cast<double>(s.step()), p.options().dtype(torch::kFloat)));
  }
  return l;
}

template <class State, class Options, class Kernel>
torch::Tensor fused_step(torch::optim::Optimizer& opt,
                         ska::flat_hash_map<void*, std::unique_ptr<torch::optim::OptimizerParamState>>& state,
                         const torch::optim::Optimizer::LossClosure& closure, Kernel kernel) {
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode grad(true);
    loss = closure();
  }
  torch::NoGradGuard no_grad;
  for (auto& group : opt.param_groups()) {
    const auto& o = static_cast<const Options&>(group.options());
    TORCH_CHECK(!o.amsgrad(), "train.optimizer_impl=fused: amsgrad is not supported");
    auto l = gather<State>(group, state);
    if (l.params.empty()) continue;
    kernel(l, o);
  }
  return loss;
}

}  // namespace

torch::Tensor FusedAdam::step(LossClosure closure) {
  return fused_step<torch::optim::AdamParamState, torch::optim::AdamOptions>(
      *this, state_, closure, [](Lists& l, const torch::optim::AdamOptions& o) {
        at::_fused_adam_(l.params, l.grads, l.exp_avgs, l.exp_avg_sqs, {}, l.steps, o.lr(), std::get<0>(o.betas()),
                         std::get<1>(o.betas()), o.weight_decay(), o.eps(), /*amsgrad=*/false, /*maximize=*/false);
      });
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  return fused_step<torch::optim::AdamWParamState, torch::optim::AdamWOptions>(
      *this, state_, closure, [](Lists& l, const torch::optim::AdamWOptions& o) {
        at::_fused_adamw_(l.params, l.grads, l.exp_avgs, l.exp_avg_sqs, {}, l.steps, o.lr(), std::get<0>(o.betas()),
                          std::get<1>(o.betas()), o.weight_decay(), o.eps(), /*amsgrad=*/false, /*maximize=*/false);
      });
}

}  // namespace ssr::train
