#include "harness/sweep/launch.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <iostream>
#include <map>
#include <thread>

#include "harness/config/config.hpp"
#include "harness/dist/launch.hpp"
#include "harness/errors.hpp"
#include "harness/store/query.hpp"
#include "harness/train/progress.hpp"
#include "harness/train/trainer.hpp"

extern char** environ;
namespace fs = std::filesystem;

namespace ssr::sweep {

using json = nlohmann::json;

namespace {

std::atomic<int> g_stop{0}, g_signals{0};
void on_stop(int sig) {
  g_stop = sig;
  ++g_signals;
}

std::string labels_text(const json& labels) {
  std::string s;
  for (const auto& kv : labels) s += (s.empty() ? "" : " ") + kv[0].get<std::string>() + "=" + kv[1].get<std::string>();
  return s;
}

bool ended_well(const std::string& status) { return status == "finished" || status == "nan" || status == "reused"; }

}  // namespace

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw std::runtime_error("cannot find the ssr binary (/proc/self/exe)");
  return p.string();
}

std::string Summary::line() const {
  std::string s = fmt::format("[{}/{} done", done, total);
  if (failed) s += fmt::format(", {} failed", failed);
  if (running) s += fmt::format(", {} running", running);
  if (stale) s += fmt::format(", {} stale", stale);
  if (interrupted) s += fmt::format(", {} interrupted", interrupted);
  if (missing) s += fmt::format(", {} missing", missing);
  if (queued) s += fmt::format(", {} queued", queued);
  return s + "]";
}

std::vector<JobStatus> job_status(const store::Store& store, const store::Sweep& sweep, double stale_after) {
  std::map<int64_t, store::Run> rows;
  for (auto& r : store.sweep_runs(sweep.id))
    if (r.job_num) rows.emplace(*r.job_num, std::move(r));
  std::vector<JobStatus> out;
  for (const auto& j : sweep.spec.at("jobs")) {
    JobStatus s;
    s.num = j.at("num").get<int64_t>();
    s.labels = labels_text(j.at("labels"));
    if (auto it = rows.find(s.num); it != rows.end()) {
      s.status = it->second.shown_status(stale_after);
      s.run_id = it->second.id;
    } else if (auto done = store.done_run(j.at("hash").get<std::string>())) {
      s.status = "reused";  // an earlier run of the same config, from this or another sweep
      s.run_id = *done;
    } else {
      s.status = "missing";
    }
    out.push_back(s);
  }
  return out;
}

Summary summarize(const std::vector<JobStatus>& jobs) {
  Summary s;
  s.total = static_cast<int64_t>(jobs.size());
  for (const auto& j : jobs) {
    if (ended_well(j.status))
      ++s.done;
    else if (j.status == "failed")
      ++s.failed;
    else if (j.status == "running")
      ++s.running;
    else if (j.status == "stale")
      ++s.stale;
    else if (j.status == "interrupted")
      ++s.interrupted;
    else if (j.status == "queued")
      ++s.queued;
    else if (j.status == "missing")
      ++s.missing;
  }
  return s;
}

int work(store::Store& store, int64_t sweep, std::optional<int64_t> job, bool quiet) {
  if (!store.sweep(sweep)) throw config::ConfigError(fmt::format("--sweep: no sweep {} in {}", sweep, store.path()));
  int code = 0;
  for (;;) {
    auto run = store.claim_job(sweep, job, store::this_machine("cpu"));
    if (!run) {
      if (job) {
        const auto rows = store.sweep_runs(sweep);
        auto it = std::find_if(rows.begin(), rows.end(), [&](const auto& r) { return r.job_num == job; });
        std::cerr << fmt::format("sweep {} job {}: {}\n", sweep, *job,
                                 it == rows.end() ? "nothing to run (done by an earlier run of the same config)"
                                                  : "not queued (" + it->status + "); nothing to do");
      }
      return code;
    }
    auto cfg = store::stored_config(*run);
    cfg.set("run.db", store.path(), "--db");
    train::Options opts;
    opts.quiet = quiet;
    opts.run = run->id;  // a job killed mid-way and requeued continues from its last checkpoint
    const int64_t nproc = cfg.i("run.nproc");
    std::cerr << fmt::format("sweep {} job {}: run {}{}\n", sweep, *run->job_num, run->id,
                             nproc > 1 ? fmt::format(" on {} ranks", nproc) : "");
    try {
      if (nproc > 1) {
        // The ranks are `ssr train --resume RUN` processes of this binary, like `ssr train --nproc`;
        // a job that has not started yet has no checkpoint, and trains from step 0.
        dist::check_ranks(cfg);
        std::vector<std::string> argv = {self_exe(),        "train", "--resume",  std::to_string(run->id),
                                         "--or-from-start", "--db",  store.path()};
        if (quiet) argv.push_back("--quiet");
        if (dist::launch(static_cast<int>(nproc), argv, store.path()) != 0) code = 1;
      } else if (const auto out = train::train(cfg, store, opts); out.status == "failed") {
        code = 1;
      } else if (out.status == "interrupted") {
        return out.signal == SIGUSR1 ? kExitRequeue : 130;  // the sweep is being stopped: take no further job
      }
    } catch (const EnvironmentError& e) {
      // Every later job would hit the same full disk: stop, and leave the rest queued.
      try {
        store.finish_held_run(run->id, "failed", e.what());
      } catch (const std::exception&) {
      }
      std::cerr << fmt::format("sweep {} job {}: {}\n", sweep, *run->job_num, e.what());
      return kExitEnvironment;
    } catch (const std::exception& e) {
      // The trainer has recorded the failure on the row when it got that far; a job rejected
      // before training (e.g. missing data) is marked here, so the sweep moves on.
      store.finish_held_run(run->id, "failed", e.what());
      // The row keeps the whole message (LibTorch's carries a backtrace); the console gets its first line.
      const std::string what = e.what();
      std::cerr << fmt::format("sweep {} job {}: failed: {}\n", sweep, *run->job_num, what.substr(0, what.find('\n')));
      code = 1;
    }
    if (job) return code;
  }
}

int run_local(store::Store& store, int64_t sweep_id, const LocalOptions& opt) {
  const auto sweep = store.sweep(sweep_id);
  if (!sweep) throw config::ConfigError(fmt::format("no sweep {} in {}", sweep_id, store.path()));
  fs::create_directories(opt.log_dir);
  const std::string exe = self_exe();
  const bool tty = isatty(STDERR_FILENO);
  g_stop = 0;
  g_signals = 0;
  auto old_int = std::signal(SIGINT, on_stop);
  auto old_term = std::signal(SIGTERM, on_stop);

  std::vector<int64_t> pending;
  for (const auto& r : store.sweep_runs(sweep_id))
    if (r.status == "queued" && r.job_num) pending.push_back(*r.job_num);
  std::map<pid_t, int64_t> children;  // pid -> job number
  std::string last_line;
  const auto start = std::chrono::steady_clock::now();
  const auto first = summarize(job_status(store, *sweep, opt.stale_after));
  auto show = [&](bool force) {
    if (opt.quiet) return;
    const auto sum = summarize(job_status(store, *sweep, opt.stale_after));
    const auto line = sum.line();
    // ETA from the jobs this launch ended so far: they ran with the same number of workers.
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const int64_t ended = sum.done + sum.failed - first.done - first.failed, left = sum.queued + sum.running;
    const std::string timing = fmt::format(
        "  elapsed {}{}", train::format_duration(elapsed),
        ended > 0 && left > 0
            ? ", ETA " + train::format_duration(elapsed / static_cast<double>(ended) * static_cast<double>(left))
            : "");
    if (tty)
      std::cerr << "\r\033[K" << line << timing << std::flush;
    else if (force || line != last_line)
      std::cerr << line << timing << "\n";
    last_line = line;
  };
  size_t next = 0;
  bool stopping = false;
  std::optional<int64_t> environment_job;  // the first job that ended on a full disk or I/O error
  while ((!stopping && next < pending.size()) || !children.empty()) {
    if (g_stop && !stopping) {
      // The first signal: launch nothing more; the workers stop at a step boundary, record their
      // runs as interrupted (with a checkpoint to resume from) and exit.
      stopping = true;
      for (const auto& [pid, num] : children) kill(pid, SIGTERM);
    }
    if (g_signals > 1) {
      // A second signal: stop now. The killed workers' runs are marked interrupted here, and
      // `--resume` continues them from their last checkpoint.
      for (const auto& [pid, num] : children) kill(pid, SIGKILL);
      for (const auto& [pid, num] : children) waitpid(pid, nullptr, 0);
      for (const auto& r : store.sweep_runs(sweep_id))
        for (const auto& [pid, num] : children)
          if (r.job_num == num && r.status == "running")
            store.finish_run(r.id, "interrupted", "the sweep was stopped by a second signal");
      children.clear();
      break;
    }
    while (!stopping && children.size() < static_cast<size_t>(opt.jobs) && next < pending.size()) {
      const int64_t num = pending[next++];
      const std::string log = (fs::path(opt.log_dir) / fmt::format("job-{}.log", num)).string();
      std::vector<std::string> args = {
          exe, "sweep", "run", "--sweep", std::to_string(sweep_id), "--job", std::to_string(num), "--db", store.path()};
      std::vector<char*> argv;
      for (auto& a : args) argv.push_back(a.data());
      argv.push_back(nullptr);
      posix_spawn_file_actions_t fa;
      posix_spawn_file_actions_init(&fa);
      posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      posix_spawn_file_actions_adddup2(&fa, STDOUT_FILENO, STDERR_FILENO);
      pid_t pid = 0;
      const int rc = posix_spawn(&pid, exe.c_str(), &fa, nullptr, argv.data(), environ);
      posix_spawn_file_actions_destroy(&fa);
      if (rc != 0) throw std::runtime_error(fmt::format("cannot start a worker for job {}: {}", num, strerror(rc)));
      children[pid] = num;
    }
    show(false);
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid > 0 && children.count(pid)) {
      const int64_t num = children[pid];
      children.erase(pid);
      if (WIFSIGNALED(status) && stopping) {
        for (const auto& r : store.sweep_runs(sweep_id))
          if (r.job_num == num && r.status == "running")
            store.finish_run(r.id, "interrupted",
                             fmt::format("worker ended by signal {} while the sweep stopped", WTERMSIG(status)));
      } else if (WIFSIGNALED(status)) {
        // A worker killed outright never wrote its end: record it. Killed from outside (kill -9,
        // the OOM killer, a hang-up) it is interrupted, and `ssr sweep --resume ID` continues it
        // from its last checkpoint; a crash (SIGSEGV, SIGABRT, ...) is a failure, rerun only with
        // --retry-failed.
        const int sig = WTERMSIG(status);
        const bool from_outside = sig == SIGKILL || sig == SIGTERM || sig == SIGINT || sig == SIGHUP || sig == SIGQUIT;
        for (const auto& r : store.sweep_runs(sweep_id))
          if (r.job_num == num && r.status == "running")
            store.finish_run(r.id, from_outside ? "interrupted" : "failed",
                             fmt::format("worker killed by signal {} ({})", sig, strsignal(sig)));
      } else if (WIFEXITED(status) && WEXITSTATUS(status) == kExitEnvironment && !environment_job) {
        // The next jobs would meet the same disk: launch none, let the running ones end.
        environment_job = num;
        stopping = true;
      }
      continue;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);
  if (tty && !opt.quiet) std::cerr << "\n";
  const auto final_jobs = job_status(store, *sweep, opt.stale_after);
  const auto sum = summarize(final_jobs);
  if (!opt.quiet) {
    if (!tty) show(true);
    for (const auto& j : final_jobs)
      if (j.status == "failed")
        std::cerr << fmt::format("  job {} ({}) failed: ssr show {} --db {}; log {}/job-{}.log\n", j.num, j.labels,
                                 j.run_id, store.path(), opt.log_dir, j.num);
      else if (j.status == "interrupted")
        std::cerr << fmt::format("  job {} ({}) was interrupted: `ssr sweep --resume {} --db {}` continues it\n", j.num,
                                 j.labels, sweep_id, store.path());
      else if (j.status == "missing")
        std::cerr << fmt::format("  job {} ({}) has no run (deleted): `ssr sweep --resume {} --db {}` runs it again\n",
                                 j.num, j.labels, sweep_id, store.path());
  }
  if (g_stop) return 128 + g_stop;
  if (environment_job) {
    std::cerr << fmt::format(
        "error: sweep {} stopped: job {} met a full disk or an I/O error (log {}/job-{}.log); free space, then "
        "`ssr sweep --resume {} --retry-failed --db {}`\n",
        sweep_id, *environment_job, opt.log_dir, *environment_job, sweep_id, store.path());
    return kExitEnvironment;
  }
  return sum.failed || sum.queued || sum.stale || sum.interrupted || sum.missing ? 1 : 0;
}

}  // namespace ssr::sweep
