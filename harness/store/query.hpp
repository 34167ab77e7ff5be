// Selecting and describing stored runs: `ssr runs --where`, `ssr show`, and the reports.
#pragma once
#include <string>
#include <vector>

#include "harness/store/store.hpp"

namespace ssr::store {

// Value of `key` for a run as text: a runs column (id, status, sweep, job, hash, seed, host,
// device, git), a config group (router, model, data), or a dotted config key (router.p, tags.x).
// Returns nullopt when the key names none of these.
std::optional<std::string> lookup(const Run& run, const std::string& key, double stale_after);

// `key=value` / `key!=value` conditions, comma-separated; all must hold. Numbers compare by value.
// Throws config::ConfigError for a malformed condition or an unknown key.
std::vector<Run> filter_runs(const std::vector<Run>& runs, const std::string& where, double stale_after);

// The label of a run's router: its group choice (e.g. ssr_l) or router.name.
std::string router_label(const Run& run);

}  // namespace ssr::store
