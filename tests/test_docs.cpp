// The README and docs/: every relative link resolves, and the README stays short enough to read in
// five minutes (the long material lives in docs/).
#include <catch2/catch.hpp>
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include "harness/store/store.hpp"
#include "tests/cli_helpers.hpp"
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

TEST_CASE("every command of the README's first session runs, at a tiny scale", "[docs][cli]") {
  // The session's code block, as a newcomer copies it; `make demo`'s training comes first.
  std::ifstream in(fs::path(ssr::testing::kSrc) / "README.md");
  const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
  const auto start = text.find("```sh\n", text.find("A first session, in order:"));
  REQUIRE(start != std::string::npos);
  const auto end = text.find("```", start + 6);
  std::vector<std::string> commands = {"build/ssr train experiments/demo.yaml"};
  std::stringstream block(text.substr(start + 6, end - start - 6));
  for (std::string line; std::getline(block, line);) {
    line = line.substr(0, line.find(" #"));
    while (!line.empty() && line.back() == ' ') line.pop_back();
    if (!line.empty()) commands.push_back(line);
  }
  REQUIRE(commands.size() >= 12);
  const auto dir = ssr::testing::temp_dir("docs", "readme");
  const std::string db = (dir / "runs.db").string();
  // Every training is two steps of a tiny batch: the same overrides everywhere keep the hashes
  // the session's reuse relies on (its sweep reuses runs 1 and 2).
  const std::string tiny =
      " train.steps=2 train.warmup=1 train.batch_size=2 train.seq_len=16 eval.batch_size=2 eval.max_segments=2 "
      "train.eval_every=1 train.eval_segments=1 run.threads=1";
  for (auto command : commands) {
    REQUIRE(command.rfind("build/ssr ", 0) == 0);
    command = command.substr(10);
    if (const auto at = command.find("experiments/demo.yaml");
        at != std::string::npos && command.rfind("config", 0) != 0)
      command.insert(at + 21, tiny);
    if (const auto at = command.find("--out loss.png"); at != std::string::npos)
      command.replace(at, 14, "--out " + (dir / "loss.png").string());
    if (command == "ui") {
      // Served until stopped: ask it for run 1 as the page would, then stop it.
      const auto log = (dir / "ui.log").string();
      const auto r = ssr::testing::shell(fmt::format(
          "'{}' ui --port 0 --db '{}' 2>'{}' & pid=$!; for i in $(seq 100); do port=$(grep -o '127.0.0.1:[0-9]*' "
          "'{}' | cut -d: -f2); [ -n \"$port\" ] && break; sleep 0.1; done; python3 -c \"import sys, urllib.request; "
          "print(urllib.request.urlopen('http://127.0.0.1:' + sys.argv[1] + '/api/runs/1').read().decode())\" "
          "\"$port\"; kill $pid; wait $pid",
          ssr::testing::kBin, db, log, log));
      INFO(r.out);
      CHECK(r.code == 0);  // SIGTERM stops the server cleanly
      CHECK(r.out.find("\"id\":1,") != std::string::npos);
      continue;
    }
    const auto r = ssr::testing::shell(fmt::format("'{}' {} --db '{}'", ssr::testing::kBin, command, db));
    INFO(command << "\n" << r.out);
    CHECK(r.code == 0);
  }
  const ssr::store::Store s(db, ssr::store::Store::Access::read);
  CHECK(s.runs().size() == 5);  // 1 + 1 + the sweep's 4 new jobs, less the one rm deleted
}
