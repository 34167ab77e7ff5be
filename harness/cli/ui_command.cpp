// ui: a local web view over the run store.
#include <fmt/format.h>

#include "harness/cli/commands.hpp"
#ifdef SSR_WITH_UI
#include "harness/ui/server.hpp"
#endif

namespace ssr::cli {

void add_ui_command(CLI::App& app, Context& ctx) {
  struct Args {
    std::string host = "127.0.0.1";
    int port = 8050;
    std::string experiments = std::string(SSR_SOURCE_DIR) + "/experiments";
  };
  auto a = std::make_shared<Args>();
  auto* ui = app.add_subcommand(
      "ui", "A web view of the run store: runs, curves, expert loads, compare, sweeps, reports (read-only)");
  ui->add_option("--db", ctx.db, "run store")->capture_default_str();
  ui->add_option("--port", a->port, "port (0 = any free one)")->capture_default_str()->check(CLI::Range(0, 65535));
  ui->add_option("--host", a->host, "address to listen on; another than 127.0.0.1 lets others read the store")
      ->capture_default_str();
  ui->add_option("--experiments", a->experiments, "folder of experiment files whose reports the Reports page renders")
      ->capture_default_str();
  ui->footer(
      "Examples:\n"
      "  ssr ui                       # then open http://127.0.0.1:8050/\n"
      "  ssr ui --db results/study-2k/runs.db --port 8051\n"
      "  ssh -L 8050:127.0.0.1:8050 login-node   # on your laptop, for `ssr ui` on a cluster's login node");
  ui->callback([a, &ctx] {
    require_store(ctx.db);
#ifdef SSR_WITH_UI
    ctx.exit_code = ui::serve({{ctx.db, a->experiments}, a->host, a->port});
#else
    throw config::ConfigError(
        "ui: this ssr was built without cpp-httplib (libcpp-httplib-dev): run make deps, then rebuild");
#endif
  });
}

}  // namespace ssr::cli
