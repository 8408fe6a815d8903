#!/usr/bin/python3
"""Shardwire from Python against what RL frameworks do without RDMA, in one run.

    PYTHONPATH=build/python /usr/bin/python3 bench/python_push_vs_gloo.py [--receivers 1 2] [--repeats 5]
        [--shardwire-bin build/src/cli/shardwire]

The same bf16 state dict (a Llama-shaped model, ~0.43 GB) goes from one trainer process to R
receiver processes two ways: torch.distributed.broadcast over gloo from rank 0 in 64 MiB
buckets (flattened, as verl / OpenRLHF do without NCCL), and shardwire.WeightPublisher.push
from the trainer's parameter tensors into each receiver's tensors (fsdp=1 -> tp=1,dp=R); the
trainer changes every element before each push (as the C++ demo's trainer writes its update).
Each receiver checks the bytes it got against the sender's (the last repeat of each).
Prints GB/s (bytes delivered to all receivers / seconds) for both and their ratio.

The same run also measures the C++ demo on the same bytes: ``shardwire demo rl-sync --generate``
with this model's config, trainer layout fsdp=1, engine layout tp=1,dp=R (R receiver processes),
the same number of steps, ``--json``, ``--verify last`` (its engines check the last version
only, as the Python receivers do, instead of recomputing every shard between two pushes). Both sides report the transfer time the C++ publisher
measures (PushStats.transfer_s: first post to the last remote completion) of an arena-backed
trainer buffer, and both are summarised the same way: steady GB/s = bytes of steps 2..N /
their summed transfer time (step 1 also maps the peers' memory). The ratio Python/C++ is the
cost of driving the same engine from Python (goal: within 10%, i.e. >= 0.90).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

import torch

import shardwire

CONFIG = {"model_type": "llama", "vocab_size": 32000, "hidden_size": 2048, "num_hidden_layers": 2,
          "num_attention_heads": 32, "num_key_value_heads": 4, "intermediate_size": 5632,
          "torch_dtype": "bfloat16"}
BUCKET = 64 << 20


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def state_dict(seed: int):
    model = shardwire.Model.from_config_json(json.dumps(CONFIG))
    g = torch.Generator().manual_seed(seed)
    return {t["name"]: torch.randint(-2 ** 15, 2 ** 15 - 1, t["shape"], generator=g, dtype=torch.int16).view(
        torch.bfloat16) for t in model.tensors}


def gloo_worker(rank: int, world: int, port: int, repeats: int) -> None:
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    sd = state_dict(1) if rank == 0 else {n: torch.empty_like(t) for n, t in state_dict(1).items()}
    # gloo has no bf16 / int16: the bytes travel as uint8
    flat = torch.cat([t.view(-1).view(torch.uint8) for t in sd.values()]) if rank == 0 else None
    total = sum(t.numel() * 2 for t in sd.values())
    buf = flat if rank == 0 else torch.empty(total, dtype=torch.uint8)
    times = []
    for _ in range(repeats):
        dist.barrier()
        t0 = time.perf_counter()
        step = BUCKET
        for off in range(0, total, step):
            dist.broadcast(buf[off:off + step], src=0)
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if rank != 0:
        want = torch.cat([t.view(-1).view(torch.uint8) for t in state_dict(1).values()])
        assert torch.equal(buf, want), "gloo receiver got wrong bytes"
    if rank == 0:
        print(json.dumps({"gloo_s": times, "bytes": total}), flush=True)


def shardwire_receiver(address: str, rank: int, receivers: int, repeats: int) -> None:
    model = shardwire.Model.from_config_json(json.dumps(CONFIG))
    src = shardwire.Layout.from_string(model, "fsdp=1")
    dst = shardwire.Layout.from_string(model, f"tp=1,dp={receivers}")
    sub = shardwire.WeightSubscriber(shardwire.CoordinatorClient(address), src, dst, rank, params=None, job="bench")
    params = sub.tensors  # the engine's weights are views of Shardwire's arena
    sub.connect()
    for v in range(1, repeats + 1):
        sub.begin_update(v)
        sub.wait_for_update(v)
    want = state_dict(1)  # as sent at the last version: every int16 + repeats (wrapping)
    assert all(torch.equal(params[n].view(torch.int16), want[n].view(torch.int16) + repeats) for n in want), \
        "wrong bytes"


def run_shardwire(receivers: int, repeats: int):
    model = shardwire.Model.from_config_json(json.dumps(CONFIG))
    src = shardwire.Layout.from_string(model, "fsdp=1")
    dst = shardwire.Layout.from_string(model, f"tp=1,dp={receivers}")
    with shardwire.CoordinatorServer() as server:
        procs = [subprocess.Popen([sys.executable, __file__, "--role", "sw-receiver", "--address", server.address,
                                   "--rank", str(r), "--receivers", str(receivers), "--repeats", str(repeats)])
                 for r in range(receivers)]
        pub = shardwire.WeightPublisher(shardwire.CoordinatorClient(server.address), src, dst, 0, params=None,
                                        job="bench")
        for n, t in state_dict(1).items():  # the trainer's parameters live in the arena's views
            pub.tensors[n].copy_(t)
        pub.connect()
        times = []
        for v in range(1, repeats + 1):
            # A training step's worth of new bytes before every push, as the C++ demo's trainer
            # writes its update into its buffer before each push (not timed: transfer_s is).
            with torch.no_grad():
                for t in pub.tensors.values():
                    t.view(torch.int16).add_(1)
            times.append(pub.push(v)["transfer_s"])
        codes = [p.wait(timeout=600) for p in procs]
        assert codes == [0] * receivers, codes
        return times, pub.bytes_per_push


def run_gloo(receivers: int, repeats: int):
    port = free_port()
    procs = [subprocess.Popen([sys.executable, __file__, "--role", "gloo", "--rank", str(r), "--world",
                               str(receivers + 1), "--port", str(port), "--repeats", str(repeats)],
                              stdout=subprocess.PIPE, text=True) for r in range(receivers + 1)]
    out = procs[0].communicate(timeout=900)[0]
    codes = [p.wait(timeout=900) for p in procs]
    assert codes == [0] * (receivers + 1), codes
    d = json.loads(out.strip().splitlines()[-1])
    return d["gloo_s"], d["bytes"] * receivers


def steady_gbps(bytes_per_step: int, times) -> float:
    """Bytes of steps 2..N over their summed transfer time (step 1 alone when N == 1), GB/s."""
    steady = times[1:] or times
    return bytes_per_step * len(steady) / sum(steady) / 1e9


def run_cpp_demo(receivers: int, repeats: int, binary: str):
    """`shardwire demo rl-sync` on the same model, layouts, receivers and steps; returns its
    per-step transfer times and bytes per step (from --json)."""
    with tempfile.TemporaryDirectory(prefix="sw-bench-") as tmp:
        cfg = os.path.join(tmp, "config.json")
        with open(cfg, "w") as f:
            json.dump(CONFIG, f)
        out = os.path.join(tmp, "demo.json")
        cmd = [binary, "demo", "rl-sync", "--generate", cfg, "--work-dir", tmp, "--trainer-layout", "fsdp=1",
               "--engine-layout", f"tp=1,dp={receivers}", "--steps", str(repeats), "--json", out,
               # the Python receivers check the last version only; so do the demo's engines here, so
               # that both sides do the same work between two pushes
               "--verify", "last"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {r.stdout[-2000:]}{r.stderr[-2000:]}")
        with open(out) as f:
            d = json.load(f)
    return [s["transfer_s"] for s in d["steps"]], d["bytes_per_step"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--address", default="")
    ap.add_argument("--receivers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shardwire-bin", default=os.environ.get("SHARDWIRE_BIN", os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "build", "src", "cli", "shardwire")),
        help="the shardwire CLI, for the C++ demo on the same bytes (SHARDWIRE_BIN)")
    a = ap.parse_args()
    if a.role == "gloo":
        gloo_worker(a.rank, a.world, a.port, a.repeats)
        return 0
    if a.role == "sw-receiver":
        shardwire_receiver(a.address, a.rank, a.receivers[0], a.repeats)
        return 0
    print(f"state dict: {sum(t.numel() * 2 for t in state_dict(1).values()) / 1e9:.3f} GB bf16, "
          f"gloo buckets {BUCKET >> 20} MiB, {a.repeats} steps each; shardwire figures are steady "
          f"(steps 2..{a.repeats}), gloo the best step")
    for r in a.receivers:
        gt, gbytes = run_gloo(r, a.repeats)
        st, sbytes = run_shardwire(r, a.repeats)
        ct, cbytes = run_cpp_demo(r, a.repeats, a.shardwire_bin)
        assert cbytes == sbytes, f"C++ demo moved {cbytes} bytes per step, Python {sbytes}: not the same bytes"
        g = gbytes / min(gt) / 1e9
        s, c = steady_gbps(sbytes, st), steady_gbps(cbytes, ct)
        print(f"{r} receiver(s), {sbytes / 1e9:.3f} GB per step: gloo broadcast {g:6.2f} GB/s | shardwire "
              f"Python push {s:6.2f} GB/s | C++ demo {c:6.2f} GB/s | Python/gloo {s / g:5.1f}x | "
              f"Python/C++ {s / c:5.2f}", flush=True)
        print(f"    per-step transfer s: Python {' '.join(f'{x:.4f}' for x in st)}; "
              f"C++ {' '.join(f'{x:.4f}' for x in ct)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
