// Progress on stderr: one redrawn line on a terminal, a line every N steps otherwise.
#pragma once
#include <chrono>
#include <string>

namespace ssr::train {

class Progress {
 public:
  // unit: what a step consumes, shown per second ("tok", "img").
  Progress(int64_t total_steps, int64_t every, bool quiet, std::string unit = "tok");
  // Called after each step; `tokens` is the number of units the step consumed.
  void update(int64_t step, double loss, int64_t tokens);
  void message(const std::string& line);  // a line that stays (clears a redrawn line first)
  void warning(const std::string& line);  // the same, printed under --quiet too (call it on one rank)
  // The final evaluation: a redrawn "segment done/total ETA" line on a terminal, one line at its
  // start otherwise; the next message() replaces it.
  void evaluating(const std::string& what, int64_t done, int64_t total);
  void finish();

 private:
  int64_t total_, every_;
  bool quiet_, tty_;
  std::string unit_;
  bool dirty_ = false, eval_line_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_, eval_start_;
  int64_t first_step_ = -1, tokens_ = 0;
};

std::string format_duration(double seconds);

}  // namespace ssr::train
