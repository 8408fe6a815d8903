#!/usr/bin/python3
"""bf16 -> FP8 push against bf16 -> bf16 push of the same model, in one run (issue 9, item 7).

Runs `shardwire demo rl-sync` twice on the same generated checkpoint (TinyLlama-1.1B shapes,
--layers N): once into bf16 engines, once into FP8 block-128 engines (`--engine-dtype
fp8-block`: the trainers quantise on the way, every engine rank verifies weights and scales
byte for byte). Figures per run: bytes moved per step, seconds per step (mean of steps 2..S,
the union of the trainers' transfer windows, conversion included: it overlaps the WRITEs), and
the same-run two-thread memcpy of the bf16 step's bytes as the reference. The goal: the FP8
push no slower than the bf16 push (ratio of step times <= 1.0), since half the weight bytes move.

Usage: /usr/bin/python3 bench/fp8_push_bench.py [--shardwire build/src/cli/shardwire]
       [--layers 12] [--steps 5] [--rounds 1] [--staging-slots 2,8] [--with-staging]
       [--with-lane-copies] [--with-private-engines]
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile


def run_demo(shardwire, engine_dtype, layers, steps, work_dir, extra=()):
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        out = f.name
    cmd = [shardwire, "demo", "rl-sync", "--generate", "tinyllama-1.1b", "--layers", str(layers),
           "--steps", str(steps), "--engine-dtype", engine_dtype, "--work-dir", work_dir, "--json", out, *extra]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}")
    with open(out) as f:
        summary = json.load(f)
    os.unlink(out)
    steady = summary["steps"][1:] or summary["steps"]
    return {
        "bytes": summary["bytes_per_step"],
        "step_s": sum(s["transfer_s"] for s in steady) / len(steady),
        "step1_s": summary["steps"][0]["transfer_s"],
        "convert_s": max(s.get("convert_s", 0.0) for s in steady),
        "staging_peak": max(s.get("staging_peak_bytes", 0) for s in steady),
        "mapped": max(s.get("mapped_bytes", 0) for s in steady),
        # CPU seconds per step of the push's own work, all trainers: conversion (with the copies into
        # mapped engine buffers when it writes there) + the lanes' copies + the pushing threads' copies of
        # moved bytes into mapped engine buffers. Hardly moved by other load.
        "cpu_s": sum(s.get("convert_cpu_s", 0.0) + s.get("copy_cpu_s", 0.0) + s.get("pushed_copy_cpu_s", 0.0)
                     for s in steady) / len(steady),
        "memcpy_gbps": summary["memcpy_gb_per_s"],
        "verified": all(s["verified"] > 0 for s in summary["steps"]),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shardwire", default=os.path.join(os.path.dirname(__file__), "..", "build", "src", "cli",
                                                       "shardwire"))
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1, help="repeat the pair this many times")
    p.add_argument("--work-dir", default=os.path.join(tempfile.gettempdir(), "shardwire-demo"))
    p.add_argument("--staging-slots", default="",
                   help="comma-separated staging ring sizes to run the FP8 push with, each in the same round "
                        "(e.g. 2,8; default: the automatic choice only)")
    p.add_argument("--with-staging", action="store_true",
                   help="also run the FP8 push with --staging-only (convert into the staging ring and WRITE from it, "
                        "instead of converting straight into the engine buffers the transport maps), same round")
    p.add_argument("--with-lane-copies", action="store_true",
                   help="also run the FP8 push with --lane-copies (the lanes copy the moved bytes, one transfer per "
                        "engine rank, instead of the pushing threads reading them once for every replica), same round")
    p.add_argument("--with-private-engines", action="store_true",
                   help="also run the FP8 push with --engine-memory private (engines in private huge pages, written by "
                        "kernel copy from the staging ring, instead of shared memory the trainers convert into), "
                        "same round")
    a = p.parse_args()
    print(f"model: TinyLlama-1.1B shapes, {a.layers} layers; 2 FSDP trainers -> 2 engines x TP 2; "
          f"steps 2..{a.steps} averaged")
    slot_runs = [s for s in a.staging_slots.split(",") if s] or [""]
    for r in range(a.rounds):
        bf16 = run_demo(a.shardwire, "trainer", a.layers, a.steps, a.work_dir)
        fp8_runs = []
        if a.with_staging:
            fp8_runs.append(("bf16 -> fp8 (staging ring)",
                             run_demo(a.shardwire, "fp8-block", a.layers, a.steps, a.work_dir, ("--staging-only",))))
        if a.with_lane_copies:
            fp8_runs.append(("bf16 -> fp8 (lane copies)",
                             run_demo(a.shardwire, "fp8-block", a.layers, a.steps, a.work_dir, ("--lane-copies",))))
        if a.with_private_engines:
            fp8_runs.append(("bf16 -> fp8 (private engines)",
                             run_demo(a.shardwire, "fp8-block", a.layers, a.steps, a.work_dir,
                                      ("--engine-memory", "private"))))
        for slots in slot_runs:
            extra = ("--staging-slots", slots) if slots else ()
            fp8_runs.append((f"bf16 -> fp8 {'(' + slots + ' slots)' if slots else ''}",
                             run_demo(a.shardwire, "fp8-block", a.layers, a.steps, a.work_dir, extra)))
        fp8 = fp8_runs[-1][1]
        ref = bf16["memcpy_gbps"]
        for name, x in [("bf16 -> bf16", bf16)] + fp8_runs:
            gbps = x["bytes"] / x["step_s"] / 1e9
            print(f"  {name}: {x['bytes'] / 1e6:8.1f} MB/step in {x['step_s']:.4f} s = {gbps:6.2f} GB/s "
                  f"(step 1 {x['step1_s']:.3f} s; conversion {x['convert_s']:.3f} s; staging peak "
                  f"{x['staging_peak'] / 1e6:.1f} MB; converted into mapped engine buffers {x['mapped'] / 1e6:.1f} MB; "
                  f"push CPU {x['cpu_s']:.4f} CPU-s/step; verified={x['verified']})")
        bf16_as_memcpy = bf16["bytes"] / ref / 1e9
        print(f"  reference: memcpy 2 threads of the bf16 step's bytes, same run: {ref:.2f} GB/s = "
              f"{bf16_as_memcpy:.4f} s")
        for name, x in fp8_runs[:-1]:
            print(f"  round {r + 1}: {name.strip()} step / bf16 step = {x['step_s'] / bf16['step_s']:.2f}; "
                  f"push CPU / bf16 push CPU = {x['cpu_s'] / bf16['cpu_s']:.2f}")
        print(f"  round {r + 1}: {fp8_runs[-1][0].strip()} step / bf16 step = {fp8['step_s'] / bf16['step_s']:.2f} "
              f"(goal <= 1.00); bf16 step / memcpy = {bf16_as_memcpy / bf16['step_s']:.2f}x; "
              f"fp8 bytes / bf16 bytes = {fp8['bytes'] / bf16['bytes']:.2f}; "
              f"push CPU / bf16 push CPU = {fp8['cpu_s'] / bf16['cpu_s']:.2f}")


if __name__ == "__main__":
    main()
