#include "harness/errors.hpp"

#include <fmt/format.h>

#include <cerrno>

namespace ssr {

bool environment_errno(int err) { return err == ENOSPC || err == EDQUOT || err == EIO || err == EROFS; }

std::string free_space(const std::filesystem::path& dir) {
  std::error_code ec;
  const auto info = std::filesystem::space(dir, ec);
  if (ec) return "free space unknown";
  return fmt::format("{:.1f} MiB free there", static_cast<double>(info.available) / (1 << 20));
}

}  // namespace ssr
