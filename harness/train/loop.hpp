// The one training loop: every task's steps run in run_training().
#pragma once
#include "harness/config/config.hpp"
#include "harness/store/store.hpp"
#include "harness/train/task.hpp"
#include "harness/train/trainer.hpp"

namespace ssr::train {

// Trains `task` for train.steps from its last checkpoint (opts.run) or from step 0, validating
// every train.eval_every steps and checkpointing to run.out_dir, then evaluates eval.splits on
// best.pt (eval.checkpoint=best) or the last weights, under every eval.router_modes too.
// Failures after the run row exists are recorded on it, then rethrown.
Outcome run_training(const config::Config& cfg, store::Store& store, const Options& opts, Task& task);

}  // namespace ssr::train
