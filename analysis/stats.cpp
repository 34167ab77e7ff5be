#include "analysis/stats.hpp"

#include <boost/math/distributions/students_t.hpp>

#include <algorithm>
#include <numeric>

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

double paired_t_p(const std::vector<double>& d) {
  const auto e = estimate(d);
  double ss = 0;
  for (double x : d) ss += (x - e.mean) * (x - e.mean);
  const double se = std::sqrt(ss / static_cast<double>(e.n - 1) / static_cast<double>(e.n));
  if (se == 0) return e.mean == 0 ? 1.0 : 0.0;
  const boost::math::students_t dist(static_cast<double>(e.n - 1));
  return 2 * boost::math::cdf(boost::math::complement(dist, std::abs(e.mean) / se));
}

std::vector<double> holm(const std::vector<double>& p) {
  const size_t m = p.size();
  std::vector<size_t> order(m);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] < p[b]; });
  std::vector<double> out(m);
  double running = 0;
  for (size_t i = 0; i < m; ++i) {
    running = std::max(running, std::min(1.0, static_cast<double>(m - i) * p[order[i]]));
    out[order[i]] = running;
  }
  return out;
}

}  // namespace ssr::analysis
