#!/usr/bin/env bash
# The full digit benchmark as concurrent single-threaded processes, JOBS at a time: on the 2-core CPU
# (JOBS=2, how benchmarks/digits was produced) two 1-thread runs finish 1.6x sooner than one 2-thread run
# after another; on a GPU machine with many cores, JOBS=36 runs every group at once.
#   JOBS=2 OUT=benchmarks/digits bash scripts/bench_digits_parallel.sh
# Each group (task, seed, bits; source_only+tah or metah) appends to its own runs.jsonl; they are merged into
# $OUT/runs.jsonl, then `scripts/bench_digits.py --out $OUT` (on any machine) aggregates the table, plots
# and throughput.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
PY=${PY:-.venv/bin/python} OUT=${OUT:-benchmarks/digits} WORK=${WORK:-var/bench-digits}
PARTS=${PARTS:-var/bench-parts} JOBS=${JOBS:-2}
export PY WORK PARTS
mkdir -p "$OUT" "$PARTS"
"$PY" scripts/bench_digits.py --work "$WORK" --out "$PARTS/prepare" --prepare-only
started=$(date +%s)
for task in mnist-usps usps-mnist; do for seed in 0 1 2; do for bits in 16 32 64; do
  for group in "source_only tah" "metah"; do echo "$task $seed $bits $group"; done
done; done; done | xargs -P "$JOBS" -L 1 sh -c '
  name="$0-$1-$2-$3${4:+-$4}"
  "$PY" scripts/bench_digits.py --work "$WORK" --out "$PARTS/$name" --tasks "$0" --seeds "$1" --bits "$2" \
    --methods $3 ${4:-} --throughput-repeats 0 > "$PARTS/$name.log" 2>&1'
echo "54 runs in $(( $(date +%s) - started )) s with JOBS=$JOBS"
cat "$PARTS"/*/runs.jsonl > "$OUT/runs.jsonl"
grep -l -E "Traceback" "$PARTS"/*.log || true
wc -l "$OUT/runs.jsonl"
