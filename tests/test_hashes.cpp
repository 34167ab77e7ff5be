// Run identity: the configuration hash of every experiment file (each scale and job of a sweep
// file) is pinned in tests/golden/config_hashes.txt. A change to the schema, a default or a
// preset that would orphan stored runs fails here; where a hash must change, rewrite the file
// with SSR_UPDATE_GOLDEN=1 and say in the commit which runs it orphans.
#include <catch2/catch.hpp>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fmt/format.h>

#include "harness/config/config.hpp"
#include "harness/sweep/sweep.hpp"
#include "tests/cli_helpers.hpp"

namespace fs = std::filesystem;

TEST_CASE("every experiment file keeps its configuration hashes", "[config][hash]") {
  const fs::path src(SSR_SOURCE_DIR);
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(src / "experiments"))
    if (e.path().extension() == ".yaml") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() > 10);

  std::string text;
  for (const auto& f : files) {
    const std::string name = f.filename().string();
    if (!ssr::config::is_sweep_file(f.string())) {
      text += fmt::format("{} {}\n", name, ssr::config::resolve(f.string(), {}).hash());
      continue;
    }
    std::vector<std::string> scales;
    if (const auto node = YAML::LoadFile(f.string())["scales"])
      for (const auto& s : node) scales.push_back(s.first.as<std::string>());
    if (scales.empty()) scales.push_back("");
    for (const auto& scale : scales)
      for (const auto& job : ssr::sweep::load(f.string(), {}, scale).jobs)
        text += fmt::format("{} {} {} {}\n", name, scale.empty() ? "-" : scale, job.describe(), job.config.hash());
  }

  ssr::testing::check_golden("config_hashes.txt", text);
}
