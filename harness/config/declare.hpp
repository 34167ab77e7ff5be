// Shorthands that declare a config key: name, default, range and one line of documentation.
// The schema (schema.cpp) and each router's registration (routers/registry.cpp) use them.
#pragma once
#include <string>
#include <utility>
#include <vector>

#include "harness/config/config.hpp"

namespace ssr::config::keys {

inline constexpr double kInf = 1e300;

inline Key I(std::string n, int64_t d, double lo, double hi, std::string doc, bool hashed = true) {
  return Key{std::move(n), Type::Int, d, std::move(doc), lo, hi, {}, hashed};
}
inline Key F(std::string n, double d, double lo, double hi, std::string doc, bool hashed = true) {
  return Key{std::move(n), Type::Float, d, std::move(doc), lo, hi, {}, hashed};
}
inline Key B(std::string n, bool d, std::string doc, bool hashed = true) {
  return Key{std::move(n), Type::Bool, d, std::move(doc), -kInf, kInf, {}, hashed};
}
inline Key S(std::string n, std::string d, std::string doc, bool hashed = true) {
  return Key{std::move(n), Type::String, d, std::move(doc), -kInf, kInf, {}, hashed};
}
inline Key C(std::string n, std::string d, std::vector<std::string> choices, std::string doc, bool hashed = true) {
  return Key{std::move(n), Type::Choice, d, std::move(doc), -kInf, kInf, std::move(choices), hashed};
}
inline Key IL(std::string n, std::vector<int64_t> d, double lo, double hi, std::string doc) {
  return Key{std::move(n), Type::IntList, d, std::move(doc), lo, hi, {}, true};
}
inline Key FL(std::string n, std::vector<double> d, double lo, double hi, std::string doc) {
  return Key{std::move(n), Type::FloatList, d, std::move(doc), lo, hi, {}, true};
}
// For keys added after runs were stored: at its default the key stays out of the hash, so every
// earlier run keeps its configuration hash (and sweeps and reports still find it).
inline Key unhashed_at_default(Key k) {
  k.hashed_at_default = false;
  return k;
}
// A compute path that gives the same function (so runs stay comparable and reusable across it)
// but not the same speed.
inline Key timed(Key k) {
  k.hashed = false;
  k.timed = true;
  return k;
}
// The range excludes its upper bound: [min, max).
inline Key below_max(Key k) {
  k.max_open = true;
  return k;
}
inline Key SL(std::string n, std::vector<std::string> d, std::string doc) {
  return Key{std::move(n), Type::StringList, d, std::move(doc), -kInf, kInf, {}, true};
}

}  // namespace ssr::config::keys
