// Tables: rows x columns of cells, with sections, paired Δ columns and overheads, rendered as
// Markdown, LaTeX and CSV.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "analysis/report_data.hpp"
#include "analysis/stats.hpp"
#include "harness/config/config.hpp"

namespace ssr::analysis {
namespace {

using config::ConfigError;

std::string tex_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '%' || c == '&' || c == '_' || c == '#') out += '\\';
    out += c;
  }
  std::string r;
  for (size_t i = 0; i < out.size(); ++i) {
    if (out.compare(i, 2, "±") == 0) {
      r += "$\\pm$";
      ++i;
      continue;
    }
    if (out.compare(i, 3, "–") == 0) {
      r += "--";
      i += 2;
      continue;
    }
    if (out.compare(i, 2, "Δ") == 0) {
      r += "$\\Delta$";
      ++i;
      continue;
    }
    if (out.compare(i, 2, "ξ") == 0) {
      r += "$\\xi$";
      ++i;
      continue;
    }
    if (out.compare(i, 2, "α") == 0) {
      r += "$\\alpha$";
      ++i;
      continue;
    }
    r += out[i];
  }
  return r;
}

// " (step 1000)" when the column a delta compares was logged at a step, not the run's result.
std::string of_step(const std::vector<Column>& cols, size_t c) {
  auto of = std::find_if(cols.begin(), cols.end(), [&](const Column& x) { return x.label == cols[c].delta_of; });
  return of != cols.end() && of->step >= 0 ? fmt::format(" (at step {})", of->step) : "";
}

}  // namespace

Output build_table(const Data& d, const json& spec, const std::string& name) {
  const std::string where = d.spec.file + ": reports." + name;
  const std::string row_axis = str(spec, "rows"), sec_axis = str(spec, "sections"),
                    seeds = str(spec, "seeds", "run.seed"), baseline = str(spec, "baseline");
  std::vector<std::string> modes;
  if (spec.contains("row_modes"))
    for (const auto& m : spec["row_modes"]) modes.push_back(m.get<std::string>());
  if (row_axis.empty() == modes.empty())
    throw ConfigError(fmt::format("{}: give rows: AXIS or row_modes: [modes]", where));
  if (!spec.contains("columns") || !spec["columns"].is_array())
    throw ConfigError(fmt::format("{}: columns: expected a list", where));
  std::vector<Column> cols;
  for (size_t i = 0; i < spec["columns"].size(); ++i)
    cols.push_back(parse_column(spec["columns"][i], fmt::format("{}.columns[{}]", where, i)));
  for (const auto& c : cols)
    if ((!c.delta_of.empty() || !c.overhead.empty()) && baseline.empty())
      throw ConfigError(fmt::format("{}: column '{}' needs baseline: ROW", where, c.label));

  std::vector<const JobRun*> used;
  for (const auto& jr : d.jobs)
    if (matches_where(jr, spec)) used.push_back(&jr);
  check_axes(used, {row_axis, sec_axis, seeds}, where);
  std::vector<std::string> sections = sec_axis.empty() ? std::vector<std::string>{""} : distinct(used, sec_axis);
  std::vector<std::string> rows = modes.empty() ? distinct(used, row_axis) : modes;

  // cells[section][row][column]
  std::vector<std::vector<std::vector<Cell>>> cells(
      sections.size(), std::vector<std::vector<Cell>>(rows.size(), std::vector<Cell>(cols.size())));
  for (size_t s = 0; s < sections.size(); ++s)
    for (size_t r = 0; r < rows.size(); ++r) {
      std::vector<const JobRun*> cell;
      for (const auto* jr : used)
        if ((sec_axis.empty() || jr->job->label(sec_axis) == sections[s]) &&
            (!modes.empty() || jr->job->label(row_axis) == rows[r]))
          cell.push_back(jr);
      const std::string suffix = modes.empty() || rows[r] == "none" ? "" : "@" + rows[r];
      for (size_t c = 0; c < cols.size(); ++c)
        if (!cols[c].overhead.empty()) {
          if (rows[r] == baseline)
            cells[s][r][c].mean = 0.0;
          else
            cells[s][r][c] = overhead_cell(d, cell, row_axis, baseline, cols[c].overhead);
        } else if (cols[c].delta_of.empty()) {
          cells[s][r][c] = metric_cell(cell, cols[c].split + suffix, cols[c].metric, cols[c].step);
        }
    }
  // Deltas against the baseline row of the same section, paired: each job minus its baseline job
  // (the same labels but the row, so the same seed), mean and interval over the pairs.
  for (size_t c = 0; c < cols.size(); ++c) {
    if (cols[c].delta_of.empty()) continue;
    auto of = std::find_if(cols.begin(), cols.end(), [&](const Column& x) { return x.label == cols[c].delta_of; });
    if (of == cols.end() || !of->delta_of.empty() || !of->overhead.empty())
      throw ConfigError(fmt::format("{}: delta: no metric column labelled '{}'", where, cols[c].delta_of));
    if (std::find(rows.begin(), rows.end(), baseline) == rows.end())
      throw ConfigError(fmt::format("{}: baseline '{}' is not a row", where, baseline));
    for (size_t s = 0; s < sections.size(); ++s)
      for (size_t r = 0; r < rows.size(); ++r) {
        if (rows[r] == baseline) continue;
        std::vector<double> diffs;
        bool nan = false;
        for (const auto* jr : used) {
          if (!sec_axis.empty() && jr->job->label(sec_axis) != sections[s]) continue;
          std::optional<double> v, b;
          if (modes.empty()) {
            if (jr->job->label(row_axis) != rows[r]) continue;
            const auto* bj = baseline_of(d, *jr, row_axis, baseline);
            if (!bj) continue;
            v = value_of(*jr, of->split, of->metric, of->step);
            b = value_of(*bj, of->split, of->metric, of->step);
          } else {  // inference modes of one run: the same job under the row's and the baseline's mode
            auto at = [&](const std::string& mode) { return of->split + (mode == "none" ? "" : "@" + mode); };
            v = value_of(*jr, at(rows[r]), of->metric, of->step);
            b = value_of(*jr, at(baseline), of->metric, of->step);
          }
          if (!v || !b) continue;
          if (std::isnan(*v) || std::isnan(*b))
            nan = true;
          else
            diffs.push_back(cols[c].relative ? 100 * (*v - *b) / *b : *v - *b);
        }
        Cell& cell = cells[s][r][c];
        if (nan)
          cell.mean = NAN;
        else if (!diffs.empty()) {
          const auto e = estimate(diffs);
          cell.mean = e.mean;
          cell.ci = e.ci;
          cell.n = e.n;
          if (!cols[c].correction.empty() && diffs.size() >= 2) cell.p = paired_t_p(diffs);
        }
      }
    if (cols[c].correction.empty()) continue;
    // One family: every row of the column with a test (all sections), adjusted together.
    std::vector<Cell*> family;
    for (auto& sec : cells)
      for (auto& row : sec)
        if (row[c].p) family.push_back(&row[c]);
    std::vector<double> raw;
    for (const auto* x : family) raw.push_back(*x->p);
    const auto adjusted = holm(raw);
    for (size_t i = 0; i < family.size(); ++i) family[i]->p = adjusted[i];
  }
  // Best (bold) and second best (underlined) per section and ranked column.
  std::vector<std::vector<std::vector<int>>> place(
      sections.size(), std::vector<std::vector<int>>(rows.size(), std::vector<int>(cols.size(), 0)));
  for (size_t s = 0; s < sections.size(); ++s)
    for (size_t c = 0; c < cols.size(); ++c) {
      if (!cols[c].rank) continue;
      std::vector<std::pair<double, size_t>> v;
      for (size_t r = 0; r < rows.size(); ++r)
        if (cells[s][r][c].mean && std::isfinite(*cells[s][r][c].mean))
          v.push_back({cols[c].lower ? *cells[s][r][c].mean : -*cells[s][r][c].mean, r});
      std::sort(v.begin(), v.end());
      if (v.size() >= 2) place[s][v[0].second][c] = 1, place[s][v[1].second][c] = 2;
    }

  Output out;
  out.kind = "table";
  const std::string title = str(spec, "title", name);
  const std::string row_head = str(spec, "row_header", modes.empty() ? "Model" : "Inference");
  auto arrow = [](const Column& c) { return c.rank ? (c.lower ? " ↓" : " ↑") : ""; };
  // Markdown
  out.md = title + "\n\n| " + row_head;
  for (const auto& c : cols) out.md += " | " + c.label + arrow(c);
  out.md += " |\n|---";
  for (size_t c = 0; c < cols.size(); ++c) out.md += "|---";
  out.md += "|\n";
  // LaTeX (booktabs)
  out.tex =
      "% " + title + "\n\\begin{tabular}{l" + std::string(cols.size(), 'r') + "}\n\\toprule\n" + tex_escape(row_head);
  for (const auto& c : cols) out.tex += " & " + tex_escape(c.label + arrow(c));
  out.tex += " \\\\\n\\midrule\n";
  out.csv = "report,section,row,column,value,ci,n\n";
  for (size_t s = 0; s < sections.size(); ++s) {
    if (!sec_axis.empty()) {
      const auto sl = label_of(spec, "section_labels", sections[s]);
      out.md += "| *" + sl + "*";
      for (size_t c = 0; c < cols.size(); ++c) out.md += " |";
      out.md += " |\n";
      out.tex += fmt::format("\\multicolumn{{{}}}{{l}}{{\\textit{{{}}}}} \\\\\n", cols.size() + 1, tex_escape(sl));
    }
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto rl = label_of(spec, "row_labels", rows[r]);
      out.md += "| " + rl;
      out.tex += tex_escape(rl);
      for (size_t c = 0; c < cols.size(); ++c) {
        const auto& cell = cells[s][r][c];
        std::string v = (!cols[c].delta_of.empty() && rows[r] == baseline) ? "–" : fmt_value(cell, cols[c]);
        const int p = place[s][r][c];
        out.md += " | " + (p == 1 ? "**" + v + "**" : p == 2 ? "<u>" + v + "</u>" : v);
        const auto tv = tex_escape(v);
        out.tex += " & " + (p == 1 ? "\\textbf{" + tv + "}" : p == 2 ? "\\underline{" + tv + "}" : tv);
        out.csv += fmt::format("{},{},{},{},{},{},{}\n", name, csv_field(sec_axis.empty() ? "" : sections[s]),
                               csv_field(rows[r]), csv_field(cols[c].label),
                               !cell.mean               ? ""
                               : std::isnan(*cell.mean) ? "NaN"
                                                        : fmt::format("{}", *cell.mean),
                               cell.ci > 0 ? fmt::format("{}", cell.ci) : "", cell.n);
      }
      out.md += " |\n";
      out.tex += " \\\\\n";
    }
  }
  out.tex += "\\bottomrule\n\\end{tabular}\n";
  std::string foot = provenance(d, used, out.missing, seeds);
  std::vector<const Cell*> overheads;
  for (size_t s = 0; s < sections.size(); ++s)
    for (size_t r = 0; r < rows.size(); ++r)
      for (size_t c = 0; c < cols.size(); ++c)
        if (!cols[c].overhead.empty()) overheads.push_back(&cells[s][r][c]);
  foot += timing_source(overheads);
  for (size_t c = 0; c < cols.size(); ++c) {
    if (cols[c].delta_of.empty()) continue;
    std::vector<double> half;
    int64_t pairs = 0;
    for (size_t s = 0; s < sections.size(); ++s)
      for (size_t r = 0; r < rows.size(); ++r)
        if (cells[s][r][c].n >= 2 && cells[s][r][c].mean && std::isfinite(*cells[s][r][c].mean)) {
          half.push_back(cells[s][r][c].ci);
          pairs = std::max(pairs, cells[s][r][c].n);
        }
    std::string tested;  // the family's adjusted p-values, row by row
    int64_t family = 0;
    for (size_t s = 0; s < sections.size(); ++s)
      for (size_t r = 0; r < rows.size(); ++r)
        if (const auto& p = cells[s][r][c].p) {
          ++family;
          tested += fmt::format("{}{} {:.3g}", tested.empty() ? "" : ", ", label_of(spec, "row_labels", rows[r]), *p);
        }
    const std::string mark =
        cols[c].correction.empty()
            ? "* where it excludes 0."
            : fmt::format(
                  "* where its Holm-adjusted p-value (two-sided paired t-test; Holm's step-down over the {} "
                  "rows tested) is below 0.05; adjusted p: {}.",
                  family, tested.empty() ? "none" : tested);
    foot += fmt::format(
        "\n{}{}: paired, each run minus its {} run of the same {}{}; mean ± 95 % Student-t interval over the pairs, {}",
        cols[c].label, of_step(cols, c), label_of(spec, "row_labels", baseline), seeds,
        sec_axis.empty() ? "" : " and " + sec_axis, mark);
    if (!half.empty()) {
      std::sort(half.begin(), half.end());
      foot += fmt::format(" Smallest difference this design resolves (median half-width, up to {} pairs): ±{:.{}f}{}.",
                          pairs, half[half.size() / 2], cols[c].relative ? 2 : 3, cols[c].relative ? " %" : "");
    }
  }
  for (size_t s = 0; s < sections.size(); ++s)
    for (size_t r = 0; r < rows.size(); ++r)
      for (size_t c = 0; c < cols.size(); ++c)
        if (!cells[s][r][c].note.empty())
          foot += fmt::format("\nNote: {}{}, {}: {}.", label_of(spec, "row_labels", rows[r]),
                              sec_axis.empty() ? "" : " (" + label_of(spec, "section_labels", sections[s]) + ")",
                              cols[c].label, cells[s][r][c].note);
  out.md += "\n**Best** and <u>second best</u> per column" +
            std::string(sec_axis.empty() ? "" : " within each setting") + ". " + foot + "\n";
  std::string tex_foot;
  for (char ch : foot) tex_foot += ch == '\n' ? std::string("\n% ") : std::string(1, ch);
  out.tex += "% " + tex_foot + "\n";
  return out;
}

}  // namespace ssr::analysis
