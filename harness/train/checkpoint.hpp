// Checkpoint files are written to a temporary name and renamed, so a kill during the write leaves
// the previous checkpoint intact.
#pragma once
#include <fmt/format.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "harness/store/store.hpp"

namespace ssr::train {

// The checkpoint folder of run `run`: run.out_dir / store id / run id (run ids are per store).
inline std::filesystem::path run_dir(const std::string& out_dir, const store::Store& store, int64_t run) {
  return std::filesystem::path(out_dir) / store.id() / std::to_string(run);
}

inline void save_atomically(torch::serialize::OutputArchive& ar, const std::filesystem::path& path) {
  std::filesystem::create_directories(path.parent_path());
  const std::string tmp = path.string() + ".tmp";
  ar.save_to(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error(fmt::format("{}: cannot write checkpoint", path.string()));
}

}  // namespace ssr::train
