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

// The two-sided p-value of a one-sample t-test of mean 0 (paired differences; n >= 2). 0 when the
// differences are equal and not 0; 1 when they are all 0.
double paired_t_p(const std::vector<double>& diffs);
// Holm's step-down adjustment of a family's p-values, in their order: the i-th smallest becomes
// max over j <= i of min(1, (m - j + 1) p_(j)).
std::vector<double> holm(const std::vector<double>& p);

}  // namespace ssr::analysis
