// The run store: the only code that writes SQL. One SQLite file (default results/runs.db) in WAL
// mode (a rollback journal on a network file system) with a busy timeout, so several processes
// (sweep workers, a report) can use it at once.
#pragma once
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

struct sqlite3;

namespace ssr::store {

using json = nlohmann::json;

// The network file system a statfs f_type names ("nfs", "lustre", ...), or "" for a local one.
std::string network_file_system_name(int64_t magic);
// The network file system holding `dir`, or "" when it is local (or cannot be told).
std::string network_file_system(const std::filesystem::path& dir);

// Wall-clock time as Unix seconds (what the store keeps in *_at columns).
double now();

struct RunInfo {  // facts about where and how a run executes
  std::string git_rev, host, device, torch_version;
  int64_t world_size = 1;
  std::string backend;
  // The Slurm task this process runs in: "ARRAYJOB_TASK" in a job array, else the job id; "" outside Slurm.
  std::string slurm_job;
};
// This process's Slurm task as RunInfo::slurm_job names it, from SLURM_ARRAY_JOB_ID,
// SLURM_ARRAY_TASK_ID and SLURM_JOB_ID; "" outside Slurm.
std::string slurm_task();
// The revision of the sources this binary was built from (`git describe --always --dirty` at
// build time; "unknown" outside a git checkout). Defined in a file the build generates.
const char* build_git_rev();
// This machine's host name (gethostname), as runs record it.
std::string host_name();
// The 1-minute load average over the online cores (/proc/loadavg), nullopt where there is none.
// Above 1, more threads wanted a core than there were: timings taken then are not a machine's speed.
std::optional<double> machine_load();
// Whether process `pid` of this host has exited (a zombie has).
bool process_gone(int64_t pid);
// The facts of this process: the binary's git revision, host name, device, LibTorch version.
RunInfo this_machine(const std::string& device);

struct Run {
  int64_t id = 0;
  std::optional<int64_t> sweep_id, job_num;
  std::string config_hash;
  json config;         // resolved config as stored (nested, with "groups")
  std::string status;  // queued | running | finished | failed | nan | interrupted
  int64_t seed = 0;
  RunInfo info;
  double created_at = 0, started_at = 0, ended_at = 0, heartbeat_at = 0;
  int64_t step = 0;
  std::string error;
  // Why the stored config_json cannot be read as a config ("" when it can); `config` is then {}.
  std::string damage;
  std::optional<int64_t> pid;  // of the process holding a running run, on info.host
  // `running`, yet its process died: the heartbeat is older than `stale_after` seconds, or the
  // process is gone from this host (killed, or it met a full disk and could not say so).
  bool stale(double stale_after) const;
  std::string shown_status(double stale_after) const {
    return !damage.empty() ? "damaged" : stale(stale_after) ? "stale" : status;
  }
};

struct Metric {
  int64_t step;
  std::string split, name;
  double value;  // NaN and +-Inf survive the round trip (stored as text)
  double wall_s;
};

struct Result {
  std::string split, name;
  double value;
};

// The tokens each expert of one MoE layer received over the logging window ending at `step`.
struct ExpertLoad {
  int64_t step, layer;
  std::vector<int64_t> tokens;  // (experts)
};

struct Timing {
  int64_t step;
  std::string phase;
  double seconds;
};

// One config timed by `ssr bench step`: its per-round step times and the session's machine.
struct BenchCase {
  int64_t id = 0, session = 0;  // assigned by the store
  std::string label;            // the router group, or the sweep job's description
  std::string config_hash;
  json config;
  int64_t tokens_per_step = 0;
  std::vector<double> seconds;          // one per timed round, in round order
  std::optional<int64_t> peak_bytes;    // CUDA: the case's resident tensors + its step's transient peak
  std::optional<double> load_per_core;  // machine_load() around its timing (absent in older stores)
  RunInfo info;                         // the session's machine
  double created_at = 0;
};

struct Sweep {
  int64_t id = 0;
  std::string name;
  json spec;  // sweep::Spec::to_json(): file, scale, overrides, every job's hash and labels
  double created_at = 0;
};

// One launch of a sweep (`ssr sweep`, `--resume`): what a resume launches with again.
struct Launch {
  int64_t id = 0, sweep_id = 0;
  std::string launcher;       // local | slurm
  json options;               // the --slurm KEY=VALUE flags given (array of strings)
  std::vector<int64_t> jobs;  // the job numbers it launched
  std::string slurm_job;      // the array's Slurm job id once submitted by ssr, else ""
  int64_t attempt = 0;        // 1 for the sweep's first launch, 2 for the next, ...
  double created_at = 0;
};

// One job of a sweep plan, as planning hands it to the store.
struct PlannedJob {
  int64_t num;
  std::string config_hash;
  json config;
  int64_t seed;
};

class Store {
 public:
  // Write access creates the file and folders and applies migrations. Read access (`--dry-run`)
  // writes nothing, not even a migration that another binary still using the store would refuse.
  enum class Access { write, read };
  explicit Store(const std::string& path, Access access = Access::write);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  int schema_version() const;
  const std::string& path() const { return path_; }
  // 16 random hex digits drawn when the store was created: run ids are per store, this is not.
  const std::string& id() const { return id_; }

  // A new run row (status running unless given), returns its id.
  int64_t create_run(const std::string& config_hash, const json& config, int64_t seed, const RunInfo& info,
                     const std::string& status = "running", std::optional<int64_t> sweep_id = {},
                     std::optional<int64_t> job_num = {});
  // The lease on a run: `running` with a host and pid. A StoreError naming the holder while
  // another process trains `run`: one on this host whose pid exists, or one elsewhere whose
  // heartbeat is younger than `stale_after` seconds.
  void refuse_if_held(int64_t run, double stale_after) const;
  // Takes `run` (queued, interrupted, failed or dead) for this process, under refuse_if_held.
  void start_run(int64_t run, const RunInfo& info, double stale_after);
  // The holder's heartbeat: false, writing nothing, once this process no longer holds `run`
  // (requeued as dead and taken by another).
  bool heartbeat(int64_t run, int64_t step);
  void finish_run(int64_t run, const std::string& status, const std::string& error = "");
  // finish_run by the holder only: false, writing nothing, once this process lost the lease.
  bool finish_held_run(int64_t run, const std::string& status, const std::string& error = "");

  void add_metrics(int64_t run, const std::vector<Metric>& rows);
  void add_timings(int64_t run, const std::vector<Timing>& rows);
  void add_expert_loads(int64_t run, const std::vector<ExpertLoad>& rows);
  void set_result(int64_t run, const std::string& split, const std::string& name, double value);

  std::optional<Run> run(int64_t id) const;
  std::vector<Run> runs() const;
  std::vector<Metric> metrics(int64_t run) const;
  std::vector<Result> results(int64_t run) const;
  std::vector<Timing> timings(int64_t run) const;
  std::vector<ExpertLoad> expert_loads(int64_t run) const;  // by layer, then step
  // Drop rows a run wrote after `step` (a resumed run continues from its checkpoint).
  void truncate_after(int64_t run, int64_t step);
  // Deletes the runs with every row that refers to them, in one transaction; a run some process
  // still holds (refuse_if_held) is refused first, so nothing is deleted then.
  void delete_runs(const std::vector<int64_t>& runs, double stale_after);

  // ---- sweeps
  // In one transaction: the sweep with this name whose spec has this plan_hash if one exists
  // (second = false), else a new sweep (second = true); either way a queued row for each job that
  // has neither a row in the sweep nor a done run of its config hash.
  std::pair<int64_t, bool> plan_sweep(const std::string& name, const json& spec, const std::string& plan_hash,
                                      const std::vector<PlannedJob>& jobs);
  std::optional<Sweep> sweep(int64_t id) const;
  std::vector<Sweep> sweeps() const;
  std::vector<Run> sweep_runs(int64_t sweep) const;  // by job number
  // The runs that answer a sweep's jobs: its own rows, and for a job without one the earlier run
  // of the same config that it reused (done_run).
  std::set<int64_t> sweep_members(int64_t sweep) const;
  // A queued row for each of `jobs` that has neither a row in the sweep nor a done run (its run
  // was deleted, or failed and was deleted); returns how many, in one transaction.
  int64_t queue_missing(int64_t sweep, const std::vector<PlannedJob>& jobs);
  // The newest run with this config hash that ended finished or nan (a NaN is a result too).
  std::optional<int64_t> done_run(const std::string& config_hash) const;
  // Takes the sweep's queued job `job` (or its lowest queued job) and marks it running, in one
  // transaction, so concurrent workers never take the same job. A queued job whose config hash
  // has meanwhile been done by another run is dropped instead (nothing ran under it). A job named
  // by number is also taken when it is interrupted, or running under a holder that is dead: its
  // process gone from this host, or its Slurm task this process's own (Slurm requeued the task,
  // so the earlier instance has ended). That is what a requeued or preempted Slurm task finds.
  std::optional<Run> claim_job(int64_t sweep, std::optional<int64_t> job, const RunInfo& info);
  // Back to queued: running jobs whose heartbeat is older than stale_after seconds or whose run
  // id is in `dead` (a holder Slurm no longer runs), interrupted jobs, and failed jobs if `failed`;
  // never a run in `alive` (its Slurm task still runs, however late its heartbeat). Returns how many.
  int64_t requeue(int64_t sweep, double stale_after, bool failed, const std::set<int64_t>& dead = {},
                  const std::set<int64_t>& alive = {});
  // Records a launch (its attempt is the sweep's count of launches); returns it.
  Launch add_launch(int64_t sweep, const std::string& launcher, const json& options, const std::vector<int64_t>& jobs);
  // The array ssr submitted for `launch`: its Slurm job id, and "ID_NUM" on each of its jobs' queued rows.
  void set_launch_slurm_job(int64_t launch, const std::string& array_job);
  std::vector<Launch> launches(int64_t sweep) const;  // oldest first

  // ---- benchmarks
  // A bench session and all its cases, in one transaction; returns the session id.
  int64_t add_bench_session(const std::string& command, const RunInfo& info, int64_t warmup,
                            const std::vector<BenchCase>& cases);
  // Every stored case with this config hash, newest session first.
  std::vector<BenchCase> bench_cases(const std::string& config_hash) const;

  sqlite3* handle() const { return db_; }
  // "wal", or "delete" (a rollback journal) on a network file system, whose name network_fs() gives.
  const std::string& journal_mode() const { return journal_mode_; }
  const std::string& network_fs() const { return network_fs_; }

 private:
  void exec(const std::string& sql) const;
  void migrate();
  void claim_identity();
  int64_t insert_missing(int64_t sweep, const std::vector<PlannedJob>& jobs);  // inside a transaction
  std::string path_;
  std::string id_;
  std::string journal_mode_ = "wal", network_fs_;
  sqlite3* db_ = nullptr;
};

// Thrown for store failures; the message names the database file.
struct StoreError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

}  // namespace ssr::store
