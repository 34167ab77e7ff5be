// Bad input through the `ssr` binary: the corpus in tests/fixtures/bad/cases.tsv plus one case
// per config key and bad value. Each is refused with its exit code and one line naming the flag,
// key or file, creates no store it did not find, and adds no row to one it did.
#include <catch2/catch.hpp>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <sstream>

#include "harness/config/config.hpp"
#include "harness/store/store.hpp"
#include "tests/cli_helpers.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;

namespace {

struct Case {
  int code;
  std::string expected, args;
};

fs::path inputs_dir() {
  const auto dir = fs::temp_directory_path() / fmt::format("ssr_inputs_{}", ::getpid());
  fs::create_directories(dir);
  return dir;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t i = 0; (i = s.find(from, i)) != std::string::npos; i += to.size()) s.replace(i, from.size(), to);
  return s;
}

std::vector<Case> corpus() {
  const fs::path file = fs::path(SSR_SOURCE_DIR) / "tests/fixtures/bad/cases.tsv";
  std::ifstream in(file);
  REQUIRE(in);
  std::vector<Case> cases;
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    const auto a = line.find('\t'), b = line.find('\t', a + 1);
    INFO(file.string() << ": " << line);
    REQUIRE(b != std::string::npos);
    cases.push_back({std::stoi(line.substr(0, a)), line.substr(a + 1, b - a - 1), line.substr(b + 1)});
  }
  return cases;
}

// Values a key refuses: one of the wrong type, and one beyond each end of its range.
std::vector<std::string> bad_values(const ssr::config::Key& k) {
  using ssr::config::Type;
  std::vector<std::string> v;
  const bool low = k.min > -1e300, high = k.max < 1e300;
  switch (k.type) {
    case Type::Int:
      v = {"1.5"};
      if (low) v.push_back(fmt::format("{}", static_cast<int64_t>(k.min) - 1));
      if (high) v.push_back(fmt::format("{}", static_cast<int64_t>(k.max) + 1));
      break;
    case Type::Float:
      v = {"nan"};
      if (low) v.push_back(fmt::format("{}", k.min - 1));
      if (high) v.push_back(fmt::format("{}", k.max + 1));
      if (k.max_open) v.push_back(fmt::format("{}", k.max));
      break;
    case Type::Bool: v = {"maybe"}; break;
    case Type::String: v = {"[a]"}; break;
    case Type::Choice: v = {"zzz"}; break;
    case Type::IntList: v = {"[abc]"}; break;
    case Type::FloatList: v = {"[abc]"}; break;
    case Type::StringList: v = {"{a: 1}"}; break;
  }
  return v;
}

std::vector<ssr::testing::Result> run_all(const std::vector<std::string>& args) {
  // A few at a time: each case is mostly LibTorch's start-up.
  constexpr size_t kAtOnce = 4;
  std::vector<ssr::testing::Result> out;
  for (size_t first = 0; first < args.size(); first += kAtOnce) {
    std::vector<FILE*> pipes;
    for (size_t i = first; i < std::min(args.size(), first + kAtOnce); ++i) {
      const auto cmd =
          fmt::format("cd '{}' && OMP_NUM_THREADS=1 '{}' {} 2>&1", SSR_SOURCE_DIR, ssr::testing::kBin, args[i]);
      pipes.push_back(popen(cmd.c_str(), "r"));
      REQUIRE(pipes.back());
    }
    for (FILE* p : pipes) {
      ssr::testing::Result r{0, ""};
      char buf[512];
      while (fgets(buf, sizeof buf, p)) r.out += buf;
      const int status = pclose(p);
      r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      out.push_back(r);
    }
  }
  return out;
}

// `absent`: the store paths the cases name, one per case (cases run a few at a time, and a case
// that creates a store before it is refused removes it: a shared path would race), none of which
// may exist afterwards.
void check_refused(const std::vector<Case>& cases, const std::vector<std::string>& absent) {
  std::vector<std::string> args;
  for (const auto& c : cases) args.push_back(c.args);
  const auto results = run_all(args);
  for (size_t i = 0; i < cases.size(); ++i) {
    INFO("ssr " << cases[i].args);
    INFO(results[i].out);
    CHECK(results[i].code == cases[i].code);
    CHECK(results[i].out.find(cases[i].expected) != std::string::npos);
    CHECK(std::count(results[i].out.begin(), results[i].out.end(), '\n') == 1);
    CHECK(results[i].out.rfind("error: ", 0) == 0);
  }
  for (const auto& a : absent) CHECK_FALSE(fs::exists(a));
}

int64_t rows(const std::string& db) {
  ssr::store::Store s(db);
  int64_t n = 0;
  for (const auto& r : s.runs()) n += 1 + static_cast<int64_t>(s.metrics(r.id).size() + s.results(r.id).size());
  return n + static_cast<int64_t>(s.sweeps().size());
}

}  // namespace

TEST_CASE("the bad-input corpus is refused with one line and writes nothing", "[config][cli]") {
  const auto dir = inputs_dir();
  const std::string store = (dir / "store.db").string();
  std::vector<std::string> absent;
  {
    ssr::store::Store s(store);
    const auto id = s.create_run("h", {{"x", 1}}, 1, ssr::store::this_machine("cpu"));
    s.add_metrics(id, {{1, "train", "loss", 2.5, 0.1}});
    s.finish_run(id, "finished");
  }
  const auto before = rows(store);
  auto cases = corpus();
  CHECK(cases.size() > 90);
  for (auto& c : cases) {
    c.args = replace_all(c.args, "{demo}", "experiments/demo.yaml train.steps=1");
    c.args = replace_all(c.args, "{bad}", "tests/fixtures/bad");
    absent.push_back((dir / fmt::format("absent-{}.db", absent.size())).string());
    c.args = replace_all(c.args, "{db}", absent.back());
    c.args = replace_all(c.args, "{store}", store);
    c.args = replace_all(c.args, "{tmp}", dir.string());
  }
  check_refused(cases, absent);
  CHECK(rows(store) == before);
}

TEST_CASE("every config key refuses a value of the wrong type or out of range, naming the key", "[config][cli]") {
  std::vector<std::string> absent;
  std::vector<Case> cases;
  for (const auto& k : ssr::config::schema())
    for (const auto& v : bad_values(k)) {
      absent.push_back((inputs_dir() / fmt::format("keys-{}.db", absent.size())).string());
      cases.push_back(
          {2, k.name + ": ",
           fmt::format("train experiments/demo.yaml train.steps=1 '{}={}' --db {}", k.name, v, absent.back())});
    }
  CHECK(cases.size() > 200);
  check_refused(cases, absent);
}

TEST_CASE("a value YAML would read as a directive or nothing is kept as text", "[config][cli]") {
  const auto r = ssr::testing::run("config experiments/demo.yaml run.name=%foo");
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK(r.out.find("name: \"%foo\"") != std::string::npos);
  CHECK(ssr::testing::run("config experiments/demo.yaml run.name=").out.find("run.name: no value given") !=
        std::string::npos);
}

TEST_CASE("output that cannot be written is an error: exit 74 and one line, not 0", "[cli]") {
  const auto db = ssr::testing::temp_db("inputs", "stdout.db");
  { ssr::store::Store s(db); }
  const auto bin = ssr::testing::kBin;
  struct Row {
    std::string args, redirect;
  };
  for (const Row& r : {Row{"runs --db " + db, ">/dev/full"}, Row{"config --doc", ">/dev/full"},
                       Row{"config --doc", ">&-"}, Row{"runs --db " + db + " --format csv", ">&-"}}) {
    INFO(r.args << " " << r.redirect);
    // The inner shell's stderr is the pipe the helper reads; only stdout is redirected.
    const auto out = ssr::testing::shell(fmt::format("sh -c \"'{}' {} {}\"", bin, r.args, r.redirect));
    CHECK(out.code == 74);
    CHECK(out.out.find("error: could not write to standard output") != std::string::npos);
    CHECK(std::count(out.out.begin(), out.out.end(), '\n') == 1);
  }
  CHECK(ssr::testing::run("config --doc >/dev/null").code == 0);  // the same commands succeed when they can write
}

TEST_CASE("a store on read-only media is listed, and a command that writes it says read-only", "[cli][store]") {
  const auto dir = ssr::testing::temp_dir("inputs", "romedia");
  const auto db = (dir / "runs.db").string();
  {
    ssr::store::Store s(db);
    s.create_run("abc", {{"x", 1}}, 1, ssr::store::this_machine("cpu"));
  }
  // A read-only bind mount in a mount namespace of its own (needs root, as on the project's
  // machines and CI): the WAL store's -shm file cannot be created there.
  const auto probe = ssr::testing::shell("unshare -m true");
  if (probe.code != 0) {
    WARN("unshare -m is not permitted here, so read-only media cannot be mounted: " << probe.out);
    return;
  }
  const auto in_ro = [&](const std::string& args) {
    return ssr::testing::shell(
        fmt::format("unshare -m sh -c \"mount --bind '{0}' '{0}' && mount -o remount,bind,ro '{0}' && '{1}' {2}\"",
                    dir.string(), ssr::testing::kBin, args));
  };
  auto r = in_ro(fmt::format("runs --columns id --format csv --db '{}'", db));
  INFO(r.out);
  CHECK(r.code == 0);
  CHECK(r.out == "id\n1\n");
  r = in_ro(fmt::format("train experiments/demo.yaml train.steps=1 --db '{}'", db));
  INFO(r.out);
  CHECK(r.code == 2);
  CHECK(r.out.find(db + ": read-only (") != std::string::npos);
  CHECK(r.out.find("Read-only file system") != std::string::npos);
}
