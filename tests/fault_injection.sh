#!/usr/bin/env bash
# Faults on purpose, end to end through the `ssr` binary (CTest runs it; also by hand:
# `bash tests/fault_injection.sh build/ssr` from the source root):
#   1. kill -9 a sweep worker and then the sweep itself mid-job; `--resume` finishes the sweep with
#      no job lost and no row duplicated, while the orphaned worker still holds its run;
#   2. a checkpoint with 64 bytes flipped is refused on --resume, naming the file;
#   3. a full disk (a 4 MiB tmpfs, where this machine lets us mount one) under the checkpoints and
#      under the store: exit 74, one line naming the path, the run marked failed, no temporary left.
set -euo pipefail
SSR=$(realpath "${1:?usage: fault_injection.sh PATH/TO/ssr}")
cd "$(dirname "$0")/.."
WORK=$(mktemp -d /tmp/ssr_faults.XXXXXX)
MNT="$WORK/tmpfs"
# The pids whose command line contains $1 (no procps on a minimal machine).
pids_matching() {
  local d cmd
  for d in /proc/[0-9]*; do
    cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
    [[ $cmd == *"$1"* && ${d#/proc/} != "$$" ]] && echo "${d#/proc/}"
  done
  return 0
}
cleanup() {
  for pid in $(pids_matching "$WORK/"); do kill -9 "$pid" 2>/dev/null || true; done
  if mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT"; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
[ -z "${KEEP:-}" ] || trap - EXIT  # KEEP=1: leave the scratch folder for a look
export OMP_NUM_THREADS=1

fail() { echo "FAIL: $*" >&2; exit 1; }
# SQL on a store, for the checks only (the product never needs it).
sql() {
  python3 -c 'import sqlite3, sys
with sqlite3.connect(sys.argv[1]) as c:
    for r in c.execute(sys.argv[2]).fetchall(): print(*r, sep="|")' "$@"
}
# The demo model, tiny: about 0.2 s a step on one core.
SMALL=(train.batch_size=4 train.seq_len=16 train.warmup=2 eval.batch_size=4 eval.max_segments=2 train.eval_every=0
       run.log_every=2 run.threads=1 train.checkpoint_every=2)

echo "== 1. kill -9 a worker, then the sweep; resume"
DB=$WORK/sweep/runs.db
mkdir -p "$WORK/sweep"
cat > "$WORK/sweep/sweep.yaml" <<EOF
base: $PWD/experiments/demo.yaml
overrides: [train.steps=40, $(IFS=,; echo "${SMALL[*]}"), run.out_dir=$WORK/sweep/ckpt]
grid:
  router.name: [vanilla, lb, zloss, sinkhorn]
EOF
"$SSR" sweep "$WORK/sweep/sweep.yaml" --jobs 2 --db "$DB" --quiet >"$WORK/sweep/first.log" 2>&1 &
PARENT=$!
victim=""
for _ in $(seq 600); do
  sleep 0.1
  [ -f "$DB" ] || continue
  # A job at step 4 or more: its worker is the victim.
  pid=$(sql "$DB" "SELECT pid FROM runs WHERE status='running' AND step >= 4 LIMIT 1" 2>/dev/null || true)
  if [ -n "$pid" ]; then victim=$pid; break; fi
done
[ -n "$victim" ] || fail "no job reached step 4"
kill -9 "$victim"
kill -9 "$PARENT"
wait "$PARENT" 2>/dev/null || true
"$SSR" sweep --resume 1 --jobs 2 --db "$DB" --quiet >"$WORK/sweep/resume.log" 2>&1 ||
  fail "resume: exit $? ($(tail -1 "$WORK/sweep/resume.log"))"
# The other worker, orphaned, finishes its run; resume left that run to it.
for _ in $(seq 600); do
  [ -n "$(pids_matching "--db $DB")" ] || break
  sleep 0.1
done
jobs_done=$(sql "$DB" "SELECT count(DISTINCT job_num) FROM runs WHERE sweep_id=1 AND status='finished'")
rows=$(sql "$DB" "SELECT count(*) FROM runs WHERE sweep_id=1")
[ "$jobs_done" = 4 ] || fail "$jobs_done of 4 jobs finished: $(sql "$DB" "SELECT job_num, status FROM runs")"
[ "$rows" = 4 ] || fail "$rows run rows for 4 jobs"
# Every finished run logged its 20 training losses (steps 2, 4, ..., 40) exactly once.
bad=$(sql "$DB" "SELECT run_id, count(*), count(DISTINCT step) FROM metrics WHERE split='train' AND name='loss'
                 GROUP BY run_id HAVING count(*) != 20 OR count(DISTINCT step) != 20")
[ -z "$bad" ] || fail "runs with lost or duplicated loss rows (run|rows|steps): $bad"
dup=$(sql "$DB" "SELECT count(*) - count(DISTINCT run_id || split || name || step) FROM metrics")
[ "$dup" = 0 ] || fail "$dup duplicated metric rows"
echo "ok: 4 of 4 jobs finished once, 0 rows lost, 0 duplicated"

echo "== 2. a corrupted checkpoint is refused"
DB=$WORK/ckpt/runs.db
"$SSR" train experiments/demo.yaml train.steps=4 "${SMALL[@]}" run.out_dir="$WORK/ckpt/out" --db "$DB" --quiet \
  >/dev/null 2>&1 || fail "training the run to corrupt"
CKPT=$(find "$WORK/ckpt/out" -name last.pt | head -1)
[ -n "$CKPT" ] || fail "no last.pt under $WORK/ckpt/out"
python3 - "$CKPT" <<'EOF'
import sys
p = sys.argv[1]
b = bytearray(open(p, "rb").read())
mid = len(b) // 2
for i in range(mid, mid + 64):
    b[i] ^= 0xFF
open(p, "wb").write(b)
EOF
sql "$DB" "UPDATE runs SET status='interrupted' WHERE id=1"
set +e
out=$("$SSR" train --resume 1 --db "$DB" --quiet 2>&1)
code=$?
set -e
[ "$code" != 0 ] || fail "a corrupted checkpoint was resumed"
echo "$out" | grep -q "$CKPT: checksum mismatch" || fail "the refusal does not name the file: $out"
echo "ok: exit $code, $out"

echo "== 3. a full disk"
mkdir -p "$MNT"
if ! mount -t tmpfs -o size=4m tmpfs "$MNT" 2>/dev/null; then
  echo "skipped: this machine does not let us mount a tmpfs (needs root or CAP_SYS_ADMIN)"
  exit 0
fi
DB=$WORK/disk/runs.db
set +e
out=$("$SSR" train experiments/demo.yaml train.steps=4 "${SMALL[@]}" run.out_dir="$MNT/out" --db "$DB" --quiet 2>&1)
code=$?
set -e
[ "$code" = 74 ] || fail "checkpoints on a full disk: exit $code, expected 74: $out"
[ "$(echo "$out" | grep -c '^error: ')" = 1 ] || fail "not one error line: $out"
echo "$out" | grep -q "$MNT/out/.*No space left on device" || fail "the error does not name the path: $out"
[ -z "$(find "$MNT" -name '*.tmp')" ] || fail "a temporary checkpoint was left on the full disk"
[ "$(sql "$DB" "SELECT status FROM runs WHERE id=1")" = failed ] || fail "the run is not marked failed"
sql "$DB" "SELECT error FROM runs WHERE id=1" | grep -q "No space left on device" || fail "no reason stored"
echo "ok: checkpoints: exit 74, $out"

rm -rf "${MNT:?}"/*
DB=$MNT/runs.db
"$SSR" train experiments/demo.yaml train.steps=2 "${SMALL[@]}" run.out_dir="$WORK/disk/out" --db "$DB" --quiet \
  >/dev/null 2>&1 || fail "a first run on the tmpfs store"
free_kb=$(df -k --output=avail "$MNT" | tail -1)
dd if=/dev/zero of="$MNT/fill" bs=1k count=$((free_kb - 120)) status=none
set +e
out=$("$SSR" train experiments/demo.yaml train.steps=200 "${SMALL[@]}" run.out_dir="$WORK/disk/out" --db "$DB" --quiet 2>&1)
code=$?
set -e
rm "$MNT/fill"
[ "$code" = 74 ] || fail "a store on a full disk: exit $code, expected 74: $out"
echo "$out" | grep -q "^error: $DB: the run store cannot be written" || fail "the error does not name the store: $out"
# The row is marked failed, or, when that write fails too, stays running with the pid of a
# process that is gone: every listing shows it stale, and the error says how to continue.
shown=$("$SSR" runs --where id=2 --columns status --format csv --db "$DB" | tail -1)
[ "$shown" = failed ] || [ "$shown" = stale ] || fail "the run on the full store shows as '$shown'"
[ "$shown" = failed ] || echo "$out" | grep -q "ssr train --resume 2" || fail "the error does not say how to resume: $out"
wal_kb=$(du -k "$DB-wal" 2>/dev/null | cut -f1)
[ "${wal_kb:-0}" -le 1100 ] || fail "the WAL grew to $wal_kb KiB (bounded to 1 MiB)"
"$SSR" train --resume 2 --or-from-start --db "$DB" --quiet >/dev/null 2>&1 || fail "the run does not resume once space is free"
[ "$(sql "$DB" "SELECT status FROM runs WHERE id=2")" = finished ] || fail "the resumed run did not finish"
echo "ok: store: exit 74, shown $shown, resumed: $(echo "$out" | grep '^error: ')"

# A disk full before the store has its first table leaves no store behind.
rm -rf "${MNT:?}"/*
free_kb=$(df -k --output=avail "$MNT" | tail -1)
dd if=/dev/zero of="$MNT/fill" bs=1k count="$free_kb" status=none 2>/dev/null || true
set +e
out=$("$SSR" train experiments/demo.yaml train.steps=2 "${SMALL[@]}" --db "$MNT/new.db" --quiet 2>&1)
code=$?
set -e
rm "$MNT/fill"
[ "$code" = 74 ] || fail "a new store on a full disk: exit $code, expected 74: $out"
[ ! -e "$MNT/new.db" ] || fail "a new store on a full disk was left behind ($(stat -c %s "$MNT/new.db") bytes)"
echo "ok: new store on a full disk: exit 74, none left: $(echo "$out" | grep '^error: ')"
