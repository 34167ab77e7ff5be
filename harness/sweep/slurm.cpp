#include "harness/sweep/slurm.hpp"

#include <fmt/format.h>
#include <pwd.h>
#include <sys/wait.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstdio>
#include <filesystem>
#include <sstream>

#include "harness/config/config.hpp"
#include "harness/sweep/launch.hpp"

namespace fs = std::filesystem;

namespace ssr::sweep {

using json = nlohmann::json;

std::string array_ranges(const std::vector<int64_t>& jobs) {
  std::string out;
  for (size_t i = 0; i < jobs.size();) {
    size_t j = i;
    while (j + 1 < jobs.size() && jobs[j + 1] == jobs[j] + 1) ++j;
    out += (out.empty() ? "" : ",") + (j == i ? std::to_string(jobs[i]) : fmt::format("{}-{}", jobs[i], jobs[j]));
    i = j + 1;
  }
  return out;
}

std::string sbatch_quote(const std::string& value) {
  const bool plain = std::none_of(value.begin(), value.end(), [](char c) {
    return std::isspace(static_cast<unsigned char>(c)) || c == '"' || c == '\\' || c == '#';
  });
  if (plain && !value.empty()) return value;
  std::string out = "\"";
  for (const char c : value) {
    if (c == '"' || c == '\\' || c == '#') out += '\\';
    out += c;
  }
  return out + "\"";
}

namespace {

// sbatch's long options that can be given without a value (its man page): the only bare words
// an option list may hold.
bool sbatch_flag(const std::string& key) {
  static const std::set<std::string> flags = {"contiguous", "exclusive", "get-user-env",  "hold",       "ignore-pbs",
                                              "nice",       "no-kill",   "no-requeue",    "overcommit", "oversubscribe",
                                              "parsable",   "propagate", "quiet",         "reboot",     "requeue",
                                              "spread-job", "test-only", "use-min-nodes", "verbose",    "wait"};
  return flags.count(key) > 0;
}

// One sbatch option into `out`: its name is sbatch's long option without the dashes; its value a
// scalar on one line, or none (a flag: true). "0", "" and "false" become null (dropped).
void put_option(json& out, const std::string& key, const std::optional<std::string>& value, const std::string& source) {
  const bool name_ok =
      !key.empty() && std::islower(static_cast<unsigned char>(key[0])) &&
      std::all_of(key.begin(), key.end(), [](char c) {
        return std::islower(static_cast<unsigned char>(c)) || std::isdigit(static_cast<unsigned char>(c)) || c == '-';
      });
  if (!name_ok)
    throw config::ConfigError(
        fmt::format("{}: '{}' is not an sbatch option name (sbatch's long option without its dashes, e.g. partition, "
                    "cpus-per-task)",
                    source, key));
  if (key == "array")
    throw config::ConfigError(
        fmt::format("{}: array: the array is the sweep's queued jobs; `parallel` sets how many run at once", source));
  if (!value) {
    if (!sbatch_flag(key))
      throw config::ConfigError(
          fmt::format("{}: '{}': expected KEY=VALUE, or an sbatch flag without a value (requeue, hold, exclusive, ...)",
                      source, key));
    out[key] = true;
    return;
  }
  if (value->find_first_of("\n\r") != std::string::npos)
    throw config::ConfigError(fmt::format("{}: {}: the value must be one line", source, key));
  if (key == "parallel" && !value->empty() && *value != "0" &&
      (value->find_first_not_of("0123456789") != std::string::npos))
    throw config::ConfigError(
        fmt::format("{}: parallel: '{}' is not a whole number of array tasks at once", source, *value));
  out[key] = value->empty() || *value == "0" || *value == "false" ? json(nullptr) : json(*value);
}

void put_assignment(json& out, const std::string& text, const std::string& source) {
  const auto eq = text.find('=');
  if (eq == std::string::npos)
    put_option(out, text, std::nullopt, source);
  else
    put_option(out, text.substr(0, eq), text.substr(eq + 1), source);
}

void put_map(json& out, const json& map, const std::string& source) {
  for (const auto& [k, v] : map.items()) {
    if (v.is_object() || v.is_array())
      throw config::ConfigError(fmt::format("{}: {}: expected one value, not a list or map", source, k));
    if (v.is_boolean() && v.get<bool>())
      put_option(out, k, std::nullopt, source);
    else
      put_option(out, k, v.is_string() ? v.get<std::string>() : v.is_null() ? "" : v.dump(), source);
  }
}

// $SSR_SLURM: options split on ';' when there is one, else on ','. In the comma form a bare word
// that is no sbatch flag is most likely the rest of the previous value, cut at its comma.
void put_environment(json& out, const std::string& text) {
  const char sep = text.find(';') != std::string::npos ? ';' : ',';
  std::stringstream list(text);
  std::string previous;
  for (std::string item; std::getline(list, item, sep);) {
    if (item.empty()) continue;
    if (sep == ',' && !previous.empty() && item.find('=') == std::string::npos && !sbatch_flag(item))
      throw config::ConfigError(fmt::format(
          "SSR_SLURM: '{}' is neither KEY=VALUE nor an sbatch flag (is it part of '{}'?); when a value holds commas, "
          "separate the options with ';' (SSR_SLURM='exclude=n1,n2;partition=cpu')",
          item, previous));
    put_assignment(out, item, "SSR_SLURM");
    previous = item;
  }
}

}  // namespace

json slurm_options(const json& from_file, const std::vector<std::string>& cli) {
  json out = json::object();
  const char* xdg = std::getenv("XDG_CONFIG_HOME");
  const char* home = std::getenv("HOME");
  const fs::path user = xdg && *xdg     ? fs::path(xdg) / "ssr" / "slurm.yaml"
                        : home && *home ? fs::path(home) / ".config" / "ssr" / "slurm.yaml"
                                        : fs::path();
  if (!user.empty() && fs::exists(user)) {
    const YAML::Node n = config::load_yaml(user.string(), "Slurm site options");
    if (!n.IsMap() && !n.IsNull())
      throw config::ConfigError(
          fmt::format("{}: expected a map of sbatch options (partition: cpu, account: abc)", user.string()));
    if (n.IsMap()) put_map(out, config::yaml_to_json(n), user.string());
  }
  if (const char* env = std::getenv("SSR_SLURM"); env && *env) put_environment(out, env);
  put_map(out, from_file, "the sweep file's slurm");
  for (const auto& c : cli) put_assignment(out, c, "--slurm");
  return out;
}

std::string task_log_pattern(const std::string& log_dir, int64_t attempt) {
  return (fs::absolute(log_dir) / (attempt > 1 ? fmt::format("job-%a.attempt-{}.log", attempt) : "job-%a.log"))
      .string();
}

namespace {

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (const char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
}

}  // namespace

std::string slurm_script(const store::Sweep& sweep, const std::vector<int64_t>& jobs, const std::string& db,
                         const std::string& log_dir, const json& opts, int64_t attempt) {
  const auto given = [&](const std::string& key) { return opts.contains(key) && !opts[key].is_null(); };
  std::string array = array_ranges(jobs);
  if (given("parallel")) array += "%" + opts["parallel"].get<std::string>();
  std::string s = "#!/bin/bash\n";
  const std::string scale = sweep.spec.value("scale", std::string());
  s += fmt::format("# ssr sweep {} ({}{}): {} of its {} jobs, launch {}, written by ssr sweep --launcher slurm\n",
                   sweep.id, sweep.name, scale.empty() ? "" : ", scale " + scale, jobs.size(),
                   sweep.spec.at("jobs").size(), attempt);
  auto ask = [&](const std::string& key, const std::string& value) {
    if (!opts.contains(key)) s += fmt::format("#SBATCH --{}={}\n", key, sbatch_quote(value));
  };
  ask("job-name", "ssr-" + sweep.name);
  s += fmt::format("#SBATCH --array={}\n", array);
  ask("output", task_log_pattern(log_dir, attempt));
  // A requeued task writes on in its log instead of starting it again.
  ask("open-mode", "append");
  // Two minutes before a time limit (or a preemption with GraceTime), ssr checkpoints and stops.
  ask("signal", "B:USR1@120");
  for (const auto& [k, v] : opts.items()) {
    if (k == "parallel" || v.is_null()) continue;
    s += v.is_boolean() ? fmt::format("#SBATCH --{}\n", k)
                        : fmt::format("#SBATCH --{}={}\n", k, sbatch_quote(v.get<std::string>()));
  }
  // Data-parallel jobs: the task's one `ssr sweep run` starts the job's ranks on its node (as
  // `ssr train --nproc` does), so it needs one node, a CPU per rank, and with CUDA a GPU per rank.
  int64_t nproc = 1;
  bool cuda = false;
  for (const auto& j : sweep.spec.at("jobs"))
    if (std::find(jobs.begin(), jobs.end(), j.at("num").get<int64_t>()) != jobs.end()) {
      nproc = std::max(nproc, j.value("nproc", int64_t{1}));
      cuda = cuda || j.value("device", std::string("cpu")) == "cuda";
    }
  if (nproc > 1) {
    s += fmt::format("# jobs of up to {} data-parallel ranks, started by ssr on the task's node\n", nproc);
    ask("nodes", "1");
    ask("ntasks", "1");
    ask("cpus-per-task", std::to_string(nproc));
    if (cuda) ask("gpus-per-task", std::to_string(nproc));
  }
  const bool requeue = given("requeue");
  s += "set -uo pipefail\n";
  s += fmt::format("cd {} || exit 1\n", shell_quote(fs::current_path().string()));
  // The lead-time signal reaches this shell only (B:): pass it on to ssr, which writes a
  // checkpoint and exits 75. `wait` returns early when a trapped signal arrives; wait again then.
  s += "forwarded=0\n";
  s += "trap 'forwarded=1; kill -USR1 \"${ssr_pid:-}\" 2>/dev/null' USR1\n";
  s += fmt::format("{} sweep run --sweep {} --job \"$SLURM_ARRAY_TASK_ID\" --db {} &\n", shell_quote(self_exe()),
                   sweep.id, shell_quote(fs::absolute(db).string()));
  s += "ssr_pid=$!\n";
  s += "while :; do\n  forwarded=0\n  wait \"$ssr_pid\"\n  rc=$?\n  [ \"$forwarded\" = 1 ] || break\ndone\n";
  if (requeue) {
    s += "# 75: ssr stopped on the signal with a checkpoint; the next allocation continues from it.\n";
    s += "if [ \"$rc\" -eq 75 ]; then\n";
    s += "  task=\"${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}\"\n";
    s += "  echo \"ssr: requeueing Slurm task $task to continue from its checkpoint\" >&2\n";
    s += "  scontrol requeue \"$task\" && exit 0\n";
    s += "fi\n";
  } else {
    s += "# 75: ssr stopped on the signal with a checkpoint; `ssr sweep --resume` continues it (--slurm requeue "
         "would requeue the task itself).\n";
  }
  s += "exit \"$rc\"\n";
  return s;
}

namespace {

// Runs `argv` with its stdout captured; the exit status, or -1 when it could not run.
int capture(const std::vector<std::string>& argv, std::string& out, std::string& err) {
  int out_pipe[2], err_pipe[2];
  if (pipe(out_pipe) != 0) return -1;
  if (pipe(err_pipe) != 0) {
    close(out_pipe[0]);
    close(out_pipe[1]);
    return -1;
  }
  const pid_t pid = fork();
  if (pid < 0) return -1;
  if (pid == 0) {
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(err_pipe[1], STDERR_FILENO);
    close(out_pipe[0]);
    close(err_pipe[0]);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    execvp(args[0], args.data());
    _exit(127);
  }
  close(out_pipe[1]);
  close(err_pipe[1]);
  // Both pipes are read to their end in turn; the outputs are small (one line, or squeue's list).
  for (auto [fd, text] : {std::pair{out_pipe[0], &out}, std::pair{err_pipe[0], &err}}) {
    std::array<char, 4096> buf{};
    for (ssize_t n; (n = read(fd, buf.data(), buf.size())) > 0;) text->append(buf.data(), static_cast<size_t>(n));
    close(fd);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

std::string submit(const std::string& script) {
  std::string out, err;
  const int rc = capture({"sbatch", "--parsable", script}, out, err);
  if (rc == 127 || rc == -1) throw std::runtime_error("--submit: cannot run sbatch (is Slurm's client installed?)");
  if (rc != 0) {
    const auto line = err.substr(0, err.find('\n'));
    throw std::runtime_error(fmt::format("--submit: sbatch refused {}: {}", script, line));
  }
  // --parsable prints "JOBID" or "JOBID;CLUSTER".
  std::string id = out.substr(0, out.find_first_of(";\n"));
  if (id.empty() || id.find_first_not_of("0123456789") != std::string::npos)
    throw std::runtime_error(fmt::format("--submit: sbatch printed '{}', not a job id", out));
  return id;
}

std::set<std::string> parse_squeue(const std::string& out) {
  std::set<std::string> live;
  std::stringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    line.erase(0, line.find_first_not_of(" \t"));
    line.erase(line.find_last_not_of(" \t\r") + 1);
    if (line.empty()) continue;
    const auto open = line.find("_[");
    if (open == std::string::npos || line.back() != ']') {
      live.insert(line);
      continue;
    }
    // "123_[4-6,9%2]": the pending tasks of an array, folded.
    const std::string job = line.substr(0, open);
    std::string body = line.substr(open + 2, line.size() - open - 3);
    body = body.substr(0, body.find('%'));
    std::stringstream parts(body);
    for (std::string part; std::getline(parts, part, ',');) {
      const auto dash = part.find('-');
      try {
        const int64_t lo = std::stoll(part.substr(0, dash));
        const int64_t hi = dash == std::string::npos ? lo : std::stoll(part.substr(dash + 1));
        for (int64_t t = lo; t <= hi && t - lo < 1000000; ++t) live.insert(fmt::format("{}_{}", job, t));
      } catch (const std::exception&) {
        live.insert(line);  // not a range this parser knows: keep the line, so nothing counts as dead
      }
    }
  }
  return live;
}

std::optional<std::set<std::string>> live_tasks() {
  const passwd* pw = getpwuid(getuid());
  if (!pw) return std::nullopt;
  std::string out, err;
  if (capture({"squeue", "-h", "-r", "-o", "%i", "-u", pw->pw_name}, out, err) != 0) return std::nullopt;
  return parse_squeue(out);
}

}  // namespace ssr::sweep
