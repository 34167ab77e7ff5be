// `ssr compare` and the UI's compare page: runs side by side from the store. Their configs with
// only the keys that differ, their final results with units, and, when the runs form groups (by
// every differing key but the seed, or by one chosen key), each group's paired differences
// against the first group's runs of the same seed.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "analysis/stats.hpp"
#include "harness/store/store.hpp"

namespace ssr::analysis {

struct CompareRequest {
  std::vector<int64_t> ids;          // in the order given; the first run's group is the baseline
  std::string where;                 // and every run that meets these conditions (ssr runs --where)
  std::vector<std::string> metrics;  // SPLIT/NAME results to show; empty: every result
  std::string by;                    // a key of `ssr runs --where` (router, router.p, ...); empty: all differing
};

struct ResultRow {
  std::string split, name;
  std::vector<std::optional<double>> values;  // one per run
};

// One group's paired difference in one result against the baseline group, over the seeds both ran.
struct Paired {
  std::string group, split, name;
  Estimate delta;
  std::optional<Estimate> relative;  // in % of the baseline's value; none when a baseline value is 0
  int64_t left_out = 0;              // pairs with a non-finite value (nan, inf)
};

// One group's result: mean and 95 % interval over its runs with a finite value.
struct GroupResult {
  std::string group, split, name;
  Estimate value;
};

struct Comparison {
  std::vector<store::Run> runs;
  std::vector<std::pair<std::string, std::vector<std::string>>> differing;  // key, its value per run
  std::vector<ResultRow> results;
  std::vector<std::string> group_of;  // per run
  std::vector<std::string> groups;    // in order of first appearance; groups[0] is the baseline
  std::vector<Paired> paired;
  std::vector<GroupResult> by_group;  // per group, per result
};

// Throws config::ConfigError naming a missing run, a bad condition, fewer than two runs, an
// unknown --by key or a --metric no run has (with the closest name it has).
Comparison compare(const store::Store& store, const CompareRequest& request);

// The comparison as Markdown tables, as `ssr compare` prints it: up to 8 runs side by side, more as
// one row per group.
std::string to_markdown(const Comparison& c);

// The unit a result is stored in, for column headers ("" when it has none).
std::string unit_of(const std::string& result_name);

}  // namespace ssr::analysis
