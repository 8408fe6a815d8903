#!/usr/bin/python3
"""A vLLM-style worker extension that receives weights through Shardwire.

RL frameworks drive vLLM workers through ``collective_rpc`` on a ``worker_extension_cls``
(vLLM's RLHF examples): ``init_weight_transfer`` once, ``update_weights(version)`` after each
training step, ``check_weights`` in tests. ``ShardwireWorkerExtension`` implements those three
methods over Shardwire: the worker's own parameters (``self.model_runner.model``, with vLLM's
fused names ``qkv_proj`` / ``gate_up_proj``) are moved once into a Shardwire shard buffer laid
out by the engine layout, and every update is written there in place by the trainers.

Runnable here without vLLM or a GPU: ``ExampleWorker`` stands in for vLLM's Worker (it holds a
``model_runner.model`` whose parameters have vLLM's names and TP shard shapes), and

    /usr/bin/python3 examples/vllm_worker_extension.py

starts a coordinator, two such workers (tp=2) and one trainer rank (fsdp=1) that pushes two
versions; each worker's check_weights compares every parameter with the trainer's tensors.
"""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
from typing import Dict

import torch

import shardwire

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = {"model_type": "llama", "vocab_size": 256, "hidden_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "intermediate_size": 128,
          "torch_dtype": "bfloat16"}


class ShardwireWorkerExtension:
    """Mix into a vLLM Worker (``worker_extension_cls``). Uses ``self.model_runner.model`` and
    ``self.tp_rank``; every method runs on each TP rank (collective_rpc)."""

    def init_weight_transfer(self, coordinator: str, config_json: str, trainer_layout: str, engine_layout: str,
                             job: str = "shardwire", timeout_s: float = 120.0) -> int:
        """Connects to the coordinator, places this rank's parameters in a Shardwire shard buffer
        (one copy, now) and prepares to receive. Returns the buffer size in bytes.
        Raises shardwire.errors.InvalidArgumentError naming a parameter that does not fit."""
        model = shardwire.Model.from_config_json(config_json)
        self._sw_src = shardwire.Layout.from_string(model, trainer_layout)
        self._sw_dst = shardwire.Layout.from_string(model, engine_layout)
        rank = self.tp_rank
        buffer, views = shardwire.allocate_shard_buffer(self._sw_dst, rank)
        shards = {s["name"]: s for s in self._sw_dst.shards(rank)}
        # vLLM parameter name -> the byte range of the shard buffer holding it (a fused
        # parameter is its parts' shards back to back: the engine layout places them so).
        # name -> (byte offset, bytes, shape, dtype, the layout's shards it covers)
        ranges = {n: (s["byte_offset"], s["nbytes"], s["shape"], shardwire.torch_dtype(s["dtype"]), [n])
                  for n, s in shards.items()}
        for fused, parts in model.fused.items():
            first, last = shards[parts[0]], shards[parts[-1]]
            rows = sum(shards[p]["shape"][0] for p in parts)
            ranges[fused] = (first["byte_offset"], last["byte_offset"] + last["nbytes"] - first["byte_offset"],
                             [rows] + first["shape"][1:], shardwire.torch_dtype(first["dtype"]), list(parts))
        params = dict(self.model_runner.model.named_parameters())
        covered = set()
        for name, p in params.items():
            if name not in ranges:
                raise shardwire.errors.InvalidArgumentError(f"invalid argument: parameter {name!r} has no slot in "
                                                            f"engine layout {engine_layout!r}")
            off, nbytes, shape, dtype, parts = ranges[name]
            if list(p.shape) != list(shape) or p.dtype != dtype:
                raise shardwire.errors.InvalidArgumentError(
                    f"invalid argument: parameter {name!r} is {p.dtype} {list(p.shape)}, its slot is {dtype} {shape}")
            covered.update(parts)
        uncovered = sorted(set(shards) - covered)
        if uncovered:  # weights the trainers would push that this engine would never serve
            raise shardwire.errors.InvalidArgumentError(
                f"invalid argument: engine layout {engine_layout!r} holds {uncovered[0]!r} but the model has no "
                f"parameter for it ({len(uncovered)} such shards)")
        with torch.no_grad():
            for name, p in params.items():
                off, nbytes, shape, dtype, _ = ranges[name]
                view = buffer[off:off + nbytes].view(dtype).view(shape)
                view.copy_(p)
                p.data = view  # the worker now serves from the Shardwire buffer, in place
        self._sw_client = shardwire.CoordinatorClient(coordinator)
        self._sw_sub = shardwire.WeightSubscriber(self._sw_client, self._sw_src, self._sw_dst, rank, params=views,
                                                  job=job, timeout_s=timeout_s)
        self._sw_sub.connect()
        self.weight_version = 0
        return self._sw_dst.buffer_bytes(rank)

    def update_weights(self, version: int) -> Dict[str, float]:
        """Receives weight version ``version`` (the worker must not run the model meanwhile)
        and commits it; ``self.weight_version`` labels tokens generated afterwards (None after a
        failed update left the weights mixing two versions)."""
        self._sw_sub.begin_update(version)
        try:
            return self._sw_sub.wait_for_update(version)
        finally:
            # After a failed update the (single-buffered) weights may mix two versions: no label
            # until the next update commits.
            self.weight_version = self._sw_sub.committed_version if self._sw_sub.holds_committed_version else None

    def check_weights(self, expected: Dict[str, torch.Tensor]) -> bool:
        """True when every parameter equals the matching slice of ``expected`` (HF name -> full
        tensor), fused parameters as their parts' TP shards concatenated."""
        shards = {s["name"]: s for s in self._sw_dst.shards(self.tp_rank)}

        def shard(name):
            s = shards[name]
            return expected[name][tuple(slice(o, o + n) for o, n in zip(s["offset"], s["shape"]))]

        fused = shardwire.Model.from_config_json(json.dumps(CONFIG)).fused
        for name, p in self.model_runner.model.named_parameters():
            want = torch.cat([shard(q) for q in fused[name]], 0) if name in fused else shard(name)
            if not torch.equal(p.view(torch.int16), want.view(torch.int16)):
                return False
        return True


class ExampleModel(torch.nn.Module):
    """Parameters named and shaped as vLLM's LlamaForCausalLM holds them on one TP rank."""

    def __init__(self, layout, rank: int, fused: Dict[str, list]):
        super().__init__()
        shards = {s["name"]: s for s in layout.shards(rank)}
        in_fused = {p for parts in fused.values() for p in parts}
        shapes = {n: s["shape"] for n, s in shards.items() if n not in in_fused}
        for f, parts in fused.items():
            shapes[f] = [sum(shards[p]["shape"][0] for p in parts)] + shards[parts[0]]["shape"][1:]
        self._names = sorted(shapes)
        for i, n in enumerate(self._names):
            self.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(shapes[n], dtype=torch.bfloat16),
                                                                requires_grad=False))

    def named_parameters(self, *args, **kwargs):  # vLLM names (dots are not allowed in nn.Module attributes)
        for i, n in enumerate(self._names):
            yield n, getattr(self, f"p{i}")


class ExampleWorker(ShardwireWorkerExtension):
    """Stands in for vLLM's Worker: a tp_rank and a model_runner.model."""

    def __init__(self, tp_rank: int, engine_layout: str):
        model = shardwire.Model.from_config_json(json.dumps(CONFIG))
        self.tp_rank = tp_rank
        self.model_runner = type("ModelRunner", (), {})()
        self.model_runner.model = ExampleModel(shardwire.Layout.from_string(model, engine_layout), tp_rank,
                                               model.fused)


def full_weights(version: int) -> Dict[str, torch.Tensor]:
    model = shardwire.Model.from_config_json(json.dumps(CONFIG))
    g = torch.Generator().manual_seed(version)
    return {t["name"]: torch.randn(t["shape"], generator=g).to(torch.bfloat16) for t in model.tensors}


def run_worker(coordinator: str, rank: int) -> int:
    worker = ExampleWorker(rank, "tp=2")
    worker.init_weight_transfer(coordinator, json.dumps(CONFIG), "fsdp=1", "tp=2", job="vllm-ext")
    for version in (1, 2):
        worker.update_weights(version)
        ok = worker.check_weights(full_weights(version))
        print(f"worker tp_rank {rank}: weight_version {worker.weight_version}, check_weights {ok}", flush=True)
        if not ok:
            return 3
    return 0


def main() -> int:
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        return run_worker(sys.argv[2], int(sys.argv[3]))
    with shardwire.CoordinatorServer() as server:
        workers = [subprocess.Popen([sys.executable, __file__, "--worker", server.address, str(r)]) for r in range(2)]
        model = shardwire.Model.from_config_json(json.dumps(CONFIG))
        src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=2")
        params = {s["name"]: torch.zeros(s["shape"], dtype=torch.bfloat16) for s in src.shards(0)}
        shardwire.adopt_parameters(params, src, 0)
        pub = shardwire.WeightPublisher(shardwire.CoordinatorClient(server.address), src, dst, 0, params=params,
                                        job="vllm-ext")
        pub.connect()
        for version in (1, 2):
            with torch.no_grad():
                for n, t in full_weights(version).items():
                    params[n].copy_(t)
            stats = pub.push(version)
            print(f"trainer: pushed version {version}, {stats['bytes']} bytes", flush=True)
        codes = [w.wait(timeout=300) for w in workers]
    print("vllm_worker_extension:", "ok" if codes == [0, 0] else f"FAILED {codes}")
    return 0 if codes == [0, 0] else 1


if __name__ == "__main__":
    sys.exit(main())
