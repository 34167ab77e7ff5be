// The checkpoint module: what is written reads back bit for bit, and every damaged, foreign or
// older file is refused with one line naming it instead of loading wrong numbers.
#include <sys/resource.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <functional>
#include <iterator>

#include "harness/store/store.hpp"
#include "harness/train/checkpoint.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;
using ssr::train::CheckpointError;
using ssr::train::read_checkpoint;
using ssr::train::write_checkpoint;

namespace {

using ssr::testing::temp_dir;

std::string bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}
void put_bytes(const fs::path& p, const std::string& b) { std::ofstream(p, std::ios::binary | std::ios::trunc) << b; }

void write_weights(const fs::path& path, const torch::Tensor& w) {
  torch::serialize::OutputArchive ar;
  ar.write("w", w);
  write_checkpoint(ar, path);
}

torch::Tensor read_weights(const fs::path& path) {
  torch::serialize::InputArchive ar;
  read_checkpoint(ar, path, torch::kCPU);
  torch::Tensor w;
  ar.read("w", w);
  return w;
}

// The message of the CheckpointError `f` throws, or "" when it throws none.
std::string refusal(const std::function<void()>& f) {
  try {
    f();
  } catch (const CheckpointError& e) {
    return e.what();
  }
  return "";
}

// Trains a 4-step demo run (a checkpoint every 2 steps, under dir/ckpt) into dir/runs.db per seed.
void train_runs(const fs::path& dir, const std::vector<int>& seeds) {
  for (int seed : seeds) {
    auto a = ssr::testing::run(fmt::format(
        "train {}/experiments/demo.yaml train.steps=4 train.batch_size=4 train.seq_len=16 eval.batch_size=4 "
        "eval.max_segments=1 train.eval_every=0 run.threads=1 train.checkpoint_every=2 run.out_dir={} run.seed={} "
        "--db {} --quiet",
        SSR_SOURCE_DIR, (dir / "ckpt").string(), seed, (dir / "runs.db").string()));
    INFO(a.out);
    REQUIRE(a.code == 0);
  }
}

}  // namespace

TEST_CASE("a checkpoint reads back bit for bit and leaves no temporary", "[checkpoint]") {
  const auto dir = temp_dir("ckpt_test", "roundtrip");
  const auto w = torch::randn({64, 33}, torch::kDouble);
  write_weights(dir / "sub" / "last.pt", w);  // creates the folder
  CHECK(torch::equal(read_weights(dir / "sub" / "last.pt"), w));
  CHECK_FALSE(fs::exists(dir / "sub" / "last.pt.tmp"));
  const auto w2 = w + 1;  // a second write replaces the first
  write_weights(dir / "sub" / "last.pt", w2);
  CHECK(torch::equal(read_weights(dir / "sub" / "last.pt"), w2));
}

TEST_CASE("damaged, foreign and older checkpoints are refused with one line naming the file", "[checkpoint]") {
  const auto dir = temp_dir("ckpt_test", "damaged");
  const auto good = dir / "good.pt";
  write_weights(good, torch::randn({256, 64}));
  const std::string b = bytes_of(good);
  REQUIRE(b.size() > 4096);
  struct Case {
    std::string what, expected;
    std::function<std::string()> bytes;
  };
  const std::vector<Case> cases = {
      {"64 bytes flipped in the middle", "checksum mismatch",
       [&] {
         std::string s = b;
         for (size_t i = s.size() / 2; i < s.size() / 2 + 64; ++i) s[i] = static_cast<char>(s[i] ^ 0x5a);
         return s;
       }},
      {"one byte flipped in the header's digest", "checksum mismatch",
       [&] {
         std::string s = b;
         s[30] = static_cast<char>(s[30] ^ 1);
         return s;
       }},
      {"truncated to half", "truncated", [&] { return b.substr(0, b.size() / 2); }},
      {"a byte appended", "truncated", [&] { return b + "x"; }},
      {"empty", "not an ssr checkpoint", [] { return std::string(); }},
      {"a text file", "not an ssr checkpoint", [] { return std::string(100, 'a'); }},
      {"a newer format", "checkpoint format 3",
       [&] {
         std::string s = b;
         s[8] = 3;
         return s;
       }},
      {"format 1: a bare LibTorch archive", "checkpoint format 1",
       [&] {
         torch::serialize::OutputArchive ar;
         ar.write("w", torch::ones({2}));
         std::string out;
         ar.save_to([&](const void* data, size_t n) {
           out.append(static_cast<const char*>(data), n);
           return n;
         });
         return out;
       }},
  };
  for (const auto& c : cases) {
    INFO(c.what);
    const auto path = dir / "case.pt";
    put_bytes(path, c.bytes());
    const std::string msg = refusal([&] { read_weights(path); });
    CHECK(msg.find(c.expected) != std::string::npos);
    CHECK(msg.find(path.string()) == 0);
    CHECK(msg.find('\n') == std::string::npos);
  }
  CHECK(refusal([&] { read_weights(dir / "absent.pt"); }).find("absent.pt: cannot read checkpoint") !=
        std::string::npos);
}

TEST_CASE("a write that fails on a full disk keeps the previous checkpoint and removes its temporary", "[checkpoint]") {
  const auto dir = temp_dir("ckpt_test", "full");
  const auto path = dir / "last.pt";
  const auto w = torch::randn({8, 8});
  write_weights(path, w);
  // A file-size limit fails writes past it with EFBIG, as a full disk fails them with ENOSPC.
  rlimit old{};
  REQUIRE(getrlimit(RLIMIT_FSIZE, &old) == 0);
  auto* old_handler = std::signal(SIGXFSZ, SIG_IGN);
  rlimit small = old;
  small.rlim_cur = 64 * 1024;
  REQUIRE(setrlimit(RLIMIT_FSIZE, &small) == 0);
  const std::string msg = refusal([&] { write_weights(path, torch::randn({512, 512})); });  // 1 MiB
  setrlimit(RLIMIT_FSIZE, &old);
  std::signal(SIGXFSZ, old_handler);
  INFO(msg);
  CHECK(msg.find(path.string() + ": cannot write checkpoint: File too large") == 0);
  CHECK(msg.find("free there") != std::string::npos);
  CHECK(msg.find("previous checkpoint is kept") != std::string::npos);
  CHECK_FALSE(fs::exists(path.string() + ".tmp"));
  CHECK(torch::equal(read_weights(path), w));
}

TEST_CASE("resuming from a corrupted checkpoint is refused with the file's name", "[checkpoint][train]") {
  const auto dir = temp_dir("ckpt_test", "resume");
  const auto db = (dir / "runs.db").string();
  train_runs(dir, {1});
  ssr::store::Store store(db);
  store.finish_run(1, "failed", "stopped by the test");  // a finished run is not resumed at all
  const auto last = ssr::train::run_dir((dir / "ckpt").string(), store, 1) / "last.pt";
  REQUIRE(fs::exists(last));
  std::string b = bytes_of(last);
  for (size_t i = b.size() / 2; i < b.size() / 2 + 64; ++i) b[i] = static_cast<char>(b[i] ^ 0xff);
  put_bytes(last, b);
  auto r = ssr::testing::run(fmt::format("train --resume 1 --db {} --quiet", db));
  CHECK(r.code == 1);
  CHECK(r.out.find("error: " + last.string() + ": checksum mismatch") != std::string::npos);

  // Only a temporary left by a killed first write: --resume refuses (nothing to continue from),
  // --restart removes it and trains the run from step 0 to the same losses.
  const auto losses = [&] { return ssr::testing::series(store, 1, "train", "loss"); };
  const auto before = losses();
  REQUIRE(!before.empty());
  fs::remove(last);
  put_bytes(last.string() + ".tmp", b.substr(0, b.size() / 3));
  store.finish_run(1, "failed", "stopped by the test");
  auto refused = ssr::testing::run(fmt::format("train --resume 1 --db {}", db));
  CHECK(refused.code == 2);
  CHECK(refused.out.find("last.pt.tmp (an unfinished write)") != std::string::npos);
  CHECK(losses() == before);
  auto again = ssr::testing::run(fmt::format("train --resume 1 --restart --db {}", db));
  INFO(again.out);
  CHECK(again.code == 0);
  CHECK(again.out.find("from step 0 (only an unfinished write, " + last.string() + ".tmp, was there: removed)") !=
        std::string::npos);
  CHECK_FALSE(fs::exists(last.string() + ".tmp"));
  CHECK(losses() == before);
}

TEST_CASE("ssr train --resume refuses a run with no checkpoint of its own, naming what its folder holds",
          "[checkpoint][train]") {
  const auto dir = temp_dir("ckpt_test", "identity");
  const auto db = (dir / "runs.db").string();
  train_runs(dir, {1, 2});
  ssr::store::Store store(db);
  const auto folder = [&](int64_t run) { return ssr::train::run_dir((dir / "ckpt").string(), store, run); };
  const auto rows = [&](int64_t run) { return ssr::testing::series(store, run, "train", "loss"); };
  const auto before = rows(2);
  REQUIRE(!before.empty());
  const std::string saved = bytes_of(folder(2) / "last.pt");
  auto resume2 = [&](const std::string& extra = "") {
    store.finish_run(2, "failed", "stopped by the test");
    return ssr::testing::run(fmt::format("train --resume 2 {} --db {} --quiet", extra, db));
  };

  // Another run's checkpoint (run 1, seed 1) copied over run 2's: refused, naming both and the key.
  fs::copy_file(folder(1) / "last.pt", folder(2) / "last.pt", fs::copy_options::overwrite_existing);
  auto foreign = resume2();
  CHECK(foreign.code == 2);
  CHECK(foreign.out.find((folder(2) / "last.pt").string() + ": this checkpoint belongs to run 1 of store") !=
        std::string::npos);
  CHECK(foreign.out.find("config keys that differ: run.seed") != std::string::npos);
  CHECK(rows(2) == before);  // run 2's rows untouched

  struct Row {
    std::string name, expect;
    std::function<void()> damage;
  };
  const std::vector<Row> table = {
      {"no last.pt", "is empty", [&] { fs::remove(folder(2) / "last.pt"); }},
      {"a dangling link", "last.pt (a dangling link to",
       [&] { fs::create_symlink(dir / "nowhere.pt", folder(2) / "last.pt"); }},
      {"no folder", "does not exist", [&] { ssr::train::remove_run_dir(folder(2)); }},
  };
  for (const auto& r : table) {
    INFO(r.name);
    r.damage();
    auto res = resume2();
    CHECK(res.code == 2);
    CHECK(res.out.find("--resume 2: no checkpoint to continue from") != std::string::npos);
    CHECK(res.out.find(r.expect) != std::string::npos);
    CHECK(res.out.find("--restart") != std::string::npos);
    CHECK(rows(2) == before);
    CHECK(store.run(2)->status == "failed");
  }
  // --restart trains it again from step 0, to the same losses (same seed, same data).
  auto restarted = resume2("--restart");
  INFO(restarted.out);
  CHECK(restarted.code == 0);
  CHECK(rows(2) == before);
  CHECK(store.run(2)->status == "finished");
  // The file it wrote names its run: copied back, it continues run 2 and no other.
  CHECK(bytes_of(folder(2) / "last.pt") != saved);  // a new file, written with its identity
}
