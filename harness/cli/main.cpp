// `ssr`: the one command-line entry point. Each command group registers itself
// (harness/cli/*_commands.cpp); no training, SQL or report logic lives here.
#include <c10/util/Exception.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <functional>
#include <iostream>

#include "harness/cli/commands.hpp"
#include "harness/config/config.hpp"
#include "harness/errors.hpp"
#include "harness/store/store.hpp"

namespace {

// A command whose output did not reach standard output (a full disk, a closed descriptor) has
// failed, whatever it computed: exit 74 with one line, never 0.
int with_output_checked(int code) {
  std::cout.flush();
  errno = 0;
  const bool failed = std::fflush(stdout) != 0 || std::ferror(stdout) || !std::cout;
  if (!failed) return code;
  const int err = errno;
  std::cerr << "error: could not write to standard output" << (err ? std::string(" (") + std::strerror(err) + ")" : "")
            << ": the output is incomplete\n";
  return code == 0 ? ssr::kExitEnvironment : code;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ssr: routing research harness for sparse Mixture-of-Experts (Selective Sinkhorn Routing)"};
  app.require_subcommand(1);
  app.footer("Run `ssr SUBCOMMAND --help` for examples.");
  ssr::cli::Context ctx;
  ctx.argv.assign(argv, argv + argc);
  ssr::cli::add_run_commands(app, ctx);
  ssr::cli::add_bench_commands(app, ctx);
  ssr::cli::add_sweep_commands(app, ctx);
  ssr::cli::add_report_commands(app, ctx);
  ssr::cli::add_compare_command(app, ctx);
  ssr::cli::add_plot_command(app, ctx);
  ssr::cli::add_export_command(app, ctx);
  ssr::cli::add_ui_command(app, ctx);
  // A flag takes no value: `--quiet=5` is a typo, not a count.
  std::function<void(CLI::App&)> no_flag_values = [&](CLI::App& a) {
    for (auto* o : a.get_options())
      if (o->get_expected_max() == 0) o->disable_flag_override();
    for (auto* sub : a.get_subcommands({})) no_flag_values(*sub);
  };
  no_flag_values(app);
  // `ssr trian`: CLI11 would only say that a subcommand is required.
  if (argc > 1 && argv[1][0] != '-') {
    std::vector<std::string> names;
    for (const auto* sub : app.get_subcommands({})) names.push_back(sub->get_name());
    if (std::find(names.begin(), names.end(), argv[1]) == names.end()) {
      const std::string near = ssr::config::closest(argv[1], names);
      std::string listed;
      for (const auto& n : names) listed += (listed.empty() ? "" : ", ") + n;
      std::cerr << "error: unknown command '" << argv[1] << "'" << (near.empty() ? "" : "; did you mean " + near + "?")
                << " (commands: " << listed << ")\n";
      return ssr::cli::kBadInput;
    }
  }
  try {
    app.parse(argc, argv);
    return with_output_checked(ctx.exit_code);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::cerr << "error: " << e.what() << " (see ssr --help or ssr SUBCOMMAND --help)\n";
    return ssr::cli::kBadInput;
  } catch (const ssr::config::ConfigError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return ssr::cli::kBadInput;
  } catch (const ssr::EnvironmentError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return ssr::kExitEnvironment;
  } catch (const ssr::store::StoreError& e) {
    std::cerr << "error: " << e.what() << "\n";
    return ssr::cli::kBadInput;
  } catch (const c10::Error& e) {
    // LibTorch's what() carries a C++ backtrace; its first line says what went wrong.
    const std::string msg = e.what_without_backtrace();
    std::cerr << "error: " << msg.substr(0, msg.find('\n')) << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 1;
  }
}
