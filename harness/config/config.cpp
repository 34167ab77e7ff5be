#include "harness/config/config.hpp"

#include <algorithm>

#include <openssl/evp.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <set>
#include <sstream>

namespace fs = std::filesystem;

namespace ssr::config {

std::string closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    std::vector<size_t> prev(c.size() + 1), cur(c.size() + 1);
    for (size_t j = 0; j <= c.size(); ++j) prev[j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      cur[0] = i;
      for (size_t j = 1; j <= c.size(); ++j)
        cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (word[i - 1] == c[j - 1] ? 0 : 1)});
      std::swap(prev, cur);
    }
    if (prev[c.size()] < best_d) {
      best_d = prev[c.size()];
      best = c;
    }
  }
  return best;
}

std::string type_name(Type t) {
  switch (t) {
    case Type::Int: return "int";
    case Type::Float: return "float";
    case Type::Bool: return "bool";
    case Type::String: return "string";
    case Type::Choice: return "choice";
    case Type::IntList: return "list of int";
    case Type::FloatList: return "list of float";
    case Type::StringList: return "list of string";
  }
  return "?";
}

const Key* find_key(const std::string& name) {
  static const std::map<std::string, const Key*> index = [] {
    std::map<std::string, const Key*> m;
    for (const auto& k : schema()) m[k.name] = &k;
    return m;
  }();
  auto it = index.find(name);
  return it == index.end() ? nullptr : it->second;
}

namespace {

std::string range_text(const Key& k) {
  if (k.min <= -1e299 && k.max >= 1e299) return "";
  if (k.max >= 1e299) return fmt::format(" >= {}", k.min);
  if (k.min <= -1e299) return fmt::format(" <= {}", k.max);
  return fmt::format(" in [{}, {}{}", k.min, k.max, k.max_open ? ")" : "]");
}

std::string shown(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

[[noreturn]] void bad(const Key& k, const json& v, const std::string& where) {
  std::string expected = type_name(k.type) + range_text(k);
  if (k.type == Type::Choice) {
    expected = "one of";
    for (const auto& c : k.choices) expected += " " + c;
  }
  throw ConfigError(fmt::format("{}: expected {}, got '{}' ({})", k.name, expected, shown(v), where));
}

std::optional<int64_t> as_int(const json& v) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) return static_cast<int64_t>(d);
    return std::nullopt;
  }
  if (!v.is_string()) return std::nullopt;
  const std::string s = v.get<std::string>();
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  long long r = std::strtoll(s.c_str(), &end, 10);
  if (*end == '\0' && errno == 0) return r;
  // Accept integral floats spelled as 1e3.
  double d = std::strtod(s.c_str(), &end);
  if (*end == '\0' && std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.2e18) return static_cast<int64_t>(d);
  return std::nullopt;
}

std::optional<double> as_float(const json& v) {
  if (v.is_number()) return v.get<double>();
  if (!v.is_string()) return std::nullopt;
  const std::string s = v.get<std::string>();
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  if (*end != '\0' || !std::isfinite(d)) return std::nullopt;
  return d;
}

std::optional<bool> as_bool(const json& v) {
  if (v.is_boolean()) return v.get<bool>();
  if (!v.is_string()) return std::nullopt;
  const std::string s = v.get<std::string>();
  if (s == "true" || s == "True" || s == "yes" || s == "on") return true;
  if (s == "false" || s == "False" || s == "no" || s == "off") return false;
  return std::nullopt;
}

json coerce_scalar(const Key& k, Type t, const json& v, const std::string& where) {
  switch (t) {
    case Type::Int: {
      auto r = as_int(v);
      if (!r || *r < k.min || *r > k.max) bad(k, v, where);
      return *r;
    }
    case Type::Float: {
      auto r = as_float(v);
      if (!r || *r < k.min || *r > k.max || (k.max_open && *r == k.max)) bad(k, v, where);
      return *r == 0 ? 0.0 : *r;  // -0.0 is 0: one value, one hash
    }
    case Type::Bool: {
      auto r = as_bool(v);
      if (!r) bad(k, v, where);
      return *r;
    }
    case Type::String:
      if (v.is_string()) return v;
      if (v.is_number() || v.is_boolean()) return v.dump();
      bad(k, v, where);
    case Type::Choice: {
      if (!v.is_string() && !v.is_number()) bad(k, v, where);
      std::string s = v.is_string() ? v.get<std::string>() : v.dump();
      if (std::find(k.choices.begin(), k.choices.end(), s) == k.choices.end()) bad(k, v, where);
      return s;
    }
    default: bad(k, v, where);
  }
}

}  // namespace

json coerce(const Key& k, const json& v, const std::string& where) {
  Type elem;
  switch (k.type) {
    case Type::IntList: elem = Type::Int; break;
    case Type::FloatList: elem = Type::Float; break;
    case Type::StringList: elem = Type::String; break;
    default: return coerce_scalar(k, k.type, v, where);
  }
  json items = v;
  // A comma-separated string is accepted for lists ("valid,test").
  if (v.is_string()) {
    items = json::array();
    std::stringstream ss(v.get<std::string>());
    for (std::string part; std::getline(ss, part, ',');)
      if (!part.empty()) items.push_back(part);
  }
  if (!items.is_array()) bad(k, v, where);
  json out = json::array();
  for (const auto& e : items) out.push_back(coerce_scalar(k, elem, e, where));
  // A split or mode named twice would be evaluated and stored twice.
  if (k.type == Type::StringList)
    for (size_t i = 0; i < out.size(); ++i)
      for (size_t j = 0; j < i; ++j)
        if (out[i] == out[j])
          throw ConfigError(fmt::format("{}: '{}' is listed twice ({})", k.name, out[i].get<std::string>(), where));
  return out;
}

Config::Config() {
  for (const auto& k : schema()) values_[k.name] = k.def;
}

const json& Config::at(const std::string& name) const {
  auto it = values_.find(name);
  if (it == values_.end()) throw std::logic_error("config key not in schema: " + name);
  return it->second;
}
int64_t Config::i(const std::string& n) const { return at(n).get<int64_t>(); }
double Config::f(const std::string& n) const { return at(n).get<double>(); }
bool Config::b(const std::string& n) const { return at(n).get<bool>(); }
const std::string& Config::s(const std::string& n) const { return at(n).get_ref<const std::string&>(); }
std::vector<int64_t> Config::ints(const std::string& n) const { return at(n).get<std::vector<int64_t>>(); }
std::vector<double> Config::floats(const std::string& n) const { return at(n).get<std::vector<double>>(); }
std::vector<std::string> Config::strings(const std::string& n) const { return at(n).get<std::vector<std::string>>(); }

void Config::set(const std::string& name, const json& value, const std::string& where) {
  // The store keeps configs as JSON text, which holds UTF-8 only.
  try {
    (void)value.dump();
  } catch (const json::type_error&) {
    throw ConfigError(fmt::format("{}: the value is not valid UTF-8 text", name));
  }
  if (const Key* k = find_key(name)) {
    values_[name] = coerce(*k, value, where);
    return;
  }
  if (is_open_namespace(name)) {
    // A tag is a path in the stored JSON: dot-separated names of letters, digits, '_' and '-'.
    bool named = name.back() != '.';
    std::stringstream parts(name);
    for (std::string part; std::getline(parts, part, '.');)
      named = named && !part.empty() && std::all_of(part.begin(), part.end(), [](unsigned char c) {
                return std::isalnum(c) || c == '_' || c == '-';
              });
    if (!named)
      throw ConfigError(fmt::format(
          "{}: a tag name is one or more dot-separated names of letters, digits, '_' and '-' ({})", name, where));
    // The stored config nests on dots, so a tag cannot be both a value and a folder of tags.
    for (const auto& [other, v] : values_)
      if (other != name && (other.rfind(name + ".", 0) == 0 || name.rfind(other + ".", 0) == 0))
        throw ConfigError(fmt::format("{}: {} is also set, and a tag is either a value or a namespace ({}); rename one",
                                      name, other, where));
    values_[name] = value.is_string() ? value : json(value.dump());
    return;
  }
  const std::string near = closest(name, [] {
    std::vector<std::string> names;
    for (const auto& k : schema()) names.push_back(k.name);
    return names;
  }());
  throw ConfigError(fmt::format("{}: unknown key ({}){}; `ssr config --doc` lists every key", name, where,
                                near.empty() ? "" : "; did you mean " + near + "?"));
}

json Config::to_json() const {
  json j = json::object();
  for (const auto& [name, v] : values_)
    j[json::json_pointer("/" + [&] {
      std::string p = name;
      std::replace(p.begin(), p.end(), '.', '/');
      return p;
    }())] = v;
  j["groups"] = groups_;
  return j;
}

namespace {
// Walks stored nested JSON; a declared key is a leaf even when its value is a list.
void set_tree(Config& c, const json& node, const std::string& prefix) {
  if (find_key(prefix) || (!node.is_object() && !prefix.empty())) {
    c.set(prefix, node, "stored config");
    return;
  }
  for (const auto& [key, v] : node.items()) set_tree(c, v, prefix.empty() ? key : prefix + "." + key);
}
}  // namespace

Config Config::from_json(const json& j) {
  Config c;
  json values = j;
  if (values.contains("groups")) {
    for (const auto& [g, choice] : values["groups"].items()) c.groups_[g] = choice.get<std::string>();
    values.erase("groups");
  }
  set_tree(c, values, "");
  return c;
}

std::string Config::canonical() const {
  json j = json::object();
  for (const auto& [name, v] : values_) {
    const Key* k = find_key(name);
    if (k && k->hashed && (k->hashed_at_default || v != k->def)) j[name] = v;
  }
  return j.dump();
}

std::string Config::hash() const {
  const std::string text = canonical();
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(text.data(), text.size(), md, &len, EVP_sha256(), nullptr);
  std::string hex;
  for (unsigned int b = 0; b < 8; ++b) hex += fmt::format("{:02x}", md[b]);
  return hex;
}

json Config::timing() const {
  json t = json::object();
  for (const auto& k : schema())
    if (k.timed) t[k.name] = at(k.name);
  return t;
}

json timing_of(const json& stored) {
  json t = json::object();
  for (const auto& k : schema())
    if (k.timed) {
      std::string p = "/" + k.name;
      std::replace(p.begin(), p.end(), '.', '/');
      t[k.name] = stored.contains(json::json_pointer(p)) ? stored.at(json::json_pointer(p)) : k.def;
    }
  return t;
}

namespace {
void emit_value(YAML::Emitter& out, const json& v) {
  if (v.is_array()) {
    out << YAML::Flow << YAML::BeginSeq;
    for (const auto& e : v) emit_value(out, e);
    out << YAML::EndSeq;
  } else if (v.is_string()) {
    out << YAML::DoubleQuoted << v.get<std::string>();
  } else {
    out << v.dump();
  }
}
}  // namespace

std::string Config::to_yaml() const {
  YAML::Emitter out;
  out << YAML::BeginMap;
  if (!groups_.empty()) {
    out << YAML::Key << "defaults" << YAML::Value << YAML::BeginMap;
    for (const auto& [g, c] : groups_) out << YAML::Key << g << YAML::Value << c;
    out << YAML::EndMap;
  }
  std::string ns;
  for (const auto& [name, v] : values_) {
    const Key* key = find_key(name);
    if (key && !applies(*this, *key)) continue;  // the run does not use it (its default, as resolving checked)
    auto dot = name.find('.');
    std::string this_ns = name.substr(0, dot);
    if (this_ns != ns) {
      if (!ns.empty()) out << YAML::EndMap;
      out << YAML::Key << this_ns << YAML::Value << YAML::BeginMap;
      ns = this_ns;
    }
    out << YAML::Key << name.substr(dot + 1) << YAML::Value;
    emit_value(out, v);
    if (const Key* k = find_key(name)) out << YAML::Comment(k->doc);
  }
  if (!ns.empty()) out << YAML::EndMap;
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> search_path(const std::string& config_file) {
  std::vector<std::string> dirs;
  auto add = [&](const fs::path& p) {
    std::error_code ec;
    auto c = fs::weakly_canonical(p, ec).string();
    if (std::find(dirs.begin(), dirs.end(), c) == dirs.end()) dirs.push_back(c);
  };
  if (!config_file.empty()) add(fs::absolute(config_file).parent_path());
  add(fs::path(SSR_SOURCE_DIR) / "experiments");
  return dirs;
}

namespace {

// Deeper than any config: only a recursive alias (`a: &a [*a]`) gets here.
constexpr int kMaxYamlDepth = 64;
// More values than any config or sweep holds: only aliases of aliases (`b: [*a, *a, ...]`, each a
// list of the one before) expand this far, to millions of values from a few lines.
constexpr int64_t kMaxYamlValues = 100000;

// Tags ssr reads: none, YAML's own (`!!str`, `!!int`, ...), and the non-specific ones yaml-cpp
// gives plain (?) and quoted (!) scalars.
bool known_tag(const std::string& tag) {
  return tag.empty() || tag == "?" || tag == "!" || tag.rfind("tag:yaml.org,2002:", 0) == 0;
}

json yaml_to_json_at(const YAML::Node& n, int depth) {
  if (depth > kMaxYamlDepth)
    throw ConfigError(
        fmt::format("YAML nested deeper than {} levels (a recursive alias such as `a: &a [*a]`?)", kMaxYamlDepth));
  switch (n.Type()) {
    case YAML::NodeType::Scalar: return n.Scalar();
    case YAML::NodeType::Sequence: {
      json a = json::array();
      for (const auto& e : n) a.push_back(yaml_to_json_at(e, depth + 1));
      return a;
    }
    case YAML::NodeType::Map: {
      json o = json::object();
      for (const auto& kv : n) o[kv.first.Scalar()] = yaml_to_json_at(kv.second, depth + 1);
      return o;
    }
    default: return nullptr;
  }
}

}  // namespace

json yaml_to_json(const YAML::Node& n) { return yaml_to_json_at(n, 0); }

namespace {

// yaml-cpp reads a quoted scalar that is never closed to the end of the file (`name: "abc` is
// "abc " followed by every later line): its closing quote is looked for in the text.
void refuse_unclosed_quote(const YAML::Node& n, const std::string& text, const std::string& path) {
  const auto m = n.Mark();
  if (m.pos < 0 || static_cast<size_t>(m.pos) >= text.size()) return;
  const char q = text[static_cast<size_t>(m.pos)];
  if (q != '"' && q != '\'') return;
  for (size_t i = static_cast<size_t>(m.pos) + 1; i < text.size(); ++i) {
    if (q == '"' && text[i] == '\\') {
      ++i;
    } else if (text[i] == q) {
      if (q == '\'' && i + 1 < text.size() && text[i + 1] == '\'') {  // '' is a quote inside '...'
        ++i;
        continue;
      }
      return;
    }
  }
  throw ConfigError(fmt::format("{}:{}:{}: the quote {} is never closed; close it on the same line", path, m.line + 1,
                                m.column + 1, q));
}

// yaml-cpp keeps both entries of a repeated key, and a lookup sees the first while a walk keeps
// the last: a file that says a thing twice is refused instead. Unclosed quotes are refused too.
void check_tree(const YAML::Node& n, const std::string& text, const std::string& path, int64_t& values, int depth = 0) {
  if (depth > kMaxYamlDepth)
    throw ConfigError(fmt::format("{}: YAML nested deeper than {} levels (a recursive alias such as `a: &a [*a]`?)",
                                  path, kMaxYamlDepth));
  if (++values > kMaxYamlValues)
    throw ConfigError(fmt::format("{}: YAML expands to more than {} values (aliases of aliases, `b: [*a, *a]`?)", path,
                                  kMaxYamlValues));
  if (!known_tag(n.Tag()))
    throw ConfigError(fmt::format("{}:{}: unknown YAML tag '{}'; ssr reads plain YAML: drop the tag", path,
                                  n.Mark().line + 1, n.Tag()));
  if (n.IsScalar()) refuse_unclosed_quote(n, text, path);
  if (n.IsSequence())
    for (const auto& e : n) check_tree(e, text, path, values, depth + 1);
  if (!n.IsMap()) return;
  std::set<std::string> seen;
  for (const auto& kv : n) {
    if (!kv.first.IsScalar())
      throw ConfigError(fmt::format("{}:{}: a key must be a name, not a list or map (`? [a, b]`); write key: value",
                                    path, kv.first.Mark().line + 1));
    refuse_unclosed_quote(kv.first, text, path);
    if (!seen.insert(kv.first.Scalar()).second)
      throw ConfigError(fmt::format("{}:{}: key '{}' appears twice in one mapping; keep one", path,
                                    kv.first.Mark().line + 1, kv.first.Scalar()));
    check_tree(kv.second, text, path, values, depth + 1);
  }
}

}  // namespace

YAML::Node load_yaml(const std::string& path, const std::string& what) {
  if (!fs::exists(path)) throw ConfigError(fmt::format("{}: {} not found", path, what));
  if (fs::is_directory(path)) throw ConfigError(fmt::format("{}: is a folder; give a YAML {}", path, what));
  try {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw YAML::BadFile(path);
    const std::string text{std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
    const auto docs = YAML::LoadAll(text);
    if (docs.size() > 1)
      throw ConfigError(
          fmt::format("{}: {} YAML documents (a second `---` or text after the first); keep one", path, docs.size()));
    YAML::Node root = docs.empty() ? YAML::Node() : docs.front();
    int64_t values = 0;
    check_tree(root, text, path, values);
    return root;
  } catch (const YAML::ParserException& e) {
    throw ConfigError(fmt::format("{}:{}:{}: YAML syntax error: {}", path, e.mark.line + 1, e.mark.column + 1, e.msg));
  } catch (const YAML::BadFile&) {
    throw ConfigError(fmt::format("{}: cannot read {}", path, what));
  }
}

namespace {

// Sets every leaf of `node` under `prefix`; a map whose dotted path is a declared key is a value.
// `seen`: the keys this file set so far, so that one given nested and dotted is refused.
void apply_tree(Config& cfg, const json& node, const std::string& prefix, const std::string& where,
                std::set<std::string>& seen) {
  for (const auto& [key, v] : node.items()) {
    std::string name = prefix.empty() ? key : prefix + "." + key;
    if (v.is_null()) throw ConfigError(fmt::format("{}: no value given ({})", name, where));
    if (v.is_object() && !find_key(name)) {
      apply_tree(cfg, v, name, where, seen);
    } else {
      if (!seen.insert(name).second)
        throw ConfigError(fmt::format("{}: {} is given twice (nested and dotted); keep one", where, name));
      cfg.set(name, v, where);
    }
  }
}

void apply_tree(Config& cfg, const json& node, const std::string& prefix, const std::string& where) {
  std::set<std::string> seen;
  apply_tree(cfg, node, prefix, where, seen);
}

std::string find_group_file(const std::string& group, const std::string& choice,
                            const std::vector<std::string>& search) {
  for (const auto& d : search) {
    fs::path p = fs::path(d) / group / (choice + ".yaml");
    if (fs::exists(p)) return p.string();
  }
  std::string tried;
  std::vector<std::string> choices;
  for (const auto& d : search) {
    tried += " " + (fs::path(d) / group).string();
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(fs::path(d) / group, ec))
      if (e.path().extension() == ".yaml") choices.push_back(e.path().stem().string());
  }
  std::sort(choices.begin(), choices.end());
  choices.erase(std::unique(choices.begin(), choices.end()), choices.end());
  const std::string near = closest(choice, choices);
  std::string listed;
  for (const auto& c : choices) listed += (listed.empty() ? "" : ", ") + c;
  throw ConfigError(fmt::format("{}={}: no file {}.yaml in{}{} (choices: {})", group, choice, choice, tried,
                                near.empty() ? "" : "; did you mean " + group + "=" + near + "?", listed));
}

void apply_group(Config& cfg, const std::string& group, const std::string& choice,
                 const std::vector<std::string>& search) {
  const std::string path = find_group_file(group, choice, search);
  json tree = yaml_to_json(load_yaml(path));
  if (tree.is_null()) tree = json::object();
  if (!tree.is_object()) throw ConfigError(fmt::format("{}: expected a map of keys", path));
  if (tree.contains("_global_")) {
    apply_tree(cfg, tree["_global_"], "", path);
    tree.erase("_global_");
  }
  apply_tree(cfg, tree, group, path);
  cfg.set_group(group, choice);
}

bool is_group(const std::string& name) {
  const auto& g = groups();
  return std::find(g.begin(), g.end(), name) != g.end();
}

struct Override {
  std::string key, value;
  bool add = false;
};

Override parse_override(const std::string& text) {
  auto eq = text.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError(fmt::format("override '{}': expected key=value (e.g. router.p=1e-3)", text));
  Override o{text.substr(0, eq), text.substr(eq + 1)};
  if (o.key[0] == '+') {
    o.add = true;
    o.key = o.key.substr(1);
  }
  return o;
}

json parse_value(const Override& o) {
  try {
    const YAML::Node node = YAML::Load(o.value);
    int64_t values = 0;
    check_tree(node, o.value, "override " + o.key + "=" + o.value, values);
    json v = yaml_to_json(node);
    // YAML reads a leading '%' as a directive and a document of nothing as null; only an empty
    // value, null or ~ mean "no value".
    if (v.is_null() && !o.value.empty() && o.value != "null" && o.value != "~") return o.value;
    return v;
  } catch (const YAML::Exception&) {
    return o.value;  // plain text is fine for strings
  }
}

}  // namespace

void apply_overrides(Config& cfg, const std::vector<std::string>& overrides, const std::vector<std::string>& search) {
  for (const auto& text : overrides) {
    Override o = parse_override(text);
    if (!o.add && is_group(o.key)) {
      apply_group(cfg, o.key, o.value, search);
      continue;
    }
    const std::string where = "override " + text;
    if (o.add) {
      if (find_key(o.key))
        throw ConfigError(fmt::format("{}: key exists, drop the '+' to change it ({})", o.key, where));
      if (!is_open_namespace(o.key))
        throw ConfigError(fmt::format("{}: '+' adds keys only under tags.* ({})", o.key, where));
    } else if (!find_key(o.key) && is_open_namespace(o.key) && !cfg.has(o.key)) {
      throw ConfigError(fmt::format("{}: new key, write +{}={} to add it", o.key, o.key, o.value));
    }
    json v = parse_value(o);
    if (v.is_null()) throw ConfigError(fmt::format("{}: no value given ({})", o.key, where));
    cfg.set(o.key, v, where);
  }
}

const char* sweep_key(const json& tree) {
  if (!tree.is_object()) return nullptr;
  for (const char* k : {"base", "variants", "grid", "scales", "seeds", "random"})
    if (tree.contains(k)) return k;
  return nullptr;
}

bool is_sweep_file(const std::string& path) {
  return sweep_key(yaml_to_json(load_yaml(path, "config or sweep file"))) != nullptr;
}

namespace {

std::string value_text(const json& v) { return v.is_string() ? v.get<std::string>() : v.dump(); }

// The first condition of `key` that `cfg` fails, directly or through the key it names.
const std::pair<std::string, std::vector<std::string>>* failed_condition(const Config& cfg, const Key& key) {
  for (const auto& cond : key.when) {
    const auto& values = cond.second;
    if (std::find(values.begin(), values.end(), value_text(cfg.at(cond.first))) == values.end()) return &cond;
  }
  for (const auto& cond : key.when)
    if (const auto* f = failed_condition(cfg, *find_key(cond.first))) return f;
  return nullptr;
}

// A key the run does not use, set to anything but its default, would be hashed into the run's
// identity and change nothing: refused, naming what leaves it unused.
void refuse_unused(const Config& cfg, const std::string& config_file) {
  for (const auto& k : schema()) {
    if (cfg.at(k.name) == k.def) continue;
    if (const auto* cond = failed_condition(cfg, k)) {
      std::string allowed;
      for (const auto& v : cond->second) allowed += (allowed.empty() ? "" : "|") + v;
      throw ConfigError(
          fmt::format("{}: {}={} does not use it (it applies with {}={}); remove it from {} or its overrides", k.name,
                      cond->first, value_text(cfg.at(cond->first)), cond->first, allowed, config_file));
    }
  }
  for (const auto& sc : choice_scopes()) {
    const std::string other = value_text(cfg.at(sc.other)), value = value_text(cfg.at(sc.key));
    const auto it = sc.allowed.find(other);
    if (it == sc.allowed.end() || std::find(it->second.begin(), it->second.end(), value) != it->second.end()) continue;
    std::string allowed;
    for (const auto& v : it->second) allowed += (allowed.empty() ? "" : "|") + v;
    throw ConfigError(
        fmt::format("{}: {}={} reads {} only; fix {} or its overrides", sc.key, sc.other, other, allowed, config_file));
  }
}

}  // namespace

bool applies(const Config& cfg, const Key& key) { return failed_condition(cfg, key) == nullptr; }

Config resolve(const std::string& config_file, const std::vector<std::string>& overrides) {
  Config cfg;
  const auto search = search_path(config_file);
  json tree = yaml_to_json(load_yaml(config_file));
  if (tree.is_null()) tree = json::object();
  if (!tree.is_object()) throw ConfigError(fmt::format("{}: expected a map of keys", config_file));
  if (const char* k = sweep_key(tree))
    throw ConfigError(fmt::format("{} is a sweep file ({}:), not a run config: run it with `ssr sweep {}`", config_file,
                                  k, config_file));

  // Groups named on the command line replace the file's defaults.
  std::map<std::string, std::string> chosen;
  if (tree.contains("defaults")) {
    if (!tree["defaults"].is_object())
      throw ConfigError(fmt::format("{}: defaults: expected a map group: choice", config_file));
    for (const auto& [g, c] : tree["defaults"].items()) {
      if (!is_group(g))
        throw ConfigError(
            fmt::format("{}: defaults.{}: unknown config group (groups: model, router, data)", config_file, g));
      if (!c.is_string())
        throw ConfigError(fmt::format("{}: defaults.{}: expected one choice name (e.g. {}: {}), got {}", config_file, g,
                                      g,
                                      g == "router"  ? "vanilla"
                                      : g == "model" ? "tiny"
                                                     : "wt103-demo",
                                      c.dump()));
      chosen[g] = c.get<std::string>();
    }
    tree.erase("defaults");
  }
  std::vector<std::string> rest;
  for (const auto& text : overrides) {
    Override o = parse_override(text);
    if (!o.add && is_group(o.key))
      chosen[o.key] = o.value;
    else
      rest.push_back(text);
  }
  for (const auto& g : groups())
    if (chosen.count(g)) apply_group(cfg, g, chosen[g], search);
  apply_tree(cfg, tree, "", config_file);
  apply_overrides(cfg, rest, search);
  refuse_unused(cfg, config_file);
  return cfg;
}

std::string schema_doc() {
  std::string out;
  std::string ns;
  for (const auto& k : schema()) {
    std::string this_ns = k.name.substr(0, k.name.find('.'));
    if (this_ns != ns) {
      out += fmt::format("{}{}.*\n", ns.empty() ? "" : "\n", this_ns);
      ns = this_ns;
    }
    std::string type = type_name(k.type);
    if (k.type == Type::Choice) {
      type = "";
      for (const auto& c : k.choices) type += (type.empty() ? "" : "|") + c;
    }
    std::string only;
    for (const auto& [other, values] : k.when) {
      std::string allowed;
      for (const auto& v : values) allowed += (allowed.empty() ? "" : "|") + v;
      only += fmt::format(" [only with {}={}]", other, allowed);
    }
    out += fmt::format("  {:<22} {:<28} default {:<18} {}{}{}\n", k.name, type + range_text(k), shown(k.def), k.doc,
                       k.timed                ? " [not hashed; timed]"
                       : !k.hashed            ? " [not hashed]"
                       : !k.hashed_at_default ? " [hashed unless default]"
                                              : "",
                       only);
  }
  out += "\ngroups: model=NAME, router=NAME, data=NAME load experiments/<group>/NAME.yaml\n";
  out += "tags.*: free-form labels, added with +tags.KEY=VALUE (not hashed)\n";
  return out;
}

}  // namespace ssr::config
