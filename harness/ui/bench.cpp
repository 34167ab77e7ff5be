#include "harness/ui/bench.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <vector>

#include "harness/config/config.hpp"
#include "harness/store/store.hpp"
#include "harness/ui/api.hpp"

namespace ssr::ui {
namespace {

namespace fs = std::filesystem;

// The store: runs cycling through four routers and seeds, each with an equal share of `rows`
// (train loss and two layers' load_cv at every logged step, valid loss every tenth), results, and
// for every tenth run 4 layers x 16 experts of loads at each logged step.
// Returns the number of metric rows written.
int64_t build_store(const std::string& db, const UiBenchArgs& a) {
  int64_t written = 0;
  store::Store s(db);
  const std::vector<std::string> routers = {"vanilla", "ssr", "sinkhorn", "lb"};
  const int64_t per_run = std::max<int64_t>(1, a.rows / a.runs);
  const int64_t steps = std::max<int64_t>(1, per_run * 10 / 31);  // 3 rows per step, and one in ten has a 4th
  for (int64_t i = 0; i < a.runs; ++i) {
    config::Config cfg;
    cfg.set("router.name", routers[static_cast<size_t>(i) % routers.size()], "bench");
    cfg.set("run.seed", i / static_cast<int64_t>(routers.size()) + 1, "bench");
    const auto id = s.create_run(cfg.hash(), cfg.to_json(), cfg.i("run.seed"), store::this_machine("cpu"));
    std::vector<store::Metric> rows;
    rows.reserve(static_cast<size_t>(per_run) + 8);
    for (int64_t step = 1; step <= steps && static_cast<int64_t>(rows.size()) < per_run; ++step) {
      const double loss = 6.0 * std::exp(-static_cast<double>(step) / 500.0) + 1.5;
      rows.push_back({step, "train", "loss", loss, 0});
      rows.push_back({step, "train", "layer0/load_cv", 0.3, 0});
      rows.push_back({step, "train", "layer1/load_cv", 0.4, 0});
      if (step % 10 == 0) rows.push_back({step, "valid", "loss", loss + 0.1, 0});
    }
    s.add_metrics(id, rows);
    written += static_cast<int64_t>(rows.size());
    if (i % 10 == 0) {
      std::vector<store::ExpertLoad> loads;
      for (int64_t step = 10; step <= steps; step += 10)
        for (int64_t layer = 0; layer < 4; ++layer) loads.push_back({step, layer, std::vector<int64_t>(16, 100)});
      s.add_expert_loads(id, loads);
    }
    s.set_result(id, "valid", "ppl", 30.0 + static_cast<double>(i % 7));
    s.finish_run(id, "finished");
  }
  return written;
}

}  // namespace

int run_ui_bench(const UiBenchArgs& a, std::ostream& out) {
  if (a.runs < 1 || a.rows < 1) throw config::ConfigError("bench ui: --runs and --rows must be >= 1");
  const bool scratch = a.db.empty();
  const std::string db =
      scratch ? (fs::temp_directory_path() / fmt::format("ssr-bench-ui-{}.sqlite", ::getpid())).string() : a.db;
  if (fs::exists(db)) throw config::ConfigError(fmt::format("--db {}: exists; bench ui builds a new store", db));
  // The scratch store goes however the benchmark ends, an error included.
  struct Scratch {
    std::string path;
    ~Scratch() {
      std::error_code ec;
      if (!path.empty())
        for (const char* ext : {"", "-wal", "-shm"}) fs::remove(path + ext, ec);
    }
  } scratch_files{scratch ? db : ""};
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t metric_rows = build_store(db, a);
  const double built = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  out << fmt::format("store {}: {} runs, {} metric rows, built in {:.1f} s\n", db, a.runs, metric_rows, built);
  out << fmt::format("{:<44} {:>10} {:>8}\n", "request", "median ms", "<= 1 s");
  const Site site{db};
  const std::string mid = std::to_string(a.runs / 2 / 10 * 10 + 1);  // a run with loads
  std::string ids;
  for (int64_t i = 1; i <= std::min<int64_t>(a.runs, 40); ++i) ids += (i > 1 ? "," : "") + std::to_string(i);
  struct Request {
    std::string path;
    Params params;
  };
  for (const auto& r : std::vector<Request>{{"/api/runs", {}},
                                            {"/api/runs", {{"where", "router.name=ssr,valid<33"}}},
                                            {"/api/runs/" + mid, {}},
                                            {"/api/runs/" + mid + "/metrics", {}},
                                            {"/api/runs/" + mid + "/load", {}},
                                            {"/api/compare", {{"ids", ids}, {"by", "router.name"}}},
                                            {"/api/sweeps", {}}}) {
    std::vector<double> ms;
    int status = 0;
    for (int i = 0; i < a.repeats; ++i) {
      const auto start = std::chrono::steady_clock::now();
      status = handle(site, r.path, r.params).status;
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
    }
    std::sort(ms.begin(), ms.end());
    const double median = ms[ms.size() / 2];
    std::string label = r.path;
    for (const auto& [k, v] : r.params) label += (label == r.path ? "?" : "&") + k + "=" + v;
    if (label.size() > 44) label = label.substr(0, 41) + "...";
    out << fmt::format("{:<44} {:>10.1f} {:>8}\n", label, median,
                       status != 200    ? fmt::format("HTTP {}", status)
                       : median <= 1000 ? "yes"
                                        : "NO");
  }
  return 0;
}

}  // namespace ssr::ui
