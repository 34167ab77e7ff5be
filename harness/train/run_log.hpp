// The stored side of one training run, shared by the LM and vision trainers: the run row (a new
// one, or an existing one started again), metric and timing rows buffered and flushed with a
// heartbeat, SIGINT/SIGTERM caught so that the loop stops at a step boundary, and the final
// status. On ranks other than 0 every write is a no-op, so the trainers keep a single code path.
#pragma once
#include <chrono>
#include <csignal>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/config/config.hpp"
#include "harness/dist/dist.hpp"
#include "harness/store/store.hpp"
#include "routers/router.hpp"

namespace ssr::train {

// Thrown by RunLog::poll when SIGINT or SIGTERM asked the run to stop mid-evaluation.
struct Interrupted : std::runtime_error {
  explicit Interrupted(int sig) : std::runtime_error("interrupted by signal " + std::to_string(sig)), signal(sig) {}
  int signal;
};

// Seconds without a heartbeat after which a run held on another host counts as dead (a run held
// on this host is dead exactly when its pid is gone).
double stale_after(const config::Config& cfg);

class RunLog {
 public:
  // Installs the SIGINT/SIGTERM handlers; the destructor restores the previous ones.
  RunLog(store::Store& store, const config::Config& cfg, bool lead);
  ~RunLog();
  RunLog(const RunLog&) = delete;
  RunLog& operator=(const RunLog&) = delete;

  // Attaches the log to its row: `existing` (a queued or resumed row, whose metrics after
  // `resumed_step` and results are dropped) or a new row for cfg. With a group, every rank
  // learns rank 0's id. Returns the id.
  int64_t open(const store::RunInfo& info, std::optional<int64_t> existing, int64_t resumed_step,
               dist::Group* group = nullptr);
  int64_t id() const { return id_; }
  double wall() const;  // seconds since open()

  void metric(int64_t step, const std::string& split, const std::string& name, double value);
  // The routing statistics of every MoE layer as layerL/* train metrics.
  void router_stats(int64_t step, const std::vector<routers::RouterStats>& layers);
  void timing(int64_t step, const std::string& phase, double seconds);
  void result(const std::string& split, const std::string& name, double value);
  // Writes the buffered rows and the heartbeat; flush_if_due only once run.heartbeat_s passed
  // since the last flush.
  void flush(int64_t step);
  void flush_if_due(int64_t step);

  int interrupted() const;  // the signal that asked the run to stop, or 0
  // Inside long evaluations: the heartbeat when due, and Interrupted when a signal came.
  void poll(int64_t step);
  // Ends the run with `status`. A finished run first gets its routing results (split train): the
  // mean over layers of the last logged load_cv, max_vio, dead_experts, entropy, drop_rate, unrouted and
  // token_mi (LM only), and sinkhorn_forwards, the Sinkhorn calls of every logging window summed
  // over layers, with sinkhorn_unconverged and sinkhorn_fallbacks (of those, the solves that
  // stopped at router.max_iter above router.delta, and the SNS solves that fell back to log sweeps).
  void finish(const std::string& status, const std::string& error = "");

 private:
  using Clock = std::chrono::steady_clock;
  store::Store& store_;
  const config::Config& cfg_;
  const bool lead_;
  const double heartbeat_s_;
  int64_t id_ = 0;
  Clock::time_point start_, last_flush_;
  std::vector<store::Metric> metrics_;
  std::vector<store::Timing> timings_;
  std::vector<store::ExpertLoad> loads_;  // per layer and logged step
  void routing_results();
  void (*old_int_)(int);
  void (*old_term_)(int);
  void (*old_hup_)(int);
  void (*old_usr1_)(int);
};

}  // namespace ssr::train
