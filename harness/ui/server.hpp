// `ssr ui`: the HTTP server around ui::handle. Read-only by construction: it answers GET only.
#pragma once
#include <string>

#include "harness/ui/api.hpp"

namespace ssr::ui {

struct ServeOptions {
  Site site;
  std::string host = "127.0.0.1";
  int port = 8050;  // 0: any free port (the line it prints names it)
};

// Serves until SIGINT or SIGTERM, then returns 0. Throws config::ConfigError when the address
// cannot be bound.
int serve(const ServeOptions& options);

}  // namespace ssr::ui
