// report: paper tables (md, tex, csv) and figures (tidy csv + a gnuplot script) from the store;
// compare: runs side by side; plot: a metric against the step through gnuplot.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "analysis/compare.hpp"
#include "analysis/plot.hpp"
#include "analysis/report.hpp"
#include "harness/store/query.hpp"
#include "harness/cli/commands.hpp"
#include "harness/config/config.hpp"
#include "harness/store/store.hpp"

namespace fs = std::filesystem;

namespace ssr::cli {

void add_report_commands(CLI::App& app, Context& ctx) {
  struct Args {
    std::string name, scale, format = "md", out, experiments = std::string(SSR_SOURCE_DIR) + "/experiments";
    std::vector<std::string> overrides;
    bool list = false;
  };
  auto a = std::make_shared<Args>();
  auto* rep = app.add_subcommand("report", "Rebuild a paper table or figure from the run store");
  rep->add_option("name", a->name, "table1 ... table9, fig2 ... fig5 (--list shows every report)");
  rep->add_option("overrides", a->overrides,
                  "the key=value overrides the sweep was run with (they are part of each job's hash)");
  rep->add_option("--db", ctx.db, "run store")->capture_default_str();
  rep->add_option("--scale", a->scale, "scale of the experiment's jobs (default: its first, e.g. paper)");
  rep->add_option("--format", a->format, "what to print: md, tex or csv (all are written)")
      ->check(CLI::IsMember({"md", "tex", "csv"}));
  rep->add_option("--out", a->out, "output folder (default results/tables or results/figures beside the db)");
  rep->add_option("--experiments", a->experiments, "folder of experiment files declaring reports")
      ->capture_default_str();
  rep->add_flag("--list", a->list, "list the reports and the experiment file of each");
  rep->footer(
      "Examples:\n"
      "  ssr report table1 --scale demo\n"
      "  ssr report table1 --format tex > table1.tex\n"
      "  ssr report fig4 --scale demo && gnuplot results/figures/fig4.gp\n"
      "  ssr report table1 train.steps=40000   # jobs swept with `ssr sweep experiments/table1.yaml "
      "train.steps=40000`\n"
      "  ssr report --list");
  rep->callback([a, &ctx] {
    if (a->list) {
      if (!a->name.empty() || !a->overrides.empty())
        throw config::ConfigError(fmt::format("--list: takes no report name or override (got '{}')",
                                              a->name.empty() ? a->overrides.front() : a->name));
      for (const auto& n : analysis::report_names(a->experiments))
        std::cout << fmt::format("{:<10} {}\n", n, analysis::find_report(n, a->experiments));
      return;
    }
    if (a->name.empty()) throw config::ConfigError("report: give a report name (ssr report --list shows them)");
    if (!fs::exists(ctx.db))
      throw config::ConfigError(fmt::format("--db: {} does not exist (run an experiment first)", ctx.db));
    const std::string file = fs::proximate(analysis::find_report(a->name, a->experiments)).string();
    store::Store store(ctx.db);
    const auto out = analysis::build(a->name, file, a->scale, a->overrides, store);
    const bool fig = out.kind == "figure";
    const fs::path dir =
        a->out.empty() ? fs::path(ctx.db).parent_path() / (fig ? "figures" : "tables") : fs::path(a->out);
    fs::create_directories(dir);
    const fs::path base = dir / a->name;
    std::ofstream(base.string() + ".csv") << out.csv;
    std::ofstream(base.string() + ".md") << out.md;
    if (fig) {
      // A complete gnuplot script: the figure can be redrawn from the csv without the store.
      const auto kind_script = fs::absolute(fs::path(SSR_SOURCE_DIR) / "analysis" / (out.figure + ".gp"));
      std::ofstream(base.string() + ".gp")
          << out.gnuplot << fmt::format("base = '{}'\nload '{}'\n", fs::absolute(base).string(), kind_script.string());
    } else {
      std::ofstream(base.string() + ".tex") << out.tex;
    }
    std::cout << (a->format == "csv" ? out.csv : a->format == "tex" && !fig ? out.tex : out.md);
    std::cerr << fmt::format(
        "{}: wrote {}.{{{}}}{}\n", a->name, base.string(), fig ? "csv,md,gp" : "md,tex,csv",
        out.missing.empty() ? "" : fmt::format(" ({} planned runs missing, listed in the footer)", out.missing.size()));
  });
}

void add_compare_command(CLI::App& app, Context& ctx) {
  struct Args {
    analysis::CompareRequest req;
    std::vector<std::string> wheres;
    int64_t sweep = 0;
  };
  auto a = std::make_shared<Args>();
  auto* cmp = app.add_subcommand("compare", "Runs side by side: differing config keys, results, paired differences");
  cmp->add_option("runs", a->req.ids, "run ids (the first one's group is the baseline)");
  cmp->add_option("--where", a->wheres, "and every run that meets these conditions (as ssr runs --where)");
  cmp->add_option("--sweep", a->sweep, "and every run that answers this sweep's jobs")
      ->check(CLI::Range(int64_t{1}, INT64_MAX));
  cmp->add_option("--metric", a->req.metrics, "only these results, SPLIT/NAME (valid/ppl); repeatable");
  cmp->add_option("--by", a->req.by,
                  "group by this key (router, router.p, ...) instead of by every key that differs but the seed");
  cmp->add_option("--db", ctx.db, "run store")->capture_default_str();
  cmp->footer(
      "Runs of one configuration but the seed form a group; each other group is paired with the first by seed.\n"
      "Examples:\n"
      "  ssr compare 1 2\n"
      "  ssr compare 1 2 3 4 5 6   # e.g. vanilla seeds 1-3 and ssr_l seeds 1-3: paired Δ with a 95 % interval\n"
      "  ssr compare --sweep 1 --by router --metric valid/ppl\n"
      "  ssr compare --where router=vanilla --where router.p=0.48 --metric test/ppl");
  cmp->callback([a, &ctx] {
    auto req = a->req;
    req.where = store::join_where(a->wheres);
    if (a->sweep) req.where = store::join_where({req.where, fmt::format("sweep={}", a->sweep)});
    store::filter_runs({}, req.where, 60);  // a bad --where is named before the store
    require_store(ctx.db);
    store::Store store(ctx.db, store::Store::Access::read);
    std::cout << analysis::to_markdown(analysis::compare(store, req));
  });
}

namespace {

bool on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::string dirs = path ? path : "";
  for (size_t start = 0; start <= dirs.size();) {
    const size_t end = std::min(dirs.find(':', start), dirs.size());
    if (end > start && ::access((fs::path(dirs.substr(start, end - start)) / program).c_str(), X_OK) == 0) return true;
    start = end + 1;
  }
  return false;
}

// gnuplot on a script we wrote, its output on our stdout (the text plot), no shell in between.
void run_gnuplot(const fs::path& script) {
  const pid_t pid = fork();
  if (pid == 0) {
    execlp("gnuplot", "gnuplot", script.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int status = 0;
  if (pid < 0 || waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
    throw std::runtime_error(fmt::format("gnuplot failed on {} (its message is above)", script.string()));
}

}  // namespace

void add_export_command(CLI::App& app, Context& ctx) {
  auto ids = std::make_shared<std::vector<int64_t>>();
  auto format = std::make_shared<std::string>("csv");
  auto* ex = app.add_subcommand("export", "Every logged metric row of runs, one per step, as csv or json lines");
  ex->add_option("runs", *ids, "run ids")->required()->expected(1, 1 << 20);
  ex->add_option("--format", *format, "csv or jsonl")->check(CLI::IsMember({"csv", "jsonl"}))->capture_default_str();
  ex->add_option("--db", ctx.db, "run store")->capture_default_str();
  ex->footer(
      "Columns: run, step, split, name, value, wall_s (seconds since the run started; nan for the per-expert\n"
      "loads, layerL/expert_load/E: the tokens expert E of layer L received in the logging window).\n"
      "Examples:\n"
      "  ssr export 3 > run3.csv\n"
      "  ssr export 1 2 3 --format jsonl | jq 'select(.name == \"loss\")'");
  ex->callback([ids, format, &ctx] {
    require_store(ctx.db);
    store::Store store(ctx.db, store::Store::Access::read);
    for (const auto id : *ids)
      if (!store.run(id))
        throw config::ConfigError(fmt::format("export: no run {} in {} (ssr runs lists them)", id, ctx.db));
    if (*format == "csv") std::cout << "run,step,split,name,value,wall_s\n";
    for (const auto id : *ids) {
      // The per-expert loads join as metrics of their own: layerL/expert_load/E, tokens in the window.
      auto rows = store.metrics(id);
      for (const auto& l : store.expert_loads(id))
        for (size_t e = 0; e < l.tokens.size(); ++e)
          rows.push_back({l.step, "train", fmt::format("layer{}/expert_load/{}", l.layer, e),
                          static_cast<double>(l.tokens[e]), NAN});
      for (const auto& m : rows) {
        if (*format == "csv")
          std::cout << fmt::format("{},{},{},{},{},{}\n", id, m.step, m.split, m.name, m.value, m.wall_s);
        else
          std::cout << nlohmann::json{{"run", id},      {"step", m.step},   {"split", m.split},
                                      {"name", m.name}, {"value", m.value}, {"wall_s", m.wall_s}}
                           .dump()
                    << "\n";
      }
    }
  });
}

void add_plot_command(CLI::App& app, Context& ctx) {
  auto req = std::make_shared<analysis::PlotRequest>();
  auto out = std::make_shared<std::string>();
  auto* p = app.add_subcommand("plot", "A logged metric against the step: one line per run, or mean and band per --by");
  p->add_option("runs", req->runs, "run ids")->required()->expected(1, 1 << 20);
  p->add_option(
       "--metric", req->metric,
       "logged metric, NAME with --split or SPLIT/NAME (valid/loss; ssr show RUN lists them); layer*/NAME: its "
       "mean over layers; valid: the validation loss")
      ->capture_default_str();
  p->add_option("--split", req->split, "the metric's split: train, valid, ...")->capture_default_str();
  p->add_option("--by", req->by, "config key: one series per value, mean over its runs with a 95 % band");
  auto legend = std::make_shared<std::vector<std::string>>();
  p->add_option("--label", *legend,
                "VALUE=NAME: the key shows NAME for the series of --by VALUE (or of 'run 3'); repeatable");
  p->add_option("--out", *out,
                "FILE.png or FILE.pdf (drawn, with FILE.csv and FILE.gp beside it) or FILE.csv; default: a text "
                "plot here");
  p->add_option("--db", ctx.db, "run store")->capture_default_str();
  p->footer(
      "Examples:\n"
      "  ssr plot 1 2 3                                  # training loss of three runs, as text\n"
      "  ssr plot 1 2 --metric valid --out valid.png     # validation loss to valid.png (and valid.csv, valid.gp)\n"
      "  ssr plot 1 2 3 4 5 6 --by router.name --metric layer*/load_cv --out load_cv.pdf\n"
      "  ssr plot 1 2 3 4 --by router --label vanilla=Vanilla --label ssr_l=SSR-L --metric valid/loss --out v.png");
  p->callback([req, out, legend, p, &ctx] {
    for (const auto& l : *legend) {
      const auto eq = l.find('=');
      if (eq == std::string::npos || eq == 0 || eq + 1 == l.size())
        throw config::ConfigError(fmt::format("--label {}: give VALUE=NAME (e.g. --label vanilla=Vanilla)", l));
      req->legend[l.substr(0, eq)] = l.substr(eq + 1);
    }
    if (req->metric == "valid" && !p->count("--split")) {
      req->split = "valid";
      req->metric = "loss";
    }
    // SPLIT/NAME, as results are named everywhere else (valid/loss, train/layer*/load_cv).
    if (const auto slash = req->metric.find('/');
        !p->count("--split") && slash != std::string::npos && req->metric.rfind("layer", 0) != 0) {
      req->split = req->metric.substr(0, slash);
      req->metric = req->metric.substr(slash + 1);
    }
    const std::string ext = fs::path(*out).extension().string();
    if (!out->empty() && ext != ".png" && ext != ".pdf" && ext != ".csv")
      throw config::ConfigError(fmt::format("--out {}: give a FILE.png, FILE.pdf or FILE.csv", *out));
    require_store(ctx.db);
    store::Store store(ctx.db, store::Store::Access::read);
    const auto plot = analysis::plot_runs(store, *req);
    if (ext == ".csv") {
      std::ofstream(*out) << plot.csv;
      std::cerr << fmt::format("plot: wrote {}\n", *out);
      return;
    }
    if (!on_path("gnuplot"))
      throw config::ConfigError(
          "plot: gnuplot is not on PATH (Debian: apt-get install gnuplot-nox), or write the data with --out FILE.csv");
    // Images keep their csv and gnuplot script beside them, as report figures do; the text plot
    // draws from a scratch folder.
    fs::path base, scratch;
    if (out->empty()) {
      std::string dir = (fs::temp_directory_path() / "ssr-plot.XXXXXX").string();
      if (!mkdtemp(dir.data())) throw std::runtime_error("plot: cannot make a scratch folder under /tmp");
      scratch = dir;
      base = scratch / "plot";
    } else {
      base = fs::absolute(fs::path(*out).replace_extension());
      if (base.has_parent_path()) fs::create_directories(base.parent_path());
    }
    std::ofstream(base.string() + ".csv") << plot.csv;
    std::string gp = fmt::format(
        "title = \"{}\"\nxlabel = \"step\"\nylabel = \"{}\"\nns = {}\nlogy = 0\nformats = \"{}\"\narray "
        "series[{}]\n",
        plot.title, plot.ylabel, plot.series.size(), out->empty() ? "dumb" : ext.substr(1), plot.series.size());
    for (size_t i = 0; i < plot.series.size(); ++i) gp += fmt::format("series[{}] = \"{}\"\n", i + 1, plot.series[i]);
    const auto kind_script = fs::absolute(fs::path(SSR_SOURCE_DIR) / "analysis" / "curves.gp");
    gp += fmt::format("base = '{}'\nload '{}'\n", base.string(), kind_script.string());
    std::ofstream(base.string() + ".gp") << gp;
    std::cout.flush();
    // The scratch files one by one: fs::remove_all binds to a copy in libtorch.so that crashes.
    const auto clean = [&] {
      if (scratch.empty()) return;
      for (const char* ext : {".csv", ".gp"}) fs::remove(base.string() + ext);
      fs::remove(scratch);
    };
    try {
      run_gnuplot(base.string() + ".gp");
    } catch (...) {
      clean();
      throw;
    }
    clean();
    if (scratch.empty())
      std::cerr << fmt::format("plot: wrote {} (data {}.csv, script {}.gp)\n", *out, base.string(), base.string());
  });
}

}  // namespace ssr::cli
