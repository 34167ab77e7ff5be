// Reports: interval arithmetic against hand-computed values, and every output of a table and two
// figures built from a small fixture store, compared with golden files (tests/golden/; rerun with
// SSR_UPDATE_GOLDEN=1 to rewrite them after an intended change, then read the diff).
#include <catch2/catch.hpp>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>

#include "analysis/report.hpp"
#include "harness/store/store.hpp"
#include "harness/sweep/sweep.hpp"

namespace fs = std::filesystem;

namespace {

const std::string kSrc = SSR_SOURCE_DIR;
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

void check_golden(const std::string& name, const std::string& text) {
  const fs::path path = fs::path(kSrc) / "tests" / "golden" / name;
  if (std::getenv("SSR_UPDATE_GOLDEN")) {
    std::ofstream(path) << text;
    WARN("rewrote " << path.string());
    return;
  }
  std::ifstream f(path);
  REQUIRE(f.good());
  const std::string want((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  INFO(path.string());
  CHECK(text == want);
}

// Runs of the fixture study with known numbers: PPL falls with the method index and the seed,
// lb momentum seed 1 diverged (nan), ssr_l momentum seed 2 never ran, lb conventional seed 2 ran
// on another host (so its overhead pair is skipped).
std::string fixture_db() {
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
    ssr::store::RunInfo info{"abc123", m == 1 && !mom && seed == 2 ? "other" : "node1", "cpu: test (1 threads)", "2.11.0"};
    const auto id = s.create_run(j.config.hash(), j.config.to_json(), seed, info);
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
      {{1, 3}, 2, 12.706},                 // s = sqrt(2), se = 1
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

TEST_CASE("a table from the store: layout, intervals, deltas, ranks, NaN and missing cells", "[report]") {
  const auto db = fixture_db();
  ssr::store::Store s(db);
  const auto out = ssr::analysis::build("tab", kStudy, "", s);
  REQUIRE(out.kind == "table");
  // Conventional vanilla: test PPL 99.5 and 99 over seeds 1, 2 -> 99.25 ± 12.706 * 0.25.
  CHECK(out.md.find("| Vanilla | 100.250 ± 3.176 | 99.250 ± 3.176 | – | 0.00% |") != std::string::npos);
  CHECK(out.md.find("| **95.250 ± 3.176** |") != std::string::npos);  // SSR-L best test PPL
  CHECK(out.md.find("| -4.000 |") != std::string::npos);             // SSR-L minus Vanilla
  CHECK(out.md.find("| LB | NaN | NaN |") != std::string::npos);     // a diverged seed makes the cell NaN
  // The pair on another host is left out of the overhead and the footer says so.
  CHECK(out.md.find("Note: LB (Conventional), Overhead: 1 of 2 run pairs skipped (different hardware") != std::string::npos);
  REQUIRE(out.missing.size() == 1);
  CHECK(out.missing[0].find("variant=ssr_l model.block=momentum run.seed=2") != std::string::npos);
  check_golden("report_table.md", normalise(out.md, db));
  check_golden("report_table.tex", normalise(out.tex, db));
  check_golden("report_table.csv", normalise(out.csv, db));
}

TEST_CASE("figures from the store: tidy csv and gnuplot variables", "[report]") {
  const auto db = fixture_db();
  ssr::store::Store s(db);
  const auto bars = ssr::analysis::build("bars", kStudy, "", s);
  REQUIRE(bars.figure == "bars");
  check_golden("report_bars.csv", normalise(bars.csv, db));
  check_golden("report_bars.gp", normalise(bars.gnuplot, db));
  const auto norms = ssr::analysis::build("norms", kStudy, "", s);
  REQUIRE(norms.figure == "lines");
  check_golden("report_norms.csv", normalise(norms.csv, db));
  CHECK_THROWS_WITH(ssr::analysis::build("nope", kStudy, "", s), Catch::Contains("reports: has no nope"));
}
