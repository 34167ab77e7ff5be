// The store's schema: opening a file, WAL mode, and the versioned migrations.
#include <fmt/format.h>
#include <sqlite3.h>

#include <sys/vfs.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <chrono>
#include <filesystem>
#include <iostream>
#include <thread>

#include "harness/store/sqlite.hpp"
#include "harness/store/store.hpp"

namespace fs = std::filesystem;

namespace ssr::store {

// Versioned migrations: entry i takes the schema from version i to i + 1. Never edit a
// released entry; append a new one.
static const std::array<const char*, 10> kMigrations = {
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
)sql",
    // 5: status 'interrupted' (a signal stopped the run; it resumes, it did not fail). SQLite
    // cannot change a CHECK in place: the table is rebuilt (migrate() turns foreign keys off).
    R"sql(
CREATE TABLE runs_new (
  id            INTEGER PRIMARY KEY,
  sweep_id      INTEGER REFERENCES sweeps(id),
  job_num       INTEGER,
  config_hash   TEXT NOT NULL,
  config_json   TEXT NOT NULL,
  status        TEXT NOT NULL CHECK (status IN ('queued','running','finished','failed','nan','interrupted')),
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
INSERT INTO runs_new (id, sweep_id, job_num, config_hash, config_json, status, seed, git_rev, host, device, torch_version, world_size, backend, created_at, started_at, ended_at, heartbeat_at, step, error)
  SELECT id, sweep_id, job_num, config_hash, config_json, status, seed, git_rev, host, device, torch_version, world_size, backend, created_at, started_at, ended_at, heartbeat_at, step, error FROM runs;
DROP TABLE runs;
ALTER TABLE runs_new RENAME TO runs;
CREATE INDEX runs_hash ON runs(config_hash);
UPDATE runs SET status='interrupted' WHERE status='failed' AND error LIKE 'interrupted by signal%';
)sql",
    // 6: the process id of a running run (with its host), so that a run whose process is gone from
    // this host is requeued at once instead of after its heartbeat goes stale.
    R"sql(
ALTER TABLE runs ADD COLUMN pid INTEGER;
)sql",
    // 7: one row per (run, split, name, step) and per (run, phase, step). Before the run lease, a
    // run trained twice at once wrote its rows twice: the later copy is kept.
    R"sql(
DELETE FROM metrics WHERE rowid NOT IN (SELECT max(rowid) FROM metrics GROUP BY run_id, split, name, step);
CREATE UNIQUE INDEX IF NOT EXISTS metrics_key ON metrics(run_id, split, name, step);
DELETE FROM timings WHERE rowid NOT IN (SELECT max(rowid) FROM timings GROUP BY run_id, phase, step);
DROP INDEX IF EXISTS timings_run;
CREATE UNIQUE INDEX IF NOT EXISTS timings_key ON timings(run_id, phase, step);
)sql",
    // 8: the tokens each expert of a layer received over a logging window, as a JSON array (one row
    // per run, layer and logged step: a 16-expert, 4-layer run logged every 50 steps adds 160 rows
    // per 2,000 steps), for the load heatmaps of `ssr ui`.
    R"sql(
CREATE TABLE IF NOT EXISTS expert_load (
  run_id  INTEGER NOT NULL REFERENCES runs(id),
  step    INTEGER NOT NULL,
  layer   INTEGER NOT NULL,
  tokens  TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS expert_load_key ON expert_load(run_id, layer, step);
)sql",
    // 9: the machine's load while a bench case was timed (1-minute load average per online core,
    // the larger of before and after), so a report can flag timings taken on a busy machine.
    R"sql(
ALTER TABLE bench_cases ADD COLUMN load_per_core REAL;
)sql",
    // 10: the Slurm task that holds a run ("ARRAYJOB_TASK", or the job id outside an array), so a
    // requeued task takes its own job back and a resume asks Slurm whether a holder on another node
    // still lives; and each launch of a sweep with the options it was launched with, so a resume
    // submits with them again.
    R"sql(
ALTER TABLE runs ADD COLUMN slurm_job TEXT;
CREATE TABLE IF NOT EXISTS sweep_launches (
  id            INTEGER PRIMARY KEY,
  sweep_id      INTEGER NOT NULL REFERENCES sweeps(id),
  launcher      TEXT NOT NULL,
  options_json  TEXT NOT NULL,
  jobs_json     TEXT NOT NULL,
  slurm_job     TEXT,
  created_at    REAL NOT NULL
);
)sql"};

std::string network_file_system_name(int64_t magic) {
  switch (magic) {  // statfs(2)'s f_type; linux/magic.h and the file systems' own sources
    case 0x6969: return "nfs";
    case 0x517B: return "smb";
    case 0xFF534D42: return "cifs";
    case 0xFE534D42: return "smb2";
    case 0x0BD00BD0: return "lustre";
    case 0x47504653: return "gpfs";
    case 0x19830326: return "beegfs";
    case 0x00C36400: return "ceph";
    case 0x5346414F: return "afs";
    case 0x01021997: return "9p";
    case 0x20030528: return "orangefs";
    case 0x01161970: return "gfs2";
    case 0x7461636F: return "ocfs2";
    case 0x65735546: return "fuse";  // sshfs, s3fs, gcsfuse, ...: a local FUSE file system is rare for a store
    default: return "";
  }
}

std::string network_file_system(const fs::path& dir) {
  struct statfs st {};
  if (::statfs(dir.c_str(), &st) != 0) return "";
  return network_file_system_name(static_cast<int64_t>(static_cast<uint32_t>(st.f_type)));
}

Store::Store(const std::string& path, Access access) : path_(path) {
  // SQLite would open these without a file, and every result would be gone at exit.
  if (path.empty() || path == ":memory:" || path.rfind("file:", 0) == 0)
    throw StoreError(fmt::format("run store '{}': not a file path; give --db PATH (or run.db)", path));
  fs::path p(path);
  std::error_code kind_ec;
  const auto kind = fs::status(p, kind_ec).type();
  if (kind != fs::file_type::not_found && kind != fs::file_type::regular)
    throw StoreError(fmt::format("run store '{}': not a regular file ({}); give --db PATH to a SQLite file", path,
                                 kind == fs::file_type::directory ? "a folder" : "a device, pipe or socket"));
  const bool write = access == Access::write;
  if (write && p.has_parent_path()) {
    std::error_code ec;
    fs::create_directories(p.parent_path(), ec);
    if (ec) throw StoreError(fmt::format("{}: cannot create folder: {}", path, ec.message()));
  }
  if (!write && kind == fs::file_type::regular && fs::file_size(p, kind_ec) == 0)
    throw StoreError(fmt::format("{}: an empty file, not a run store (ssr train or ssr sweep creates one)", path));
  const auto open = [&](const std::string& name, int flags) {
    if (sqlite3_open_v2(name.c_str(), &db_, flags, nullptr) != SQLITE_OK) {
      std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
      sqlite3_close(db_);
      db_ = nullptr;
      throw StoreError(fmt::format("{}: cannot open the run store: {}", path, msg));
    }
    sqlite3_busy_timeout(db_, 30000);
  };
  open(path, write ? SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE : SQLITE_OPEN_READONLY);
  if (!write && sqlite3_exec(db_, "PRAGMA user_version", nullptr, nullptr, nullptr) == SQLITE_CANTOPEN) {
    // A WAL store on read-only media: its -shm cannot be made, so read it as an immutable file.
    sqlite3_close(db_);
    std::string uri = "file:";
    for (const char c : fs::absolute(p).string())
      uri +=
          c == '%' || c == '?' || c == '#' ? fmt::format("%{:02X}", static_cast<unsigned char>(c)) : std::string(1, c);
    open(uri + "?immutable=1", SQLITE_OPEN_READONLY | SQLITE_OPEN_URI);
  }
  if (write) {
    // WAL lets readers and one writer proceed together; retried while another process holds the
    // lock that switching needs. A file that is no store, or is read-only, fails at once. WAL's
    // index lives in shared memory, which hosts do not share over a network file system (SQLite's
    // documentation: WAL does not work there), so a store on one keeps a rollback journal.
    network_fs_ = network_file_system(p.has_parent_path() ? p.parent_path() : fs::path("."));
    journal_mode_ = network_fs_.empty() ? "wal" : "delete";
    for (int attempt = 0;; ++attempt) {
      const int rc =
          sqlite3_exec(db_, fmt::format("PRAGMA journal_mode={}", journal_mode_).c_str(), nullptr, nullptr, nullptr);
      if (rc == SQLITE_OK) break;
      if (rc == SQLITE_CANTOPEN || rc == SQLITE_READONLY) {
        // The store and its -wal and -shm files need a writable file and folder.
        for (const auto& f : {p, p.has_parent_path() ? p.parent_path() : fs::path(".")})
          if (::access(f.c_str(), W_OK) != 0)
            throw StoreError(
                fmt::format("{}: read-only ({}: {}); commands that only read it (runs, show, compare, "
                            "report) still work; copy it somewhere writable to change it",
                            path, f.string(), std::strerror(errno)));
      }
      if ((rc != SQLITE_BUSY && rc != SQLITE_LOCKED) || attempt > 100)
        fail(db_, rc,
             fmt::format("{}: cannot switch to journal mode {}: {}", path, journal_mode_, sqlite3_errmsg(db_)));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    exec("PRAGMA foreign_keys=ON");
    exec("PRAGMA synchronous=NORMAL");
    // The WAL is checkpointed every 256 pages (1 MiB, not SQLite's 4) and cut back to 1 MiB when
    // it restarts, so a store near a full disk does not need 4 MiB of headroom to go on.
    exec("PRAGMA wal_autocheckpoint=256");
    exec("PRAGMA journal_size_limit=1048576");
    if (schema_version() == 0 && Stmt(db_, "SELECT 1 FROM sqlite_master LIMIT 1").step())
      throw StoreError(fmt::format(
          "{}: an SQLite database of another program (its tables are not a run store's); give --db another file",
          path));
    migrate();
  } else if (schema_version() == 0) {
    throw StoreError(
        fmt::format("{}: an SQLite database, but not a run store (ssr train or ssr sweep creates one)", path));
  } else if (schema_version() > static_cast<int>(kMigrations.size())) {
    throw StoreError(fmt::format("{}: schema version {} is newer than this ssr ({}); update ssr", path,
                                 schema_version(), kMigrations.size()));
  }
  {
    Stmt id(db_, "SELECT value FROM store_info WHERE key='id'");
    if (!id.step()) throw StoreError(fmt::format("{}: the store has no id (store_info)", path));
    id_ = id.text(0);
  }
  if (write) claim_identity();
}

// Checkpoint folders are named by the store's id, so two stores with one id would share them and
// `ssr rm` on one would delete the other's. A store remembers the file it lives in: opened for
// writing as another file while that one still exists as a store with the same id, it is a copy
// and takes an id of its own (its runs' checkpoints stay the original's). A store whose old file
// is gone (moved, or seen through another mount) keeps its id.
void Store::claim_identity() {
  std::error_code ec;
  const std::string here = fs::weakly_canonical(fs::absolute(path_), ec).string();
  auto recorded_path = [&] {
    Stmt s(db_, "SELECT value FROM store_info WHERE key='path'");
    return s.step() ? s.text(0) : std::string();
  };
  if (recorded_path() == here) return;
  Transaction tx(db_);  // decided once: the workers of a sweep open the store together
  const std::string recorded = recorded_path();
  if (recorded == here) return;
  bool copy = false;
  if (!recorded.empty() && fs::is_regular_file(recorded, ec) && !fs::equivalent(recorded, here, ec)) {
    try {
      copy = Store(recorded, Access::read).id() == id_;
    } catch (const StoreError&) {  // not a store (any more): this one is not its copy
    }
  }
  if (copy) {
    Stmt(db_, "UPDATE store_info SET value=lower(hex(randomblob(8))) WHERE key='id'").step();
    Stmt id(db_, "SELECT value FROM store_info WHERE key='id'");
    id.step();
    std::cerr << fmt::format(
        "note: {} is a copy of the run store {} (store id {}); it now has its own id {}, so its checkpoint folders "
        "are its own and the original's stay untouched\n",
        path_, recorded, id_, id.text(0));
    id_ = id.text(0);
  }
  Stmt(db_, "INSERT OR REPLACE INTO store_info (key, value) VALUES ('path', ?)").bind(1, here).step();
  tx.commit();
}

Store::~Store() { sqlite3_close(db_); }

void Store::exec(const std::string& sql) const {
  char* err = nullptr;
  if (const int rc = sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, &err); rc != SQLITE_OK) {
    std::string msg = err ? err : "?";
    sqlite3_free(err);
    fail(db_, rc, fmt::format("{}: {}", path_, msg));
  }
}

int Store::schema_version() const {
  Stmt s(db_, "PRAGMA user_version");
  s.step();
  return static_cast<int>(s.i64(0));
}

void Store::migrate() {
  if (schema_version() == static_cast<int>(kMigrations.size())) return;
  // A migration that rebuilds a table drops the old one, which foreign keys would refuse; they
  // are checked by hand before the commit instead (SQLite's procedure for schema changes). The
  // pragma has no effect inside a transaction, so it is set around it.
  exec("PRAGMA foreign_keys=OFF");
  {
    Transaction tx(db_);
    int v = schema_version();  // re-read under the write lock: another process may have migrated
    if (v > static_cast<int>(kMigrations.size()))
      throw StoreError(
          fmt::format("{}: schema version {} is newer than this ssr ({}); update ssr", path_, v, kMigrations.size()));
    for (; v < static_cast<int>(kMigrations.size()); ++v) {
      exec(kMigrations[v]);
      exec(fmt::format("PRAGMA user_version={}", v + 1));
    }
    {
      Stmt fk(db_, "PRAGMA foreign_key_check");
      if (fk.step()) throw StoreError(fmt::format("{}: migration broke a foreign key in table {}", path_, fk.text(0)));
    }
    tx.commit();
  }
  exec("PRAGMA foreign_keys=ON");
}

}  // namespace ssr::store
