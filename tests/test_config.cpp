// Config: defaults, overrides, groups, every kind of rejection, hash stability.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cstdlib>
#include <fmt/format.h>
#include <filesystem>
#include <fstream>

#include "harness/config/choice.hpp"
#include "harness/config/config.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;
using ssr::config::Config;
using ssr::config::ConfigError;
using ssr::config::resolve;

namespace {

// A throw-away experiments folder: files are written relative to it.
struct Fixture {
  fs::path dir;
  Fixture() {
    dir = fs::temp_directory_path() /
          fs::path("ssr_cfg_" + std::to_string(::getpid()) + "_" + std::to_string(reinterpret_cast<uintptr_t>(this)));
    fs::create_directories(dir / "router");
    fs::create_directories(dir / "model");
    write("router/ssr_l.yaml", "name: ssr\ncost: linear\np: 0.001\n");
    write("router/sinkhorn.yaml", "name: sinkhorn\n");
    write("model/small.yaml", "n_layers: 3\nd_model: 64\n_global_:\n  train:\n    seq_len: 32\n");
    write("base.yaml", "defaults:\n  router: ssr_l\n  model: small\ntrain:\n  steps: 10\n  lr: 1e-3\n");
  }
  ~Fixture() { ssr::testing::remove_tree(dir); }
  std::string write(const std::string& name, const std::string& text) const {
    std::ofstream(dir / name) << text;
    return (dir / name).string();
  }
  std::string path(const std::string& name) const { return (dir / name).string(); }
};

}  // namespace

TEST_CASE("config defaults come from the schema", "[config]") {
  Config c;
  for (const auto& k : ssr::config::schema()) CHECK(c.at(k.name) == ssr::config::coerce(k, k.def, "schema"));
  CHECK(c.f("train.lr") == Approx(7e-4));
  CHECK(c.i("model.n_experts") == 16);
  CHECK(c.s("router.name") == "vanilla");
}

TEST_CASE("config resolves groups then file keys then overrides", "[config]") {
  Fixture fx;
  auto c = resolve(fx.path("base.yaml"), {});
  CHECK(c.s("router.name") == "ssr");
  CHECK(c.s("router.cost") == "linear");
  CHECK(c.i("model.n_layers") == 3);
  CHECK(c.i("train.seq_len") == 32);  // _global_ in a group file
  CHECK(c.i("train.steps") == 10);
  CHECK(c.f("train.lr") == Approx(1e-3));
  CHECK(c.group_choices().at("router") == "ssr_l");

  // Command-line groups replace the file's defaults; key overrides come last.
  auto d = resolve(fx.path("base.yaml"), {"router.cost=softmax", "router=sinkhorn", "model.n_layers=5",
                                          "+tags.note=hello", "eval.splits=[test]"});
  CHECK(d.s("router.name") == "sinkhorn");
  CHECK(d.s("router.cost") == "softmax");
  CHECK(d.i("model.n_layers") == 5);
  CHECK(d.s("tags.note") == "hello");
  CHECK(d.strings("eval.splits") == std::vector<std::string>{"test"});
  CHECK(d.group_choices().at("router") == "sinkhorn");
}

TEST_CASE("config rejects bad input with one line naming the key or file", "[config]") {
  Fixture fx;
  fx.write("bad_key.yaml", "train:\n  stepz: 3\n");
  fx.write("bad_syntax.yaml", "train: [1, 2\n");
  fx.write("bad_group.yaml", "defaults:\n  optimiser: adam\n");
  fx.write("missing_group.yaml", "defaults:\n  router: nope\n");
  fx.write("null_value.yaml", "train:\n  steps:\n");
  fx.write("twice.yaml", "train:\n  steps: 3\nrun:\n  seed: 2\ntrain:\n  lr: 1e-3\n");
  fx.write("router/twice.yaml", "name: ssr\np: 0.1\np: 0.2\n");
  struct Case {
    std::string file;
    std::vector<std::string> overrides;
    std::string expect;  // a fragment the message must contain
  };
  const std::vector<Case> cases = {
      {"base.yaml", {"train.stepz=3"}, "train.stepz: unknown key"},
      {"bad_key.yaml", {}, "train.stepz: unknown key"},
      {"base.yaml", {"train.steps=ten"}, "train.steps: expected int"},
      {"base.yaml", {"train.steps=2.5"}, "train.steps: expected int"},
      {"base.yaml", {"router.p=1.5"}, "router.p: expected float in [0, 1]"},
      {"base.yaml", {"router.p=-0.1"}, "router.p: expected float in [0, 1]"},
      {"base.yaml", {"model.dropout=nan"}, "model.dropout: expected float"},
      {"base.yaml", {"router.cost=quadratic"}, "router.cost: expected one of linear softmax"},
      {"base.yaml", {"run.device=tpu"}, "run.device: expected one of cpu cuda"},
      {"base.yaml", {"router=nope"}, "router=nope: no file nope.yaml"},
      {"base.yaml", {"train.steps"}, "expected key=value"},
      {"base.yaml", {"+train.steps=3"}, "train.steps: key exists"},
      {"base.yaml", {"+model.new_thing=3"}, "'+' adds keys only under tags"},
      {"base.yaml", {"tags.note=x"}, "new key, write +tags.note=x"},
      {"base.yaml", {"train.steps="}, "train.steps: no value given"},
      {"does_not_exist.yaml", {}, "does_not_exist.yaml: config file not found"},
      {"bad_syntax.yaml", {}, "bad_syntax.yaml:2:1: YAML syntax error"},
      {"bad_group.yaml", {}, "defaults.optimiser: unknown config group"},
      {"missing_group.yaml", {}, "router=nope: no file nope.yaml"},
      {"null_value.yaml", {}, "train.steps: no value given"},
      {"twice.yaml", {}, "twice.yaml:5: key 'train' appears twice"},
      {"base.yaml", {"router=twice"}, "twice.yaml:3: key 'p' appears twice"},
  };
  for (const auto& c : cases) {
    INFO(c.file << " " << (c.overrides.empty() ? "" : c.overrides[0]));
    try {
      resolve(fx.path(c.file), c.overrides);
      FAIL("accepted");
    } catch (const ConfigError& e) {
      std::string msg = e.what();
      CHECK_THAT(msg, Catch::Contains(c.expect));
      CHECK(msg.find('\n') == std::string::npos);
    }
  }
}

TEST_CASE("config hash is stable across key order and float spelling", "[config]") {
  Fixture fx;
  fx.write("a.yaml", "train:\n  lr: 0.001\n  steps: 10\nrouter:\n  name: ssr\n  xi: 1\n  p: 1e-4\n");
  fx.write("b.yaml", "router:\n  p: 0.0001\n  xi: 1.0\n  name: ssr\ntrain:\n  steps: 1e1\n  lr: 1.0e-3\n");
  const auto a = resolve(fx.path("a.yaml"), {});
  const auto b = resolve(fx.path("b.yaml"), {});
  CHECK(a.canonical() == b.canonical());
  CHECK(a.hash() == b.hash());
  CHECK(a.hash().size() == 16);
  // -0.0 is the value 0: one config, one hash.
  CHECK(resolve(fx.path("a.yaml"), {"train.lr=-0.0"}).hash() == resolve(fx.path("a.yaml"), {"train.lr=0"}).hash());
  // Bookkeeping keys do not change the hash; keys that change results do.
  CHECK(resolve(fx.path("a.yaml"), {"run.db=/tmp/x.db", "run.log_every=3", "+tags.a=b"}).hash() == a.hash());
  CHECK(resolve(fx.path("a.yaml"), {"router.p=2e-4"}).hash() != a.hash());
  CHECK(resolve(fx.path("a.yaml"), {"run.seed=2"}).hash() != a.hash());
  // Compute paths keep the hash but not the timing identity; bookkeeping keeps both.
  const auto grouped = resolve(fx.path("a.yaml"), {"model.expert_impl=grouped"});
  CHECK(grouped.hash() == a.hash());
  CHECK(grouped.timing() != a.timing());
  CHECK(grouped.timing().at("model.expert_impl") == "grouped");
  CHECK(resolve(fx.path("a.yaml"), {"run.db=/tmp/x.db"}).timing() == a.timing());
  CHECK(ssr::config::timing_of(grouped.to_json()) == grouped.timing());
  // A stored config that predates a timed key reads its default.
  auto stored = a.to_json();
  stored["model"].erase("vocab_multiple");
  CHECK(ssr::config::timing_of(stored) == a.timing());
}

TEST_CASE("a printed config resolves to the same config and JSON round-trips", "[config]") {
  Fixture fx;
  const auto c = resolve(fx.path("base.yaml"), {"eval.splits=[valid]", "router.noise=0.5"});
  const auto printed = fx.write("printed.yaml", c.to_yaml());
  const auto again = resolve(printed, {});
  CHECK(again.hash() == c.hash());
  CHECK(again.group_choices() == c.group_choices());
  const auto back = Config::from_json(c.to_json());
  CHECK(back.values() == c.values());
  CHECK(back.group_choices() == c.group_choices());
}

TEST_CASE("schema documents every key", "[config]") {
  const std::string doc = ssr::config::schema_doc();
  for (const auto& k : ssr::config::schema()) {
    CHECK(!k.doc.empty());
    CHECK(doc.find(k.name) != std::string::npos);
  }
}

TEST_CASE("an enum value without a name is an error listing the allowed ones", "[config]") {
  enum class Cost { Linear, Softmax };
  const std::initializer_list<std::pair<const char*, Cost>> names = {{"linear", Cost::Linear},
                                                                     {"softmax", Cost::Softmax}};
  CHECK(ssr::config::choose<Cost>("router.cost", "softmax", names) == Cost::Softmax);
  CHECK(ssr::config::choose<Cost>("router.cost", "linear", names) == Cost::Linear);
  CHECK_THROWS_WITH(ssr::config::choose<Cost>("router.cost", "Linear", names),
                    "router.cost 'Linear': expected one of linear, softmax");
  CHECK_THROWS_WITH(ssr::config::choose<Cost>("router.cost", "", names),
                    "router.cost '': expected one of linear, softmax");
}

namespace {

// A value of `k` other than its default, written as an override would give it.
std::string other_value(const ssr::config::Key& k) {
  using ssr::config::Type;
  switch (k.type) {
    case Type::Bool: return k.def.get<bool>() ? "false" : "true";
    case Type::Int:
      return std::to_string(k.def.get<int64_t>() < k.max ? k.def.get<int64_t>() + 1 : k.def.get<int64_t>() - 1);
    case Type::Float: {
      const double d = k.def.get<double>();
      return fmt::format("{}", d < k.max ? d + 0.5 * std::min(1.0, k.max - d) : k.min);
    }
    case Type::String: return "elsewhere";
    case Type::Choice:
      for (const auto& c : k.choices)
        if (c != k.def.get<std::string>()) return c;
      break;
    case Type::IntList: return fmt::format("[{}]", static_cast<int64_t>(std::max(k.min, 1.0)));
    case Type::FloatList:
      return fmt::format("[{}]", std::max(k.min, 0.0) + 0.25 * (std::min(k.max, 1.0) - std::max(k.min, 0.0)));
    case Type::StringList: return k.name == "eval.router_modes" ? "[sinkhorn]" : "[elsewhere]";
  }
  FAIL("no other value for " << k.name);
  return "";
}

// Completes overrides so that each scoped choice fits the key it depends on (data.format with
// model.arch): the value set is kept and the other side is chosen to accept it.
void consistent_choices(std::vector<std::string>& overrides) {
  const auto given = [&](const std::string& key) -> std::string {
    for (const auto& o : overrides)
      if (o.rfind(key + "=", 0) == 0) return o.substr(key.size() + 1);
    return "";
  };
  for (const auto& sc : ssr::config::choice_scopes()) {
    const std::string key = given(sc.key), other = given(sc.other);
    if (!other.empty() && key.empty()) {
      if (const auto it = sc.allowed.find(other); it != sc.allowed.end())
        overrides.push_back(sc.key + "=" + it->second.front());
    } else if (!key.empty() && other.empty()) {
      for (const auto& [o, values] : sc.allowed)
        if (std::find(values.begin(), values.end(), key) != values.end()) {
          overrides.push_back(sc.other + "=" + o);
          break;
        }
    }
  }
}
}  // namespace

TEST_CASE("every component refuses a key it does not use, naming the key and what leaves it unused", "[config]") {
  Fixture fx;
  const auto empty = fx.write("empty.yaml", "{}\n");
  int scoped = 0;
  for (const auto& k : ssr::config::schema()) {
    for (const auto& [other, values] : k.when) {
      const ssr::config::Key* o = ssr::config::find_key(other);
      REQUIRE(o);
      REQUIRE(o->type == ssr::config::Type::Choice);
      std::string unused_with;  // a value of `other` that leaves k unused
      for (const auto& c : o->choices)
        if (std::find(values.begin(), values.end(), c) == values.end()) unused_with = c;
      REQUIRE(!unused_with.empty());
      const std::string set = k.name + "=" + other_value(k);
      INFO(set << " with " << other << "=" << unused_with);
      // The conditions before this one hold (a later one may itself be a key they scope), so this
      // one is what leaves the key unused.
      std::vector<std::string> unused;
      for (const auto& [o2, v2] : k.when) {
        if (o2 == other) break;
        unused.push_back(o2 + "=" + v2.front());
      }
      unused.push_back(other + "=" + unused_with);
      unused.push_back(set);
      CHECK_THROWS_WITH(resolve(empty, unused),
                        Catch::StartsWith(fmt::format("{}: {}={} does not use it (it applies with {}=", k.name, other,
                                                      unused_with, other)));
      // Where every condition holds, the same value is taken.
      std::vector<std::string> overrides;
      for (const auto& [o2, v2] : k.when) overrides.push_back(o2 + "=" + v2.front());
      overrides.push_back(set);
      consistent_choices(overrides);
      CHECK_NOTHROW(resolve(empty, overrides));
      ++scoped;
    }
  }
  CHECK(scoped > 60);
  // The printed config of a run lists only what that run uses.
  const auto lm = resolve(empty, {}).to_yaml();
  CHECK(lm.find("randaug_n") == std::string::npos);
  CHECK(lm.find("attn_span") != std::string::npos);
  CHECK(lm.find("  p:") == std::string::npos);  // router.p: the default router is vanilla
  const auto swin = resolve(empty, {"model.arch=swin_moe", "data.format=idx"}).to_yaml();
  CHECK(swin.find("attn_span") == std::string::npos);
  CHECK(swin.find("randaug_n") != std::string::npos);
}
