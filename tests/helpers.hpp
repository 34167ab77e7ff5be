// What the unit tests share, defined once: the tests compile in unity batches (CMakeLists.txt), so
// two files cannot each define a helper of the same name.
#pragma once
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <torch/torch.h>
#include <ftw.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "harness/config/config.hpp"

namespace ssr::testing {

inline const std::string kSrc = SSR_SOURCE_DIR;

inline torch::Generator cpu_gen(uint64_t seed) { return at::make_generator<at::CPUGeneratorImpl>(seed); }

// scale * N(0, 1) draws, (m, n), from a generator seeded with `seed`.
inline torch::Tensor random_logits(int64_t m, int64_t n, double scale, uint64_t seed,
                                   torch::Dtype dtype = torch::kFloat32) {
  auto gen = cpu_gen(seed);
  return scale * torch::randn({m, n}, gen, torch::TensorOptions().dtype(dtype));  // (m, n)
}

inline double normal_cdf(double z) { return 0.5 * std::erfc(-z / std::sqrt(2.0)); }

// Removes `dir` and everything under it, not following links; false if anything stayed.
// Not std::filesystem::remove_all: that binds to a copy inside libtorch.so (the 2.11 wheel) that
// segfaults on a non-empty folder.
inline bool remove_tree(const std::filesystem::path& dir) {
  const auto one = [](const char* p, const struct stat*, int, struct FTW*) { return ::remove(p) == 0 ? 0 : 1; };
  return ::nftw(dir.c_str(), one, 16, FTW_DEPTH | FTW_PHYS) == 0;
}

// A fresh, empty directory ssr_SUITE_PID_NAME under the system's temporary directory.
inline std::filesystem::path temp_dir(const std::string& suite, const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("ssr_{}_{}_{}", suite, ::getpid(), name);
  remove_tree(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

// A store path under a directory of this test process; the file and its WAL are removed first.
inline std::string temp_db(const std::string& suite, const std::string& name) {
  const auto dir = std::filesystem::temp_directory_path() / fmt::format("ssr_{}_{}", suite, ::getpid());
  std::filesystem::create_directories(dir);
  const auto p = (dir / name).string();
  for (const char* ext : {"", "-wal", "-shm"}) std::filesystem::remove(p + ext);
  return p;
}

// experiments/FILE with `overrides`, resolved.
inline config::Config resolve_experiment(const std::string& file, const std::vector<std::string>& overrides) {
  return config::resolve(kSrc + "/experiments/" + file, overrides);
}

}  // namespace ssr::testing
