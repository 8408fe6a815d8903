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
        # two trainer ranks in this process, each with parameters it allocated itself, and with
        # its own lane count (1 and 3: the bytes must land the same whatever the lanes)
        client = shardwire.CoordinatorClient(server.address)
        params = []
        for rank in range(2):
            p = {s["name"]: torch.zeros(s["shape"], dtype=torch.bfloat16) for s in src.shards(rank)}
            buf = shardwire.adopt_parameters(p, src, rank)
            assert all(t.data_ptr() - buf.data_ptr() == s["byte_offset"]
                       for s in src.shards(rank) for t in [p[s["name"]]])
            params.append(p)
            trainers.append(shardwire.WeightPublisher(client, src, dst, rank, params=p, job="py", lanes=1 + 2 * rank))
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
    # Searched anywhere in the output: the example's 4 child processes share its stdout, and a
    # line of another process (or a C library's log line) may precede "trainer 0" on one line.
    import re
    losses = [float(x) for x in re.findall(r"trainer 0 step \d+: loss ([0-9.]+)", r.stdout)]
    assert len(losses) == 3 and losses[-1] < losses[0], r.stdout  # it really trains


def test_vllm_worker_extension_example():
    r = subprocess.run([PY, str(ROOT / "examples" / "vllm_worker_extension.py")], capture_output=True, text=True,
                       timeout=600, env=dict(os.environ))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("check_weights True") == 4 and "vllm_worker_extension: ok" in r.stdout


CTRL_C_SYNC = textwrap.dedent("""
    import json, sys, time, shardwire
    cfg, address = json.loads(sys.argv[1]), sys.argv[2]
    model = shardwire.Model.from_config_json(json.dumps(cfg))
    src, dst = shardwire.Layout.from_string(model, "tp=1"), shardwire.Layout.from_string(model, "tp=1")
    client = shardwire.CoordinatorClient(address)

    def interrupted(what, call):
        try:
            print("waiting", what, flush=True)
            call()
        except KeyboardInterrupt:
            print("interrupted", what, flush=True)
            return
        print("NOT interrupted", what, flush=True)
        sys.exit(3)

    # 1. connect with no trainer at all
    lonely = shardwire.WeightSubscriber(client, src, dst, 0, job="lonely", timeout_s=600)
    interrupted("connect", lonely.connect)
    # 2. wait_for_update with a trainer that never pushes
    pub = shardwire.WeightPublisher(client, src, dst, 0, job="j", timeout_s=600)
    sub = shardwire.WeightSubscriber(client, src, dst, 0, job="j", timeout_s=600)
    sub.connect(); pub.connect()
    pub.tensors["model.norm.weight"].fill_(1.5)
    sub.begin_update(1)
    interrupted("wait_for_update", lambda: sub.wait_for_update(1))
    assert sub.committed_version == 0  # nothing committed by the interrupted wait
    # state is consistent: the same version still goes through
    pub.push(1)
    assert not sub.holds_committed_version  # single-buffered, after a failed (interrupted) wait
    assert sub.wait_for_update(1)["version"] == 1 and sub.committed_version == 1
    assert sub.holds_committed_version
    assert bool((sub.tensors["model.norm.weight"] == 1.5).all())
    # 3. push with no engine ready for version 2
    interrupted("push", lambda: pub.push(2))
    sub.begin_update(2)
    assert pub.push(2)["version"] == 2
    assert sub.wait_for_update(2)["version"] == 2 and sub.committed_version == 2
    # 4. join (dynamic membership) while the trainer never pushes
    dpub = shardwire.WeightPublisher(client, src, dst, 0, job="dyn", timeout_s=600, dynamic_membership=True)
    dsub = shardwire.WeightSubscriber(client, src, dst, 0, job="dyn", timeout_s=600, dynamic_membership=True)
    dsub.connect(); dpub.connect()
    interrupted("join", lambda: dsub.join(600))
    try:  # the request stands: a later join waits again (and times out: still nobody pushes)
        dsub.join(0.3)
        sys.exit(4)
    except shardwire.errors.TimedOutError:
        pass
    print("consistent", flush=True)
""")


class _Lines:
    """Lines of a child's stdout read by a thread; next() waits at most timeout_s (a hang guard,
    not a timing assertion) and returns '' when nothing came."""

    def __init__(self, proc: subprocess.Popen):
        import queue
        self.q = queue.Queue()
        threading.Thread(target=lambda: [self.q.put(l) for l in proc.stdout], daemon=True).start()

    def next(self, timeout_s: float = 60) -> str:
        import queue
        try:
            return self.q.get(timeout=timeout_s)
        except queue.Empty:
            return ""


def test_ctrl_c_interrupts_connect_wait_for_update_push_and_join():
    """SIGINT raises KeyboardInterrupt out of each blocking call (timeouts 600 s) and leaves the
    publisher and subscriber usable: the interrupted version then syncs normally."""
    import signal
    import time
    with shardwire.CoordinatorServer() as server:
        child = subprocess.Popen([PY, "-c", CTRL_C_SYNC, json.dumps(LLAMA), server.address], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        lines = _Lines(child)
        try:
            for what in ("connect", "wait_for_update", "push", "join"):
                line = lines.next()
                assert line.strip() == f"waiting {what}", line
                time.sleep(0.7)  # let it block inside the call (not a timing assertion)
                child.send_signal(signal.SIGINT)
                line = lines.next()
                assert line.strip() == f"interrupted {what}", line
            assert lines.next().strip() == "consistent"
            child.wait(timeout=120)  # a hang guard
            assert child.returncode == 0, child.stderr.read()
        finally:
            if child.poll() is None:
                child.kill()
                child.communicate()


def test_meta_device_and_bad_tensors_refused_by_publisher_and_subscriber():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src, dst = shardwire.Layout.from_string(model, "fsdp=2"), shardwire.Layout.from_string(model, "tp=2")
    name = "model.layers.1.mlp.down_proj.weight"
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        buf, views = shardwire.allocate_shard_buffer(dst, 1)
        meta = dict(views, **{name: torch.empty(tuple(views[name].shape), dtype=torch.bfloat16, device="meta")})
        with pytest.raises(errors.InvalidArgumentError, match=f"{name}.*device meta.*CPU"):
            shardwire.WeightSubscriber(client, src, dst, 1, params=meta, job="bad")
        with pytest.raises(errors.InvalidArgumentError, match=f"{name}.*torch.float32.*torch.bfloat16"):
            shardwire.WeightSubscriber(client, src, dst, 1, params=dict(views, **{name: views[name].float()}),
                                       job="bad")
        tbuf, tviews = shardwire.allocate_shard_buffer(src, 0)
        missing = {k: v for k, v in tviews.items() if k != "lm_head.weight"}
        with pytest.raises(errors.InvalidArgumentError, match="lm_head.weight.*lack it"):
            shardwire.WeightPublisher(client, src, dst, 0, params=missing, job="bad")
        # nothing was published under the job by the refused constructors
        for key in ("bad/engine/1/metadata", "bad/trainer/0/metadata"):
            with pytest.raises(errors.TimedOutError):
                client.get(key, timeout_s=0.3)


def test_registered_storage_that_moves_is_refused_before_any_transfer():
    """Memory registered with the transport must stay put: storage resized or freed in place
    (FSDP frees parameters with storage().resize_(0)) is found before the next transfer, not
    written after free; a read-only array, a sparse tensor and a buffer shorter than the rank's
    whole shard buffer are refused at construction."""
    import numpy as np
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src, dst = shardwire.Layout.from_string(model, "fsdp=2"), shardwire.Layout.from_string(model, "tp=2")
    name = "model.layers.0.mlp.down_proj.weight"
    # allocate_shard_buffer's storage cannot be resized or freed at all
    buf, views = shardwire.allocate_shard_buffer(dst, 0)
    with pytest.raises(RuntimeError):
        buf.resize_(2 * buf.numel())
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        # a caller's own torch buffer can be freed in place: begin_update refuses, naming a tensor
        own = torch.zeros(dst.buffer_bytes(0), dtype=torch.uint8)
        own_views = shardwire.shard_views(own, dst, 0)
        sub = shardwire.WeightSubscriber(client, src, dst, 0, params=own_views, job="moved", timeout_s=2)
        own.storage().resize_(0)
        with pytest.raises(errors.FailedPreconditionError, match="resized or freed"):
            sub.begin_update(1)
        with pytest.raises(errors.FailedPreconditionError, match="resized or freed"):
            sub.connect()
        # the publisher side alike
        tbuf = torch.zeros(src.buffer_bytes(0), dtype=torch.uint8)
        pub = shardwire.WeightPublisher(client, src, dst, 0, params=shardwire.shard_views(tbuf, src, 0),
                                        job="moved2", timeout_s=2)
        tbuf.resize_(2 * tbuf.numel())
        with pytest.raises(errors.FailedPreconditionError, match="resized or freed"):
            pub.push(1)
        # a buffer whose slots fit but whose padding tail is past the storage's end
        need = dst.buffer_bytes(1)
        end = max(s["byte_offset"] + s["nbytes"] for s in dst.shards(1))
        if end < need:
            short = torch.zeros(end, dtype=torch.uint8)
            short_views = {s["name"]: short[s["byte_offset"]:s["byte_offset"] + s["nbytes"]]
                           .view(torch.bfloat16).view(s["shape"]) for s in dst.shards(1)}
            with pytest.raises(errors.InvalidArgumentError, match="needs"):
                shardwire.WeightSubscriber(client, src, dst, 1, params=short_views, job="short")
        # read-only numpy destinations and sparse tensors
        arrays = {s["name"]: np.zeros(s["shape"], dtype=np.float32) for s in dst.shards(0)}
        f32 = shardwire.Model.from_config_json(json.dumps(dict(LLAMA, torch_dtype="float32")))
        f32_dst = shardwire.Layout.from_string(f32, "tp=2")
        arrays[name].setflags(write=False)
        with pytest.raises(errors.InvalidArgumentError, match=f"{name}.*read-only"):
            shardwire.ModelLoader(client, f32, "tp=2", 0, params=arrays)
        with pytest.raises(errors.InvalidArgumentError, match=f"{name}.*read-only"):
            shardwire.WeightSubscriber(client, shardwire.Layout.from_string(f32, "fsdp=2"), f32_dst, 0,
                                       params=arrays, job="ro")
        sparse = dict(views, **{name: views[name].float().to_sparse().to(torch.bfloat16)})
        with pytest.raises(errors.InvalidArgumentError, match=f"{name}.*layout"):
            shardwire.WeightSubscriber(client, src, dst, 0, params=sparse, job="sparse")
        with pytest.raises(errors.InvalidArgumentError, match=f"{name}.*NoneType"):
            shardwire.WeightSubscriber(client, src, dst, 0, params=dict(views, **{name: None}), job="none")
        for key in ("short/engine/1/metadata", "ro/engine/0/metadata", "sparse/engine/0/metadata"):
            with pytest.raises(errors.TimedOutError):
                client.get(key, timeout_s=0.2)
    # shard_views: a strided or read-only buffer is an InvalidArgumentError, not a RuntimeError
    with pytest.raises(errors.InvalidArgumentError, match="not contiguous"):
        shardwire.shard_views(np.zeros(2 * dst.buffer_bytes(0), np.uint8)[::2], dst, 0)
    with pytest.raises(errors.InvalidArgumentError, match="read-only"):
        shardwire.shard_views(bytes(dst.buffer_bytes(0)), dst, 0)


DYING_ENGINE = textwrap.dedent("""
    import json, os, signal, sys, torch, shardwire
    sys.path.insert(0, sys.argv[4])
    from test_weight_sync import global_tensor
    cfg, address, rank = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    model = shardwire.Model.from_config_json(json.dumps(cfg))
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1,dp=2")
    buffer, params = shardwire.allocate_shard_buffer(dst, rank)
    sub = shardwire.WeightSubscriber(shardwire.CoordinatorClient(address), src, dst, rank, params=params, job="iso")
    sub.connect()
    for v in (1, 2, 3):
        if rank == 1 and v == 2:
            os.kill(os.getpid(), signal.SIGKILL)   # engine replica 1 dies after committing v1
        sub.begin_update(v)
        sub.wait_for_update(v)
        assert sub.committed_version == v
        for s in dst.shards(rank):   # the survivor holds every version byte for byte
            want = global_tensor(s["name"], s["global_shape"], v)
            if not torch.equal(params[s["name"]].view(torch.int16), want.view(torch.int16)):
                print("MISMATCH", v, s["name"]); sys.exit(3)
    print("engine", rank, "committed", sub.committed_version, flush=True)
""")


def test_a_dead_engine_misses_the_version_and_push_says_which():
    """Fault isolation from Python: engine replica 1 is killed; the trainer's push of v2 and v3
    still reaches replica 0 and reports replica 1 in ``missed`` with the reason."""
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1,dp=2")
    with shardwire.CoordinatorServer() as server:
        engines = [subprocess.Popen([PY, "-c", DYING_ENGINE, json.dumps(LLAMA), server.address, str(r),
                                     str(pathlib.Path(__file__).parent)],
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in range(2)]
        trainer = shardwire.WeightPublisher(shardwire.CoordinatorClient(server.address), src, dst, 0, job="iso")
        trainer.connect()
        missed = {}
        for v in (1, 2, 3):
            for s in src.shards(0):
                trainer.tensors[s["name"]].copy_(global_tensor(s["name"], s["global_shape"], v))
            stats = trainer.push(v)
            missed[v] = [(m["engine_rank"], m["code"]) for m in stats["missed"]]
        assert missed[1] == []
        assert missed[2] == [(1, "peer disconnected")] and missed[3] == [(1, "peer disconnected")], missed
        out0, err0 = engines[0].communicate(timeout=120)
        assert engines[0].returncode == 0 and "committed 3" in out0, out0 + err0
        engines[1].communicate(timeout=120)
        assert engines[1].returncode == -9


def test_engines_join_through_the_coordinator_and_digests_guard_every_version():
    """Dynamic membership and the per-version integrity check from Python: an engine rank joins,
    receives two digest-checked versions into its own tensors, leaves; the trainer's next push
    finds no member (a typed error)."""
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1")
    flags = dict(job="py-members", dynamic_membership=True, verify_digests=True)
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        _, engine_params = shardwire.allocate_shard_buffer(dst, 0)
        sub = shardwire.WeightSubscriber(client, src, dst, 0, params=engine_params, **flags)
        assert sub.incarnation == 1
        pub = shardwire.WeightPublisher(client, src, dst, 0, **flags)
        pub.connect()
        sub.connect()
        with pytest.raises(errors.TimedOutError, match="0 of the 1"):
            pub.wait_for_engines(1, 0.2)
        # A NaN or negative timeout is refused (NaN waited for ever); so is a NaN join timeout.
        for bad in (float("nan"), -1.0):
            with pytest.raises(errors.InvalidArgumentError, match="timeout_s"):
                pub.wait_for_engines(1, bad)
        with pytest.raises(errors.InvalidArgumentError, match="NaN"):
            sub.join(float("nan"))
        outcome = {}

        def engine():
            v = sub.join()
            for version in (v, v + 1):
                sub.begin_update(version)
                sub.wait_for_update(version)
                outcome[version] = {n: t.clone() for n, t in engine_params.items()}
            sub.leave()

        thread = threading.Thread(target=engine)
        thread.start()
        assert pub.wait_for_engines(1, 30) == 1
        for v in (1, 2):
            for s in src.shards(0):
                pub.tensors[s["name"]].copy_(global_tensor(s["name"], s["global_shape"], v))
            stats = pub.push(v)
            assert stats["missed"] == [] and stats["absent"] == [], stats
        thread.join(timeout=60)
        assert sorted(outcome) == [1, 2]
        for v in (1, 2):
            for s in dst.shards(0):
                want = global_tensor(s["name"], s["global_shape"], v)
                assert torch.equal(outcome[v][s["name"]].view(torch.int16), want.view(torch.int16)), (v, s["name"])
        assert sub.committed_version == 2
        with pytest.raises(errors.FailedPreconditionError, match="no engine rank of job py-members is a member"):
            pub.push(3)


def test_close_leaves_the_job_and_keeps_the_views_readable():
    """close() and ``with``: an engine rank (params=None, its weights are views of the arena)
    joins, commits v1 and is closed while the engine still holds the views. It leaves the job
    (the trainer's next push finds no member, instead of waiting for a closed rank), the views
    still hold v1 byte for byte, and every later call is refused with FailedPreconditionError.
    The publisher, given its own parameters, is closed by its ``with``: push is refused, its
    properties keep their values, and the caller's tensors are untouched."""
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1")
    flags = dict(job="py-close", dynamic_membership=True)
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        params = {s["name"]: global_tensor(s["name"], s["global_shape"], 1) for s in src.shards(0)}
        shardwire.adopt_parameters(params, src, 0)
        with shardwire.WeightPublisher(client, src, dst, 0, params=params, **flags) as pub:
            bytes_per_push = pub.bytes_per_push
            with shardwire.WeightSubscriber(client, src, dst, 0, **flags) as sub:
                views = sub.tensors
                pub.connect()
                sub.connect()
                joined = {}
                thread = threading.Thread(target=lambda: joined.setdefault("v", sub.join(30)))
                thread.start()
                assert pub.wait_for_engines(1, 30) == 1
                pusher = threading.Thread(target=lambda: joined.setdefault("stats", pub.push(1)))
                pusher.start()
                thread.join(timeout=60)
                assert joined["v"] == 1
                sub.begin_update(1)
                sub.wait_for_update(1)
                pusher.join(timeout=60)
                assert joined["stats"]["missed"] == [], joined
            assert sub.closed and sub.tensors == {}
            sub.close()  # idempotent
            assert sub.committed_version == 1 and sub.holds_committed_version
            for s in dst.shards(0):
                want = global_tensor(s["name"], s["global_shape"], 1)
                assert torch.equal(views[s["name"]].view(torch.int16), want.view(torch.int16)), s["name"]
            for call in (lambda: sub.begin_update(2), lambda: sub.wait_for_update(2), sub.connect, sub.join,
                         sub.leave, lambda: sub.adopt_version(2)):
                with pytest.raises(errors.FailedPreconditionError, match=r"WeightSubscriber\..* after close\(\)"):
                    call()
            # The closed engine left: the next push finds no member at once.
            with pytest.raises(errors.FailedPreconditionError, match="no engine rank of job py-close is a member"):
                pub.push(2)
        assert pub.closed and pub.bytes_per_push == bytes_per_push
        with pytest.raises(errors.FailedPreconditionError, match=r"WeightPublisher\.push\(3\) after close\(\)"):
            pub.push(3)
        for name, t in params.items():  # the caller's tensors are theirs again, unchanged
            assert torch.equal(t.view(torch.int16), global_tensor(name, t.shape, 1).view(torch.int16)), name


def test_wait_for_update_takes_its_own_timeout_and_may_be_called_again():
    """wait_for_update(v, timeout_s=...) bounds that call instead of the constructor's 120 s:
    before the trainer pushed, it raises TimedOutError naming its own bound; after the push the
    same version commits byte for byte. Bad bounds are refused before anything waits."""
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1")
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        with shardwire.WeightPublisher(client, src, dst, 0, job="own-timeout") as pub, \
                shardwire.WeightSubscriber(client, src, dst, 0, job="own-timeout") as sub:
            sub.connect()
            pub.connect()
            for s in src.shards(0):
                pub.tensors[s["name"]].copy_(global_tensor(s["name"], s["global_shape"], 1))
            sub.begin_update(1)
            for bad in (float("nan"), -1.0, "1", True, 10**400, None.__class__):
                with pytest.raises(errors.InvalidArgumentError, match="timeout_s"):
                    sub.wait_for_update(1, timeout_s=bad)
            with pytest.raises(errors.TimedOutError, match=r"after 0\.2 s"):
                sub.wait_for_update(1, timeout_s=0.2)
            assert sub.committed_version == 0
            assert pub.push(1)["missed"] == []
            import numpy as np
            assert sub.wait_for_update(1, timeout_s=np.float32("inf"))["version"] == 1
            for s in dst.shards(0):
                want = global_tensor(s["name"], s["global_shape"], 1)
                assert torch.equal(sub.tensors[s["name"]].view(torch.int16), want.view(torch.int16)), s["name"]


def test_relays_and_rounds_from_python():
    """Engine-to-engine relays and K from Python: one trainer rank, two engine replicas (tp=1,
    dp=2) in threads; the trainer writes replica 0 only, replica 0 forwards to replica 1, and
    both hold every byte of each version (the oracle), with digests checked end to end."""
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1,dp=2")
    flags = dict(job="py-relay", relay_broadcasts=True, max_concurrency=1, verify_digests=True)
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        # engine_timeout_s bounds a relay parent's forwards (it was documented but not accepted).
        subs = [shardwire.WeightSubscriber(client, src, dst, r, engine_timeout_s=20.0, **flags) for r in (0, 1)]
        # (The conversion options reach the C++ publisher; with no dtype change nothing converts.
        # copy_into_mapped=False leaves every moved byte to the transport's lanes.)
        pub = shardwire.WeightPublisher(client, src, dst, 0, convert_into_mapped=False, convert_threads=1,
                                        copy_into_mapped=False, **flags)
        failures = []

        def run(call, *args):   # a thread's exception fails the test, not just the thread
            try:
                call(*args)
            except BaseException as e:  # noqa: B902 - re-raised below in the test's thread
                failures.append(e)

        connects = [threading.Thread(target=run, args=(s.connect,)) for s in subs]
        for t in connects:
            t.start()
        pub.connect()
        for t in connects:
            t.join(timeout=60)
        assert not failures and not any(t.is_alive() for t in connects), failures
        for v in (1, 2):
            for s in src.shards(0):
                pub.tensors[s["name"]].copy_(global_tensor(s["name"], s["global_shape"], v))
            updates = {}

            def engine(r):
                updates[r] = subs[r].wait_for_update(v)

            for s in subs:
                s.begin_update(v)
            waits = [threading.Thread(target=run, args=(engine, r)) for r in (0, 1)]
            for t in waits:
                t.start()
            stats = pub.push(v)
            for t in waits:
                t.join(timeout=60)
            assert not failures and not any(t.is_alive() for t in waits), failures
            assert stats["relayed"] == [1] and stats["missed"] == [], stats
            assert stats["bytes"] == pub.bytes_per_push // 2, stats
            assert stats["rounds"] >= 1
            assert stats["mapped_bytes"] == 0 and stats["convert_cpu_s"] == 0.0, stats
            assert stats["copied_bytes"] == 0 and stats["copy_read_bytes"] == 0 and stats["copy_cpu_s"] == 0.0, stats
            assert updates[0]["relayed_to"] == [1] and updates[1]["relayed_from"] == 0, updates
            for r in (0, 1):
                for s in dst.shards(r):
                    want = global_tensor(s["name"], s["global_shape"], v)
                    got = subs[r].tensors[s["name"]]
                    assert torch.equal(got.view(torch.int16), want.view(torch.int16)), (r, v, s["name"])
