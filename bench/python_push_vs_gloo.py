#!/usr/bin/python3
"""Shardwire from Python against what RL frameworks do without RDMA, in one run.

    PYTHONPATH=build/python /usr/bin/python3 bench/python_push_vs_gloo.py [--receivers 1 2] [--repeats 3]

The same bf16 state dict (a Llama-shaped model, ~0.43 GB) goes from one trainer process to R
receiver processes two ways: torch.distributed.broadcast over gloo from rank 0 in 64 MiB
buckets (flattened, as verl / OpenRLHF do without NCCL), and shardwire.WeightPublisher.push
from the trainer's parameter tensors into each receiver's tensors (fsdp=1 -> tp=1,dp=R).
Each receiver checks the bytes it got against the sender's (the last repeat of each).
Prints GB/s (bytes delivered to all receivers / seconds) for both and their ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
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
    want = state_dict(1)
    assert all(torch.equal(params[n].view(torch.int16), want[n].view(torch.int16)) for n in want), "wrong bytes"


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
        times = [pub.push(v)["transfer_s"] for v in range(1, repeats + 1)]
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


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--role", default="")
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--world", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--address", default="")
    ap.add_argument("--receivers", type=int, nargs="*", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    if a.role == "gloo":
        gloo_worker(a.rank, a.world, a.port, a.repeats)
        return 0
    if a.role == "sw-receiver":
        shardwire_receiver(a.address, a.rank, a.receivers[0], a.repeats)
        return 0
    print(f"state dict: {sum(t.numel() * 2 for t in state_dict(1).values()) / 1e9:.3f} GB bf16, "
          f"gloo buckets {BUCKET >> 20} MiB, {a.repeats} repeats each (best shown)")
    for r in a.receivers:
        gt, gbytes = run_gloo(r, a.repeats)
        st, sbytes = run_shardwire(r, a.repeats)
        g, s = gbytes / min(gt) / 1e9, sbytes / min(st) / 1e9
        print(f"{r} receiver(s): gloo broadcast {g:6.2f} GB/s   shardwire push {s:6.2f} GB/s   ratio {s / g:5.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
