// A sweep on Slurm: the sbatch options (site, sweep file, command line), the job-array script,
// and the two questions put to Slurm itself (submit an array; which of its tasks still live).
#pragma once
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "harness/store/store.hpp"

namespace ssr::sweep {

// The sbatch options of a script, merged lowest first: the site's (the user file
// ${XDG_CONFIG_HOME:-~/.config}/ssr/slurm.yaml, then $SSR_SLURM), the sweep file's (`slurm:`
// merged with its scale's `slurm:`), then `--slurm` flags. Each is KEY=VALUE, or a bare KEY for an
// sbatch flag without a value (requeue); in YAML, `requeue: true`. A value of 0, empty or false
// drops the option: it maps to null, so no default of the script takes its place. $SSR_SLURM is
// "partition=cpu,account=x", or with `;` between options when a value holds commas
// ("exclude=n1,n2;partition=cpu"). Experiment files stay site-free; a site's partition or account
// lives with the user. Throws ConfigError naming the source (file, variable or flag) of a bad entry.
nlohmann::json slurm_options(const nlohmann::json& from_file, const std::vector<std::string>& cli);

// Where a script's task logs go: <log_dir>/job-%a.log for a sweep's first launch, then
// job-%a.attempt-N.log, so a resubmission keeps the earlier attempts' logs.
std::string task_log_pattern(const std::string& log_dir, int64_t attempt);

// An sbatch job-array script that runs the given job numbers, `%parallel` at once, with `options`
// (slurm_options). Every task runs `ssr sweep run --sweep ID --job $SLURM_ARRAY_TASK_ID`. Unless
// the options say otherwise it asks for Slurm's lead-time signal (signal=B:USR1@120), which ssr
// turns into a checkpoint and exit 75; with the `requeue` flag the task then requeues itself, so a
// run longer than the partition's time limit goes on in the next allocation.
std::string slurm_script(const store::Sweep& sweep, const std::vector<int64_t>& jobs, const std::string& db,
                         const std::string& log_dir, const nlohmann::json& options, int64_t attempt = 1);
// Job numbers as an sbatch --array list: {0,1,2,5,7,8} -> "0-2,5,7-8".
std::string array_ranges(const std::vector<int64_t>& jobs);
// One sbatch directive line's argument: the value as sbatch's #SBATCH parser reads it back
// (double quotes around whitespace; backslashes before ", \ and #, which starts a comment there).
std::string sbatch_quote(const std::string& value);

// `sbatch --parsable SCRIPT`: the array's job id. Throws with sbatch's message when it refuses.
std::string submit(const std::string& script);
// The Slurm tasks of this user that are pending or running now, as RunInfo::slurm_job names them
// ("123_4" for array task 4 of job 123, "125" outside an array); nullopt when squeue cannot say
// (not installed, or it failed), and then nothing may be concluded from a task's absence.
std::optional<std::set<std::string>> live_tasks();
// Parses `squeue -h -r -o %i` output into that set ("123_[4-6]" lines, which -r avoids, expand too).
std::set<std::string> parse_squeue(const std::string& out);

}  // namespace ssr::sweep
