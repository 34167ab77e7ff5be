#include "harness/train/run_log.hpp"

#include <fmt/format.h>

#include <atomic>
#include <map>

namespace ssr::train {
namespace {

std::atomic<int> g_signal{0};
void on_signal(int sig) { g_signal = sig; }

}  // namespace

double stale_after(const config::Config& cfg) { return std::max(60.0, 3 * cfg.f("run.heartbeat_s")); }

RunLog::RunLog(store::Store& store, const config::Config& cfg, bool lead)
    : store_(store), cfg_(cfg), lead_(lead), heartbeat_s_(cfg.f("run.heartbeat_s")) {
  g_signal = 0;
  old_int_ = std::signal(SIGINT, on_signal);
  old_term_ = std::signal(SIGTERM, on_signal);
  // A hang-up (the terminal or ssh session closed) stops the run as Ctrl-C does; under nohup it
  // stays ignored.
  old_hup_ = std::signal(SIGHUP, on_signal);
  if (old_hup_ == SIG_IGN) std::signal(SIGHUP, SIG_IGN);
  // Slurm's lead-time signal before a time limit or a preemption (sbatch --signal=B:USR1@SECONDS):
  // checkpoint, stop, and let the task be requeued.
  old_usr1_ = std::signal(SIGUSR1, on_signal);
  start_ = last_flush_ = Clock::now();
}

RunLog::~RunLog() {
  std::signal(SIGINT, old_int_);
  std::signal(SIGTERM, old_term_);
  std::signal(SIGHUP, old_hup_);
  std::signal(SIGUSR1, old_usr1_);
}

int64_t RunLog::open(const store::RunInfo& info, std::optional<int64_t> existing, int64_t resumed_step,
                     dist::Group* group) {
  if (lead_) {
    if (existing) {
      id_ = *existing;
      store_.truncate_after(id_, resumed_step);
      store_.start_run(id_, info, stale_after(cfg_));
    } else {
      id_ = store_.create_run(cfg_.hash(), cfg_.to_json(), cfg_.i("run.seed"), info);
    }
  }
  if (group) id_ = static_cast<int64_t>(group->sum({static_cast<double>(id_)})[0]);
  start_ = last_flush_ = Clock::now();
  return id_;
}

double RunLog::wall() const { return std::chrono::duration<double>(Clock::now() - start_).count(); }

void RunLog::metric(int64_t step, const std::string& split, const std::string& name, double value) {
  metrics_.push_back({step, split, name, value, wall()});
}

void RunLog::router_stats(int64_t step, const std::vector<routers::RouterStats>& layers) {
  for (size_t l = 0; l < layers.size(); ++l) {
    const auto& s = layers[l];
    const std::string p = fmt::format("layer{}/", l);
    if (!s.tokens_per_expert.empty()) loads_.push_back({step, static_cast<int64_t>(l), s.tokens_per_expert});
    metric(step, "train", p + "load_cv", s.load_cv);
    metric(step, "train", p + "max_vio", s.max_vio);
    metric(step, "train", p + "dead_experts", static_cast<double>(s.dead_experts));
    metric(step, "train", p + "drop_rate", s.drop_rate);
    metric(step, "train", p + "unrouted", s.unrouted);
    metric(step, "train", p + "entropy", s.entropy);
    if (s.token_mi) metric(step, "train", p + "token_mi", *s.token_mi);
    metric(step, "train", p + "sinkhorn_calls", static_cast<double>(s.sinkhorn_calls));
    metric(step, "train", p + "sinkhorn_frac", s.sinkhorn_frac);
    metric(step, "train", p + "sinkhorn_iters", s.sinkhorn_iters);
    metric(step, "train", p + "sinkhorn_error", s.sinkhorn_error);
    // Only where Sinkhorn ran, so routers without it store no extra rows.
    if (s.sinkhorn_calls > 0) {
      metric(step, "train", p + "sinkhorn_unconverged", static_cast<double>(s.sinkhorn_unconverged));
      metric(step, "train", p + "sinkhorn_fallbacks", static_cast<double>(s.sinkhorn_fallbacks));
    }
  }
}

void RunLog::timing(int64_t step, const std::string& phase, double seconds) {
  timings_.push_back({step, phase, seconds});
}

void RunLog::result(const std::string& split, const std::string& name, double value) {
  if (lead_) store_.set_result(id_, split, name, value);
}

void RunLog::flush(int64_t step) {
  if (lead_) {
    // The lease first: a process that lost its run writes none of its rows.
    if (!store_.heartbeat(id_, step))
      throw std::runtime_error(fmt::format(
          "run {}: another process took this run over (it was requeued as dead); this one stops, writing nothing more",
          id_));
    store_.add_metrics(id_, metrics_);
    store_.add_timings(id_, timings_);
    store_.add_expert_loads(id_, loads_);
  }
  metrics_.clear();
  timings_.clear();
  loads_.clear();
  last_flush_ = Clock::now();
}

void RunLog::flush_if_due(int64_t step) {
  if (std::chrono::duration<double>(Clock::now() - last_flush_).count() > heartbeat_s_) flush(step);
}

int RunLog::interrupted() const { return g_signal; }

void RunLog::poll(int64_t step) {
  flush_if_due(step);
  if (const int sig = g_signal) throw Interrupted(sig);
}

void RunLog::finish(const std::string& status, const std::string& error) {
  if (!lead_) return;
  if (status == "finished") routing_results();
  store_.finish_held_run(id_, status, error);
}

// From the stored rows, so a resumed run counts what it logged before its interruption too.
void RunLog::routing_results() {
  std::map<std::string, std::map<int64_t, std::pair<int64_t, double>>> last;  // metric -> layer -> (step, value)
  double sinkhorn = 0, unconverged = 0, fallbacks = 0;
  bool any = false;
  for (const auto& m : store_.metrics(id_)) {
    if (m.split != "train" || m.name.rfind("layer", 0) != 0) continue;
    const auto slash = m.name.find('/');
    if (slash == std::string::npos) continue;
    const std::string what = m.name.substr(slash + 1);
    if (what == "sinkhorn_calls" || what == "sinkhorn_unconverged" || what == "sinkhorn_fallbacks") {
      (what == "sinkhorn_calls" ? sinkhorn : what == "sinkhorn_unconverged" ? unconverged : fallbacks) += m.value;
      any = true;
      continue;
    }
    auto& at = last[what][std::stoll(m.name.substr(5, slash - 5))];
    if (m.step >= at.first) at = {m.step, m.value};
  }
  if (any) result("train", "sinkhorn_forwards", sinkhorn);
  if (sinkhorn > 0) {
    result("train", "sinkhorn_unconverged", unconverged);
    result("train", "sinkhorn_fallbacks", fallbacks);
  }
  for (const char* what : {"load_cv", "max_vio", "dead_experts", "entropy", "drop_rate", "unrouted", "token_mi"}) {
    const auto it = last.find(what);
    if (it == last.end() || it->second.empty()) continue;
    double sum = 0;
    for (const auto& [layer, sv] : it->second) sum += sv.second;
    result("train", what, sum / static_cast<double>(it->second.size()));
  }
}

}  // namespace ssr::train
