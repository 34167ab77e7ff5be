// The command line as a new user meets it (issue 41's frictions): outputs that follow --db, router
// keys in a multirun, the two names of a router, misspelt results, and the small things: repeated
// --where, sweep status's command-line axes, a comma list given to train, config --db, show.
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>

#include "harness/config/config.hpp"
#include "harness/store/store.hpp"
#include "harness/sweep/sweep.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;

namespace {

// Two finished runs (vanilla and ssr_l, with valid/ppl) and a planned multirun whose command line
// set train.steps=3 and a router axis.
std::string friction_store(const fs::path& dir) {
  const std::string db = (dir / "runs.db").string();
  ssr::store::Store s(db);
  for (const std::string router : {"vanilla", "ssr_l"}) {
    auto cfg = ssr::testing::resolve_experiment("demo.yaml", {"router=" + router});
    const auto id = s.create_run(cfg.hash(), cfg.to_json(), 1, ssr::store::this_machine("cpu"));
    s.set_result(id, "valid", "ppl", router == "vanilla" ? 30 : 31);
    s.add_metrics(id, {{1, "train", "loss", 5.0, 0}, {2, "train", "loss", 4.0, 0}});
    s.finish_run(id, "finished");
  }
  auto spec = ssr::sweep::load(ssr::testing::kSrc + "/experiments/demo.yaml", {"router=vanilla,lb", "train.steps=3"});
  std::vector<ssr::store::PlannedJob> jobs;
  for (auto& j : spec.jobs) jobs.push_back({j.num, j.config.hash(), j.config.to_json(), 1});
  s.plan_sweep(spec.name, spec.to_json(), spec.plan_hash(), jobs);
  return db;
}

}  // namespace

TEST_CASE("the CLI's frictions: each answered with what to type instead", "[cli]") {
  const auto dir = ssr::testing::temp_dir("cli", "frictions");
  const auto db = friction_store(dir);
  struct Case {
    std::string args;
    int code;
    std::string says;
  };
  for (const auto& c : std::vector<Case>{
           // The two names of a router: its group (router=ssr_l) and the name it sets (router.name=ssr).
           {"runs --where router=ssr", 0,
            "1 run(s) have router.name=ssr (router is ssr_l there): --where router.name=ssr"},
           {"runs --where router.name=ssr_l", 0, "1 run(s) have router=ssr_l (router.name is ssr there)"},
           {"runs --where router=vanila", 0, "did you mean router=vanilla?"},
           // A misspelt result is an error, as a misspelt key is.
           {"runs --where 'valid/ppx<9000'", 2, "no run in " + db + " has a result valid/ppx; did you mean valid/ppl?"},
           {"runs --where router.nme=ssr", 2, "did you mean router.name?"},
           // --where repeats, every condition holding.
           {"runs --where router=ssr_l --where 'valid<100' --columns id", 0, "\n2\n"},
           {"compare --where 'valid<100' --metric valid/ppx", 2, "did you mean valid/ppl?"},
           {"plot 1 --metric train/los", 2, "did you mean loss?"},
           // A comma list belongs to ssr sweep.
           {"train experiments/demo.yaml router=vanilla,ssr_l", 2, "is a list of values: `ssr sweep"},
           // config takes --db as train does; show leads with results and keeps the defaults back.
           {"config experiments/demo.yaml --db /elsewhere/runs.db", 0, "db: \"/elsewhere/runs.db\""},
           {"show 2", 0, "config (keys not at their default; --config prints all):"},
           {"sweep status", 0, "(command line: router=vanilla,lb train.steps=3)"},
           // A router's own key in a multirun goes to the routers that use it.
           {"sweep experiments/demo.yaml router=vanilla,ssr_l router.p=0.5 --dry-run", 0,
            "(left out, unused here: router.p=0.5)"}}) {
    const auto r =
        ssr::testing::run(c.args.find("--db") == std::string::npos ? fmt::format("{} --db {}", c.args, db) : c.args);
    INFO(c.args << "\n" << r.out);
    CHECK(r.code == c.code);
    CHECK(r.out.find(c.says) != std::string::npos);
  }
  // A store whose runs have no results yet (all training): a result condition gets a hint, not a refusal.
  const auto young = (dir / "young.db").string();
  {
    ssr::store::Store s(young);
    auto cfg = ssr::testing::resolve_experiment("demo.yaml", {});
    s.create_run(cfg.hash(), cfg.to_json(), 1, ssr::store::this_machine("cpu"));
  }
  const auto y = ssr::testing::run(fmt::format("runs --where 'valid/ppl<3' --db {}", young));
  CHECK(y.code == 0);
  CHECK(y.out.find("hint: no run meets valid/ppl<3") != std::string::npos);
  const auto show = ssr::testing::run(fmt::format("show 2 --db {}", db));
  CHECK(show.out.find("results:") < show.out.find("config ("));
  CHECK(show.out.find("  router.name: ssr\n") != std::string::npos);
  CHECK(show.out.find("keep_checkpoints") == std::string::npos);  // at its default: left out
  CHECK(ssr::testing::run(fmt::format("show 2 --config --db {}", db)).out.find("keep_checkpoints:") !=
        std::string::npos);
  // The multirun trains router.p on ssr_l only: the two jobs are what the two trains would be.
  auto spec = ssr::sweep::load(ssr::testing::kSrc + "/experiments/demo.yaml", {"router=vanilla,ssr_l", "router.p=0.5"});
  REQUIRE(spec.jobs.size() == 2);
  CHECK(spec.jobs[0].config.hash() == ssr::testing::resolve_experiment("demo.yaml", {"router=vanilla"}).hash());
  CHECK(spec.jobs[1].config.f("router.p") == 0.5);
  CHECK(spec.jobs[1].left_out.empty());
}

TEST_CASE("checkpoints and the corpus cache go beside the store --db names, not under ./results", "[cli][train]") {
  const auto dir = ssr::testing::temp_dir("cli", "beside");
  const auto db = (dir / "sub" / "runs.db").string();
  fs::create_directories(dir / "sub");
  const auto r = ssr::testing::run(
      fmt::format("train experiments/demo.yaml train.steps=2 train.warmup=1 train.batch_size=2 train.seq_len=16 "
                  "eval.batch_size=2 eval.max_segments=2 train.eval_every=0 train.checkpoint_every=1 run.threads=1 "
                  "--db {} --quiet",
                  db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  const ssr::store::Store s(db, ssr::store::Store::Access::read);
  CHECK(fs::exists(dir / "sub" / "checkpoints" / s.id() / "1" / "last.pt"));
  CHECK(!fs::is_empty(dir / "sub" / "cache"));
  // The machine's load is logged beside the step times (reports flag overheads timed under load).
  CHECK(ssr::testing::series(s, 1, "train", "machine_load").size() == 1);
  // rm finds them there.
  CHECK(ssr::testing::run(fmt::format("rm 1 --yes --db {}", db)).code == 0);
  CHECK(!fs::exists(dir / "sub" / "checkpoints" / s.id() / "1"));
}

TEST_CASE("plot names a group in its key with --label, and draws a lone point inside the frame", "[cli][report]") {
  const auto dir = ssr::testing::temp_dir("cli", "label");
  const auto db = friction_store(dir);
  const auto csv = (dir / "p.csv").string();
  auto r = ssr::testing::run(
      fmt::format("plot 1 2 --by router --label vanilla=Vanilla --label ssr_l=SSR-L --out {} --db {}", csv, db));
  INFO(r.out);
  REQUIRE(r.code == 0);
  std::ifstream in(csv);
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  CHECK(text.find("\nVanilla,1,5,") != std::string::npos);
  CHECK(text.find("\nSSR-L,2,4,") != std::string::npos);
  CHECK(ssr::testing::run(fmt::format("plot 1 --label vanilla --db {}", db)).out.find("give VALUE=NAME") !=
        std::string::npos);
  if (ssr::testing::shell("command -v gnuplot").code == 0) {
    // One logged point per run: drawn (a png), with the autoscaled axes padded around it.
    ssr::store::Store s(db);
    s.add_metrics(1, {{2, "valid", "loss", 3.0, 0}});
    const auto png = (dir / "one.png").string();
    r = ssr::testing::run(fmt::format("plot 1 --metric valid/loss --out {} --db {}", png, db));
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(fs::file_size(png) > 1000);
  }
}
