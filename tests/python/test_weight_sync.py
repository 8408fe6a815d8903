"""RL weight sync from Python across real processes: a trainer rank pushes from its own
parameter tensors into engine ranks' tensors over UCX, checked byte for byte against the
slices of the global tensors (an oracle that does not use the planner)."""
import json
import os
import pathlib
import subprocess
import sys
import threading
import textwrap
import zlib

import pytest
import torch

import shardwire
from shardwire import errors

PY = "/usr/bin/python3"
ROOT = pathlib.Path(__file__).resolve().parents[2]
LLAMA = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "torch_dtype": "bfloat16",
}


def global_tensor(name: str, shape, version: int) -> torch.Tensor:
    """Deterministic content of tensor `name` at `version` (the oracle)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) * 131 + version)
    return torch.randn(shape, generator=g).to(torch.bfloat16)


ENGINE = textwrap.dedent("""
    import json, sys, torch, shardwire
    sys.path.insert(0, sys.argv[4])
    from test_weight_sync import global_tensor
    cfg, address, rank = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    model = shardwire.Model.from_config_json(json.dumps(cfg))
    src, dst = shardwire.Layout.from_string(model, "fsdp=2"), shardwire.Layout.from_string(model, "tp=2")
    buffer, params = shardwire.allocate_shard_buffer(dst, rank)   # the engine's own weights
    sub = shardwire.WeightSubscriber(shardwire.CoordinatorClient(address), src, dst, rank, params=params, job="py")
    sub.connect()
    for v in (1, 2):
        sub.begin_update(v)
        stats = sub.wait_for_update(v)
        assert sub.committed_version == v
        for s in dst.shards(rank):
            want = global_tensor(s["name"], s["global_shape"], v)[
                tuple(slice(o, o + n) for o, n in zip(s["offset"], s["shape"]))]
            if not torch.equal(params[s["name"]].view(torch.int16), want.view(torch.int16)):
                print("MISMATCH", v, s["name"]); sys.exit(3)
    print("engine", rank, "ok", stats["bytes"], flush=True)
""")


def test_push_from_trainer_parameters_into_engine_tensors_byte_for_byte():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src, dst = shardwire.Layout.from_string(model, "fsdp=2"), shardwire.Layout.from_string(model, "tp=2")
    with shardwire.CoordinatorServer() as server:
        engines = [subprocess.Popen([PY, "-c", ENGINE, json.dumps(LLAMA), server.address, str(r),
                                     str(pathlib.Path(__file__).parent)], stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, text=True) for r in range(2)]
        trainers = []
        # two trainer ranks in this process, each with parameters it allocated itself
        client = shardwire.CoordinatorClient(server.address)
        params = []
        for rank in range(2):
            p = {s["name"]: torch.zeros(s["shape"], dtype=torch.bfloat16) for s in src.shards(rank)}
            buf = shardwire.adopt_parameters(p, src, rank)
            assert all(t.data_ptr() - buf.data_ptr() == s["byte_offset"]
                       for s in src.shards(rank) for t in [p[s["name"]]])
            params.append(p)
            trainers.append(shardwire.WeightPublisher(client, src, dst, rank, params=p, job="py"))
        for t in trainers:
            t.connect()
        for v in (1, 2):
            for rank, p in enumerate(params):
                for s in src.shards(rank):
                    p[s["name"]].copy_(global_tensor(s["name"], s["global_shape"], v)[
                        tuple(slice(o, o + n) for o, n in zip(s["offset"], s["shape"]))])
            results = [None, None]
            threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, trainers[i].push(v)))
                       for i in range(2)]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=120)
            assert all(r is not None and r["version"] == v for r in results), results
        for e in engines:
            out, err = e.communicate(timeout=120)
            assert e.returncode == 0, out + err
            assert "ok" in out


def test_bad_tensors_are_refused_before_anything_is_registered():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src = shardwire.Layout.from_string(model, "fsdp=2")
    good = {s["name"]: torch.zeros(s["shape"], dtype=torch.bfloat16) for s in src.shards(0)}
    name = "model.layers.0.self_attn.q_proj.weight"
    missing = dict(good)
    del missing[name]
    with pytest.raises(errors.InvalidArgumentError, match="lack it"):
        shardwire.adopt_parameters(missing, src, 0)
    with pytest.raises(errors.InvalidArgumentError, match="extra|not held"):
        shardwire.adopt_parameters(dict(good, bogus=torch.zeros(1)), src, 0)
    with pytest.raises(errors.InvalidArgumentError, match=name):
        shardwire.adopt_parameters(dict(good, **{name: good[name].float()}), src, 0)
    with pytest.raises(errors.InvalidArgumentError, match="not contiguous"):
        t = torch.zeros(list(reversed(good[name].shape)), dtype=torch.bfloat16).T
        shardwire.adopt_parameters(dict(good, **{name: t}), src, 0)
    with pytest.raises(errors.InvalidArgumentError, match=name):
        shardwire.adopt_parameters(dict(good, **{name: good[name][:1]}), src, 0)
    # nothing was re-pointed by the refused calls
    assert all(t.is_contiguous() for t in good.values())
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        with pytest.raises(errors.InvalidArgumentError, match="adopt_parameters"):
            shardwire.WeightPublisher(client, src, shardwire.Layout.from_string(model, "tp=2"), 0, params=good)


def test_rl_loop_example_trains_and_engines_match(tmp_path):
    r = subprocess.run([PY, str(ROOT / "examples" / "rl_loop.py"), "--steps", "3"], capture_output=True, text=True,
                       timeout=900, env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "every engine's logits matched" in r.stdout
    losses = [float(l.split("loss ")[1].split(",")[0]) for l in r.stdout.splitlines() if l.startswith("trainer 0")]
    assert len(losses) == 3 and losses[-1] < losses[0]  # it really trains


def test_vllm_worker_extension_example():
    r = subprocess.run([PY, str(ROOT / "examples" / "vllm_worker_extension.py")], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("check_weights True") == 4 and "vllm_worker_extension: ok" in r.stdout
