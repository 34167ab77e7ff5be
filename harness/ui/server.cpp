#include "harness/ui/server.hpp"

#include <fmt/format.h>
#include <httplib.h>

#include <csignal>
#include <iostream>
#include <thread>

#include "harness/config/config.hpp"
#include "harness/ui/api.hpp"

namespace ssr::ui {

int serve(const ServeOptions& o) {
  httplib::Server server;
  server.Get(".*", [&](const httplib::Request& req, httplib::Response& res) {
    const Params params(req.params.begin(), req.params.end());
    const Reply reply = handle(o.site, req.path, params);
    res.status = reply.status;
    res.set_content(reply.body, reply.content_type.c_str());
    res.set_header("Cache-Control", "no-store");
    res.set_header("X-Content-Type-Options", "nosniff");
  });
  const int port = o.port == 0 ? server.bind_to_any_port(o.host) : (server.bind_to_port(o.host, o.port) ? o.port : -1);
  if (port < 0)
    throw config::ConfigError(
        fmt::format("--port: cannot listen on {}:{} (in use, or not an address of this machine); "
                    "pick another with --port",
                    o.host, o.port));
  if (o.host != "127.0.0.1" && o.host != "localhost" && o.host != "::1")
    std::cerr << fmt::format(
        "warning: --host {}: anyone who can reach this address reads the store (no login); an SSH tunnel to "
        "127.0.0.1 keeps it private\n",
        o.host);
  std::cerr << fmt::format("ssr ui: {} at http://{}:{}/ (Ctrl-C stops)\n", o.site.db, o.host, port) << std::flush;
  // The signals are taken by this thread with sigwait, so the server thread is never interrupted.
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGINT);
  sigaddset(&stop, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop, nullptr);
  std::thread listener([&] { server.listen_after_bind(); });
  int sig = 0;
  sigwait(&stop, &sig);
  server.stop();
  listener.join();
  pthread_sigmask(SIG_UNBLOCK, &stop, nullptr);
  return 0;
}

}  // namespace ssr::ui
