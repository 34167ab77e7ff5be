// `ssr ui`: every endpoint of the JSON API against a fixture store (bad ids, thinning, escaping,
// paths outside the API), then the page in a real browser (headless chromium) over `ssr ui`.
#ifdef SSR_WITH_UI
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "harness/config/config.hpp"
#include "harness/store/store.hpp"
#include "harness/sweep/sweep.hpp"
#include "harness/ui/api.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

const std::string kScript = "<script>alert(1)</script>";

// Sweep 1 of six jobs, vanilla and lb at seeds 1-3, as runs 4-9: five finished with a valid/loss
// curve and valid/ppl (lb is 2 % above vanilla at seed 1, 4 % at seed 2), lb seed 3 failed.
void add_sweep(ssr::store::Store& s, const std::string& db) {
  const auto dir = ssr::testing::temp_dir("ui", "sweep");
  const auto file = (dir / "sweep.yaml").string();
  std::ofstream(file) << fmt::format(
      "base: {}/experiments/demo.yaml\noverrides: [train.steps=7]\ngrid:\n  router.name: [vanilla, lb]\nseeds: [1, 2, "
      "3]\n",
      ssr::testing::kSrc);
  auto spec = ssr::sweep::load(file, {});
  std::vector<ssr::store::PlannedJob> jobs;
  for (auto& j : spec.jobs) {
    j.config.set("run.db", db, "--db");
    jobs.push_back({j.num, j.config.hash(), j.config.to_json(), j.config.i("run.seed")});
  }
  const int64_t sweep = s.plan_sweep(spec.name, spec.to_json(), spec.plan_hash(), jobs).first;
  for (const auto& j : spec.jobs) {
    const auto run = s.claim_job(sweep, j.num, ssr::store::this_machine("cpu"));
    REQUIRE(run);
    const bool lb = j.config.s("router.name") == "lb";
    const int64_t seed = j.config.i("run.seed");
    if (lb && seed == 3) {
      s.finish_run(run->id, "failed", "out of memory at step 3\nstack...");
      continue;
    }
    const double base = 100.0 + 10.0 * static_cast<double>(seed);
    const double ppl = lb ? base * (1.0 + 0.02 * static_cast<double>(seed)) : base;
    s.add_metrics(run->id, {{10, "valid", "loss", std::log(ppl) + 0.5, 0}, {20, "valid", "loss", std::log(ppl), 0}});
    s.set_result(run->id, "valid", "ppl", ppl);
    s.finish_run(run->id, "finished");
  }
}

// Three runs: vanilla (finished, 1,000 logged steps of loss and two layers' load_cv), lb tagged
// with a script, and a running zloss run; with `sweep`, add_sweep's runs 4-9 too.
std::string fixture_store(const std::string& name, bool sweep = false) {
  const auto db = ssr::testing::temp_db("ui", name);
  ssr::store::Store s(db);
  auto add = [&](const std::string& router, std::vector<std::string> overrides) {
    overrides.push_back("router=" + router);
    auto cfg = ssr::testing::resolve_experiment("demo.yaml", overrides);
    return s.create_run(cfg.hash(), cfg.to_json(), 1, ssr::store::this_machine("cpu"));
  };
  const auto a = add("vanilla", {});
  std::vector<ssr::store::Metric> rows;
  for (int64_t step = 1; step <= 1000; ++step) {
    rows.push_back({step, "train", "loss", 5.0 - step * 1e-3, 0});
    for (int layer = 0; layer < 2; ++layer)
      rows.push_back({step, "train", fmt::format("layer{}/load_cv", layer), 0.5 + layer, 0});
  }
  s.add_metrics(a, rows);
  // Two layers, 4 experts, 300 logged windows: expert 0 takes half of layer 1's tokens.
  std::vector<ssr::store::ExpertLoad> loads;
  for (int64_t step = 1; step <= 300; ++step) {
    loads.push_back({step, 0, {25, 25, 25, 25}});
    loads.push_back({step, 1, {50, 20, 20, 10}});
  }
  s.add_expert_loads(a, loads);
  s.set_result(a, "valid", "ppl", 30.25);
  s.finish_run(a, "finished");
  const auto b = add("lb", {"+tags.note=" + kScript});
  s.set_result(b, "valid", "ppl", 31.5);
  s.finish_run(b, "finished");
  add("zloss", {});
  if (sweep) add_sweep(s, db);
  return db;
}

json body(const ssr::ui::Reply& r) { return json::parse(r.body); }

}  // namespace

TEST_CASE("ui API: runs, one run, thinned curves, and JSON errors for bad ids and paths", "[ui]") {
  const auto db = fixture_store("api.db");
  using ssr::ui::handle;
  auto r = handle({db}, "/api/runs", {});
  REQUIRE(r.status == 200);
  auto runs = body(r).at("runs");
  REQUIRE(runs.size() == 3);
  CHECK(runs[0].at("id") == 3);  // newest first
  CHECK(runs[0].at("status") == "running");
  CHECK(runs[0].contains("heartbeat_age_s"));
  CHECK(runs[2].at("results").at("valid").at("ppl") == 30.25);
  CHECK(runs[1].at("tags").at("note") == kScript);  // data, not markup: the page sets it as text
  CHECK(body(handle({db}, "/api/runs", {{"where", "router=lb"}})).at("runs").size() == 1);
  CHECK(runs[1].at("router") == "lb");
  CHECK(body(handle({db}, "/api/runs", {{"limit", "2"}})).at("runs").size() == 2);
  // Extra columns, as `ssr runs --columns` names them.
  const auto cols = body(handle({db}, "/api/runs", {{"columns", "router.name,valid/ppl"}})).at("runs");
  CHECK(cols[2].at("columns") == json({{"router.name", "vanilla"}, {"valid/ppl", "30.25"}}));
  CHECK(cols[0].at("columns").at("valid/ppl") == "");

  const auto run = body(handle({db}, "/api/runs/1", {}));
  CHECK(run.at("status") == "finished");
  CHECK(run.at("provenance").at("torch").get<std::string>().size() > 0);
  bool documented = false;
  for (const auto& k : run.at("config"))
    if (k.at("key") == "router.name")
      documented = k.at("value") == "vanilla" && !k.at("doc").get<std::string>().empty();
  CHECK(documented);

  const auto m = body(handle({db}, "/api/runs/1/metrics", {{"points", "50"}})).at("series");
  CHECK(m.size() == 3);
  const auto& loss = m.at("train/loss");
  CHECK(loss.size() == 50);
  CHECK(loss.front()[0] == 1);
  CHECK(loss.back()[0] == 1000);  // the last point is kept
  CHECK(m.at("train/layer1/load_cv").back()[1] == 1.5);

  const auto load = body(handle({db}, "/api/runs/1/load", {{"points", "100"}})).at("layers");
  REQUIRE(load.size() == 2);
  CHECK(load[1].at("layer") == 1);
  CHECK(load[1].at("steps").size() == 100);
  CHECK(load[1].at("steps").back() == 300);
  CHECK(load[1].at("share").back() == json({0.5, 0.2, 0.2, 0.1}));
  CHECK(body(handle({db}, "/api/runs/2/load", {})).at("layers").empty());  // a run without loads

  struct Bad {
    std::string path;
    ssr::ui::Params params;
    int status;
    std::string error;
  };
  for (const auto& bad :
       std::vector<Bad>{{"/api/runs/99", {}, 404, "no run 99"},
                        {"/api/runs/abc", {}, 400, "'abc' is not a run id"},
                        {"/api/runs/-1", {}, 400, "'-1' is not a run id"},
                        {"/api/runs/1/nothing", {}, 404, "no such page"},
                        {"/api/runs", {{"where", "colour=red"}}, 400, "unknown key 'colour'"},
                        {"/api/runs", {{"limit", "0"}}, 400, "limit: '0'"},
                        {"/api/runs/1/metrics", {{"points", "x"}}, 400, "points: 'x'"},
                        {"/api/runs", {{"columns", "valid/ppl,router.nme"}}, 400, "did you mean router.name?"},
                        {"/../../etc/passwd", {}, 404, "no such page"},
                        {"/api/runs/../../../etc/passwd", {}, 404, "no such page"},
                        {"/api/runs/..", {}, 400, "'..' is not a run id"},
                        {"/api/compare", {{"ids", "1,x"}}, 400, "ids: 'x' is not a run id"},
                        {"/api/compare", {{"ids", "1"}}, 400, "give two or more runs"},
                        {"/api/compare", {{"ids", "1,2"}, {"by", "routr"}}, 400, "did you mean router?"},
                        {"/api/sweeps/7", {}, 404, "no sweep 7"},
                        {"/api/sweeps/x", {}, 400, "'x' is not a sweep id"},
                        {"/api/reports/tabel1", {}, 400, "tabel1"},
                        {"/static/../../harness/ui/api.cpp", {}, 404, "no such page"}}) {
    INFO(bad.path);
    const auto reply = handle({db}, bad.path, bad.params);
    CHECK(reply.status == bad.status);
    CHECK(reply.content_type == "application/json");
    CHECK(body(reply).at("error").get<std::string>().find(bad.error) != std::string::npos);
  }
  const auto page = handle({db}, "/", {});
  CHECK(page.content_type.find("text/html") == 0);
  CHECK(page.body.find("innerHTML") == std::string::npos);  // text goes in as text, never as markup
  CHECK(handle({db + ".absent"}, "/api/runs", {}).status == 500);
}

TEST_CASE("ui API: compare a sweep by router with its paired Δ and band curves, sweep progress, a report", "[ui]") {
  const auto db = fixture_store("sweep.db", true);
  using ssr::ui::handle;
  const auto c = body(handle({db}, "/api/compare", {{"sweep", "1"}, {"by", "router.name"}, {"metric", "valid/ppl"}}));
  INFO(c.dump(1));
  CHECK(c.at("groups") == json({"router.name=vanilla", "router.name=lb"}));
  REQUIRE(c.at("paired").size() == 1);
  const auto& d = c.at("paired")[0];
  CHECK(d.at("result") == "valid/ppl");
  CHECK(d.at("delta").at("n") == 2);                                // seed 3 of lb failed: two pairs
  CHECK(d.at("relative").at("mean").get<double>() == Approx(3.0));  // +2 % and +4 %
  CHECK(d.at("relative").at("ci").get<double>() == Approx(12.706 * 1.0));
  const auto& series = c.at("curve").at("series");
  CHECK(c.at("curve").at("name") == "valid/loss");
  REQUIRE(series.size() == 2);
  CHECK(series[0].at("name") == "router.name=vanilla");
  CHECK(series[0].at("points").size() == 2);
  CHECK(series[0].at("points")[1][3] == 3);  // three vanilla runs in the mean at step 20
  // The same comparison from `ssr compare`: the page and the CLI share analysis::compare.
  const auto cli = ssr::testing::run(fmt::format("compare --sweep 1 --by router.name --metric valid/ppl --db {}", db));
  CHECK(cli.out.find("| valid/ppl | +3.5 ± 17 | +3 ± 13 | 2 |") != std::string::npos);
  CHECK(body(handle({db}, "/api/compare", {{"ids", "4,5"}, {"curve", "train/nothing"}}))
            .at("curve")
            .at("error")
            .get<std::string>()
            .find("no such metric") != std::string::npos);

  const auto sweeps = body(handle({db}, "/api/sweeps", {})).at("sweeps");
  REQUIRE(sweeps.size() == 1);
  CHECK(sweeps[0].at("summary").at("line") == "[5/6 done, 1 failed]");
  CHECK(sweeps[0].at("eta_s").is_null());  // nothing left to run
  const auto sweep = body(handle({db}, "/api/sweeps/1", {}));
  REQUIRE(sweep.at("jobs").size() == 6);
  bool failed_line = false;
  for (const auto& j : sweep.at("jobs"))
    if (j.at("status") == "failed") failed_line = j.at("error") == "out of memory at step 3";
  CHECK(failed_line);

  const auto reports = body(handle({db}, "/api/reports", {})).at("reports");
  CHECK(std::any_of(reports.begin(), reports.end(), [](const json& r) { return r.at("name") == "table1"; }));
  const auto t1 = body(handle({db}, "/api/reports/table1", {{"scale", "demo"}}));
  CHECK(t1.at("kind") == "table");
  CHECK(t1.at("md").get<std::string>().find("Table 1") != std::string::npos);
  CHECK(!t1.at("missing").empty());  // none of table1's jobs ran in this store
}

TEST_CASE("ui in a real browser: the runs table, a run's curves, a tag shown as text", "[ui][cli]") {
  if (ssr::testing::shell("command -v chromium").code != 0) {
    WARN("chromium is not installed (make deps installs it): the browser check did not run");
    return;
  }
  const auto db = fixture_store("browser.db", true);
  const auto log = db + ".log";
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const std::string cmd = fmt::format("exec '{}' ui --port 0 --db '{}' 2>'{}'", ssr::testing::kBin, db, log);
    execl("/bin/sh", "sh", "-c", cmd.c_str(), (char*)nullptr);
    _exit(127);
  }
  std::string port;
  for (int i = 0; i < 200 && port.empty(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::ifstream in(log);
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    std::smatch m;
    if (std::regex_search(text, m, std::regex(R"(127\.0\.0\.1:(\d+)/)"))) port = m[1];
  }
  REQUIRE(!port.empty());
  const auto shots = fs::path(SSR_BINARY).parent_path() / "ui-screenshots";
  fs::create_directories(shots);
  const auto browse = [&](const std::string& page, const std::string& action) {
    return ssr::testing::shell(
        fmt::format("cd /tmp && timeout 60 chromium --headless --no-sandbox --disable-gpu --window-size=1400,1800 "
                    "--virtual-time-budget=5000 {} 'http://127.0.0.1:{}/{}' 2>/dev/null",
                    action, port, page));
  };
  const auto runs = browse("#/", "--dump-dom");
  if (runs.code != 0 || runs.out.find("<html") == std::string::npos) {
    kill(pid, SIGTERM);
    waitpid(pid, nullptr, 0);
    WARN("chromium did not start here, so the browser check did not run: " << runs.out);
    return;
  }
  INFO(runs.out);
  size_t rows = 0;
  for (size_t at = 0; (at = runs.out.find("<tr class=\"run\">", at)) != std::string::npos; ++at) ++rows;
  CHECK(rows == 9);
  CHECK(runs.out.find("&lt;script&gt;alert(1)&lt;/script&gt;") != std::string::npos);  // shown, not run
  CHECK(runs.out.find("30.250 ppl") != std::string::npos);
  // Sorted by a clicked column, descending: lb (31.5) above vanilla (30.25), runs without one last.
  const auto sorted = browse("#/?columns=valid/ppl&sort=-valid/ppl", "--dump-dom");
  const auto lb = sorted.out.find("<td class=\"num\">31.500</td>"),
             vanilla = sorted.out.find("<td class=\"num\">30.250</td>");
  CHECK(lb != std::string::npos);
  CHECK(lb < vanilla);
  const auto run = browse("#/run/1", "--dump-dom");
  CHECK(run.out.find("<td class=\"muted\">perplexity</td>") != std::string::npos);  // results with units
  CHECK(std::regex_search(run.out, std::regex(R"(data-metric="train/loss" data-points="400")")));
  CHECK(std::regex_search(run.out, std::regex(R"(data-metric="train/load_cv" data-points="800")")));
  CHECK(run.out.find("<p class=\"bad\">Chart.js did not load") == std::string::npos);
  // The heatmaps: a canvas per layer, 200 windows x 4 experts.
  CHECK(std::regex_search(run.out, std::regex(R"(data-layer="0" data-cells="800")")));
  CHECK(std::regex_search(run.out, std::regex(R"(data-layer="1" data-cells="800")")));
  // Chart.js sized the canvas it drew on.
  CHECK(std::regex_search(run.out, std::regex(R"(data-metric="train/loss"[^>]*style="display: block)")));
  // Compare: the paired Δ with its interval, and a band chart of two groups.
  const auto cmp = browse("#/compare?sweep=1&by=router.name&metric=valid/ppl", "--dump-dom");
  INFO(cmp.out);
  CHECK(cmp.out.find("<td class=\"num\">+3.000 ± 12.706</td>") != std::string::npos);
  CHECK(std::regex_search(
      cmp.out, std::regex(R"(id="compare-curve" data-series="2" data-points="4"[^>]*style="display: block)")));
  const auto sweeps = browse("#/sweeps", "--dump-dom");
  CHECK(sweeps.out.find("[5/6 done, 1 failed]") != std::string::npos);
  const auto jobs = browse("#/sweep/1", "--dump-dom");
  CHECK(jobs.out.find("out of memory at step 3") != std::string::npos);
  const auto reports = browse("#/reports", "--dump-dom");
  CHECK(reports.out.find("<a href=\"#/report/table1\">table1</a>") != std::string::npos);
  const auto report = browse("#/report/table1?scale=demo", "--dump-dom");
  CHECK(report.out.find("<table class=\"report\">") != std::string::npos);
  CHECK(browse("#/compare?sweep=1&by=router.name", fmt::format("--screenshot='{}'", (shots / "compare.png").string()))
            .code == 0);
  CHECK(browse("#/run/1", fmt::format("--screenshot='{}'", (shots / "run.png").string())).code == 0);
  CHECK(browse("#/", fmt::format("--screenshot='{}'", (shots / "runs.png").string())).code == 0);
  CHECK(fs::file_size(shots / "run.png") > 10000);
  kill(pid, SIGTERM);
  int status = 0;
  waitpid(pid, &status, 0);
  CHECK((WIFEXITED(status) && WEXITSTATUS(status) == 0));  // a clean stop on SIGTERM
}
#endif

#ifdef SSR_WITH_UI
TEST_CASE("ssr bench ui builds a store and answers every page it times", "[ui][cli]") {
  const auto r = ssr::testing::run("bench ui --runs 20 --rows 2000 --repeats 1");
  INFO(r.out);
  REQUIRE(r.code == 0);
  CHECK(r.out.find("20 runs, ") != std::string::npos);
  size_t pages = 0;
  for (size_t at = 0; (at = r.out.find("/api/", at)) != std::string::npos; ++at) ++pages;
  CHECK(pages == 7);
  CHECK(r.out.find("HTTP ") == std::string::npos);  // every request answered 200
  CHECK(ssr::testing::run("bench ui --runs 0").code == 2);
}
#endif
