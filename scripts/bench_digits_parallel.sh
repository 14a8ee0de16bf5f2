#!/usr/bin/env bash
# The full digit benchmark as many concurrent processes, for a machine with one GPU and many CPU cores
# (this is how benchmarks/digits was produced on an H200: 36 processes, about 7 minutes).
#   OUT=benchmarks/digits bash scripts/bench_digits_parallel.sh
# Each process appends to its own runs.jsonl; they are merged into $OUT/runs.jsonl, then
# `scripts/bench_digits.py --out $OUT` (on any machine) aggregates the table, plots and throughput.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
OUT=${OUT:-benchmarks/digits} WORK=${WORK:-/tmp/bench-work} PARTS=${PARTS:-/tmp/bench-parts}
mkdir -p "$OUT" "$PARTS"
for task in mnist-usps usps-mnist; do
  python3 scripts/bench_digits.py --work "$WORK" --out "$PARTS/prepare" --tasks "$task" --prepare-only &
done
wait
pids=()
for task in mnist-usps usps-mnist; do for seed in 0 1 2; do for bits in 16 32 64; do
  for group in "source_only tah" "metah"; do
    name=$task-$seed-$bits-${group// /-}
    # shellcheck disable=SC2086  # $group holds two method names on purpose
    python3 scripts/bench_digits.py --work "$WORK" --out "$PARTS/$name" --tasks "$task" --seeds "$seed" \
      --bits "$bits" --methods $group --throughput-repeats 0 > "$PARTS/$name.log" 2>&1 &
    pids+=($!)
  done
done; done; done
wait "${pids[@]}"
cat "$PARTS"/*/runs.jsonl > "$OUT/runs.jsonl"
grep -l -E "Traceback" "$PARTS"/*.log || true
wc -l "$OUT/runs.jsonl"
