// SQLite helpers shared by the store's files (schema.cpp, store.cpp, read.cpp); not part of the
// store's interface.
#pragma once
#include <fmt/format.h>
#include <sqlite3.h>

#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include "harness/errors.hpp"
#include "harness/store/store.hpp"

namespace ssr::store {

// " (held open by pid 812 sqlite3, ...)": the other processes of this host that have `path` open;
// "" when none is found.
std::string lock_holders(const std::filesystem::path& path);

// A failed SQLite call: a full disk or an I/O error under the store is the machine's failure
// (ssr::EnvironmentError, its own exit code); a damaged, locked or read-only store says so and
// what to do; anything else is a StoreError saying `what`.
[[noreturn]] inline void fail(sqlite3* db, int rc, const std::string& what) {
  const char* file = sqlite3_db_filename(db, "main");
  const std::filesystem::path path = file ? file : "";
  switch (rc & 0xff) {
    case SQLITE_FULL:
    case SQLITE_IOERR:
      throw EnvironmentError(fmt::format("{}: the run store cannot be written: {} ({}); free space, then resume",
                                         path.string(), sqlite3_errmsg(db), free_space(path.parent_path())));
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      throw StoreError(
          fmt::format("{}: not a run store, or a damaged one ({}); give --db another file, or restore a "
                      "copy (`sqlite3 FILE .recover` saves what it can)",
                      path.string(), sqlite3_errmsg(db)));
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      throw StoreError(fmt::format("{}: locked by another process for over 30 s{}; retry once it is done",
                                   path.string(), lock_holders(path)));
    case SQLITE_READONLY:
      throw StoreError(
          fmt::format("{}: read-only ({}); commands that only read it (runs, show, compare, report) "
                      "still work; copy it somewhere writable to change it",
                      path.string(), sqlite3_errmsg(db)));
    default: throw StoreError(what);
  }
}

// A prepared statement with typed binds; non-finite doubles are stored as text because SQLite
// turns NaN into NULL.
class Stmt {
 public:
  Stmt(sqlite3* db, const std::string& sql) : db_(db) {
    if (const int rc = sqlite3_prepare_v2(db, sql.c_str(), -1, &st_, nullptr); rc != SQLITE_OK)
      fail(db, rc, fmt::format("SQL error: {} in: {}", sqlite3_errmsg(db), sql));
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
  Stmt& bind(int i, std::optional<double> v) {
    if (v) return bind(i, *v);
    sqlite3_bind_null(st_, i);
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
    fail(db_, rc, fmt::format("SQL error: {}", sqlite3_errmsg(db_)));
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
  std::optional<double> opt_f64(int c) const {
    if (sqlite3_column_type(st_, c) == SQLITE_NULL) return std::nullopt;
    return f64(c);
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
    if (const int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err); rc != SQLITE_OK) {
      std::string msg = err ? err : "?";
      sqlite3_free(err);
      fail(db_, rc, fmt::format("{}: {}", sql, msg));
    }
  }
  sqlite3* db_;
  bool done_ = false;
};

// Every row of `sql`, whose one parameter is `run`, made by `make(stmt)`.
template <class T, class Make>
std::vector<T> run_rows(sqlite3* db, const std::string& sql, int64_t run, Make make) {
  Stmt s(db, sql);
  s.bind(1, run);
  std::vector<T> out;
  while (s.step()) out.push_back(make(s));
  return out;
}

// Inserts `rows` with one statement in one transaction; `bind(stmt, row)` binds a row.
template <class Row, class Bind>
void insert_rows(sqlite3* db, const std::string& sql, const std::vector<Row>& rows, Bind bind) {
  if (rows.empty()) return;
  Transaction tx(db);
  Stmt s(db, sql);
  for (const auto& r : rows) {
    bind(s, r);
    s.step();
    s.reset();
  }
  tx.commit();
}

}  // namespace ssr::store
