// `ssr ui`'s answers, apart from HTTP: one GET (a path and its query parameters) in, status,
// content type and body out, so that every endpoint tests without a socket. Nothing here writes:
// the store is opened read-only for each request, so the UI never holds a lock a trainer waits on.
#pragma once
#include <map>
#include <string>

namespace ssr::ui {

struct Reply {
  int status = 200;
  std::string content_type = "application/json";
  std::string body;
};

using Params = std::multimap<std::string, std::string>;

// What the server shows: the store, and the experiment files whose reports it renders.
struct Site {
  std::string db;
  std::string experiments = std::string(SSR_SOURCE_DIR) + "/experiments";
};

// GET /                       the page
//     /chart.js               Chart.js as Debian installs it (libjs-chart.js)
//     /api/runs               ?where=(repeatable)&limit=: the runs, as `ssr runs --where` selects them
//     /api/runs/ID            one run: config with each key's doc, results, timings, provenance
//     /api/runs/ID/metrics    ?points=N: every logged curve, thinned to at most N points each
//     /api/runs/ID/load       ?points=N: per layer, each expert's share of tokens per logged window
//     /api/compare            ?ids=1,2&where=&sweep=&by=&metric=&curve=SPLIT/NAME&points=: `ssr compare`'s
//                             tables and the curve of every group (mean and 95 % band over its runs)
//     /api/sweeps             every sweep with its progress and ETA
//     /api/sweeps/ID          one sweep's jobs: status, run, error line
//     /api/reports            the reports the experiment files declare
//     /api/reports/NAME       ?scale=&override=(repeatable): `ssr report NAME`'s table
// Anything else is 404; a bad id or query is a JSON {"error": ...} with 400 or 404.
Reply handle(const Site& site, const std::string& path, const Params& params);

// Chart.js's path on this machine ("" when libjs-chart.js is not installed).
std::string chart_js_path();

}  // namespace ssr::ui
