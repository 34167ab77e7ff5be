// Corpora for the LM: word level (WikiText: whitespace tokens + <eos> per line) and byte level
// (enwik8), and the stream batcher of the reference (B contiguous streams, segments of M tokens).
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "harness/config/config.hpp"

namespace ssr::data {

struct Corpus {
  std::vector<std::string> vocab;           // id -> token, in first-seen order train -> valid -> test
  std::map<std::string, torch::Tensor> splits;  // "train"/"valid"/"test" -> (tokens) int64 ids
  int64_t vocab_size() const { return static_cast<int64_t>(vocab.size()); }
};

// Reads data.* keys. Missing or malformed files throw config::ConfigError naming the file.
Corpus load_corpus(const config::Config& cfg);

// Reference batch layout: `streams` contiguous rows of the split; each next() returns the segment
// at the current position and advances by seq_len. At the end of the rows it restarts at a random
// offset in [0, seq_len) and reports `reset` so the caller zeroes the caches.
class StreamBatcher {
 public:
  StreamBatcher(const torch::Tensor& ids, int64_t streams, int64_t seq_len);
  struct Batch {
    torch::Tensor tokens;   // (streams, seq_len) int64
    torch::Tensor targets;  // (streams, seq_len) int64
    bool reset = false;     // caches must be zeroed before this batch
  };
  Batch next(torch::Generator& gen);
  // Evaluation walk: segments in order, stopping when pos >= len - seq_len (reference tail rule).
  int64_t eval_segments() const;
  Batch segment(int64_t index) const;
  int64_t position() const { return pos_; }
  void set_position(int64_t pos) { pos_ = pos; }

 private:
  torch::Tensor rows_;  // (streams, len) int64
  int64_t seq_len_;
  int64_t pos_ = 0;
};

}  // namespace ssr::data
