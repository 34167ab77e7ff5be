// What one case's steps do, for `ssr bench step --trace FILE`: a Kineto (Chrome trace) profile,
// the time per phase from the ssr:: scopes the step opens (lm_task, switch_lm, moe, train/step),
// and a counter of the host syncs a step makes on CUDA.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <string>
#include <vector>

namespace ssr::bench {

struct Phase {
  std::string name;  // data, forward, attention, router, experts, routing_stats, output_layer, backward, optimizer
  double ms = 0;     // per step: wall time of the scope on CPU; on CUDA the time of the kernels it launched
};

struct Profile {
  std::vector<Phase> phases;  // in the order above; phases a step did not enter are absent
  double step_ms = 0;         // wall time per step, profiler on
};

// Runs `steps` calls of `step` under the profiler and writes the trace to `path` (JSON; .gz not
// compressed here). `sync` waits for the device.
Profile profile_steps(const std::function<void()>& step, int steps, const torch::Device& device,
                      const std::function<void()>& sync, const std::string& path);

// Counts the host syncs CUDA reports (cudaStreamSynchronize, synchronising copies, .item()) while
// alive; a no-op on CPU.
class SyncCounter {
 public:
  explicit SyncCounter(const torch::Device& device);
  ~SyncCounter();
  int64_t count() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace ssr::bench
