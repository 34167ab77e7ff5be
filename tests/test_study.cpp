// The routing study's parts: paired differences against a hand-computed case, the same start for
// every router of a seed, expected against observed Sinkhorn forwards, the character corpus, the
// cosine schedule, and the whole `make study` pipeline at its smoke scale (sweeps, paired tables,
// curve figures drawn by gnuplot).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fmt/format.h>

#include "analysis/report.hpp"
#include "harness/config/config.hpp"
#include "harness/data/corpus.hpp"
#include "harness/store/store.hpp"
#include "harness/sweep/sweep.hpp"
#include "harness/train/schedule.hpp"
#include "models/switch_lm.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;
using ssr::testing::run;
using ssr::testing::shell;

namespace {

using ssr::testing::resolve_experiment;
using ssr::testing::temp_db;

using ssr::testing::kSrc;

}  // namespace

TEST_CASE("paired differences and their intervals match a hand-computed case", "[study][report]") {
  // a: 10, 12, 14; b: 11, 12.5, 16 over seeds 1-3. Differences 1, 0.5, 2: mean 7/6, s = 0.76376,
  // half-width t(2) 4.303 x s / sqrt 3 = 1.8974. In % of a: 10, 4.1667, 14.2857: mean 9.4841,
  // half-width 12.6185. Neither interval excludes 0, so neither is starred.
  const std::string file = kSrc + "/tests/fixtures/paired-study.yaml";
  const auto db = temp_db("study", "paired.db");
  ssr::store::Store s(db);
  const std::map<std::string, std::vector<double>> ppl = {{"a", {10, 12, 14}}, {"b", {11, 12.5, 16}}};
  for (const auto& j : ssr::sweep::load(file, {}).jobs) {
    const int seed = std::stoi(j.label("run.seed"));
    const auto id = s.create_run(j.config.hash(), j.config.to_json(), seed, ssr::store::this_machine("cpu"));
    s.set_result(id, "valid", "ppl", ppl.at(j.label("variant"))[seed - 1]);
    s.finish_run(id, "finished");
  }
  const auto out = ssr::analysis::build("paired", file, "", {}, s);
  INFO(out.md);
  CHECK(out.md.find("| b | <u>13.167 ± 6.374</u> | +1.167 ± 1.897 | +9.48 ± 12.62 % |") != std::string::npos);
  CHECK(out.csv.find("paired,,b,Δ,1.16666") != std::string::npos);
  CHECK(out.md.find("Δ: paired, each run minus its a run of the same run.seed") != std::string::npos);
  CHECK(out.md.find("Smallest difference this design resolves (median half-width, up to 3 pairs): ±1.897.") !=
        std::string::npos);
  // Seed 3 of b at 15: the differences 1, 0.5, 1 (mean 0.833, half-width 4.303 x 0.2887 / sqrt 3
  // = 0.717) exclude 0 and get the star.
  const auto b3 = s.done_run(ssr::sweep::load(file, {}).jobs.back().config.hash());
  REQUIRE(b3);
  s.set_result(*b3, "valid", "ppl", 15.0);
  CHECK(ssr::analysis::build("paired", file, "", {}, s).md.find("| +0.833 ± 0.717 * |") != std::string::npos);
}

TEST_CASE("a seed gives every router the same initial weights", "[study][model]") {
  // The trainer seeds torch before it builds the model; routers with parameters of their own
  // (noisy's noise weights, LPR's encoder and prototypes, EMoE's basis and masks) must not shift the draws of the
  // layers built after them.
  auto params = [](const std::string& router) {
    const auto cfg = resolve_experiment("demo.yaml", {"router=" + router, "run.seed=7"});
    torch::manual_seed(7);
    ssr::models::SwitchLM model(cfg, 50);
    std::map<std::string, torch::Tensor> out;
    for (const auto& p : model->named_parameters()) out[p.key()] = p.value().detach().clone();
    return out;
  };
  const auto vanilla = params("vanilla");
  for (const char* router : {"lb", "zloss", "noisy", "sinkhorn", "ssr_l", "ssr_s_noise", "lpr", "emoe"}) {
    INFO(router);
    const auto other = params(router);
    for (const auto& [name, t] : vanilla) {
      INFO(name);
      REQUIRE(other.count(name));
      CHECK(torch::equal(other.at(name), t));
    }
  }
}

TEST_CASE("expected and observed Sinkhorn forwards agree in a seeded run", "[study][train]") {
  // 2 layers x 40 steps x 1 call at p = 0.5: 40 expected, binomial sd sqrt(80 x 0.25) = 4.5.
  const auto db = temp_db("study", "count.db");
  const std::string args = fmt::format(
      "{}/experiments/lm-demo-enwik8.yaml router=ssr_l router.p=0.5 router.max_iter=3 train.steps=40 run.log_every=7 "
      "train.eval_every=0 eval.max_segments=1 run.out_dir={} --db {} --quiet",
      kSrc, (fs::temp_directory_path() / fmt::format("ssr_count_{}", ::getpid())).string(), db);
  const auto c = run("config " + args.substr(0, args.find(" run.out_dir")));
  INFO(c.out);
  CHECK(c.out.find("# expected Sinkhorn forwards in training: 40 (p 0.5 x 80 router calls") != std::string::npos);
  const auto t = run("train " + args);
  INFO(t.out);
  REQUIRE(t.code == 0);
  ssr::store::Store s(db);
  const auto id = s.runs().front().id;
  const double observed = ssr::testing::result(s, id, "train", "sinkhorn_forwards");
  CHECK(std::abs(observed - 40) <= 4 * std::sqrt(80 * 0.25));
  double per_layer = 0;
  for (int l = 0; l < 2; ++l)
    for (double v : ssr::testing::series(s, id, "train", fmt::format("layer{}/sinkhorn_calls", l))) per_layer += v;
  CHECK(per_layer == observed);
  const auto show = run(fmt::format("show {} --db {}", id, db));
  CHECK(show.out.find(fmt::format("Sinkhorn forwards: expected 40 (p 0.5 x 80 router calls), observed {:.0f} (layer0",
                                  observed)) != std::string::npos);
  // The end-of-training balance results exist and are in range.
  CHECK(ssr::testing::result(s, id, "train", "max_vio") >= 0);
  CHECK(ssr::testing::result(s, id, "train", "load_cv") >= 0);
}

TEST_CASE("char corpus: nanoGPT's Tiny Shakespeare split and sorted vocabulary", "[study][data]") {
  const auto cfg = resolve_experiment(
      "shakespeare-char.yaml",
      {"data.cache_dir=" + (fs::temp_directory_path() / fmt::format("ssr_char_{}", ::getpid())).string()});
  const auto c = ssr::data::load_corpus(cfg);
  // prepare.py: n = 1,115,394; train = data[:int(n * 0.9)], val = the rest; 65 characters.
  CHECK(c.vocab_size() == 65);
  CHECK(c.splits.at("train").numel() == 1003854);
  CHECK(c.splits.at("valid").numel() == 111540);
  CHECK(!c.splits.count("test"));
  CHECK(c.vocab.front() == "\n");
  CHECK(c.vocab[1] == " ");
  CHECK(c.vocab.back() == "z");
  // "First Citizen" starts the text: F is stoi['F'] = 18 in nanoGPT's sorted vocabulary.
  CHECK(c.splits.at("train")[0].item<int64_t>() == 18);
  CHECK(c.vocab[18] == "F");
  CHECK_THROWS_WITH(resolve_experiment("shakespeare-char.yaml", {"data.format=idx"}),
                    Catch::StartsWith("data.format: model.arch=switch_lm reads word|byte|char only"));
}

TEST_CASE("learning rate: the reference LM's warm-up to the bit, and nanoGPT's cosine", "[study][train]") {
  const auto lm = resolve_experiment("lm-demo.yaml", {});
  for (int64_t step : {1, 3, 7, 10, 11, 100})
    CHECK(ssr::train::learning_rate(lm, step) == lm.f("train.lr") * std::min(1.0, static_cast<double>(step) / 10.0));
  const auto sh = resolve_experiment("shakespeare-char.yaml", {});
  CHECK(ssr::train::learning_rate(sh, 50) == Approx(5e-4));
  CHECK(ssr::train::learning_rate(sh, 100) == Approx(1e-3));
  CHECK(ssr::train::learning_rate(sh, 1050) == Approx(5.5e-4));  // halfway down from 1e-3 to 1e-4
  CHECK(ssr::train::learning_rate(sh, 2000) == Approx(1e-4));
}

TEST_CASE("make study at its smoke scale: sweeps, paired tables and curve figures from the store", "[study][sweep]") {
  const auto db = temp_db("study", "smoke.db");
  const auto out = fs::path(db).parent_path() / "smoke-out";
  const std::string common = fmt::format("--scale smoke --db {}", db);
  for (const char* file : {"study.yaml", "study-p.yaml"}) {
    const auto r = run(fmt::format("sweep experiments/{} --jobs 2 --quiet {}", file, common));
    INFO(r.out);
    REQUIRE(r.code == 0);
  }
  ssr::store::Store s(db);
  CHECK(s.runs().size() == 8 + 5);  // study-p reuses the study's p = 1e-3 and 0.48 runs
  for (const auto& r : s.runs()) CHECK(r.status == "finished");
  const auto table = run(fmt::format("report study {} --out {}", common, out.string()));
  INFO(table.out);
  REQUIRE(table.code == 0);
  for (const char* row :
       {"Vanilla SMoE", "SSR-L (p = 1e-3, paper)", "SSR-L (p = 0.48, calibrated)", "Sinkhorn-based SMoE"})
    CHECK(table.out.find(row) != std::string::npos);
  CHECK(table.out.find("Δ Valid PPL: paired") != std::string::npos);
  CHECK(table.out.find(" ± ") != std::string::npos);
  CHECK(table.out.find("Built from 8 of 8 planned runs") != std::string::npos);
  for (const char* rep : {"study_balance", "study_p"}) {
    const auto r = run(fmt::format("report {} {} --out {}", rep, common, out.string()));
    INFO(r.out);
    CHECK(r.code == 0);
  }
  // The pre-registered 2,000-step study's layouts build (of its smoke scale's 18 jobs, those with
  // the routing study's configs are found; the rest are missing, named in the footer).
  for (const char* rep : {"study-2k", "study-2k_balance"}) {
    const auto r = run(fmt::format("report {} {} --out {}", rep, common, out.string()));
    INFO(r.out);
    CHECK(r.code == 0);
    CHECK(r.out.find(" of 18 planned runs") != std::string::npos);
  }
  for (const char* fig : {"study_valid", "study_max_vio"}) {
    const auto r = run(fmt::format("report {} {} --out {}", fig, common, out.string()));
    INFO(r.out);
    REQUIRE(r.code == 0);
    const auto g = shell(fmt::format("gnuplot '{}/{}.gp'", out.string(), fig));
    INFO(g.out);
    CHECK(g.code == 0);
    CHECK(fs::file_size(out / (std::string(fig) + ".png")) > 1000);
    CHECK(fs::file_size(out / (std::string(fig) + ".csv")) > 100);
  }
}
