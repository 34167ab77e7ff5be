// Reports: interval arithmetic against hand-computed values, and every output of a table and two
// figures built from a small fixture store, compared with golden files (tests/golden/; rerun with
// SSR_UPDATE_GOLDEN=1 to rewrite them after an intended change, then read the diff).
#include <catch2/catch.hpp>
#include <sqlite3.h>

#include <set>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <limits>
#include <map>

#include "analysis/report.hpp"
#include "analysis/stats.hpp"
#include "harness/store/store.hpp"
#include "analysis/compare.hpp"
#include "tests/cli_helpers.hpp"
#include "harness/sweep/sweep.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;

namespace {

using ssr::testing::kSrc;

using ssr::testing::check_golden;

const std::string kStudy = kSrc + "/tests/fixtures/report-study.yaml";

// Config hashes change whenever the schema gains a key, the store is a temporary file and the
// checkout can be anywhere: none of them belongs in a golden file.
std::string normalise(std::string s, const std::string& db) {
  auto replace = [&](const std::string& from, const std::string& to) {
    for (size_t p; (p = s.find(from)) != std::string::npos;) s.replace(p, from.size(), to);
  };
  replace(db, "DB");
  replace(kSrc, "SRC");
  for (const auto& j : ssr::sweep::load(kStudy, {}).jobs) replace(j.config.hash(), "HASH");
  return s;
}

// Runs of the fixture study with known numbers: PPL falls with the method index and the seed,
// lb momentum seed 1 diverged (nan), ssr_l momentum seed 2 never ran, lb conventional seed 2 ran
// on another host (so its overhead pair is skipped). `vanilla_momentum_2`: overrides of the stored
// config of vanilla momentum seed 2 that keep its hash.
std::string fixture_db(const std::vector<std::string>& vanilla_momentum_2 = {}) {
  const auto dir = fs::temp_directory_path() / fmt::format("ssr_report_{}", ::getpid());
  fs::create_directories(dir);
  const auto db = (dir / "runs.db").string();
  for (const char* ext : {"", "-wal", "-shm"}) fs::remove(db + ext);
  ssr::store::Store s(db);
  const auto spec = ssr::sweep::load(kStudy, {});
  const std::vector<std::string> methods = {"vanilla", "lb", "ssr_l"};
  const std::vector<double> slowdown = {1.0, 1.02, 1.005};
  for (const auto& j : spec.jobs) {
    const int m = static_cast<int>(std::find(methods.begin(), methods.end(), j.label("variant")) - methods.begin());
    const bool mom = j.label("model.block") == "momentum";
    const int seed = std::stoi(j.label("run.seed"));
    if (m == 2 && mom && seed == 2) continue;
    ssr::store::RunInfo info{"abc123", m == 1 && !mom && seed == 2 ? "other" : "node1", "cpu: test (1 threads)",
                             "2.11.0"};
    auto cfg = j.config;
    if (m == 0 && mom && seed == 2) ssr::config::apply_overrides(cfg, vanilla_momentum_2, {});
    REQUIRE(cfg.hash() == j.config.hash());
    const auto id = s.create_run(cfg.hash(), cfg.to_json(), seed, info);
    std::vector<ssr::store::Timing> t;
    for (int step = 1; step <= 20; ++step)
      t.push_back({step, "step", slowdown[m] * (1.0 + 0.01 * ((step * 7 + seed) % 5)) * (step == 1 ? 3 : 1)});
    s.add_timings(id, t);
    if (m == 1 && mom && seed == 1) {
      s.finish_run(id, "nan", "loss became nan at step 3");
      continue;
    }
    const double base = 100 - 2 * m + (mom ? -5 : 0) - 0.5 * seed;
    s.set_result(id, "valid", "ppl", base + 1);
    s.set_result(id, "test", "ppl", base);
    if (mom)
      for (int l = 0; l < 2; ++l)
        s.add_metrics(id, {{20, "valid", fmt::format("layer{}/output_norm", l), 3.0 - l + 0.1 * m + 0.05 * seed, 1.0}});
    s.finish_run(id, "finished");
  }
  return db;
}

}  // namespace

TEST_CASE("95 % intervals match hand-computed values", "[report]") {
  struct Case {
    std::vector<double> v;
    double mean, ci;
  };
  const std::vector<Case> cases = {
      {{5}, 5, 0},
      {{1, 3}, 2, 12.706},                  // s = sqrt(2), se = 1
      {{1, 2, 3, 4}, 2.5, 3.182 * 0.6455},  // s = 1.291, se = 0.6455
  };
  for (const auto& c : cases) {
    const auto e = ssr::analysis::estimate(c.v);
    CHECK(e.mean == Approx(c.mean));
    CHECK(e.ci == Approx(c.ci).epsilon(1e-3));
  }
  CHECK(ssr::analysis::t95(1) == Approx(12.706));
  CHECK(ssr::analysis::t95(30) == Approx(2.042));
  CHECK(ssr::analysis::t95(120) == Approx(1.980).epsilon(2e-3));
}

TEST_CASE("paired t-test p-values and Holm's step-down, by hand", "[report]") {
  // df 2: F(t) = 1/2 + t / (2 sqrt(2 + t^2)); {1, 2, 3}: t = 2 / (1 / sqrt 3) = 3.4641 -> p = 0.0741799.
  CHECK(ssr::analysis::paired_t_p({1, 2, 3}) == Approx(0.0741799).margin(1e-6));
  // df 1 (Cauchy): {1, 3}: t = 2 -> p = 1 - 2 atan(2) / pi = 0.2951672.
  CHECK(ssr::analysis::paired_t_p({1, 3}) == Approx(0.2951672).margin(1e-6));
  CHECK(ssr::analysis::paired_t_p({2, 2}) == 0.0);
  CHECK(ssr::analysis::paired_t_p({0, 0}) == 1.0);
  const std::vector<std::pair<std::vector<double>, std::vector<double>>> cases = {
      {{0.01, 0.04, 0.03, 0.005}, {0.03, 0.06, 0.06, 0.02}},  // 4p, 3p, 2p, p in order, then running maxima
      {{0.6, 0.7}, {1, 1}},                                   // capped at 1
      {{0.02}, {0.02}},
      {{}, {}}};
  for (const auto& [p, want] : cases) {
    const auto got = ssr::analysis::holm(p);
    REQUIRE(got.size() == want.size());
    for (size_t i = 0; i < got.size(); ++i) CHECK(got[i] == Approx(want[i]).margin(1e-12));
  }
}

TEST_CASE("a table column at a logged step, and a delta column marked by Holm-adjusted p-values", "[report]") {
  const auto db = fixture_db();
  ssr::store::Store s(db);
  // Valid PPL logged at step 10 in the conventional setting: Vanilla 100 both seeds; LB 99 and 97
  // (Δ % -1, -3: t 2, df 1, p 0.2952); SSR-L 90 and 89 (Δ % -10, -11: t 21, p 0.0303, whose
  // uncorrected interval ±6.35 excludes 0). Holm over the two: SSR-L 2 x 0.0303 = 0.0606, LB 0.2952.
  const std::map<std::pair<std::string, int>, double> ppl = {{{"vanilla", 1}, 100}, {{"vanilla", 2}, 100},
                                                             {{"lb", 1}, 99},       {{"lb", 2}, 97},
                                                             {{"ssr_l", 1}, 90},    {{"ssr_l", 2}, 89}};
  std::map<std::string, std::pair<std::string, int>> by_hash;
  for (const auto& j : ssr::sweep::load(kStudy, {}).jobs)
    if (j.label("model.block") == "vanilla")
      by_hash[j.config.hash()] = {j.label("variant"), std::stoi(j.label("run.seed"))};
  for (const auto& r : s.runs())
    if (auto it = by_hash.find(r.config_hash); it != by_hash.end())
      s.add_metrics(r.id, {{10, "valid", "ppl", ppl.at(it->second), 1.0}, {20, "valid", "ppl", 1.0, 2.0}});
  const auto out = ssr::analysis::build("holm", kStudy, "", {}, s);
  INFO(out.md);
  CHECK(out.md.find("| Vanilla | 100.000 | – |") != std::string::npos);
  CHECK(out.md.find("| LB | <u>98.000 ± 12.706</u> | -2.00 ± 12.71 % |") != std::string::npos);
  CHECK(out.md.find("| SSR-L | **89.500 ± 6.353** | -10.50 ± 6.35 % |") != std::string::npos);  // no *: Holm
  CHECK(out.md.find("Δ % (at step 10): paired") != std::string::npos);
  CHECK(out.md.find("Holm's step-down over the 2 rows tested) is below 0.05; adjusted p: LB 0.295, SSR-L 0.0606.") !=
        std::string::npos);
  // Bad specs name the column.
  auto bad = [&](const std::string& column, const std::string& says) {
    const auto dir = fs::temp_directory_path() / fmt::format("ssr_report_bad_{}", ::getpid());
    fs::create_directories(dir);
    const auto file = dir / "study.yaml";
    std::ofstream(file) << fmt::format(
        "base: {}/experiments/demo.yaml\nvariants:\n  vanilla: [router=vanilla]\n  lb: [router=lb]\n"
        "reports:\n  t:\n    rows: variant\n    baseline: vanilla\n    columns:\n"
        "      - {{label: PPL, split: valid, metric: ppl}}\n      - {}\n",
        kSrc, column);
    CHECK_THROWS_WITH(ssr::analysis::build("t", file.string(), "", {}, s), Catch::Contains(says));
  };
  bad("{label: D, delta: PPL, correction: bonferroni}", "columns[1].correction: 'holm' on a delta: column");
  bad("{label: P, split: valid, metric: ppl, correction: holm}", "columns[1].correction: 'holm' on a delta");
  bad("{label: P, split: valid, metric: ppl, step: -1}", "columns[1].step: a training step");
}

TEST_CASE("report footers count the Sinkhorn solves, the unconverged ones and the fallbacks", "[report]") {
  const auto db = fixture_db();
  ssr::store::Store s(db);
  const auto plain = ssr::analysis::build("tab", kStudy, "", {}, s);
  CHECK(plain.md.find("Sinkhorn solves") == std::string::npos);  // no run solved one
  std::set<std::string> ssr_l;
  for (const auto& j : ssr::sweep::load(kStudy, {}).jobs)
    if (j.label("variant") == "ssr_l") ssr_l.insert(j.config.hash());
  int64_t n = 0;
  for (const auto& r : s.runs())
    if (ssr_l.count(r.config_hash) && r.status == "finished") {
      s.set_result(r.id, "train", "sinkhorn_forwards", 10);
      s.set_result(r.id, "train", "sinkhorn_unconverged", 3);
      s.set_result(r.id, "train", "sinkhorn_fallbacks", 1);
      ++n;
    }
  REQUIRE(n == 3);  // ssr_l momentum seed 2 never ran
  const auto out = ssr::analysis::build("tab", kStudy, "", {}, s);
  CHECK(out.md.find("Sinkhorn solves in training (3 runs): 30, of which 9 stopped at router.max_iter above "
                    "router.delta (unconverged; the paper's protocol keeps them) and 3 fell back from Newton to log "
                    "sweeps.") != std::string::npos);
}

TEST_CASE("a table from the store: layout, intervals, deltas, ranks, NaN and missing cells", "[report]") {
  const auto db = fixture_db();
  ssr::store::Store s(db);
  const auto out = ssr::analysis::build("tab", kStudy, "", {}, s);
  REQUIRE(out.kind == "table");
  // Conventional vanilla: test PPL 99.5 and 99 over seeds 1, 2 -> 99.25 ± 12.706 * 0.25.
  CHECK(out.md.find("| Vanilla | 100.250 ± 3.176 | 99.250 ± 3.176 | – | 0.00% |") != std::string::npos);
  CHECK(out.md.find("| **95.250 ± 3.176** |") != std::string::npos);   // SSR-L best test PPL
  CHECK(out.md.find("| -4.000 ± 0.000 * |") != std::string::npos);     // SSR-L minus Vanilla, seed by seed
  CHECK(out.md.find("| **90.500** | -4.000 |") != std::string::npos);  // momentum: only seed 1 pairs, not -3.75
  CHECK(out.md.find("| LB | NaN | NaN |") != std::string::npos);       // a diverged seed makes the cell NaN
  // The pair on another host is left out of the overhead and the footer says so.
  CHECK(out.md.find("Note: LB (Conventional), Overhead: 1 of 2 run pairs skipped (different hardware") !=
        std::string::npos);
  REQUIRE(out.missing.size() == 1);
  CHECK(out.missing[0].find("variant=ssr_l model.block=momentum run.seed=2") != std::string::npos);
  check_golden("report_table.md", normalise(out.md, db));
  check_golden("report_table.tex", normalise(out.tex, db));
  check_golden("report_table.csv", normalise(out.csv, db));
}

TEST_CASE("figures from the store: tidy csv and gnuplot variables", "[report]") {
  const auto db = fixture_db();
  ssr::store::Store s(db);
  const auto bars = ssr::analysis::build("bars", kStudy, "", {}, s);
  REQUIRE(bars.figure == "bars");
  check_golden("report_bars.csv", normalise(bars.csv, db));
  check_golden("report_bars.gp", normalise(bars.gnuplot, db));
  const auto norms = ssr::analysis::build("norms", kStudy, "", {}, s);
  REQUIRE(norms.figure == "lines");
  check_golden("report_norms.csv", normalise(norms.csv, db));
  CHECK_THROWS_WITH(ssr::analysis::build("nope", kStudy, "", {}, s), Catch::Contains("reports: has no nope"));
}

TEST_CASE("overheads come from an `ssr bench step` session that timed both jobs", "[report]") {
  const auto db = fixture_db();
  ssr::store::Store s(db);
  const auto spec = ssr::sweep::load(kStudy, {});
  // Session 1 times the conventional jobs interleaved: LB 10 % and SSR-L 1 % slower than Vanilla in
  // every round, while the rounds themselves drift by 30 %.
  const std::map<std::string, double> factor = {{"vanilla", 1.0}, {"lb", 1.10}, {"ssr_l", 1.01}};
  auto bench_case = [&](const ssr::sweep::Job& j, double f) {
    ssr::store::BenchCase c;
    c.label = j.describe();
    c.config_hash = j.config.hash();
    c.config = j.config.to_json();
    c.tokens_per_step = 64;
    for (int r = 0; r < 4; ++r) c.seconds.push_back(f * 0.1 * (1 + 0.1 * r));
    return c;
  };
  std::vector<ssr::store::BenchCase> conventional;
  for (const auto& j : spec.jobs)
    if (j.label("model.block") == "vanilla") conventional.push_back(bench_case(j, factor.at(j.label("variant"))));
  ssr::store::RunInfo gpu{"def456", "gpu1", "cuda: Test GPU (80 GiB)", "2.11.0"};
  CHECK(s.add_bench_session("ssr bench step report-study.yaml --where model.block=vanilla", gpu, 2, conventional) == 1);
  // Session 2 times only momentum LB: without its Vanilla in the same session it pairs with nothing.
  for (const auto& j : spec.jobs)
    if (j.label("model.block") == "momentum" && j.label("variant") == "lb")
      s.add_bench_session("ssr bench step report-study.yaml", gpu, 2, {bench_case(j, 5.0)});
  const auto stored = s.bench_cases(spec.jobs.front().config.hash());
  REQUIRE(stored.size() == 1);
  CHECK(stored[0].session == 1);
  CHECK(stored[0].info.device == "cuda: Test GPU (80 GiB)");
  REQUIRE(stored[0].seconds.size() == 4);
  CHECK(stored[0].seconds[3] == Approx(0.13));

  const auto out = ssr::analysis::build("tab", kStudy, "", {}, s);
  CHECK(out.md.find("| LB | <u>98.250 ± 3.176</u> | <u>97.250 ± 3.176</u> | -2.000 ± 0.000 * | 10.00% |") !=
        std::string::npos);
  CHECK(out.md.find("| SSR-L | **96.250 ± 3.176** | **95.250 ± 3.176** | -4.000 ± 0.000 * | 1.00% |") !=
        std::string::npos);
  CHECK(out.md.find("| LB | NaN | NaN | NaN | 2.00 ± 0.00% |") != std::string::npos);  // momentum: training runs
  CHECK(out.md.find("different hardware") == std::string::npos);  // the bench pair replaces the skipped one
  CHECK(out.md.find("Step-time overheads: 4 job pairs timed interleaved by `ssr bench step` (session 1; interval over "
                    "rounds for one pair); 3 job pairs from the training runs' logged step times.") !=
        std::string::npos);

  // A figure of overheads only counts benched jobs as present even without training runs.
  const auto empty_db = db + ".bench-only";
  for (const char* ext : {"", "-wal", "-shm"}) fs::remove(empty_db + ext);
  ssr::store::Store b(empty_db);
  b.add_bench_session("ssr bench step report-study.yaml", gpu, 2, conventional);
  const auto bars = ssr::analysis::build("bars", kStudy, "", {}, b);
  CHECK(bars.missing.size() == 6);  // the momentum jobs
  INFO(bars.csv);
  CHECK(bars.csv.find("model.block=vanilla,lb,10.0000") != std::string::npos);
  CHECK(bars.md.find("Hardware: cuda: Test GPU (80 GiB) on gpu1 (6 runs).") != std::string::npos);
  CHECK(out.md.find("†") == std::string::npos);  // no load recorded: nothing flagged

  // The same session timed on an oversubscribed machine: its overheads are flagged and footnoted.
  const auto busy_db = db + ".busy";
  for (const char* ext : {"", "-wal", "-shm"}) fs::remove(busy_db + ext);
  ssr::store::Store busy(busy_db);
  auto loaded = conventional;
  for (auto& c : loaded) c.load_per_core = 5.0;
  busy.add_bench_session("ssr bench step report-study.yaml", gpu, 2, loaded);
  CHECK(busy.bench_cases(loaded.front().config_hash).front().load_per_core == 5.0);
  const auto flagged = ssr::analysis::build("tab", kStudy, "", {}, busy);
  INFO(flagged.md);
  CHECK(flagged.md.find("| 10.00% † |") != std::string::npos);
  CHECK(flagged.md.find("† Timed on an oversubscribed machine (load up to 5.0 per core") != std::string::npos);
}

TEST_CASE("overheads compare like compute paths only: keys outside the hash such as model.expert_impl", "[report]") {
  const auto db = fixture_db({"model.expert_impl=grouped"});
  ssr::store::Store s(db);
  // Momentum LB seed 2 pairs with a vanilla run of another compute path: only seed 1 counts.
  auto out = ssr::analysis::build("tab", kStudy, "", {}, s);
  CHECK(
      out.md.find("Note: LB (Momentum), Overhead: 1 of 2 run pairs skipped (compute paths other than the report's).") !=
      std::string::npos);

  // Two bench sessions of the conventional jobs, one per expert path, under the same hashes.
  const auto spec = ssr::sweep::load(kStudy, {});
  auto session = [&](const std::vector<std::string>& overrides, double lb) {
    std::vector<ssr::store::BenchCase> cases;
    for (const auto& j : spec.jobs) {
      if (j.label("model.block") != "vanilla") continue;
      auto cfg = j.config;
      ssr::config::apply_overrides(cfg, overrides, {});
      ssr::store::BenchCase c;
      c.label = j.describe();
      c.config_hash = cfg.hash();
      c.config = cfg.to_json();
      c.tokens_per_step = 64;
      const double f = j.label("variant") == "lb" ? lb : 1.0;
      for (int r = 0; r < 3; ++r) c.seconds.push_back(f * 0.1 * (1 + 0.1 * r));
      cases.push_back(c);
    }
    return s.add_bench_session("ssr bench step report-study.yaml", {"abc", "gpu1", "cuda: Test GPU", "2.11.0"}, 1,
                               cases);
  };
  const auto loop = session({}, 1.10);
  const auto grouped = session({"model.expert_impl=grouped"}, 1.30);  // newer: bench_cases lists it first
  CHECK(grouped > loop);
  out = ssr::analysis::build("tab", kStudy, "", {}, s);
  CHECK(out.md.find("| LB | <u>98.250 ± 3.176</u> | <u>97.250 ± 3.176</u> | -2.000 ± 0.000 * | 10.00% |") !=
        std::string::npos);
  out = ssr::analysis::build("tab", kStudy, "", {"model.expert_impl=grouped"}, s);
  CHECK(out.missing.size() == 1);  // the same runs: the hash leaves the compute path out
  CHECK(out.md.find("| LB | <u>98.250 ± 3.176</u> | <u>97.250 ± 3.176</u> | -2.000 ± 0.000 * | 30.00% |") !=
        std::string::npos);
  // The momentum runs ran the loop path: no grouped step time, and the note says why.
  CHECK(out.md.find("| LB | NaN | NaN | NaN | – |") != std::string::npos);
  CHECK(
      out.md.find("Note: LB (Momentum), Overhead: 2 of 2 run pairs skipped (compute paths other than the report's).") !=
      std::string::npos);
}

TEST_CASE("reports take the overrides the sweep ran with: they are part of the job hashes", "[report]") {
  const auto db = fixture_db();
  ssr::store::Store s(db);
  const auto plain = ssr::analysis::build("tab", kStudy, "", {}, s);
  CHECK(plain.missing.size() == 1);
  const auto other = ssr::analysis::build("tab", kStudy, "", {"train.lr=1e-3"}, s);
  CHECK(other.missing.size() == 12);
  CHECK(normalise(other.md, db).find("`ssr sweep SRC/tests/fixtures/report-study.yaml train.lr=1e-3`") !=
        std::string::npos);
}

TEST_CASE("ssr compare: differing keys, results with units, paired differences by seed", "[report][cli]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ssr_compare_" + std::to_string(::getpid()));
  ssr::testing::remove_tree(dir);
  std::filesystem::create_directories(dir);
  const std::string db = (dir / "runs.db").string();
  {
    ssr::store::Store s(db);
    auto add = [&](const std::string& router, int64_t seed, double ppl) {
      ssr::config::Config cfg;
      cfg.set("router.name", router, "test");
      cfg.set("run.seed", seed, "test");
      const auto id = s.create_run(cfg.hash(), cfg.to_json(), seed, ssr::store::this_machine("cpu"));
      s.set_result(id, "valid", "ppl", ppl);
      s.finish_run(id, "finished");
    };
    // lb is 2 and 4 PPL above vanilla at seeds 1 and 2: Δ = +3 ± t(1) * 1 = ±12.7.
    add("vanilla", 1, 100);
    add("vanilla", 2, 110);
    add("lb", 1, 102);
    add("lb", 2, 114);
  }
  const auto r = ssr::testing::run(fmt::format("compare 1 2 3 4 --db {}", db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("| router.name | vanilla | vanilla | lb | lb |") != std::string::npos);
  CHECK(r.out.find("| valid/ppl (perplexity) | 100 | 110 | 102 | 114 |") != std::string::npos);
  CHECK(r.out.find("### router.name=lb\n\n| result | Δ | Δ % | seeds |") != std::string::npos);
  CHECK(r.out.find("| valid/ppl | +3 ± 13 |") != std::string::npos);
  // The same selection by condition and by group key; --where repeats and holds together.
  const auto w =
      ssr::testing::run(fmt::format("compare --where seed=1,seed!=9 --where 'valid>0' --by router.name "
                                    "--metric valid/ppl --db {}",
                                    db));
  INFO(w.out);
  CHECK(w.code == 0);
  CHECK(w.out.find("| valid/ppl | +2 |") != std::string::npos);  // seed 1 only: 102 - 100
  CHECK(w.out.find("| router.name | vanilla | lb |") != std::string::npos);
  struct Bad {
    std::string args, error;
  };
  for (const auto& bad : std::vector<Bad>{{"1 9", "no run 9"},
                                          {"1", "give two or more runs"},
                                          {"--where seed=7", "0 run(s) match seed=7"},
                                          {"1 2 --metric valid/ppx",
                                           "--metric valid/ppx: none of these runs has "
                                           "that result; did you mean valid/ppl?"},
                                          {"1 2 --by router.nme", "did you mean router.name?"},
                                          {"--where colour=red", "unknown key 'colour'"}}) {
    const auto b = ssr::testing::run(fmt::format("compare {} --db {}", bad.args, db));
    INFO(bad.args << ": " << b.out);
    CHECK(b.code == 2);
    CHECK(b.out.find(bad.error) != std::string::npos);
  }
}

TEST_CASE("compare leaves out nan pairs and the Δ % against a zero baseline, and says so", "[report]") {
  const auto db = ssr::testing::temp_db("compare", "nan.db");
  ssr::store::Store s(db);
  auto add = [&](const std::string& router, int64_t seed, double ppl, double dead) {
    ssr::config::Config cfg;
    cfg.set("router.name", router, "test");
    cfg.set("run.seed", seed, "test");
    const auto id = s.create_run(cfg.hash(), cfg.to_json(), seed, ssr::store::this_machine("cpu"));
    s.set_result(id, "valid", "ppl", ppl);
    s.set_result(id, "train", "dead", dead);
    s.finish_run(id, "finished");
    return id;
  };
  std::vector<int64_t> ids = {add("vanilla", 1, 100, 0), add("vanilla", 2, 110, 0), add("lb", 1, 102, 1),
                              add("lb", 2, std::numeric_limits<double>::quiet_NaN(), 2)};
  const auto c = ssr::analysis::compare(s, {.ids = ids});
  REQUIRE(c.groups.size() == 2);
  REQUIRE(c.paired.size() == 2);
  const auto& dead = c.paired[0].name == "dead" ? c.paired[0] : c.paired[1];
  const auto& ppl = c.paired[0].name == "ppl" ? c.paired[0] : c.paired[1];
  CHECK(dead.delta.mean == 1.5);
  CHECK_FALSE(dead.relative.has_value());  // Δ % of a baseline of 0 is no number
  CHECK(ppl.delta.n == 1);
  CHECK(ppl.left_out == 1);
  const auto md = ssr::analysis::to_markdown(c);
  INFO(md);
  CHECK(md.find("-nan") == std::string::npos);
  CHECK(md.find("inf ±") == std::string::npos);
  CHECK(md.find("| valid/ppl | +2 | +2 | 1 (1 left out) |") != std::string::npos);
  CHECK(md.find("| train/dead | +1.5 ± 6.4 | - | 2 |") != std::string::npos);
}

TEST_CASE("a run whose stored config is damaged is listed as damaged, and no command reads it as the defaults",
          "[report][cli]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ssr_damaged_" + std::to_string(::getpid()));
  ssr::testing::remove_tree(dir);
  std::filesystem::create_directories(dir);
  const std::string db = (dir / "runs.db").string();
  {
    ssr::store::Store s(db);
    for (const std::string router : {"vanilla", "lb", "zloss"}) {
      ssr::config::Config cfg;
      cfg.set("router.name", router, "test");
      const auto id = s.create_run(cfg.hash(), cfg.to_json(), 1, ssr::store::this_machine("cpu"));
      s.set_result(id, "valid", "ppl", 100);
      s.finish_run(id, router == "lb" ? "interrupted" : "finished");
    }
    // Run 2: JSON but no config; run 3: not JSON at all.
    REQUIRE(sqlite3_exec(s.handle(), "UPDATE runs SET config_json='[]' WHERE id=2", nullptr, nullptr, nullptr) ==
            SQLITE_OK);
    REQUIRE(sqlite3_exec(s.handle(), "UPDATE runs SET config_json='{\"groups\":' WHERE id=3", nullptr, nullptr,
                         nullptr) == SQLITE_OK);
  }
  const auto runs = ssr::testing::run(fmt::format("runs --db {}", db));
  INFO(runs.out);
  CHECK(runs.code == 0);
  CHECK(runs.out.find("1   finished  vanilla") != std::string::npos);
  CHECK(runs.out.find("2   damaged") != std::string::npos);
  CHECK(runs.out.find("run 3 is damaged: config_json is not JSON") != std::string::npos);
  const auto json = ssr::testing::run(fmt::format("runs --format json --db {} 2>/dev/null", db));
  CHECK(json.out.find("\"damage\": \"config_json is not a JSON object") != std::string::npos);
  for (const auto& [args, want] : std::vector<std::pair<std::string, std::string>>{
           {"compare 1 2", "run 2: its stored config is damaged"},
           {"plot 1 3 --by router.name", "run 3: its stored config is damaged (config_json is not JSON)"},
           {"train --resume 2", "run 2: its stored config is damaged"}}) {
    const auto r = ssr::testing::run(fmt::format("{} --db {}", args, db));
    INFO(args << ": " << r.out);
    CHECK(r.code == 2);
    CHECK(r.out.find(want) != std::string::npos);
  }
  const auto show = ssr::testing::run(fmt::format("show 3 --db {}", db));
  INFO(show.out);
  CHECK(show.code == 0);
  CHECK(show.out.find("status damaged") != std::string::npos);
  CHECK(show.out.find("valid    ppl        100") != std::string::npos);
}

static std::string file_text(const std::string& path) {
  std::ifstream f(path);
  return std::string((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

TEST_CASE("ssr plot: a metric per run or mean and band per --by group, as csv, image or text", "[report][cli]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ssr_plot_" + std::to_string(::getpid()));
  ssr::testing::remove_tree(dir);
  std::filesystem::create_directories(dir);
  const std::string db = (dir / "runs.db").string();
  {
    ssr::store::Store s(db);
    // Loss at steps 10 and 20; runs 1-2 vanilla, run 3 lb; two layers of load_cv for run 1.
    auto add = [&](const std::string& router, int64_t seed, double a, double b) {
      ssr::config::Config cfg;
      cfg.set("router.name", router, "test");
      cfg.set("run.seed", seed, "test");
      const auto id = s.create_run(cfg.hash(), cfg.to_json(), seed, ssr::store::this_machine("cpu"));
      s.add_metrics(id, {{10, "train", "loss", a, 0}, {20, "train", "loss", b, 0}, {20, "valid", "loss", b + 1, 0}});
      s.finish_run(id, "finished");
      return id;
    };
    const auto first = add("vanilla", 1, 4, 3);
    add("vanilla", 2, 6, 5);
    add("lb", 1, 5, 4);
    s.add_metrics(first, {{20, "train", "layer0/load_cv", 0.2, 0}, {20, "train", "layer1/load_cv", 0.4, 0}});
  }
  const auto csv = (dir / "loss.csv").string();
  auto r = ssr::testing::run(fmt::format("plot 1 3 --out {} --db {}", csv, db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(file_text(csv) ==
        "series,x,y,ci,n,series_index,x_index\nrun 1,10,4,0,1,0,10\nrun 1,20,3,0,1,0,20\n"
        "run 3,10,5,0,1,1,10\nrun 3,20,4,0,1,1,20\n");
  // Grouped: vanilla's two runs average 5 and 4 with t(1) * 1 = 12.706 as the half-width.
  r = ssr::testing::run(fmt::format("plot 1 2 3 --by router.name --out {} --db {}", csv, db));
  REQUIRE(r.code == 0);
  const auto grouped = file_text(csv);
  CHECK(grouped.find("router.name=vanilla,10,5,12.706,2,0,10") != std::string::npos);
  CHECK(grouped.find("router.name=lb,20,4,0,1,1,20\n") != std::string::npos);
  r = ssr::testing::run(fmt::format("plot 1 --metric layer*/load_cv --out {} --db {}", csv, db));
  CHECK(file_text(csv).find("run 1,20,0.3") != std::string::npos);  // the mean over the two layers
  r = ssr::testing::run(fmt::format("plot 1 2 --metric valid --out {} --db {}", csv, db));
  CHECK(file_text(csv).find("run 2,20,6,") != std::string::npos);
  // Errors name what is wrong.
  r = ssr::testing::run(fmt::format("plot 1 --metric ppl --db {}", db));
  CHECK(r.code == 2);
  CHECK(r.out.find("--metric ppl --split train: no such metric in these runs (logged under train:") !=
        std::string::npos);
  CHECK(ssr::testing::run(fmt::format("plot 9 --db {}", db)).out.find("no run 9") != std::string::npos);
  CHECK(ssr::testing::run(fmt::format("plot 1 --by router.nam --db {}", db))
            .out.find("--by: unknown key 'router.nam'; did you mean router.name?") != std::string::npos);
  CHECK(ssr::testing::run(fmt::format("plot 1 --out x.svg --db {}", db)).code == 2);
  // Drawn by gnuplot where it is installed (the project's dependencies include it).
  if (std::system("command -v gnuplot >/dev/null 2>&1") == 0) {
    const auto png = dir / "loss.png";
    r = ssr::testing::run(fmt::format("plot 1 2 3 --by router.name --out {} --db {}", png.string(), db));
    CHECK(r.code == 0);
    CHECK(std::filesystem::file_size(png) > 1000);
    CHECK(std::filesystem::exists(dir / "loss.gp"));
    r = ssr::testing::run(fmt::format("plot 1 3 --db {}", db));  // text on the terminal
    CHECK(r.code == 0);
    CHECK(r.out.find("run 3") != std::string::npos);
    CHECK(r.out.find("loss (train)") != std::string::npos);
  }
}

TEST_CASE("ssr runs: conditions on results, sort, limit, columns, units and tags", "[report][cli]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ssr_runs_" + std::to_string(::getpid()));
  ssr::testing::remove_tree(dir);
  std::filesystem::create_directories(dir);
  const std::string db = (dir / "runs.db").string();
  {
    ssr::store::Store s(db);
    auto add = [&](const std::string& router, double p, const std::string& unit, double value) {
      ssr::config::Config cfg;
      cfg.set("router.name", router, "test");
      cfg.set("router.p", p, "test");
      cfg.set("tags.note", router + "-run", "test");
      const auto id = s.create_run(cfg.hash(), cfg.to_json(), 1, ssr::store::this_machine("cpu"));
      s.set_result(id, "valid", unit, value);
      s.set_result(id, "train", "load_cv", value / 100);
      s.finish_run(id, "finished");
    };
    add("vanilla", 0, "ppl", 40);
    add("ssr", 0.01, "ppl", 25);
    add("ssr", 0.1, "ppl", 30);
  }
  auto r = ssr::testing::run(fmt::format(
      "runs --where 'valid<35,router.p>=0.01' --sort -valid --columns id,router.p,valid,labels --db {}", db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  // One unit for every listed run: it goes into the header.
  CHECK(r.out.find("id  router.p  valid ppl  labels") != std::string::npos);
  const auto three = r.out.find("\n3 "), two = r.out.find("\n2 ");
  CHECK(three != std::string::npos);
  CHECK(two != std::string::npos);
  CHECK(three < two);  // 30 before 25: descending
  CHECK(r.out.find("tags.note=ssr-run") != std::string::npos);
  CHECK(r.out.find("\n1 ") == std::string::npos);
  r = ssr::testing::run(
      fmt::format("runs --sort train/load_cv --limit 1 --columns id,train/load_cv --format csv --db {}", db));
  CHECK(r.out == "id,train/load_cv\n2,0.250\n");
  for (const auto& [args, says] : std::vector<std::pair<std::string, std::string>>{
           {"--where 'valid<abc'", "--where: 'valid<abc': < compares numbers"},
           {"--sort colour", "--sort: unknown key 'colour'"},
           {"--columns id,colour", "--columns: unknown key 'colour'"},
           {"--where 'valid!30'", "is not key=value"}}) {
    r = ssr::testing::run(fmt::format("runs {} --db {}", args, db));
    INFO(args);
    CHECK(r.code == 2);
    CHECK(r.out.find(says) != std::string::npos);
  }
}

TEST_CASE("ssr rm deletes runs and their checkpoints, keep_checkpoints prunes them, checkpoint_every=-1 writes none",
          "[cli]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ssr_rm_" + std::to_string(::getpid()));
  ssr::testing::remove_tree(dir);
  const std::string db = (dir / "runs.db").string(), out = (dir / "ck").string();
  const std::string train = fmt::format(
      "train {}/experiments/demo.yaml train.steps=4 train.eval_every=2 train.checkpoint_every=2 eval.max_segments=2 "
      "run.out_dir={} --db {} --quiet",
      SSR_SOURCE_DIR, out, db);
  REQUIRE(ssr::testing::run(train + " run.keep_checkpoints=none").code == 0);
  auto r = ssr::testing::run(train + " run.keep_checkpoints=best");
  REQUIRE(r.code == 0);
  // The same config again is trained, with a note naming the earlier run.
  CHECK(r.out.find("already finished as run 1") != std::string::npos);
  std::string store_id;
  for (const auto& e : std::filesystem::directory_iterator(out)) store_id = e.path().filename();
  const auto run1 = std::filesystem::path(out) / store_id / "1", run2 = std::filesystem::path(out) / store_id / "2";
  CHECK(!std::filesystem::exists(run1));
  CHECK(std::filesystem::exists(run2 / "best.pt"));
  CHECK(!std::filesystem::exists(run2 / "last.pt"));
  r = ssr::testing::run(fmt::format("rm 2 --db {}", db));
  CHECK(r.code == 0);
  CHECK(r.out.find("add --yes") != std::string::npos);
  CHECK(ssr::store::Store(db).run(2));
  r = ssr::testing::run(fmt::format("rm 2 --yes --db {}", db));
  CHECK(r.code == 0);
  CHECK(!ssr::store::Store(db).run(2));
  CHECK(ssr::store::Store(db).metrics(2).empty());
  CHECK(!std::filesystem::exists(run2));
  CHECK(ssr::testing::run(fmt::format("rm 7 --yes --db {}", db)).out.find("no run 7") != std::string::npos);
  r = ssr::testing::run(fmt::format("export 1 --db {}", db));
  CHECK(r.out.rfind("run,step,split,name,value,wall_s\n1,", 0) == 0);
  // No checkpoint file at all: the best weights wait in memory, and the results are those of run 1.
  REQUIRE(ssr::testing::run(train + " train.checkpoint_every=-1").code == 0);
  const int64_t third = ssr::store::Store(db).runs().back().id;
  CHECK(!std::filesystem::exists(std::filesystem::path(out) / store_id / std::to_string(third)));
  const auto result = [&](int64_t run, const std::string& split) {
    for (const auto& x : ssr::store::Store(db).results(run))
      if (x.split == split && x.name == "ppl") return x.value;
    return -1.0;
  };
  CHECK(result(third, "valid") == result(1, "valid"));
  CHECK(result(third, "test") == result(1, "test"));
  CHECK(result(third, "valid") > 0);
}
