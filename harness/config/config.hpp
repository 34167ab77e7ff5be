// Resolved run configuration: schema defaults <- group files <- config file <- overrides.
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace ssr::config {

using json = nlohmann::json;

// Bad input from the user: the CLI prints what() on one line and exits with code 2.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Type { Int, Float, Bool, String, Choice, IntList, FloatList, StringList };

struct Key {
  std::string name;  // dotted, e.g. "router.p"
  Type type;
  json def;
  std::string doc;
  double min = -1e300, max = 1e300;  // inclusive range for Int/Float (and list elements)
  std::vector<std::string> choices;  // for Choice
  bool hashed = true;                // false: bookkeeping that cannot change a result (db path, log interval)
  // false: the default value is left out of the hash, so configs that predate the key keep theirs.
  bool hashed_at_default = true;
  // Unhashed, yet it changes speed (a compute path that gives the same function): step times
  // compare only runs and bench cases that agree on every such key.
  bool timed = false;
  // The key is used only where each (key, values) holds: the other key's value is one of values
  // (a bool as "true"/"false"). Set elsewhere to anything but its default, it is refused.
  std::vector<std::pair<std::string, std::vector<std::string>>> when;
  bool max_open = false;  // the range excludes max: [min, max)
};

// Every key, declared once (harness/config/schema.cpp).
const std::vector<Key>& schema();
const Key* find_key(const std::string& name);
// Config groups: `router=ssr_l` loads experiments/router/ssr_l.yaml into the router.* namespace.
const std::vector<std::string>& groups();
// Choices of a key that only some values of another key accept: data.format's readers belong to
// one task each (model.arch).
struct ChoiceScope {
  std::string key, other;
  std::map<std::string, std::vector<std::string>> allowed;  // other's value -> key's choices
};
const std::vector<ChoiceScope>& choice_scopes();
// Namespaces that accept new keys with `+ns.key=value` (free-form metadata, never hashed).
bool is_open_namespace(const std::string& name);
std::string type_name(Type t);
class Config;
// Whether the run `cfg` configures uses `key` (its `when` conditions hold, and theirs in turn).
bool applies(const Config& cfg, const Key& key);
// Coerce a YAML/JSON value to the key's type and check its range; throws ConfigError naming `where`.
json coerce(const Key& key, const json& value, const std::string& where);

class Config {
 public:
  Config();  // schema defaults

  const json& at(const std::string& name) const;
  int64_t i(const std::string& name) const;
  double f(const std::string& name) const;
  bool b(const std::string& name) const;
  const std::string& s(const std::string& name) const;
  std::vector<int64_t> ints(const std::string& name) const;
  std::vector<double> floats(const std::string& name) const;
  std::vector<std::string> strings(const std::string& name) const;

  // Sets a declared key (coerced and range-checked) or an open-namespace key.
  void set(const std::string& name, const json& value, const std::string& where);
  bool has(const std::string& name) const { return values_.count(name) != 0; }

  const std::map<std::string, json>& values() const { return values_; }
  const std::map<std::string, std::string>& group_choices() const { return groups_; }
  void set_group(const std::string& group, const std::string& choice) { groups_[group] = choice; }

  // Nested JSON of every value plus {"groups": {...}}: what the store keeps.
  json to_json() const;
  static Config from_json(const json& j);  // inverse of to_json (used by --resume and sweeps)
  // Canonical text of the hashed keys: sorted keys, typed values, shortest float spelling.
  std::string canonical() const;
  // First 16 hex digits of SHA-256(canonical()): identifies a run configuration.
  std::string hash() const;
  // {name: value} of the timed keys: with hash(), what a step time depends on.
  json timing() const;
  // YAML text with every key, grouped by namespace (what `ssr config` prints).
  std::string to_yaml() const;

 private:
  std::map<std::string, json> values_;
  std::map<std::string, std::string> groups_;
};

// timing() of a config as the store keeps it (to_json()); keys it predates take their defaults.
json timing_of(const json& stored);

// Where group files are searched: the config file's folder, then the project's experiments/.
std::vector<std::string> search_path(const std::string& config_file);

// Parses a YAML file; a missing or malformed file throws ConfigError naming it as `what`.
// The candidate nearest to `word` by edit distance, if it is close enough to be a typo (at most a
// third of the word's length, and 2 at least); "" otherwise. Did-you-mean for keys, choices, commands.
std::string closest(const std::string& word, const std::vector<std::string>& candidates);

YAML::Node load_yaml(const std::string& path, const std::string& what = "config file");
// YAML to JSON with every scalar kept a string: the schema decides the types.
json yaml_to_json(const YAML::Node& node);

// The first top-level key that makes a file a sweep file (base:, variants:, grid:, scales:, seeds:,
// random:), or nullptr for a run config.
const char* sweep_key(const json& tree);
bool is_sweep_file(const std::string& path);

// Resolves CONFIG.yaml plus `key=value` overrides. Throws ConfigError on any bad input.
Config resolve(const std::string& config_file, const std::vector<std::string>& overrides);
// Applies overrides to an already resolved config (sweeps add their axis values this way).
void apply_overrides(Config& cfg, const std::vector<std::string>& overrides, const std::vector<std::string>& search);

// `ssr config --doc`: every key with type, default, range and its line of documentation.
std::string schema_doc();

}  // namespace ssr::config
