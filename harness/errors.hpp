// Failures of the machine rather than of the input or the model: a full disk, an I/O error, a
// read-only file system. They get their own exit code (kExitEnvironment), so a script or a
// scheduler can tell "free space and resume" from "fix the config" (2) and "the run failed" (1).
#pragma once
#include <filesystem>
#include <stdexcept>
#include <string>

namespace ssr {

// sysexits.h's EX_IOERR.
inline constexpr int kExitEnvironment = 74;
// sysexits.h's EX_TEMPFAIL: the run stopped on SIGUSR1 with a checkpoint, to be requeued (the
// Slurm script requeues its task on it).
inline constexpr int kExitRequeue = 75;

struct EnvironmentError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Whether a failed call's errno is the environment's doing (ENOSPC, EDQUOT, EIO, EROFS).
bool environment_errno(int err);

// "12.3 MiB free there", or "free space unknown", for the file system holding `dir`.
std::string free_space(const std::filesystem::path& dir);

}  // namespace ssr
