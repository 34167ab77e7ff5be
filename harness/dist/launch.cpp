#include "harness/dist/launch.hpp"

#include <fmt/format.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <thread>

#include "harness/store/store.hpp"

namespace fs = std::filesystem;

namespace ssr::dist {
namespace {

using Clock = std::chrono::steady_clock;

std::atomic<int> g_forward{0};
void on_signal(int sig) { g_forward = sig; }

// A port the kernel just handed out on the loopback interface; rank 0's TCPStore binds it next.
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw std::runtime_error(fmt::format("launcher: no socket: {}", std::strerror(errno)));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0;
  ::close(fd);
  if (!ok) throw std::runtime_error(fmt::format("launcher: no free port: {}", std::strerror(errno)));
  return ntohs(a.sin_port);
}

std::string describe(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with code {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status))
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return "stopped";
}

}  // namespace

void announce_run(int64_t run_id) {
  const char* file = std::getenv(kRunIdFileVar);
  if (file == nullptr) return;
  const std::string tmp = std::string(file) + ".tmp";
  std::ofstream(tmp) << run_id << "\n";
  fs::rename(tmp, file);
}

int launch(int nproc, const std::vector<std::string>& argv, const std::string& db, double grace_s) {
  const int port = free_port();
  const fs::path id_file = fs::temp_directory_path() / fmt::format("ssr_run_id_{}_{}", ::getpid(), port);
  fs::remove(id_file);
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);

  const pid_t parent = ::getpid();
  std::vector<pid_t> pids(nproc, 0);
  for (int r = 0; r < nproc; ++r) {
    const pid_t pid = ::fork();
    if (pid < 0) throw std::runtime_error(fmt::format("launcher: fork failed: {}", std::strerror(errno)));
    if (pid == 0) {
      ::setenv("RANK", std::to_string(r).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(r).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(nproc).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv(kRunIdFileVar, id_file.c_str(), 1);
      // A launcher that dies (even by SIGKILL) takes its ranks with it.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      if (::getppid() != parent) ::_exit(1);
      ::execv("/proc/self/exe", args.data());
      std::fprintf(stderr, "error: rank %d: cannot re-execute %s: %s\n", r, argv[0].c_str(), std::strerror(errno));
      ::_exit(127);
    }
    pids[r] = pid;
  }

  // SIGINT / SIGTERM reach the ranks: each records the interruption on its own.
  g_forward = 0;
  auto old_int = std::signal(SIGINT, on_signal);
  auto old_term = std::signal(SIGTERM, on_signal);
  int alive = nproc, failed_rank = -1, failed_status = 0;
  auto kill_at = Clock::time_point::max();  // when the ranks still alive get SIGKILL
  while (alive > 0) {
    int status = 0;
    const pid_t pid = ::waitpid(-1, &status, WNOHANG);
    if (pid > 0) {
      const int r = static_cast<int>(std::find(pids.begin(), pids.end(), pid) - pids.begin());
      if (r == nproc) continue;  // not a rank
      pids[r] = 0;
      --alive;
      const bool ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
      if (!ok && failed_rank < 0) {
        // The others would block in their next collective: stop them now, kill them after the grace.
        failed_rank = r;
        failed_status = status;
        for (pid_t p : pids)
          if (p > 0) ::kill(p, SIGTERM);
        kill_at = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(grace_s * 1000));
      }
      continue;
    }
    if (const int sig = g_forward.exchange(0))
      for (pid_t p : pids)
        if (p > 0) ::kill(p, sig);
    if (Clock::now() > kill_at) {
      for (pid_t p : pids)
        if (p > 0) ::kill(p, SIGKILL);
      kill_at = Clock::time_point::max();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);

  int64_t run_id = 0;
  if (std::ifstream in(id_file); in) in >> run_id;
  fs::remove(id_file);
  if (failed_rank < 0) return 0;

  const std::string what = fmt::format("rank {} {}", failed_rank, describe(failed_status));
  std::string marked;
  if (run_id > 0) {
    store::Store store(db);
    auto run = store.run(run_id);
    if (run && (run->status == "running" || run->status == "failed")) {
      std::string error = what + "; the launcher stopped the other ranks";
      if (!run->error.empty()) error += "; rank 0 recorded: " + run->error;
      store.finish_run(run_id, "failed", error);
      marked = fmt::format("; run {} marked failed", run_id);
    }
  }
  std::cerr << fmt::format("error: {}; stopped the other ranks{}\n", what, marked);
  return WIFEXITED(failed_status) ? WEXITSTATUS(failed_status) : 1;
}

}  // namespace ssr::dist
