#include "analysis/report.hpp"

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>

#include "analysis/report_data.hpp"
#include "harness/config/config.hpp"

namespace fs = std::filesystem;

namespace ssr::analysis {
namespace {

using config::ConfigError;

YAML::Node reports_of(const fs::path& file) {
  try {
    return YAML::LoadFile(file.string())["reports"];
  } catch (const YAML::Exception&) {
    return YAML::Node();  // not a sweep file with reports; `ssr sweep` reports its syntax errors
  }
}

std::vector<fs::path> experiment_files(const std::string& dir) {
  std::vector<fs::path> files;
  if (!fs::is_directory(dir)) throw ConfigError(fmt::format("{}: no experiments folder", dir));
  for (const auto& e : fs::directory_iterator(dir))
    if (e.path().extension() == ".yaml") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

std::vector<std::string> report_names(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& f : experiment_files(dir))
    if (auto r = reports_of(f); r && r.IsMap())
      for (const auto& kv : r) names.push_back(kv.first.Scalar());
  return names;
}

std::string find_report(const std::string& name, const std::string& dir) {
  for (const auto& f : experiment_files(dir))
    if (auto r = reports_of(f); r && r.IsMap() && r[name]) return f.string();
  std::string known;
  for (const auto& n : report_names(dir)) known += (known.empty() ? "" : ", ") + n;
  throw ConfigError(fmt::format("report {}: no experiment in {} declares it (reports: {})", name, dir, known));
}

Output build(const std::string& name, const std::string& file, const std::string& scale,
             const std::vector<std::string>& overrides, const store::Store& store) {
  const Data d = load_data(file, scale, overrides, store);
  if (!d.spec.reports.contains(name)) throw ConfigError(fmt::format("{}: reports: has no {}", file, name));
  const json& spec = d.spec.reports[name];
  return spec.contains("figure") ? build_figure(d, spec, name) : build_table(d, spec, name);
}

}  // namespace ssr::analysis
