// `ssr compare RUN RUN...`: runs side by side from the store. Their configs with only the keys
// that differ, their final results with units, and, when the runs form groups that differ only
// in run.seed, each group's paired differences against the first group's runs of the same seed.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "harness/store/store.hpp"

namespace ssr::analysis {

// Markdown tables; a missing run id throws config::ConfigError naming it.
std::string compare_runs(const store::Store& store, const std::vector<int64_t>& ids);

// The unit a result is stored in, for column headers ("" when it has none).
std::string unit_of(const std::string& result_name);

}  // namespace ssr::analysis
