#!/bin/bash
# Runs one gtest filter of a test binary N times and counts the failures: how the
# failure rates in docs/reliability.md were measured (copy the binary aside first
# if you rebuild while it runs).
#   usage: scripts/repeat_test.sh BINARY FILTER N OUTDIR
# OUTDIR/summary gets one line per run ("run I rc=RC SECONDS s") and a last line
# "pass=P fail=F"; the output of each failed run is kept as OUTDIR/runI.log.
set -u
if [ $# -ne 4 ]; then
  echo "usage: $0 BINARY FILTER N OUTDIR" >&2
  exit 2
fi
bin=$1; filter=$2; n=$3; out=$4
mkdir -p "$out"
pass=0; fail=0
for i in $(seq 1 "$n"); do
  start=$(date +%s.%N)
  timeout 300 "$bin" --gtest_filter="$filter" > "$out/run$i.log" 2>&1
  rc=$?
  end=$(date +%s.%N)
  if [ $rc -eq 0 ]; then pass=$((pass + 1)); rm -f "$out/run$i.log"; else fail=$((fail + 1)); echo "run $i failed (rc=$rc)"; fi
  echo "run $i rc=$rc $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }') s" >> "$out/summary"
done
echo "pass=$pass fail=$fail" | tee -a "$out/summary"
[ $fail -eq 0 ]
