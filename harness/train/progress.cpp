#include "harness/train/progress.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <cstdio>

namespace ssr::train {

std::string format_duration(double s) {
  if (!(s >= 0) || s > 1e8) return "?";
  auto t = static_cast<int64_t>(s + 0.5);
  if (t >= 3600) return fmt::format("{}h{:02}m", t / 3600, (t / 60) % 60);
  if (t >= 60) return fmt::format("{}m{:02}s", t / 60, t % 60);
  return fmt::format("{}s", t);
}

Progress::Progress(int64_t total_steps, int64_t every, bool quiet, std::string unit)
    : total_(total_steps), every_(every), quiet_(quiet), tty_(isatty(STDERR_FILENO) != 0), unit_(std::move(unit)) {
  start_ = last_draw_ = std::chrono::steady_clock::now();
}

void Progress::update(int64_t step, double loss, int64_t tokens) {
  if (quiet_) return;
  if (first_step_ < 0) first_step_ = step - 1;
  tokens_ += tokens;
  auto t = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(t - start_).count();
  const bool last = step == total_;
  if (tty_) {
    if (!last && std::chrono::duration<double>(t - last_draw_).count() < 0.2) return;
  } else if (step % every_ != 0 && !last) {
    return;
  }
  last_draw_ = t;
  const double per_step = elapsed / static_cast<double>(step - first_step_);
  const std::string line =
      fmt::format("step {}/{}  loss {:.4f}  {:.0f} {}/s  ETA {}", step, total_, loss, tokens_ / std::max(elapsed, 1e-9),
                  unit_, format_duration(per_step * (total_ - step)));
  if (tty_) {
    std::fprintf(stderr, "\r\033[K%s", line.c_str());
    dirty_ = true;
  } else {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
  std::fflush(stderr);
}

void Progress::message(const std::string& line) {
  if (quiet_) return;
  if (dirty_) std::fprintf(stderr, "\n");  // the training line stays on screen above the message
  if (eval_line_) std::fprintf(stderr, "\r\033[K");
  dirty_ = eval_line_ = false;
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

void Progress::warning(const std::string& line) {
  if (dirty_) std::fprintf(stderr, "\n");
  if (eval_line_) std::fprintf(stderr, "\r\033[K");
  dirty_ = eval_line_ = false;
  std::fprintf(stderr, "%s\n", line.c_str());
  std::fflush(stderr);
}

void Progress::evaluating(const std::string& what, int64_t done, int64_t total) {
  if (quiet_) return;
  const auto t = std::chrono::steady_clock::now();
  if (done == 0) eval_start_ = t;
  if (!tty_) {
    if (done == 0) {
      std::fprintf(stderr, "evaluating %s: %lld segments\n", what.c_str(), static_cast<long long>(total));
      std::fflush(stderr);
    }
    return;
  }
  if (done > 0 && done < total && std::chrono::duration<double>(t - last_draw_).count() < 0.2) return;
  last_draw_ = t;
  const double elapsed = std::chrono::duration<double>(t - eval_start_).count();
  const std::string eta =
      done > 0 ? format_duration(elapsed / static_cast<double>(done) * static_cast<double>(total - done)) : "?";
  std::fprintf(stderr, "\r\033[Kevaluating %s: segment %lld/%lld  ETA %s", what.c_str(), static_cast<long long>(done),
               static_cast<long long>(total), eta.c_str());
  std::fflush(stderr);
  // The result line replaces it (message() on a redrawn evaluation line clears it instead of keeping it).
  dirty_ = false;
  eval_line_ = true;
}

void Progress::finish() {
  if (dirty_) std::fprintf(stderr, "\n");
  if (eval_line_) std::fprintf(stderr, "\r\033[K");
  dirty_ = eval_line_ = false;
}

}  // namespace ssr::train
