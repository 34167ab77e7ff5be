// What the training loop (loop.hpp) asks of a task: batches and their losses, partial validation,
// the final evaluation of a split, and the task's own share of a checkpoint (its generators, data
// position, carried state). The loop owns everything else: optimizer, schedule, step, clipping,
// gradient averaging, NaN handling, timing, metrics, checkpoints, resume and the run's status.
// Adding a task means implementing this interface (see lm_task.cpp, vision_task.cpp).
#pragma once
#include <torch/torch.h>

#include <chrono>
#include <string>
#include <utility>
#include <vector>

#include "harness/dist/dist.hpp"
#include "harness/store/store.hpp"
#include "harness/train/progress.hpp"
#include "harness/train/run_log.hpp"
#include "models/moe.hpp"

namespace ssr::train {

using Clock = std::chrono::steady_clock;
// Seconds since t0, for the step timings (StepResult::t_*).
inline double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// One step's forward and backward on this rank.
struct StepResult {
  double loss_sum = 0;  // the data term (mean NLL or cross-entropy) summed over the micro-batches
  double aux_sum = 0;   // the routers' auxiliary loss summed over the micro-batches
  int64_t parts = 1;    // micro-batches
  int64_t units = 0;    // tokens or images of the global batch; 0: nothing to learn from, no update
  double t_data = 0, t_forward = 0, t_backward = 0;  // seconds
};

// A partial validation during training.
struct Validation {
  double score = 0;                                     // lower is better: best.pt keeps the lowest
  std::vector<std::pair<std::string, double>> metrics;  // stored as valid/NAME at the step
  std::string summary;                                  // for the progress line, e.g. "partial valid ppl 12.345"
};

class Task {
 public:
  virtual ~Task() = default;

  virtual torch::nn::Module& model() = 0;
  // Every MoE layer in order: the loop's routing statistics, router timing and eval modes.
  virtual std::vector<models::MoE> moe_layers() = 0;
  // Parameters AdamW leaves undecayed (train.optimizer=adamw).
  virtual std::vector<torch::Tensor> no_decay_parameters() = 0;
  virtual torch::Device device() const = 0;
  virtual store::RunInfo run_info() const = 0;
  // The data-parallel group, when there is more than one rank; the loop reduces losses and
  // gradients over it. Only rank 0 writes the store and checkpoints.
  virtual dist::Group* group() { return nullptr; }
  virtual int rank() const { return 0; }

  virtual std::string unit() const = 0;         // what a step consumes, for the progress line: tok, img
  virtual std::string rate_metric() const = 0;  // its train metric: tokens_per_s, images_per_s
  virtual std::string describe() const = 0;     // the first progress line, e.g. "100 steps of 8 x 64 tokens"

  // Fetches step `step`'s batch and runs forward and backward (gradients zeroed by the loop),
  // the forwards under bf16 autocast when `bf16`.
  virtual StepResult forward_backward(int64_t step, bool bf16) = 0;
  // Train metrics and timings of a task's own, at logging steps (metrics) and every step (timings).
  virtual void log_metrics(int64_t /*step*/, RunLog& /*log*/) {}
  virtual void log_timings(int64_t /*step*/, RunLog& /*log*/) {}
  // Partial validation at `step`; called on every rank.
  virtual Validation validate(int64_t step, bool bf16) = 0;

  // The task's part of a checkpoint at `step`, called on every rank (gathers happen here); the
  // archive of rank 0 is the one written. load() reads it back on every rank.
  virtual void save(torch::serialize::OutputArchive& archive, int64_t step) = 0;
  virtual void load(torch::serialize::InputArchive& archive, int64_t step) = 0;

  // Once, before the final evaluation's first split.
  virtual void begin_final_evaluation() {}
  // Scores `split` with the current weights and stores its results under `stored_as`. Returns a
  // value that is not finite when the model's outputs were not (the run ends as nan).
  virtual double evaluate(const std::string& split, const std::string& stored_as, bool bf16, RunLog& log,
                          Progress& progress) = 0;
  // Evaluations after those of eval.splits and before the router modes (the LM's eval.reset_cache).
  virtual void extra_evaluations(bool /*bf16*/, RunLog& /*log*/, Progress& /*progress*/) {}
  // Results of the task's own at the end of a finished run.
  virtual void final_results(RunLog& /*log*/) {}
};

}  // namespace ssr::train
