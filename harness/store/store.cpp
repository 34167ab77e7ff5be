// The store's writes: runs and their rows, bench sessions, sweeps and their jobs.
#include "harness/store/store.hpp"

#include <sqlite3.h>
#include <torch/version.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <fmt/format.h>
#include <fstream>

#include "harness/store/sqlite.hpp"

#ifdef SSR_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace ssr::store {

double now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

}  // namespace

std::string lock_holders(const std::filesystem::path& path) {
  std::error_code ec;
  const auto target = std::filesystem::canonical(path, ec);
  if (ec) return "";
  std::string out;
  const std::string self = std::to_string(::getpid());
  for (const auto& proc : std::filesystem::directory_iterator("/proc", ec)) {
    const std::string pid = proc.path().filename().string();
    if (pid.find_first_not_of("0123456789") != std::string::npos || pid == self) continue;
    std::error_code fd_ec;
    for (const auto& fd : std::filesystem::directory_iterator(proc.path() / "fd", fd_ec)) {
      std::error_code link_ec;
      if (std::filesystem::read_symlink(fd.path(), link_ec) != target) continue;
      std::string comm;
      std::getline(std::ifstream(proc.path() / "comm"), comm);
      out += fmt::format("{}pid {} {}", out.empty() ? "" : ", ", pid, comm);
      break;
    }
  }
  return out.empty() ? "" : " (held open by " + out + ")";
}

std::string host_name() {
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  return host;
}

std::optional<double> machine_load() {
  std::ifstream in("/proc/loadavg");
  double load = 0;
  const long cores = sysconf(_SC_NPROCESSORS_ONLN);
  if (!(in >> load) || cores < 1) return std::nullopt;
  return load / static_cast<double>(cores);
}

RunInfo this_machine(const std::string& device) {
  RunInfo info;
  info.git_rev = build_git_rev();
  info.host = host_name();
  info.device = device == "cpu" ? fmt::format("cpu: {} ({} threads)", cpu_model(), torch::get_num_threads()) : device;
#ifdef SSR_WITH_CUDA
  // Reports compare step times only between runs on the same device: name the GPU, not "cuda".
  if (device == "cuda" && torch::cuda::is_available()) {
    const auto* p = at::cuda::getCurrentDeviceProperties();
    info.device = fmt::format("cuda: {} ({:.0f} GiB)", p->name, static_cast<double>(p->totalGlobalMem) / (1 << 30));
  }
#endif
  info.torch_version = TORCH_VERSION;
  info.slurm_job = slurm_task();
  return info;
}

std::string slurm_task() {
  auto var = [](const char* name) {
    const char* v = std::getenv(name);
    return std::string(v ? v : "");
  };
  if (!var("SLURM_ARRAY_JOB_ID").empty() && !var("SLURM_ARRAY_TASK_ID").empty())
    return var("SLURM_ARRAY_JOB_ID") + "_" + var("SLURM_ARRAY_TASK_ID");
  return var("SLURM_JOB_ID");
}

int64_t Store::create_run(const std::string& config_hash, const json& config, int64_t seed, const RunInfo& info,
                          const std::string& status, std::optional<int64_t> sweep_id, std::optional<int64_t> job_num) {
  Transaction tx(db_);
  Stmt s(db_,
         "INSERT INTO runs (sweep_id, job_num, config_hash, config_json, status, seed, git_rev, host, "
         "device, torch_version, world_size, backend, created_at, started_at, heartbeat_at, pid, slurm_job) "
         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  const double t = now();
  const bool running = status == "running";
  s.bind(1, sweep_id)
      .bind(2, job_num)
      .bind(3, config_hash)
      .bind(4, config.dump())
      .bind(5, status)
      .bind(6, seed)
      .bind(7, info.git_rev)
      .bind(8, info.host)
      .bind(9, info.device)
      .bind(10, info.torch_version)
      .bind(11, info.world_size)
      .bind(12, info.backend)
      .bind(13, t);
  if (running) s.bind(14, t).bind(15, t).bind(16, static_cast<int64_t>(::getpid()));
  if (running && !info.slurm_job.empty()) s.bind(17, info.slurm_job);
  s.step();
  int64_t id = sqlite3_last_insert_rowid(db_);
  tx.commit();
  return id;
}

// A zombie has exited: killed with its parent, it waits for init to reap it, which takes a moment
// (or forever, under an init that does not reap).
bool process_gone(int64_t pid) {
  if (::kill(static_cast<pid_t>(pid), 0) != 0) return errno == ESRCH;
  std::ifstream stat(fmt::format("/proc/{}/stat", pid));
  std::string line;
  if (!std::getline(stat, line)) return false;
  const auto paren = line.rfind(')');  // the command name in parentheses may hold spaces
  return paren != std::string::npos && paren + 2 < line.size() && line[paren + 2] == 'Z';
}

namespace {

// queued (or a stale run being taken over) -> running on this machine, inside the caller's transaction.
void mark_running(sqlite3* db, int64_t run, const RunInfo& info) {
  Stmt s(db,
         "UPDATE runs SET status='running', git_rev=?, host=?, device=?, torch_version=?, world_size=?, "
         "backend=?, started_at=?, heartbeat_at=?, ended_at=NULL, error=NULL, pid=?, slurm_job=? WHERE id=?");
  const double t = now();
  s.bind(1, info.git_rev)
      .bind(2, info.host)
      .bind(3, info.device)
      .bind(4, info.torch_version)
      .bind(5, info.world_size)
      .bind(6, info.backend)
      .bind(7, t)
      .bind(8, t)
      .bind(9, static_cast<int64_t>(::getpid()));
  if (!info.slurm_job.empty()) s.bind(10, info.slurm_job);
  s.bind(11, run);
  s.step();
}

}  // namespace

void Store::refuse_if_held(int64_t run, double stale_after) const {
  Stmt q(db_, "SELECT status, host, pid, heartbeat_at FROM runs WHERE id=?");
  q.bind(1, run);
  if (!q.step() || q.text(0) != "running") return;
  const std::string host = q.text(1);
  const auto pid = q.opt_i64(2);
  const double age = now() - q.f64(3);
  bool live = false;
  if (host == host_name() && pid) {
    // The sweep worker that claimed a multi-rank job hands it to the ranks it launched.
    const bool ours = *pid == ::getpid() || *pid == ::getppid();
    live = !ours && !process_gone(*pid);
  } else {
    live = age < stale_after;
  }
  if (live)
    throw StoreError(fmt::format(
        "run {} is being trained now (pid {} on {}, heartbeat {:.0f} s ago): a second process would train it twice; "
        "wait for it to end, or stop it and resume",
        run, pid ? std::to_string(*pid) : "?", host, age));
}

void Store::start_run(int64_t run, const RunInfo& info, double stale_after) {
  Transaction tx(db_);
  refuse_if_held(run, stale_after);
  mark_running(db_, run, info);
  tx.commit();
}

bool Store::heartbeat(int64_t run, int64_t step) {
  Stmt s(db_, "UPDATE runs SET heartbeat_at=?, step=? WHERE id=? AND status='running' AND host=? AND pid=?");
  s.bind(1, now()).bind(2, step).bind(3, run).bind(4, host_name()).bind(5, static_cast<int64_t>(::getpid()));
  s.step();
  return sqlite3_changes(db_) > 0;
}

void Store::finish_run(int64_t run, const std::string& status, const std::string& error) {
  Stmt s(db_, "UPDATE runs SET status=?, ended_at=?, heartbeat_at=?, error=? WHERE id=?");
  const double t = now();
  s.bind(1, status).bind(2, t).bind(3, t).bind(4, error).bind(5, run);
  s.step();
}

bool Store::finish_held_run(int64_t run, const std::string& status, const std::string& error) {
  Stmt s(db_,
         "UPDATE runs SET status=?, ended_at=?, heartbeat_at=?, error=? "
         "WHERE id=? AND status='running' AND host=? AND pid=?");
  const double t = now();
  s.bind(1, status).bind(2, t).bind(3, t).bind(4, error).bind(5, run).bind(6, host_name());
  s.bind(7, static_cast<int64_t>(::getpid()));
  s.step();
  return sqlite3_changes(db_) > 0;
}

void Store::add_metrics(int64_t run, const std::vector<Metric>& rows) {
  // A row logged again (the final evaluation redone after an interruption in it) replaces the
  // earlier one.
  insert_rows(db_, "INSERT OR REPLACE INTO metrics (run_id, step, split, name, value, wall_s) VALUES (?,?,?,?,?,?)",
              rows, [&](Stmt& s, const Metric& m) {
                s.bind(1, run).bind(2, m.step).bind(3, m.split).bind(4, m.name).bind(5, m.value).bind(6, m.wall_s);
              });
}

void Store::add_timings(int64_t run, const std::vector<Timing>& rows) {
  insert_rows(db_, "INSERT OR REPLACE INTO timings (run_id, step, phase, seconds) VALUES (?,?,?,?)", rows,
              [&](Stmt& s, const Timing& t) { s.bind(1, run).bind(2, t.step).bind(3, t.phase).bind(4, t.seconds); });
}

void Store::add_expert_loads(int64_t run, const std::vector<ExpertLoad>& rows) {
  insert_rows(db_, "INSERT OR REPLACE INTO expert_load (run_id, step, layer, tokens) VALUES (?,?,?,?)", rows,
              [&](Stmt& s, const ExpertLoad& l) {
                s.bind(1, run).bind(2, l.step).bind(3, l.layer).bind(4, json(l.tokens).dump());
              });
}

void Store::set_result(int64_t run, const std::string& split, const std::string& name, double value) {
  Stmt s(db_, "INSERT OR REPLACE INTO results (run_id, split, name, value) VALUES (?,?,?,?)");
  s.bind(1, run).bind(2, split).bind(3, name).bind(4, value);
  s.step();
}

int64_t Store::add_bench_session(const std::string& command, const RunInfo& info, int64_t warmup,
                                 const std::vector<BenchCase>& cases) {
  Transaction tx(db_);
  Stmt s(db_,
         "INSERT INTO bench_sessions (command, git_rev, host, device, torch_version, warmup, created_at) "
         "VALUES (?,?,?,?,?,?,?)");
  s.bind(1, command)
      .bind(2, info.git_rev)
      .bind(3, info.host)
      .bind(4, info.device)
      .bind(5, info.torch_version)
      .bind(6, warmup)
      .bind(7, now());
  s.step();
  const int64_t session = sqlite3_last_insert_rowid(db_);
  Stmt c(db_,
         "INSERT INTO bench_cases (session_id, label, config_hash, config_json, tokens_per_step, peak_bytes, "
         "load_per_core) VALUES (?,?,?,?,?,?,?)");
  Stmt t(db_, "INSERT INTO bench_times (case_id, round, seconds) VALUES (?,?,?)");
  for (const auto& bc : cases) {
    c.reset();
    c.bind(1, session).bind(2, bc.label).bind(3, bc.config_hash).bind(4, bc.config.dump()).bind(5, bc.tokens_per_step);
    c.bind(6, bc.peak_bytes).bind(7, bc.load_per_core);
    c.step();
    const int64_t id = sqlite3_last_insert_rowid(db_);
    for (size_t r = 0; r < bc.seconds.size(); ++r) {
      t.reset();
      t.bind(1, id).bind(2, static_cast<int64_t>(r)).bind(3, bc.seconds[r]);
      t.step();
    }
  }
  tx.commit();
  return session;
}

void Store::truncate_after(int64_t run, int64_t step) {
  Transaction tx(db_);
  for (const char* table : {"metrics", "timings", "expert_load"}) {
    Stmt s(db_, fmt::format("DELETE FROM {} WHERE run_id=? AND step>?", table));
    s.bind(1, run).bind(2, step);
    s.step();
  }
  Stmt r(db_, "DELETE FROM results WHERE run_id=?");
  r.bind(1, run);
  r.step();
  tx.commit();
}

void Store::delete_runs(const std::vector<int64_t>& runs, double stale_after) {
  for (const auto id : runs) refuse_if_held(id, stale_after);
  Transaction tx(db_);
  for (const auto id : runs) {
    for (const char* table : {"metrics", "timings", "results", "expert_load"}) {
      Stmt s(db_, fmt::format("DELETE FROM {} WHERE run_id=?", table));
      s.bind(1, id);
      s.step();
    }
    Stmt r(db_, "DELETE FROM runs WHERE id=?");
    r.bind(1, id);
    r.step();
  }
  tx.commit();
}

std::pair<int64_t, bool> Store::plan_sweep(const std::string& name, const json& spec, const std::string& plan_hash,
                                           const std::vector<PlannedJob>& jobs) {
  Transaction tx(db_);
  {
    Stmt f(db_,
           "SELECT id FROM sweeps WHERE name=? AND json_extract(spec_json, '$.plan_hash')=? ORDER BY id DESC LIMIT 1");
    f.bind(1, name).bind(2, plan_hash);
    if (f.step()) {
      // The same plan again: it continues, and a job whose run was deleted (ssr rm) runs again.
      const int64_t id = f.i64(0);
      insert_missing(id, jobs);
      tx.commit();
      return {id, false};
    }
  }
  Stmt s(db_, "INSERT INTO sweeps (name, spec_json, created_at) VALUES (?,?,?)");
  s.bind(1, name).bind(2, spec.dump()).bind(3, now());
  s.step();
  const int64_t id = sqlite3_last_insert_rowid(db_);
  insert_missing(id, jobs);
  tx.commit();
  return {id, true};
}

int64_t Store::insert_missing(int64_t sweep, const std::vector<PlannedJob>& jobs) {
  Stmt done(db_, "SELECT 1 FROM runs WHERE config_hash=? AND status IN ('finished','nan') LIMIT 1");
  Stmt own(db_, "SELECT 1 FROM runs WHERE sweep_id=? AND job_num=? LIMIT 1");
  Stmt ins(db_,
           "INSERT INTO runs (sweep_id, job_num, config_hash, config_json, status, seed, created_at) "
           "VALUES (?,?,?,?,'queued',?,?)");
  const double t = now();
  int64_t n = 0;
  for (const auto& j : jobs) {
    done.bind(1, j.config_hash);
    own.bind(1, sweep).bind(2, j.num);
    const bool skip = done.step() || own.step();
    done.reset();
    own.reset();
    if (skip) continue;
    ins.bind(1, sweep).bind(2, j.num).bind(3, j.config_hash).bind(4, j.config.dump()).bind(5, j.seed).bind(6, t);
    ins.step();
    ins.reset();
    ++n;
  }
  return n;
}

int64_t Store::queue_missing(int64_t sweep, const std::vector<PlannedJob>& jobs) {
  Transaction tx(db_);
  const int64_t n = insert_missing(sweep, jobs);
  tx.commit();
  return n;
}

std::optional<Run> Store::claim_job(int64_t sweep, std::optional<int64_t> job, const RunInfo& info) {
  Transaction tx(db_);
  std::optional<int64_t> id;
  for (;;) {
    Stmt pick(db_,
              job ? "SELECT id, config_hash, status, host, pid, slurm_job FROM runs WHERE sweep_id=? AND job_num=? "
                    "AND status IN ('queued','interrupted','running')"
                  : "SELECT id, config_hash, status, host, pid, slurm_job FROM runs WHERE sweep_id=? AND "
                    "status='queued' ORDER BY job_num LIMIT 1");
    pick.bind(1, sweep);
    if (job) pick.bind(2, *job);
    if (!pick.step()) break;
    if (pick.text(2) == "running") {
      const auto pid = pick.opt_i64(4);
      const bool own_task = !info.slurm_job.empty() && pick.text(5) == info.slurm_job;
      const bool gone_here = pick.text(3) == info.host && pid && *pid != ::getpid() && process_gone(*pid);
      if (!own_task && !gone_here) break;  // a live holder, or one only --resume can judge dead
    }
    const int64_t candidate = pick.i64(0);
    Stmt done(db_, "SELECT 1 FROM runs WHERE config_hash=? AND status IN ('finished','nan') AND id!=?");
    done.bind(1, pick.text(1)).bind(2, candidate);
    if (!done.step()) {
      id = candidate;
      break;
    }
    Stmt drop(db_, "DELETE FROM runs WHERE id=?");
    drop.bind(1, candidate);
    drop.step();
  }
  if (!id) {
    tx.commit();
    return std::nullopt;
  }
  mark_running(db_, *id, info);
  tx.commit();
  return run(*id);
}

int64_t Store::requeue(int64_t sweep, double stale_after, bool failed, const std::set<int64_t>& known_dead,
                       const std::set<int64_t>& alive) {
  Transaction tx(db_);
  // A running job whose process is provably gone (its pid no longer exists on this host, or Slurm
  // no longer runs its task) is dead whatever its heartbeat's age.
  int64_t n = 0;
  {
    std::vector<int64_t> dead;
    {
      Stmt q(db_, "SELECT id FROM runs WHERE sweep_id=? AND status='running'");
      q.bind(1, sweep);
      while (q.step())
        if (known_dead.count(q.i64(0))) dead.push_back(q.i64(0));
    }
    Stmt q(db_, "SELECT id, pid FROM runs WHERE sweep_id=? AND status='running' AND host=? AND pid IS NOT NULL");
    q.bind(1, sweep).bind(2, host_name());
    while (q.step())
      if (process_gone(q.i64(1)) && !known_dead.count(q.i64(0))) dead.push_back(q.i64(0));
    for (int64_t id : dead) {
      Stmt u(db_, "UPDATE runs SET status='queued' WHERE id=?");
      u.bind(1, id);
      u.step();
      ++n;
    }
  }
  std::vector<int64_t> stale;
  {
    Stmt q(db_, "SELECT id FROM runs WHERE sweep_id=? AND status='running' AND heartbeat_at < ?");
    q.bind(1, sweep).bind(2, now() - stale_after);
    while (q.step())
      if (!alive.count(q.i64(0))) stale.push_back(q.i64(0));
  }
  for (int64_t id : stale) {
    Stmt u(db_, "UPDATE runs SET status='queued' WHERE id=?");
    u.bind(1, id);
    u.step();
    ++n;
  }
  Stmt s(db_, "UPDATE runs SET status='queued' WHERE sweep_id=? AND (status='interrupted' OR (status='failed' AND ?))");
  s.bind(1, sweep).bind(2, int64_t{failed ? 1 : 0});
  s.step();
  n += sqlite3_changes(db_);
  tx.commit();
  return n;
}

Launch Store::add_launch(int64_t sweep, const std::string& launcher, const json& options,
                         const std::vector<int64_t>& jobs) {
  Transaction tx(db_);
  Stmt s(db_,
         "INSERT INTO sweep_launches (sweep_id, launcher, options_json, jobs_json, created_at) VALUES (?,?,?,?,?)");
  s.bind(1, sweep).bind(2, launcher).bind(3, options.dump()).bind(4, json(jobs).dump()).bind(5, now());
  s.step();
  const int64_t id = sqlite3_last_insert_rowid(db_);
  tx.commit();
  for (auto& l : launches(sweep))
    if (l.id == id) return l;
  throw StoreError(fmt::format("{}: launch {} of sweep {} vanished", path_, id, sweep));
}

void Store::set_launch_slurm_job(int64_t launch, const std::string& array_job) {
  Transaction tx(db_);
  Stmt s(db_, "UPDATE sweep_launches SET slurm_job=? WHERE id=?");
  s.bind(1, array_job).bind(2, launch);
  s.step();
  Stmt q(db_, "SELECT sweep_id, jobs_json FROM sweep_launches WHERE id=?");
  q.bind(1, launch);
  if (q.step()) {
    const int64_t sweep = q.i64(0);
    for (const auto num : json::parse(q.text(1)).get<std::vector<int64_t>>()) {
      Stmt u(db_, "UPDATE runs SET slurm_job=? WHERE sweep_id=? AND job_num=? AND status='queued'");
      u.bind(1, fmt::format("{}_{}", array_job, num)).bind(2, sweep).bind(3, num);
      u.step();
    }
  }
  tx.commit();
}

}  // namespace ssr::store
