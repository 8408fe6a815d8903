#!/usr/bin/python3
"""An RL-style loop that really trains, with Shardwire moving every new policy into the engines.

    /usr/bin/python3 examples/rl_loop.py [--steps 5] [--checkpoint DIR]

Processes (all started here; a coordinator is embedded in this launcher process):
  * 2 trainer processes hold the model FSDP-style (`fsdp=2`: every tensor split on dim 0,
    torch.chunk), each with fp32 master shards and Adam, and bf16 parameter shards that live
    in ONE shard buffer per rank (shardwire.adopt_parameters). Each step: all-gather the bf16
    shards (gloo), next-token cross-entropy on a fixed batch, backward, all-reduce the
    gradients, Adam on the own shard, write the new bf16 shard in place, then
    WeightPublisher.push(step): one-sided writes straight from those parameters.
  * 2 engine processes hold the model tensor-parallel as vLLM does (`tp=2`: q/k/v fused into
    qkv_proj and gate/up into gate_up_proj, column-parallel; o_proj/down_proj row-parallel;
    embed_tokens/lm_head vocab-parallel; norms replicated). Each step: begin_update, wait for
    the version, run a TP forward pass (gloo all-reduce) on a fixed evaluation batch.
After every push, each engine compares its logits with the logits of the trainer's full model
(all-gathered bf16 weights, same forward code with tp=1), published by trainer 0 through the
coordinator. Tolerance: both sides compute in fp32 from the same bf16 weights, so they differ
only by summation order (the TP split of row-parallel matmuls and of the vocab-parallel
embedding): |diff| <= 1e-4 * max(1, max|logits|), about 10x the fp32 rounding of length-128
dot products through two layers. A wrong or stale weight changes logits by orders more
(the test checks that: a step's update moves logits by > 1e-2).

Input: ../shared/models/tiny-llama3-bf16 (a real checkpoint), else the same real shapes with
seeded random weights. Exit 0 when every engine matched every step.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import struct
import subprocess
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import llama_math  # noqa: E402

import shardwire  # noqa: E402

HERE = pathlib.Path(__file__).resolve().parent
DEFAULT_CHECKPOINT = HERE.parent.parent / "shared" / "models" / "tiny-llama3-bf16"
# tiny-llama3-bf16's config (used with seeded random weights when ../shared is absent).
FALLBACK_CONFIG = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
                   "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
                   "rms_norm_eps": 1e-6, "rope_theta": 500000.0, "tie_word_embeddings": False,
                   "torch_dtype": "bfloat16"}
JOB = "rl-loop"


def load_weights(checkpoint: pathlib.Path):
    """(config dict, shardwire.Model, {name: bf16 tensor}) from a single-file safetensors
    checkpoint (header parsed with the standard library), or the fallback."""
    st = checkpoint / "model.safetensors"
    if st.exists():
        cfg = json.loads((checkpoint / "config.json").read_text())
        raw = st.read_bytes()
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8:8 + n])
        header.pop("__metadata__", None)
        data = bytearray(raw[8 + n:])
        weights = {}
        for name, e in header.items():
            assert e["dtype"] == "BF16", name
            a, b = e["data_offsets"]
            weights[name] = torch.frombuffer(data[a:b], dtype=torch.bfloat16).view(e["shape"]).clone()
        return cfg, shardwire.Model.from_checkpoint(str(checkpoint)), weights
    cfg = dict(FALLBACK_CONFIG)
    model = shardwire.Model.from_config_json(json.dumps(cfg))
    gen = torch.Generator().manual_seed(1234)
    weights = {}
    for t in model.tensors:
        if t["name"].endswith("norm.weight"):
            weights[t["name"]] = torch.ones(t["shape"], dtype=torch.bfloat16)
        else:
            weights[t["name"]] = (torch.randn(t["shape"], generator=gen) * 0.05).to(torch.bfloat16)
    return cfg, model, weights


def box(t: torch.Tensor, s: dict) -> torch.Tensor:
    return t[tuple(slice(o, o + n) for o, n in zip(s["offset"], s["shape"]))]


def batches(cfg):
    gen = torch.Generator().manual_seed(7)
    train = torch.randint(0, cfg["vocab_size"], (4, 17), generator=gen)
    evaluation = torch.randint(0, cfg["vocab_size"], (2, 12), generator=gen)
    return train, evaluation


def trainer(args) -> int:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.dist_port}", rank=args.rank, world_size=2)
    cfg, model, full = load_weights(pathlib.Path(args.checkpoint))
    src, dst = shardwire.Layout.from_string(model, "fsdp=2"), shardwire.Layout.from_string(model, "tp=2")
    slots = {s["name"]: s for s in src.shards(args.rank)}
    # bf16 parameter shards (what is pushed) in one shard buffer; fp32 master shards for Adam.
    params = {n: box(full[n], s).clone() for n, s in slots.items()}
    shardwire.adopt_parameters(params, src, args.rank)
    master = {n: p.float().clone().requires_grad_(True) for n, p in params.items()}
    opt = torch.optim.Adam(master.values(), lr=args.lr)
    client = shardwire.CoordinatorClient(args.coordinator)
    pub = shardwire.WeightPublisher(client, src, dst, args.rank, params=params, job=JOB, timeout_s=120)
    pub.connect()
    train, evaluation = batches(cfg)
    names = [t["name"] for t in model.tensors]

    def gather() -> dict:
        out = {}
        for n in names:  # gloo has no bfloat16: gather as fp32 (bf16 -> fp32 -> bf16 is exact)
            wide = params[n].float()
            parts = [torch.empty_like(wide) for _ in range(2)]
            dist.all_gather(parts, wide)
            out[n] = torch.cat(parts, 0).to(torch.bfloat16)
        return out

    for step in range(1, args.steps + 1):
        weights = {n: t.float().requires_grad_(True) for n, t in gather().items()}
        logits = llama_math.forward(weights, train[:, :-1], cfg)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), train[:, 1:].reshape(-1))
        loss.backward()
        for n in names:
            g = weights[n].grad
            dist.all_reduce(g)
            master[n].grad = box(g / 2, slots[n]).contiguous()
        opt.step()
        opt.zero_grad()
        with torch.no_grad():
            for n in names:
                params[n].copy_(master[n])  # in place: the shard buffer the publisher registered
        stats = pub.push(step)
        with torch.no_grad():
            reference = llama_math.forward(gather(), evaluation, cfg)
        if args.rank == 0:
            client.put(f"{JOB}/logits/{step}", reference.numpy().tobytes())
        print(f"trainer {args.rank} step {step}: loss {loss.item():.4f}, pushed {stats['bytes']} B "
              f"({stats['descriptors']} descriptors) in {stats['transfer_s'] * 1e3:.2f} ms", flush=True)
    dist.barrier()
    return 0


def engine(args) -> int:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{args.dist_port}", rank=args.rank, world_size=2)
    cfg, model, _ = load_weights(pathlib.Path(args.checkpoint))
    src, dst = shardwire.Layout.from_string(model, "fsdp=2"), shardwire.Layout.from_string(model, "tp=2")
    client = shardwire.CoordinatorClient(args.coordinator)
    buffer, views = shardwire.allocate_shard_buffer(dst, args.rank)  # the engine's own weights
    sub = shardwire.WeightSubscriber(client, src, dst, args.rank, params=views, job=JOB, timeout_s=120)
    sub.connect()
    # vLLM-style fused parameters: the layout places each fusion's parts back to back, so the
    # fused weight is one view of the buffer (checked, not assumed).
    shards = {s["name"]: s for s in dst.shards(args.rank)}
    weights = dict(views)
    for fused, parts in model.fused.items():
        first, last = shards[parts[0]], shards[parts[-1]]
        rows = sum(shards[p]["shape"][0] for p in parts)
        assert all(shards[a]["byte_offset"] + shards[a]["nbytes"] == shards[b]["byte_offset"]
                   for a, b in zip(parts, parts[1:])), f"{fused}: parts not contiguous"
        nbytes = last["byte_offset"] + last["nbytes"] - first["byte_offset"]
        weights[fused] = buffer[first["byte_offset"]:first["byte_offset"] + nbytes].view(torch.bfloat16).view(
            rows, *first["shape"][1:])

    def all_reduce(t):
        dist.all_reduce(t)
        return t

    def all_gather_last(t):
        parts = [torch.empty_like(t) for _ in range(2)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts, -1)

    _, evaluation = batches(cfg)
    previous = None
    worst = 0.0
    for step in range(1, args.steps + 1):
        sub.begin_update(step)
        sub.wait_for_update(step)
        assert sub.committed_version == step
        with torch.no_grad():
            logits = llama_math.forward(weights, evaluation, cfg, args.rank, 2, all_reduce, all_gather_last)
        ref = torch.frombuffer(bytearray(client.get(f"{JOB}/logits/{step}", timeout_s=120)),
                               dtype=torch.float32).view(logits.shape)
        diff = (logits - ref).abs().max().item()
        tol = 1e-4 * max(1.0, ref.abs().max().item())
        moved = float("inf") if previous is None else (logits - previous).abs().max().item()
        previous = logits
        worst = max(worst, diff)
        print(f"engine rank {args.rank} v{step}: max|logits - trainer logits| = {diff:.2e} (tolerance {tol:.1e}); "
              f"the update moved logits by {moved:.2e}", flush=True)
        if diff > tol:
            print(f"engine rank {args.rank}: MISMATCH at version {step}", flush=True)
            return 3
        if moved <= 1e-2:
            print(f"engine rank {args.rank}: version {step} did not change the logits (stale weights?)", flush=True)
            return 4
    dist.barrier()
    return 0


def free_ports(n: int) -> list:
    """n distinct free loopback ports (all bound at once, so no two are the same)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def launch(args) -> int:
    checkpoint = pathlib.Path(args.checkpoint)
    print(f"checkpoint: {checkpoint if (checkpoint / 'model.safetensors').exists() else 'generated (real shapes)'}")
    with shardwire.CoordinatorServer() as server:
        trainer_port, engine_port = free_ports(2)
        ports = {"trainer": trainer_port, "engine": engine_port}
        procs = []
        for role in ("engine", "trainer"):
            for rank in range(2):
                cmd = [sys.executable, __file__, "--role", role, "--rank", str(rank), "--coordinator", server.address,
                       "--dist-port", str(ports[role]), "--steps", str(args.steps), "--checkpoint", str(checkpoint),
                       "--lr", str(args.lr)]
                procs.append((f"{role} {rank}", subprocess.Popen(cmd)))
        codes = {}
        try:
            for name, p in procs:
                codes[name] = p.wait(timeout=600)
        finally:
            for _, p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
    bad = {n: c for n, c in codes.items() if c != 0}
    if bad:
        print(f"rl_loop: FAILED {bad}")
        return 1
    print(f"rl_loop: {args.steps} steps, every engine's logits matched the trainer's full model after every push")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT))
    ap.add_argument("--lr", type=float, default=1e-2)
    ap.add_argument("--role", choices=["trainer", "engine"])
    ap.add_argument("--rank", type=int, default=0)
    ap.add_argument("--coordinator", default="")
    ap.add_argument("--dist-port", type=int, default=0)
    args = ap.parse_args()
    if args.role == "trainer":
        return trainer(args)
    if args.role == "engine":
        return engine(args)
    return launch(args)


if __name__ == "__main__":
    sys.exit(main())
