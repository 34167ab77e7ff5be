// Running a planned sweep: the worker that trains one claimed job, the local pool of worker
// processes, and the per-job status they all report (the Slurm side: slurm.hpp).
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "harness/store/store.hpp"

namespace ssr::sweep {

// The path of the running ssr binary, which workers and scripts run again.
std::string self_exe();

// The state of one planned job: its sweep row, or the earlier run its config hash reused.
struct JobStatus {
  int64_t num = 0;
  std::string labels;  // "variant=lb run.seed=2"
  std::string status;  // queued | running | stale | finished | nan | failed | reused | missing
  int64_t run_id = 0;  // 0 when there is no run
};

struct Summary {
  int64_t total = 0, done = 0, failed = 0, running = 0, queued = 0, stale = 0, interrupted = 0;
  int64_t missing = 0;       // its run was deleted (ssr rm): nothing will run it until planned again
  std::string line() const;  // "[12/48 done, 1 failed, 3 running]"
};

std::vector<JobStatus> job_status(const store::Store& store, const store::Sweep& sweep, double stale_after);
Summary summarize(const std::vector<JobStatus>& jobs);

// The worker: claims job `job` of the sweep (or, without one, each queued job in turn) and trains
// it; a job with a checkpoint (killed earlier and requeued) continues from it. Returns the exit
// code: 0 when every job it took ended finished or nan, or when there was nothing to take.
int work(store::Store& store, int64_t sweep, std::optional<int64_t> job, bool quiet);

struct LocalOptions {
  int jobs = 1;         // worker processes at once
  std::string log_dir;  // one log file per job: <log_dir>/job-<num>.log
  double stale_after = 120;
  bool quiet = false;  // no live summary line
};
// The local pool: one `ssr sweep run --sweep ID --job N` process per job, at most `jobs` at once,
// so a crash of one kills nothing else. Returns 0 when every job ended finished or nan.
int run_local(store::Store& store, int64_t sweep, const LocalOptions& opt);

}  // namespace ssr::sweep
