#include "harness/sweep/sweep.hpp"

#include <fmt/format.h>
#include <openssl/sha.h>
#include <yaml-cpp/yaml.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <optional>
#include <random>

namespace fs = std::filesystem;

namespace ssr::sweep {
namespace {

using config::ConfigError;

struct Axis {
  std::string name;  // the key, or "variant" / "sample"
  // For "variant": the axes each variant is crossed with (empty = all of them).
  std::vector<std::vector<std::string>> cross;
  // Each value: its label and the overrides it adds (one for a key axis, several for a variant).
  std::vector<std::pair<std::string, std::vector<std::string>>> values;
  // For "sample": the per-key labels of each value.
  std::vector<std::vector<std::pair<std::string, std::string>>> extra_labels;
};

std::string text_of(const YAML::Node& n) {
  if (n.IsScalar()) return n.Scalar();
  YAML::Emitter out;
  out << YAML::Flow << n;
  return out.c_str();
}

std::string trim(const std::string& s) {
  const auto a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

std::vector<std::string> override_list(const YAML::Node& n, const std::string& where) {
  std::vector<std::string> out;
  if (!n || n.IsNull()) return out;
  if (n.IsScalar()) return {n.Scalar()};
  if (!n.IsSequence()) throw ConfigError(fmt::format("{}: expected a list of key=value overrides", where));
  for (const auto& e : n) {
    if (!e.IsScalar()) throw ConfigError(fmt::format("{}: expected key=value, got {}", where, text_of(e)));
    out.push_back(e.Scalar());
  }
  return out;
}

// The values of a key axis: a YAML list, or a scalar "a,b,c" / "range(...)".
std::vector<std::string> axis_values(const YAML::Node& n, const std::string& where) {
  std::vector<std::string> out;
  if (n.IsSequence()) {
    for (const auto& e : n) out.push_back(text_of(e));
  } else if (n.IsScalar()) {
    if (auto r = expand_range(n.Scalar())) return *r;
    out = split_top_level(n.Scalar());
  } else {
    throw ConfigError(fmt::format("{}: expected a list of values, \"a,b,c\" or range(start,stop,step)", where));
  }
  if (out.empty()) throw ConfigError(fmt::format("{}: no values", where));
  return out;
}

Axis key_axis(const std::string& key, const std::vector<std::string>& values) {
  Axis a{key, {}, {}, {}};
  for (const auto& v : values) a.values.push_back({v, {key + "=" + v}});
  return a;
}

double as_number(const YAML::Node& n, const std::string& where) {
  try {
    return n.as<double>();
  } catch (const YAML::Exception&) {
    throw ConfigError(fmt::format("{}: expected a number, got {}", where, text_of(n)));
  }
}

// Seeded random search: n samples, each drawing every parameter in file order. The generator
// and the arithmetic are spelled out so a seed gives the same plan on every platform.
Axis random_axis(const YAML::Node& r, const std::string& file) {
  const std::string where = file + ": random";
  for (const auto& kv : r) {
    const auto k = kv.first.Scalar();
    if (k != "n" && k != "seed" && k != "params")
      throw ConfigError(fmt::format("{}.{}: unknown key (n, seed, params)", where, k));
  }
  if (!r["n"] || !r["params"] || !r["params"].IsMap())
    throw ConfigError(fmt::format("{}: needs n (samples) and params (key: {{distribution: ...}})", where));
  const double samples = as_number(r["n"], where + ".n");
  if (!(samples >= 1)) throw ConfigError(fmt::format("{}.n: need at least 1 sample", where));
  // Checked before sampling: a sweep is limited to 100,000 jobs anyway.
  if (samples > 100000)
    throw ConfigError(fmt::format("{}.n: {:g} samples; a sweep is limited to 100,000 jobs", where, samples));
  const auto n = static_cast<int64_t>(samples);
  std::mt19937_64 rng(r["seed"] ? static_cast<uint64_t>(as_number(r["seed"], where + ".seed")) : 0);
  auto uniform01 = [&] { return static_cast<double>(rng() >> 11) * 0x1.0p-53; };
  Axis a{"sample", {}, {}, {}};
  for (int64_t i = 0; i < n; ++i) {
    std::vector<std::string> overrides;
    std::vector<std::pair<std::string, std::string>> labels;
    for (const auto& kv : r["params"]) {
      const std::string key = kv.first.Scalar(), pw = where + ".params." + key;
      const auto& d = kv.second;
      if (!d.IsMap() || d.size() != 1)
        throw ConfigError(
            fmt::format("{}: expected one of {{values: [...]}}, {{uniform: [lo, hi]}}, "
                        "{{log_uniform: [lo, hi]}}, {{int_uniform: [lo, hi]}}",
                        pw));
      const std::string dist = d.begin()->first.Scalar();
      const YAML::Node args = d.begin()->second;
      std::string value;
      if (dist == "values") {
        if (!args.IsSequence() || args.size() == 0)
          throw ConfigError(fmt::format("{}.values: expected a non-empty list", pw));
        value = text_of(args[static_cast<size_t>(uniform01() * args.size())]);
      } else if (dist == "uniform" || dist == "log_uniform" || dist == "int_uniform") {
        if (!args.IsSequence() || args.size() != 2)
          throw ConfigError(fmt::format("{}.{}: expected [lo, hi]", pw, dist));
        const double lo = as_number(args[0], pw), hi = as_number(args[1], pw);
        if (!(lo <= hi)) throw ConfigError(fmt::format("{}.{}: lo must not exceed hi", pw, dist));
        const double u = uniform01();
        if (dist == "uniform") {
          value = fmt::format("{}", lo + u * (hi - lo));
        } else if (dist == "log_uniform") {
          if (!(lo > 0)) throw ConfigError(fmt::format("{}.log_uniform: bounds must be positive", pw));
          value = fmt::format("{}", std::exp(std::log(lo) + u * (std::log(hi) - std::log(lo))));
        } else {
          const auto ilo = static_cast<int64_t>(std::llround(lo)), ihi = static_cast<int64_t>(std::llround(hi));
          value = std::to_string(std::min(ihi, ilo + static_cast<int64_t>(u * static_cast<double>(ihi - ilo + 1))));
        }
      } else {
        throw ConfigError(
            fmt::format("{}: unknown distribution '{}' (values, uniform, log_uniform, int_uniform)", pw, dist));
      }
      overrides.push_back(key + "=" + value);
      labels.push_back({key, value});
    }
    a.values.push_back({std::to_string(i), overrides});
    a.extra_labels.push_back(labels);
  }
  return a;
}

}  // namespace

std::string Job::label(const std::string& axis) const {
  for (const auto& [k, v] : labels)
    if (k == axis) return v;
  return "";
}

bool Job::pairs_with(const Job& base, const std::string& axis, const std::string& value) const {
  if (base.label(axis) != value) return false;
  for (const auto& [k, v] : labels) {
    if (k == axis) continue;
    const auto bv = base.label(k);
    if (!bv.empty() && bv != v) return false;
  }
  return true;
}

std::string Job::describe() const {
  std::string s;
  for (const auto& [k, v] : labels) s += (s.empty() ? "" : " ") + k + "=" + v;
  return s.empty() ? "(single job)" : s;
}

std::vector<std::string> split_top_level(const std::string& text) {
  std::vector<std::string> out;
  int depth = 0;
  std::string cur;
  for (char c : text) {
    if (c == '[' || c == '(' || c == '{') ++depth;
    if (c == ']' || c == ')' || c == '}') --depth;
    if (c == ',' && depth == 0) {
      out.push_back(trim(cur));
      cur.clear();
    } else {
      cur += c;
    }
  }
  out.push_back(trim(cur));
  return out;
}

std::optional<std::vector<std::string>> expand_range(const std::string& raw) {
  const std::string text = trim(raw);
  if (text.rfind("range(", 0) != 0 || text.back() != ')') return std::nullopt;
  auto parts = split_top_level(text.substr(6, text.size() - 7));
  if (parts.size() < 2 || parts.size() > 3)
    throw ConfigError(fmt::format("'{}': expected range(start, stop) or range(start, stop, step)", text));
  std::vector<double> v;
  bool ints = true;
  for (const auto& p : parts) {
    char* end = nullptr;
    const double x = std::strtod(p.c_str(), &end);
    if (p.empty() || *end != '\0') throw ConfigError(fmt::format("'{}': '{}' is not a number", text, p));
    ints = ints && p.find_first_of(".eE") == std::string::npos;
    v.push_back(x);
  }
  const double start = v[0], stop = v[1], step = v.size() == 3 ? v[2] : 1;
  if (step == 0 || (stop - start) / step < 0)
    throw ConfigError(fmt::format("'{}': step must move from start towards stop", text));
  std::vector<std::string> out;
  // Stop is excluded; the tolerance keeps float steps from adding a value at stop by rounding.
  for (int64_t i = 0;; ++i) {
    const double x = start + static_cast<double>(i) * step;
    if (step > 0 ? x >= stop - 1e-12 * std::abs(step) : x <= stop + 1e-12 * std::abs(step)) break;
    // 12 significant digits: 0.1 + 2 * 0.1 prints as 0.3, not 0.30000000000000004.
    out.push_back(ints ? std::to_string(std::llround(x)) : fmt::format("{:.12g}", x));
    if (out.size() > 100000) throw ConfigError(fmt::format("'{}': more than 100,000 values", text));
  }
  if (out.empty()) throw ConfigError(fmt::format("'{}': no values", text));
  return out;
}

Spec load(const std::string& file, const std::vector<std::string>& cli, const std::string& scale) {
  const YAML::Node root = config::load_yaml(file, "sweep file");
  if (!root.IsMap())
    throw ConfigError(fmt::format("{}: expected a sweep (a map with base:, variants:, grid: ...)", file));
  static const std::vector<std::string> known = {"name",   "base",  "overrides", "scales", "variants", "grid",
                                                 "random", "seeds", "order",     "slurm",  "reports"};
  // A plain config (no sweep key at all) is a sweep of that one config: the command line's
  // `key=a,b` and --seeds make its axes (multirun).
  const bool plain_config = std::none_of(root.begin(), root.end(), [&](const auto& kv) {
    return std::find(known.begin(), known.end(), kv.first.Scalar()) != known.end();
  });
  for (const auto& kv : root) {
    const auto k = kv.first.Scalar();
    if (!plain_config && std::find(known.begin(), known.end(), k) == known.end())
      throw ConfigError(
          fmt::format("{}: unknown sweep key '{}' (known: name, base, overrides, scales, variants, "
                      "grid, random, seeds, order, slurm, reports)",
                      file, k));
  }
  if (!plain_config && !root["base"] && !root["scales"])
    throw ConfigError(fmt::format("{}: base: names the config file every job starts from", file));

  Spec spec;
  spec.file = file;
  spec.name = root["name"] ? root["name"].Scalar() : fs::path(file).stem().string();
  if (root["base"]) spec.base = (fs::path(file).parent_path() / root["base"].Scalar()).lexically_normal().string();
  if (plain_config) {
    if (!scale.empty())
      throw ConfigError(fmt::format("--scale {}: {} is a config, not a sweep file with scales", scale, file));
    spec.base = file;
  }
  spec.cli_overrides = cli;
  if (root["slurm"]) {
    if (!root["slurm"].IsMap()) throw ConfigError(fmt::format("{}: slurm: expected a map of sbatch options", file));
    spec.slurm = config::yaml_to_json(root["slurm"]);
  }
  if (root["reports"]) spec.reports = config::yaml_to_json(root["reports"]);

  std::vector<std::string> common = override_list(root["overrides"], file + ": overrides");
  std::optional<YAML::Node> scale_seeds;  // a scale may set its own seeds
  if (root["seeds"]) scale_seeds.emplace(root["seeds"]);
  if (const auto scales = root["scales"]) {
    if (!scales.IsMap() || scales.size() == 0)
      throw ConfigError(fmt::format("{}: scales: expected a map name: [overrides]", file));
    spec.scale = scale.empty() ? scales.begin()->first.Scalar() : scale;
    if (!scales[spec.scale]) {
      std::string names;
      for (const auto& kv : scales) names += (names.empty() ? "" : ", ") + kv.first.Scalar();
      throw ConfigError(fmt::format("--scale {}: {} has no such scale (scales: {})", spec.scale, file, names));
    }
    // A scale is a list of overrides, or {base: FILE, overrides: [...]} to start from another config.
    const YAML::Node sc = scales[spec.scale];
    const std::string where = file + ": scales." + spec.scale;
    if (sc.IsMap()) {
      for (const auto& e : sc)
        if (e.first.Scalar() != "base" && e.first.Scalar() != "overrides" && e.first.Scalar() != "seeds" &&
            e.first.Scalar() != "slurm")
          throw ConfigError(fmt::format("{}.{}: unknown key (base, overrides, seeds, slurm)", where, e.first.Scalar()));
      if (sc["seeds"]) scale_seeds.emplace(sc["seeds"]);  // emplace: Node::operator= would write into root
      // A scale's sbatch options go over the file's: a CPU demo scale asks for no GPU.
      if (const auto sl = sc["slurm"]) {
        if (!sl.IsMap()) throw ConfigError(fmt::format("{}.slurm: expected a map of sbatch options", where));
        const json options = config::yaml_to_json(sl);
        for (const auto& [k, v] : options.items()) spec.slurm[k] = v;
      }
      if (sc["base"]) spec.base = (fs::path(file).parent_path() / sc["base"].Scalar()).lexically_normal().string();
      for (auto& o : override_list(sc["overrides"], where + ".overrides")) common.push_back(o);
    } else {
      for (auto& o : override_list(sc, where)) common.push_back(o);
    }
  } else if (!scale.empty()) {
    throw ConfigError(fmt::format("--scale {}: {} defines no scales", scale, file));
  }

  if (spec.base.empty())
    throw ConfigError(fmt::format("{}: no base config (base: FILE, or scales.{}.base)", file, spec.scale));

  std::vector<Axis> axes;
  if (const auto v = root["variants"]) {
    if (!v.IsMap() || v.size() == 0)
      throw ConfigError(fmt::format("{}: variants: expected a map name: [overrides]", file));
    Axis a{"variant", {}, {}, {}};
    for (const auto& kv : v) {
      const std::string name = kv.first.Scalar(), where = file + ": variants." + name;
      // A map form {overrides: [...], cross: [run.seed]} limits the axes the variant is crossed
      // with, e.g. a baseline that does not depend on a grid over SSR's own keys.
      if (kv.second.IsMap()) {
        for (const auto& e : kv.second)
          if (e.first.Scalar() != "overrides" && e.first.Scalar() != "cross")
            throw ConfigError(fmt::format("{}.{}: unknown key (overrides, cross)", where, e.first.Scalar()));
        a.values.push_back({name, override_list(kv.second["overrides"], where + ".overrides")});
        a.cross.push_back(override_list(kv.second["cross"], where + ".cross"));
        if (a.cross.back().empty()) a.cross.back().push_back("");  // crossed with nothing
      } else {
        a.values.push_back({name, override_list(kv.second, where)});
        a.cross.push_back({});
      }
    }
    axes.push_back(a);
  }
  if (const auto g = root["grid"]) {
    if (!g.IsMap()) throw ConfigError(fmt::format("{}: grid: expected a map key: [values]", file));
    for (const auto& kv : g)
      axes.push_back(key_axis(kv.first.Scalar(), axis_values(kv.second, file + ": grid." + kv.first.Scalar())));
  }
  // Command-line `key=a,b` and `key=range(...)` are axes; any other override applies to all jobs.
  // A run.seed on the command line, one value or several, is the seed axis in place of the file's.
  std::vector<std::string> cli_common;
  std::optional<Axis> cli_seeds;
  for (const auto& o : cli) {
    const auto eq = o.find('=');
    if (eq == std::string::npos || eq == 0) throw ConfigError(fmt::format("override '{}': expected key=value", o));
    const std::string key = o.substr(0, eq), value = o.substr(eq + 1);
    auto values = expand_range(value).value_or(split_top_level(value));
    if (key == "run.seed") {
      if (cli_seeds) throw ConfigError(fmt::format("override '{}': run.seed is given twice", o));
      cli_seeds = key_axis(key, values);
    } else if (values.size() > 1 || value.rfind("range(", 0) == 0) {
      axes.push_back(key_axis(key, values));
    } else {
      cli_common.push_back(o);
    }
  }
  if (const auto r = root["random"]) axes.push_back(random_axis(r, file));
  if (cli_seeds)
    axes.push_back(*cli_seeds);
  else if (scale_seeds)
    axes.push_back(key_axis("run.seed", axis_values(*scale_seeds, file + ": seeds")));

  // Cartesian product, first axis outermost; a variant with `cross` skips the other axes.
  const bool has_variants = !axes.empty() && axes[0].name == "variant";
  const size_t n_variants = has_variants ? axes[0].values.size() : 1;
  for (size_t v = 0; v < n_variants; ++v) {
    std::vector<const Axis*> used;
    for (size_t i = has_variants ? 1 : 0; i < axes.size(); ++i) {
      const auto& cross = has_variants ? axes[0].cross[v] : std::vector<std::string>{};
      if (cross.empty() || std::find(cross.begin(), cross.end(), axes[i].name) != cross.end()) used.push_back(&axes[i]);
    }
    // A variant and an axis that set one key: the axis, applied later, would replace the variant's
    // value in every job without a word (variant lb crossed with router: [vanilla, zloss] never
    // trains lb).
    if (has_variants)
      for (const auto& o : axes[0].values[v].second) {
        const std::string key = o.substr(0, o.find('='));
        for (const auto* a : used)
          if (a->name == key ||
              (!a->extra_labels.empty() && std::any_of(a->extra_labels[0].begin(), a->extra_labels[0].end(),
                                                       [&](const auto& l) { return l.first == key; })))
            throw ConfigError(fmt::format(
                "{}: variant {} sets {} and the {} axis sets it too, so the axis would replace the variant's value "
                "in every job; drop one, or leave the axis out of the variant with {{overrides: [...], cross: [...]}}",
                file, axes[0].values[v].first, key, a->name));
      }
    size_t total = 1;
    for (const auto* a : used) total *= a->values.size();
    if (spec.jobs.size() + total > 100000)
      throw ConfigError(fmt::format("{}: a sweep is limited to 100,000 jobs", file));
    for (size_t j = 0; j < total; ++j) {
      Job job;
      job.num = static_cast<int64_t>(spec.jobs.size());
      job.overrides = common;
      if (has_variants) {
        job.labels.push_back({"variant", axes[0].values[v].first});
        job.overrides.insert(job.overrides.end(), axes[0].values[v].second.begin(), axes[0].values[v].second.end());
      }
      size_t rest = j, stride = total;
      for (const auto* a : used) {
        stride /= a->values.size();
        const size_t idx = rest / stride;
        rest %= stride;
        const auto& [label, overrides] = a->values[idx];
        job.labels.push_back({a->name, label});
        if (!a->extra_labels.empty())
          for (const auto& l : a->extra_labels[idx]) job.labels.push_back(l);
        job.overrides.insert(job.overrides.end(), overrides.begin(), overrides.end());
      }
      const auto before_cli = job.overrides;
      job.overrides.insert(job.overrides.end(), cli_common.begin(), cli_common.end());
      try {
        job.config = config::resolve(spec.base, job.overrides);
      } catch (const ConfigError& e) {
        // A command-line key this job's config does not use (router.p beside router=vanilla) is
        // left out of this job rather than refusing the multirun.
        std::optional<config::Config> without;
        try {
          without = config::resolve(spec.base, before_cli);
        } catch (const ConfigError&) {
        }
        std::vector<std::string> kept = before_cli;
        for (const auto& o : cli_common) {
          const auto* key = config::find_key(o.substr(0, o.find('=')));
          if (without && key && !config::applies(*without, *key))
            job.left_out.push_back(o);
          else
            kept.push_back(o);
        }
        try {
          if (job.left_out.empty()) throw ConfigError(e.what());
          job.config = config::resolve(spec.base, kept);
          job.overrides = kept;
        } catch (const ConfigError&) {
          throw ConfigError(fmt::format("{} job {} ({}): {}", file, job.num, job.describe(), e.what()));
        }
      }
      spec.jobs.push_back(std::move(job));
    }
  }
  // `order: seeds-first`: every job of one seed before the next seed, so a paired study that stops
  // early (or moves to another machine) has whole pairs; stable, so the rest of the order is kept.
  if (const auto o = root["order"]) {
    const std::string order = o.IsScalar() ? o.Scalar() : text_of(o);
    if (order == "seeds-first") {
      std::map<std::string, size_t> seed_rank;
      for (const auto& j : spec.jobs) seed_rank.emplace(j.label("run.seed"), seed_rank.size());
      std::stable_sort(spec.jobs.begin(), spec.jobs.end(), [&](const Job& a, const Job& b) {
        return seed_rank.at(a.label("run.seed")) < seed_rank.at(b.label("run.seed"));
      });
      for (size_t i = 0; i < spec.jobs.size(); ++i) spec.jobs[i].num = static_cast<int64_t>(i);
    } else if (order != "axes") {
      throw ConfigError(fmt::format("{}: order: '{}' is not an order (axes, seeds-first)", file, order));
    }
  }
  return spec;
}

json Spec::to_json() const {
  json jobs_j = json::array();
  for (const auto& j : jobs) {
    json labels = json::array();
    for (const auto& [k, v] : j.labels) labels.push_back({k, v});
    jobs_j.push_back({{"num", j.num},
                      {"hash", j.config.hash()},
                      {"labels", labels},
                      {"overrides", j.overrides},
                      {"nproc", j.config.i("run.nproc")},
                      {"device", j.config.s("run.device")}});
  }
  return {{"file", file},
          {"name", name},
          {"scale", scale},
          {"base", base},
          {"cli_overrides", cli_overrides},
          {"plan_hash", plan_hash()},
          {"slurm", slurm},
          {"jobs", jobs_j}};
}

void check_distinct_runs(const Spec& spec) {
  std::map<std::string, const Job*> seen;
  for (const auto& j : spec.jobs) {
    const auto [it, fresh] = seen.emplace(j.config.hash(), &j);
    if (fresh) continue;
    const Job& first = *it->second;
    const auto &a = first.config.values(), &b = j.config.values();
    std::string keys;
    const auto add = [&](const std::string& name) { keys += (keys.empty() ? "" : ", ") + name; };
    for (const auto& [name, v] : b)
      if (auto f = a.find(name); f == a.end() || f->second != v) add(name);
    for (const auto& kv : a)
      if (!b.count(kv.first)) add(kv.first);
    throw ConfigError(fmt::format(
        "{}: jobs {} ({}) and {} ({}) are one run: they differ only in keys outside the configuration hash ({}), so "
        "the "
        "second would reuse the first; time compute paths with `ssr bench step {}`, or train each with `ssr train`",
        spec.file, first.num, first.describe(), j.num, j.describe(), keys.empty() ? "none" : keys, spec.file));
  }
}

std::string Spec::plan_hash() const {
  std::string text;
  for (const auto& j : jobs) text += j.config.hash() + "\n";
  unsigned char digest[SHA256_DIGEST_LENGTH];
  SHA256(reinterpret_cast<const unsigned char*>(text.data()), text.size(), digest);
  std::string hex;
  for (int i = 0; i < 8; ++i) hex += fmt::format("{:02x}", digest[i]);
  return hex;
}

}  // namespace ssr::sweep
