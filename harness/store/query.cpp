#include "harness/store/query.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <sstream>

#include "harness/config/config.hpp"

namespace ssr::store {
namespace {

std::optional<std::string> config_value(const json& config, const std::string& dotted) {
  const json* node = &config;
  std::stringstream ss(dotted);
  for (std::string part; std::getline(ss, part, '.');) {
    if (!node->is_object() || !node->contains(part)) return std::nullopt;
    node = &(*node)[part];
  }
  if (node->is_string()) return node->get<std::string>();
  return node->dump();
}

bool same(const std::string& a, const std::string& b) {
  if (a == b) return true;
  char *ea = nullptr, *eb = nullptr;
  double x = std::strtod(a.c_str(), &ea), y = std::strtod(b.c_str(), &eb);
  return !a.empty() && !b.empty() && *ea == '\0' && *eb == '\0' && x == y;
}

}  // namespace

std::optional<std::string> lookup(const Run& r, const std::string& key, double stale_after) {
  if (key == "id") return std::to_string(r.id);
  if (key == "status") return r.shown_status(stale_after);
  if (key == "sweep") return r.sweep_id ? std::to_string(*r.sweep_id) : "";
  if (key == "job") return r.job_num ? std::to_string(*r.job_num) : "";
  if (key == "hash") return r.config_hash;
  if (key == "seed") return std::to_string(r.seed);
  if (key == "host") return r.info.host;
  if (key == "device") return r.info.device;
  if (key == "git") return r.info.git_rev;
  const auto& groups = config::groups();
  if (std::find(groups.begin(), groups.end(), key) != groups.end())
    return config_value(r.config, "groups." + key).value_or("");
  if (key.find('.') != std::string::npos) {
    if (auto v = config_value(r.config, key)) return v;
    if (config::find_key(key) || config::is_open_namespace(key)) return std::string();
  }
  return std::nullopt;
}

std::vector<Run> filter_runs(const std::vector<Run>& runs, const std::string& where, double stale_after) {
  struct Cond {
    std::string key, value;
    bool negate;
  };
  std::vector<Cond> conds;
  std::stringstream ss(where);
  for (std::string part; std::getline(ss, part, ',');) {
    if (part.empty()) continue;
    auto eq = part.find('=');
    if (eq == std::string::npos || eq == 0)
      throw config::ConfigError(fmt::format("--where: '{}' is not key=value or key!=value", part));
    bool negate = part[eq - 1] == '!';
    conds.push_back({part.substr(0, negate ? eq - 1 : eq), part.substr(eq + 1), negate});
  }
  for (const auto& c : conds) {
    static const std::vector<std::string> columns = {"id",   "status", "sweep",  "job", "hash",
                                                     "seed", "host",   "device", "git"};
    const auto& g = config::groups();
    const bool known = std::find(columns.begin(), columns.end(), c.key) != columns.end() ||
                       std::find(g.begin(), g.end(), c.key) != g.end() || config::find_key(c.key) ||
                       config::is_open_namespace(c.key);
    if (!known)
      throw config::ConfigError(
          fmt::format("--where: unknown key '{}' (a config key like router.p, a group: model, router, data, or one of "
                      "id, status, sweep, job, hash, seed, host, device, git)",
                      c.key));
  }
  std::vector<Run> out;
  for (const auto& r : runs) {
    bool keep = true;
    for (const auto& c : conds) {
      const auto v = lookup(r, c.key, stale_after).value_or("");
      if (same(v, c.value) == c.negate) keep = false;
    }
    if (keep) out.push_back(r);
  }
  return out;
}

std::string router_label(const Run& r) {
  if (auto g = lookup(r, "router", 0); g && !g->empty()) return *g;
  return lookup(r, "router.name", 0).value_or("?");
}

}  // namespace ssr::store
