// Corpora, batcher and the attacked WikiText-103, on the real files in ../shared/data.
#include <ATen/CPUGeneratorImpl.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <unistd.h>

#include "harness/config/config.hpp"
#include "harness/data/attack.hpp"
#include "harness/data/corpus.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;
using namespace ssr;
using data::StreamBatcher;

namespace {

using ssr::testing::cpu_gen;

fs::path data_root() {
  if (const char* env = std::getenv("SSR_DATA")) return env;
  return fs::path(SSR_SOURCE_DIR) / ".." / "shared" / "data";
}

// A fresh folder per test case (caches, fixtures, attacked files), removed at the end.
struct TempDir {
  fs::path path;
  TempDir() {
    static int n = 0;
    path = fs::temp_directory_path() / ("ssr-test-data-" + std::to_string(::getpid()) + "-" + std::to_string(n++));
    fs::create_directories(path);
  }
  ~TempDir() { ssr::testing::remove_tree(path); }
};

config::Config make_cfg(const std::vector<std::string>& overrides, const TempDir& tmp) {
  config::Config cfg;
  std::vector<std::string> o = {"data.cache_dir=" + (tmp.path / "cache").string(),
                                "data.attack_dir=" + (tmp.path / "attacked").string()};
  o.insert(o.end(), overrides.begin(), overrides.end());
  config::apply_overrides(cfg, o, config::search_path(""));
  return cfg;
}

config::Config wt103(const TempDir& tmp, std::vector<std::string> extra = {}) {
  std::vector<std::string> o = {"data.format=word", "data.dir=" + (data_root() / "wikitext-103").string(),
                                "data.train=wiki.valid.tokens", "data.valid=wiki.valid.tokens",
                                "data.test=wiki.test.tokens"};
  o.insert(o.end(), extra.begin(), extra.end());
  return make_cfg(o, tmp);
}

void write(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

std::vector<int64_t> ids_of(const torch::Tensor& t) {
  auto c = t.contiguous();
  return {c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel()};
}

}  // namespace

TEST_CASE("Python str.split and line iteration semantics", "[data][tokenise]") {
  struct Row {
    std::string text;
    std::vector<std::string> words;
  };
  const std::vector<Row> rows = {
      {" = Valkyria Chronicles III = ", {"=", "Valkyria", "Chronicles", "III", "="}},
      {"", {}},
      {" \t ", {}},
      {"a\xc2\xa0"
       "b\xe3\x80\x80"
       "c\x1f"
       "d",
       {"a", "b", "c", "d"}},                                 // NBSP, ideographic space, \x1f
      {"caf\xc3\xa9 \xc2\xa9", {"caf\xc3\xa9", "\xc2\xa9"}},  // non-space multibyte stays
  };
  for (const auto& r : rows) {
    auto got = data::split_words(r.text);
    CHECK(std::vector<std::string>(got.begin(), got.end()) == r.words);
  }
  auto lines = data::split_lines("a\nb\r\nc\rd\n\ne");
  CHECK(std::vector<std::string>(lines.begin(), lines.end()) == std::vector<std::string>{"a", "b", "c", "d", "", "e"});
  CHECK(data::split_lines("a\n").size() == 1);
}

TEST_CASE("WikiText-103 valid and test token counts include one <eos> per line", "[data][wt103]") {
  TempDir tmp;
  auto cfg = wt103(tmp);
  auto corpus = data::load_corpus(cfg);
  CHECK(corpus.format == "word");
  CHECK(corpus.splits.at("valid").numel() == 217646);
  CHECK(corpus.splits.at("test").numel() == 245569);
  CHECK(corpus.splits.at("train").numel() == 217646);
  CHECK(corpus.vocab[corpus.splits.at("valid")[0].item<int64_t>()] == "<eos>");  // the file opens with " \n"
  // Eval walk of spec 4 with B = 48, M = 512: 4,534 and 5,116 ids per stream -> 8 and 9 segments.
  CHECK(StreamBatcher(corpus.splits.at("valid"), 48, 512).eval_segments() == 8);
  CHECK(StreamBatcher(corpus.splits.at("test"), 48, 512).eval_segments() == 9);
  CHECK(StreamBatcher(corpus.splits.at("valid"), 48, 512, true).eval_segments() == 9);

  SECTION("a second load reads the cache and gives the same corpus") {
    REQUIRE(fs::exists(tmp.path / "cache"));
    auto again = data::load_corpus(cfg);
    CHECK(again.vocab == corpus.vocab);
    CHECK(torch::equal(again.splits.at("test"), corpus.splits.at("test")));
  }
  SECTION("holdout carves the validation split from the training file's last lines") {
    auto demo =
        data::load_corpus(make_cfg({"data=wt103-demo", "data.dir=" + (data_root() / "wikitext-103").string()}, tmp));
    const int64_t total = demo.splits.at("train").numel() + demo.splits.at("valid").numel();
    CHECK(total == 217646);
    CHECK(demo.splits.at("valid").numel() > 15000);
    CHECK(demo.splits.at("valid").numel() < 30000);
    CHECK(demo.splits.at("test").numel() == 245569);
  }
}

TEST_CASE("word dictionary grows in first-seen order over train, valid, test", "[data][word]") {
  TempDir tmp;
  write(tmp.path / "tr.txt", "a b\n\nb c\n");
  write(tmp.path / "va.txt", "d a");  // no final newline: the last line still gets <eos>
  write(tmp.path / "te.txt", "e\r\n");
  auto cfg =
      make_cfg({"data.dir=" + tmp.path.string(), "data.train=tr.txt", "data.valid=va.txt", "data.test=te.txt"}, tmp);
  auto c = data::load_corpus(cfg);
  CHECK(c.vocab == std::vector<std::string>{"a", "b", "<eos>", "c", "d", "e"});
  CHECK(ids_of(c.splits.at("train")) == std::vector<int64_t>{0, 1, 2, 2, 1, 3, 2});
  CHECK(ids_of(c.splits.at("valid")) == std::vector<int64_t>{4, 0, 2});
  CHECK(ids_of(c.splits.at("test")) == std::vector<int64_t>{5, 2});

  SECTION("a changed source file rebuilds the cache") {
    write(tmp.path / "te.txt", "f e\n");
    auto changed = data::load_corpus(cfg);
    CHECK(changed.vocab.back() == "e");
    CHECK(ids_of(changed.splits.at("test")) == std::vector<int64_t>{5, 6, 2});
  }
  // The cache holds these ids as int32 near its end; test's (5, 2) are its last 8 bytes.
  const auto cache_file = [&] {
    REQUIRE(std::distance(fs::directory_iterator(tmp.path / "cache"), fs::directory_iterator{}) == 1);
    return fs::directory_iterator(tmp.path / "cache")->path();
  };
  SECTION("a cache whose ids were altered fails its checksum and is rebuilt") {
    const auto path = cache_file();
    auto bytes = slurp(path);
    bytes[bytes.size() - 8] = 1;  // test's first id 5 -> 1, a valid id: only the checksum sees it
    write(path, bytes);
    auto again = data::load_corpus(cfg);
    CHECK(ids_of(again.splits.at("test")) == std::vector<int64_t>{5, 2});
    CHECK(slurp(path) != bytes);  // rewritten
  }
  SECTION("a cache with a wrong count or cut short is rebuilt, not read") {
    const auto path = cache_file();
    const auto good = slurp(path);
    for (const auto& bad : {good.substr(0, good.size() - 3), good.substr(0, 40),
                            good.substr(0, 72) + std::string(8, '\xff') + good.substr(80)}) {
      write(path, bad);
      auto again = data::load_corpus(cfg);
      CHECK(again.vocab == c.vocab);
      CHECK(ids_of(again.splits.at("train")) == ids_of(c.splits.at("train")));
      CHECK(slurp(path) == good);
    }
  }
}

TEST_CASE("missing or malformed data give one ConfigError naming the file", "[data][errors]") {
  TempDir tmp;
  write(tmp.path / "empty.txt", "");
  write(tmp.path / "ok.txt", "x y\n");
  write(tmp.path / "binary.gz", std::string("\x1f\x8b\x08\x00", 4));
  struct Row {
    std::vector<std::string> overrides;
    std::string mentions;
  };
  const std::vector<Row> rows = {
      {{"data.train=nope.txt", "data.valid=ok.txt", "data.test=ok.txt"}, "nope.txt"},
      {{"data.train=ok.txt", "data.valid=ok.txt", "data.test=missing.txt"}, "missing.txt"},
      {{"data.train=ok.txt", "data.valid=empty.txt", "data.test=ok.txt"}, "valid split is empty"},
      {{"data.train=ok.txt", "data.valid=''", "data.test=ok.txt"}, "data.holdout"},
      {{"data.train=ok.txt", "data.valid=''", "data.holdout=0.1", "data.test=ok.txt"}, "ok.txt"},  // 1 line
      {{"data.train=binary.gz", "data.valid=ok.txt", "data.test=ok.txt"}, "binary.gz: not UTF-8 text at byte 1"},
  };
  for (const auto& r : rows) {
    auto o = r.overrides;
    o.push_back("data.dir=" + tmp.path.string());
    INFO(r.mentions);
    CHECK_THROWS_WITH(data::load_corpus(make_cfg(o, tmp)), Catch::Contains(r.mentions));
  }
  CHECK_THROWS_AS(data::load_corpus(make_cfg({"data.dir=" + tmp.path.string(), "data.train=x"}, tmp)),
                  config::ConfigError);
}

TEST_CASE("byte level: enwik4 round-trips and splits 90/5/5 by bytes", "[data][byte]") {
  TempDir tmp;
  const fs::path file = data_root() / "enwik8" / "enwik4";
  auto cfg = make_cfg({"data=enwik8-demo", "data.dir=" + file.parent_path().string()}, tmp);
  auto c = data::load_corpus(cfg);
  const std::string raw = slurp(file);
  REQUIRE(raw.size() == 10000);
  const std::map<std::string, std::pair<size_t, size_t>> parts = {
      {"train", {0, 9000}}, {"valid", {9000, 500}}, {"test", {9500, 500}}};
  for (const auto& [name, range] : parts) {
    INFO(name);
    std::string want = raw.substr(range.first, range.second);
    if (want.back() != '\n') want += '\n';  // the reference reads a final unterminated line + <eos>
    CHECK(data::decode_bytes(c, c.splits.at(name)) == want);
  }
  // Vocabulary = distinct bytes (newline spelled <eos>) over train -> valid -> test.
  std::set<char> all(raw.begin(), raw.end());
  CHECK(c.vocab_size() == static_cast<int64_t>(all.size()) + (all.count('\n') ? 0 : 1));
  CHECK(c.vocab[0] == std::to_string(static_cast<unsigned char>(raw[0])));  // '<' is token "60"
  CHECK(c.vocab[0] == "60");
}

TEST_CASE("stream batcher: contiguous rows, segments, wrap with reset", "[data][batcher]") {
  auto ids = torch::arange(103, torch::kInt64);  // truncated to 4 x 25
  StreamBatcher batcher(ids, 4, 5);
  REQUIRE(batcher.stream_length() == 25);
  auto gen = cpu_gen(3);
  for (int64_t step = 0; step < 4; ++step) {
    auto b = batcher.next(gen);
    CHECK_FALSE(b.reset);
    CHECK(b.tokens.sizes() == torch::IntArrayRef({4, 5}));
    for (int64_t row = 0; row < 4; ++row) {
      CHECK(b.tokens[row][0].item<int64_t>() == 25 * row + 5 * step);
      CHECK(torch::equal(b.targets[row], b.tokens[row] + 1));
    }
  }
  // pos 20 >= 25 - 5: restart at an offset in [0, 5) and ask for zeroed caches.
  auto wrapped = batcher.next(gen);
  CHECK(wrapped.reset);
  const int64_t offset = wrapped.tokens[0][0].item<int64_t>();
  CHECK(offset >= 0);
  CHECK(offset < 5);
  CHECK(batcher.position() == offset + 5);

  SECTION("the restart offsets come from the generator") {
    StreamBatcher again(ids, 4, 5);
    auto gen2 = cpu_gen(3);
    for (int i = 0; i < 4; ++i) again.next(gen2);
    CHECK(again.next(gen2).tokens[0][0].item<int64_t>() == offset);
  }
  SECTION("evaluation walk with and without the tail") {
    StreamBatcher eval(ids, 4, 5), every(ids, 4, 5, true);
    CHECK(eval.eval_segments() == 4);  // starts 0, 5, 10, 15 (< 25 - 5)
    CHECK(every.eval_segments() == 5);
    CHECK(eval.segment(0).reset);
    CHECK_FALSE(eval.segment(3).reset);
    auto tail = every.segment(4);
    CHECK(tail.tokens.size(1) == 4);  // positions 20..23 predict 21..24
    CHECK(tail.targets[3][3].item<int64_t>() == 99);
  }
  SECTION("resume from a stored position") {
    StreamBatcher resumed(ids, 4, 5);
    resumed.set_position(10);
    CHECK(resumed.next(gen).tokens[0][0].item<int64_t>() == 10);
  }
  CHECK_THROWS_AS(StreamBatcher(torch::arange(20, torch::kInt64), 4, 5), config::ConfigError);
}

TEST_CASE("attacked WikiText-103: seeded, rate, one swap per line, stop-words kept", "[data][attack]") {
  TempDir tmp;
  const std::string text = slurp(data_root() / "wikitext-103" / "wiki.valid.tokens");
  data::AttackStats st;
  auto gen = cpu_gen(1);
  const std::string attacked = data::attack_text(text, 0.025, "AAA", gen, st);

  SECTION("same seed, same text; another seed, another text") {
    data::AttackStats s2, s3;
    auto g2 = cpu_gen(1), g3 = cpu_gen(2);
    CHECK(data::attack_text(text, 0.025, "AAA", g2, s2) == attacked);
    CHECK(data::attack_text(text, 0.025, "AAA", g3, s3) != attacked);
  }

  auto lines = data::split_lines(text), out_lines = data::split_lines(attacked);
  REQUIRE(lines.size() == out_lines.size());
  REQUIRE(st.lines == static_cast<int64_t>(lines.size()));
  int64_t swapped = 0, words = 0, whole_tokens = 0;
  for (size_t i = 0; i < lines.size(); ++i) {
    auto a = data::split_words(lines[i]), b = data::split_words(out_lines[i]);
    REQUIRE(a.size() == b.size());
    int64_t line_words = 0, line_swaps = 0, line_swappable = 0;
    for (size_t k = 0; k < a.size(); ++k) {
      const auto wa = data::text_words(a[k]), wb = data::text_words(b[k]);
      REQUIRE(wa.size() == wb.size());
      for (size_t w = 0; w < wa.size(); ++w) {
        ++line_words;
        if (!data::is_stop_word(wa[w]) && wa[w] != "AAA") ++line_swappable;
        if (wa[w] == wb[w]) continue;
        ++line_swaps;
        CHECK(wb[w] == "AAA");
        CHECK_FALSE(data::is_stop_word(wa[w]));
      }
      if (a[k] != b[k] && b[k] == "AAA") ++whole_tokens;
    }
    const int64_t want =
        std::min(std::max<int64_t>(static_cast<int64_t>(0.025 * static_cast<double>(line_words)), 1), line_swappable);
    CHECK(line_swaps == want);  // at least one on every line with a swappable word
    swapped += line_swaps;
    words += line_words;
  }
  CHECK(swapped == st.swapped);
  CHECK(words == st.words);
  // TextAttack's words_from_text (Python re, \w Unicode) finds 183,644 words in this file.
  CHECK(st.words == 183644);
  // Floors and the one-per-line minimum push the effective rate above 2.5 % of words.
  const double rate = static_cast<double>(swapped) / static_cast<double>(words);
  CHECK(rate > 0.025);
  CHECK(rate < 0.05);
  CHECK(data::is_stop_word("the"));
  CHECK_FALSE(data::is_stop_word("The"));  // TextAttack compares case-sensitively
  CHECK(data::stop_words().size() == 179);
  using W = std::vector<std::string_view>;
  struct Case {
    std::string token;
    W words;
  };
  for (const Case& c : std::vector<Case>{{"'s", {"s"}},
                                         {"@-@", {}},
                                         {",", {}},
                                         {"U.S.", {"U", "S"}},
                                         {"<unk>", {"unk"}},
                                         {"1.5", {"1", "5"}},
                                         {"well-known", {"well-known"}},
                                         {"--x", {"x"}},
                                         {"`cause", {"`cause"}},
                                         {"caf\u00e9", {"caf\u00e9"}},
                                         {"\u2013", {}},
                                         {"\u00b0C", {"C"}},
                                         {"\u00bd", {"\u00bd"}},
                                         {"3\u00d74", {"3\u00d74"}}}) {
    INFO(c.token);
    CHECK(data::text_words(c.token) == c.words);
  }

  SECTION("written splits load as valid-attacked / test-attacked with the clean vocabulary") {
    auto cfg = wt103(tmp, {"eval.splits=valid,test,valid-attacked,test-attacked"});
    CHECK_THROWS_WITH(data::load_corpus(cfg), Catch::Contains("ssr data attack"));
    auto manifest = data::write_attacked_splits(cfg);
    CHECK(manifest["seed"] == 1);
    CHECK(manifest["splits"]["valid"]["sha256"] == data::sha256_hex(slurp(tmp.path / "attacked" / "valid.txt")));
    CHECK(slurp(tmp.path / "attacked" / "valid.txt") == attacked);  // one generator, valid first
    auto c = data::load_corpus(cfg);
    CHECK(c.splits.at("valid-attacked").numel() == 217646);
    CHECK(c.splits.at("test-attacked").numel() == 245569);
    const int64_t aaa = std::find(c.vocab.begin(), c.vocab.end(), "AAA") - c.vocab.begin();
    // A swapped word that was a whole token is the token AAA; one inside a token ("<unk>" ->
    // "<AAA>") makes a token the clean vocabulary reads as <unk>.
    const int64_t extra = (c.splits.at("valid-attacked") == aaa).sum().item<int64_t>() -
                          (c.splits.at("valid") == aaa).sum().item<int64_t>();
    CHECK(extra == whole_tokens);
    CHECK(whole_tokens < st.swapped);
    write(tmp.path / "attacked" / "test.txt", "edited\n");
    CHECK_THROWS_WITH(data::load_corpus(cfg), Catch::Contains("differs from its manifest"));
  }
}
