// Checkpoint files are written to a temporary name and renamed, so a kill during the write leaves
// the previous checkpoint intact.
#pragma once
#include <fmt/format.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <stdexcept>

namespace ssr::train {

inline void save_atomically(torch::serialize::OutputArchive& ar, const std::filesystem::path& path) {
  std::filesystem::create_directories(path.parent_path());
  const std::string tmp = path.string() + ".tmp";
  ar.save_to(tmp);
  if (std::rename(tmp.c_str(), path.c_str()) != 0)
    throw std::runtime_error(fmt::format("{}: cannot write checkpoint", path.string()));
}

}  // namespace ssr::train
