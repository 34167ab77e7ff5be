// `ssr train --nproc N` on one machine: re-executes this binary as N ranks (RANK, WORLD_SIZE,
// LOCAL_RANK, MASTER_ADDR, MASTER_PORT set, a free port picked) and watches them. The first rank
// that fails stops the others, and the run row rank 0 created is marked failed with which rank
// died and how, so a dead rank never leaves a hung job or a `running` row behind.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ssr::dist {

// Rank 0 writes the id of its run row to the file this variable names (set by launch()).
constexpr const char* kRunIdFileVar = "SSR_RUN_ID_FILE";
// Called by rank 0 once its run row exists; a no-op without a launcher.
void announce_run(int64_t run_id);

// Seconds the launcher gives the other ranks to stop after one failed, before SIGKILL.
constexpr double kStopGraceS = 10;

// Runs `argv` (the launcher's own command line, which the ranks parse again) as `nproc` local
// ranks; `db` is the run store the ranks write. Returns the launcher's exit code: 0 when every
// rank succeeded, else the first failing rank's code (1 when it was killed by a signal).
int launch(int nproc, const std::vector<std::string>& argv, const std::string& db, double grace_s = kStopGraceS);

}  // namespace ssr::dist
