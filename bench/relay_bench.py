#!/usr/bin/python3
"""Engine-to-engine relays against direct writes of the same push, in one run (issue 12, item 5).

Runs `shardwire demo rl-sync` on one generated checkpoint (TinyLlama-1.1B shapes, --layers N)
with R engine replicas of TP 2, alternately without and with `--relay` (the trainers write
one replica; each replica forwards to the next ones along a K-ary tree after it committed).
Figures per run, steps 2..S: the bytes the trainers wrote per step, the trainers' transfer time
(first post to last completion) and the delivery time (first write to the last engine rank's
commit, forwards included), each engine byte checked by the demo on the last step. Reference
in the same run: the direct-write run itself (ratios relay / direct) and a two-thread memcpy of
one step's engine bytes (the demo's own `reference` line).

Usage: /usr/bin/python3 bench/relay_bench.py [--shardwire build/src/cli/shardwire]
       [--layers 4] [--replicas 3] [--steps 5] [--rounds 3] [--concurrency 1]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile


def run_demo(shardwire, layers, replicas, steps, concurrency, relay, work_dir):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [shardwire, "demo", "rl-sync", "--generate", "tinyllama-1.1b", "--layers", str(layers),
           "--engines", str(replicas), "--tp", "2", "--steps", str(steps), "--verify", "last",
           "--concurrency", str(concurrency), "--work-dir", work_dir, "--json", out]
    if relay:
        cmd.append("--relay")
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}")
    with open(out) as f:
        summary = json.load(f)
    os.unlink(out)
    steady = summary["steps"][1:] or summary["steps"]
    memcpy = re.search(r"reference\s+memcpy, (\d+) thread\(s\), same bytes, this run: ([0-9.]+) GB/s", proc.stdout)
    return {
        "engine_bytes": summary["bytes_per_step"],
        "trainer_bytes": sum(s["bytes"] for s in steady) / len(steady),
        "transfer_s": sum(s["transfer_s"] for s in steady) / len(steady),
        "deliver_s": sum(s["deliver_s"] for s in steady) / len(steady),
        "relayed": min(s.get("relayed", 0) for s in steady),
        "memcpy_gbps": float(memcpy.group(2)) if memcpy else 0.0,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shardwire", default="build/src/cli/shardwire")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--replicas", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=1, help="K: 1 makes the relay tree a chain")
    args = ap.parse_args()
    load = os.getloadavg()
    print(f"relay_bench: load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} ({os.cpu_count()} cores)")
    with tempfile.TemporaryDirectory(prefix="relay-bench-") as work:
        for r in range(1, args.rounds + 1):
            direct = run_demo(args.shardwire, args.layers, args.replicas, args.steps, args.concurrency, False, work)
            relay = run_demo(args.shardwire, args.layers, args.replicas, args.steps, args.concurrency, True, work)
            gb = direct["engine_bytes"] / 1e9
            print(f"round {r}: {gb:.3f} GB of engine weights per step, {args.replicas} replicas x TP 2, K = "
                  f"{args.concurrency}, steps 2..{args.steps}")
            for name, f in (("direct", direct), ("relay ", relay)):
                print(f"  {name}  trainers wrote {f['trainer_bytes'] / 1e9:.3f} GB in {f['transfer_s']:.4f} s | "
                      f"every engine rank committed after {f['deliver_s']:.4f} s = "
                      f"{direct['engine_bytes'] / f['deliver_s'] / 1e9:.2f} GB/s | {f['relayed']} engine ranks "
                      f"relayed | memcpy (same run, 2 threads) {f['memcpy_gbps']:.2f} GB/s")
            print(f"  relay/direct: trainer bytes {relay['trainer_bytes'] / direct['trainer_bytes']:.2f}, trainer "
                  f"time {relay['transfer_s'] / direct['transfer_s']:.2f}, delivery time "
                  f"{relay['deliver_s'] / direct['deliver_s']:.2f}")


if __name__ == "__main__":
    main()
