#!/usr/bin/env bash
# A local stand-in for `sbatch` on a job-array script: runs the script once per index of its
# `#SBATCH --array=` line (ranges, lists, a %P limit ignored), one after another, with
# SLURM_ARRAY_TASK_ID and SLURM_ARRAY_JOB_ID set. Exits non-zero if any task failed.
set -euo pipefail
script=$1
spec=$(sed -n 's/^#SBATCH --array=\([^ ]*\).*/\1/p' "$script" | head -n 1)
[ -n "$spec" ] || { echo "slurm_standin: $script has no #SBATCH --array= line" >&2; exit 2; }
spec=${spec%%%*}
fail=0
IFS=',' read -ra parts <<< "$spec"
for part in "${parts[@]}"; do
  if [[ $part == *-* ]]; then first=${part%-*}; last=${part#*-}; else first=$part; last=$part; fi
  for ((i = first; i <= last; i++)); do
    SLURM_ARRAY_JOB_ID=$$ SLURM_ARRAY_TASK_ID=$i bash "$script" || fail=1
  done
done
exit $fail
