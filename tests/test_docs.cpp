// The README and docs/: every relative link resolves, and the README stays short enough to read in
// five minutes (the long material lives in docs/).
#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "tests/helpers.hpp"

namespace fs = std::filesystem;

TEST_CASE("every relative link of the README and docs/ resolves", "[docs]") {
  const fs::path root = ssr::testing::kSrc;
  std::vector<fs::path> pages = {root / "README.md", root / "CONTRIBUTING.md"};
  for (const auto& e : fs::recursive_directory_iterator(root / "docs"))
    if (e.path().extension() == ".md") pages.push_back(e.path());
  const std::regex link(R"(\]\(([^)\s]+)\))");
  int checked = 0;
  for (const auto& page : pages) {
    std::ifstream in(page);
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    for (std::sregex_iterator it(text.begin(), text.end(), link), end; it != end; ++it) {
      std::string target = (*it)[1];
      if (target.rfind("http", 0) == 0 || target[0] == '#' || target.rfind("mailto:", 0) == 0) continue;
      target = target.substr(0, target.find('#'));
      INFO(page.string() << " links to " << target);
      CHECK(fs::exists(page.parent_path() / target));
      ++checked;
    }
  }
  CHECK(checked > 10);
}

TEST_CASE("the README reads in five minutes: at most 250 lines", "[docs]") {
  std::ifstream in(fs::path(ssr::testing::kSrc) / "README.md");
  int lines = 0;
  for (std::string line; std::getline(in, line);) ++lines;
  CHECK(lines <= 250);
}
