// Bad input through the `ssr` binary: each case is refused with exit 2 and one line naming the
// flag, key or file, and leaves no store behind that it did not find.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <filesystem>
#include <fmt/format.h>
#include <fstream>

#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;

namespace {

fs::path inputs_dir() {
  const auto dir = fs::temp_directory_path() / fmt::format("ssr_inputs_{}", ::getpid());
  fs::create_directories(dir);
  return dir;
}

std::string write_file(const std::string& name, const std::string& text) {
  const auto p = inputs_dir() / name;
  std::ofstream(p) << text;
  return p.string();
}

}  // namespace

TEST_CASE("bad stores, YAML and keys are refused with one line, and a refused run leaves no store", "[config][cli]") {
  const auto dir = inputs_dir();
  const std::string demo = "experiments/demo.yaml train.steps=1";
  const std::string absent = (dir / "absent.db").string();
  struct Case {
    std::string what, args, expected;
  };
  const std::vector<Case> cases = {
      {"an empty store path", "train " + demo + " --db ''", "run store '': not a file path"},
      {"an in-memory store", "train " + demo + " --db :memory:", "run store ':memory:': not a file path"},
      {"runs on a store that does not exist", "runs --db " + absent, "does not exist"},
      {"show on a store that does not exist", "show 1 --db " + absent, "does not exist"},
      {"sweep status on a store that does not exist", "sweep status --db " + absent, "does not exist"},
      {"a recursive YAML alias", "config " + write_file("alias.yaml", "train: &a [*a]\n"), "nested deeper than 64"},
      {"a second YAML document", "config " + write_file("two.yaml", "train:\n  steps: 3\n---\nx: 1\n"),
       "2 YAML documents"},
      {"a key nested and dotted", "config " + write_file("twice.yaml", "train:\n  steps: 3\ntrain.steps: 7\n"),
       "train.steps is given twice (nested and dotted)"},
      {"an unknown key", "train " + demo + " model.nope=1 --db " + absent, "model.nope"},
      {"a typo in a key", "config experiments/demo.yaml router.pp=1", "did you mean router.p?"},
      {"a typo in a group choice", "config experiments/demo.yaml router=ssr-l", "did you mean router=ssr_l?"},
      {"a group choice that is no file", "config experiments/demo.yaml router=zzz", "(choices: aux_free, "},
      {"a device as the store", "train " + demo + " --db /dev/null", "run store '/dev/null': not a regular file"},
      {"a folder as the store", "train " + demo + " --db " + dir.string(), "not a regular file (a folder)"},
      {"a folder as the config", "config " + dir.string(), "is a folder; give a YAML"},
      {"a list as a default choice", "config " + write_file("defaults.yaml", "defaults: {router: [vanilla]}\n"),
       "defaults.router: expected one choice name (e.g. router: vanilla), got [\"vanilla\"]"},
      {"a value given to a flag", "train " + demo + " --quiet=5 --db " + absent,
       "quiet was given a disallowed flag override"},
      {"config --doc with a file", "config --doc extra", "config excludes --doc"},
      {"--retry-failed without --resume", "sweep --retry-failed", "--retry-failed requires --resume"},
      // Refused by the task, after the store was opened: the store it created is removed again.
      {"an unwritable run.out_dir", "train " + demo + " run.out_dir=/proc/ssr-no --db " + absent,
       "run.out_dir: cannot write checkpoints under /proc/ssr-no/"},
      {"a split the data lacks", "train " + demo + " 'eval.splits=[nope]' --db " + absent, "no split 'nope'"},
  };
  for (const auto& c : cases) {
    INFO(c.what << ": ssr " << c.args);
    const auto r = ssr::testing::run(c.args);
    INFO(r.out);
    CHECK(r.code == 2);
    CHECK(r.out.find(c.expected) != std::string::npos);
    CHECK(std::count(r.out.begin(), r.out.end(), '\n') == 1);
    CHECK_FALSE(fs::exists(absent));
  }
}

TEST_CASE("a value YAML would read as a directive or nothing is kept as text", "[config][cli]") {
  const auto r = ssr::testing::run("config experiments/demo.yaml run.name=%foo");
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("name: \"%foo\"") != std::string::npos);
  CHECK(ssr::testing::run("config experiments/demo.yaml run.name=").out.find("run.name: no value given") !=
        std::string::npos);
}
