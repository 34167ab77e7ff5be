#!/usr/bin/env bash
# Against a real single-node Slurm (CTest runs it; also by hand: `bash tests/slurm_real.sh build/ssr`
# from the source root). It starts munged, slurmctld and slurmd from Debian's packages (slurmctld,
# slurmd, slurm-client, munge) with a generated one-node slurm.conf in a scratch folder, on free
# ports, and stops them at the end:
#   1. `ssr sweep experiments/table4.yaml --scale demo --launcher slurm` (shortened by overrides)
#      writes a script that `sbatch` accepts unedited on this CPU-only node; the array runs and the
#      store has every job finished exactly once;
#   2. `srun -n 2 ssr train …` is one finished run of 2 Gloo ranks.
# The daemons need root (they run as SlurmUser root here). Without root or the packages the test
# is skipped (exit 77, CTest's SKIP_RETURN_CODE) with the reason, never passed.
set -euo pipefail
SSR=$(realpath "${1:?usage: slurm_real.sh PATH/TO/ssr}")
cd "$(dirname "$0")/.."
skip() {
  echo "SKIP: $*" >&2
  exit 77
}
[ "$(id -u)" -eq 0 ] || skip "the Slurm daemons need root (run as uid $(id -u))"
for b in munged slurmctld slurmd sbatch srun squeue sinfo; do
  command -v "$b" >/dev/null || skip "$b not found (Debian: apt-get install slurmctld slurmd slurm-client munge)"
done

WORK=$(mktemp -d /tmp/ssr_slurm.XXXXXX)
chmod 755 "$WORK"  # munged wants every directory above its socket searchable
DAEMONS=()
cleanup() {
  for pid in "${DAEMONS[@]}"; do kill "$pid" 2>/dev/null || true; done
  [ -f "$WORK/munged.pid" ] && kill "$(cat "$WORK/munged.pid")" 2>/dev/null || true
  sleep 1
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -z "${KEEP:-}" ] || trap 'for p in "${DAEMONS[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
fail() {
  echo "FAIL: $*" >&2
  for f in "$WORK"/log/*; do
    echo "--- $f (last 15 lines)" >&2
    tail -n 15 "$f" >&2
  done
  exit 1
}
sql() {
  python3 -c 'import sqlite3, sys
with sqlite3.connect(sys.argv[1]) as c:
    for r in c.execute(sys.argv[2]).fetchall(): print(*r, sep="|")' "$@"
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("", 0)); print(s.getsockname()[1])'; }
export OMP_NUM_THREADS=1

mkdir -p "$WORK/state" "$WORK/spool" "$WORK/log"
head -c 1024 /dev/urandom >"$WORK/munge.key"
chmod 600 "$WORK/munge.key"
munged --force --socket="$WORK/munge.sock" --key-file="$WORK/munge.key" --pid-file="$WORK/munged.pid" \
  --log-file="$WORK/log/munged.log" --seed-file="$WORK/munged.seed" || fail "munged did not start"

HOST=$(hostname -s)
MEM_MB=$(($(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512))
export SLURM_CONF="$WORK/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=ssrtest
SlurmctldHost=$HOST
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$WORK/munge.sock
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
NodeName=$HOST CPUs=$(getconf _NPROCESSORS_ONLN) RealMemory=$MEM_MB State=UNKNOWN
PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i -f "$SLURM_CONF" >"$WORK/log/slurmctld.out" 2>&1 &
DAEMONS+=($!)
slurmd -D -f "$SLURM_CONF" >"$WORK/log/slurmd.out" 2>&1 &
DAEMONS+=($!)
for _ in $(seq 60); do
  [ "$(sinfo -h -o %t 2>/dev/null)" = idle ] && break
  sleep 0.5
done
[ "$(sinfo -h -o %t 2>/dev/null)" = idle ] || fail "the node did not come up idle: $(sinfo 2>&1 | tail -n 1)"
echo "slurm: one node ($HOST, $(getconf _NPROCESSORS_ONLN) CPUs) up"

# 1. The demo scale's script, unedited, through sbatch.
DB="$WORK/runs.db"
SHORT=(train.steps=4 train.eval_every=0 train.checkpoint_every=2 eval.max_segments=2 "run.out_dir=$WORK/ck")
"$SSR" sweep experiments/table4.yaml --scale demo --launcher slurm --db "$DB" "${SHORT[@]}" >"$WORK/plan.out" 2>&1 ||
  fail "planning: $(cat "$WORK/plan.out")"
SCRIPT="$WORK/sweeps/sweep-1.sbatch"
[ -f "$SCRIPT" ] || fail "no script at $SCRIPT: $(cat "$WORK/plan.out")"
JOB=$(sbatch --parsable "$SCRIPT" 2>"$WORK/sbatch.err") || fail "sbatch refused the script: $(cat "$WORK/sbatch.err")"
echo "slurm: sbatch accepted $SCRIPT as job $JOB"
for _ in $(seq 600); do
  [ -z "$(squeue -h -j "$JOB" 2>/dev/null)" ] && break
  sleep 0.5
done
[ -z "$(squeue -h -j "$JOB" 2>/dev/null)" ] || fail "array job $JOB still queued or running after 300 s"
JOBS=$(sql "$DB" "SELECT count(*) FROM runs WHERE sweep_id = 1")
DONE=$(sql "$DB" "SELECT count(DISTINCT job_num) FROM runs WHERE sweep_id = 1 AND status = 'finished'")
DUPES=$(sql "$DB" "SELECT count(*) FROM (SELECT job_num FROM runs WHERE sweep_id = 1 GROUP BY job_num HAVING count(*) > 1)")
[ "$JOBS" = 12 ] && [ "$DONE" = 12 ] && [ "$DUPES" = 0 ] ||
  fail "sweep 1: $JOBS rows, $DONE jobs finished, $DUPES duplicated; expected 12, 12, 0 ($(ls "$WORK/logs/sweep-1" | wc -l) task logs)"
echo "slurm: the array trained all 12 jobs once each"

# 2. Two ranks from srun: Slurm's task variables make the data-parallel group.
srun -n 2 "$SSR" train experiments/demo.yaml train.steps=4 train.eval_every=0 train.checkpoint_every=0 \
  eval.max_segments=2 "run.out_dir=$WORK/ck2" --db "$WORK/dp.db" --quiet >"$WORK/srun.out" 2>&1 ||
  fail "srun -n 2 ssr train: $(tail -n 5 "$WORK/srun.out")"
ROW=$(sql "$WORK/dp.db" "SELECT count(*), max(status), max(world_size) FROM runs")
[ "$ROW" = "1|finished|2" ] || fail "srun -n 2: expected one finished run of world size 2, the store has $ROW"
echo "slurm: srun -n 2 trained one run of 2 ranks"
