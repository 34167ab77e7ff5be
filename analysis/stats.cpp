#include "analysis/stats.hpp"

#include <cmath>

namespace ssr::analysis {

double t95(int64_t df) {
  static const double table[] = {12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
                                 2.201,  2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
                                 2.080,  2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042};
  if (df < 1) return NAN;
  if (df <= 30) return table[df - 1];
  return 1.960 + 2.4 / static_cast<double>(df);  // within 0.002 of the quantile beyond 30
}

Estimate estimate(const std::vector<double>& v) {
  Estimate e;
  e.n = static_cast<int64_t>(v.size());
  if (v.empty()) return e;
  for (double x : v) e.mean += x;
  e.mean /= static_cast<double>(v.size());
  if (v.size() > 1) {
    double ss = 0;
    for (double x : v) ss += (x - e.mean) * (x - e.mean);
    e.ci = t95(e.n - 1) * std::sqrt(ss / static_cast<double>(e.n - 1) / static_cast<double>(e.n));
  }
  return e;
}
}  // namespace ssr::analysis
