// Sweeps: expansion of every axis kind (table-driven), rejection of bad sweep files, and through
// the `ssr` binary: idempotent planning and running, a worker killed with SIGKILL mid-job and the
// sweep resumed, concurrent workers on one store, the Slurm script's options (tests/slurm_real.sh
// runs the script under a real sbatch).
#include <catch2/catch.hpp>
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <map>
#include <set>
#include <thread>
#include <yaml-cpp/yaml.h>

#include "harness/config/config.hpp"
#include "harness/store/store.hpp"
#include "harness/sweep/launch.hpp"
#include "harness/sweep/slurm.hpp"
#include "harness/sweep/sweep.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;
using ssr::config::ConfigError;

namespace {

using ssr::testing::temp_dir;

using ssr::testing::kSrc;

using ssr::testing::kBin;
using ssr::testing::run;
using ssr::testing::shell;

// A sweep file in `dir` whose jobs train the demo model for a few steps on real WikiText-103 text.
// Starts `ssr ARGS` as a child with stdout and stderr in `log`; returns its pid.
pid_t spawn_ssr(const std::string& log, std::vector<std::string> args) {
  const pid_t pid = fork();
  if (pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    std::vector<char*> argv{const_cast<char*>(kBin.c_str())};
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    execv(kBin.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

std::string write_sweep(const fs::path& dir, const std::string& body, int steps = 6) {
  const auto file = dir / "sweep.yaml";
  std::ofstream(file) << fmt::format(
      "base: {}/experiments/demo.yaml\n"
      "overrides: [train.steps={}, train.batch_size=4, train.seq_len=16, train.warmup=2, eval.batch_size=4, "
      "eval.max_segments=2, train.eval_every=0, run.log_every=2, run.threads=1, train.checkpoint_every=2, "
      "run.out_dir={}]\n{}",
      kSrc, steps, (dir / "ckpt").string(), body);
  return file.string();
}

std::vector<std::string> labels(const ssr::sweep::Spec& s, const std::string& axis) {
  std::vector<std::string> v;
  for (const auto& j : s.jobs) v.push_back(j.label(axis));
  return v;
}

// Job number -> how many rows of the sweep finished it.
std::map<int64_t, int> finished_per_job(const ssr::store::Store& s, int64_t sweep) {
  std::map<int64_t, int> n;
  for (const auto& r : s.sweep_runs(sweep))
    if (r.status == "finished") ++n[*r.job_num];
  return n;
}

// Pids of processes whose command line contains every one of `parts`.
std::vector<pid_t> pids_with(const std::vector<std::string>& parts) {
  std::vector<pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const auto name = e.path().filename().string();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream f(e.path() / "cmdline");
    std::string cmd((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::replace(cmd.begin(), cmd.end(), '\0', ' ');
    bool all = true;
    for (const auto& p : parts) all = all && cmd.find(p) != std::string::npos;
    if (all) out.push_back(std::stoi(name));
  }
  return out;
}

}  // namespace

TEST_CASE("comma lists, ranges and their bracket rules", "[sweep]") {
  struct Case {
    std::string text;
    std::vector<std::string> values;
  };
  const std::vector<Case> lists = {
      {"1e-4,1e-3,1e-2", {"1e-4", "1e-3", "1e-2"}},
      {"a, b ,c", {"a", "b", "c"}},
      {"[valid,test],[test]", {"[valid,test]", "[test]"}},
      {"single", {"single"}},
  };
  for (const auto& c : lists) CHECK(ssr::sweep::split_top_level(c.text) == c.values);
  const std::vector<Case> ranges = {
      {"range(0,4)", {"0", "1", "2", "3"}},
      {"range(1, 10, 4)", {"1", "5", "9"}},
      {"range(3,0,-1)", {"3", "2", "1"}},
      {"range(0.1,0.4,0.1)", {"0.1", "0.2", "0.3"}},  // 0.1 + 2 * 0.1 labelled as typed, not 0.30000000000000004
      {"range(1e-3,4e-3,1e-3)", {"0.001", "0.002", "0.003"}},
  };
  for (const auto& c : ranges) CHECK(*ssr::sweep::expand_range(c.text) == c.values);
  CHECK(!ssr::sweep::expand_range("1,2"));
  for (const char* bad : {"range(1)", "range(0,4,0)", "range(0,4,-1)", "range(a,4)"})
    CHECK_THROWS_AS(ssr::sweep::expand_range(bad), ConfigError);
}

TEST_CASE("a plain config is a multirun of its command-line axes, and a command-line seed axis replaces the file's",
          "[sweep]") {
  // `ssr sweep CONFIG k=a,b --seeds N`: the config is the base, no sweep file needed.
  auto r = run(fmt::format("sweep {}/experiments/demo.yaml router=ssr_l router.p=0.01,0.1 --seeds 2 --dry-run", kSrc));
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("demo.yaml: 4 jobs") != std::string::npos);
  CHECK(r.out.find("router.p=0.01 run.seed=1") != std::string::npos);
  CHECK(r.out.find("router.p=0.1 run.seed=2") != std::string::npos);
  r = run(fmt::format("sweep {}/experiments/demo.yaml --scale demo --dry-run", kSrc));
  CHECK(r.code == 2);
  CHECK(r.out.find("is a config, not a sweep file with scales") != std::string::npos);
  r = run(fmt::format("sweep {}/experiments/demo.yaml run.seed=3 --seeds 2 --dry-run", kSrc));
  CHECK(r.out.find("--seeds: give it or 'run.seed=3', not both") != std::string::npos);
  // A sweep file's seeds give way to the command line's, one value or several.
  const auto dir = temp_dir("sweep", "seeds");
  const auto file = write_sweep(dir, "grid:\n  router.name: [vanilla, lb]\nseeds: [1, 2]\n");
  auto s = ssr::sweep::load(file, {"run.seed=range(1,4)"});
  CHECK(labels(s, "run.seed") == std::vector<std::string>{"1", "2", "3", "1", "2", "3"});
  s = ssr::sweep::load(file, {"run.seed=7"});
  CHECK(labels(s, "run.seed") == std::vector<std::string>{"7", "7"});
  CHECK(s.jobs[1].config.i("run.seed") == 7);
}

TEST_CASE("a sweep expands variants, grid, command-line axes and seeds in a fixed order", "[sweep]") {
  const auto dir = temp_dir("sweep", "expand");
  const auto file = write_sweep(dir,
                                "variants:\n  ssr_s: [router=ssr_s]\n  ssr_l: [router=ssr_l]\n"
                                "  noisy: {overrides: [router=noisy], cross: [run.seed]}\n"
                                "grid:\n  router.xi: [0.5, 1]\nseeds: [1, 2]\n");
  const auto s = ssr::sweep::load(file, {"router.p=1e-3,1e-2", "train.lr=1e-3"});
  // ssr_s and ssr_l: 2 xi x 2 p x 2 seeds each; noisy: only its 2 seeds.
  REQUIRE(s.jobs.size() == 18);
  CHECK(s.jobs[0].describe() == "variant=ssr_s router.xi=0.5 router.p=1e-3 run.seed=1");
  CHECK(s.jobs[1].describe() == "variant=ssr_s router.xi=0.5 router.p=1e-3 run.seed=2");
  CHECK(s.jobs[8].describe() == "variant=ssr_l router.xi=0.5 router.p=1e-3 run.seed=1");
  CHECK(s.jobs[16].describe() == "variant=noisy run.seed=1");
  CHECK(s.jobs[9].config.f("router.p") == 1e-3);
  CHECK(s.jobs[10].config.f("router.p") == 1e-2);
  CHECK(s.jobs[12].config.f("router.xi") == 1.0);
  for (const auto& j : s.jobs) CHECK(j.config.f("train.lr") == 1e-3);  // a plain override reaches every job
  CHECK(s.jobs[16].config.s("router.name") == "noisy");
  std::set<std::string> hashes;
  for (const auto& j : s.jobs) hashes.insert(j.config.hash());
  CHECK(hashes.size() == 18);
  CHECK(ssr::sweep::load(file, {"router.p=1e-3,1e-2", "train.lr=1e-3"}).plan_hash() == s.plan_hash());
  CHECK(ssr::sweep::load(file, {"router.p=1e-3,1e-2"}).plan_hash() != s.plan_hash());
}

TEST_CASE("order: seeds-first runs every arm of a seed before the next seed", "[sweep]") {
  const auto dir = temp_dir("sweep", "order");
  const std::string body =
      "variants:\n  a: [router=vanilla]\n  b: [router=lb]\ngrid:\n  train.lr: [1e-3, 2e-3]\n"
      "seeds: [3, 1]\n";
  const auto axes = ssr::sweep::load(write_sweep(dir, body), {});
  const auto seeds = ssr::sweep::load(write_sweep(dir, body + "order: seeds-first\n"), {});
  REQUIRE(seeds.jobs.size() == 8);
  CHECK(axes.jobs[1].describe() == "variant=a train.lr=1e-3 run.seed=1");
  const std::vector<std::string> want = {"a 1e-3 3", "a 2e-3 3", "b 1e-3 3", "b 2e-3 3",
                                         "a 1e-3 1", "a 2e-3 1", "b 1e-3 1", "b 2e-3 1"};
  for (size_t i = 0; i < want.size(); ++i) {
    const auto& j = seeds.jobs[i];
    CHECK(j.num == static_cast<int64_t>(i));
    CHECK(j.label("variant") + " " + j.label("train.lr") + " " + j.label("run.seed") == want[i]);
  }
  std::set<std::string> a, b;  // the same jobs, in another order
  for (size_t i = 0; i < 8; ++i) a.insert(axes.jobs[i].config.hash()), b.insert(seeds.jobs[i].config.hash());
  CHECK(a == b);
  CHECK_THROWS_WITH(ssr::sweep::load(write_sweep(dir, body + "order: seed\n"), {}),
                    Catch::Contains("order: 'seed' is not an order (axes, seeds-first)"));
}

TEST_CASE("a variant and an axis that set one key are refused, not silently merged", "[sweep]") {
  const auto dir = temp_dir("sweep", "clash");
  for (const std::string body : {"variants:\n  a: [router=lb]\ngrid:\n  router: [vanilla, zloss]\n",
                                 "variants:\n  a: [router=ssr_l, router.p=0.1]\ngrid:\n  router.p: [0.2, 0.3]\n"}) {
    INFO(body);
    CHECK_THROWS_WITH(ssr::sweep::load(write_sweep(dir, body), {}),
                      Catch::Contains("variant a sets router") && Catch::Contains("axis sets it too"));
  }
  // A command-line axis too; a variant crossed only with seeds leaves the grid's key alone.
  CHECK_THROWS_WITH(ssr::sweep::load(write_sweep(dir, "variants:\n  a: [train.lr=1e-3]\n"), {"train.lr=1e-3,2e-3"}),
                    Catch::Contains("variant a sets train.lr and the train.lr axis"));
  const auto ok =
      ssr::sweep::load(write_sweep(dir,
                                   "variants:\n  a: {overrides: [router=lb], cross: [run.seed]}\n  b: [router=ssr_l]\n"
                                   "grid:\n  router.p: [0.1, 0.2]\nseeds: [1]\n"),
                       {});
  CHECK(ok.jobs.size() == 3);
  CHECK(ok.jobs[0].config.s("router.name") == "lb");
}

TEST_CASE("seeded random search is reproducible and stays within its bounds", "[sweep]") {
  const auto dir = temp_dir("sweep", "random");
  auto body = [](int seed) {
    return fmt::format(
        "random:\n  n: 20\n  seed: {}\n  params:\n    router.p: {{log_uniform: [1e-5, 1e-1]}}\n"
        "    router.xi: {{uniform: [0.1, 1]}}\n    router.max_iter: {{int_uniform: [10, 12]}}\n"
        "    router.cost: {{values: [linear, softmax]}}\n",
        seed);
  };
  const auto a = ssr::sweep::load(write_sweep(dir, body(7)), {"router=ssr_l"});
  const auto b = ssr::sweep::load(write_sweep(dir, body(7)), {"router=ssr_l"});
  const auto c = ssr::sweep::load(write_sweep(dir, body(8)), {"router=ssr_l"});
  REQUIRE(a.jobs.size() == 20);
  CHECK(labels(a, "router.p") == labels(b, "router.p"));
  CHECK(labels(a, "router.p") != labels(c, "router.p"));
  std::set<int64_t> iters;
  std::set<std::string> costs;
  for (const auto& j : a.jobs) {
    CHECK(j.config.f("router.p") >= 1e-5);
    CHECK(j.config.f("router.p") <= 1e-1);
    CHECK(j.config.f("router.xi") >= 0.1);
    CHECK(j.config.f("router.xi") <= 1);
    iters.insert(j.config.i("router.max_iter"));
    costs.insert(j.config.s("router.cost"));
  }
  CHECK(iters == std::set<int64_t>{10, 11, 12});
  CHECK(costs == std::set<std::string>{"linear", "softmax"});
}

TEST_CASE("bad sweep files are rejected with the file, key or job named", "[sweep]") {
  const auto dir = temp_dir("sweep", "bad");
  struct Case {
    std::string body, message;
  };
  const std::vector<Case> cases = {
      {"gird:\n  router.p: [1]\n", "unknown sweep key 'gird'"},
      {"grid:\n  router.pp: [1, 2]\n", "router.pp"},
      {"grid:\n  train.lr: [0.1, -2]\n", "job 1 (train.lr=-2)"},  // lr >= 0
      {"random:\n  n: 2\n  params:\n    router.p: {gauss: [0, 1]}\n", "unknown distribution 'gauss'"},
      {"random:\n  n: 2\n  params:\n    router.p: {log_uniform: [0, 1]}\n", "bounds must be positive"},
      {"variants:\n  a: {overrides: [router=lb], crosss: []}\n", "variants.a.crosss: unknown key"},
      {"scales:\n  demo: [train.steps=2]\n", ""},  // valid: scales alone are fine
  };
  for (const auto& c : cases) {
    const auto file = write_sweep(dir, c.body);
    INFO(c.body);
    if (c.message.empty()) {
      CHECK_NOTHROW(ssr::sweep::load(file, {}));
      CHECK_THROWS_WITH(ssr::sweep::load(file, {}, "paper"), Catch::Contains("no such scale"));
      continue;
    }
    CHECK_THROWS_WITH(ssr::sweep::load(file, {}), Catch::Contains(c.message));
  }
  CHECK_THROWS_WITH(ssr::sweep::load((dir / "none.yaml").string(), {}), Catch::Contains("sweep file not found"));
  // The CLI: exit code 2, one line, nothing written.
  const auto db = (dir / "runs.db").string();
  auto r = run(fmt::format("sweep {} --db {}", write_sweep(dir, "gird: {}\n"), db));
  CHECK(r.code == 2);
  CHECK(!fs::exists(db));
  r = run(fmt::format("sweep {} train.lr=0.1,0.2 --dry-run --db {}", write_sweep(dir, ""), db));
  CHECK(r.code == 0);
  CHECK(r.out.find("job 1") != std::string::npos);
  CHECK(!fs::exists(db));
  // An axis over a compute path alone would plan one run twice (the second "reused").
  CHECK_NOTHROW(ssr::sweep::check_distinct_runs(ssr::sweep::load(write_sweep(dir, ""), {"router.name=vanilla,lb"})));
  const auto impl = write_sweep(dir, "grid:\n  model.expert_impl: [loop, grouped]\n");
  CHECK_NOTHROW(ssr::sweep::load(impl, {}));  // bench step and reports may expand it
  CHECK_THROWS_WITH(ssr::sweep::check_distinct_runs(ssr::sweep::load(impl, {})),
                    Catch::Contains("jobs 0 (model.expert_impl=loop) and 1 (model.expert_impl=grouped) are one run") &&
                        Catch::Contains("outside the configuration hash (model.expert_impl)"));
  r = run(fmt::format("sweep {} --db {}", impl, db));
  CHECK(r.code == 2);
  CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  CHECK(!fs::exists(db));
}

TEST_CASE("every sweep file of experiments/ expands at each of its scales to distinct runs", "[sweep]") {
  int files = 0;
  for (const auto& e : fs::directory_iterator(kSrc + "/experiments")) {
    const auto file = e.path().string();
    if (e.path().extension() != ".yaml" || !ssr::config::is_sweep_file(file)) continue;
    ++files;
    std::vector<std::string> scales;
    if (const auto sc = YAML::LoadFile(file)["scales"])
      for (const auto& kv : sc) scales.push_back(kv.first.as<std::string>());
    if (scales.empty()) scales.push_back("");
    for (const auto& scale : scales) {
      INFO(file << " --scale " << scale);
      const auto spec = ssr::sweep::load(file, {}, scale);
      CHECK(!spec.jobs.empty());
      CHECK_NOTHROW(ssr::sweep::check_distinct_runs(spec));
    }
  }
  CHECK(files >= 10);
}

TEST_CASE("planning and running a sweep is idempotent, and equal configs are reused across sweeps", "[sweep]") {
  const auto dir = temp_dir("sweep", "idem");
  const auto db = (dir / "runs.db").string();
  const auto file = write_sweep(dir, "grid:\n  router.name: [vanilla, lb]\nseeds: [1, 2]\n");
  auto r = run(fmt::format("sweep {} --jobs 2 --db {} --quiet", file, db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  {
    ssr::store::Store s(db);
    REQUIRE(s.runs().size() == 4);
    CHECK(finished_per_job(s, 1) == std::map<int64_t, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}});
  }
  r = run(fmt::format("sweep {} --jobs 2 --db {}", file, db));
  REQUIRE(r.code == 0);
  CHECK(r.out.find("already planned") != std::string::npos);
  // A second study sharing two of these configs runs only the new ones.
  const auto file2 = write_sweep(dir, "grid:\n  router.name: [lb, zloss]\nseeds: [1, 2]\n");
  r = run(fmt::format("sweep {} --jobs 2 --db {}", file2, db));
  REQUIRE(r.code == 0);
  ssr::store::Store s(db);
  CHECK(s.runs().size() == 6);
  const auto st = ssr::sweep::job_status(s, *s.sweep(2), 60);
  std::vector<std::string> states;
  for (const auto& j : st) states.push_back(j.status);
  CHECK(states == std::vector<std::string>{"reused", "reused", "finished", "finished"});
  // The sweep's selection holds its reused runs too.
  r = run(fmt::format("runs --where sweep=2 --columns id --format csv --db {}", db));
  CHECK(r.out == "id\n3\n4\n5\n6\n");
  r = run(fmt::format("runs --where sweep!=2 --columns id --format csv --db {}", db));
  CHECK(r.out == "id\n1\n2\n");
}

TEST_CASE("a sweep job whose run was deleted shows as missing, and --resume or the same plan runs it again",
          "[sweep]") {
  const auto dir = temp_dir("sweep", "deleted");
  const auto db = (dir / "runs.db").string();
  const auto file = write_sweep(dir, "grid:\n  router.name: [vanilla, lb]\n");
  REQUIRE(run(fmt::format("sweep {} --db {} --quiet", file, db)).code == 0);
  REQUIRE(run(fmt::format("rm 2 --yes --db {}", db)).code == 0);
  auto r = run(fmt::format("sweep status 1 --db {}", db));
  INFO(r.out);
  CHECK(r.out.find("[1/2 done, 1 missing]") != std::string::npos);
  r = run(fmt::format("sweep --resume 1 --db {}", db));
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("requeued 0 job(s), planned 1 whose run was deleted") != std::string::npos);
  CHECK(r.out.find("[2/2 done]") != std::string::npos);
  int64_t again = 0;
  for (const auto& row : ssr::store::Store(db).sweep_runs(1))
    if (row.job_num == 1) again = row.id;
  REQUIRE(run(fmt::format("rm {} --yes --db {}", again, db)).code == 0);
  r = run(fmt::format("sweep {} --db {}", file, db));
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("already planned") != std::string::npos);
  CHECK(r.out.find("[2/2 done]") != std::string::npos);
  ssr::store::Store s(db);
  CHECK(finished_per_job(s, 1) == std::map<int64_t, int>{{0, 1}, {1, 1}});
}

TEST_CASE("two stores that share run.out_dir keep their checkpoints apart", "[sweep]") {
  // Run ids are per store: store b's run 1 must not resume from store a's run 1 (a sweep job
  // always looks for its run's checkpoint).
  const auto dir = temp_dir("sweep", "stores");
  const auto a = (dir / "a.db").string(), b = (dir / "b.db").string();
  REQUIRE(run(fmt::format("sweep {} --db {} --quiet", write_sweep(dir, "", 6), a)).code == 0);
  REQUIRE(run(fmt::format("sweep {} --db {} --quiet", write_sweep(dir, "", 4), b)).code == 0);
  ssr::store::Store sa(a), sb(b);
  CHECK(sa.id() != sb.id());
  CHECK(sa.id().size() == 16);
  REQUIRE(sb.runs().size() == 1);
  const auto rb = sb.runs()[0];
  CHECK(rb.id == 1);
  CHECK(rb.status == "finished");
  CHECK(ssr::testing::series(sb, rb.id, "train", "loss").size() == 2);  // steps 2 and 4, none skipped
  for (const auto* s : {&sa, &sb}) CHECK(fs::exists(dir / "ckpt" / s->id() / "1" / "last.pt"));
}

TEST_CASE("a sweep whose worker is killed with SIGKILL mid-job resumes and finishes every job once", "[sweep]") {
  const auto dir = temp_dir("sweep", "kill");
  const auto db = (dir / "runs.db").string();
  const auto file = write_sweep(dir, "grid:\n  router.name: [vanilla, lb, zloss]\n", 60);
  const pid_t sweep_pid =
      spawn_ssr((dir / "sweep.log").string(), {"sweep", file, "--jobs", "1", "--db", db, "--quiet"});
  REQUIRE(sweep_pid > 0);
  // Wait until the first job has trained a few steps, then kill its worker outright.
  bool killed = false;
  for (int i = 0; i < 600 && !killed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!fs::exists(db)) continue;
    ssr::store::Store s(db);
    for (const auto& r : s.runs())
      if (r.status == "running" && r.step >= 4)
        for (pid_t pid : pids_with({"sweep run --sweep", db})) {
          kill(pid, SIGKILL);
          killed = true;
        }
  }
  REQUIRE(killed);
  int status = 0;
  waitpid(sweep_pid, &status, 0);
  CHECK(WEXITSTATUS(status) == 1);  // the pool finished the others and reports the interrupted job
  {
    ssr::store::Store s(db);
    auto jobs = ssr::sweep::job_status(s, *s.sweep(1), 60);
    CHECK(ssr::sweep::summarize(jobs).interrupted == 1);  // killed from outside: not a failure of the job
    CHECK(ssr::sweep::summarize(jobs).failed == 0);
    CHECK(ssr::sweep::summarize(jobs).done == 2);
  }
  auto r = run(fmt::format("sweep --resume 1 --db {}", db));  // no --retry-failed needed
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("requeued 1 job") != std::string::npos);
  ssr::store::Store s(db);
  CHECK(s.runs().size() == 3);  // the killed job reran in its own row
  CHECK(finished_per_job(s, 1) == std::map<int64_t, int>{{0, 1}, {1, 1}, {2, 1}});
}

TEST_CASE("Ctrl-C on a sweep stops it with 130, the job is interrupted, and --resume continues it", "[sweep]") {
  const auto dir = temp_dir("sweep", "sigint");
  const auto db = (dir / "runs.db").string();
  const auto file = write_sweep(dir, "grid:\n  router.name: [vanilla, lb, zloss]\n", 60);
  const pid_t sweep_pid =
      spawn_ssr((dir / "sweep.log").string(), {"sweep", file, "--jobs", "1", "--db", db, "--quiet"});
  REQUIRE(sweep_pid > 0);
  // SIGINT to the parent once the first job has trained a few steps; two jobs are still queued.
  bool sent = false;
  for (int i = 0; i < 600 && !sent; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!fs::exists(db)) continue;
    ssr::store::Store s(db);
    for (const auto& r : s.runs())
      if (r.status == "running" && r.step >= 4 && !sent) {
        kill(sweep_pid, SIGINT);
        sent = true;
      }
  }
  REQUIRE(sent);
  int status = 0;
  waitpid(sweep_pid, &status, 0);
  REQUIRE(WIFEXITED(status));
  CHECK(WEXITSTATUS(status) == 130);
  {
    ssr::store::Store s(db);
    const auto sum = ssr::sweep::summarize(ssr::sweep::job_status(s, *s.sweep(1), 60));
    CHECK(sum.interrupted == 1);
    CHECK(sum.queued == 2);
    CHECK(sum.failed == 0);
  }
  // Interrupted is not failed: no --retry-failed needed, and the job continues in its own row.
  auto r = run(fmt::format("sweep --resume 1 --db {}", db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("requeued 1 job") != std::string::npos);
  ssr::store::Store s(db);
  CHECK(s.runs().size() == 3);
  CHECK(finished_per_job(s, 1) == std::map<int64_t, int>{{0, 1}, {1, 1}, {2, 1}});
}

TEST_CASE("a job whose process is gone from this host is requeued at once, not after it goes stale", "[sweep]") {
  const auto dir = temp_dir("sweep", "gone");
  const auto db = (dir / "runs.db").string();
  const auto file = write_sweep(dir, "grid:\n  router.name: [vanilla]\n", 60);
  REQUIRE(run(fmt::format("sweep {} --launcher slurm --db {}", file, db)).code == 0);  // plan only
  const pid_t pid = spawn_ssr((dir / "worker.log").string(), {"sweep", "run", "--sweep", "1", "--db", db, "--quiet"});
  REQUIRE(pid > 0);
  bool killed = false;
  for (int i = 0; i < 600 && !killed; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ssr::store::Store s(db);
    for (const auto& r : s.runs())
      if (r.status == "running" && r.step >= 4) {
        kill(pid, SIGKILL);  // the worker and, with it, any chance to record its end
        killed = true;
      }
  }
  REQUIRE(killed);
  waitpid(pid, nullptr, 0);
  // An hour of --stale-after: only the missing process can make the job count as dead. Planned
  // for Slurm, it resumes here when asked to.
  auto r = run(fmt::format("sweep --resume 1 --launcher local --stale-after 3600 --db {}", db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("requeued 1 job") != std::string::npos);
  ssr::store::Store s(db);
  CHECK(finished_per_job(s, 1) == std::map<int64_t, int>{{0, 1}});
}

TEST_CASE("concurrent workers on one store take every job exactly once", "[sweep]") {
  const auto dir = temp_dir("sweep", "workers");
  const auto db = (dir / "runs.db").string();
  const auto file = write_sweep(dir, "grid:\n  router.name: [vanilla, lb, zloss]\nseeds: [1, 2]\n", 4);
  // Plan only: the slurm launcher writes the rows and a script.
  auto r = run(fmt::format("sweep {} --launcher slurm --db {}", file, db));
  REQUIRE(r.code == 0);
  std::vector<pid_t> kids;
  for (int w = 0; w < 3; ++w) {
    const pid_t pid = spawn_ssr("/dev/null", {"sweep", "run", "--sweep", "1", "--db", db, "--quiet"});
    REQUIRE(pid > 0);
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WEXITSTATUS(status) == 0);
  }
  ssr::store::Store s(db);
  CHECK(s.runs().size() == 6);
  CHECK(finished_per_job(s, 1) == std::map<int64_t, int>{{0, 1}, {1, 1}, {2, 1}, {3, 1}, {4, 1}, {5, 1}});
}

TEST_CASE("the Slurm array script takes its options from the scale over the file, then --slurm", "[sweep]") {
  CHECK(ssr::sweep::array_ranges({0, 1, 2, 5, 7, 8}) == "0-2,5,7-8");
  CHECK(ssr::sweep::array_ranges({3}) == "3");
  const auto dir = temp_dir("sweep", "slurm");
  const auto db = (dir / "runs.db").string();
  const auto file = write_sweep(dir,
                                "scales:\n  gpu: {seeds: [1], slurm: {gpus-per-task: 1, mem: 64G}}\n"
                                "  cpu: {seeds: [2], slurm: {gpus-per-task: 0, mem: 4G}}\n"
                                "grid:\n  router.name: [vanilla, lb, zloss]\n"
                                "slurm: {time: \"01:00:00\", gpus-per-task: 2, parallel: 2}\n",
                                4);
  const auto read = [](const fs::path& p) {
    std::ifstream f(p);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  auto r = run(fmt::format("sweep {} --scale gpu --launcher slurm --db {}", file, db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  std::string text = read(dir / "sweeps" / "sweep-1.sbatch");
  for (const char* line :
       {"#SBATCH --array=0-2%2\n", "#SBATCH --time=01:00:00\n", "#SBATCH --gpus-per-task=1\n", "#SBATCH --mem=64G\n",
        "#SBATCH --job-name=ssr-sweep\n", "sweep run --sweep 1 --job \"$SLURM_ARRAY_TASK_ID\""})
    CHECK(text.find(line) != std::string::npos);
  CHECK(text.find("parallel") == std::string::npos);
  // The CPU scale drops the file's GPU line; --slurm goes over both, and 0 drops an option.
  r = run(
      fmt::format("sweep {} --scale cpu --launcher slurm --slurm partition=debug --slurm time=0 --db {}", file, db));
  REQUIRE(r.code == 0);
  text = read(dir / "sweeps" / "sweep-2.sbatch");
  CHECK(text.find("gpus-per-task") == std::string::npos);
  CHECK(text.find("#SBATCH --time") == std::string::npos);
  CHECK(text.find("#SBATCH --partition=debug\n") != std::string::npos);
  CHECK(text.find("#SBATCH --mem=4G\n") != std::string::npos);
  // --dry-run prints the script under the id the plan has, and writes nothing.
  fs::remove(dir / "sweeps" / "sweep-2.sbatch");
  r = run(fmt::format("sweep {} --scale cpu --launcher slurm --dry-run --slurm qos=low --db {}", file, db));
  CHECK(r.code == 0);
  CHECK(r.out.find("script for sweep 2 (already planned)") != std::string::npos);
  CHECK(r.out.find("#SBATCH --qos=low\n") != std::string::npos);
  CHECK(!fs::exists(dir / "sweeps" / "sweep-2.sbatch"));
  // Bad options: one line naming the flag.
  for (const auto& [args, says] : std::vector<std::pair<std::string, std::string>>{
           {"--launcher slurm --slurm partition", "--slurm: 'partition': expected KEY=VALUE, or an sbatch flag"},
           {"--launcher slurm --slurm Part=x", "--slurm: 'Part' is not an sbatch option name"},
           {"--launcher slurm --slurm array=1-3", "--slurm: array: the array is the sweep's queued jobs"},
           {"--launcher slurm --slurm parallel=two", "--slurm: parallel: 'two' is not a whole number"},
           {"--slurm partition=cpu", "--slurm: sbatch options apply only with --launcher slurm"}}) {
    r = run(fmt::format("sweep {} --scale cpu {} --db {}", file, args, db));
    INFO(args << "\n" << r.out);
    CHECK(r.code == 2);
    CHECK(r.out.find(says) != std::string::npos);
  }
}

TEST_CASE("a site's sbatch options come from the user file and SSR_SLURM, under the sweep file's", "[sweep]") {
  const auto dir = temp_dir("sweep", "site");
  fs::create_directories(dir / "ssr");
  std::ofstream(dir / "ssr" / "slurm.yaml") << "partition: cpu\naccount: lab\nqos: normal\n";
  setenv("XDG_CONFIG_HOME", dir.c_str(), 1);
  setenv("SSR_SLURM", "qos=high,mem=8G", 1);
  const auto o = ssr::sweep::slurm_options({{"mem", "4G"}, {"time", "1:00:00"}}, {"account=0"});
  CHECK(o == nlohmann::json{
                 {"partition", "cpu"}, {"account", nullptr}, {"qos", "high"}, {"mem", "4G"}, {"time", "1:00:00"}});
  setenv("SSR_SLURM", "qos", 1);
  CHECK_THROWS_WITH(ssr::sweep::slurm_options({}, {}), Catch::Contains("SSR_SLURM: 'qos'"));
  unsetenv("SSR_SLURM");
  std::ofstream(dir / "ssr" / "slurm.yaml") << "partition: [a, b]\n";
  CHECK_THROWS_WITH(ssr::sweep::slurm_options({}, {}), Catch::Contains("slurm.yaml: partition: expected one value"));
  unsetenv("XDG_CONFIG_HOME");
}

TEST_CASE("ssr bench step times a sweep's jobs and the report's overheads use that session", "[sweep][bench]") {
  const auto dir = temp_dir("sweep", "bench");
  const auto file = write_sweep(dir,
                                "variants:\n  vanilla: [router=vanilla]\n  ssr_l: [router=ssr_l]\n"
                                "grid:\n  model.block: [vanilla, momentum]\n"
                                "reports:\n  ovh:\n    figure: bars\n    x: variant\n    series: [model.block]\n"
                                "    baseline: vanilla\n    y: {overhead: step}\n");
  const auto db = (dir / "runs.db").string();
  auto r = run(
      fmt::format("bench step {} --where model.block=momentum --warmup 0 --repeats 3 --vocab 300 --db {}", file, db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("| variant=ssr_l model.block=momentum |") != std::string::npos);
  CHECK(r.out.find("vs vanilla |") != std::string::npos);
  CHECK(r.out.find("stored as bench session 1 in " + db) != std::string::npos);
  CHECK(r.out.find(", 1 threads;") != std::string::npos);  // the sweep's run.threads
  // Another thread count is another timing: stored so, and not what the report below uses.
  r = run(fmt::format(
      "bench step {} --where model.block=momentum --warmup 0 --repeats 2 --vocab 300 --threads 2 --db {}", file, db));
  REQUIRE(r.code == 0);
  CHECK(r.out.find(", 2 threads;") != std::string::npos);
  {
    ssr::store::Store s(db);
    const auto spec = ssr::sweep::load(file, {});
    std::map<std::string, size_t> cases;  // job description -> stored cases under its hash
    for (const auto& j : spec.jobs) cases[j.describe()] = s.bench_cases(j.config.hash()).size();
    CHECK(cases == std::map<std::string, size_t>{{"variant=vanilla model.block=vanilla", 0},
                                                 {"variant=vanilla model.block=momentum", 2},
                                                 {"variant=ssr_l model.block=vanilla", 0},
                                                 {"variant=ssr_l model.block=momentum", 2}});
    const auto c = s.bench_cases(spec.jobs.back().config.hash());  // newest first
    REQUIRE(c.size() == 2);
    CHECK(c[0].config["run"]["threads"] == 2);
    CHECK(c[1].config["run"]["threads"] == 1);
    CHECK(c[1].seconds.size() == 3);
    CHECK(c[1].tokens_per_step == 4 * 16);
    CHECK(c[1].label == "variant=ssr_l model.block=momentum");
  }
  r = run(fmt::format("report ovh --experiments {} --db {} --out {}", dir.string(), db, (dir / "fig").string()));
  REQUIRE(r.code == 0);
  CHECK(r.out.find("Step-time overheads: 1 job pairs timed interleaved by `ssr bench step` (session 1;") !=
        std::string::npos);
  CHECK(r.out.find("Built from 2 of 4 planned runs") != std::string::npos);

  // Bad input: one line naming the flag.
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"--routers vanilla,lb", "--routers: " + file + " is a sweep file"},
      {"--where nope=1", "--where nope=1: " + file + " has no axis nope"},
      {"--where variant=ssr_l", "has no vanilla job to compare with"},
      {"--where model.block=other", "--where: no job of " + file + " matches"},
      {"run.threads=1,2 --where model.block=momentum",
       "run.threads: variant=vanilla model.block=momentum run.threads=1 has 1"},
  };
  for (const auto& [flags, message] : bad) {
    const auto b = run(fmt::format("bench step {} {} --repeats 1 --db {}", file, flags, db));
    INFO(flags << ": " << b.out);
    CHECK(b.code == 2);
    CHECK(b.out.find(message) != std::string::npos);
  }
  const auto cfg = run(fmt::format("bench step {}/experiments/demo.yaml --where variant=lb --db {}", kSrc, db));
  CHECK(cfg.code == 2);
  CHECK(cfg.out.find("--scale/--where: " + kSrc + "/experiments/demo.yaml is a run config") != std::string::npos);
}

TEST_CASE("sbatch options: flags, values sbatch reads back, and SSR_SLURM with commas inside values", "[sweep]") {
  // sbatch's #SBATCH parser: double quotes group words, a backslash escapes, an unescaped # ends the line.
  for (const auto& [value, line] :
       std::vector<std::pair<std::string, std::string>>{{"cpu", "cpu"},
                                                        {"two words", "\"two words\""},
                                                        {"a#b", "\"a\\#b\""},
                                                        {"say \"hi\"", "\"say \\\"hi\\\"\""},
                                                        {"C:\\x", "\"C:\\\\x\""},
                                                        {"n[1-2],n4", "n[1-2],n4"}}) {
    INFO(value);
    CHECK(ssr::sweep::sbatch_quote(value) == line);
  }
  // No site file: a scratch config folder.
  setenv("XDG_CONFIG_HOME", temp_dir("sweep", "no_site").c_str(), 1);
  setenv("SSR_SLURM", "exclude=n1,n2;partition=cpu;requeue", 1);
  auto o = ssr::sweep::slurm_options({{"hold", false}, {"no-kill", true}}, {"comment=two words # x", "signal=0"});
  CHECK(o == nlohmann::json{{"exclude", "n1,n2"},
                            {"partition", "cpu"},
                            {"requeue", true},
                            {"hold", nullptr},
                            {"no-kill", true},
                            {"comment", "two words # x"},
                            {"signal", nullptr}});
  setenv("SSR_SLURM", "partition=cpu,requeue", 1);  // the comma form keeps working, with known flags
  CHECK(ssr::sweep::slurm_options({}, {}) == nlohmann::json{{"partition", "cpu"}, {"requeue", true}});
  setenv("SSR_SLURM", "exclude=n1,n2", 1);
  CHECK_THROWS_WITH(ssr::sweep::slurm_options({}, {}),
                    Catch::Contains("SSR_SLURM: 'n2' is neither KEY=VALUE nor an sbatch flag (is it part of "
                                    "'exclude=n1'?); when a value holds commas, separate the options with ';'"));
  unsetenv("SSR_SLURM");
  CHECK_THROWS_WITH(ssr::sweep::slurm_options({{"mem", true}}, {}),
                    Catch::Contains("the sweep file's slurm: 'mem': expected KEY=VALUE, or an sbatch flag"));
  unsetenv("XDG_CONFIG_HOME");
}

TEST_CASE("squeue's task list: one task per line, folded pending ranges expanded", "[sweep]") {
  CHECK(ssr::sweep::parse_squeue("123_4\n125\n  130_[1-3,7%2]\n\n") ==
        std::set<std::string>{"123_4", "125", "130_1", "130_2", "130_3", "130_7"});
  CHECK(ssr::sweep::parse_squeue("").empty());
}

TEST_CASE(
    "a Slurm sweep's script asks for the lead-time signal, requeues on request, and a resume keeps its "
    "options",
    "[sweep]") {
  const auto dir = temp_dir("sweep", "slurm_resume");
  const auto db = (dir / "runs.db").string();
  const auto file = write_sweep(dir, "grid:\n  router.name: [vanilla, lb]\n", 4);
  const auto read = [](const fs::path& p) {
    std::ifstream f(p);
    return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  };
  auto r = run(fmt::format(
      "sweep {} --launcher slurm --slurm requeue --slurm mem=2G --slurm 'comment=two words' --db {}", file, db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  std::string text = read(dir / "sweeps" / "sweep-1.sbatch");
  for (const char* line : {"#SBATCH --requeue\n", "#SBATCH --mem=2G\n", "#SBATCH --comment=\"two words\"\n",
                           "#SBATCH --signal=B:USR1@120\n", "#SBATCH --open-mode=append\n", "/job-%a.log\n",
                           "scontrol requeue \"$task\"", "trap 'forwarded=1; kill -USR1"})
    CHECK(text.find(line) != std::string::npos);
  // The script runs under bash as written.
  CHECK(shell(fmt::format("bash -n {}", (dir / "sweeps" / "sweep-1.sbatch").string())).code == 0);
  // A resume without --launcher launches as the plan did, with its options and one more.
  r = run(fmt::format("sweep --resume 1 --slurm qos=low --db {}", db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("(Slurm launch, as before)") != std::string::npos);
  text = read(dir / "sweeps" / "sweep-1.attempt-2.sbatch");
  for (const char* line : {"#SBATCH --requeue\n", "#SBATCH --mem=2G\n", "#SBATCH --comment=\"two words\"\n",
                           "#SBATCH --qos=low\n", "/job-%a.attempt-2.log\n", "#SBATCH --array=0-1\n"})
    CHECK(text.find(line) != std::string::npos);
  ssr::store::Store s(db);
  const auto launches = s.launches(1);
  REQUIRE(launches.size() == 2);
  CHECK(launches[1].options == nlohmann::json{"requeue", "mem=2G", "comment=two words", "qos=low"});
  // Without `requeue` the script leaves an interrupted job to `ssr sweep --resume`.
  r = run(fmt::format("sweep {} run.seed=2 --launcher slurm --slurm signal=B:USR1@600 --db {}", file, db));
  REQUIRE(r.code == 0);
  text = read(dir / "sweeps" / "sweep-2.sbatch");
  CHECK(text.find("#SBATCH --signal=B:USR1@600\n") != std::string::npos);
  CHECK(text.find("scontrol requeue") == std::string::npos);
  // A data-parallel job asks for a CPU per rank.
  r = run(fmt::format("sweep {} run.nproc=2 run.seed=3 --launcher slurm --db {}", file, db));
  REQUIRE(r.code == 0);
  CHECK(read(dir / "sweeps" / "sweep-3.sbatch").find("#SBATCH --cpus-per-task=2\n") != std::string::npos);
  r = run(fmt::format("sweep --resume 3 --launcher local --submit --db {}", db));
  CHECK(r.code == 2);
  CHECK(r.out.find("--submit: sweep 3 resumes with the local launcher") != std::string::npos);
}

TEST_CASE("SIGUSR1 checkpoints a sweep job and exits 75, and the task run again continues it to the same losses",
          "[sweep]") {
  const auto dir = temp_dir("sweep", "usr1");
  const auto file = write_sweep(dir, "grid:\n  router.name: [vanilla]\n", 40);
  const std::string extra = "train.checkpoint_every=100 run.log_every=1";
  std::vector<std::vector<double>> losses;
  for (const bool interrupt : {false, true}) {
    const auto db = (dir / (interrupt ? "b.db" : "a.db")).string();
    REQUIRE(run(fmt::format("sweep {} {} --launcher slurm --db {}", file, extra, db)).code == 0);  // plan only
    if (interrupt) {
      const pid_t pid = spawn_ssr((dir / "worker.log").string(),
                                  {"sweep", "run", "--sweep", "1", "--job", "0", "--db", db, "--quiet"});
      bool sent = false;
      for (int i = 0; i < 1200 && !sent; ++i) {
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
        ssr::store::Store s(db);
        for (const auto& r : s.runs())
          if (r.status == "running" && r.step >= 6) sent = kill(pid, SIGUSR1) == 0;
      }
      REQUIRE(sent);
      int status = 0;
      waitpid(pid, &status, 0);
      REQUIRE(WIFEXITED(status));
      CHECK(WEXITSTATUS(status) == 75);
      ssr::store::Store s(db);
      const auto row = s.runs().at(0);
      CHECK(row.status == "interrupted");
      CHECK(row.error.find("(checkpoint written there)") != std::string::npos);
      CHECK(row.step < 40);
    }
    // What a requeued Slurm task runs: it takes its interrupted job back and continues it.
    auto r = run(fmt::format("sweep run --sweep 1 --job 0 --db {}", db));
    INFO(r.out);
    CHECK(r.code == 0);
    if (interrupt) CHECK(r.out.find("resumed at step") != std::string::npos);
    ssr::store::Store s(db);
    REQUIRE(s.runs().size() == 1);
    CHECK(s.runs()[0].status == "finished");
    std::vector<double> v;
    for (const auto& m : s.metrics(s.runs()[0].id))
      if (m.split == "train" && m.name == "loss") v.push_back(m.value);
    losses.push_back(v);
  }
  REQUIRE(losses[0].size() == 40);
  CHECK(losses[0] == losses[1]);
}
