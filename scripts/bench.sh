#!/usr/bin/env bash
# Every benchmark that docs/benchmarks.md quotes, each run N times in a row (default 3), each figure
# printed by the benchmark itself beside the reference it is a ratio to (memcpy, ucx_perftest,
# iperf3, redis-benchmark, a disk load, torch.distributed over gloo), measured in the same run.
#
# Usage: bash scripts/bench.sh [--runs N] [--out DIR] [NAME...]
#   NAME   benchmarks to run (default: all, in the order of the table below; --list prints them)
#   --runs number of runs of each benchmark, one after the other (default 3)
#   --out  directory for the logs, DIR/NAME.RUN.log (default /tmp/shardwire-bench)
#   --report  run nothing: print the headline lines of the logs already in DIR
# Builds first (scripts/build.sh installs what is missing). At the end it prints the headline lines
# of every log (the lines docs/benchmarks.md's summary table quotes), grouped by benchmark, each run
# headed by the load average it started at. Run it on an otherwise idle machine: the two-process
# figures move with whatever else runs on the cores. All of it takes about 18 minutes per run on a
# 2-core machine; p2p-load drops the page cache (root) for its cold-disk reference.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=3
report_only=0
out=/tmp/shardwire-bench
sw=./build/src/cli/shardwire
py=/usr/bin/python3

# name | command | headline lines (extended regex over the log)
table=(
  "rl-sync|$sw demo rl-sync --generate tinyllama-1.1b --layers 12 --steps 5 --work-dir \$work|^(plan|connect|reference|per step|copy speed) "
  "fp8-push|$py bench/fp8_push_bench.py --layers 4 --steps 5 --rounds 1 --work-dir \$work|^  (bf16 ->|reference|round)"
  "convert|./build/bench/convert_bench|^ *(memcpy|fp8 block-128 from bf16 )"
  "same-host|./build/bench/agent_transfer_bench --section same-host --trials 5|^\\| (size|[0-9]+ MiB)"
  "tcp|./build/bench/agent_transfer_bench --section tcp --trials 3|^iperf3|^\\| (size|[0-9]+ MiB)"
  "small|./build/bench/agent_transfer_bench --section small --trials 3|^\\| (size|[0-9]+ KiB)"
  "cpu|./build/bench/agent_transfer_bench --section cpu|^\\| (idle|initiator|target)"
  "metrics|./build/bench/agent_transfer_bench --section metrics|^\\| (size|[0-9]+ [KM]iB)"
  "write-bw|./build/bench/agent_write_bw|^\\| (size|[0-9]+ [KM]iB)"
  "registration|./build/bench/agent_registration|^\\| (model|[A-Z])"
  "coordinator|./build/bench/coordinator_bench|HELD|did NOT hold|^unloaded round trip \\(separate|^the Redis-backed coordinator served"
  "p2p-load|./build/bench/p2p_load_bench --work \$work|vs warm disk|^  xxh3|fleet of 8:"
  "python-vs-gloo|env PYTHONPATH=build/python $py bench/python_push_vs_gloo.py --receivers 1 2 --repeats 5 --shardwire-bin $sw|receiver\\(s\\),"
  "relay|$py bench/relay_bench.py --shardwire $sw|relay/direct"
  "plan-scale|./build/bench/plan_scale|^[A-Za-z0-9-]+ : |time:|page faults:|plan time"
)

# Field n of a table row; the last field (the headline regex) may itself contain "|".
field() { local row="$1" n="$2"; if [ "$n" -ge 3 ]; then echo "$row" | cut -d'|' -f"$n"-; else echo "$row" | cut -d'|' -f"$n"; fi; }
row_of() { for row in "${table[@]}"; do if [ "${row%%|*}" = "$1" ]; then echo "$row"; fi; done; }
names() { for row in "${table[@]}"; do echo "${row%%|*}"; done; }

selected=()
while [ $# -gt 0 ]; do
  case "$1" in
    --runs) runs="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --list) names; exit 0 ;;
    --report) report_only=1; shift ;;
    -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "bench.sh: unknown option \"$1\" (--runs N, --out DIR, --report, --list)" >&2; exit 2 ;;
    *)
      names | grep -qx -- "$1" || { echo "bench.sh: unknown benchmark \"$1\"; known: $(names | tr '\n' ' ')" >&2; exit 2; }
      selected+=("$1"); shift ;;
  esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || { echo "bench.sh: --runs must be a positive integer, got \"$runs\"" >&2; exit 2; }
[ ${#selected[@]} -gt 0 ] || mapfile -t selected < <(names)

# Builds, then runs every selected benchmark `runs` times, each into its own log.
run_all() {
  bash scripts/build.sh
  cmake --build build -j2 >/dev/null
  mkdir -p "$out"

  for name in "${selected[@]}"; do
    row=$(row_of "$name")
    for run in $(seq 1 "$runs"); do
      log="$out/$name.$run.log"
      work="$out/work"
      mkdir -p "$work"
      cmd=$(field "$row" 2)
      cmd=${cmd//\$work/$work}
      echo "=== bench.sh: $name run $run/$runs ($(date -u +%H:%M:%S) UTC, load average $(cut -d' ' -f1-3 /proc/loadavg)): $cmd"
      {
        echo "# $cmd"
        echo "# started $(date -u +%FT%TZ), load average $(cut -d' ' -f1-3 /proc/loadavg), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
      } > "$log"
      # shellcheck disable=SC2086  # the command is a word list by design
      if ! $cmd >> "$log" 2>&1; then
        echo "bench.sh: $name run $run failed; its log: $log" >&2
        tail -n 20 "$log" >&2
        exit 1
      fi
    done
  done
}

[ "$report_only" = 1 ] || run_all

echo
echo "=== bench.sh: headline lines (logs in $out)"
for name in "${selected[@]}"; do
  pattern=$(field "$(row_of "$name")" 3)
  echo "--- $name"
  for run in $(seq 1 "$runs"); do
    log="$out/$name.$run.log"
    [ -f "$log" ] || { echo "  run $run: no log ($log)"; continue; }
    echo "  run $run: $(sed -n '2s/^# started //p' "$log")"
    grep -E -- "$pattern" "$log" | grep -v '^# ' | sed 's/^/    /'
  done
done
