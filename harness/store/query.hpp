// Selecting and describing stored runs: `ssr runs --where`, `ssr show`, and the reports.
#pragma once
#include <optional>
#include <string>
#include <vector>

#include "harness/config/config.hpp"
#include "harness/store/store.hpp"

namespace ssr::store {

// Value of `key` for a run as text: a runs column (id, status, sweep, job, hash, seed, host,
// device, git), a config group (router, model, data), or a dotted config key (router.p, tags.x).
// Returns nullopt when the key names none of these.
std::optional<std::string> lookup(const Run& run, const std::string& key, double stale_after);

// The name of a split's headline result among `results` (ppl, bpc or top1), "" when it has none.
std::string headline_name(const std::vector<Result>& results, const std::string& split);

// The value of a result key for a run, as text: `valid` / `test` (the split's headline: ppl, bpc
// or top1) or SPLIT/NAME (valid/ppl, train/load_cv, test-attacked/ppl). nullopt when the key is no
// result key; "" when the run has no such result.
std::optional<std::string> result_value(const std::vector<Result>& results, const std::string& key);

// Throws config::ConfigError naming `flag` when `key` is none of: lookup()'s keys, a result key.
void require_known_key(const std::string& key, const std::string& flag);

// Comma-separated conditions `key OP value`, OP one of = != < <= > >=; all must hold. Keys: those
// of lookup() and, with a store, result keys (result_value). = and != compare numbers by value and
// text as text; < <= > >= compare numbers only, and a run without a number there does not match.
// Throws config::ConfigError for a malformed condition or an unknown key.
std::vector<Run> filter_runs(const std::vector<Run>& runs, const std::string& where, double stale_after,
                             const Store* store = nullptr);

// Repeated --where flags (or ?where= parameters) hold together: each is a comma-separated list of
// conditions, and all of them must hold.
std::string join_where(const std::vector<std::string>& wheres);

// Why `where` selects none of `runs`: the first condition no run meets alone, with the values the
// runs have there ("no run has router=ssr; 4 run(s) have router.name=ssr ..."), "" when each
// condition alone meets some run. Throws config::ConfigError for a result key no run has (a
// misspelt result name), with did-you-mean.
std::string no_match_hint(const std::vector<Run>& runs, const std::string& where, const Store* store);

// A run's stored config. Throws config::ConfigError naming the run when its row is damaged, so no
// command reads a damaged row as the defaults.
config::Config stored_config(const Run& run);

// The label of a run's router: its group choice (e.g. ssr_l) or router.name.
std::string router_label(const Run& run);

}  // namespace ssr::store
