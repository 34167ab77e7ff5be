// What the API's endpoint files share: the refusal they throw, query parsing, JSON numbers and
// server-side thinning. One endpoint family per file: api.cpp (runs), compare.cpp, sweeps.cpp,
// reports.cpp.
#pragma once
#include <fmt/format.h>

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "harness/store/store.hpp"
#include "harness/ui/api.hpp"

namespace ssr::ui {

using json = nlohmann::json;

// A request the store cannot answer: its status and message, sent as JSON.
struct Refused {
  int status;
  std::string message;
};

// Non-finite values as strings: JSON has no nan or inf.
inline json number(double v) {
  return std::isfinite(v) ? json(v) : json(std::isnan(v) ? "NaN" : v > 0 ? "Inf" : "-Inf");
}

inline std::string param(const Params& p, const std::string& key, const std::string& fallback = "") {
  const auto it = p.find(key);
  return it == p.end() ? fallback : it->second;
}

// Every value of a repeated parameter (?where=a&where=b), in order.
inline std::vector<std::string> params(const Params& p, const std::string& key) {
  std::vector<std::string> out;
  for (auto [it, end] = p.equal_range(key); it != end; ++it) out.push_back(it->second);
  return out;
}

// `text` as a whole number >= 1, or nullopt.
inline std::optional<int64_t> whole(const std::string& text) {
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  if (used != text.size() || v < 1) return std::nullopt;
  return v;
}

inline int64_t positive(const Params& p, const std::string& key, int64_t fallback, int64_t cap) {
  const std::string text = param(p, key);
  if (text.empty()) return fallback;
  const auto v = whole(text);
  if (!v) throw Refused{400, fmt::format("{}: '{}' is not a whole number >= 1", key, text)};
  return std::min(*v, cap);
}

// Which of n points to keep for at most `keep`: evenly spaced by index, the first and last kept, so
// a long run's page loads as fast as a short one's.
inline std::vector<size_t> thinned(size_t n, int64_t keep) {
  const size_t k = std::min(n, static_cast<size_t>(keep));
  std::vector<size_t> at;
  for (size_t i = 0; i < k; ++i) at.push_back(k == 1 ? n - 1 : i * (n - 1) / (k - 1));
  return at;
}

json runs_page(const store::Store& s, const Params& p);
json run_page(const store::Store& s, int64_t id);
json run_metrics(const store::Store& s, int64_t id, int64_t points);
json run_loads(const store::Store& s, int64_t id, int64_t points);
json compare_page(const store::Store& s, const Params& p);
json sweeps_page(const store::Store& s);
json sweep_page(const store::Store& s, int64_t id);
json reports_page(const std::string& experiments);
json report_page(const store::Store& s, const std::string& experiments, const std::string& name, const Params& p);

}  // namespace ssr::ui
