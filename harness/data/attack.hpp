// The "attacked" WikiText-103 of the robustness evaluation (spec section 2.4): TextAttack's
// Augmenter with a word swap that always proposes "AAA", StopwordModification, 2.5 % of words
// per line, re-implemented with a seeded generator.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "harness/config/config.hpp"

namespace ssr::data {

// NLTK's English stop-word list (179 words), which TextAttack's StopwordModification uses.
const std::vector<std::string>& stop_words();

// TextAttack's words (words_from_text) of one whitespace token: the runs of its word pattern
// [\w'-_*@ and three homoglyphs], each with its leading ' - _ * @ stripped, empty ones dropped.
// So "," "@-@" and "–" hold no word, "U.S." holds "U" and "S", "<unk>" holds "unk", "'s" holds "s".
// \w is Python's Unicode one. (TextAttack segments lines with CJK characters by jieba first; that
// is not done here: one line of WikiText-103's valid and test has them.)
std::vector<std::string_view> text_words(std::string_view token);
// A word of NLTK's list, case-sensitively as in TextAttack ("The" is swappable, "the" is not).
bool is_stop_word(std::string_view word);

struct AttackStats {
  int64_t lines = 0;             // lines read
  int64_t lines_with_words = 0;  // lines holding at least one word
  int64_t lines_swappable = 0;   // lines holding at least one swappable (non-stop) word
  int64_t lines_swapped = 0;     // lines changed
  int64_t words = 0;             // words (stop-words included)
  int64_t swappable = 0;         // words eligible for a swap
  int64_t swapped = 0;           // words replaced
};

// Per line: n = max(floor(rate * words), 1) distinct non-stop-words (never the replacement word
// itself) chosen uniformly without replacement from `gen` (CPU) are replaced by `word` where they
// stand in their token ("<unk>" -> "<AAA>", which the clean vocabulary reads as <unk>); lines
// with fewer swappable words lose all of them, lines with none stay as they are. Everything
// else, whitespace and line ends included, is kept byte for byte.
std::string attack_text(std::string_view text, double rate, const std::string& word, torch::Generator& gen,
                        AttackStats& stats);

// `ssr data attack CONFIG`: attacks the clean valid and test splits of cfg (after data.holdout
// carving) with data.attack_rate / data.attack_seed / data.attack_word and writes
// data.attack_dir/{valid.txt,test.txt,manifest.json}. Returns the manifest (seed, rate, word,
// stop-word list hash, per split: source path and SHA-256, output SHA-256, counts).
nlohmann::json write_attacked_splits(const config::Config& cfg);

// Lower-case hex SHA-256 of bytes.
std::string sha256_hex(std::string_view bytes);

}  // namespace ssr::data
