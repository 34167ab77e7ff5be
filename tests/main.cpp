// Each test process writes under its own temporary root, removed when the process ends: the tests
// create stores, checkpoints and caches by the hundred, and left in /tmp they once filled a
// machine's disk (stop 44's CI). TMPDIR is what std::filesystem::temp_directory_path() and every
// child `ssr`, chromium or mktemp reads, so setting it routes them all here.
#define CATCH_CONFIG_RUNNER
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <iostream>
#include <string>

#include "tests/helpers.hpp"

int main(int argc, char* argv[]) {
  namespace fs = std::filesystem;
  const fs::path root = fs::temp_directory_path() / ("ssr_tests_" + std::to_string(::getpid()));
  fs::create_directories(root);
  ::setenv("TMPDIR", root.c_str(), 1);
  const int failed = Catch::Session().run(argc, argv);
  if (failed != 0 && std::getenv("SSR_KEEP_TMP") != nullptr) {
    std::cerr << "test files kept in " << root.string() << "\n";
  } else {
    if (!ssr::testing::remove_tree(root)) std::cerr << "could not remove all of " << root.string() << "\n";
  }
  return failed;
}
