#include "harness/store/store.hpp"

#include <sqlite3.h>
#include <torch/version.h>
#include <unistd.h>

#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <thread>

#ifdef SSR_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace fs = std::filesystem;

namespace ssr::store {

// Versioned migrations: entry i takes the schema from version i to i + 1. Never edit a
// released entry; append a new one.
static const std::array<const char*, 4> kMigrations = {
    R"sql(
CREATE TABLE sweeps (
  id          INTEGER PRIMARY KEY,
  name        TEXT NOT NULL,
  spec_json   TEXT NOT NULL,
  created_at  REAL NOT NULL
);
CREATE TABLE runs (
  id            INTEGER PRIMARY KEY,
  sweep_id      INTEGER REFERENCES sweeps(id),
  job_num       INTEGER,
  config_hash   TEXT NOT NULL,
  config_json   TEXT NOT NULL,
  status        TEXT NOT NULL CHECK (status IN ('queued','running','finished','failed','nan')),
  seed          INTEGER,
  git_rev       TEXT,
  host          TEXT,
  device        TEXT,
  torch_version TEXT,
  world_size    INTEGER NOT NULL DEFAULT 1,
  backend       TEXT,
  created_at    REAL NOT NULL,
  started_at    REAL,
  ended_at      REAL,
  heartbeat_at  REAL,
  step          INTEGER NOT NULL DEFAULT 0,
  error         TEXT,
  UNIQUE (sweep_id, job_num)
);
CREATE INDEX runs_hash ON runs(config_hash);
CREATE TABLE metrics (
  run_id  INTEGER NOT NULL REFERENCES runs(id),
  step    INTEGER NOT NULL,
  split   TEXT NOT NULL,
  name    TEXT NOT NULL,
  value   REAL,
  wall_s  REAL
);
CREATE INDEX metrics_run ON metrics(run_id, name, step);
CREATE TABLE results (
  run_id  INTEGER NOT NULL REFERENCES runs(id),
  split   TEXT NOT NULL,
  name    TEXT NOT NULL,
  value   REAL,
  PRIMARY KEY (run_id, split, name)
);
CREATE TABLE timings (
  run_id   INTEGER NOT NULL REFERENCES runs(id),
  step     INTEGER NOT NULL,
  phase    TEXT NOT NULL,
  seconds  REAL NOT NULL
);
CREATE INDEX timings_run ON timings(run_id, phase);
)sql",
    // 2: `ssr bench step` sessions. A session times its cases round-robin on one machine, so two
    // cases of one session pair round by round; a case's config hash is that of the sweep job (or
    // config) it times, which is how reports find it. Kept apart from runs: a benchmark trains on
    // synthetic tokens and must never count as a job's run.
    R"sql(
CREATE TABLE bench_sessions (
  id            INTEGER PRIMARY KEY,
  command       TEXT NOT NULL,
  git_rev       TEXT,
  host          TEXT,
  device        TEXT,
  torch_version TEXT,
  warmup        INTEGER NOT NULL,
  created_at    REAL NOT NULL
);
CREATE TABLE bench_cases (
  id              INTEGER PRIMARY KEY,
  session_id      INTEGER NOT NULL REFERENCES bench_sessions(id),
  label           TEXT NOT NULL,
  config_hash     TEXT NOT NULL,
  config_json     TEXT NOT NULL,
  tokens_per_step INTEGER NOT NULL
);
CREATE INDEX bench_cases_hash ON bench_cases(config_hash);
CREATE TABLE bench_times (
  case_id  INTEGER NOT NULL REFERENCES bench_cases(id),
  round    INTEGER NOT NULL,
  seconds  REAL NOT NULL
);
CREATE INDEX bench_times_case ON bench_times(case_id, round);
)sql",
    // 3: a random id per store, so that run N of two stores never shares a checkpoint folder.
    R"sql(
CREATE TABLE store_info (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
);
INSERT INTO store_info (key, value) VALUES ('id', lower(hex(randomblob(8))));
)sql",
    // 4: a bench case's peak device memory (CUDA only; NULL on CPU, where LibTorch keeps no count).
    R"sql(
ALTER TABLE bench_cases ADD COLUMN peak_bytes INTEGER;
)sql"};

double now() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

namespace {

std::string cpu_model() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);)
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "unknown CPU";
}

// A prepared statement with typed binds; non-finite doubles are stored as text because SQLite
// turns NaN into NULL.
class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql) : db_(db) {
    if (sqlite3_prepare_v2(db, sql.c_str(), -1, &st_, nullptr) != SQLITE_OK)
      throw StoreError(fmt::format("SQL error: {} in: {}", sqlite3_errmsg(db), sql));
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt& bind(int i, int64_t v) {
    sqlite3_bind_int64(st_, i, v);
    return *this;
  }
  Stmt& bind(int i, double v) {
    if (std::isfinite(v))
      sqlite3_bind_double(st_, i, v);
    else
      sqlite3_bind_text(st_, i, std::isnan(v) ? "NaN" : (v > 0 ? "Inf" : "-Inf"), -1, SQLITE_STATIC);
    return *this;
  }
  Stmt& bind(int i, const std::string& v) {
    sqlite3_bind_text(st_, i, v.c_str(), -1, SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& bind(int i, std::optional<int64_t> v) {
    if (v)
      sqlite3_bind_int64(st_, i, *v);
    else
      sqlite3_bind_null(st_, i);
    return *this;
  }
  bool step() {
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    throw StoreError(fmt::format("SQL error: {}", sqlite3_errmsg(db_)));
  }
  void reset() {
    sqlite3_reset(st_);
    sqlite3_clear_bindings(st_);
  }
  int64_t i64(int c) const { return sqlite3_column_int64(st_, c); }
  std::optional<int64_t> opt_i64(int c) const {
    if (sqlite3_column_type(st_, c) == SQLITE_NULL) return std::nullopt;
    return i64(c);
  }
  double f64(int c) const {
    if (sqlite3_column_type(st_, c) == SQLITE_TEXT) {
      std::string t = text(c);
      if (t == "Inf") return INFINITY;
      if (t == "-Inf") return -INFINITY;
      return NAN;
    }
    if (sqlite3_column_type(st_, c) == SQLITE_NULL) return NAN;
    return sqlite3_column_double(st_, c);
  }
  std::string text(int c) const {
    auto* p = sqlite3_column_text(st_, c);
    return p ? reinterpret_cast<const char*>(p) : "";
  }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
};

// BEGIN IMMEDIATE takes the write lock up front, so concurrent writers queue on the busy
// timeout instead of failing on lock upgrade.
class Transaction {
 public:
  explicit Transaction(sqlite3* db) : db_(db) { run("BEGIN IMMEDIATE"); }
  ~Transaction() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  void commit() {
    run("COMMIT");
    done_ = true;
  }

 private:
  void run(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "?";
      sqlite3_free(err);
      throw StoreError(fmt::format("{}: {}", sql, msg));
    }
  }
  sqlite3* db_;
  bool done_ = false;
};

}  // namespace

RunInfo this_machine(const std::string& device) {
  RunInfo info;
  info.git_rev = build_git_rev();
  char host[256] = {0};
  gethostname(host, sizeof host - 1);
  info.host = host;
  info.device = device == "cpu" ? fmt::format("cpu: {} ({} threads)", cpu_model(), torch::get_num_threads()) : device;
#ifdef SSR_WITH_CUDA
  // Reports compare step times only between runs on the same device: name the GPU, not "cuda".
  if (device == "cuda" && torch::cuda::is_available()) {
    const auto* p = at::cuda::getCurrentDeviceProperties();
    info.device = fmt::format("cuda: {} ({:.0f} GiB)", p->name, static_cast<double>(p->totalGlobalMem) / (1 << 30));
  }
#endif
  info.torch_version = TORCH_VERSION;
  return info;
}

Store::Store(const std::string& path) : path_(path) {
  fs::path p(path);
  if (p.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    if (ec) throw StoreError(fmt::format("{}: cannot create folder: {}", path, ec.message()));
  }
  if (sqlite3_open(path.c_str(), &db_) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    throw StoreError(fmt::format("{}: cannot open the run store: {}", path, msg));
  }
  sqlite3_busy_timeout(db_, 30000);
  // WAL lets readers and one writer proceed together; retried because switching needs a lock.
  for (int attempt = 0;; ++attempt) {
    char* err = nullptr;
    int rc = sqlite3_exec(db_, "PRAGMA journal_mode=WAL", nullptr, nullptr, &err);
    sqlite3_free(err);
    if (rc == SQLITE_OK) break;
    if (attempt > 100) throw StoreError(fmt::format("{}: cannot switch to WAL mode", path));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  exec("PRAGMA foreign_keys=ON");
  exec("PRAGMA synchronous=NORMAL");
  migrate();
  Stmt id(db_, "SELECT value FROM store_info WHERE key='id'");
  if (!id.step()) throw StoreError(fmt::format("{}: the store has no id (store_info)", path));
  id_ = id.text(0);
}

Store::~Store() { sqlite3_close(db_); }

void Store::exec(const std::string& sql) const {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "?";
    sqlite3_free(err);
    throw StoreError(fmt::format("{}: {}", path_, msg));
  }
}

int Store::schema_version() const {
  Stmt s(db_, "PRAGMA user_version");
  s.step();
  return static_cast<int>(s.i64(0));
}

void Store::migrate() {
  if (schema_version() == static_cast<int>(kMigrations.size())) return;
  Transaction tx(db_);
  int v = schema_version();  // re-read under the write lock: another process may have migrated
  if (v > static_cast<int>(kMigrations.size()))
    throw StoreError(
        fmt::format("{}: schema version {} is newer than this ssr ({}); update ssr", path_, v, kMigrations.size()));
  for (; v < static_cast<int>(kMigrations.size()); ++v) {
    exec(kMigrations[v]);
    exec(fmt::format("PRAGMA user_version={}", v + 1));
  }
  tx.commit();
}

int64_t Store::create_run(const std::string& config_hash, const json& config, int64_t seed, const RunInfo& info,
                          const std::string& status, std::optional<int64_t> sweep_id, std::optional<int64_t> job_num) {
  Transaction tx(db_);
  Stmt s(db_,
         "INSERT INTO runs (sweep_id, job_num, config_hash, config_json, status, seed, git_rev, host, "
         "device, torch_version, world_size, backend, created_at, started_at, heartbeat_at) "
         "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)");
  const double t = now();
  const bool running = status == "running";
  s.bind(1, sweep_id)
      .bind(2, job_num)
      .bind(3, config_hash)
      .bind(4, config.dump())
      .bind(5, status)
      .bind(6, seed)
      .bind(7, info.git_rev)
      .bind(8, info.host)
      .bind(9, info.device)
      .bind(10, info.torch_version)
      .bind(11, info.world_size)
      .bind(12, info.backend)
      .bind(13, t);
  if (running) s.bind(14, t).bind(15, t);
  s.step();
  int64_t id = sqlite3_last_insert_rowid(db_);
  tx.commit();
  return id;
}

namespace {

// queued (or a stale run being taken over) -> running on this machine, inside the caller's transaction.
void mark_running(sqlite3* db, int64_t run, const RunInfo& info) {
  Stmt s(db,
         "UPDATE runs SET status='running', git_rev=?, host=?, device=?, torch_version=?, world_size=?, "
         "backend=?, started_at=?, heartbeat_at=?, ended_at=NULL, error=NULL WHERE id=?");
  const double t = now();
  s.bind(1, info.git_rev)
      .bind(2, info.host)
      .bind(3, info.device)
      .bind(4, info.torch_version)
      .bind(5, info.world_size)
      .bind(6, info.backend)
      .bind(7, t)
      .bind(8, t)
      .bind(9, run);
  s.step();
}

}  // namespace

void Store::start_run(int64_t run, const RunInfo& info) {
  Transaction tx(db_);
  mark_running(db_, run, info);
  tx.commit();
}

void Store::heartbeat(int64_t run, int64_t step) {
  Stmt s(db_, "UPDATE runs SET heartbeat_at=?, step=? WHERE id=?");
  s.bind(1, now()).bind(2, step).bind(3, run);
  s.step();
}

void Store::finish_run(int64_t run, const std::string& status, const std::string& error) {
  Stmt s(db_, "UPDATE runs SET status=?, ended_at=?, heartbeat_at=?, error=? WHERE id=?");
  const double t = now();
  s.bind(1, status).bind(2, t).bind(3, t).bind(4, error).bind(5, run);
  s.step();
}

void Store::add_metrics(int64_t run, const std::vector<Metric>& rows) {
  if (rows.empty()) return;
  Transaction tx(db_);
  Stmt s(db_, "INSERT INTO metrics (run_id, step, split, name, value, wall_s) VALUES (?,?,?,?,?,?)");
  for (const auto& m : rows) {
    s.bind(1, run).bind(2, m.step).bind(3, m.split).bind(4, m.name).bind(5, m.value).bind(6, m.wall_s);
    s.step();
    s.reset();
  }
  tx.commit();
}

void Store::add_timings(int64_t run, const std::vector<Timing>& rows) {
  if (rows.empty()) return;
  Transaction tx(db_);
  Stmt s(db_, "INSERT INTO timings (run_id, step, phase, seconds) VALUES (?,?,?,?)");
  for (const auto& t : rows) {
    s.bind(1, run).bind(2, t.step).bind(3, t.phase).bind(4, t.seconds);
    s.step();
    s.reset();
  }
  tx.commit();
}

void Store::set_result(int64_t run, const std::string& split, const std::string& name, double value) {
  Stmt s(db_, "INSERT OR REPLACE INTO results (run_id, split, name, value) VALUES (?,?,?,?)");
  s.bind(1, run).bind(2, split).bind(3, name).bind(4, value);
  s.step();
}

namespace {
const char* kRunColumns =
    "id, sweep_id, job_num, config_hash, config_json, status, seed, git_rev, host, device, "
    "torch_version, world_size, backend, created_at, started_at, ended_at, heartbeat_at, step, error";

Run read_run(const Stmt& s) {
  Run r;
  r.id = s.i64(0);
  r.sweep_id = s.opt_i64(1);
  r.job_num = s.opt_i64(2);
  r.config_hash = s.text(3);
  r.config = json::parse(s.text(4));
  r.status = s.text(5);
  r.seed = s.i64(6);
  r.info = RunInfo{s.text(7), s.text(8), s.text(9), s.text(10), s.i64(11), s.text(12)};
  r.created_at = s.f64(13);
  r.started_at = s.f64(14);
  r.ended_at = s.f64(15);
  r.heartbeat_at = s.f64(16);
  r.step = s.i64(17);
  r.error = s.text(18);
  return r;
}
}  // namespace

std::optional<Run> Store::run(int64_t id) const {
  Stmt s(db_, fmt::format("SELECT {} FROM runs WHERE id=?", kRunColumns));
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return read_run(s);
}

std::vector<Run> Store::runs() const {
  Stmt s(db_, fmt::format("SELECT {} FROM runs ORDER BY id", kRunColumns));
  std::vector<Run> out;
  while (s.step()) out.push_back(read_run(s));
  return out;
}

std::vector<Metric> Store::metrics(int64_t run) const {
  Stmt s(db_, "SELECT step, split, name, value, wall_s FROM metrics WHERE run_id=? ORDER BY rowid");
  s.bind(1, run);
  std::vector<Metric> out;
  while (s.step()) out.push_back({s.i64(0), s.text(1), s.text(2), s.f64(3), s.f64(4)});
  return out;
}

std::vector<Result> Store::results(int64_t run) const {
  Stmt s(db_, "SELECT split, name, value FROM results WHERE run_id=? ORDER BY split, name");
  s.bind(1, run);
  std::vector<Result> out;
  while (s.step()) out.push_back({s.text(0), s.text(1), s.f64(2)});
  return out;
}

std::vector<Timing> Store::timings(int64_t run) const {
  Stmt s(db_, "SELECT step, phase, seconds FROM timings WHERE run_id=? ORDER BY rowid");
  s.bind(1, run);
  std::vector<Timing> out;
  while (s.step()) out.push_back({s.i64(0), s.text(1), s.f64(2)});
  return out;
}

int64_t Store::add_bench_session(const std::string& command, const RunInfo& info, int64_t warmup,
                                 const std::vector<BenchCase>& cases) {
  Transaction tx(db_);
  Stmt s(db_,
         "INSERT INTO bench_sessions (command, git_rev, host, device, torch_version, warmup, created_at) "
         "VALUES (?,?,?,?,?,?,?)");
  s.bind(1, command)
      .bind(2, info.git_rev)
      .bind(3, info.host)
      .bind(4, info.device)
      .bind(5, info.torch_version)
      .bind(6, warmup)
      .bind(7, now());
  s.step();
  const int64_t session = sqlite3_last_insert_rowid(db_);
  Stmt c(db_,
         "INSERT INTO bench_cases (session_id, label, config_hash, config_json, tokens_per_step, peak_bytes) "
         "VALUES (?,?,?,?,?,?)");
  Stmt t(db_, "INSERT INTO bench_times (case_id, round, seconds) VALUES (?,?,?)");
  for (const auto& bc : cases) {
    c.reset();
    c.bind(1, session).bind(2, bc.label).bind(3, bc.config_hash).bind(4, bc.config.dump()).bind(5, bc.tokens_per_step);
    c.bind(6, bc.peak_bytes);
    c.step();
    const int64_t id = sqlite3_last_insert_rowid(db_);
    for (size_t r = 0; r < bc.seconds.size(); ++r) {
      t.reset();
      t.bind(1, id).bind(2, static_cast<int64_t>(r)).bind(3, bc.seconds[r]);
      t.step();
    }
  }
  tx.commit();
  return session;
}

std::vector<BenchCase> Store::bench_cases(const std::string& config_hash) const {
  Stmt s(db_,
         "SELECT c.id, c.session_id, c.label, c.config_hash, c.config_json, c.tokens_per_step, s.git_rev, s.host, "
         "s.device, s.torch_version, s.created_at, c.peak_bytes FROM bench_cases c JOIN bench_sessions s ON s.id = "
         "c.session_id "
         "WHERE c.config_hash=? ORDER BY c.session_id DESC, c.id DESC");
  s.bind(1, config_hash);
  std::vector<BenchCase> out;
  while (s.step()) {
    BenchCase bc;
    bc.id = s.i64(0);
    bc.session = s.i64(1);
    bc.label = s.text(2);
    bc.config_hash = s.text(3);
    bc.config = json::parse(s.text(4));
    bc.tokens_per_step = s.i64(5);
    bc.info = RunInfo{s.text(6), s.text(7), s.text(8), s.text(9), 1, ""};
    bc.created_at = s.f64(10);
    bc.peak_bytes = s.opt_i64(11);
    out.push_back(std::move(bc));
  }
  Stmt t(db_, "SELECT seconds FROM bench_times WHERE case_id=? ORDER BY round");
  for (auto& bc : out) {
    t.reset();
    t.bind(1, bc.id);
    while (t.step()) bc.seconds.push_back(t.f64(0));
  }
  return out;
}

void Store::truncate_after(int64_t run, int64_t step) {
  Transaction tx(db_);
  for (const char* table : {"metrics", "timings"}) {
    Stmt s(db_, fmt::format("DELETE FROM {} WHERE run_id=? AND step>?", table));
    s.bind(1, run).bind(2, step);
    s.step();
  }
  Stmt r(db_, "DELETE FROM results WHERE run_id=?");
  r.bind(1, run);
  r.step();
  tx.commit();
}

std::pair<int64_t, bool> Store::plan_sweep(const std::string& name, const json& spec, const std::string& plan_hash,
                                           const std::vector<PlannedJob>& jobs) {
  Transaction tx(db_);
  {
    Stmt f(db_,
           "SELECT id FROM sweeps WHERE name=? AND json_extract(spec_json, '$.plan_hash')=? ORDER BY id DESC LIMIT 1");
    f.bind(1, name).bind(2, plan_hash);
    if (f.step()) return {f.i64(0), false};
  }
  Stmt s(db_, "INSERT INTO sweeps (name, spec_json, created_at) VALUES (?,?,?)");
  s.bind(1, name).bind(2, spec.dump()).bind(3, now());
  s.step();
  const int64_t id = sqlite3_last_insert_rowid(db_);
  Stmt done(db_, "SELECT 1 FROM runs WHERE config_hash=? AND status IN ('finished','nan') LIMIT 1");
  Stmt ins(db_,
           "INSERT INTO runs (sweep_id, job_num, config_hash, config_json, status, seed, created_at) "
           "VALUES (?,?,?,?,'queued',?,?)");
  const double t = now();
  for (const auto& j : jobs) {
    done.bind(1, j.config_hash);
    const bool skip = done.step();
    done.reset();
    if (skip) continue;
    ins.bind(1, id).bind(2, j.num).bind(3, j.config_hash).bind(4, j.config.dump()).bind(5, j.seed).bind(6, t);
    ins.step();
    ins.reset();
  }
  tx.commit();
  return {id, true};
}

std::optional<Sweep> Store::sweep(int64_t id) const {
  Stmt s(db_, "SELECT id, name, spec_json, created_at FROM sweeps WHERE id=?");
  s.bind(1, id);
  if (!s.step()) return std::nullopt;
  return Sweep{s.i64(0), s.text(1), json::parse(s.text(2)), s.f64(3)};
}

std::vector<Sweep> Store::sweeps() const {
  Stmt s(db_, "SELECT id, name, spec_json, created_at FROM sweeps ORDER BY id");
  std::vector<Sweep> out;
  while (s.step()) out.push_back({s.i64(0), s.text(1), json::parse(s.text(2)), s.f64(3)});
  return out;
}

std::vector<Run> Store::sweep_runs(int64_t sweep) const {
  Stmt s(db_, fmt::format("SELECT {} FROM runs WHERE sweep_id=? ORDER BY job_num", kRunColumns));
  s.bind(1, sweep);
  std::vector<Run> out;
  while (s.step()) out.push_back(read_run(s));
  return out;
}

std::optional<int64_t> Store::done_run(const std::string& config_hash) const {
  Stmt s(db_, "SELECT id FROM runs WHERE config_hash=? AND status IN ('finished','nan') ORDER BY id DESC LIMIT 1");
  s.bind(1, config_hash);
  if (!s.step()) return std::nullopt;
  return s.i64(0);
}

std::optional<Run> Store::claim_job(int64_t sweep, std::optional<int64_t> job, const RunInfo& info) {
  Transaction tx(db_);
  std::optional<int64_t> id;
  for (;;) {
    Stmt pick(db_,
              job ? "SELECT id, config_hash FROM runs WHERE sweep_id=? AND status='queued' AND job_num=?"
                  : "SELECT id, config_hash FROM runs WHERE sweep_id=? AND status='queued' ORDER BY job_num LIMIT 1");
    pick.bind(1, sweep);
    if (job) pick.bind(2, *job);
    if (!pick.step()) break;
    const int64_t candidate = pick.i64(0);
    Stmt done(db_, "SELECT 1 FROM runs WHERE config_hash=? AND status IN ('finished','nan') AND id!=?");
    done.bind(1, pick.text(1)).bind(2, candidate);
    if (!done.step()) {
      id = candidate;
      break;
    }
    Stmt drop(db_, "DELETE FROM runs WHERE id=?");
    drop.bind(1, candidate);
    drop.step();
  }
  if (!id) {
    tx.commit();
    return std::nullopt;
  }
  mark_running(db_, *id, info);
  tx.commit();
  return run(*id);
}

int64_t Store::requeue(int64_t sweep, double stale_after, bool failed) {
  Transaction tx(db_);
  Stmt s(db_,
         "UPDATE runs SET status='queued' WHERE sweep_id=? AND "
         "((status='running' AND heartbeat_at < ?) OR (status='failed' AND ?))");
  s.bind(1, sweep).bind(2, now() - stale_after).bind(3, int64_t{failed ? 1 : 0});
  s.step();
  const int64_t n = sqlite3_changes(db_);
  tx.commit();
  return n;
}

}  // namespace ssr::store
