// The store's reads: runs, their metrics, results and timings, bench cases, sweeps and their launches.
#include <fmt/format.h>
#include <sqlite3.h>

#include "harness/store/sqlite.hpp"
#include "harness/store/store.hpp"

namespace ssr::store {
namespace {

// A store opened read-only keeps its schema version: before version 10 it has no slurm_job.
std::string run_columns(int version) {
  return fmt::format(
      "id, sweep_id, job_num, config_hash, config_json, status, seed, git_rev, host, device, torch_version, "
      "world_size, backend, created_at, started_at, ended_at, heartbeat_at, step, error, pid, {}",
      version >= 10 ? "slurm_job" : "NULL");
}

Run read_run(const Stmt& s) {
  Run r;
  r.id = s.i64(0);
  r.sweep_id = s.opt_i64(1);
  r.job_num = s.opt_i64(2);
  r.config_hash = s.text(3);
  // One damaged row (edited by hand, a bad copy) must not stop every listing: keep it, marked.
  r.config = json::parse(s.text(4), nullptr, /*allow_exceptions=*/false);
  if (r.config.is_discarded())
    r.damage = "config_json is not JSON";
  else if (!r.config.is_object())
    r.damage = "config_json is not a JSON object";
  if (!r.damage.empty()) r.config = json::object();
  r.status = s.text(5);
  r.seed = s.i64(6);
  r.info = RunInfo{s.text(7), s.text(8), s.text(9), s.text(10), s.i64(11), s.text(12)};
  r.created_at = s.f64(13);
  r.started_at = s.f64(14);
  r.ended_at = s.f64(15);
  r.heartbeat_at = s.f64(16);
  r.step = s.i64(17);
  r.error = s.text(18);
  r.pid = s.opt_i64(19);
  r.info.slurm_job = s.text(20);
  return r;
}

}  // namespace

bool Run::stale(double stale_after) const {
  if (status != "running") return false;
  return now() - heartbeat_at > stale_after || (pid && info.host == host_name() && process_gone(*pid));
}

std::optional<Run> Store::run(int64_t id) const {
  Stmt s(db_, fmt::format("SELECT {} FROM runs WHERE id=?", run_columns(schema_version())));
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return read_run(s);
}

std::vector<Run> Store::runs() const {
  Stmt s(db_, fmt::format("SELECT {} FROM runs ORDER BY id", run_columns(schema_version())));
  std::vector<Run> out;
  while (s.step()) out.push_back(read_run(s));
  return out;
}

std::vector<Metric> Store::metrics(int64_t run) const {
  return run_rows<Metric>(db_, "SELECT step, split, name, value, wall_s FROM metrics WHERE run_id=? ORDER BY rowid",
                          run, [](const Stmt& s) {
                            return Metric{s.i64(0), s.text(1), s.text(2), s.f64(3), s.f64(4)};
                          });
}

std::vector<Result> Store::results(int64_t run) const {
  return run_rows<Result>(db_, "SELECT split, name, value FROM results WHERE run_id=? ORDER BY split, name", run,
                          [](const Stmt& s) {
                            return Result{s.text(0), s.text(1), s.f64(2)};
                          });
}

std::vector<Timing> Store::timings(int64_t run) const {
  return run_rows<Timing>(db_, "SELECT step, phase, seconds FROM timings WHERE run_id=? ORDER BY rowid", run,
                          [](const Stmt& s) {
                            return Timing{s.i64(0), s.text(1), s.f64(2)};
                          });
}

std::vector<BenchCase> Store::bench_cases(const std::string& config_hash) const {
  Stmt s(
      db_,
      "SELECT c.id, c.session_id, c.label, c.config_hash, c.config_json, c.tokens_per_step, s.git_rev, s.host, "
      "s.device, s.torch_version, s.created_at, c.peak_bytes, c.load_per_core FROM bench_cases c JOIN bench_sessions "
      "s ON s.id = "
      "c.session_id "
      "WHERE c.config_hash=? ORDER BY c.session_id DESC, c.id DESC");
  s.bind(1, config_hash);
  std::vector<BenchCase> out;
  while (s.step()) {
    BenchCase bc;
    bc.id = s.i64(0);
    bc.session = s.i64(1);
    bc.label = s.text(2);
    bc.config_hash = s.text(3);
    bc.config = json::parse(s.text(4));
    bc.tokens_per_step = s.i64(5);
    bc.info = RunInfo{s.text(6), s.text(7), s.text(8), s.text(9), 1, ""};
    bc.created_at = s.f64(10);
    bc.peak_bytes = s.opt_i64(11);
    bc.load_per_core = s.opt_f64(12);
    out.push_back(std::move(bc));
  }
  Stmt t(db_, "SELECT seconds FROM bench_times WHERE case_id=? ORDER BY round");
  for (auto& bc : out) {
    t.reset();
    t.bind(1, bc.id);
    while (t.step()) bc.seconds.push_back(t.f64(0));
  }
  return out;
}

std::vector<ExpertLoad> Store::expert_loads(int64_t run) const {
  return run_rows<ExpertLoad>(
      db_, "SELECT step, layer, tokens FROM expert_load WHERE run_id=? ORDER BY layer, step", run, [](const Stmt& s) {
        return ExpertLoad{s.i64(0), s.i64(1), json::parse(s.text(2)).get<std::vector<int64_t>>()};
      });
}

std::optional<Sweep> Store::sweep(int64_t id) const {
  Stmt s(db_, "SELECT id, name, spec_json, created_at FROM sweeps WHERE id=?");
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return Sweep{s.i64(0), s.text(1), json::parse(s.text(2)), s.f64(3)};
}

std::vector<Sweep> Store::sweeps() const {
  Stmt s(db_, "SELECT id, name, spec_json, created_at FROM sweeps ORDER BY id");
  std::vector<Sweep> out;
  while (s.step()) out.push_back({s.i64(0), s.text(1), json::parse(s.text(2)), s.f64(3)});
  return out;
}

std::set<int64_t> Store::sweep_members(int64_t id) const {
  std::set<int64_t> out;
  const auto sw = sweep(id);
  if (!sw) return out;
  std::set<int64_t> own_jobs;
  for (const auto& r : sweep_runs(id)) {
    out.insert(r.id);
    if (r.job_num) own_jobs.insert(*r.job_num);
  }
  for (const auto& j : sw->spec.value("jobs", json::array()))
    if (!own_jobs.contains(j.value("num", int64_t{-1})))
      if (auto done = done_run(j.value("hash", std::string()))) out.insert(*done);
  return out;
}

std::vector<Run> Store::sweep_runs(int64_t sweep) const {
  Stmt s(db_, fmt::format("SELECT {} FROM runs WHERE sweep_id=? ORDER BY job_num", run_columns(schema_version())));
  s.bind(1, sweep);
  std::vector<Run> out;
  while (s.step()) out.push_back(read_run(s));
  return out;
}

std::optional<int64_t> Store::done_run(const std::string& config_hash) const {
  Stmt s(db_, "SELECT id FROM runs WHERE config_hash=? AND status IN ('finished','nan') ORDER BY id DESC LIMIT 1");
  s.bind(1, config_hash);
  if (!s.step()) return std::nullopt;
  return s.i64(0);
}

std::vector<Launch> Store::launches(int64_t sweep) const {
  if (schema_version() < 10) return {};  // an older store opened read-only: no launch was recorded
  Stmt s(db_,
         "SELECT id, sweep_id, launcher, options_json, jobs_json, slurm_job, created_at FROM sweep_launches "
         "WHERE sweep_id=? ORDER BY id");
  s.bind(1, sweep);
  std::vector<Launch> out;
  while (s.step()) {
    Launch l;
    l.id = s.i64(0);
    l.sweep_id = s.i64(1);
    l.launcher = s.text(2);
    l.options = json::parse(s.text(3), nullptr, false);
    if (!l.options.is_array()) l.options = json::array();
    const auto jobs = json::parse(s.text(4), nullptr, false);
    if (jobs.is_array())
      for (const auto& j : jobs)
        if (j.is_number_integer()) l.jobs.push_back(j.get<int64_t>());
    l.slurm_job = s.text(5);
    l.created_at = s.f64(6);
    l.attempt = static_cast<int64_t>(out.size()) + 1;
    out.push_back(std::move(l));
  }
  return out;
}

}  // namespace ssr::store
