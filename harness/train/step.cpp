#include "harness/train/step.hpp"

#include <ATen/record_function.h>

#include <cmath>

#include "harness/train/schedule.hpp"

namespace ssr::train {

Step::Step(const config::Config& cfg, Task& task, torch::optim::Optimizer& optimizer)
    : cfg_(cfg),
      task_(task),
      optimizer_(optimizer),
      layers_(task.moe_layers()),
      clip_(cfg.f("train.clip")),
      bf16_(cfg.s("train.precision") == "bf16"),
      time_router_(cfg.b("train.time_router")) {
  for (auto& layer : layers_) layer->time_router(time_router_);
}

StepOutcome Step::run(int64_t step, bool log_step) {
  StepOutcome o;
  dist::Group* group = task_.group();
  // A logging step's statistics are its own forward's: a partial validation since the last step
  // (which ran with collection still on) would otherwise count into this window, and a resumed
  // run, which does not repeat that validation, would log other loads.
  for (auto& layer : layers_) {
    layer->collect_stats(log_step);
    if (log_step) layer->drop_stats();
  }
  // The reference steps its LambdaLR before the optimizer: update s uses lr * min(1, s / warmup).
  o.lr = learning_rate(cfg_, step);
  set_learning_rate(optimizer_, o.lr);

  optimizer_.zero_grad();
  for (auto& layer : layers_) layer->take_router_seconds();  // drop evaluations' router time
  o.task = task_.forward_backward(step, bf16_);
  if (o.task.units == 0) return o;
  auto t0 = Clock::now();
  double loss_sum = o.task.loss_sum, aux_sum = o.task.aux_sum;
  if (group) {
    // The global batch's loss (every rank then takes the same nan decision) and gradient.
    const auto sums = group->sum({loss_sum, aux_sum});
    loss_sum = sums[0] / group->world();
    aux_sum = sums[1] / group->world();
  }
  o.loss = loss_sum / static_cast<double>(o.task.parts);
  o.aux = aux_sum / static_cast<double>(o.task.parts);
  if (!std::isfinite(o.loss) || !std::isfinite(o.aux)) return o;
  if (group) {
    RECORD_USER_SCOPE("ssr::allreduce");  // the phases of `ssr bench step --trace`
    group->average_gradients(task_.model().parameters());
  }
  o.t_sync = seconds_since(t0);
  t0 = Clock::now();
  RECORD_USER_SCOPE("ssr::optimizer");
  if (clip_ > 0) torch::nn::utils::clip_grad_norm_(task_.model().parameters(), clip_);
  optimizer_.step();
  const routers::RouterImpl::SumOverRanks sum_over_ranks = [group](const torch::Tensor& t) {
    return group ? group->sum_tensor(t) : t;
  };
  for (auto& layer : layers_) layer->router->end_step(sum_over_ranks);  // stateful routers
  if (task_.device().is_cuda()) torch::cuda::synchronize();
  o.t_opt = seconds_since(t0);
  if (time_router_)  // part of forward
    for (auto& layer : layers_) o.router_seconds += layer->take_router_seconds();
  o.updated = true;
  return o;
}

}  // namespace ssr::train
