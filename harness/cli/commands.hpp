// `ssr` subcommands, one registration function per group of commands. Each adds its subcommand
// to the app with a callback that does the work; errors propagate as exceptions to main().
#pragma once
#include <CLI/CLI.hpp>
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

}  // namespace ssr::cli
