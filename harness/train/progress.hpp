// Progress on stderr: one redrawn line on a terminal, a line every N steps otherwise.
#pragma once
#include <chrono>
#include <string>

namespace ssr::train {

class Progress {
 public:
  Progress(int64_t total_steps, int64_t every, bool quiet);
  // Called after each step; `tokens` is the number of tokens the step consumed.
  void update(int64_t step, double loss, int64_t tokens);
  void message(const std::string& line);  // a line that stays (clears a redrawn line first)
  void finish();

 private:
  int64_t total_, every_;
  bool quiet_, tty_;
  bool dirty_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
  int64_t first_step_ = -1, tokens_ = 0;
};

std::string format_duration(double seconds);

}  // namespace ssr::train
