// Store: migrations from an empty file, typed round trips (NaN included), concurrent writers,
// stale detection, the run lease, --where filters.
#include <catch2/catch.hpp>
#include <fmt/format.h>
#include <sqlite3.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>

#include "harness/config/config.hpp"
#include "harness/store/query.hpp"
#include "harness/store/store.hpp"
#include "harness/train/checkpoint.hpp"
#include "tests/helpers.hpp"

namespace fs = std::filesystem;
using ssr::store::Store;

namespace {

using ssr::testing::temp_db;

int64_t count(Store& s, const std::string& sql) {
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(s.handle(), sql.c_str(), -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  int64_t n = sqlite3_column_int64(st, 0);
  sqlite3_finalize(st);
  return n;
}
}  // namespace

TEST_CASE("store migrates an empty file and reopens without migrating again", "[store]") {
  const auto path = temp_db("store", "migrate.db");
  {
    Store s(path + "");
    CHECK(s.schema_version() == 10);
    for (const char* t : {"runs", "metrics", "results", "timings", "sweeps", "bench_sessions", "bench_cases",
                          "bench_times", "store_info"})
      CHECK(count(s, std::string("SELECT count(*) FROM sqlite_master WHERE type='table' AND name='") + t + "'") == 1);
    CHECK(count(s, "SELECT count(*) FROM pragma_journal_mode WHERE journal_mode='wal'") == 1);
    s.create_run("abc", {{"x", 1}}, 1, ssr::store::this_machine("cpu"));
  }
  Store again(path);
  CHECK(again.schema_version() == 10);
  CHECK(again.runs().size() == 1);
  CHECK(again.id() == Store(path).id());  // drawn once, when the store was created
}

TEST_CASE("a file that is no run store is refused at once, saying what it is", "[store]") {
  const auto dir = ssr::testing::temp_dir("store", "notastore");
  const auto write_file = [&](const std::string& name, const std::string& bytes) {
    std::ofstream(dir / name, std::ios::binary) << bytes;
    return (dir / name).string();
  };
  const std::string good = (dir / "good.db").string();
  {
    Store s(good);
    s.create_run("abc", {{"x", 1}}, 1, ssr::store::this_machine("cpu"));
  }
  std::string head;
  {
    std::ifstream in(good, std::ios::binary);
    head.assign(4096 + 100, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
  }
  const std::string foreign = (dir / "foreign.db").string();
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(foreign.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "CREATE TABLE photos (id INTEGER)", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  const std::string bare = (dir / "bare.db").string();
  {
    sqlite3* db = nullptr;
    REQUIRE(sqlite3_open(bare.c_str(), &db) == SQLITE_OK);
    REQUIRE(sqlite3_exec(db, "PRAGMA journal_mode=WAL", nullptr, nullptr, nullptr) == SQLITE_OK);
    sqlite3_close(db);
  }
  struct Row {
    std::string path;
    Store::Access access;
    std::string expected;
  };
  const auto r = Store::Access::read, w = Store::Access::write;
  const std::vector<Row> rows = {
      {write_file("text.db", "id,ppl\n1,30.5\n"), r, "not a run store, or a damaged one (file is not a database)"},
      {write_file("text2.db", "id,ppl\n1,30.5\n"), w, "not a run store, or a damaged one (file is not a database)"},
      {write_file("truncated.db", head), r, "not a run store, or a damaged one"},
      {write_file("truncated2.db", head), w, "not a run store, or a damaged one"},
      {write_file("empty.db", ""), r, "an empty file, not a run store"},
      {foreign, r, "an SQLite database, but not a run store"},
      {foreign, w, "an SQLite database of another program"},
      {bare, r, "an SQLite database, but not a run store"},
  };
  for (const auto& row : rows) {
    INFO(row.path);
    CHECK_THROWS_WITH(Store(row.path, row.access), Catch::Contains(row.path + ": " + row.expected));
  }
  // Nothing was added to the other program's database.
  sqlite3* db = nullptr;
  REQUIRE(sqlite3_open(foreign.c_str(), &db) == SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(db, "SELECT count(*) FROM sqlite_master", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  CHECK(sqlite3_column_int64(st, 0) == 1);
  sqlite3_finalize(st);
  sqlite3_close(db);
  // A zero-byte file given to a command that writes becomes a store (SQLite's empty database).
  CHECK(Store(write_file("new.db", "")).schema_version() == 10);
}

TEST_CASE("a store locked by another process names the holder", "[store]") {
  const auto path = temp_db("store", "locked.db");
  Store s(path);
  // Another process takes the write lock and keeps it.
  const std::string ready = path + ".ready";
  const std::string cmd = fmt::format(
      "python3 -c \"import sqlite3,time; c=sqlite3.connect('{}', isolation_level=None); c.execute('BEGIN "
      "IMMEDIATE'); open('{}','w').close(); time.sleep(30)\" & echo $!",
      path, ready);
  FILE* p = popen(cmd.c_str(), "r");
  REQUIRE(p);
  int pid = 0;
  REQUIRE(fscanf(p, "%d", &pid) == 1);
  pclose(p);
  for (int i = 0; i < 200 && !fs::exists(ready); ++i) usleep(50000);
  REQUIRE(fs::exists(ready));
  sqlite3_busy_timeout(s.handle(), 100);
  CHECK_THROWS_WITH(
      s.create_run("abc", {{"x", 1}}, 1, ssr::store::this_machine("cpu")),
      Catch::Contains("locked by another process") && Catch::Contains(fmt::format("held open by pid {} python3", pid)));
  ::kill(pid, SIGKILL);
}

TEST_CASE("a copied store takes its own id when first written, and a moved one keeps its id", "[store]") {
  // Checkpoint folders are named by the store id: a copy with the original's id would let `ssr rm`
  // on the copy delete the original's checkpoints.
  const fs::path dir = fs::path(temp_db("store", "identity.db")).parent_path() / "identity";
  fs::create_directories(dir);
  const auto a = (dir / "a.db").string(), b = (dir / "b.db").string(), c = (dir / "c.db").string();
  std::string original;
  {
    Store s(a);
    original = s.id();
    s.create_run("abc", {{"x", 1}}, 1, ssr::store::this_machine("cpu"));
  }  // closed: the WAL is folded back into a.db
  fs::copy_file(a, b);
  CHECK(Store(b, Store::Access::read).id() == original);  // reading changes nothing
  std::string copied;
  {
    Store s(b);
    copied = s.id();
    CHECK(s.runs().size() == 1);  // the copy keeps its rows
  }
  CHECK(copied != original);
  CHECK(Store(b).id() == copied);  // decided once
  CHECK(Store(a).id() == original);
  CHECK(ssr::train::run_dir("out", Store(b), 1) != ssr::train::run_dir("out", Store(a), 1));
  // Moved (the old file gone): the same store, the same id, so its checkpoints stay its own.
  fs::rename(a, c);
  CHECK(Store(c).id() == original);
  CHECK(Store(c).id() == original);
}

TEST_CASE("a version-4 store gains status interrupted and a pid column, keeping runs, metrics and foreign keys",
          "[store]") {
  const auto path = temp_db("store", "v4.db");
  int64_t interrupted = 0, failed = 0;
  {
    Store s(path);
    interrupted = s.create_run("abc", {{"x", 1}}, 1, ssr::store::this_machine("cpu"));
    failed = s.create_run("def", {{"x", 2}}, 1, ssr::store::this_machine("cpu"));
    s.add_metrics(interrupted, {{5, "train", "loss", 2.5, 1.0}});
    s.finish_run(interrupted, "failed", "interrupted by signal 2 at step 5");
    // Before version 7 a run trained twice at once could store a metric twice.
    REQUIRE(sqlite3_exec(s.handle(),
                         "DROP INDEX metrics_key; INSERT INTO metrics (run_id, step, split, name, value, wall_s) "
                         "SELECT run_id, step, split, name, 2.25, wall_s FROM metrics",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
    REQUIRE(count(s, "SELECT count(*) FROM metrics") == 2);
    s.finish_run(failed, "failed", "out of memory");
    // Back to version 4: the runs table with its old CHECK, rebuilt the way SQLite allows.
    REQUIRE(sqlite3_exec(s.handle(),
                         "ALTER TABLE runs DROP COLUMN pid; ALTER TABLE bench_cases DROP COLUMN load_per_core", nullptr,
                         nullptr, nullptr) == SQLITE_OK);
    std::string v4 = "PRAGMA foreign_keys=OFF; BEGIN; CREATE TABLE old AS SELECT * FROM runs; DROP TABLE runs;";
    std::string create;
    {
      sqlite3_stmt* st = nullptr;
      sqlite3_prepare_v2(s.handle(), "SELECT sql FROM sqlite_master WHERE name='runs'", -1, &st, nullptr);
      sqlite3_step(st);
      create = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
      sqlite3_finalize(st);
    }
    create.replace(create.find(",'interrupted'"), 14, "");
    v4 += create + "; INSERT INTO runs SELECT * FROM old; DROP TABLE old; PRAGMA user_version=4; COMMIT;";
    REQUIRE(sqlite3_exec(s.handle(), v4.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
    CHECK(sqlite3_exec(s.handle(), "UPDATE runs SET status='interrupted'", nullptr, nullptr, nullptr) != SQLITE_OK);
  }
  Store s(path);
  CHECK(s.schema_version() == 10);
  CHECK(s.run(interrupted)->status == "interrupted");  // recognised by the error it stored
  CHECK(s.run(failed)->status == "failed");
  REQUIRE(s.metrics(interrupted).size() == 1);
  CHECK(s.metrics(interrupted)[0].value == 2.25);  // the later copy is kept
  CHECK(count(s, "SELECT count(*) FROM pragma_table_info('runs') WHERE name='pid'") == 1);
  CHECK(sqlite3_exec(s.handle(), "INSERT INTO metrics (run_id, step, split, name) VALUES (1, 5, 'train', 'loss')",
                     nullptr, nullptr, nullptr) != SQLITE_OK);  // unique by (run, split, name, step)
  CHECK(count(s, "SELECT count(*) FROM pragma_foreign_keys WHERE foreign_keys=1") == 1);
  CHECK(sqlite3_exec(s.handle(), "INSERT INTO metrics (run_id, step, split, name) VALUES (999, 1, 'train', 'x')",
                     nullptr, nullptr, nullptr) != SQLITE_OK);  // foreign keys are enforced again
}

TEST_CASE("store upgrades a version-1 file in place, keeping its runs", "[store]") {
  const auto path = temp_db("store", "upgrade.db");
  {
    Store s(path);
    s.create_run("abc", {{"x", 1}}, 1, ssr::store::this_machine("cpu"));
    // Back to what a version-1 store holds.
    for (const char* sql : {"DROP TABLE store_info", "DROP TABLE bench_times", "DROP TABLE bench_cases",
                            "DROP TABLE bench_sessions", "PRAGMA user_version=1"})
      REQUIRE(sqlite3_exec(s.handle(), sql, nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  Store s(path);
  CHECK(s.schema_version() == 10);
  CHECK(s.runs().size() == 1);
  CHECK(s.id().size() == 16);
  ssr::store::BenchCase c;
  c.label = "router=vanilla";
  c.config_hash = "abc";
  c.config = {{"x", 1}};
  c.tokens_per_step = 512;
  c.seconds = {0.25, NAN, 0.5};
  const auto first = s.add_bench_session("ssr bench step x.yaml", ssr::store::this_machine("cpu"), 1, {c});
  c.seconds = {1.0};
  c.peak_bytes = 3'000'000'000;
  const auto second = s.add_bench_session("ssr bench step x.yaml", ssr::store::this_machine("cpu"), 1, {c});
  const auto got = s.bench_cases("abc");
  REQUIRE(got.size() == 2);
  CHECK(got[0].session == second);  // newest first
  CHECK(got[1].session == first);
  CHECK(got[1].tokens_per_step == 512);
  CHECK(got[1].config == c.config);
  REQUIRE(got[1].seconds.size() == 3);
  CHECK(std::isnan(got[1].seconds[1]));
  CHECK(!got[1].peak_bytes);  // not measured (CPU)
  CHECK(got[0].peak_bytes == 3'000'000'000);
  CHECK(got[1].info.torch_version == ssr::store::this_machine("cpu").torch_version);
  CHECK(s.bench_cases("other").empty());
}

TEST_CASE("store round-trips runs metrics results and NaN", "[store]") {
  Store s(temp_db("store", "roundtrip.db"));
  ssr::config::Config cfg;
  const auto info = ssr::store::this_machine("cpu");
  CHECK(!info.host.empty());
  CHECK(!info.torch_version.empty());
  const int64_t id = s.create_run(cfg.hash(), cfg.to_json(), 7, info);
  s.add_metrics(id,
                {{1, "train", "loss", 5.5, 0.1}, {2, "train", "loss", NAN, 0.2}, {2, "train", "big", INFINITY, 0.2}});
  s.add_timings(id, {{1, "forward", 0.25}});
  s.set_result(id, "test", "ppl", NAN);
  s.set_result(id, "valid", "ppl", 33.76);
  s.finish_run(id, "nan", "loss became nan at step 2");

  auto r = s.run(id);
  REQUIRE(r);
  INFO(r->config.dump());
  CHECK(r->status == "nan");
  CHECK(r->seed == 7);
  CHECK(r->config_hash == cfg.hash());
  CHECK(ssr::config::Config::from_json(r->config).hash() == cfg.hash());
  CHECK(r->error == "loss became nan at step 2");
  auto m = s.metrics(id);
  REQUIRE(m.size() == 3);
  CHECK(m[0].value == 5.5);
  CHECK(std::isnan(m[1].value));
  CHECK(std::isinf(m[2].value));
  auto res = s.results(id);
  REQUIRE(res.size() == 2);
  CHECK(std::isnan(res[0].value));
  CHECK(res[1].value == Approx(33.76));
  CHECK(s.timings(id).at(0).seconds == 0.25);
  CHECK_FALSE(s.run(id + 100));
}

TEST_CASE("concurrent writer processes lose no rows", "[store]") {
  const auto path = temp_db("store", "concurrent.db");
  const int kProcs = 4, kRuns = 5, kRows = 50;
  std::vector<pid_t> kids;
  for (int p = 0; p < kProcs; ++p) {
    pid_t pid = fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      int code = 0;
      try {
        Store s(path);  // every child also races on the first migration
        ssr::store::RunInfo info{"rev", "host", "cpu", "x"};
        for (int r = 0; r < kRuns; ++r) {
          int64_t id = s.create_run("h", {{"p", p}}, p, info);
          for (int i = 0; i < kRows; ++i) {
            s.add_metrics(id, {{i, "train", "loss", double(i), 0}});
            s.heartbeat(id, i);
          }
          s.finish_run(id, "finished");
        }
      } catch (...) {
        code = 1;
      }
      _exit(code);
    }
    kids.push_back(pid);
  }
  for (pid_t pid : kids) {
    int status = 0;
    waitpid(pid, &status, 0);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  Store s(path);
  CHECK(count(s, "SELECT count(*) FROM runs") == kProcs * kRuns);
  CHECK(count(s, "SELECT count(*) FROM runs WHERE status='finished'") == kProcs * kRuns);
  CHECK(count(s, "SELECT count(*) FROM metrics") == kProcs * kRuns * kRows);
  CHECK(count(s, "SELECT count(DISTINCT run_id || '/' || step) FROM metrics") == kProcs * kRuns * kRows);
}

TEST_CASE("a running row whose heartbeat stopped is stale", "[store]") {
  Store s(temp_db("store", "stale.db"));
  const int64_t id = s.create_run("h", nlohmann::json::object(), 1, {"rev", "host", "cpu", "x"});
  auto r = *s.run(id);
  CHECK(r.shown_status(60) == "running");
  CHECK(r.shown_status(-1) == "stale");
  s.finish_run(id, "finished");
  CHECK(s.run(id)->shown_status(-1) == "finished");
  // A fresh heartbeat, but the process holding the run is gone from this host (it met a full
  // disk and could not mark the run failed): stale at once.
  const pid_t child = fork();
  if (child == 0) _exit(0);
  REQUIRE(waitpid(child, nullptr, 0) == child);
  const int64_t orphan = s.create_run("h2", nlohmann::json::object(), 1, ssr::store::this_machine("cpu"));
  REQUIRE(sqlite3_exec(s.handle(), fmt::format("UPDATE runs SET pid={} WHERE id={}", child, orphan).c_str(), nullptr,
                       nullptr, nullptr) == SQLITE_OK);
  CHECK(s.run(orphan)->shown_status(60) == "stale");
  REQUIRE(sqlite3_exec(s.handle(), fmt::format("UPDATE runs SET pid={} WHERE id={}", ::getpid(), orphan).c_str(),
                       nullptr, nullptr, nullptr) == SQLITE_OK);
  CHECK(s.run(orphan)->shown_status(60) == "running");
}

TEST_CASE("a run is held by one live process at a time", "[store]") {
  Store s(temp_db("store", "lease.db"));
  const auto info = ssr::store::this_machine("cpu");
  const int64_t id = s.create_run("h", nlohmann::json::object(), 1, info);
  const auto set = [&](const std::string& sql) {
    REQUIRE(sqlite3_exec(s.handle(), sql.c_str(), nullptr, nullptr, nullptr) == SQLITE_OK);
  };
  CHECK(s.heartbeat(id, 3));  // created running by this process, so held by it
  CHECK_NOTHROW(s.refuse_if_held(id, 60));

  // Another live process on this host holds it: refused, heartbeat or not; our writes are refused.
  const pid_t other = fork();
  REQUIRE(other >= 0);
  if (other == 0) {
    pause();
    _exit(0);
  }
  set(fmt::format("UPDATE runs SET pid={}, heartbeat_at=0 WHERE id={}", other, id));
  CHECK_THROWS_WITH(s.refuse_if_held(id, 60),
                    Catch::StartsWith(fmt::format("run {} is being trained now (pid {} on {}", id, other, info.host)));
  CHECK_THROWS(s.start_run(id, info, 60));
  CHECK(!s.heartbeat(id, 4));
  CHECK(!s.finish_held_run(id, "finished"));
  CHECK(s.run(id)->status == "running");
  CHECK(s.run(id)->step == 3);

  // Once it is gone, the run is free at once, whatever its heartbeat says.
  kill(other, SIGKILL);
  waitpid(other, nullptr, 0);
  set(fmt::format("UPDATE runs SET heartbeat_at={} WHERE id={}", ssr::store::now(), id));
  CHECK_NOTHROW(s.start_run(id, info, 60));
  CHECK(s.heartbeat(id, 5));
  CHECK(s.finish_held_run(id, "finished"));
  CHECK(s.run(id)->status == "finished");

  // On another host only the heartbeat tells: fresh is held, old is dead.
  set(fmt::format("UPDATE runs SET status='running', host='elsewhere', pid=1, heartbeat_at={} WHERE id={}",
                  ssr::store::now() - 10, id));
  CHECK_THROWS_WITH(s.refuse_if_held(id, 60), Catch::Contains("pid 1 on elsewhere"));
  CHECK_NOTHROW(s.refuse_if_held(id, 5));
}

TEST_CASE("where-filters select on config keys groups and columns", "[store]") {
  Store s(temp_db("store", "where.db"));
  ssr::config::Config a, b;
  a.set("router.name", "ssr", "test");
  a.set("router.p", 0.01, "test");
  a.set_group("router", "ssr_l");
  b.set("run.seed", 2, "test");
  const ssr::store::RunInfo info{"rev", "host", "cpu", "x"};
  s.create_run(a.hash(), a.to_json(), 1, info);
  const int64_t idb = s.create_run(b.hash(), b.to_json(), 2, info);
  s.finish_run(idb, "finished");
  const auto all = s.runs();
  using ssr::store::filter_runs;
  CHECK(filter_runs(all, "", 60).size() == 2);
  CHECK(filter_runs(all, "router=ssr_l", 60).size() == 1);
  CHECK(filter_runs(all, "router.name=ssr", 60).size() == 1);
  CHECK(filter_runs(all, "router.p=1e-2", 60).size() == 1);  // numbers compare by value
  CHECK(filter_runs(all, "status=finished", 60).at(0).id == idb);
  CHECK(filter_runs(all, "status!=finished,router.name=ssr", 60).size() == 1);
  CHECK(filter_runs(all, "run.seed=2", 60).at(0).id == idb);
  CHECK_THROWS_WITH(filter_runs(all, "colour=red", 60), Catch::Contains("unknown key 'colour'"));
  CHECK_THROWS_WITH(filter_runs(all, "router", 60), Catch::Contains("not key=value"));
}

TEST_CASE("a sweep job named by number is taken back when interrupted or held by this process's own Slurm task",
          "[store]") {
  Store s(temp_db("store", "slurm_claim.db"));
  const auto [sweep, created] =
      s.plan_sweep("t", nlohmann::json{{"jobs", nlohmann::json::array()}}, "plan",
                   {{0, "h0", nlohmann::json::object(), 1}, {1, "h1", nlohmann::json::object(), 1}});
  REQUIRE(created);
  auto task = ssr::store::this_machine("cpu");
  task.slurm_job = "77_0";
  auto other = task;
  other.slurm_job = "78_0";
  const auto first = s.claim_job(sweep, 0, task);
  REQUIRE(first);
  CHECK(s.run(first->id)->info.slurm_job == "77_0");
  // Its holder (this live process) belongs to Slurm task 77_0: only that task takes it back.
  CHECK(!s.claim_job(sweep, 0, other));
  CHECK(s.claim_job(sweep, 0, task));
  // Interrupted: taken by number, whoever asks; a worker draining the queue takes queued jobs only.
  s.finish_run(first->id, "interrupted", "interrupted by signal 10 at step 3");
  const auto next = s.claim_job(sweep, std::nullopt, other);
  REQUIRE(next);
  CHECK(next->job_num == 1);
  CHECK(s.claim_job(sweep, 0, other));
  CHECK(s.run(first->id)->info.slurm_job == "78_0");
  // A resume requeues what Slurm says is dead, and leaves what it says runs, however stale.
  CHECK(s.requeue(sweep, 3600, false, {first->id}) == 1);
  CHECK(s.run(first->id)->status == "queued");
  CHECK(s.requeue(sweep, -1, false, {}, {next->id}) == 0);
  CHECK(s.run(next->id)->status == "running");
  CHECK(s.requeue(sweep, -1, false) == 1);
  // Launches: numbered attempts, their options, and the array id on the queued rows they submitted.
  const auto l1 = s.add_launch(sweep, "slurm", nlohmann::json{"mem=2G"}, {0, 1});
  const auto l2 = s.add_launch(sweep, "slurm", nlohmann::json{"mem=2G", "requeue"}, {1});
  CHECK(l1.attempt == 1);
  CHECK(l2.attempt == 2);
  CHECK(l2.jobs == std::vector<int64_t>{1});
  s.set_launch_slurm_job(l2.id, "99");
  CHECK(s.launches(sweep).at(1).slurm_job == "99");
  CHECK(s.launches(sweep).at(1).options == nlohmann::json{"mem=2G", "requeue"});
  CHECK(s.run(next->id)->info.slurm_job == "99_1");
  CHECK(s.run(first->id)->info.slurm_job == "78_0");  // job 0 was not in that array
}

TEST_CASE("a store on a network file system keeps a rollback journal, a local one runs WAL", "[store]") {
  for (const auto& [magic, name] : std::vector<std::pair<int64_t, std::string>>{{0x6969, "nfs"},
                                                                                {0xFF534D42, "cifs"},
                                                                                {0x0BD00BD0, "lustre"},
                                                                                {0x47504653, "gpfs"},
                                                                                {0x19830326, "beegfs"},
                                                                                {0x65735546, "fuse"},
                                                                                {0xEF53, ""},         // ext4
                                                                                {0x58465342, ""},     // xfs
                                                                                {0x01021994, ""},     // tmpfs
                                                                                {0x794C7630, ""}}) {  // overlay
    INFO(magic);
    CHECK(ssr::store::network_file_system_name(magic) == name);
  }
  Store s(temp_db("store", "journal.db"));
  CHECK(s.journal_mode() == (s.network_fs().empty() ? "wal" : "delete"));
  sqlite3_stmt* st = nullptr;
  REQUIRE(sqlite3_prepare_v2(s.handle(), "PRAGMA journal_mode", -1, &st, nullptr) == SQLITE_OK);
  REQUIRE(sqlite3_step(st) == SQLITE_ROW);
  CHECK(reinterpret_cast<const char*>(sqlite3_column_text(st, 0)) == s.journal_mode());
  sqlite3_finalize(st);
}

TEST_CASE("a version-9 store opened read-only lists its runs and has no launches, as before migration 10", "[store]") {
  const auto db = temp_db("store", "v9.db");
  {
    Store s(db);
    s.create_run("h", nlohmann::json::object(), 1, ssr::store::this_machine("cpu"));
    REQUIRE(sqlite3_exec(s.handle(),
                         "DROP TABLE sweep_launches; ALTER TABLE runs DROP COLUMN slurm_job; PRAGMA user_version=9",
                         nullptr, nullptr, nullptr) == SQLITE_OK);
  }
  const Store old(db, Store::Access::read);
  CHECK(old.schema_version() == 9);
  REQUIRE(old.runs().size() == 1);
  CHECK(old.runs()[0].info.slurm_job.empty());
  CHECK(old.launches(1).empty());
}
