// One optimizer update, as `ssr train` runs it and `ssr bench step` times it: the same function,
// so a benchmark measures the loop's own host syncs, statistics and copies, not a copy of them.
#pragma once
#include <torch/torch.h>

#include "harness/config/config.hpp"
#include "harness/train/task.hpp"

namespace ssr::train {

struct StepOutcome {
  StepResult task;            // the task's forward and backward (loss sums, units, its seconds)
  double loss = 0, aux = 0;   // means over micro-batches (and ranks)
  double lr = 0;              // of this update
  bool updated = false;       // false: no units, or a loss that is not finite (no update made)
  double t_sync = 0;          // seconds reducing loss and gradients over ranks
  double t_opt = 0;           // seconds clipping, updating and ending the routers' step
  double router_seconds = 0;  // the routers' share of forward (train.time_router), else 0
  double seconds() const { return task.t_forward + task.t_backward + t_sync + t_opt; }
};

class Step {
 public:
  Step(const config::Config& cfg, Task& task, torch::optim::Optimizer& optimizer);
  // Update `step` (1-based). At a logging step the MoE layers also collect routing statistics.
  StepOutcome run(int64_t step, bool log_step);

 private:
  const config::Config& cfg_;
  Task& task_;
  torch::optim::Optimizer& optimizer_;
  std::vector<models::MoE> layers_;
  double clip_;
  bool bf16_, time_router_;
};

}  // namespace ssr::train
