// The router registry: every registered router builds from its defaults, routes in training and
// evaluation, is counted by the base class, and owns exactly the router.* keys the schema scopes
// to it. New routers are covered by registering them.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <filesystem>
#include <fmt/format.h>
#include <set>

#include "harness/config/config.hpp"
#include "harness/store/store.hpp"
#include "harness/train/checkpoint.hpp"
#include "routers/registry.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

using namespace ssr::routers;

TEST_CASE("every registered router builds from its defaults and routes in training and evaluation",
          "[routers][registry]") {
  for (const auto& spec : registry()) {
    INFO("router.name=" << spec.name);
    ssr::config::Config cfg;
    cfg.set("router.name", spec.name, "test");
    CHECK_FALSE(spec.summary.empty());
    CHECK_FALSE(spec.source.empty());
    CHECK_FALSE(spec.bench.empty());
    auto router = make_router(cfg, /*d_model=*/8, /*n_experts=*/4, /*top_k=*/2);
    REQUIRE(router);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
    RouteInput in;
    in.logits = torch::randn({16, 4}, gen);                         // (tokens, experts)
    in.hidden = torch::randn({16, 8}, gen);                         // (tokens, d_model)
    in.token_ids = torch::randint(0, 50, {16}, gen, torch::kLong);  // (tokens)
    in.gate_weight = torch::randn({4, 8}, gen);                     // (experts, d_model)
    for (const auto mode : {Mode::Train, Mode::Eval}) {
      const auto r = router->route(in, mode, gen);
      CHECK(r.experts.size(0) == 16);
      CHECK(r.weights.sizes() == r.experts.sizes());
      // (tokens, k) for top-k routers; Expert Choice gives a token as many slots as experts took it.
      if (!spec.caps.own_capacity) CHECK(r.experts.size(1) == 2);
      if (r.kept.defined()) CHECK(r.kept.sizes() == r.experts.sizes());
      CHECK(torch::isfinite(r.weights).all().item<bool>());
      CHECK((r.experts >= 0).logical_and(r.experts < 4).all().item<bool>());
      REQUIRE(r.aux_loss.defined());
      CHECK(std::isfinite(r.aux_loss.item<double>()));
      if (!spec.caps.aux_loss) CHECK(r.aux_loss.item<double>() == 0);
    }
    CHECK(router->sinkhorn_tally().calls == 2);  // the base class counts every call
  }
}

TEST_CASE("router.name's values and the router keys' scopes come from the registry", "[routers][registry]") {
  const auto* name = ssr::config::find_key("router.name");
  REQUIRE(name);
  std::vector<std::string> names;
  for (const auto& spec : registry()) names.push_back(spec.name);
  CHECK(name->choices == names);
  for (const auto& spec : registry())
    for (const auto& k : spec.keys) {
      INFO(spec.name << " " << k.name);
      const auto* key = ssr::config::find_key(k.name);
      REQUIRE(key);
      // The registry puts the router.name scope first; a key may then be scoped by its router's own
      // keys (osr's authors-only keys by router.osr_reading).
      REQUIRE(!key->when.empty());
      CHECK(key->when.front().first == "router.name");
      for (size_t i = 1; i < key->when.size(); ++i) CHECK(key->when[i].first.rfind("router.", 0) == 0);
      const auto& users = key->when.front().second;
      CHECK(std::find(users.begin(), users.end(), spec.name) != users.end());
    }
  // Every router.* key but the layer's own belongs to some router.
  const std::set<std::string> layer_keys = {"router.name", "router.group_tokens", "router.group_images",
                                            "router.eval_group_tokens", "router.global_batch"};
  for (const auto& key : ssr::config::schema()) {
    if (key.name.rfind("router.", 0) != 0 || layer_keys.count(key.name)) continue;
    INFO(key.name);
    bool declared = false;
    for (const auto& spec : registry())
      for (const auto& k : spec.keys) declared = declared || k.name == key.name;
    CHECK(declared);
  }
  CHECK_THROWS_WITH(router_spec("nope"), Catch::Contains("router.name 'nope': expected one of vanilla, lb"));
}

TEST_CASE("every registered router trains through `ssr train`, and the expert bias travels in checkpoints",
          "[routers][registry][train]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ssr_registry_" + std::to_string(::getpid()));
  ssr::testing::remove_tree(dir);
  const std::string db = (dir / "runs.db").string();
  const std::string args =
      "train.steps=3 train.batch_size=4 train.seq_len=16 eval.batch_size=4 eval.max_segments=1 train.eval_every=0 "
      "run.threads=1 run.log_every=1 run.out_dir=" +
      (dir / "ckpt").string();
  for (const auto& spec : registry()) {
    INFO("router.name=" << spec.name);
    const auto r = ssr::testing::run(fmt::format("train {}/experiments/demo.yaml router.name={} {} --db {} --quiet",
                                                 SSR_SOURCE_DIR, spec.name, args, db));
    INFO(r.out);
    CHECK(r.code == 0);
  }
  // aux-free's bias moved away from zero and was saved with the weights (runs are in registry order).
  int64_t aux_free_run = 0;
  for (size_t i = 0; i < registry().size(); ++i)
    if (registry()[i].name == "aux-free") aux_free_run = static_cast<int64_t>(i) + 1;
  REQUIRE(aux_free_run > 0);
  ssr::store::Store store(db);
  // Every LM run records the token/expert mutual information (test_routers.cpp checks its value).
  for (size_t i = 0; i < registry().size(); ++i) {
    INFO("router.name=" << registry()[i].name);
    bool found = false;
    for (const auto& r : store.results(static_cast<int64_t>(i) + 1))
      if (r.split == "train" && r.name == "token_mi") found = r.value >= 0;
    CHECK(found);
  }
  const auto last = ssr::train::run_dir((dir / "ckpt").string(), store, aux_free_run) / "last.pt";
  torch::serialize::InputArchive ar, model, layers, layer, moe, router;
  ssr::train::read_checkpoint(ar, last, torch::kCPU);
  ar.read("model", model);
  model.read("layers", layers);
  layers.read("0", layer);
  layer.read("moe", moe);
  moe.read("router", router);
  torch::Tensor bias;
  router.read("expert_bias", bias, /*is_buffer=*/true);
  CHECK(bias.abs().sum().item<double>() > 0);
}
