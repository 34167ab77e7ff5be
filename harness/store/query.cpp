#include "harness/store/query.hpp"

#include <fmt/format.h>

#include <cmath>
#include <cstdlib>
#include <set>
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

std::optional<double> number(const std::string& s) {
  char* end = nullptr;
  const double x = std::strtod(s.c_str(), &end);
  if (s.empty() || *end != '\0') return std::nullopt;
  return x;
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

config::Config stored_config(const Run& r) {
  std::string why = r.damage;
  if (why.empty()) try {
      return config::Config::from_json(r.config);
    } catch (const std::exception& e) {
      why = e.what();
    }
  throw config::ConfigError(
      fmt::format("run {}: its stored config is damaged ({}); ssr show {} lists what is left", r.id, why, r.id));
}

std::string headline_name(const std::vector<Result>& results, const std::string& split) {
  for (const auto& r : results)
    if (r.split == split && (r.name == "ppl" || r.name == "bpc" || r.name == "top1")) return r.name;
  return "";
}

std::optional<std::string> result_value(const std::vector<Result>& results, const std::string& key) {
  const auto slash = key.find('/');
  if (slash == std::string::npos && key != "valid" && key != "test") return std::nullopt;
  const std::string split = key.substr(0, slash);
  const std::string name = slash == std::string::npos ? headline_name(results, split) : key.substr(slash + 1);
  for (const auto& r : results)
    if (r.split == split && r.name == name) return fmt::format("{}", r.value);
  return std::string();
}

void require_known_key(const std::string& key, const std::string& flag) {
  static const std::vector<std::string> columns = {"id",   "status", "sweep",  "job", "hash",
                                                   "seed", "host",   "device", "git"};
  const auto& g = config::groups();
  if (std::find(columns.begin(), columns.end(), key) != columns.end() ||
      std::find(g.begin(), g.end(), key) != g.end() || config::find_key(key) || config::is_open_namespace(key) ||
      result_value({}, key))
    return;
  std::vector<std::string> known = columns;
  known.insert(known.end(), g.begin(), g.end());
  for (const auto& k : config::schema()) known.push_back(k.name);
  const std::string near = config::closest(key, known);
  throw config::ConfigError(
      fmt::format("{}: unknown key '{}'{} (a config key like router.p, a group: model, router, data, a result: "
                  "valid, test or SPLIT/NAME such as valid/ppl, or one of id, status, sweep, job, hash, seed, host, "
                  "device, git)",
                  flag, key, near.empty() ? "" : fmt::format("; did you mean {}?", near)));
}

namespace {

struct Cond {
  std::string key, op, value;
  std::optional<std::set<int64_t>> members;  // sweep=N: the runs of sweep N
};

// The conditions of a --where, each checked for its key and, for < <= > >=, a number.
std::vector<Cond> parse_conditions(const std::string& where) {
  std::vector<Cond> conds;
  std::stringstream ss(where);
  for (std::string part; std::getline(ss, part, ',');) {
    if (part.empty()) continue;
    const auto at = part.find_first_of("=!<>");
    size_t len = 1;
    if (at != std::string::npos &&
        (part.compare(at, 2, "!=") == 0 || part.compare(at, 2, "<=") == 0 || part.compare(at, 2, ">=") == 0))
      len = 2;
    const std::string op = at == std::string::npos ? "" : part.substr(at, len);
    if (at == 0 || op.empty() || op == "!")
      throw config::ConfigError(
          fmt::format("--where: '{}' is not key=value (nor key!=value, key<value, <=, >, >=)", part));
    conds.push_back({part.substr(0, at), op, part.substr(at + len), std::nullopt});
  }
  for (const auto& c : conds) {
    require_known_key(c.key, "--where");
    if (c.op != "=" && c.op != "!=" && !number(c.value))
      throw config::ConfigError(fmt::format("--where: '{}{}{}': {} compares numbers", c.key, c.op, c.value, c.op));
  }
  return conds;
}

// A condition's key as text for a run: lookup(), else a result key.
std::string value_for(const Run& r, const std::string& key, double stale_after, const Store* store) {
  if (auto v = lookup(r, key, stale_after)) return *v;
  return result_value(store ? store->results(r.id) : std::vector<Result>{}, key).value_or("");
}

}  // namespace

std::string join_where(const std::vector<std::string>& wheres) {
  std::string all;
  for (const auto& w : wheres)
    if (!w.empty()) all += (all.empty() ? "" : ",") + w;
  return all;
}

std::string no_match_hint(const std::vector<Run>& runs, const std::string& where, const Store* store) {
  if (runs.empty()) return "";
  for (const auto& c : parse_conditions(where)) {
    if (c.key == "sweep" || !filter_runs(runs, c.key + c.op + c.value, 0, store).empty()) continue;
    const std::string cond = c.key + c.op + c.value;
    std::set<std::string> values;
    for (const auto& r : runs) values.insert(value_for(r, c.key, 0, store));
    const bool result_key = !lookup(runs.front(), c.key, 0) && c.key.find('/') != std::string::npos;
    std::set<std::string> names;  // every result the runs have
    if (result_key && store)
      for (const auto& r : runs)
        for (const auto& x : store->results(r.id)) names.insert(x.split + "/" + x.name);
    if (result_key && values == std::set<std::string>{""} && !names.empty()) {
      // Runs have results, none this one: a misspelt name, refused as a misspelt config key is. A
      // store whose runs have no results yet (all still training) only gets the hint.
      const auto near = config::closest(c.key, {names.begin(), names.end()});
      throw config::ConfigError(fmt::format(
          "--where: no run in {} has a result {}{}", store ? store->path() : "the store", c.key,
          near.empty() ? " (ssr show RUN lists a run's results)" : fmt::format("; did you mean {}?", near)));
    }
    if (c.op != "=") return fmt::format("no run meets {}", cond);
    values.erase("");
    std::string hint = fmt::format("no run has {}", cond);
    // The two names of a router: the group (router=ssr_l) and the name it sets (router.name=ssr).
    const std::string other = c.key == "router" ? "router.name" : c.key == "router.name" ? "router" : "";
    if (!other.empty()) {
      const auto with = filter_runs(runs, other + "=" + c.value, 0, store);
      if (!with.empty()) {
        std::set<std::string> theirs;
        for (const auto& r : with) theirs.insert(value_for(r, c.key, 0, store));
        std::string list;
        for (const auto& v : theirs) list += (list.empty() ? "" : ", ") + v;
        return hint + fmt::format("; {} run(s) have {}={} ({} is {} there): --where {}={}", with.size(), other, c.value,
                                  c.key, list, other, c.value);
      }
    }
    std::string list;
    size_t shown = 0;
    for (const auto& v : values)
      if (shown++ < 12) list += (list.empty() ? "" : ", ") + v;
    const auto near = config::closest(c.value, {values.begin(), values.end()});
    return hint + (near.empty() ? "" : fmt::format("; did you mean {}={}?", c.key, near)) +
           (list.empty() ? "" : fmt::format(" ({} here: {}{})", c.key, list, values.size() > 12 ? ", ..." : ""));
  }
  return "";
}

std::vector<Run> filter_runs(const std::vector<Run>& runs, const std::string& where, double stale_after,
                             const Store* store) {
  auto conds = parse_conditions(where);
  // sweep=N selects the runs that answer sweep N's jobs, the reused ones included.
  for (auto& c : conds)
    if (const auto n = number(c.value);
        store && c.key == "sweep" && (c.op == "=" || c.op == "!=") && n && *n == std::floor(*n))
      c.members = store->sweep_members(static_cast<int64_t>(*n));
  std::vector<Run> out;
  for (const auto& r : runs) {
    std::optional<std::vector<Result>> results;
    bool keep = true;
    for (const auto& c : conds) {
      if (c.members) {
        if (c.members->contains(r.id) == (c.op == "!=")) keep = false;
        continue;
      }
      auto v = lookup(r, c.key, stale_after);
      if (!v) {
        if (!results) results = store ? store->results(r.id) : std::vector<Result>{};
        v = result_value(*results, c.key);
      }
      const std::string value = v.value_or("");
      if (c.op == "=" || c.op == "!=") {
        if (same(value, c.value) == (c.op == "!=")) keep = false;
        continue;
      }
      const auto x = number(value), y = number(c.value);
      if (!x || !(c.op == "<" ? *x < *y : c.op == "<=" ? *x <= *y : c.op == ">" ? *x > *y : *x >= *y)) keep = false;
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
