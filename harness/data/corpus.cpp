#include "harness/data/corpus.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <set>
#include <unordered_map>

#include "harness/data/attack.hpp"

namespace fs = std::filesystem;

namespace ssr::data {

namespace {

using config::ConfigError;

const char* const kEos = "<eos>";
const char* const kUnk = "<unk>";
constexpr char kCacheMagic[8] = {'S', 'S', 'R', 'C', 'O', 'R', 'P', '2'};

std::string read_file(const fs::path& path, const std::string& what) {
  // A folder opens as a stream on Linux and reports a size of 2^63: refuse it by name.
  std::error_code ec;
  if (fs::is_directory(path, ec))
    throw ConfigError(
        fmt::format("{}: {} is a folder; name a file (check data.dir and the data.* file names)", path.string(), what));
  std::ifstream in(path, std::ios::binary);
  if (!in)
    throw ConfigError(
        fmt::format("{}: {} not found or unreadable; check data.dir and the data.* file names", path.string(), what));
  std::string text;
  in.seekg(0, std::ios::end);
  text.resize(static_cast<size_t>(in.tellg()));
  in.seekg(0);
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  if (!in) throw ConfigError(fmt::format("{}: read error on {}", path.string(), what));
  return text;
}

fs::path in_dir(const std::string& dir, const std::string& file) {
  fs::path p(file);
  return p.is_absolute() ? p : fs::path(dir) / p;
}

// Which file feeds which split, and how data.holdout carves them.
struct Layout {
  fs::path train, valid, test;  // valid/test empty when carved from train
  int64_t carved = 0;           // 0, 1 (valid) or 2 (valid and test) tail pieces of train
  double holdout = 0;
  bool has_test = true;  // data.test: none = no test split (nanoGPT's train/val only)
};

Layout layout_of(const config::Config& cfg) {
  Layout l;
  const std::string& dir = cfg.s("data.dir");
  const std::string &train = cfg.s("data.train"), &valid = cfg.s("data.valid"), &test = cfg.s("data.test");
  l.holdout = cfg.f("data.holdout");
  if (train.empty()) throw ConfigError("data.train: empty; name the training file in data.dir");
  l.train = in_dir(dir, train);
  if (valid.empty() && l.holdout <= 0)
    throw ConfigError("data.valid is '' but data.holdout is 0: name a validation file or set data.holdout > 0");
  if (!valid.empty() && l.holdout > 0)
    throw ConfigError(
        fmt::format("data.holdout is {} but data.valid is '{}': set data.valid='' to carve the "
                    "validation split from the training file, or data.holdout=0",
                    l.holdout, valid));
  if (test.empty() && !valid.empty())
    throw ConfigError("data.test is '': name a test file, or set data.valid='' and data.holdout > 0 to carve both");
  l.has_test = test != "none";
  if (!valid.empty()) l.valid = in_dir(dir, valid);
  if (!test.empty() && l.has_test) l.test = in_dir(dir, test);
  l.carved = valid.empty() ? (test.empty() ? 2 : 1) : 0;
  return l;
}

// Bytes of the UTF-8 sequence that starts with lead byte c (0: not a lead byte).
size_t utf8_length(unsigned char c) {
  return c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
}

// Python's str.isspace() for the code point starting at s[i]; sets len to its UTF-8 length.
bool is_space_at(std::string_view s, size_t i, size_t& len) {
  const auto c = static_cast<unsigned char>(s[i]);
  len = 1;
  if (c == ' ' || (c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x1f)) return true;
  if (c < 0x80) return false;
  auto at = [&](size_t k) { return i + k < s.size() ? static_cast<unsigned char>(s[i + k]) : 0u; };
  if (c == 0xc2 && (at(1) == 0x85 || at(1) == 0xa0)) return len = 2, true;  // U+0085, U+00A0
  if (c == 0xe1 && at(1) == 0x9a && at(2) == 0x80) return len = 3, true;    // U+1680
  if (c == 0xe2 && at(1) == 0x80) {
    const unsigned t = at(2);
    if ((t >= 0x80 && t <= 0x8a) || t == 0xa8 || t == 0xa9 || t == 0xaf)
      return len = 3, true;  // U+2000-200A, 2028/9, 202F
  }
  if (c == 0xe2 && at(1) == 0x81 && at(2) == 0x9f) return len = 3, true;  // U+205F
  if (c == 0xe3 && at(1) == 0x80 && at(2) == 0x80) return len = 3, true;  // U+3000
  return false;
}

// A split's raw text and where it came from (for error messages).
struct SplitText {
  std::string text;
  std::string source;
};

// Carves the tail pieces of a training text: by lines (word), bytes (byte) or characters (char).
// Word and byte carve round(holdout x units) per piece; char keeps the first int(units x (1 -
// carved x holdout)) characters for training, as nanoGPT's shakespeare_char prepare.py does.
std::map<std::string, SplitText> carve(std::string text, const Layout& l, const std::string& format,
                                       const fs::path& file) {
  std::map<std::string, SplitText> out;
  const std::string unit_name = format == "word" ? "lines" : format == "char" ? "characters" : "bytes";
  std::vector<size_t> starts;  // byte offset of each line (word) or character (char)
  if (format == "word")
    for (auto line : split_lines(text)) starts.push_back(static_cast<size_t>(line.data() - text.data()));
  if (format == "char")
    for (size_t i = 0; i < text.size(); i += utf8_length(static_cast<unsigned char>(text[i]))) starts.push_back(i);
  const size_t units = format == "byte" ? text.size() : starts.size();
  const auto carved = static_cast<size_t>(l.carved);
  size_t piece = static_cast<size_t>(std::llround(l.holdout * static_cast<double>(units)));
  size_t train_units = units - std::min(units, piece * carved), test_units = units - std::min(units, piece);
  if (format == "char") {
    train_units = static_cast<size_t>(static_cast<double>(units) * (1 - static_cast<double>(carved) * l.holdout));
    test_units = static_cast<size_t>(static_cast<double>(units) * (1 - l.holdout));
    piece = units - test_units;
  }
  if (piece == 0 || train_units == 0 || (carved == 2 && test_units <= train_units))
    throw ConfigError(fmt::format("{}: data.holdout {} of {} {} leaves an empty split; change data.holdout",
                                  file.string(), l.holdout, units, unit_name));
  auto offset = [&](size_t unit) { return format == "byte" ? unit : starts[unit]; };
  const std::string what = fmt::format("{} {} of {}", piece, unit_name, file.string());
  const size_t valid_begin = offset(train_units);
  if (l.carved == 2) {
    const size_t test_begin = offset(test_units);
    out["test"] = {text.substr(test_begin), "the last " + what};
    out["valid"] = {text.substr(valid_begin, test_begin - valid_begin), "the next-to-last " + what};
  } else {
    out["valid"] = {text.substr(valid_begin), "the last " + what};
  }
  text.resize(valid_begin);
  out["train"] = {std::move(text), file.string() + " before its held-out tail"};
  return out;
}

// The reference opens word-level files as UTF-8 text and fails on anything else; so do we, but
// with the place of the first bad byte (a compressed or binary file usually fails at once).
void check_utf8(std::string_view text, const fs::path& file) {
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    const size_t n = utf8_length(c);
    bool ok = n > 0 && i + n <= text.size();
    for (size_t k = 1; ok && k < n; ++k) ok = (static_cast<unsigned char>(text[i + k]) >> 6) == 0x2;
    if (!ok)
      throw ConfigError(
          fmt::format("{}: not UTF-8 text at byte {}; data.format=word and char read UTF-8 "
                      "text (use data.format=byte for raw bytes such as enwik8)",
                      file.string(), i));
    i += n;
  }
}

std::string read_split_file(const fs::path& path, const std::string& what, bool utf8) {
  std::string text = read_file(path, what);
  if (utf8) check_utf8(text, path);
  return text;
}

std::map<std::string, SplitText> raw_splits(const config::Config& cfg) {
  const Layout l = layout_of(cfg);
  const std::string& format = cfg.s("data.format");
  const bool word = format != "byte";  // word and char read UTF-8 text
  std::string train = read_split_file(l.train, "training file (data.train)", word);
  std::map<std::string, SplitText> out;
  if (l.carved > 0)
    out = carve(std::move(train), l, format, l.train);
  else
    out["train"] = {std::move(train), l.train.string()};
  if (!l.valid.empty())
    out["valid"] = {read_split_file(l.valid, "validation file (data.valid)", word), l.valid.string()};
  if (!l.test.empty()) out["test"] = {read_split_file(l.test, "test file (data.test)", word), l.test.string()};
  return out;
}

// valid and test only: reads the training file only when they are carved from it.
std::map<std::string, SplitText> raw_eval_splits(const config::Config& cfg) {
  const Layout l = layout_of(cfg);
  if (l.carved > 0) {
    auto all = raw_splits(cfg);
    all.erase("train");
    return all;
  }
  const bool word = cfg.s("data.format") != "byte";
  std::map<std::string, SplitText> out;
  out["valid"] = {read_split_file(l.valid, "validation file (data.valid)", word), l.valid.string()};
  if (l.has_test) out["test"] = {read_split_file(l.test, "test file (data.test)", word), l.test.string()};
  return out;
}

struct ViewHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
struct ViewEq {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const { return a == b; }
};

class Dictionary {
 public:
  explicit Dictionary(std::vector<std::string>& words) : words_(words) {
    for (size_t i = 0; i < words_.size(); ++i) index_.emplace(words_[i], static_cast<int32_t>(i));
  }
  int32_t add(std::string_view w) {
    auto it = index_.find(w);
    if (it != index_.end()) return it->second;
    const auto id = static_cast<int32_t>(words_.size());
    words_.emplace_back(w);
    index_.emplace(words_.back(), id);
    return id;
  }
  // -1 when unknown.
  int32_t find(std::string_view w) const {
    auto it = index_.find(w);
    return it == index_.end() ? -1 : it->second;
  }

 private:
  std::vector<std::string>& words_;
  std::unordered_map<std::string, int32_t, ViewHash, ViewEq> index_;
};

// Tokens of a split in the reference's reading order, handed one at a time to `emit`.
template <typename Emit>
void for_each_token(std::string_view text, const std::string& format, Emit&& emit) {
  if (format == "char") {
    for (size_t i = 0; i < text.size();) {
      const size_t n = utf8_length(static_cast<unsigned char>(text[i]));
      emit(text.substr(i, n));
      i += n;
    }
    return;
  }
  if (format == "word") {
    for (auto line : split_lines(text)) {
      for (auto w : split_words(line)) emit(w);
      emit(std::string_view(kEos));
    }
    return;
  }
  static const std::vector<std::string> spelled = [] {
    std::vector<std::string> s;
    for (int b = 0; b < 256; ++b) s.push_back(b == '\n' ? kEos : std::to_string(b));
    return s;
  }();
  for (char c : text) emit(std::string_view(spelled[static_cast<unsigned char>(c)]));
  if (!text.empty() && text.back() != '\n') emit(std::string_view(kEos));
}

torch::Tensor to_tensor(const std::vector<int32_t>& ids) {
  return torch::from_blob(const_cast<int32_t*>(ids.data()), {static_cast<int64_t>(ids.size())}, torch::kInt32)
      .to(torch::kInt64);  // (tokens)
}

std::vector<int32_t> encode(std::string_view text, const std::string& format, Dictionary& dict) {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / (format == "word" ? 5 : 1) + 16);
  for_each_token(text, format, [&](std::string_view t) { ids.push_back(dict.add(t)); });
  return ids;
}

// nanoGPT's character vocabulary: the distinct characters of every split, sorted by code point
// (byte order of UTF-8 strings is code-point order).
std::vector<std::string> sorted_characters(const std::map<std::string, SplitText>& texts) {
  std::set<std::string, std::less<>> chars;
  for (const auto& [name, split] : texts)
    for_each_token(split.text, "char", [&](std::string_view t) {
      if (chars.find(t) == chars.end()) chars.emplace(t);
    });
  return {chars.begin(), chars.end()};
}

// ---- cache of the encoded clean corpus

std::string cache_key(const config::Config& cfg, const Layout& l) {
  std::string key = fmt::format("ssr-corpus v1|{}|{}|{}", cfg.s("data.format"), l.holdout, l.carved);
  for (const fs::path& p : {l.train, l.valid, l.test}) {
    if (p.empty()) continue;
    std::error_code ec;
    const auto size = fs::file_size(p, ec);
    const auto mtime = fs::last_write_time(p, ec).time_since_epoch().count();
    key += fmt::format("|{}|{}|{}", fs::absolute(p).lexically_normal().string(), ec ? 0 : size, ec ? 0 : mtime);
  }
  return key;
}

// The cache file: the magic, the SHA-256 of the payload (64 hex characters), the payload (vocab,
// then each split's int32 ids). A file that fails the checksum or does not parse is rebuilt, so a
// flipped bit cannot change a result.
template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

// Reads the payload front to back; every read is bounds-checked, so a bad count fails the parse
// instead of allocating what it claims.
class Reader {
 public:
  explicit Reader(std::string_view b) : b_(b) {}
  template <typename T>
  bool get(T& v) {
    if (b_.size() < sizeof v) return false;
    std::memcpy(&v, b_.data(), sizeof v);
    b_.remove_prefix(sizeof v);
    return true;
  }
  bool bytes(size_t n, std::string_view& out) {
    if (b_.size() < n) return false;
    out = b_.substr(0, n);
    b_.remove_prefix(n);
    return true;
  }
  bool done() const { return b_.empty(); }

 private:
  std::string_view b_;
};

void write_cache(const fs::path& path, const Corpus& c) {
  std::string payload;
  put<uint64_t>(payload, c.vocab.size());
  for (const auto& w : c.vocab) {
    put<uint32_t>(payload, static_cast<uint32_t>(w.size()));
    payload += w;
  }
  put<uint64_t>(payload, c.splits.size());
  for (const auto& [name, ids] : c.splits) {
    put<uint32_t>(payload, static_cast<uint32_t>(name.size()));
    payload += name;
    auto narrow = ids.to(torch::kInt32).contiguous();  // (tokens)
    put<uint64_t>(payload, static_cast<uint64_t>(narrow.numel()));
    payload.append(reinterpret_cast<const char*>(narrow.data_ptr<int32_t>()), narrow.numel() * sizeof(int32_t));
  }
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary);
    out.write(kCacheMagic, sizeof kCacheMagic);
    out << sha256_hex(payload);
    out.write(payload.data(), static_cast<std::streamsize>(payload.size()));
    if (!out) {
      fmt::print(stderr, "warning: cannot write the corpus cache {}; check data.cache_dir (continuing without)\n",
                 tmp.string());
      out.close();
      fs::remove(tmp, ec);
      return;
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) fs::remove(tmp, ec);
}

std::optional<Corpus> parse_cache(std::string_view payload, const std::string& format) {
  Reader in(payload);
  Corpus c;
  c.format = format;
  uint64_t n = 0;
  if (!in.get(n) || n > payload.size()) return std::nullopt;
  c.vocab.resize(n);
  for (auto& w : c.vocab) {
    uint32_t len = 0;
    std::string_view bytes;
    if (!in.get(len) || !in.bytes(len, bytes)) return std::nullopt;
    w = bytes;
  }
  // Byte-level corpora have no vocabulary list: ids are bytes.
  const int64_t id_end = format == "byte" ? 256 : static_cast<int64_t>(c.vocab.size());
  if (!in.get(n)) return std::nullopt;
  for (uint64_t s = 0; s < n; ++s) {
    uint32_t len = 0;
    uint64_t count = 0;
    std::string_view name, bytes;
    if (!in.get(len) || !in.bytes(len, name) || !in.get(count)) return std::nullopt;
    if (count > payload.size() / sizeof(int32_t) || !in.bytes(count * sizeof(int32_t), bytes)) return std::nullopt;
    std::vector<int32_t> ids(count);
    std::memcpy(ids.data(), bytes.data(), bytes.size());
    for (int32_t id : ids)
      if (id < 0 || id >= id_end) return std::nullopt;
    c.splits[std::string(name)] = to_tensor(ids);
  }
  if (!in.done()) return std::nullopt;
  return c;
}

std::optional<Corpus> read_cache(const fs::path& path, const std::string& format) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return std::nullopt;
  std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  constexpr size_t kHead = sizeof kCacheMagic + 64;  // magic, hex SHA-256
  if (file.size() < kHead || file.compare(0, sizeof kCacheMagic, kCacheMagic, sizeof kCacheMagic) != 0)
    return std::nullopt;  // absent, or written by an older version: rebuilt without a word
  const std::string_view payload = std::string_view(file).substr(kHead);
  std::optional<Corpus> c;
  if (sha256_hex(payload) == file.substr(sizeof kCacheMagic, 64)) c = parse_cache(payload, format);
  if (!c)
    fmt::print(stderr, "warning: the corpus cache {} fails its checksum or does not parse; rebuilding it\n",
               path.string());
  return c;
}

// Attacked splits requested by eval.splits, checked against the manifest written with them.
void add_attacked(const config::Config& cfg, Corpus& c) {
  std::vector<std::string> wanted;
  for (const auto& s : cfg.strings("eval.splits"))
    if (s == "valid-attacked" || s == "test-attacked") wanted.push_back(s);
  if (wanted.empty()) return;
  if (c.format != "word") throw ConfigError("eval.splits: attacked splits exist only for data.format=word (WikiText)");
  const fs::path dir = cfg.s("data.attack_dir");
  const fs::path manifest_path = dir / "manifest.json";
  const std::string hint = "run `ssr data attack CONFIG` with the same data.* keys first";
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(read_file(manifest_path, "attack manifest"));
  } catch (const nlohmann::json::exception& e) {
    throw ConfigError(fmt::format("{}: not a valid attack manifest ({}); {}", manifest_path.string(), e.what(), hint));
  } catch (const ConfigError&) {
    throw ConfigError(fmt::format("{}: attack manifest not found; {}", manifest_path.string(), hint));
  }
  const auto clean = raw_eval_splits(cfg);
  Dictionary dict(c.vocab);
  const int32_t unk = dict.find(kUnk);
  for (const auto& name : wanted) {
    const std::string base = name.substr(0, name.find('-'));
    const fs::path file = dir / (base + ".txt");
    const std::string text = read_file(file, "attacked " + base + " file");
    const auto& entry = manifest["splits"][base];
    if (!entry.is_object() || entry.value("source_sha256", "") != sha256_hex(clean.at(base).text))
      throw ConfigError(
          fmt::format("{}: made from other data than this config's {} split; {}", file.string(), base, hint));
    if (entry.value("sha256", "") != sha256_hex(text))
      throw ConfigError(fmt::format("{}: content differs from its manifest (edited?); {}", file.string(), hint));
    std::vector<int32_t> ids;
    for_each_token(text, "word", [&](std::string_view t) {
      int32_t id = dict.find(t);
      if (id < 0) {
        if (unk < 0)
          throw ConfigError(
              fmt::format("{}: word '{}' is not in the vocabulary, which has no <unk>", file.string(), std::string(t)));
        id = unk;
      }
      ids.push_back(id);
    });
    c.splits[name] = to_tensor(ids);
  }
}

}  // namespace

std::vector<std::string_view> split_lines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\n' && text[i] != '\r') continue;
    lines.push_back(text.substr(start, i - start));
    if (text[i] == '\r' && i + 1 < text.size() && text[i + 1] == '\n') ++i;
    start = i + 1;
  }
  if (start < text.size()) lines.push_back(text.substr(start));
  return lines;
}

std::vector<std::string_view> split_words(std::string_view line) {
  std::vector<std::string_view> words;
  size_t i = 0, len = 0;
  while (i < line.size()) {
    while (i < line.size() && is_space_at(line, i, len)) i += len;
    const size_t start = i;
    while (i < line.size() && !is_space_at(line, i, len)) ++i;
    if (i > start) words.push_back(line.substr(start, i - start));
  }
  return words;
}

std::map<std::string, std::string> eval_split_texts(const config::Config& cfg) {
  std::map<std::string, std::string> out;
  for (auto& [name, split] : raw_eval_splits(cfg)) out[name] = std::move(split.text);
  return out;
}

Corpus load_corpus(const config::Config& cfg) {
  const Layout layout = layout_of(cfg);
  const std::string& format = cfg.s("data.format");
  const fs::path cache_dir = cfg.s("data.cache_dir").empty() ? fs::path(cfg.s("run.db")).parent_path() / "cache"
                                                             : fs::path(cfg.s("data.cache_dir"));
  const fs::path cache = cache_dir / fmt::format("corpus-{}.bin", sha256_hex(cache_key(cfg, layout)).substr(0, 16));
  std::optional<Corpus> cached = read_cache(cache, format);
  Corpus c;
  if (cached) {
    c = std::move(*cached);
  } else {
    c.format = format;
    auto texts = raw_splits(cfg);
    if (format == "char") c.vocab = sorted_characters(texts);
    Dictionary dict(c.vocab);
    for (const char* name : {"train", "valid", "test"}) {
      if (!texts.count(name)) continue;  // data.test: none
      const auto& split = texts.at(name);
      auto ids = encode(split.text, format, dict);
      if (ids.empty())
        throw ConfigError(fmt::format("{}: the {} split is empty; expected {} text", split.source, name,
                                      format == "word"   ? "word-tokenised (one sentence or paragraph per line)"
                                      : format == "char" ? "UTF-8"
                                                         : "raw byte"));
      c.splits[name] = to_tensor(ids);
    }
    write_cache(cache, c);
  }
  add_attacked(cfg, c);
  return c;
}

std::string decode_bytes(const Corpus& corpus, const torch::Tensor& ids) {
  auto flat = ids.to(torch::kInt64).contiguous().view({-1});  // (tokens)
  std::vector<int> byte_of(corpus.vocab.size(), -1);
  for (size_t i = 0; i < corpus.vocab.size(); ++i) {
    const std::string& t = corpus.vocab[i];
    if (t == kEos)
      byte_of[i] = '\n';
    else if (!t.empty() && t.size() <= 3 && std::all_of(t.begin(), t.end(), ::isdigit) && std::stoi(t) < 256)
      byte_of[i] = std::stoi(t);
  }
  std::string out;
  out.reserve(static_cast<size_t>(flat.numel()));
  const int64_t* p = flat.data_ptr<int64_t>();
  for (int64_t i = 0; i < flat.numel(); ++i) {
    if (p[i] < 0 || p[i] >= static_cast<int64_t>(byte_of.size()) || byte_of[p[i]] < 0)
      throw std::invalid_argument(fmt::format("decode_bytes: id {} is not a byte token", p[i]));
    out.push_back(static_cast<char>(byte_of[p[i]]));
  }
  return out;
}

StreamBatcher::StreamBatcher(const torch::Tensor& ids, int64_t streams, int64_t seq_len, bool every_token)
    : seq_len_(seq_len), every_token_(every_token) {
  const int64_t per_stream = ids.numel() / streams;
  if (per_stream <= seq_len)
    throw ConfigError(
        fmt::format("{} tokens give {} per stream for {} streams, but a stream needs more than the "
                    "segment length {}; lower the batch size or train.seq_len",
                    ids.numel(), per_stream, streams, seq_len));
  rows_ = ids.narrow(0, 0, per_stream * streams).view({streams, per_stream});  // (streams, len)
}

StreamBatcher::Batch StreamBatcher::next(torch::Generator& gen) {
  const int64_t len = rows_.size(1);
  Batch b;
  if (pos_ >= len - seq_len_) {
    // Reference: restart at random.randrange(seq_len) and zero all caches. The bound only
    // differs from seq_len when a stream holds fewer than 2 * seq_len tokens.
    const int64_t bound = std::min(seq_len_, len - seq_len_);
    pos_ = torch::randint(bound, {1}, gen, torch::TensorOptions().dtype(torch::kInt64).device(gen.device()))
               .item<int64_t>();
    b.reset = true;
  }
  b.tokens = rows_.narrow(1, pos_, seq_len_);       // (streams, seq_len)
  b.targets = rows_.narrow(1, pos_ + 1, seq_len_);  // (streams, seq_len)
  pos_ += seq_len_;
  return b;
}

int64_t StreamBatcher::eval_segments() const {
  const int64_t len = rows_.size(1);
  // Without every_token: segments start at 0, M, 2M, ... while start < len - M.
  return every_token_ ? (len - 1 + seq_len_ - 1) / seq_len_ : (len - 1) / seq_len_;
}

StreamBatcher::Batch StreamBatcher::segment(int64_t index) const {
  const int64_t start = index * seq_len_, len = rows_.size(1);
  if (index < 0 || index >= eval_segments())
    throw std::out_of_range(fmt::format("StreamBatcher::segment: {} not in [0, {})", index, eval_segments()));
  const int64_t n = std::min(seq_len_, len - 1 - start);
  Batch b;
  b.tokens = rows_.narrow(1, start, n);       // (streams, n)
  b.targets = rows_.narrow(1, start + 1, n);  // (streams, n)
  b.reset = index == 0;
  return b;
}

}  // namespace ssr::data
