// `ssr` subcommands, one registration function per group of commands. Each adds its subcommand
// to the app with a callback that does the work; errors propagate as exceptions to main().
#pragma once
#include <CLI/CLI.hpp>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "harness/config/config.hpp"

namespace ssr::cli {

struct Context {
  std::string db = "results/runs.db";  // --db of the command that ran
  int exit_code = 0;                   // set by a command's callback
  std::vector<std::string> argv;       // the command line (ssr train --nproc re-executes it per rank)
};

// Bad input (config, flags, files): one line on stderr and this exit code.
constexpr int kBadInput = 2;

// --stale-after and the like: a finite number of seconds >= 0 (CLI::NonNegativeNumber lets nan
// through).
inline const CLI::Validator kSeconds(
    [](std::string& text) -> std::string {
      char* end = nullptr;
      const double v = std::strtod(text.c_str(), &end);
      if (!text.empty() && *end == '\0' && std::isfinite(v) && v >= 0) return "";
      return "'" + text + "' is not a number of seconds >= 0";
    },
    "SECONDS");

// Commands that only read a store refuse one that does not exist instead of creating it.
inline void require_store(const std::string& db) {
  if (!std::filesystem::exists(db))
    throw config::ConfigError("--db: " + db + " does not exist (no run has been stored there; check --db)");
}

void add_run_commands(CLI::App& app, Context& ctx);     // train, runs, show, config, params, data
void add_bench_commands(CLI::App& app, Context& ctx);   // bench
void add_sweep_commands(CLI::App& app, Context& ctx);   // sweep, sweep run, sweep status
void add_report_commands(CLI::App& app, Context& ctx);  // report
void add_compare_command(CLI::App& app, Context& ctx);  // compare
void add_plot_command(CLI::App& app, Context& ctx);     // plot
void add_export_command(CLI::App& app, Context& ctx);   // export
void add_ui_command(CLI::App& app, Context& ctx);       // ui

}  // namespace ssr::cli
