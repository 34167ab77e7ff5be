// `ssr plot RUN...`: a logged metric against the step, straight from the store, one line per run
// or, grouped by a config key, the mean over a group's runs with a 95 % band. The data comes out
// as the same tidy CSV that report curves use, so analysis/curves.gp draws it.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "harness/store/store.hpp"

namespace ssr::analysis {

struct PlotRequest {
  std::vector<int64_t> runs;
  std::string split = "train";      // the metrics table's split: train, valid, ...
  std::string metric = "loss";      // a metric name; "layer*/NAME" is the mean of layerL/NAME over layers
  std::string by;                   // a key of `ssr runs --where` (router, router.p, ...): one series per value
  std::vector<std::string> labels;  // per run, its series' name (compare's groups); overrides `by`
  std::map<std::string, std::string> legend;  // a series' name or its --by value -> the name the key shows
};

// One step of a series: the mean over its runs, the 95 % half-width, and how many runs.
struct PlotPoint {
  int64_t step = 0;
  double mean = 0, ci = 0;
  int64_t n = 0;
};

struct Plot {
  std::string csv;                             // series,x,y,ci,n,series_index,x_index
  std::vector<std::string> series;             // names, in series_index order
  std::vector<std::vector<PlotPoint>> points;  // per series, by step
  std::string title, ylabel;
};

// Throws config::ConfigError naming a missing run, an unknown --by key or a metric no run logged
// (and the metric names the runs did log).
Plot plot_runs(const store::Store& store, const PlotRequest& request);

}  // namespace ssr::analysis
