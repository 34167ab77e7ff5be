#include "harness/data/attack.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <unordered_set>
#include <locale.h>
#include <wctype.h>

#include "harness/data/corpus.hpp"

namespace fs = std::filesystem;

namespace ssr::data {

const std::vector<std::string>& stop_words() {
  static const std::vector<std::string> words = {
      "i",        "me",     "my",      "myself",   "we",      "our",     "ours",     "ourselves",  "you",
      "you're",   "you've", "you'll",  "you'd",    "your",    "yours",   "yourself", "yourselves", "he",
      "him",      "his",    "himself", "she",      "she's",   "her",     "hers",     "herself",    "it",
      "it's",     "its",    "itself",  "they",     "them",    "their",   "theirs",   "themselves", "what",
      "which",    "who",    "whom",    "this",     "that",    "that'll", "these",    "those",      "am",
      "is",       "are",    "was",     "were",     "be",      "been",    "being",    "have",       "has",
      "had",      "having", "do",      "does",     "did",     "doing",   "a",        "an",         "the",
      "and",      "but",    "if",      "or",       "because", "as",      "until",    "while",      "of",
      "at",       "by",     "for",     "with",     "about",   "against", "between",  "into",       "through",
      "during",   "before", "after",   "above",    "below",   "to",      "from",     "up",         "down",
      "in",       "out",    "on",      "off",      "over",    "under",   "again",    "further",    "then",
      "once",     "here",   "there",   "when",     "where",   "why",     "how",      "all",        "any",
      "both",     "each",   "few",     "more",     "most",    "other",   "some",     "such",       "no",
      "nor",      "not",    "only",    "own",      "same",    "so",      "than",     "too",        "very",
      "s",        "t",      "can",     "will",     "just",    "don",     "don't",    "should",     "should've",
      "now",      "d",      "ll",      "m",        "o",       "re",      "ve",       "y",          "ain",
      "aren",     "aren't", "couldn",  "couldn't", "didn",    "didn't",  "doesn",    "doesn't",    "hadn",
      "hadn't",   "hasn",   "hasn't",  "haven",    "haven't", "isn",     "isn't",    "ma",         "mightn",
      "mightn't", "mustn",  "mustn't", "needn",    "needn't", "shan",    "shan't",   "shouldn",    "shouldn't",
      "wasn",     "wasn't", "weren",   "weren't",  "won",     "won't",   "wouldn",   "wouldn't"};
  return words;
}

namespace {

// One UTF-8 code point at s[i]; advances i. A malformed byte is returned as itself.
char32_t next_code_point(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  const int len = b < 0x80 ? 1 : (b >> 5) == 0x6 ? 2 : (b >> 4) == 0xE ? 3 : (b >> 3) == 0x1E ? 4 : 1;
  if (len == 1 || i + len > s.size()) {
    ++i;
    return b;
  }
  char32_t c = b & (0x7F >> len);
  for (int k = 1; k < len; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return c;
}

// Python's str.isalnum, which re's \w follows: glibc's Unicode classes (C.UTF-8) plus the
// numbers outside its alnum class (category No: superscripts, fractions, circled digits).
bool unicode_alnum(char32_t c) {
  static const locale_t utf8 = newlocale(LC_CTYPE_MASK, "C.UTF-8", static_cast<locale_t>(nullptr));
  if (!utf8) throw std::runtime_error("the C.UTF-8 locale is missing (glibc >= 2.35 has it built in)");
  if (iswalnum_l(static_cast<wint_t>(c), utf8)) return true;
  struct Range {
    char32_t lo, hi;
  };
  static constexpr Range numbers[] = {{0xB2, 0xB3},     {0xB9, 0xB9},     {0xBC, 0xBE},     {0x2070, 0x2070},
                                      {0x2074, 0x2079}, {0x2080, 0x2089}, {0x2150, 0x2189}, {0x2460, 0x249B},
                                      {0x24EA, 0x24FF}, {0x2776, 0x2793}, {0x3251, 0x325F}, {0x32B1, 0x32BF}};
  return std::any_of(std::begin(numbers), std::end(numbers), [c](const Range& r) { return c >= r.lo && c <= r.hi; });
}

// A character of TextAttack's word pattern [\w<homoglyphs>'\-_\*@]: the homoglyphs that are
// not \w themselves are ` (U+0060), × (U+00D7) and ˗ (U+02D7).
bool word_char(char32_t c) {
  if (c < 0x80) return std::isalnum(static_cast<int>(c)) || std::strchr("_'-*@`", static_cast<int>(c)) != nullptr;
  return c == 0xD7 || c == 0x2D7 || unicode_alnum(c);
}

// TextAttack lstrips these from every word.
bool exception_char(char32_t c) { return c == '\'' || c == '-' || c == '_' || c == '*' || c == '@'; }

}  // namespace

std::vector<std::string_view> text_words(std::string_view token) {
  std::vector<std::string_view> words;
  size_t i = 0;
  while (i < token.size()) {
    size_t start = i;
    const char32_t c = next_code_point(token, i);
    if (!word_char(c)) continue;
    // A run of word characters; its leading exception characters are stripped.
    bool leading = exception_char(c);
    size_t end = i;
    while (end < token.size()) {
      size_t j = end;
      const char32_t d = next_code_point(token, j);
      if (!word_char(d)) break;
      if (leading && !exception_char(d)) {
        leading = false;
        start = end;
      }
      end = j;
    }
    if (!leading) words.push_back(token.substr(start, end - start));
    i = end;
  }
  return words;
}

bool is_stop_word(std::string_view word) {
  static const std::unordered_set<std::string_view> set(stop_words().begin(), stop_words().end());
  return set.count(word) != 0;
}

std::string attack_text(std::string_view text, double rate, const std::string& word, torch::Generator& gen,
                        AttackStats& stats) {
  std::string out;
  out.reserve(text.size());
  size_t start = 0;
  while (start < text.size()) {
    // One line with its terminator (\n, \r\n or \r), as the tokeniser reads it.
    size_t end = text.find_first_of("\r\n", start);
    size_t next = end == std::string_view::npos ? text.size() : end + 1;
    if (end != std::string_view::npos && text[end] == '\r' && next < text.size() && text[next] == '\n') ++next;
    if (end == std::string_view::npos) end = text.size();
    const std::string_view line = text.substr(start, end - start);
    ++stats.lines;

    int64_t words = 0;
    std::vector<std::string_view> candidates;  // swappable words, views into `line`
    for (auto t : split_words(line))
      for (auto w : text_words(t)) {
        ++words;
        if (!is_stop_word(w) && w != word) candidates.push_back(w);
      }
    stats.words += words;
    stats.swappable += static_cast<int64_t>(candidates.size());
    if (words > 0) ++stats.lines_with_words;

    std::vector<bool> swap(candidates.size(), false);
    if (!candidates.empty()) {
      ++stats.lines_swappable;
      // TextAttack: max(int(pct * len(words)), 1) swaps, each drawn uniformly among the remaining
      // allowed positions, which is a uniform draw without replacement.
      const auto want = std::max<int64_t>(static_cast<int64_t>(rate * static_cast<double>(words)), 1);
      const auto n = std::min<int64_t>(want, static_cast<int64_t>(candidates.size()));
      auto perm = torch::randperm(static_cast<int64_t>(candidates.size()), gen, torch::kInt64);  // (candidates)
      const int64_t* chosen = perm.data_ptr<int64_t>();
      for (int64_t i = 0; i < n; ++i) swap[chosen[i]] = true;
      stats.swapped += n;
      ++stats.lines_swapped;
    }
    size_t copied = 0;  // bytes of `line` already copied
    for (size_t c = 0; c < candidates.size(); ++c) {
      if (!swap[c]) continue;
      const auto at = static_cast<size_t>(candidates[c].data() - line.data());
      out.append(line.substr(copied, at - copied));
      out.append(word);
      copied = at + candidates[c].size();
    }
    out.append(line.substr(copied));
    out.append(text.substr(end, next - end));
    start = next;
  }
  return out;
}

std::string sha256_hex(std::string_view bytes) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(bytes.data(), bytes.size(), md, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int i = 0; i < len; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

nlohmann::json write_attacked_splits(const config::Config& cfg) {
  if (cfg.s("data.format") != "word")
    throw config::ConfigError("data attack: needs data.format=word (the attack swaps WikiText words)");
  const double rate = cfg.f("data.attack_rate");
  const int64_t seed = cfg.i("data.attack_seed");
  const std::string& word = cfg.s("data.attack_word");
  if (split_words(word).size() != 1 || split_words(word)[0] != word)
    throw config::ConfigError(fmt::format("data.attack_word: '{}' must be one word without spaces", word));
  const fs::path dir = cfg.s("data.attack_dir");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec)
    throw config::ConfigError(
        fmt::format("{}: cannot create data.attack_dir ({}); pick a writable folder", dir.string(), ec.message()));

  std::string stop_list;
  for (const auto& w : stop_words()) stop_list += w + "\n";
  nlohmann::json manifest = {
      {"rule",
       "TextAttack Augmenter: per line max(floor(rate*words),1) non-stop-words -> word, uniform without "
       "replacement; NLTK English stop-words, case-sensitive"},
      {"seed", seed},
      {"rate", rate},
      {"word", word},
      {"stop_words", {{"count", stop_words().size()}, {"sha256", sha256_hex(stop_list)}}},
      {"data",
       {{"dir", cfg.s("data.dir")},
        {"train", cfg.s("data.train")},
        {"valid", cfg.s("data.valid")},
        {"test", cfg.s("data.test")},
        {"holdout", cfg.f("data.holdout")}}},
      {"splits", nlohmann::json::object()}};

  const auto clean = eval_split_texts(cfg);
  // One generator for both splits, valid first: the files depend on the seed only.
  auto gen = at::make_generator<at::CPUGeneratorImpl>(static_cast<uint64_t>(seed));
  for (const char* name : {"valid", "test"}) {
    AttackStats st;
    const std::string attacked = attack_text(clean.at(name), rate, word, gen, st);
    const fs::path file = dir / (std::string(name) + ".txt");
    std::ofstream out(file, std::ios::binary);
    out.write(attacked.data(), static_cast<std::streamsize>(attacked.size()));
    if (!out)
      throw config::ConfigError(
          fmt::format("{}: cannot write the attacked split; check data.attack_dir", file.string()));
    manifest["splits"][name] = {{"file", file.string()},
                                {"sha256", sha256_hex(attacked)},
                                {"source_sha256", sha256_hex(clean.at(name))},
                                {"source_bytes", clean.at(name).size()},
                                {"lines", st.lines},
                                {"lines_with_words", st.lines_with_words},
                                {"lines_swappable", st.lines_swappable},
                                {"lines_swapped", st.lines_swapped},
                                {"words", st.words},
                                {"swappable", st.swappable},
                                {"swapped", st.swapped},
                                {"swapped_fraction_of_words",
                                 st.words > 0 ? static_cast<double>(st.swapped) / static_cast<double>(st.words) : 0.0}};
  }
  const fs::path manifest_path = dir / "manifest.json";
  std::ofstream m(manifest_path);
  m << manifest.dump(2) << "\n";
  if (!m)
    throw config::ConfigError(
        fmt::format("{}: cannot write the manifest; check data.attack_dir", manifest_path.string()));
  return manifest;
}

}  // namespace ssr::data
