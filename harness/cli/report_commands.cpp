// report: paper tables (md, tex, csv) and figures (tidy csv + a gnuplot script) from the store;
// compare: runs side by side.
#include <fmt/format.h>

#include <filesystem>
#include <fstream>
#include <iostream>

#include "analysis/compare.hpp"
#include "analysis/report.hpp"
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
  auto ids = std::make_shared<std::vector<int64_t>>();
  auto* cmp = app.add_subcommand("compare", "Runs side by side: differing config keys, results, paired differences");
  cmp->add_option("runs", *ids, "two or more run ids")->required()->expected(2, 1 << 20);
  cmp->add_option("--db", ctx.db, "run store")->capture_default_str();
  cmp->footer(
      "Runs of one configuration but the seed form a group; each other group is paired with the first by seed.\n"
      "Examples:\n"
      "  ssr compare 1 2\n"
      "  ssr compare 1 2 3 4 5 6   # e.g. vanilla seeds 1-3 and ssr_l seeds 1-3: paired Δ with a 95 % interval");
  cmp->callback([ids, &ctx] {
    require_store(ctx.db);
    store::Store store(ctx.db);
    std::cout << analysis::compare_runs(store, *ids);
  });
}

}  // namespace ssr::cli
