// train, runs, show, config, params, data: the commands around one run and the store.
#include <filesystem>
#include <fmt/format.h>

#include <cmath>
#include <csignal>
#include <cstdio>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "harness/cli/commands.hpp"
#include "harness/config/config.hpp"
#include "harness/data/attack.hpp"
#include "harness/data/corpus.hpp"
#include "harness/dist/dist.hpp"
#include "harness/dist/launch.hpp"
#include "harness/errors.hpp"
#include "harness/store/query.hpp"
#include "harness/store/store.hpp"
#include "harness/train/checkpoint.hpp"
#include "harness/train/progress.hpp"
#include "harness/train/trainer.hpp"
#include "models/swin_moe.hpp"
#include "models/switch_lm.hpp"

namespace fs = std::filesystem;

namespace ssr::cli {
namespace {

using ssr::config::ConfigError;
using json = nlohmann::json;

std::string fmt_time(double t) {
  if (!(t > 0)) return "-";
  std::time_t s = static_cast<std::time_t>(t);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%d %H:%M", std::localtime(&s));
  return buf;
}

std::string fmt_num(double v) {
  if (std::isnan(v)) return "NaN";
  return fmt::format("{:.3f}", v);
}

void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(header.size());
  for (size_t c = 0; c < header.size(); ++c) {
    w[c] = header[c].size();
    for (const auto& r : rows) w[c] = std::max(w[c], r[c].size());
  }
  auto line = [&](const std::vector<std::string>& r) {
    std::string s;
    for (size_t c = 0; c < r.size(); ++c) s += fmt::format("{:<{}}", r[c], c + 1 < r.size() ? w[c] + 2 : 0);
    std::cout << s << "\n";
  };
  line(header);
  for (const auto& r : rows) line(r);
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string q = "\"";
  for (char c : s) q += c == '"' ? std::string("\"\"") : std::string(1, c);
  return q + "\"";
}

struct RunsArgs {
  std::string where, format = "table", sort, columns;
  int64_t limit = 0;
  double stale_after = 60;
};

const std::vector<std::string> kDefaultColumns = {"id",   "status", "router", "data", "model", "seed",
                                                  "step", "valid",  "test",   "took", "labels"};
const std::vector<std::string> kOwnColumns = {"router", "model",   "data", "step", "valid",
                                              "test",   "started", "took", "name", "labels"};

// The swept values of a run's sweep job and its +tags: "variant=ssr_l router.p=0.01 tags.note=x".
std::string run_labels(const ssr::store::Run& r, const ssr::store::Store& store,
                       std::map<int64_t, std::optional<ssr::store::Sweep>>& sweeps) {
  std::string out;
  if (r.sweep_id && r.job_num) {
    auto it = sweeps.find(*r.sweep_id);
    if (it == sweeps.end()) it = sweeps.emplace(*r.sweep_id, store.sweep(*r.sweep_id)).first;
    if (it->second)
      for (const auto& j : it->second->spec.value("jobs", json::array()))
        if (j.value("num", int64_t{-1}) == *r.job_num)
          for (const auto& l : j.value("labels", json::array()))
            if (l.at(0) != "run.seed")
              out += (out.empty() ? "" : " ") + l.at(0).get<std::string>() + "=" + l.at(1).get<std::string>();
  }
  if (r.config.contains("tags") && r.config["tags"].is_object())
    for (const auto& [k, v] : r.config["tags"].items())
      out += (out.empty() ? "" : " ") + fmt::format("tags.{}={}", k, v.is_string() ? v.get<std::string>() : v.dump());
  return out;
}

// A column's text for a run; nullopt when `name` is no column, run key or result key.
std::optional<std::string> column(const std::string& name, const ssr::store::Run& r,
                                  const std::vector<ssr::store::Result>& results, const ssr::store::Store& store,
                                  std::map<int64_t, std::optional<ssr::store::Sweep>>& sweeps, double stale_after) {
  if (name == "router") return ssr::store::router_label(r);
  if (name == "step") return std::to_string(r.step);
  if (name == "started") return fmt_time(r.started_at);
  if (name == "took") {
    const double end = r.ended_at > 0 ? r.ended_at : r.heartbeat_at;
    return r.started_at > 0 ? ssr::train::format_duration(end - r.started_at) : "-";
  }
  if (name == "name") return ssr::store::lookup(r, "run.name", 0).value_or("");
  if (name == "labels") return run_labels(r, store, sweeps);
  if (auto v = ssr::store::lookup(r, name, stale_after)) return v;
  if (auto v = ssr::store::result_value(results, name)) {
    if (v->empty()) return "-";
    return fmt_num(std::stod(*v));
  }
  return std::nullopt;
}

int cmd_runs(const std::string& db, const RunsArgs& a) {
  ssr::store::filter_runs({}, a.where, a.stale_after);  // a bad --where is named before the store
  std::vector<std::string> header = kDefaultColumns;
  if (!a.columns.empty()) {
    header.clear();
    std::stringstream list(a.columns);
    for (std::string c; std::getline(list, c, ',');)
      if (!c.empty()) header.push_back(c);
  }
  const auto own = [](const std::string& c) {
    return std::find(kOwnColumns.begin(), kOwnColumns.end(), c) != kOwnColumns.end();
  };
  for (const auto& c : header)
    if (!own(c)) ssr::store::require_known_key(c, "--columns");
  if (a.sort == "-") throw ConfigError("--sort: give a column after '-' (-valid sorts by valid, descending)");
  const std::string sort_key = a.sort.starts_with("-") ? a.sort.substr(1) : a.sort;
  if (!sort_key.empty() && !own(sort_key)) ssr::store::require_known_key(sort_key, "--sort");
  require_store(db);
  ssr::store::Store store(db, ssr::store::Store::Access::read);
  const auto stored = store.runs();
  auto runs = ssr::store::filter_runs(stored, a.where, a.stale_after, &store);
  // Why nothing matched (a misspelt result name is an error), said before anything is printed.
  const std::string hint = runs.empty() && !a.where.empty() ? ssr::store::no_match_hint(stored, a.where, &store) : "";
  std::map<int64_t, std::optional<ssr::store::Sweep>> sweeps;
  std::map<int64_t, std::vector<ssr::store::Result>> results;
  for (const auto& r : runs) results[r.id] = store.results(r.id);
  if (!sort_key.empty()) {
    // Numbers by value, text as text; runs without the key go last either way.
    std::map<int64_t, std::string> key;
    for (const auto& r : runs) {
      auto v = column(sort_key, r, results[r.id], store, sweeps, a.stale_after).value_or("");
      key[r.id] = v == "-" ? "" : v;
    }
    const bool desc = a.sort.starts_with("-");
    std::stable_sort(runs.begin(), runs.end(), [&](const auto& x, const auto& y) {
      const auto &kx = key[x.id], &ky = key[y.id];
      if (kx.empty() || ky.empty()) return !kx.empty() && ky.empty();
      char *ex = nullptr, *ey = nullptr;
      const double nx = std::strtod(kx.c_str(), &ex), ny = std::strtod(ky.c_str(), &ey);
      if (*ex == '\0' && *ey == '\0') return desc ? nx > ny : nx < ny;
      return desc ? kx > ky : kx < ky;
    });
  }
  if (a.limit > 0 && static_cast<int64_t>(runs.size()) > a.limit) runs.resize(static_cast<size_t>(a.limit));

  // valid/test: the unit goes into the header when every listed run has the same one.
  std::vector<std::string> shown = header;
  std::map<std::string, bool> unit_in_cells;
  for (size_t c = 0; c < header.size(); ++c) {
    if (header[c] != "valid" && header[c] != "test") continue;
    std::set<std::string> units;
    for (const auto& r : runs)
      if (auto u = ssr::store::headline_name(results[r.id], header[c]); !u.empty()) units.insert(u);
    if (units.size() == 1) shown[c] += " " + *units.begin();
    unit_in_cells[header[c]] = units.size() > 1;
  }
  std::vector<std::vector<std::string>> rows;
  json all = json::array();
  for (const auto& r : runs) {
    std::vector<std::string> row;
    for (const auto& c : header) {
      std::string v = column(c, r, results[r.id], store, sweeps, a.stale_after).value_or("");
      if (unit_in_cells[c] && v != "-") v += " " + ssr::store::headline_name(results[r.id], c);
      row.push_back(v);
    }
    rows.push_back(std::move(row));
    json j = {{"id", r.id},
              {"status", r.shown_status(a.stale_after)},
              {"config_hash", r.config_hash},
              {"seed", r.seed},
              {"step", r.step},
              {"git_rev", r.info.git_rev},
              {"host", r.info.host},
              {"device", r.info.device},
              {"started_at", r.started_at},
              {"ended_at", r.ended_at},
              {"heartbeat_at", r.heartbeat_at},
              {"error", r.error},
              {"labels", run_labels(r, store, sweeps)},
              {"config", r.config}};
    if (r.sweep_id) j["sweep_id"] = *r.sweep_id;
    if (r.job_num) j["job_num"] = *r.job_num;
    if (!r.damage.empty()) j["damage"] = r.damage;
    for (const auto& res : results[r.id])
      j["results"][res.split][res.name] = std::isnan(res.value) ? json("NaN") : json(res.value);
    all.push_back(j);
  }
  if (a.format == "json") {
    std::cout << all.dump(2) << "\n";
  } else if (a.format == "csv") {
    std::string h;
    for (const auto& c : shown) h += (h.empty() ? "" : ",") + csv_field(c);
    std::cout << h << "\n";
    for (const auto& r : rows) {
      std::string s;
      for (size_t c = 0; c < r.size(); ++c) s += (c ? "," : "") + csv_field(r[c]);
      std::cout << s << "\n";
    }
  } else {
    print_table(shown, rows);
    for (const auto& r : runs)
      if (!r.damage.empty()) std::cerr << fmt::format("run {} is damaged: {} (ssr show {})\n", r.id, r.damage, r.id);
    if (rows.empty()) std::cout << "(no runs" << (a.where.empty() ? "" : " match " + a.where) << " in " << db << ")\n";
    if (!hint.empty()) std::cerr << "hint: " << hint << "\n";
  }
  return 0;
}

// resolve(), and where an override holds a comma list or a range (a multirun's axis), an error
// that says so: `ssr sweep` runs one job per value.
ssr::config::Config resolve_or_suggest_sweep(const std::string& file, const std::vector<std::string>& overrides) {
  try {
    return ssr::config::resolve(file, overrides);
  } catch (const ConfigError& e) {
    for (const auto& o : overrides) {
      const auto eq = o.find('=');
      if (eq == std::string::npos) continue;
      const std::string value = o.substr(eq + 1);
      if (value.rfind("range(", 0) == 0 || (value.find(',') != std::string::npos && value.front() != '[' &&
                                            value.front() != '{' && value.front() != '"'))
        throw ConfigError(
            fmt::format("{}; {} is a list of values: `ssr sweep {} ...` runs one job per value", e.what(), o, file));
    }
    throw;
  }
}

int cmd_show(const std::string& db, int64_t id, const std::string& format, double stale_after, bool all_config) {
  require_store(db);
  ssr::store::Store store(db);
  auto run = store.run(id);
  if (!run) throw ConfigError(fmt::format("RUN_ID: no run {} in {} (ssr runs lists them)", id, db));
  const auto& r = *run;
  auto results = store.results(id);
  auto metrics = store.metrics(id);
  auto timings = store.timings(id);
  // Mean seconds per phase over the logged steps (the first step includes warm-up effects).
  std::map<std::string, std::pair<double, int64_t>> phase;
  for (const auto& t : timings) {
    phase[t.phase].first += t.seconds;
    phase[t.phase].second += 1;
  }
  // Last value of each training curve.
  std::map<std::pair<std::string, std::string>, ssr::store::Metric> last;
  for (const auto& m : metrics) last[{m.split, m.name}] = m;

  if (format == "json") {
    json j = {{"id", r.id},
              {"status", r.shown_status(stale_after)},
              {"config_hash", r.config_hash},
              {"config", r.config},
              {"seed", r.seed},
              {"git_rev", r.info.git_rev},
              {"host", r.info.host},
              {"device", r.info.device},
              {"torch_version", r.info.torch_version},
              {"step", r.step},
              {"error", r.error}};
    if (!r.damage.empty()) j["damage"] = r.damage;
    for (const auto& res : results)
      j["results"][res.split][res.name] = std::isnan(res.value) ? json("NaN") : json(res.value);
    for (const auto& [p, v] : phase) j["timings_mean_s"][p] = v.first / v.second;
    std::cout << j.dump(2) << "\n";
    return 0;
  }
  std::cout << fmt::format("run {}  status {}  hash {}  seed {}  step {}\n", r.id, r.shown_status(stale_after),
                           r.config_hash, r.seed, r.step);
  std::cout << fmt::format("git {}  host {}  device {}  torch {}\n", r.info.git_rev, r.info.host, r.info.device,
                           r.info.torch_version);
  std::cout << fmt::format("started {}  ended {}  heartbeat {}\n", fmt_time(r.started_at), fmt_time(r.ended_at),
                           fmt_time(r.heartbeat_at));
  if (!r.error.empty()) std::cout << "error: " << r.error << "\n";
  std::cout << "\nresults:\n";
  for (const auto& res : results)
    std::cout << fmt::format("  {:<8} {:<10} {}\n", res.split, res.name, fmt_num(res.value));
  if (results.empty()) std::cout << "  (none)\n";
  std::cout << "\ntimings (mean seconds per step):\n";
  for (const auto& [p, v] : phase)
    std::cout << fmt::format("  {:<10} {:.4f}  over {} steps\n", p, v.first / v.second, v.second);
  // A damaged row still shows its results and curves; only what needs its config is left out.
  std::optional<ssr::config::Config> cfg;
  std::string damage;
  try {
    cfg = ssr::store::stored_config(r);
  } catch (const ssr::config::ConfigError& e) {
    damage = e.what();
  }
  if (const auto e = cfg ? ssr::models::sinkhorn_expectation(*cfg) : std::nullopt) {
    // Observed: the Sinkhorn calls of every logging window, summed (validation calls included
    // for the Sinkhorn baseline, which solves in evaluation too).
    std::map<std::string, double> observed;
    for (const auto& m : metrics)
      if (m.split == "train" && m.name.size() > 15 && m.name.ends_with("/sinkhorn_calls"))
        observed[m.name.substr(0, m.name.find('/'))] += m.value;
    double total = 0;
    std::string per_layer;
    for (const auto& [layer, n] : observed) {
      total += n;
      per_layer += fmt::format("{}{} {:.0f}", per_layer.empty() ? "" : ", ", layer, n);
    }
    std::cout << fmt::format("\nSinkhorn forwards: expected {:.4g} (p {:g} x {} router calls), observed {:.0f}{}\n",
                             e->expected(), e->p, e->router_calls, total,
                             observed.empty() ? " (no layer*/sinkhorn_calls metrics: run from before they were logged)"
                                              : " (" + per_layer + ")");
  }
  std::cout << "\nlast logged metrics:\n";
  for (const auto& [k, m] : last)
    if (k.second.find('/') == std::string::npos)
      std::cout << fmt::format("  {:<6} {:<14} {:<12} step {}\n", k.first, k.second, fmt_num(m.value), m.step);
  if (!cfg) {
    std::cout << "\nconfig:\n  (" << damage << ")\n";
  } else if (all_config) {
    std::cout << "\nconfig:\n" << cfg->to_yaml();
  } else {
    // The keys that make this run what it is; the defaults only on request.
    std::cout << "\nconfig (keys not at their default; --config prints all):\n";
    for (const auto& [key, value] : cfg->values()) {
      const auto* k = ssr::config::find_key(key);
      if (k && value == k->def) continue;
      std::cout << fmt::format("  {}: {}\n", key, value.is_string() ? value.get<std::string>() : value.dump());
    }
  }
  return 0;
}

}  // namespace

void add_run_commands(CLI::App& app, Context& ctx) {
  // Options live as long as the app: parsed values are captured by the callbacks below.
  struct State {
    double stale_after = 60;
    std::string train_cfg, show_format = "text", cfg_file;
    std::vector<std::string> train_over, cfg_over;
    bool quiet = false, doc = false, hash_only = false, restart = false, or_from_start = false;
    int64_t show_id = 0;
    bool show_config = false;
    int64_t resume = 0;
    int64_t nproc = 1;
    RunsArgs runs;
  };
  auto st = std::make_shared<State>();
  auto& db = ctx.db;
  auto& stale_after = st->stale_after;
  auto& train_cfg = st->train_cfg;
  auto& train_over = st->train_over;
  auto& quiet = st->quiet;
  auto& show_id = st->show_id;
  auto& show_format = st->show_format;
  auto& cfg_file = st->cfg_file;
  auto& cfg_over = st->cfg_over;
  auto& doc = st->doc;
  auto& hash_only = st->hash_only;

  // ---- train
  auto* train = app.add_subcommand("train", "Train, evaluate and store one run");
  train->add_option("config", train_cfg, "experiment YAML");
  train->add_option("overrides", train_over, "key=value overrides, group=choice, +tags.key=value");
  train->add_option("--db", db, "run store (default: run.db of the config, results/runs.db)");
  train->add_flag("--quiet", quiet, "no progress output");
  train->add_option(
      "--resume", st->resume,
      "continue stored run RUN_ID from its last checkpoint (from step 0 when it has none), with its stored config");
  train->add_flag("--restart", st->restart,
                  "with --resume: train the run again from step 0 instead of continuing from a checkpoint (one "
                  "that is missing, unfinished or another run's)");
  train->add_flag("--or-from-start", st->or_from_start,
                  "with --resume: a run without a checkpoint trains from step 0, one with a checkpoint continues "
                  "(what a sweep job does; its ranks are started with it)");
  train->add_option("--nproc", st->nproc, "data-parallel ranks started on this machine (sets run.nproc)")
      ->check(CLI::Range(int64_t{1}, int64_t{65536}));
  train->footer(
      "Examples:\n"
      "  ssr train experiments/demo.yaml\n"
      "  ssr train experiments/demo.yaml router=ssr_l router.p=1e-2 run.seed=2\n"
      "  ssr train experiments/demo.yaml train.steps=50 +tags.note=smoke --db /tmp/runs.db\n"
      "  ssr train --resume 7\n"
      "  ssr train experiments/demo.yaml --nproc 2\n"
      "  srun -n 4 ssr train experiments/demo.yaml   # one rank per task (RANK/WORLD_SIZE or SLURM_* variables)");

  // ---- runs
  auto* runs = app.add_subcommand("runs", "List stored runs");
  auto wheres = std::make_shared<std::vector<std::string>>();
  runs->add_option(
      "--where", *wheres,
      "conditions KEY=V, KEY!=V, KEY<V, <=, >, >=, comma-separated or repeated; KEY: a config key, a group, a "
      "result (valid, test, SPLIT/NAME) or id, status, sweep, job, hash, seed, host, device, git");
  runs->add_option("--sort", st->runs.sort, "a column or key to sort by; -KEY for descending (numbers by value)");
  runs->add_option("--limit", st->runs.limit, "at most N runs, after sorting")
      ->check(CLI::Range(int64_t{1}, INT64_MAX));
  runs->add_option("--columns", st->runs.columns,
                   "comma-separated: id, status, router, data, model, seed, step, valid, test, took, labels (the "
                   "default), started, name, hash, or any key --where takes");
  runs->add_option("--format", st->runs.format, "table, csv or json")->check(CLI::IsMember({"table", "csv", "json"}));
  runs->add_option("--db", db, "run store")->capture_default_str();
  runs->add_option("--stale-after", st->runs.stale_after, "seconds without heartbeat before a running run is stale")
      ->capture_default_str()
      ->check(kSeconds);
  runs->footer(
      "Examples:\n"
      "  ssr runs\n"
      "  ssr runs --where router=ssr_l,status=finished\n"
      "  ssr runs --where 'valid<30,router.p>=0.001' --sort valid --limit 5\n"
      "  ssr runs --where sweep=2 --columns id,labels,valid/ppl,train/load_cv --format csv\n"
      "  sqlite3 results/runs.db \"SELECT id, status, config_hash FROM runs\"");

  // ---- show
  auto* show = app.add_subcommand("show", "One run: resolved config, results, timings");
  show->add_option("run_id", show_id, "run id (see ssr runs)")->required();
  show->add_option("--db", db, "run store")->capture_default_str();
  show->add_option("--format", show_format, "text or json")->check(CLI::IsMember({"text", "json"}));
  show->add_flag("--config", st->show_config, "print every config key (default: those not at their default)");
  show->add_option("--stale-after", stale_after, "seconds without heartbeat before a running run is stale")
      ->check(kSeconds);
  show->footer("Examples:\n  ssr show 3\n  ssr show 3 --format json | jq .results");

  // ---- rm
  auto rm_ids = std::make_shared<std::vector<int64_t>>();
  auto rm_yes = std::make_shared<bool>(false);
  auto* rm = app.add_subcommand("rm", "Delete runs: their rows in the store and their checkpoint folders");
  rm->add_option("runs", *rm_ids, "run ids")->required()->expected(1, 1 << 20);
  rm->add_flag("--yes", *rm_yes, "do it (without: list what would be deleted)");
  rm->add_option("--db", db, "run store")->capture_default_str();
  rm->footer(
      "A run that a live process still trains is refused. A sweep's job whose run is deleted shows as missing; `ssr "
      "sweep --resume` runs it again.\n"
      "Examples:\n  ssr rm 3 4\n  ssr rm 3 4 --yes");
  rm->callback([rm_ids, rm_yes, st, &ctx] {
    require_store(ctx.db);
    ssr::store::Store store(ctx.db, *rm_yes ? ssr::store::Store::Access::write : ssr::store::Store::Access::read);
    std::vector<fs::path> dirs;
    for (const auto id : *rm_ids) {
      const auto r = store.run(id);
      if (!r) throw ConfigError(fmt::format("rm: no run {} in {} (ssr runs lists them)", id, ctx.db));
      dirs.push_back(ssr::train::run_dir(ssr::store::lookup(*r, "run.out_dir", 0).value_or(""), store, id));
      std::cout << fmt::format(
          "run {} ({}, {}){}{}\n", id, r->shown_status(st->stale_after), ssr::store::router_label(*r),
          r->sweep_id ? fmt::format(", sweep {} job {}", *r->sweep_id, r->job_num.value_or(-1)) : "",
          !dirs.back().empty() && fs::exists(dirs.back()) ? ", checkpoints " + dirs.back().string() : "");
    }
    if (!*rm_yes) {
      std::cout << "nothing deleted: add --yes to delete these runs and their checkpoints\n";
      return;
    }
    store.delete_runs(*rm_ids, st->stale_after);
    for (const auto& d : dirs)
      if (!d.empty()) ssr::train::remove_run_dir(d);
    std::cout << fmt::format("deleted {} run(s) from {}\n", rm_ids->size(), ctx.db);
  });

  // ---- config
  auto* cfgcmd = app.add_subcommand("config", "Print the fully resolved config (every key, defaults included)");
  auto* cfg_file_opt = cfgcmd->add_option("config", cfg_file, "experiment YAML");
  auto* cfg_over_opt = cfgcmd->add_option("overrides", cfg_over, "key=value overrides, group=choice");
  cfgcmd->add_flag("--doc", doc, "print every key with type, default, range and documentation")
      ->excludes(cfg_file_opt)
      ->excludes(cfg_over_opt);
  cfgcmd->add_flag("--hash", hash_only, "print only the configuration hash");
  cfgcmd->add_option("--db", db, "run store, as ssr train --db would set run.db (unhashed)");
  cfgcmd->footer(
      "Examples:\n"
      "  ssr config --doc\n"
      "  ssr config experiments/demo.yaml router=ssr_s router.xi=0.1\n"
      "  ssr config experiments/demo.yaml --hash");

  train->callback([st, &ctx, train] {
    ssr::train::Options opts;
    opts.quiet = st->quiet;
    ssr::config::Config cfg;
    if (train->count("--resume")) {
      if (!st->train_cfg.empty() || !st->train_over.empty())
        throw ConfigError("--resume: a resumed run keeps its stored config; drop CONFIG and overrides");
      require_store(ctx.db);
      ssr::store::Store store(ctx.db);
      auto run = store.run(st->resume);
      if (!run) throw ConfigError(fmt::format("--resume: no run {} in {}", st->resume, ctx.db));
      if (run->status == "finished") throw ConfigError(fmt::format("--resume: run {} already finished", st->resume));
      cfg = ssr::store::stored_config(*run);
      opts.run = st->resume;
      opts.require_checkpoint = !st->or_from_start;
      opts.restart = st->restart;
    } else {
      if (st->restart || st->or_from_start)
        throw ConfigError(fmt::format("{}: only with --resume RUN_ID", st->restart ? "--restart" : "--or-from-start"));
      if (st->train_cfg.empty()) throw ConfigError("train: give CONFIG.yaml (or --resume RUN_ID)");
      cfg = resolve_or_suggest_sweep(st->train_cfg, st->train_over);
    }
    if (train->count("--nproc")) {
      if (opts.run && cfg.i("run.nproc") != st->nproc)
        throw ConfigError(fmt::format("--nproc: run {} was trained on {} ranks; resume it with --nproc {}", st->resume,
                                      cfg.i("run.nproc"), cfg.i("run.nproc")));
      cfg.set("run.nproc", st->nproc, "--nproc");
    }
    if (train->count("--db") || opts.run) cfg.set("run.db", ctx.db, "--db");
    const auto env = ssr::dist::environment();
    if (env.source.empty() && cfg.i("run.nproc") > 1) {
      // Reported once here, not by every rank.
      ssr::dist::check_ranks(cfg);
      ctx.exit_code = ssr::dist::launch(static_cast<int>(cfg.i("run.nproc")), ctx.argv, cfg.s("run.db"));
      return;
    }
    ssr::dist::check_world(cfg, env);
    opts.dist = env;
    const std::string db = cfg.s("run.db");
    const bool fresh = !fs::exists(db);
    ssr::train::Outcome out;
    try {
      ssr::store::Store store(db);
      // Training the same config again is allowed (a timing, a rerun on other hardware), but never silent.
      if (!opts.run && env.rank == 0)
        if (const auto done = store.done_run(cfg.hash()))
          std::cerr << fmt::format(
              "note: this config (hash {}) already finished as run {} (ssr show {} --db {}); training it again as a "
              "new run\n",
              cfg.hash(), *done, *done, db);
      out = ssr::train::train(cfg, store, opts);
    } catch (...) {
      // Stopped before a run row existed (a bad value, an allocation that failed): a store this
      // command created is not left behind empty.
      try {
        // A disk full before the first table leaves a zero-byte file, which no reader opens.
        if (fresh && fs::exists(db) &&
            (fs::file_size(db) == 0 || ssr::store::Store(db, ssr::store::Store::Access::read).runs().empty()))
          for (const auto* suffix : {"", "-wal", "-shm"}) fs::remove(db + suffix);
      } catch (const std::exception&) {
        // the store cannot be read: leave it as it is, and report the first error
      }
      throw;
    }
    if (env.rank == 0)
      std::cerr << fmt::format("run {} {}: stored in {}\n  ssr show {} --db {}\n  ssr runs --db {}\n", out.run_id,
                               out.status, db, out.run_id, db, db);
    // 130 as a shell reports a command stopped by Ctrl-C: `--resume` continues the run; 75 after
    // SIGUSR1, which wrote a checkpoint for a requeue.
    ctx.exit_code = out.status == "failed"        ? 1
                    : out.status == "interrupted" ? (out.signal == SIGUSR1 ? kExitRequeue : 130)
                                                  : 0;
  });
  runs->callback([st, wheres, &ctx] {
    st->runs.where = store::join_where(*wheres);
    ctx.exit_code = cmd_runs(ctx.db, st->runs);
  });
  show->callback(
      [st, &ctx] { ctx.exit_code = cmd_show(ctx.db, st->show_id, st->show_format, st->stale_after, st->show_config); });
  cfgcmd->callback([st, cfgcmd, &ctx] {
    if (st->doc) {
      std::cout << ssr::config::schema_doc();
      return;
    }
    if (st->cfg_file.empty()) throw ConfigError("config: give CONFIG.yaml (or --doc)");
    auto cfg = resolve_or_suggest_sweep(st->cfg_file, st->cfg_over);
    if (cfgcmd->count("--db")) cfg.set("run.db", ctx.db, "--db");
    if (st->hash_only) {
      std::cout << cfg.hash() << "\n";
      return;
    }
    std::cout << "# config hash " << cfg.hash() << "\n" << cfg.to_yaml();
    if (const auto e = ssr::models::sinkhorn_expectation(cfg))
      std::cout << fmt::format(
          "# expected Sinkhorn forwards in training: {:.4g} (p {:g} x {} router calls: {} layers x {} "
          "steps x calls per step, one rank)\n",
          e->expected(), e->p, e->router_calls, cfg.i("model.n_layers"), cfg.i("train.steps"));
  });

  // ---- params
  auto* params = app.add_subcommand("params", "Parameter count of a config's model, by component");
  auto params_cfg = std::make_shared<std::pair<std::string, std::vector<std::string>>>();
  params->add_option("config", params_cfg->first, "experiment YAML")->required();
  params->add_option("overrides", params_cfg->second, "key=value overrides, group=choice");
  params->footer("Examples:\n  ssr params experiments/demo.yaml model=wt103-medium data=wikitext103");
  params->callback([params_cfg] {
    auto cfg = ssr::config::resolve(params_cfg->first, params_cfg->second);
    if (cfg.s("model.arch") == "swin_moe") {
      for (const auto& row : ssr::models::swin_parameter_count(cfg))
        std::cout << fmt::format("{:<14} {:>14L}\n", row.component, row.count);
      return;
    }
    const int64_t vocab = ssr::data::load_corpus(cfg).vocab_size();
    std::cout << fmt::format("vocabulary {}\n", vocab);
    for (const auto& row : ssr::models::parameter_count(cfg, vocab))
      std::cout << fmt::format("{:<14} {:>14L}\n", row.component, row.count);
  });

  // ---- data attack
  auto* data = app.add_subcommand("data", "Data preparation");
  data->require_subcommand(1);
  auto* attack = data->add_subcommand("attack", "Write the attacked (\"AAA\" word-swap) valid and test splits");
  auto attack_cfg = std::make_shared<std::pair<std::string, std::vector<std::string>>>();
  attack->add_option("config", attack_cfg->first, "experiment YAML (data.* and data.attack_* keys)")->required();
  attack->add_option("overrides", attack_cfg->second, "key=value overrides");
  attack->footer("Examples:\n  ssr data attack experiments/demo.yaml data.attack_seed=2");
  attack->callback([attack_cfg] {
    auto cfg = ssr::config::resolve(attack_cfg->first, attack_cfg->second);
    std::cout << ssr::data::write_attacked_splits(cfg).dump(2) << "\n";
  });
}

}  // namespace ssr::cli
