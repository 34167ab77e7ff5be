// sweep: plan a study into the store, run it locally or as a Slurm job array, resume it.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <algorithm>
#include <map>
#include <set>

#include "harness/cli/commands.hpp"
#include "harness/config/config.hpp"
#include "harness/store/store.hpp"
#include "harness/sweep/launch.hpp"
#include "harness/sweep/slurm.hpp"
#include "harness/sweep/sweep.hpp"

namespace fs = std::filesystem;

namespace ssr::cli {
namespace {

using config::ConfigError;

struct SweepArgs {
  std::string file, scale, launcher = "local";
  std::vector<std::string> overrides, slurm;
  int jobs = 1, seeds = 0;
  bool dry_run = false, retry_failed = false, quiet = false, submit = false;
  int64_t resume = 0, sweep = 0, job = -1, status_id = 0;
  double stale_after = 120;
};

// Per-sweep files live beside the database: <db folder>/logs/sweep-ID, <db folder>/sweeps/.
fs::path beside_db(const std::string& db, const std::string& sub) { return fs::path(db).parent_path() / sub; }

void print_jobs(const sweep::Spec& spec, const store::Store* store) {
  std::cout << fmt::format("{}: {} jobs{}, base {}\n", spec.file, spec.jobs.size(),
                           spec.scale.empty() ? "" : ", scale " + spec.scale, spec.base);
  for (const auto& j : spec.jobs) {
    std::string state;
    if (store)
      if (auto done = store->done_run(j.config.hash())) state = fmt::format("  (done: run {})", *done);
    std::string left_out;
    for (const auto& o : j.left_out) left_out += (left_out.empty() ? "  (left out, unused here: " : " ") + o;
    std::cout << fmt::format("  job {:<4} {}  {}{}{}\n", j.num, j.config.hash(), j.describe(), state,
                             left_out.empty() ? "" : left_out + ")");
  }
}

// --dry-run --launcher slurm: the script that would be written for every job, under the id the
// plan has in the store, or the one it would get.
void print_script(const sweep::Spec& spec, const store::Store* store, const std::string& db, const SweepArgs& a) {
  int64_t planned = 0, last = 0;
  if (store)
    for (const auto& s : store->sweeps()) {
      last = std::max(last, s.id);
      if (s.name == spec.name && s.spec.value("plan_hash", std::string()) == spec.plan_hash())
        planned = std::max(planned, s.id);
    }
  const store::Sweep sw{planned ? planned : last + 1, spec.name, spec.to_json(), 0};
  const std::string note = planned ? "already planned" : "not planned yet: the id it would get";
  std::vector<int64_t> all;
  for (const auto& j : spec.jobs) all.push_back(j.num);
  const auto log_dir = (beside_db(db, "logs") / fmt::format("sweep-{}", sw.id)).string();
  const int64_t attempt = planned ? static_cast<int64_t>(store->launches(planned).size()) + 1 : 1;
  std::cout << fmt::format("\n# the sbatch script for sweep {} ({}), every job:\n", sw.id, note)
            << sweep::slurm_script(sw, all, db, log_dir, sweep::slurm_options(spec.slurm, a.slurm), attempt);
}

// Queues again the jobs whose run was deleted, each rebuilt from the plan's base config and its
// overrides; a job whose config no longer rebuilds to its planned hash (the base file changed)
// is named, not run under another config.
int64_t queue_deleted(store::Store& store, int64_t id, double stale_after) {
  const auto sweep = *store.sweep(id);
  std::vector<store::PlannedJob> jobs;
  for (const auto& s : sweep::job_status(store, sweep, stale_after)) {
    if (s.status != "missing") continue;
    const auto& all = sweep.spec.at("jobs");
    const auto& j = *std::find_if(all.begin(), all.end(), [&](const auto& x) { return x.at("num") == s.num; });
    const auto hash = j.at("hash").get<std::string>();
    std::string why;
    try {
      auto cfg =
          config::resolve(sweep.spec.at("base").get<std::string>(), j.at("overrides").get<std::vector<std::string>>());
      cfg.set("run.db", store.path(), "--db");
      if (cfg.hash() == hash) {
        jobs.push_back({s.num, hash, cfg.to_json(), cfg.i("run.seed")});
        continue;
      }
      why = fmt::format("rebuilds to hash {}, not its planned {}", cfg.hash(), hash);
    } catch (const ConfigError& e) {
      why = e.what();
    }
    std::cerr << fmt::format(
        "sweep {} job {} ({}): its run was deleted and its config no longer rebuilds ({}); "
        "plan the sweep file again\n",
        id, s.num, s.labels, why);
  }
  return store.queue_missing(id, jobs);
}

// How a sweep is launched: by the planning command, or by a resume from what the last launch stored.
struct LaunchSpec {
  std::string launcher;            // local | slurm
  std::vector<std::string> slurm;  // --slurm flags: the planning command's, then the resume's
  nlohmann::json file_slurm;       // the sweep file's (and scale's) sbatch options
};

// The queued jobs a new array must leave out: those a live Slurm task of an earlier array still
// holds (pending, it would run them twice). "ARRAY_NUM" for each, from the arrays ssr submitted and
// those whose tasks already recorded themselves on a row.
std::set<int64_t> held_by_slurm(const store::Store& store, int64_t id, const std::set<std::string>& live) {
  std::set<std::string> arrays;
  for (const auto& l : store.launches(id))
    if (!l.slurm_job.empty()) arrays.insert(l.slurm_job);
  const auto rows = store.sweep_runs(id);
  for (const auto& r : rows)
    if (const auto& t = r.info.slurm_job; !t.empty()) arrays.insert(t.substr(0, t.find('_')));
  std::set<int64_t> held;
  for (const auto& r : rows)
    if (r.status == "queued" && r.job_num)
      for (const auto& arr : arrays)
        if (live.count(fmt::format("{}_{}", arr, *r.job_num))) held.insert(*r.job_num);
  return held;
}

int launch(store::Store& store, int64_t id, const SweepArgs& a, const LaunchSpec& how) {
  const auto sweep = *store.sweep(id);
  const auto log_dir = (beside_db(store.path(), "logs") / fmt::format("sweep-{}", id)).string();
  if (how.launcher == "slurm") {
    std::optional<std::set<std::string>> live;
    if (!store.launches(id).empty()) live = sweep::live_tasks();
    const auto held = live ? held_by_slurm(store, id, *live) : std::set<int64_t>{};
    std::vector<int64_t> pending;
    for (const auto& r : store.sweep_runs(id))
      if (r.status == "queued" && r.job_num && !held.count(*r.job_num)) pending.push_back(*r.job_num);
    if (!held.empty())
      std::cerr << fmt::format("sweep {}: job(s) {} are still pending in an earlier Slurm array: not submitted again\n",
                               id, sweep::array_ranges({held.begin(), held.end()}));
    if (pending.empty()) {
      std::cerr << fmt::format("sweep {}: no queued jobs; nothing to submit\n", id);
      return 0;
    }
    const auto options = sweep::slurm_options(how.file_slurm, how.slurm);  // refused before anything is stored
    const auto record = store.add_launch(id, "slurm", how.slurm, pending);
    const fs::path script = beside_db(store.path(), "sweeps") /
                            (record.attempt > 1 ? fmt::format("sweep-{}.attempt-{}.sbatch", id, record.attempt)
                                                : fmt::format("sweep-{}.sbatch", id));
    const auto text = sweep::slurm_script(sweep, pending, store.path(), log_dir, options, record.attempt);
    fs::create_directories(script.parent_path());
    fs::create_directories(log_dir);
    {
      std::ofstream out(script);
      out << text;
      out.close();
      if (!out) throw std::runtime_error(fmt::format("cannot write the sbatch script {}", script.string()));
    }
    if (a.submit) {
      const auto job = sweep::submit(script.string());
      store.set_launch_slurm_job(record.id, job);
      std::cerr << fmt::format(
          "sweep {}: submitted {} as Slurm job {} ({} array tasks)\n  watch:  ssr sweep status {} "
          "--db {}\n",
          id, script.string(), job, pending.size(), id, store.path());
    } else {
      std::cerr << fmt::format(
          "sweep {}: wrote {} ({} array tasks)\n  submit: sbatch {}\n  watch:  ssr sweep status {} --db {}\n", id,
          script.string(), pending.size(), script.string(), id, store.path());
    }
    return 0;
  }
  std::vector<int64_t> queued;
  for (const auto& r : store.sweep_runs(id))
    if (r.status == "queued" && r.job_num) queued.push_back(*r.job_num);
  store.add_launch(id, "local", nlohmann::json::array(), queued);
  sweep::LocalOptions opt;
  opt.jobs = a.jobs;
  opt.log_dir = log_dir;
  opt.stale_after = a.stale_after;
  opt.quiet = a.quiet;
  const int code = sweep::run_local(store, id, opt);
  std::cerr << fmt::format("sweep {}: {}  (ssr runs --where sweep={} --db {})\n", id,
                           sweep::summarize(sweep::job_status(store, sweep, a.stale_after)).line(), id, store.path());
  return code;
}

// A resume launches as the sweep's last launch did (launcher, --slurm flags), unless told otherwise.
LaunchSpec resume_spec(const store::Store& store, int64_t id, const SweepArgs& a, bool launcher_given) {
  const auto launches = store.launches(id);
  LaunchSpec how{launches.empty() ? "local" : launches.back().launcher, {}, {}};
  if (launcher_given) how.launcher = a.launcher;
  for (auto it = launches.rbegin(); it != launches.rend(); ++it)
    if (it->launcher == "slurm") {
      how.slurm = it->options.get<std::vector<std::string>>();
      break;
    }
  how.slurm.insert(how.slurm.end(), a.slurm.begin(), a.slurm.end());
  how.file_slurm = store.sweep(id)->spec.value("slurm", nlohmann::json::object());
  return how;
}

// Running rows whose Slurm task Slurm no longer runs (killed on another node, where no pid check
// reaches), and those whose task still runs: what --resume requeues, and what it must leave alone.
std::pair<std::set<int64_t>, std::set<int64_t>> slurm_holders(const store::Store& store, int64_t id) {
  std::set<int64_t> dead, alive;
  const auto rows = store.sweep_runs(id);
  if (std::none_of(rows.begin(), rows.end(),
                   [](const auto& r) { return r.status == "running" && !r.info.slurm_job.empty(); }))
    return {dead, alive};
  const auto live = sweep::live_tasks();
  if (!live) {
    std::cerr << fmt::format("sweep {}: squeue cannot be asked here; running jobs count as dead only by heartbeat\n",
                             id);
    return {dead, alive};
  }
  for (const auto& r : rows)
    if (r.status == "running" && !r.info.slurm_job.empty()) (live->count(r.info.slurm_job) ? alive : dead).insert(r.id);
  return {dead, alive};
}

int plan_and_run(const std::string& db, const SweepArgs& a) {
  auto overrides = a.overrides;
  if (a.seeds > 0) {
    for (const auto& o : overrides)
      if (o.rfind("run.seed=", 0) == 0) throw ConfigError(fmt::format("--seeds: give it or '{}', not both", o));
    overrides.push_back(fmt::format("run.seed=range(1,{})", a.seeds + 1));
  }
  auto spec = sweep::load(a.file, overrides, a.scale);
  sweep::check_distinct_runs(spec);
  if (a.dry_run) {
    // Nothing is written: the store is only read, and only if it exists.
    std::optional<store::Store> store;
    if (fs::exists(db)) store.emplace(db, store::Store::Access::read);
    print_jobs(spec, store ? &*store : nullptr);
    if (a.launcher == "slurm") print_script(spec, store ? &*store : nullptr, db, a);
    return 0;
  }
  std::map<std::string, int64_t> left_out;
  for (const auto& j : spec.jobs)
    for (const auto& o : j.left_out) ++left_out[o];
  for (const auto& [o, n] : left_out)
    std::cerr << fmt::format("note: {} left out of {} job(s) whose config does not use it (--dry-run lists them)\n", o,
                             n);
  std::vector<store::PlannedJob> jobs;
  for (auto& j : spec.jobs) {
    j.config.set("run.db", db, "--db");
    jobs.push_back({j.num, j.config.hash(), j.config.to_json(), j.config.i("run.seed")});
  }
  store::Store store(db);
  const auto [id, created] = store.plan_sweep(spec.name, spec.to_json(), spec.plan_hash(), jobs);
  const auto status = sweep::job_status(store, *store.sweep(id), a.stale_after);
  int64_t reused = 0;
  for (const auto& s : status) reused += s.status == "reused";
  std::cerr << fmt::format("sweep {} ({}{}): {} jobs, {}{}\n", id, spec.name,
                           spec.scale.empty() ? "" : ", scale " + spec.scale, spec.jobs.size(),
                           created ? "planned" : "already planned with the same jobs, continuing",
                           reused ? fmt::format("; {} done by earlier runs of the same config", reused) : "");
  return launch(store, id, a, LaunchSpec{a.launcher, a.slurm, spec.slurm});
}

// "  (command line: router=vanilla,ssr_l train.steps=50)", so two sweeps of one file are told apart.
std::string cli_axes(const store::Sweep& s) {
  std::string text;
  for (const auto& o : s.spec.value("cli_overrides", json::array()))
    text += (text.empty() ? "" : " ") + o.get<std::string>();
  return text.empty() ? "" : "  (command line: " + text + ")";
}

int show_status(const std::string& db, int64_t id, double stale_after) {
  require_store(db);
  store::Store store(db);
  if (id == 0) {
    for (const auto& s : store.sweeps())
      std::cout << fmt::format("sweep {:<4} {:<24} scale {:<8} {}{}\n", s.id, s.name,
                               s.spec.value("scale", std::string("-")),
                               sweep::summarize(sweep::job_status(store, s, stale_after)).line(), cli_axes(s));
    return 0;
  }
  const auto s = store.sweep(id);
  if (!s) throw ConfigError(fmt::format("no sweep {} in {} (ssr sweep status lists them)", id, db));
  const auto jobs = sweep::job_status(store, *s, stale_after);
  std::cout << fmt::format("sweep {} ({}, {}): {}{}\n", s->id, s->name, s->spec.value("file", std::string()),
                           sweep::summarize(jobs).line(), cli_axes(*s));
  for (const auto& j : jobs)
    std::cout << fmt::format("  job {:<4} {:<9} run {:<6} {}\n", j.num, j.status,
                             j.run_id ? std::to_string(j.run_id) : "-", j.labels);
  return 0;
}

}  // namespace

void add_sweep_commands(CLI::App& app, Context& ctx) {
  auto a = std::make_shared<SweepArgs>();
  auto* sw = app.add_subcommand("sweep", "Plan a sweep into the run store and run it (local pool or Slurm array)");
  sw->add_option("sweep_file", a->file, "sweep YAML (see experiments/), or any config: a multirun of its axes");
  sw->add_option("overrides", a->overrides, "key=value for every job; key=a,b,c or key=range(0,4) adds an axis");
  sw->add_option("--scale", a->scale, "one of the file's scales (default: its first, e.g. paper)");
  sw->add_option("--seeds", a->seeds, "seeds 1..N as the seed axis, in place of the file's seeds")
      ->check(CLI::Range(1, 10000));
  sw->add_option("--jobs,-j", a->jobs, "worker processes at once (local launcher)")->check(CLI::Range(1, 1024));
  sw->add_flag("--dry-run", a->dry_run,
               "print the jobs and their config hashes (with --launcher slurm, the script too); write nothing");
  sw->add_option("--launcher", a->launcher, "local (worker processes here) or slurm (write an sbatch array script)")
      ->check(CLI::IsMember({"local", "slurm"}));
  sw->add_option("--slurm", a->slurm,
                 "KEY=VALUE or a flag (requeue): an sbatch option over the file's and the site's (0 or empty drops "
                 "it); repeatable, and kept for --resume")
      ->allow_extra_args(false);
  sw->add_flag("--submit", a->submit, "with --launcher slurm: submit the script with sbatch (its job id is recorded)");
  auto* resume = sw->add_option(
      "--resume", a->resume,
      "continue sweep ID: requeue its dead running jobs, then launch what is queued as its last launch did");
  sw->add_flag("--retry-failed", a->retry_failed, "with --resume: requeue failed jobs too")->needs(resume);
  sw->add_option("--stale-after", a->stale_after, "seconds without heartbeat before a running job counts as dead")
      ->capture_default_str()
      ->check(kSeconds);
  sw->add_option("--db", ctx.db, "run store")->capture_default_str();
  sw->add_flag("--quiet", a->quiet, "no live summary line");
  sw->footer(
      "Examples:\n"
      "  ssr sweep experiments/table1.yaml --scale demo --jobs 2\n"
      "  ssr sweep experiments/demo.yaml router=ssr_l router.p=0.01,0.1 --seeds 3   # multirun from a config\n"
      "  ssr sweep experiments/table5-p-ssr-l-noise.yaml router.xi=0.5,1 --dry-run\n"
      "  ssr sweep experiments/table1.yaml --launcher slurm     # then: sbatch results/sweeps/sweep-1.sbatch\n"
      "  ssr sweep experiments/table4.yaml --scale demo --launcher slurm --slurm partition=cpu --dry-run\n"
      "  ssr sweep --resume 3 --retry-failed --jobs 2\n"
      "  ssr sweep experiments/table1.yaml --launcher slurm --slurm requeue --slurm time=2-00:00:00 --submit\n"
      "  ssr sweep status 3");

  auto* run = sw->add_subcommand("run", "Worker: claim and train a sweep's job (what the pool and Slurm tasks run)");
  run->add_option("--sweep", a->sweep, "sweep id")->required();
  run->add_option("--job", a->job, "job number (default: every queued job, one after another)");
  run->add_option("--db", ctx.db, "run store")->capture_default_str();
  run->add_flag("--quiet", a->quiet, "no progress output");
  run->footer(
      "Examples:\n  ssr sweep run --sweep 3 --job $SLURM_ARRAY_TASK_ID\n  ssr sweep run --sweep 3   # a worker that "
      "drains the queue");

  auto* status = sw->add_subcommand("status", "Per-job state of a sweep (no id: every sweep)");
  status->add_option("sweep_id", a->status_id, "sweep id");
  status->add_option("--db", ctx.db, "run store")->capture_default_str();
  status->add_option("--stale-after", a->stale_after, "seconds without heartbeat before a running job counts as dead")
      ->check(kSeconds);
  status->footer("Examples:\n  ssr sweep status\n  ssr sweep status 3");

  run->callback([a, &ctx] {
    require_store(ctx.db);
    store::Store store(ctx.db);
    ctx.exit_code = sweep::work(store, a->sweep, a->job >= 0 ? std::optional<int64_t>(a->job) : std::nullopt, a->quiet);
  });
  status->callback([a, &ctx] { ctx.exit_code = show_status(ctx.db, a->status_id, a->stale_after); });
  sw->callback([a, sw, &ctx] {
    if (!sw->get_subcommands().empty()) return;  // `sweep run` / `sweep status` did the work
    const bool launcher_given = sw->count("--launcher") > 0;
    if (sw->count("--resume")) {
      if (!a->file.empty()) throw ConfigError("--resume: a resumed sweep keeps its plan; drop SWEEP_FILE");
      require_store(ctx.db);
      store::Store store(ctx.db);
      if (!store.sweep(a->resume)) throw ConfigError(fmt::format("--resume: no sweep {} in {}", a->resume, ctx.db));
      const auto how = resume_spec(store, a->resume, *a, launcher_given);
      if (how.launcher != "slurm" && (!a->slurm.empty() || a->submit))
        throw ConfigError(fmt::format("{}: sweep {} resumes with the local launcher; add --launcher slurm",
                                      a->submit ? "--submit" : "--slurm", a->resume));
      const auto [dead, alive] = slurm_holders(store, a->resume);
      const auto n = store.requeue(a->resume, a->stale_after, a->retry_failed, dead, alive);
      const auto again = queue_deleted(store, a->resume, a->stale_after);
      std::cerr << fmt::format("sweep {}: requeued {} job(s){}{}\n", a->resume, n,
                               again ? fmt::format(", planned {} whose run was deleted", again) : "",
                               how.launcher == "slurm" ? " (Slurm launch, as before)" : "");
      ctx.exit_code = launch(store, a->resume, *a, how);
      return;
    }
    if (!a->slurm.empty() && a->launcher != "slurm")
      throw ConfigError("--slurm: sbatch options apply only with --launcher slurm");
    if (a->submit && a->launcher != "slurm") throw ConfigError("--submit: submits only with --launcher slurm");
    if (a->file.empty()) throw ConfigError("sweep: give SWEEP.yaml, --resume ID, or a subcommand (run, status)");
    ctx.exit_code = plan_and_run(ctx.db, *a);
  });
}

}  // namespace ssr::cli
