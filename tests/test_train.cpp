// End to end through the `ssr` binary: training on real WikiText-103 text lowers the loss, a
// seeded run is reproducible, rejected input writes nothing, a killed run is left stale.
#include <catch2/catch.hpp>
#include <map>
#include <set>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <numeric>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <thread>

#include "harness/store/store.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;

namespace {

using ssr::testing::temp_db;

using ssr::testing::kBin;
using ssr::testing::result;
using ssr::testing::Result;
using ssr::testing::run;
const std::string kDemo = std::string(SSR_SOURCE_DIR) + "/experiments/demo.yaml";
// Small enough for a test, big enough that learning shows: 16 streams x 32 tokens per step.
// A function, not a constant: the temporary root is set by main(), after static initialisation.
std::string small_overrides() {
  return "train.steps=40 train.batch_size=8 train.seq_len=32 train.warmup=5 eval.batch_size=8 run.log_every=5 "
         "run.threads=1 eval.max_segments=4 train.eval_every=20 train.eval_segments=2 train.checkpoint_every=10 "
         "run.out_dir=" +
         (fs::temp_directory_path() / ("ssr_ckpt_" + std::to_string(::getpid()))).string();
}

std::vector<double> losses(ssr::store::Store& s, int64_t run) { return ssr::testing::series(s, run, "train", "loss"); }

}  // namespace

TEST_CASE("training on real text lowers the loss and a seeded run repeats exactly", "[train]") {
  const auto db = temp_db("train", "train.db");
  auto a = run(fmt::format("train {} {} --db {} --quiet", kDemo, small_overrides(), db));
  INFO(a.out);
  REQUIRE(a.code == 0);
  auto b = run(fmt::format("train {} {} --db {} --quiet", kDemo, small_overrides(), db));
  REQUIRE(b.code == 0);
  auto c = run(fmt::format("train {} {} run.seed=2 --db {} --quiet", kDemo, small_overrides(), db));
  REQUIRE(c.code == 0);

  ssr::store::Store s(db);
  auto runs = s.runs();
  REQUIRE(runs.size() == 3);
  for (const auto& r : runs) CHECK(r.status == "finished");
  const auto la = losses(s, runs[0].id), lb = losses(s, runs[1].id), lc = losses(s, runs[2].id);
  REQUIRE(la.size() == 8);
  CHECK(la.back() < la.front() - 0.5);  // starts near ln(V), must drop clearly
  CHECK(la == lb);                      // same seed: bit-identical losses
  CHECK(la != lc);
  CHECK(runs[0].config_hash == runs[1].config_hash);
  CHECK(runs[0].config_hash != runs[2].config_hash);
  auto res = s.results(runs[0].id);
  bool has_test_ppl = false;
  for (const auto& r : res) has_test_ppl |= r.split == "test" && r.name == "ppl" && r.value > 1;
  CHECK(has_test_ppl);
  std::set<std::string> phases;
  for (const auto& t : s.timings(runs[0].id)) phases.insert(t.phase);
  CHECK(phases == std::set<std::string>{"data", "forward", "backward", "optimizer", "router", "step"});
  // Each layer's per-expert token counts at every logged step: as many as the metrics' rows, one
  // count per expert, the same total in every layer (each routes every token k times), seeded.
  const auto loads = s.expert_loads(runs[0].id);
  REQUIRE(loads.size() == 2 * ssr::testing::series(s, runs[0].id, "train", "layer0/load_cv").size());
  std::map<int64_t, std::set<int64_t>> totals;  // step -> the layers' totals
  for (const auto& l : loads) {
    CHECK(l.tokens.size() == 4);
    totals[l.step].insert(std::accumulate(l.tokens.begin(), l.tokens.end(), int64_t{0}));
  }
  for (const auto& [step, t] : totals) CHECK(t.size() == 1);
  const auto same = s.expert_loads(runs[1].id);
  REQUIRE(same.size() == loads.size());
  for (size_t i = 0; i < loads.size(); ++i) CHECK(same[i].tokens == loads[i].tokens);

  auto listed = run(fmt::format("runs --db {} --where run.seed=2 --format csv", db));
  CHECK(listed.code == 0);
  CHECK(listed.out.find(fmt::format("\n{},finished", runs[2].id)) != std::string::npos);
  auto shown = run(fmt::format("show {} --db {}", runs[0].id, db));
  CHECK(shown.code == 0);
  CHECK(shown.out.find("status finished") != std::string::npos);
}

TEST_CASE("rejected input exits 2 with one line and writes nothing", "[train]") {
  const auto db = temp_db("train", "rejected.db");
  struct Case {
    std::string args, expect;
  };
  const std::vector<Case> cases = {
      {fmt::format("train {} router.p=2", kDemo), "router.p: expected float in [0, 1]"},
      {fmt::format("train {} train.stepz=2", kDemo), "train.stepz: unknown key"},
      {"train no/such/file.yaml", "no/such/file.yaml: config file not found"},
      {fmt::format("train {} data.dir=/nonexistent", kDemo), "/nonexistent"},
      {"show 999", "rejected.db does not exist"},  // a read-only command creates no store
      {"runs --where colour=red", "unknown key 'colour'"},
      {fmt::format("train {} eval.router_modes=[sinkhorn]", kDemo),
       "eval.router_modes: router.name=vanilla does not use it (it applies with router.name=ssr)"},
      {fmt::format("train {} router=ssr_l eval.router_modes=[sinkhron]", kDemo), "inference mode 'sinkhron'"},
      {fmt::format("train {}/experiments/table1.yaml", SSR_SOURCE_DIR), "is a sweep file"},
      {fmt::format("train {}/experiments/fmnist-demo.yaml eval.reset_cache=true", SSR_SOURCE_DIR),
       "eval.reset_cache: model.arch=swin_moe does not use it (it applies with model.arch=switch_lm)"},
  };
  for (const auto& c : cases) {
    auto r = run(c.args + " --db " + db);
    INFO(c.args << "\n" << r.out);
    CHECK(r.code == 2);
    CHECK_THAT(r.out, Catch::Contains(c.expect));
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
  }
  ssr::store::Store s(db);
  CHECK(s.runs().empty());
}

TEST_CASE("a run killed mid-training keeps its rows and shows as stale", "[train]") {
  const auto db = temp_db("train", "killed.db");
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    if (chdir(SSR_SOURCE_DIR) != 0) _exit(127);
    execl(kBin.c_str(), kBin.c_str(), "train", kDemo.c_str(), "train.steps=100000", "train.batch_size=4",
          "train.seq_len=16", "run.log_every=1", "run.threads=1", "train.eval_every=0", "--db", db.c_str(), "--quiet",
          (char*)nullptr);
    _exit(127);
  }
  // Wait until the run has written some metrics, then kill it without warning.
  int64_t seen = 0;
  for (int i = 0; i < 600 && seen < 5; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (!fs::exists(db)) continue;
    ssr::store::Store s(db);
    auto runs = s.runs();
    if (!runs.empty()) seen = static_cast<int64_t>(s.metrics(runs[0].id).size());
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(seen >= 5);

  ssr::store::Store s(db);
  auto r = s.runs().at(0);
  CHECK(r.status == "running");
  CHECK(r.step > 0);
  CHECK(static_cast<int64_t>(s.metrics(r.id).size()) >= seen);
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CHECK(s.run(r.id)->shown_status(1.0) == "stale");
  auto listed = run(fmt::format("runs --db {} --stale-after 1", db));
  CHECK(listed.out.find("stale") != std::string::npos);
}

TEST_CASE("a killed run resumed from its checkpoint repeats the uninterrupted losses", "[train]") {
  // The fused attention draws its dropout from torch's default generator, which checkpoints keep too.
  const std::string impl = GENERATE(as<std::string>{}, "reference", "sdpa");
  INFO("model.attn_impl=" << impl);
  const auto db_a = temp_db("train", "resume_a_" + impl + ".db"), db_b = temp_db("train", "resume_b_" + impl + ".db");
  // Partial validation every 5 steps: the checkpoint of step 10 must carry the validation
  // stream's position and cache, or the resumed validations at 15, 20, ... differ.
  const std::string args =
      small_overrides() +
      " train.steps=30 run.log_every=1 train.eval_every=5 router=ssr_l router.p=0.3 model.attn_impl=" + impl;
  auto a = run(fmt::format("train {} {} --db {} --quiet", kDemo, args, db_a));
  INFO(a.out);
  REQUIRE(a.code == 0);

  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const std::string cmd =
        fmt::format("cd '{}' && exec '{}' train {} {} --db {} --quiet", SSR_SOURCE_DIR, kBin, kDemo, args, db_b);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
    _exit(127);
  }
  // Kill once the checkpoint of step 10 exists (step 12 has been logged).
  int64_t step = 0;
  for (int i = 0; i < 1200 && step < 12; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    if (!fs::exists(db_b)) continue;
    ssr::store::Store s(db_b);
    auto runs = s.runs();
    if (!runs.empty()) step = runs[0].step;
  }
  kill(pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  REQUIRE(step >= 12);
  REQUIRE(step < 30);

  auto resumed = run(fmt::format("train --resume 1 --db {} --quiet", db_b));
  INFO(resumed.out);
  REQUIRE(resumed.code == 0);
  ssr::store::Store sa(db_a), sb(db_b);
  const auto ra = sa.runs().at(0), rb = sb.runs().at(0);
  CHECK(rb.status == "finished");
  const auto la = losses(sa, ra.id), lb = losses(sb, rb.id);
  REQUIRE(la.size() == 30);
  CHECK(la == lb);
  const auto va = ssr::testing::series(sa, ra.id, "valid", "loss"),
             vb = ssr::testing::series(sb, rb.id, "valid", "loss");
  REQUIRE(va.size() == 6);
  CHECK(va == vb);
  // The loads logged before the kill and after the resume are the uninterrupted run's.
  const auto load_a = sa.expert_loads(ra.id), load_b = sb.expert_loads(rb.id);
  REQUIRE(load_a.size() == load_b.size());
  for (size_t i = 0; i < load_a.size(); ++i)
    CHECK((load_a[i].step == load_b[i].step && load_a[i].tokens == load_b[i].tokens));
  CHECK(sa.results(ra.id).size() == sb.results(rb.id).size());
  for (size_t i = 0; i < sa.results(ra.id).size(); ++i) {
    INFO(sa.results(ra.id)[i].split << " " << sa.results(ra.id)[i].name);
    if (sa.results(ra.id)[i].name == "seconds") continue;  // wall time
    CHECK(sa.results(ra.id)[i].value == sb.results(rb.id)[i].value);
  }
}

TEST_CASE("SIGINT or a hang-up stops a run as interrupted (exit 130), in training and in the final evaluation",
          "[train]") {
  struct Row {
    std::string where, args, error;
    int64_t at_step;      // send the signal once the store shows this step
    bool has_checkpoint;  // small_overrides() checkpoints every 10 steps: stopped before that, --resume refuses
    int signal;
  };
  // The final evaluation walks the whole validation split (eval.max_segments=0): long enough to
  // be interrupted in the middle.
  const std::vector<Row> rows = {{"training", "train.steps=200", "interrupted by signal 2 at step", 6, false, SIGINT},
                                 {"final evaluation", "train.steps=10 eval.max_segments=0 eval.batch_size=1",
                                  "during the final evaluation", 10, true, SIGINT},
                                 {"hang-up", "train.steps=30", "interrupted by signal 1 at step", 6, false, SIGHUP}};
  for (const auto& row : rows) {
    INFO(row.where);
    const auto db = temp_db("train", fmt::format("signal_{}_{}.db", row.signal, row.at_step));
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      const std::string cmd = fmt::format("cd '{}' && exec '{}' train {} {} {} run.log_every=2 --db {} --quiet",
                                          SSR_SOURCE_DIR, kBin, kDemo, small_overrides(), row.args, db);
      execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
      _exit(127);
    }
    bool sent = false;
    for (int i = 0; i < 2400 && !sent; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
      if (!fs::exists(db)) continue;
      ssr::store::Store s(db);
      auto runs = s.runs();
      if (!runs.empty() && runs[0].status == "running" && runs[0].step >= row.at_step) {
        kill(pid, row.signal);
        sent = true;
      }
    }
    REQUIRE(sent);
    int status = 0;
    waitpid(pid, &status, 0);
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 130);
    ssr::store::Store s(db);
    const auto r = s.runs().at(0);
    CHECK(r.status == "interrupted");
    CHECK(r.error.find(row.error) != std::string::npos);
    auto resumed = run(fmt::format("train --resume {} --db {} --quiet", r.id, db));
    if (!row.has_checkpoint) {  // nothing to continue from: refused, then trained again on request
      CHECK(resumed.code == 2);
      CHECK(resumed.out.find("no checkpoint to continue from") != std::string::npos);
      resumed = run(fmt::format("train --resume {} --restart --db {} --quiet", r.id, db));
    }
    INFO(resumed.out);
    CHECK(resumed.code == 0);
    CHECK(s.run(r.id)->status == "finished");
  }
}

TEST_CASE("one trained SSR model is evaluated under every requested inference mode", "[train]") {
  const auto db = temp_db("train", "modes.db");
  // p = 1: Sinkhorn routes every training forward, so keeping it at inference changes the routing.
  auto r =
      run(fmt::format("train {} {} train.steps=10 router=ssr_l_noise router.p=1 "
                      "eval.router_modes=[sinkhorn,noise,both] --db {} --quiet",
                      kDemo, small_overrides(), db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  ssr::store::Store s(db);
  std::map<std::string, double> ppl;
  for (const auto& x : s.results(s.runs().at(0).id))
    if (x.name == "ppl") ppl[x.split] = x.value;
  for (const char* split : {"valid", "test", "valid@sinkhorn", "test@sinkhorn", "valid@noise", "test@both"})
    CHECK(ppl.count(split));
  CHECK(ppl["valid@sinkhorn"] != ppl["valid"]);
  CHECK(ppl["valid@noise"] != ppl["valid"]);
}

TEST_CASE("Sinkhorn solves that stop at the iteration limit are counted and warned about once", "[train]") {
  const auto db = temp_db("train", "unconverged.db");
  // 5 log sweeps at xi 0.05 cannot reach delta 1e-4; SSR at p = 1 solves at every training call.
  auto r =
      run(fmt::format("train {} {} train.steps=10 router=ssr_l router.p=1 router.xi=0.05 router.numerics=log "
                      "router.max_iter=5 --db {} --quiet",
                      kDemo, small_overrides(), db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  size_t warnings = 0;
  for (size_t at = r.out.find("warning:"); at != std::string::npos; at = r.out.find("warning:", at + 1)) ++warnings;
  CHECK(warnings == 1);
  CHECK_THAT(r.out, Catch::Contains("stopped at router.max_iter above router.delta"));
  ssr::store::Store s(db);
  const int64_t id = s.runs().at(0).id;
  const double solves = result(s, id, "train", "sinkhorn_forwards");
  CHECK(solves > 0);
  CHECK(result(s, id, "train", "sinkhorn_unconverged") == solves);
  CHECK(result(s, id, "train", "sinkhorn_fallbacks") == 0);
}

TEST_CASE("eval.reset_cache scores every segment from empty caches, next to the cached evaluation", "[train]") {
  // One segment starts from empty caches either way; over four, the cached evaluation carries
  // each stream's context into the next segment and the reset one does not.
  std::map<int, std::map<std::string, double>> loss;  // eval.max_segments -> split -> loss
  for (int segments : {1, 4}) {
    const auto db = temp_db("train", fmt::format("reset_cache{}.db", segments));
    auto r = run(fmt::format("train {} {} train.steps=10 eval.reset_cache=true eval.max_segments={} --db {} --quiet",
                             kDemo, small_overrides(), segments, db));
    INFO(r.out);
    REQUIRE(r.code == 0);
    ssr::store::Store s(db);
    for (const auto& x : s.results(s.runs().at(0).id))
      if (x.name == "loss") loss[segments][x.split] = x.value;
  }
  for (const char* split : {"valid", "test"}) {
    INFO(split);
    REQUIRE(loss[1].count(split + std::string("@reset_cache")));
    CHECK(loss[1][split + std::string("@reset_cache")] == loss[1][split]);
    CHECK(loss[4][split + std::string("@reset_cache")] != loss[4][split]);
  }
}

TEST_CASE("a router's random draws leave data and dropout alone: SSR that never fires trains vanilla's model",
          "[train]") {
  // The 9,000-byte enwik8 fixture in 8 streams wraps every ~17 steps of 64 bytes, and each wrap
  // draws a random offset; dropout draws masks every step. SSR draws a coin per forward, which at
  // p = 1e-9 never picks Sinkhorn: both runs must see the same segments, masks and losses.
  const auto db = temp_db("train", "rng.db");
  const std::string args = fmt::format(
      "{}/experiments/lm-demo-enwik8.yaml train.steps=40 run.log_every=1 model.dropout=0.1 train.eval_every=0 "
      "eval.max_segments=2 run.threads=1 run.out_dir={} --db {} --quiet",
      SSR_SOURCE_DIR, (fs::temp_directory_path() / ("ssr_rng_" + std::to_string(::getpid()))).string(), db);
  auto a = run("train " + args + " router=vanilla");
  INFO(a.out);
  REQUIRE(a.code == 0);
  auto b = run("train " + args + " router=ssr_l router.p=1e-9");
  INFO(b.out);
  REQUIRE(b.code == 0);
  ssr::store::Store s(db);
  const auto runs = s.runs();
  REQUIRE(runs.size() == 2);
  const auto la = losses(s, runs[0].id), lb = losses(s, runs[1].id);
  REQUIRE(la.size() == 40);
  CHECK(la == lb);
}

TEST_CASE("router.eval_group_tokens changes the final evaluation's router calls and nothing before", "[train]") {
  // The Sinkhorn baseline routes by a plan of the whole call, so the final evaluation's numbers
  // depend on the call size; training (32-token groups in both runs) must not.
  const auto db = temp_db("train", "eval_group.db");
  const std::string args = fmt::format(
      "{}/experiments/lm-demo-enwik8.yaml router=sinkhorn router.group_tokens=32 train.steps=6 run.log_every=1 "
      "eval.max_segments=2 run.out_dir={} --db {} --quiet",
      SSR_SOURCE_DIR, (fs::temp_directory_path() / ("ssr_eg_" + std::to_string(::getpid()))).string(), db);
  for (const char* eval_group : {"0", "1000000"}) {
    auto r = run(fmt::format("train {} router.eval_group_tokens={}", args, eval_group));
    INFO(r.out);
    REQUIRE(r.code == 0);
  }
  ssr::store::Store s(db);
  const auto runs = s.runs();
  REQUIRE(runs.size() == 2);
  CHECK(losses(s, runs[0].id) == losses(s, runs[1].id));
  CHECK(result(s, runs[0].id, "test", "loss") != result(s, runs[1].id, "test", "loss"));
}

TEST_CASE("partial validation walks the validation stream as the reference does", "[train]") {
  // The 500 valid bytes of the enwik8 fixture in 2 streams of 64-byte segments: 250 bytes, so a
  // pass is ceil(250 / 64) = 4 segments, and the reference validates min(eval_every / 10, 4).
  const auto db = temp_db("train", "valid_walk.db");
  const std::string base = fmt::format(
      "{}/experiments/lm-demo-enwik8.yaml train.batch_size=2 train.steps=4 run.log_every=1 eval.max_segments=1 "
      "run.out_dir={} --db {} --quiet",
      SSR_SOURCE_DIR, (fs::temp_directory_path() / ("ssr_vw_" + std::to_string(::getpid()))).string(), db);
  struct Case {
    std::string overrides;
    double segments;
  };
  const std::vector<Case> cases = {{"train.eval_every=100", 4},
                                   {"train.eval_every=20", 2},
                                   {"train.eval_every=5", 1},
                                   {"train.eval_every=1 train.eval_segments=7", 7}};
  for (const Case& c : cases) {
    INFO(c.overrides);
    auto r = run(fmt::format("train {} {}", base, c.overrides));
    INFO(r.out);
    REQUIRE(r.code == 0);
  }
  ssr::store::Store s(db);
  const auto runs = s.runs();
  REQUIRE(runs.size() == cases.size());
  for (size_t i = 0; i < runs.size(); ++i) {
    INFO(cases[i].overrides);
    CHECK(result(s, runs[i].id, "train", "valid_segments") == cases[i].segments);
  }
  // Walking past the end of the stream (7 segments of a 4-segment pass) restarts it as training does.
  const auto v = ssr::testing::series(s, runs[3].id, "valid", "loss");
  CHECK(v.size() == 4);
  for (double x : v) CHECK(std::isfinite(x));
}

TEST_CASE("every demo base config trains on the real data here", "[train]") {
  // The demo scales of experiments/*.yaml stand on these bases; a split too short for its
  // streams must show here, not in the middle of a demo study.
  const auto db = temp_db("train", "bases.db");
  for (const char* base : {"demo.yaml", "lm-demo.yaml", "lm-demo-enwik8.yaml"}) {
    INFO(base);
    auto r = run(fmt::format(
        "train {}/experiments/{} train.steps=2 run.log_every=1 eval.max_segments=1 "
        "eval.splits=[valid,test] run.out_dir={} --db {} --quiet",
        SSR_SOURCE_DIR, base, (fs::temp_directory_path() / ("ssr_bases_" + std::to_string(::getpid()))).string(), db));
    INFO(r.out);
    CHECK(r.code == 0);
  }
  // A split too short for the eval streams is refused before training, naming the split.
  auto r = run(
      fmt::format("train {}/experiments/lm-demo-enwik8.yaml eval.batch_size=64 --db {} --quiet", SSR_SOURCE_DIR, db));
  CHECK(r.code == 2);
  CHECK(r.out.find("valid split of ../shared/data/enwik8 (eval.batch_size streams)") != std::string::npos);
  ssr::store::Store s(db);
  CHECK(s.runs().size() == 3);  // nothing stored for the refused one
}
