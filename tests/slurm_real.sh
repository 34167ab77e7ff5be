#!/usr/bin/env bash
# Against a real single-node Slurm (CTest runs it; also by hand: `bash tests/slurm_real.sh build/ssr`
# from the source root). It starts munged, slurmctld and slurmd from Debian's packages (slurmctld,
# slurmd, slurm-client, munge) with a generated one-node slurm.conf in a scratch folder, on free
# ports, and stops them at the end:
#   1. `ssr sweep experiments/table4.yaml --scale demo --launcher slurm` (shortened by overrides)
#      writes a script that `sbatch` accepts unedited on this CPU-only node; the array runs and the
#      store has every job finished exactly once;
#   2. `srun -n 2 ssr train …` is one finished run of 2 Gloo ranks;
#   3. `scontrol requeue` of a running task (what a preempting partition does): the task runs again
#      and continues its run from its checkpoint, one row, finished;
#   4. preemption by the lead-time signal (`scancel -b -s USR1`, as `--signal=B:USR1@120` sends it):
#      ssr checkpoints, the script requeues its task (`--slurm requeue`), the run resumes there and
#      its losses equal an uninterrupted run's, step by step;
#   5. `ssr sweep --resume --submit` while an earlier array still has a pending task leaves that job
#      to it: every job trained once;
#   6. a data-parallel sweep job (run.nproc=2) gets 2 CPUs and trains as one run of 2 ranks.
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
echo "slurm: one node ($HOST, $(getconf _NPROCESSORS_ONLN) CPUs) up (${SECONDS} s)"

# 1. The demo scale's script, unedited, through sbatch.
DB="$WORK/runs.db"
SHORT=(train.steps=4 train.eval_every=0 train.checkpoint_every=2 eval.max_segments=2 "run.out_dir=$WORK/ck")
"$SSR" sweep experiments/table4.yaml --scale demo --launcher slurm --db "$DB" "${SHORT[@]}" >"$WORK/plan.out" 2>&1 ||
  fail "planning: $(cat "$WORK/plan.out")"
SCRIPT="$WORK/sweeps/sweep-1.sbatch"
[ -f "$SCRIPT" ] || fail "no script at $SCRIPT: $(cat "$WORK/plan.out")"
JOB=$(sbatch --parsable "$SCRIPT" 2>"$WORK/sbatch.err") || fail "sbatch refused the script: $(cat "$WORK/sbatch.err")"
echo "slurm: sbatch accepted $SCRIPT as job $JOB (${SECONDS} s)"
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
echo "slurm: the array trained all 12 jobs once each (${SECONDS} s)"

# 2. Two ranks from srun: Slurm's task variables make the data-parallel group.
srun -n 2 "$SSR" train experiments/demo.yaml train.steps=4 train.eval_every=0 train.checkpoint_every=0 \
  eval.max_segments=2 "run.out_dir=$WORK/ck2" --db "$WORK/dp.db" --quiet >"$WORK/srun.out" 2>&1 ||
  fail "srun -n 2 ssr train: $(tail -n 5 "$WORK/srun.out")"
ROW=$(sql "$WORK/dp.db" "SELECT count(*), max(status), max(world_size) FROM runs")
[ "$ROW" = "1|finished|2" ] || fail "srun -n 2: expected one finished run of world size 2, the store has $ROW"
echo "slurm: srun -n 2 trained one run of 2 ranks (${SECONDS} s)"

# Waits until Slurm no longer lists job $1 (all its tasks ended), up to $2 seconds.
wait_gone() {
  for _ in $(seq $(($2 * 2))); do
    [ -z "$(squeue -h -j "$1" 2>/dev/null)" ] && return 0
    sleep 0.5
  done
  fail "Slurm job $1 still queued or running after $2 s: $(squeue -j "$1" 2>&1 | tail -n 2)"
}
# Waits until run 1 of store $1 is running at step >= $2.
wait_step() {
  for _ in $(seq 600); do
    [ "$(sql "$1" "SELECT count(*) FROM runs WHERE status = 'running' AND step >= $2" 2>/dev/null)" = 1 ] && return 0
    sleep 0.2
  done
  fail "no run of $1 reached step $2 within 120 s: $(sql "$1" "SELECT id, status, step, error FROM runs")"
}
LONG=(train.steps=120 train.batch_size=4 train.seq_len=16 train.eval_every=0 train.checkpoint_every=10
  eval.max_segments=2 run.log_every=1)
# Slurm holds a requeued job for 121 s (its BeginTime); a real user waits, the test moves it on.
hurry() {
  for _ in $(seq 600); do
    if [ "$(squeue -h -j "$1" -o %r 2>/dev/null)" = BeginTime ]; then
      scontrol update JobId="$1" StartTime=now >/dev/null 2>&1 && return 0
    fi
    sleep 0.2
  done
  fail "task $1 was not requeued within 120 s: $(squeue -j "$1" 2>&1 | tail -n 1)"
}
losses() { sql "$1" "SELECT group_concat(value, ' ') FROM (SELECT value FROM metrics WHERE split = 'train' AND name = 'loss' ORDER BY step)"; }

# 3. scontrol requeue: the task runs again and takes its own job back.
DB3="$WORK/requeue.db"
"$SSR" sweep experiments/demo.yaml "${LONG[@]}" "run.out_dir=$WORK/ck3" --launcher slurm --slurm requeue --submit \
  --db "$DB3" >"$WORK/plan3.out" 2>&1 || fail "planning 3: $(cat "$WORK/plan3.out")"
JOB3=$(sql "$DB3" "SELECT slurm_job FROM sweep_launches")
wait_step "$DB3" 20
scontrol requeue "${JOB3}_0" || fail "scontrol requeue ${JOB3}_0 refused"
hurry "${JOB3}_0"
wait_gone "$JOB3" 300
ROW=$(sql "$DB3" "SELECT count(*), max(status), max(step) FROM runs")
[ "$ROW" = "1|finished|120" ] || fail "after scontrol requeue: expected one run finished at step 120, the store has $ROW"
grep -q "resumed at step" "$WORK"/logs/sweep-1/job-0.log 2>/dev/null ||
  grep -rq "resumed at step" "$(dirname "$DB3")/logs" ||
  fail "the requeued task did not resume its run: $(tail -n 5 "$(dirname "$DB3")"/logs/sweep-1/job-0.log)"
echo "slurm: scontrol requeue: the task ran again and continued run 1 to step 120 (${SECONDS} s)"

# 4. The lead-time signal: checkpoint, requeue by the script, resume; the same losses as a run
#    never stopped.
DB4="$WORK/preempt/runs.db"
"$SSR" sweep experiments/demo.yaml "${LONG[@]}" train.checkpoint_every=100 "run.out_dir=$WORK/ck4" --launcher slurm \
  --slurm requeue --submit --db "$DB4" >"$WORK/plan4.out" 2>&1 || fail "planning 4: $(cat "$WORK/plan4.out")"
JOB4=$(sql "$DB4" "SELECT slurm_job FROM sweep_launches")
wait_step "$DB4" 25
scancel -b -s USR1 "${JOB4}_0" || fail "scancel -b -s USR1 ${JOB4}_0 refused"
hurry "${JOB4}_0"
wait_gone "$JOB4" 300
ROW=$(sql "$DB4" "SELECT count(*), max(status), max(step) FROM runs")
[ "$ROW" = "1|finished|120" ] || fail "after USR1: expected one run finished at step 120, the store has $ROW"
LOG4="$WORK/preempt/logs/sweep-1/job-0.log"
grep -q "requeueing Slurm task" "$LOG4" || fail "the script did not requeue its task on USR1: $(tail -n 5 "$LOG4")"
grep -q "resumed at step" "$LOG4" || fail "the requeued task did not resume: $(tail -n 5 "$LOG4")"
"$SSR" train experiments/demo.yaml "${LONG[@]}" train.checkpoint_every=100 "run.out_dir=$WORK/ck4ref" \
  --db "$WORK/ref.db" --quiet >"$WORK/ref.out" 2>&1 || fail "the reference run: $(tail -n 3 "$WORK/ref.out")"
[ "$(losses "$DB4")" = "$(losses "$WORK/ref.db")" ] || fail "the resumed run's losses differ from an uninterrupted run's"
echo "slurm: USR1: checkpoint, requeue by the script, resume at $(grep -o 'resumed at step [0-9]*' "$LOG4" | head -n 1 | cut -d' ' -f4); 120 losses equal to an uninterrupted run's (${SECONDS} s)"

# 5. A resume while an earlier array still has a pending task: that job is not submitted twice.
DB5="$WORK/resume/runs.db"
"$SSR" sweep experiments/demo.yaml "${LONG[@]}" run.seed=1,2 "run.out_dir=$WORK/ck5" --launcher slurm \
  --slurm parallel=1 --slurm mem=200M --submit --db "$DB5" >"$WORK/plan5.out" 2>&1 || fail "planning 5: $(cat "$WORK/plan5.out")"
JOB5=$(sql "$DB5" "SELECT slurm_job FROM sweep_launches")
wait_step "$DB5" 5
"$SSR" sweep --resume 1 --submit --db "$DB5" >"$WORK/resume5.out" 2>&1 || fail "--resume: $(cat "$WORK/resume5.out")"
grep -q "job(s) 1 are still pending in an earlier Slurm array" "$WORK/resume5.out" ||
  fail "--resume did not see the pending task: $(cat "$WORK/resume5.out")"
grep -q "nothing to submit" "$WORK/resume5.out" || fail "--resume submitted again: $(cat "$WORK/resume5.out")"
wait_gone "$JOB5" 300
ROW=$(sql "$DB5" "SELECT count(*), sum(status = 'finished'), (SELECT count(*) FROM sweep_launches) FROM runs")
[ "$ROW" = "2|2|1" ] || fail "after --resume: expected 2 runs, both finished, from 1 launch; the store has $ROW"
echo "slurm: --resume left the pending task its job: 2 jobs, each trained once (${SECONDS} s)"

# 6. A data-parallel job of a sweep: 2 CPUs for its 2 ranks.
DB6="$WORK/dp/runs.db"
"$SSR" sweep experiments/demo.yaml "${SHORT[@]}" run.nproc=2 "run.out_dir=$WORK/ck6" --launcher slurm --submit \
  --db "$DB6" >"$WORK/plan6.out" 2>&1 || fail "planning 6: $(cat "$WORK/plan6.out")"
wait_gone "$(sql "$DB6" "SELECT slurm_job FROM sweep_launches")" 300
ROW=$(sql "$DB6" "SELECT count(*), max(status), max(world_size) FROM runs")
[ "$ROW" = "1|finished|2" ] || fail "run.nproc=2 in a sweep: expected one finished run of world size 2, the store has $ROW"
echo "slurm: a sweep job of 2 data-parallel ranks ran on its 2 CPUs (${SECONDS} s)"
