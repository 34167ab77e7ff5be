// What the end-to-end tests share: running the built `ssr` (or a shell command) from the source
// tree, a fresh per-process store path, and one metric series of a stored run.
#pragma once
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <filesystem>
#include <string>
#include <vector>

#include "harness/store/store.hpp"
#include "tests/helpers.hpp"

namespace ssr::testing {

inline const std::string kBin = SSR_BINARY;

struct Result {
  int code;         // exit status; -1 when killed by a signal
  std::string out;  // stdout and stderr
};

// `command` in a shell at the source root (where experiments/ and ../shared resolve).
inline Result shell(const std::string& command) {
  const std::string cmd = fmt::format("cd '{}' && OMP_NUM_THREADS=1 {} 2>&1", SSR_SOURCE_DIR, command);
  Result r{0, ""};
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  char buf[512];
  while (fgets(buf, sizeof buf, p)) r.out += buf;
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

// `ssr ARGS`.
inline Result run(const std::string& args) { return shell(fmt::format("'{}' {}", kBin, args)); }

// The values of one metric of a run, in step order.
inline std::vector<double> series(const store::Store& s, int64_t run, const std::string& split,
                                  const std::string& name) {
  std::vector<double> v;
  for (const auto& m : s.metrics(run))
    if (m.split == split && m.name == name) v.push_back(m.value);
  return v;
}

// One stored result of a run (split, name); the test fails when the run has none.
inline double result(const store::Store& s, int64_t run, const std::string& split, const std::string& name) {
  for (const auto& r : s.results(run))
    if (r.split == split && r.name == name) return r.value;
  FAIL("no result " << split << "/" << name);
  return 0;
}

// Compares `text` with tests/golden/NAME; SSR_UPDATE_GOLDEN=1 rewrites the file instead (read
// the diff before committing it).
inline void check_golden(const std::string& name, const std::string& text) {
  const auto path = std::filesystem::path(SSR_SOURCE_DIR) / "tests" / "golden" / name;
  if (std::getenv("SSR_UPDATE_GOLDEN")) {
    std::ofstream(path) << text;
    WARN("rewrote " << path.string());
    return;
  }
  std::ifstream f(path);
  REQUIRE(f.good());
  const std::string want((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  INFO(path.string());
  CHECK(text == want);
}

}  // namespace ssr::testing
