// `ssr bench ui`: how long the UI's endpoints take on a large store. It builds a store of `runs`
// runs with `rows` metric rows in all (and per-expert loads for a tenth of them), then times each
// endpoint's answer (ui::handle, what the server sends) as the median of `repeats` requests.
#pragma once
#include <cstdint>
#include <ostream>
#include <string>

namespace ssr::ui {

struct UiBenchArgs {
  int64_t runs = 1000;
  int64_t rows = 1000000;
  int repeats = 5;
  std::string db;  // the store to build; "" = one under the temporary folder, removed afterwards
};

// Prints one line per endpoint: median ms, and whether it is within the 1 s target. Returns 0.
int run_ui_bench(const UiBenchArgs& args, std::ostream& out);

}  // namespace ssr::ui
