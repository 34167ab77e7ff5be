// Corpora for the LM: word level (WikiText: whitespace tokens + <eos> per line) and byte level
// (enwik8), and the stream batcher of the reference (B contiguous streams, segments of M tokens).
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "harness/config/config.hpp"

namespace ssr::data {

struct Corpus {
  std::vector<std::string> vocab;               // id -> token, in first-seen order train -> valid -> test
  std::map<std::string, torch::Tensor> splits;  // "train"/"valid"/"test" -> (tokens) int64 ids
  std::string format;                           // data.format: "word", "byte" or "char"
  int64_t vocab_size() const { return static_cast<int64_t>(vocab.size()); }
};

// Reads data.* keys. Missing or malformed files throw config::ConfigError naming the file.
// Splits: train, valid, test; plus valid-attacked / test-attacked when eval.splits names them
// (read from data.attack_dir, encoded with the clean vocabulary, unseen words -> <unk>).
// The encoded clean corpus is cached under data.cache_dir, keyed by the source files' paths,
// sizes and modification times; a changed source file rebuilds it.
//
// Word format (reference data.py): each line -> Python str.split() words + "<eos>", the
// dictionary grows in first-seen order over train, valid, test.
// Byte format (reference prep_enwik8.py + data.py): each byte is the token spelled as its decimal
// value ("60" for '<'), a newline byte is "<eos>", and a split not ending in a newline gets one
// final "<eos>" (the reference reads the last line like any other). The vocabulary is therefore
// the distinct bytes seen plus <eos> in first-seen order (205 on enwik8), ids as in the reference.
// Char format (nanoGPT's shakespeare_char): each Unicode character is a token, newlines included,
// the vocabulary is every split's distinct characters sorted by code point (65 on Tiny
// Shakespeare), and data.holdout carves by characters, training on the first int(n x 0.9).
Corpus load_corpus(const config::Config& cfg);

// Raw text of the valid and test splits after data.holdout carving (what the tokeniser reads and
// the attack rewrites). Reads the training file only when the splits are carved from it.
std::map<std::string, std::string> eval_split_texts(const config::Config& cfg);

// Python str.split() on a UTF-8 line: runs of ASCII and Unicode whitespace separate words.
std::vector<std::string_view> split_words(std::string_view line);
// Python's text-mode line iteration: lines end at \n, \r\n or \r; the terminator is dropped and
// a final unterminated line counts.
std::vector<std::string_view> split_lines(std::string_view text);

// Inverse of the byte-format encoding: ids (tokens) -> the original bytes ("<eos>" -> '\n').
std::string decode_bytes(const Corpus& corpus, const torch::Tensor& ids);

// Reference batch layout: `streams` contiguous rows of the split; each next() returns the segment
// at the current position and advances by seq_len. At the end of the rows it restarts at a random
// offset in [0, seq_len) and reports `reset` so the caller zeroes the caches.
class StreamBatcher {
 public:
  // ids (tokens) int64 are truncated to a multiple of `streams` (reference _batchify). Throws
  // ConfigError when a stream would hold no full segment. every_token: eval segments also cover
  // each row's tail after the last full segment (a shorter final segment).
  StreamBatcher(const torch::Tensor& ids, int64_t streams, int64_t seq_len, bool every_token = false);
  struct Batch {
    torch::Tensor tokens;   // (streams, seq_len) int64 (the last eval segment may be shorter)
    torch::Tensor targets;  // (streams, seq_len) int64
    bool reset = false;     // caches must be zeroed before this batch
  };
  // Training walk. The restart offset is drawn from `gen` (any device).
  Batch next(torch::Generator& gen);
  // Evaluation walk: segments in order, stopping when pos >= len - seq_len (reference tail rule),
  // or covering every position that has a target with every_token.
  int64_t eval_segments() const;
  Batch segment(int64_t index) const;  // reset is set on segment 0
  int64_t position() const { return pos_; }
  void set_position(int64_t pos) { pos_ = pos; }
  int64_t streams() const { return rows_.size(0); }
  int64_t stream_length() const { return rows_.size(1); }

 private:
  torch::Tensor rows_;  // (streams, len) int64
  int64_t seq_len_;
  bool every_token_;
  int64_t pos_ = 0;
};

}  // namespace ssr::data
