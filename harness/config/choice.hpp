// Enum-valued keys: every one is read through choose() or choice(), so a value without a name is
// an error listing the allowed ones, never a fallback to a default.
#pragma once
#include <initializer_list>
#include <string>
#include <utility>

#include "harness/config/config.hpp"

namespace ssr::config {

// The enum value that `value` names; `what` (a key or an input) starts the message otherwise.
template <class E>
E choose(const std::string& what, const std::string& value, std::initializer_list<std::pair<const char*, E>> names) {
  std::string allowed;
  for (const auto& [name, e] : names) {
    if (value == name) return e;
    allowed += (allowed.empty() ? "" : ", ") + std::string(name);
  }
  throw ConfigError(what + " '" + value + "': expected one of " + allowed);
}

// The enum value of the key `name` of `cfg`.
template <class E>
E choice(const Config& cfg, const std::string& name, std::initializer_list<std::pair<const char*, E>> names) {
  return choose(name, cfg.s(name), names);
}

}  // namespace ssr::config
