#include "harness/bench/trace.hpp"

#include <c10/util/Exception.h>
#include <fmt/format.h>
#include <torch/csrc/autograd/profiler_kineto.h>

#include <stdlib.h>

#include <algorithm>
#include <chrono>
#include <map>

#ifdef SSR_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

namespace ssr::bench {
namespace {

const std::vector<std::string> kPhases = {"data",          "forward",      "attention", "router",    "experts",
                                          "routing_stats", "output_layer", "backward",  "allreduce", "optimizer"};

}  // namespace

struct SyncCounter::State : c10::WarningHandler {
  int64_t syncs = 0;
  c10::WarningHandler* previous = nullptr;
  bool on = false;
  void process(const c10::Warning& w) override {
    if (w.msg().find("synchroniz") != std::string::npos)
      ++syncs;
    else if (previous)
      previous->process(w);
  }
};

SyncCounter::SyncCounter(const torch::Device& device) : state_(std::make_unique<State>()) {
#ifdef SSR_WITH_CUDA
  if (device.is_cuda()) {
    state_->previous = c10::WarningUtils::get_warning_handler();
    c10::WarningUtils::set_warning_handler(state_.get());
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_WARN);
    state_->on = true;
  }
#else
  (void)device;
#endif
}

SyncCounter::~SyncCounter() {
#ifdef SSR_WITH_CUDA
  if (state_->on) {
    c10::cuda::warning_state().set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
    c10::WarningUtils::set_warning_handler(state_->previous);
  }
#endif
}

int64_t SyncCounter::count() const { return state_->on ? state_->syncs : -1; }

Profile profile_steps(const std::function<void()>& step, int steps, const torch::Device& device,
                      const std::function<void()>& sync, const std::string& path) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  std::set<ActivityType> activities{ActivityType::CPU};
  if (device.is_cuda()) activities.insert(ActivityType::CUDA);
  // Kineto logs an ERROR line for every missing GPU on a CPU-only machine: keep its errors for
  // real failures unless the user chose a level.
  if (!device.is_cuda()) ::setenv("KINETO_LOG_LEVEL", "5", /*overwrite=*/0);
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  prof::prepareProfiler(config, activities);
  sync();
  Profile p;
  prof::enableProfiler(config, activities);
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < steps; ++i) step();
  sync();
  p.step_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / steps;
  auto result = prof::disableProfiler();
  result->save(path);

  // The scopes' time ranges (any thread: CUDA's backward runs on the autograd engine's thread).
  struct Range {
    std::string phase;
    uint64_t start, end;
  };
  std::vector<Range> ranges;
  std::map<uint64_t, uint64_t> launched_at;  // correlation id -> start of the CPU op that launched it
  for (const auto& e : result->events()) {
    if (e.deviceType() != c10::DeviceType::CPU) continue;
    const std::string name = e.name();
    if (name.rfind("ssr::", 0) == 0) ranges.push_back({name.substr(5), e.startNs(), e.endNs()});
    if (e.correlationId() != 0) launched_at.emplace(e.correlationId(), e.startNs());
  }
  std::map<std::string, double> ns;
  if (device.is_cuda()) {
    // A kernel counts towards every scope its launch lies in (forward holds attention, ...).
    for (const auto& e : result->events()) {
      if (e.deviceType() != c10::DeviceType::CUDA) continue;
      const auto at = launched_at.find(e.linkedCorrelationId());
      if (at == launched_at.end()) continue;
      for (const auto& r : ranges)
        if (at->second >= r.start && at->second < r.end) ns[r.phase] += static_cast<double>(e.durationNs());
    }
  } else {
    for (const auto& r : ranges) ns[r.phase] += static_cast<double>(r.end - r.start);
  }
  for (const auto& name : kPhases)
    if (ns.count(name)) p.phases.push_back({name, ns[name] / 1e6 / steps});
  return p;
}

}  // namespace ssr::bench
