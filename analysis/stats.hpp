// The statistics of every report: mean and 95 % Student-t interval of a sample (a cell over
// seeds, or paired differences between routers).
#pragma once
#include <cstdint>
#include <vector>

namespace ssr::analysis {

// Two-sided 95 % Student-t quantile for `df` degrees of freedom (df >= 1).
double t95(int64_t df);
struct Estimate {
  double mean = 0, ci = 0;  // ci: half-width of the 95 % interval (0 with one value)
  int64_t n = 0;
};
Estimate estimate(const std::vector<double>& values);

}  // namespace ssr::analysis
