// The one checkpoint format of every task. A file is a 64-byte header (magic "SSRCKPT", format
// version, payload length, SHA-256 of the payload) followed by the payload, a LibTorch archive.
// Writes go to PATH.tmp, are fsynced and renamed over PATH, so a kill or a full disk leaves the
// previous checkpoint intact; reads check the length and the checksum before LibTorch sees a byte,
// so a truncated, altered or foreign file is a one-line CheckpointError naming it.
#pragma once
#include <torch/torch.h>

#include <cstdint>
#include <filesystem>
#include <stdexcept>
#include <string>

#include "harness/store/store.hpp"

namespace ssr::train {

// Format 1 (before 2026-12-05) was a bare LibTorch archive without header or checksum.
inline constexpr uint32_t kCheckpointFormat = 2;

struct CheckpointError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The checkpoint folder of run `run`: run.out_dir / store id / run id (run ids are per store); an
// empty run.out_dir is checkpoints/ in the store's folder.
std::filesystem::path run_dir(const std::string& out_dir, const store::Store& store, int64_t run);
// Removes a run's checkpoint folder and the files in it (ssr rm); absent is fine.
void remove_run_dir(const std::filesystem::path& dir);
// Refuses, before any training, a run.out_dir where checkpoints cannot be written: creates the
// store's folder under it and writes and removes a probe file. A config::ConfigError naming it.
void check_out_dir(const std::string& out_dir, const store::Store& store);

// Writes `archive` to `path` atomically (creating its folder). On failure the temporary file is
// removed, the previous file is untouched, and the error names the path and the free space.
void write_checkpoint(torch::serialize::OutputArchive& archive, const std::filesystem::path& path);

// Loads `path` into `archive`, tensors on `device`, after checking header, length and checksum.
void read_checkpoint(torch::serialize::InputArchive& archive, const std::filesystem::path& path, torch::Device device);

}  // namespace ssr::train
