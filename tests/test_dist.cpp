// Data-parallel training on c10d Gloo, end to end through `ssr train --nproc 2` on real text:
// two ranks over a global batch train the same model as one process over it, global-batch
// routing equals one router call over all streams, and a killed rank fails the run (one row,
// no hang) which then resumes to the uninterrupted losses.
#include <catch2/catch.hpp>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <set>
#include <sstream>
#include <thread>

#include "harness/config/config.hpp"
#include "harness/dist/dist.hpp"
#include "harness/store/store.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;

namespace {

using ssr::testing::temp_db;

using ssr::testing::kBin;
using ssr::testing::result;
using ssr::testing::run;
using ssr::testing::series;
const std::string kDemo = std::string(SSR_SOURCE_DIR) + "/experiments/demo.yaml";
// 8 streams of 16 tokens; no dropout, so that rank 1's own dropout stream cannot make the
// two-rank run differ from the one-process run.
// A function, not a constant: the temporary root is set by main(), after static initialisation.
std::string tiny_overrides() {
  return "train.batch_size=8 train.seq_len=16 train.warmup=2 eval.batch_size=8 run.log_every=1 run.threads=1 "
         "eval.max_segments=3 train.eval_every=4 train.eval_segments=2 model.dropout=0 run.dist_timeout_s=60 "
         "run.out_dir=" +
         (fs::temp_directory_path() / ("ssr_dist_ckpt_" + std::to_string(::getpid()))).string();
}

// The one run of a store that must hold exactly one.
ssr::store::Run only_run(ssr::store::Store& s) {
  auto runs = s.runs();
  REQUIRE(runs.size() == 1);
  return runs[0];
}

void check_close(const std::vector<double>& a, const std::vector<double>& b, double tol) {
  REQUIRE(a.size() == b.size());
  REQUIRE(!a.empty());
  for (size_t i = 0; i < a.size(); ++i) {
    INFO("index " << i << ": " << a[i] << " vs " << b[i]);
    CHECK(std::abs(a[i] - b[i]) <= tol * std::max(1.0, std::abs(a[i])));
  }
}

// Trains `args` once in one process and once on two ranks, each into its own store.
struct Pair {
  ssr::store::Store one, two;
  ssr::store::Run r1, r2;
};
std::unique_ptr<Pair> train_pair(const std::string& name, const std::string& one_args, const std::string& two_args) {
  const auto db1 = temp_db("dist", name + "_1.db"), db2 = temp_db("dist", name + "_2.db");
  auto a = run(fmt::format("train {} {} {} --db {} --quiet", kDemo, tiny_overrides(), one_args, db1));
  INFO(a.out);
  REQUIRE(a.code == 0);
  auto b = run(fmt::format("train {} {} {} --nproc 2 --db {} --quiet", kDemo, tiny_overrides(), two_args, db2));
  INFO(b.out);
  REQUIRE(b.code == 0);
  std::unique_ptr<Pair> p(new Pair{ssr::store::Store(db1), ssr::store::Store(db2), {}, {}});
  p->r1 = only_run(p->one);
  p->r2 = only_run(p->two);
  return p;
}

// Pids of the processes whose parent is `parent`, by their RANK variable.
std::map<int, pid_t> ranks_of(pid_t parent) {
  std::map<int, pid_t> out;
  for (const auto& e : fs::directory_iterator("/proc")) {
    const std::string name = e.path().filename();
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    std::ifstream stat(e.path() / "stat");
    std::string text((std::istreambuf_iterator<char>(stat)), {});
    const auto close = text.rfind(')');
    if (close == std::string::npos) continue;
    std::istringstream rest(text.substr(close + 2));
    std::string state;
    pid_t ppid = 0;
    rest >> state >> ppid;
    if (ppid != parent) continue;
    std::ifstream env(e.path() / "environ");
    std::string var;
    while (std::getline(env, var, '\0'))
      if (var.rfind("RANK=", 0) == 0) out[std::stoi(var.substr(5))] = std::stoi(name);
  }
  return out;
}

pid_t spawn(const std::vector<std::string>& args) {
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (chdir(SSR_SOURCE_DIR) != 0) _exit(127);
    std::vector<char*> argv{const_cast<char*>(kBin.c_str())};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(kBin.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

std::vector<std::string> words(const std::string& s) {
  std::istringstream in(s);
  std::vector<std::string> out;
  for (std::string w; in >> w;) out.push_back(w);
  return out;
}

// Waits (at most `limit_s`) until the launcher exits; its exit code, or -1 if it did not.
int wait_exit(pid_t pid, double limit_s) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::duration<double>(limit_s);
  while (std::chrono::steady_clock::now() < end) {
    int status = 0;
    if (waitpid(pid, &status, WNOHANG) == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
  return -1;
}

// Polls the store until its run has logged `step`, or the launcher has ended.
int64_t wait_step(const std::string& db, pid_t launcher, int64_t step) {
  int64_t seen = 0;
  for (int i = 0; i < 1200 && seen < step; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (waitpid(launcher, nullptr, WNOHANG) == launcher) break;
    if (!fs::exists(db)) continue;
    ssr::store::Store s(db);
    auto runs = s.runs();
    if (!runs.empty()) seen = runs[0].step;
  }
  return seen;
}

}  // namespace

TEST_CASE("two Gloo ranks train what one process trains over the same global batch", "[dist]") {
  // One process routes 2 micro-batches of 4 streams; two ranks route their own 4 streams each.
  // router=lb: its balance loss depends on which tokens share a router call.
  auto p =
      train_pair("equal", "train.steps=8 router=lb train.batch_split=2", "train.steps=8 router=lb train.batch_split=1");
  CHECK(p->r1.status == "finished");
  CHECK(p->r2.status == "finished");
  CHECK(p->r1.info.world_size == 1);
  CHECK(p->r2.info.world_size == 2);
  CHECK(p->r2.info.backend == "gloo");
  CHECK(p->r1.config_hash != p->r2.config_hash);  // run.nproc = 2 is hashed
  const auto l1 = series(p->one, p->r1.id, "train", "loss"), l2 = series(p->two, p->r2.id, "train", "loss");
  REQUIRE(l1.size() == 8);
  check_close(l1, l2, 1e-5);
  check_close(series(p->one, p->r1.id, "train", "aux"), series(p->two, p->r2.id, "train", "aux"), 1e-5);
  check_close(series(p->one, p->r1.id, "valid", "loss"), series(p->two, p->r2.id, "valid", "loss"), 1e-5);
  for (const char* split : {"valid", "test"})
    check_close({result(p->one, p->r1.id, split, "loss")}, {result(p->two, p->r2.id, split, "loss")}, 1e-5);
  std::set<std::string> phases;
  for (const auto& t : p->two.timings(p->r2.id)) phases.insert(t.phase);
  CHECK(phases == std::set<std::string>{"allreduce", "backward", "data", "forward", "optimizer", "router", "step"});
}

TEST_CASE("router.global_batch routes the ranks' streams as one router call", "[dist]") {
  // The Sinkhorn baseline picks experts from a transport plan over all tokens of a call, so its
  // choices depend on the whole call: gathered over 2 ranks it must equal one call over 8 streams.
  auto g = train_pair("global", "train.steps=6 router=sinkhorn train.batch_split=1",
                      "train.steps=6 router=sinkhorn train.batch_split=1 router.global_batch=true");
  const auto l1 = series(g->one, g->r1.id, "train", "loss"), l2 = series(g->two, g->r2.id, "train", "loss");
  check_close(l1, l2, 1e-5);
  std::set<std::string> phases;
  for (const auto& t : g->two.timings(g->r2.id)) phases.insert(t.phase);
  CHECK(phases.count("gather") == 1);

  // Without it each rank's router sees only its 4 streams: the same as one process in 2 micro-batches.
  auto l = train_pair("local", "train.steps=6 router=sinkhorn train.batch_split=2",
                      "train.steps=6 router=sinkhorn train.batch_split=1");
  check_close(series(l->one, l->r1.id, "train", "loss"), series(l->two, l->r2.id, "train", "loss"), 1e-5);
  CHECK(series(l->one, l->r1.id, "train", "loss") != l1);  // the call size matters for this router
}

TEST_CASE("a killed rank fails the run without a hang, and the run resumes to the same losses", "[dist]") {
  const auto db_a = temp_db("dist", "kill_ref.db"), db_b = temp_db("dist", "kill.db");
  // Dropout on: each rank draws its own masks, and the resumed run must restore both streams.
  const std::string args =
      tiny_overrides() + " model.dropout=0.1 train.steps=60 train.checkpoint_every=10 router=ssr_l router.p=0.3";
  auto a = run(fmt::format("train {} {} --nproc 2 --db {} --quiet", kDemo, args, db_a));
  INFO(a.out);
  REQUIRE(a.code == 0);

  std::vector<std::string> cmd = {"train", kDemo};
  for (const auto& w : words(args)) cmd.push_back(w);
  for (const auto& w : words(fmt::format("--nproc 2 --db {} --quiet", db_b))) cmd.push_back(w);
  const pid_t launcher = spawn(cmd);
  const int64_t step = wait_step(db_b, launcher, 12);  // the checkpoint of step 10 exists
  const auto ranks = ranks_of(launcher);
  REQUIRE(ranks.count(1) == 1);
  kill(ranks.at(1), SIGKILL);
  const int code = wait_exit(launcher, 120);
  REQUIRE(step >= 12);
  REQUIRE(step < 60);
  CHECK(code == 1);

  {
    ssr::store::Store s(db_b);
    const auto r = only_run(s);
    CHECK(r.status == "failed");
    INFO(r.error);
    CHECK_THAT(r.error, Catch::Contains("rank 1 was killed by signal 9"));
  }
  auto resumed = run(fmt::format("train --resume 1 --nproc 2 --db {} --quiet", db_b));
  INFO(resumed.out);
  REQUIRE(resumed.code == 0);
  ssr::store::Store sa(db_a), sb(db_b);
  const auto ra = only_run(sa), rb = only_run(sb);
  CHECK(rb.status == "finished");
  CHECK(rb.info.world_size == 2);
  const auto la = series(sa, ra.id, "train", "loss"), lb = series(sb, rb.id, "train", "loss");
  REQUIRE(la.size() == 60);
  CHECK(la == lb);
  CHECK(result(sa, ra.id, "test", "loss") == result(sb, rb.id, "test", "loss"));

  auto wrong = run(fmt::format("train --resume 1 --nproc 3 --db {}", db_b));
  CHECK(wrong.code == 2);
}

TEST_CASE("when rank 0 dies the launcher marks its run failed", "[dist]") {
  const auto db = temp_db("dist", "kill0.db");
  std::vector<std::string> cmd = {"train", kDemo};
  for (const auto& w : words(tiny_overrides() + " train.steps=100000")) cmd.push_back(w);
  for (const auto& w : words(fmt::format("--nproc 2 --db {} --quiet", db))) cmd.push_back(w);
  const pid_t launcher = spawn(cmd);
  const int64_t step = wait_step(db, launcher, 3);
  const auto ranks = ranks_of(launcher);
  REQUIRE(ranks.count(0) == 1);
  kill(ranks.at(0), SIGKILL);
  const int code = wait_exit(launcher, 120);
  REQUIRE(step >= 3);
  CHECK(code == 1);
  ssr::store::Store s(db);
  const auto r = only_run(s);
  CHECK(r.status == "failed");
  CHECK_THAT(r.error, Catch::Contains("rank 0 was killed by signal 9"));
}

TEST_CASE("distributed input errors stop before any rank starts, with one line", "[dist]") {
  const auto db = temp_db("dist", "rejected.db");
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {"--nproc 3", "train.batch_size: 8 streams do not split evenly over 3 ranks"},
      {"--nproc 2 eval.batch_size=5", "eval.batch_size: 5 streams do not split evenly over 2 ranks"},
      {"--nproc 2 run.backend=nccl", "run.backend: nccl needs"},
      {"--nproc 2 train.batch_split=5", "train.batch_split: 5 micro-batches need at least as many streams per rank"},
  };
  for (const auto& c : cases) {
    auto r = run(fmt::format("train {} {} {} --db {}", kDemo, tiny_overrides(), c.args, db));
    INFO(c.args << "\n" << r.out);
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Catch::Contains(c.expect));
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  }
  ssr::store::Store s(db);
  CHECK(s.runs().empty());
}

// One GPU allows no second rank, so a group of one is where NCCL is checked: every collective
// the trainer calls, on the GPU, must leave one rank's values as they are. The Gloo case runs the
// same checks everywhere, so the test itself is exercised on machines without a GPU.
TEST_CASE("a group of one rank runs every collective of the trainer, on Gloo and on NCCL", "[dist][cuda]") {
  const std::string backend = GENERATE(as<std::string>{}, "gloo", "nccl");
  INFO("backend " << backend);
  torch::Device device = torch::kCPU;
  if (backend == "nccl") {
#ifdef SSR_WITH_CUDA
    if (!torch::cuda::is_available()) {
      WARN("no CUDA device here: the NCCL group was compiled, not run");
      return;
    }
    device = torch::Device(torch::kCUDA, 0);
#else
    SUCCEED("a build without CUDA has no NCCL");
    return;
#endif
  }
  ssr::dist::Env env;
  env.master_addr = "127.0.0.1";
  env.master_port = 0;  // the store picks a free port: no other rank has to find it
  ssr::dist::Group g(env, backend, device, 60);
  CHECK(g.world() == 1);
  CHECK(g.backend() == backend);
  const auto on = torch::TensorOptions().device(device);
  torch::manual_seed(11);

  std::vector<torch::Tensor> ts{torch::randn({5, 3}, on), torch::randn({7}, on)};  // (5, 3), (7)
  const auto t0 = ts[0].clone(), t1 = ts[1].clone();
  g.broadcast(ts);
  CHECK(ts[0].equal(t0));
  CHECK(ts[1].equal(t1));

  // Three 2.4 MB gradients fill more than one 4 MB bucket; `unused` has no gradient on any rank.
  std::vector<torch::Tensor> params;
  for (int i = 0; i < 3; ++i) params.push_back(torch::randn({600, 1000}, on.requires_grad(true)));  // (600, 1000)
  auto unused = torch::randn({3}, on.requires_grad(true));                                          // (3)
  params.push_back(unused);
  torch::Tensor loss = torch::zeros({}, on);
  for (int i = 0; i < 3; ++i) loss = loss + (params[i] * params[i]).sum() * (i + 1);
  loss.backward();
  std::vector<torch::Tensor> want;
  for (int i = 0; i < 3; ++i) want.push_back(params[i].grad().clone());
  g.average_gradients(params);
  for (int i = 0; i < 3; ++i) CHECK(params[i].grad().equal(want[i]));
  CHECK(!unused.grad().defined());

  CHECK(g.sum({1.5, -2.25, 1e300}) == std::vector<double>{1.5, -2.25, 1e300});
  const auto x = torch::randn({6, 4}, on);  // (6, 4)
  CHECK(g.sum_tensor(x).equal(x));
  const auto all = g.all_gather(x);
  REQUIRE(all.size() == 1);
  CHECK(all[0].device() == x.device());
  CHECK(all[0].equal(x));

  auto leaf = x.clone().requires_grad_(true);  // (6, 4)
  auto rows = g.gather_rows(leaf);             // (6, 4): one rank's rows are all rows
  CHECK(rows.equal(x));
  (rows * rows).sum().backward();
  CHECK(leaf.grad().allclose(2 * x));
  CHECK(g.take_gather_seconds() > 0);
  CHECK(g.take_gather_seconds() == 0);
}

TEST_CASE("Slurm host lists expand: several bracket groups, zero padding, suffixes", "[dist]") {
  using V = std::vector<std::string>;
  const std::vector<std::pair<std::string, V>> rows = {
      {"n1", {"n1"}},
      {"gpu[03-05,07],cpu1", {"gpu03", "gpu04", "gpu05", "gpu07", "cpu1"}},
      {"rack[1-2]-n[01-02]", {"rack1-n01", "rack1-n02", "rack2-n01", "rack2-n02"}},
      {"node[8-10]", {"node8", "node9", "node10"}},
      {"node[08-10]", {"node08", "node09", "node10"}},
      {"a[1-2]b,c", {"a1b", "a2b", "c"}},
      {"x[7]", {"x7"}},
      {"a,b[1,3]", {"a", "b1", "b3"}}};
  for (const auto& [list, hosts] : rows) {
    INFO(list);
    CHECK(ssr::dist::hostlist(list) == hosts);
  }
  for (const auto& [list, says] :
       std::vector<std::pair<std::string, std::string>>{{"n[1-", "'[' without ']'"},
                                                        {"n1]", "']' without '['"},
                                                        {"n[3-1]", "the range '3-1' runs backwards"},
                                                        {"n[a-b]", "'a-b' is not a number"},
                                                        {"n1,,n2", "an empty host name"},
                                                        {"n[]", "an empty range"}}) {
    INFO(list);
    CHECK_THROWS_WITH(ssr::dist::hostlist(list),
                      Catch::Contains("SLURM_JOB_NODELIST: '" + list + "'") && Catch::Contains(says));
  }
  // Steps of one job never share a port; jobs do only when their ids agree mod 1000.
  std::set<int> ports;
  for (int step = 0; step < 40; ++step) ports.insert(ssr::dist::slurm_port(123456, step));
  CHECK(ports.size() == 40);
  CHECK(ssr::dist::slurm_port(999999, 39) <= 65535);
  CHECK(ssr::dist::slurm_port(0, 0) >= 20000);
}

TEST_CASE("ranks come from the launcher's, torchrun's or Slurm's environment", "[dist]") {
  const std::vector<const char*> vars = {
      "RANK",         "WORLD_SIZE",    "LOCAL_RANK",         "MASTER_ADDR",    "MASTER_PORT",  "SLURM_PROCID",
      "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST", "SLURM_NODELIST", "SLURM_JOB_ID", "SLURM_STEP_ID"};
  std::map<std::string, std::optional<std::string>> saved;
  for (const char* v : vars) {
    if (const char* x = std::getenv(v))
      saved[v] = x;
    else
      saved[v] = std::nullopt;
    unsetenv(v);
  }
  auto e = ssr::dist::environment();
  CHECK(e.world == 1);
  CHECK(e.source.empty());

  setenv("WORLD_SIZE", "4", 1);
  setenv("RANK", "2", 1);
  setenv("LOCAL_RANK", "0", 1);
  setenv("MASTER_ADDR", "node7", 1);
  setenv("MASTER_PORT", "29400", 1);
  e = ssr::dist::environment();
  CHECK(e.world == 4);
  CHECK(e.rank == 2);
  CHECK(e.local_rank == 0);
  CHECK(e.master_addr == "node7");
  CHECK(e.master_port == 29400);
  setenv("RANK", "4", 1);
  CHECK_THROWS_WITH(ssr::dist::environment(), Catch::Contains("RANK: expected an integer in [0, 3]"));
  for (const char* v : vars) unsetenv(v);

  setenv("SLURM_NTASKS", "2", 1);
  setenv("SLURM_PROCID", "1", 1);
  setenv("SLURM_LOCALID", "1", 1);
  setenv("SLURM_JOB_NODELIST", "rack[1-2]-n[01-04],gpu07", 1);
  setenv("SLURM_JOB_ID", "123456", 1);
  e = ssr::dist::environment();
  CHECK(e.world == 2);
  CHECK(e.rank == 1);
  CHECK(e.local_rank == 1);
  CHECK(e.master_addr == "rack1-n01");
  CHECK(e.master_port == 20000 + 456 * 40);
  CHECK(e.source == "SLURM_NTASKS");
  setenv("SLURM_STEP_ID", "1", 1);  // a second step of the job meets on a port of its own
  CHECK(ssr::dist::environment().master_port == 20000 + 456 * 40 + 1);

  ssr::config::Config cfg;
  cfg.set("run.nproc", 3, "test");
  CHECK_THROWS_WITH(ssr::dist::check_world(cfg, e),
                    Catch::Contains("run.nproc: 3 ranks asked, but SLURM_NTASKS says 2"));
  cfg.set("run.nproc", 1, "test");
  ssr::dist::check_world(cfg, e);
  CHECK(cfg.i("run.nproc") == 2);

  for (const char* v : vars) unsetenv(v);
  for (const auto& [k, v] : saved)
    if (v) setenv(k.c_str(), v->c_str(), 1);
}

TEST_CASE("a sweep job with run.nproc=2 trains on two ranks into its one row, and its Slurm task asks for one node",
          "[dist][sweep]") {
  const auto db = temp_db("dist", "sweep.db");
  const auto file = fs::path(db).parent_path() / "dp-sweep.yaml";
  std::string overrides;
  std::istringstream tokens(tiny_overrides());
  for (std::string t; tokens >> t;) overrides += t + ", ";
  std::ofstream(file) << fmt::format(
      "base: {}\noverrides: [{}train.steps=4, run.nproc=2]\nvariants:\n  vanilla: [router=vanilla]\n"
      "  lb: [router=lb]\nslurm: {{time: \"01:00:00\"}}\n",
      kDemo, overrides);
  auto r = run(fmt::format("sweep {} --jobs 1 --db {}", file.string(), db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  ssr::store::Store s(db);
  const auto rows = s.sweep_runs(1);
  REQUIRE(rows.size() == 2);  // one row per job, written by rank 0 only
  for (const auto& row : rows) {
    CHECK(row.status == "finished");
    CHECK(row.info.world_size == 2);
    CHECK(row.info.backend == "gloo");
    CHECK(series(s, row.id, "train", "loss").size() == 4);
  }
  CHECK(s.runs().size() == 2);

  r = run(fmt::format("sweep {} run.seed=2 --launcher slurm --db {}", file.string(), db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  std::ifstream f(fs::path(db).parent_path() / "sweeps" / "sweep-2.sbatch");
  const std::string text((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  for (const char* line : {"#SBATCH --nodes=1\n", "#SBATCH --ntasks=1\n", "#SBATCH --time=01:00:00\n"})
    CHECK(text.find(line) != std::string::npos);
  CHECK(text.find("gpus-per-task") == std::string::npos);  // a CPU job asks for no GPU
}
