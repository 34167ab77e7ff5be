#include "harness/data/attack.hpp"

#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>
#include <openssl/evp.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <unordered_set>

#include "harness/data/corpus.hpp"

namespace fs = std::filesystem;

namespace ssr::data {

const std::vector<std::string>& stop_words() {
  static const std::vector<std::string> words = {
      "i", "me", "my", "myself", "we", "our", "ours", "ourselves", "you", "you're", "you've", "you'll", "you'd",
      "your", "yours", "yourself", "yourselves", "he", "him", "his", "himself", "she", "she's", "her", "hers",
      "herself", "it", "it's", "its", "itself", "they", "them", "their", "theirs", "themselves", "what", "which",
      "who", "whom", "this", "that", "that'll", "these", "those", "am", "is", "are", "was", "were", "be", "been",
      "being", "have", "has", "had", "having", "do", "does", "did", "doing", "a", "an", "the", "and", "but", "if",
      "or", "because", "as", "until", "while", "of", "at", "by", "for", "with", "about", "against", "between",
      "into", "through", "during", "before", "after", "above", "below", "to", "from", "up", "down", "in", "out",
      "on", "off", "over", "under", "again", "further", "then", "once", "here", "there", "when", "where", "why",
      "how", "all", "any", "both", "each", "few", "more", "most", "other", "some", "such", "no", "nor", "not",
      "only", "own", "same", "so", "than", "too", "very", "s", "t", "can", "will", "just", "don", "don't",
      "should", "should've", "now", "d", "ll", "m", "o", "re", "ve", "y", "ain", "aren", "aren't", "couldn",
      "couldn't", "didn", "didn't", "doesn", "doesn't", "hadn", "hadn't", "hasn", "hasn't", "haven", "haven't",
      "isn", "isn't", "ma", "mightn", "mightn't", "mustn", "mustn't", "needn", "needn't", "shan", "shan't",
      "shouldn", "shouldn't", "wasn", "wasn't", "weren", "weren't", "won", "won't", "wouldn", "wouldn't"};
  return words;
}

namespace {

// TextAttack strips these from the front of a word (words_from_text's `exceptions`).
std::string_view strip_leading(std::string_view token) {
  const size_t i = token.find_first_not_of("'-_*@");
  return i == std::string_view::npos ? std::string_view() : token.substr(i);
}

bool word_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  return std::isalnum(u) || c == '_' || u >= 0x80;  // \w, with any non-ASCII byte counted as a letter
}

}  // namespace

bool is_word(std::string_view token) {
  auto core = strip_leading(token);
  return std::any_of(core.begin(), core.end(), word_char);
}

bool is_stop_word(std::string_view token) {
  static const std::unordered_set<std::string_view> set(stop_words().begin(), stop_words().end());
  return set.count(strip_leading(token)) != 0;
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
    std::vector<std::string_view> candidates;  // swappable tokens, views into `line`
    for (auto t : split_words(line)) {
      if (!is_word(t)) continue;
      ++words;
      if (!is_stop_word(t) && t != word) candidates.push_back(t);
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
    throw config::ConfigError(fmt::format("{}: cannot create data.attack_dir ({}); pick a writable folder",
                                          dir.string(), ec.message()));

  std::string stop_list;
  for (const auto& w : stop_words()) stop_list += w + "\n";
  nlohmann::json manifest = {
      {"rule", "TextAttack Augmenter: per line max(floor(rate*words),1) non-stop-words -> word, uniform without "
               "replacement; NLTK English stop-words, case-sensitive"},
      {"seed", seed},
      {"rate", rate},
      {"word", word},
      {"stop_words", {{"count", stop_words().size()}, {"sha256", sha256_hex(stop_list)}}},
      {"data", {{"dir", cfg.s("data.dir")}, {"train", cfg.s("data.train")}, {"valid", cfg.s("data.valid")},
                {"test", cfg.s("data.test")}, {"holdout", cfg.f("data.holdout")}}},
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
      throw config::ConfigError(fmt::format("{}: cannot write the attacked split; check data.attack_dir", file.string()));
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
    throw config::ConfigError(fmt::format("{}: cannot write the manifest; check data.attack_dir", manifest_path.string()));
  return manifest;
}

}  // namespace ssr::data
