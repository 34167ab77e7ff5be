// train, runs, show, config, params, data: the commands around one run and the store.
#include <filesystem>
#include <fmt/format.h>

#include <cmath>
#include <cstdio>
#include <iostream>

#include "harness/cli/commands.hpp"
#include "harness/config/config.hpp"
#include "harness/data/attack.hpp"
#include "harness/data/corpus.hpp"
#include "harness/dist/dist.hpp"
#include "harness/dist/launch.hpp"
#include "harness/store/query.hpp"
#include "harness/store/store.hpp"
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

// The headline result of a split (ppl or bpc), "-" when absent.
std::string headline(const std::vector<ssr::store::Result>& results, const std::string& split) {
  for (const auto& r : results)
    if (r.split == split && (r.name == "ppl" || r.name == "bpc")) return fmt_num(r.value);
  return "-";
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

int cmd_runs(const std::string& db, const std::string& where, const std::string& format, double stale_after) {
  ssr::store::filter_runs({}, where, stale_after);  // a bad --where is named before the store
  require_store(db);
  ssr::store::Store store(db);
  auto runs = ssr::store::filter_runs(store.runs(), where, stale_after);
  const std::vector<std::string> header = {"id",   "status", "router", "model",   "hash", "seed",
                                           "step", "valid",  "test",   "started", "took", "name"};
  std::vector<std::vector<std::string>> rows;
  json all = json::array();
  for (const auto& r : runs) {
    auto results = store.results(r.id);
    double end = r.ended_at > 0 ? r.ended_at : r.heartbeat_at;
    rows.push_back({std::to_string(r.id), r.shown_status(stale_after), ssr::store::router_label(r),
                    ssr::store::lookup(r, "model", 0).value_or(""), r.config_hash, std::to_string(r.seed),
                    std::to_string(r.step), headline(results, "valid"), headline(results, "test"),
                    fmt_time(r.started_at), r.started_at > 0 ? ssr::train::format_duration(end - r.started_at) : "-",
                    ssr::store::lookup(r, "run.name", 0).value_or("")});
    json j = {{"id", r.id},
              {"status", r.shown_status(stale_after)},
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
              {"config", r.config}};
    if (r.sweep_id) j["sweep_id"] = *r.sweep_id;
    if (r.job_num) j["job_num"] = *r.job_num;
    for (const auto& res : results)
      j["results"][res.split][res.name] = std::isnan(res.value) ? json("NaN") : json(res.value);
    all.push_back(j);
  }
  if (format == "json") {
    std::cout << all.dump(2) << "\n";
  } else if (format == "csv") {
    std::string h;
    for (const auto& c : header) h += (h.empty() ? "" : ",") + c;
    std::cout << h << "\n";
    for (const auto& r : rows) {
      std::string s;
      for (size_t c = 0; c < r.size(); ++c) s += (c ? "," : "") + csv_field(r[c]);
      std::cout << s << "\n";
    }
  } else {
    print_table(header, rows);
    if (rows.empty()) std::cout << "(no runs" << (where.empty() ? "" : " match " + where) << " in " << db << ")\n";
  }
  return 0;
}

int cmd_show(const std::string& db, int64_t id, const std::string& format, double stale_after) {
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
  const auto cfg = ssr::config::Config::from_json(r.config);
  if (const auto e = ssr::models::sinkhorn_expectation(cfg)) {
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
  std::cout << "\nconfig:\n" << cfg.to_yaml();
  return 0;
}

}  // namespace

void add_run_commands(CLI::App& app, Context& ctx) {
  // Options live as long as the app: parsed values are captured by the callbacks below.
  struct State {
    double stale_after = 60;
    std::string train_cfg, where, format = "table", show_format = "text", cfg_file;
    std::vector<std::string> train_over, cfg_over;
    bool quiet = false, doc = false, hash_only = false;
    int64_t show_id = 0;
    int64_t resume = 0;
    int64_t nproc = 1;
  };
  auto st = std::make_shared<State>();
  auto& db = ctx.db;
  auto& stale_after = st->stale_after;
  auto& train_cfg = st->train_cfg;
  auto& train_over = st->train_over;
  auto& quiet = st->quiet;
  auto& where = st->where;
  auto& format = st->format;
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
  runs->add_option("--where", where, "conditions key=value or key!=value, comma-separated");
  runs->add_option("--format", format, "table, csv or json")->check(CLI::IsMember({"table", "csv", "json"}));
  runs->add_option("--db", db, "run store")->capture_default_str();
  runs->add_option("--stale-after", stale_after, "seconds without heartbeat before a running run is stale")
      ->capture_default_str();
  runs->footer(
      "Examples:\n"
      "  ssr runs\n"
      "  ssr runs --where router=ssr_l,status=finished\n"
      "  ssr runs --where 'router.p=0.001,run.seed!=1' --format csv\n"
      "  sqlite3 results/runs.db \"SELECT id, status, config_hash FROM runs\"");

  // ---- show
  auto* show = app.add_subcommand("show", "One run: resolved config, results, timings");
  show->add_option("run_id", show_id, "run id (see ssr runs)")->required();
  show->add_option("--db", db, "run store")->capture_default_str();
  show->add_option("--format", show_format, "text or json")->check(CLI::IsMember({"text", "json"}));
  show->add_option("--stale-after", stale_after, "seconds without heartbeat before a running run is stale");
  show->footer("Examples:\n  ssr show 3\n  ssr show 3 --format json | jq .results");

  // ---- config
  auto* cfgcmd = app.add_subcommand("config", "Print the fully resolved config (every key, defaults included)");
  auto* cfg_file_opt = cfgcmd->add_option("config", cfg_file, "experiment YAML");
  auto* cfg_over_opt = cfgcmd->add_option("overrides", cfg_over, "key=value overrides, group=choice");
  cfgcmd->add_flag("--doc", doc, "print every key with type, default, range and documentation")
      ->excludes(cfg_file_opt)
      ->excludes(cfg_over_opt);
  cfgcmd->add_flag("--hash", hash_only, "print only the configuration hash");
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
      cfg = ssr::config::Config::from_json(run->config);
      opts.run = st->resume;
    } else {
      if (st->train_cfg.empty()) throw ConfigError("train: give CONFIG.yaml (or --resume RUN_ID)");
      cfg = ssr::config::resolve(st->train_cfg, st->train_over);
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
      out = ssr::train::train(cfg, store, opts);
    } catch (const ConfigError&) {
      // Rejected before a run row existed: a store this command created is left behind empty.
      if (fresh && fs::exists(db) && ssr::store::Store(db).runs().empty())
        for (const auto* suffix : {"", "-wal", "-shm"}) fs::remove(db + suffix);
      throw;
    }
    if (env.rank == 0)
      std::cerr << fmt::format("run {} {}: stored in {}\n  ssr show {} --db {}\n  ssr runs --db {}\n", out.run_id,
                               out.status, db, out.run_id, db, db);
    // 130 as a shell reports a command stopped by Ctrl-C: `--resume` continues the run.
    ctx.exit_code = out.status == "failed" ? 1 : out.status == "interrupted" ? 130 : 0;
  });
  runs->callback([st, &ctx] { ctx.exit_code = cmd_runs(ctx.db, st->where, st->format, st->stale_after); });
  show->callback([st, &ctx] { ctx.exit_code = cmd_show(ctx.db, st->show_id, st->show_format, st->stale_after); });
  cfgcmd->callback([st] {
    if (st->doc) {
      std::cout << ssr::config::schema_doc();
      return;
    }
    if (st->cfg_file.empty()) throw ConfigError("config: give CONFIG.yaml (or --doc)");
    auto cfg = ssr::config::resolve(st->cfg_file, st->cfg_over);
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
