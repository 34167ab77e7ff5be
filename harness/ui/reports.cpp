// /api/reports and /api/reports/NAME: the tables `ssr report` renders, from the same code
// (analysis::build); nothing is written.
#include <filesystem>

#include "analysis/report.hpp"
#include "harness/ui/endpoints.hpp"

namespace ssr::ui {

json reports_page(const std::string& experiments) {
  json out = json::array();
  for (const auto& name : analysis::report_names(experiments))
    out.push_back({{"name", name}, {"file", analysis::find_report(name, experiments)}});
  return {{"reports", out}, {"experiments", experiments}};
}

json report_page(const store::Store& s, const std::string& experiments, const std::string& name, const Params& p) {
  const std::string file = analysis::find_report(name, experiments);  // unknown names: a ConfigError, 400
  const auto out = analysis::build(name, file, param(p, "scale"), params(p, "override"), s);
  return {{"name", name},     {"file", std::filesystem::path(file).filename().string()},
          {"kind", out.kind}, {"md", out.md},
          {"csv", out.csv},   {"missing", out.missing}};
}

}  // namespace ssr::ui
