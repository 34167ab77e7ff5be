// The router registry: every registered router builds from its defaults, routes in training and
// evaluation, is counted by the base class, and owns exactly the router.* keys the schema scopes
// to it. New routers are covered by registering them.
#include <catch2/catch.hpp>

#include <set>

#include "harness/config/config.hpp"
#include "routers/registry.hpp"

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
    const auto logits = torch::randn({16, 4}, gen);  // (tokens, experts)
    const auto hidden = torch::randn({16, 8}, gen);  // (tokens, d_model)
    for (const auto mode : {Mode::Train, Mode::Eval}) {
      const auto r = router->route(logits, hidden, mode, gen);
      CHECK(r.experts.sizes() == torch::IntArrayRef({16, 2}));
      CHECK(r.weights.sizes() == torch::IntArrayRef({16, 2}));
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
      REQUIRE(key->when.size() == 1);
      CHECK(key->when[0].first == "router.name");
      const auto& users = key->when[0].second;
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
