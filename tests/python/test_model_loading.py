"""P2P model loading from Python across real processes (real UCX, real gRPC coordinator): a
seed instance serves tp=2 shards, new instances load tp=1 and tp=4 into torch tensors, checked
byte for byte against the checkpoint read by an independent safetensors reader
(checkpoint_oracle.py), which never touches Shardwire's checkpoint, layout-to-plan or transport code."""
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import shardwire
from shardwire import errors

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from checkpoint_oracle import checkpoint_dir, expected_shard, read_safetensors, same_bytes  # noqa: E402

PY = "/usr/bin/python3"
HERE = str(pathlib.Path(__file__).parent)

# A seed instance: every rank of `layout` in this process, serving torch tensors read by the
# oracle (params=) or the checkpoint itself (checkpoint=), until stdin closes.
SEED = textwrap.dedent("""
    import sys, torch, shardwire
    sys.path.insert(0, sys.argv[5])
    from checkpoint_oracle import read_safetensors, expected_shard
    address, ckpt, layout, mode = sys.argv[1:5]
    client = shardwire.CoordinatorClient(address)
    model = shardwire.Model.from_checkpoint(ckpt)
    lay = shardwire.Layout.from_string(model, layout)
    full = read_safetensors(ckpt + "/model.safetensors")
    sources = []
    for r in range(lay.world_size):
        if mode == "tensors":
            params = {s["name"]: expected_shard(full, s).contiguous() for s in lay.shards(r)}
            sources.append(shardwire.ModelSource(client, model, layout, r, params=params, revision="step-7",
                                                 instance_id="seed"))
        else:
            sources.append(shardwire.ModelSource(client, model, layout, r, checkpoint=ckpt, instance_id="seed"))
    print("READY", sources[0].identity, flush=True)
    sys.stdin.read()
    for s in sources:
        s.close()
    print("CLOSED", flush=True)
""")

# A new instance: every rank of `layout` loaded in this process (rank by rank), into the
# engine's own tensors (own=1) or into arena views; compared with the oracle here.
LOAD = textwrap.dedent("""
    import sys, torch, shardwire
    sys.path.insert(0, sys.argv[5])
    from checkpoint_oracle import read_safetensors, expected_shard, same_bytes
    address, ckpt, layout, own = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    client = shardwire.CoordinatorClient(address)
    model = shardwire.Model.from_checkpoint(ckpt)
    lay = shardwire.Layout.from_string(model, layout)
    full = read_safetensors(ckpt + "/model.safetensors")
    total = 0
    for r in range(lay.world_size):
        params = None
        if own:
            params = {s["name"]: torch.full(s["shape"], 3.0).to(shardwire.torch_dtype(s["dtype"]))
                      for s in lay.shards(r)}
            if r % 2 == 1:  # in one shard buffer (as an engine keeps them): loaded in place
                shardwire.adopt_parameters(params, lay, r)
        loader = shardwire.ModelLoader(client, model, layout, r, params=params, instance_id="new-" + layout)
        assert loader.in_place == (own and r % 2 == 1)
        report = loader.load()
        assert loader.loaded and report["bytes_from_disk"] == 0, report
        assert report["bytes_per_instance"].get("seed", 0) == report["bytes_from_sources"] > 0, report
        for s in lay.shards(r):
            got = loader.tensors[s["name"]]
            if own:
                assert got.data_ptr() == params[s["name"]].data_ptr()  # the engine's own tensor was filled
            if not same_bytes(got, expected_shard(full, s)):
                print("MISMATCH", layout, r, s["name"], flush=True)
                sys.exit(3)
            total += s["nbytes"]
    print("LOADED", layout, total, flush=True)
""")


def _run(code: str, *args: str, stdin=None) -> subprocess.Popen:
    return subprocess.Popen([PY, "-c", code, *args], stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=dict(os.environ))


@pytest.mark.parametrize("mode", ["tensors", "checkpoint"])
def test_seed_tp2_load_tp1_and_tp4_into_torch_tensors_byte_for_byte(tmp_path, mode):
    ckpt = checkpoint_dir(tmp_path)
    model = shardwire.Model.from_checkpoint(str(ckpt))
    with shardwire.CoordinatorServer() as server:
        seed = _run(SEED, server.address, str(ckpt), "tp=2", mode, HERE, stdin=subprocess.PIPE)
        line = seed.stdout.readline()
        assert line.startswith("READY"), line + seed.stderr.read()
        client = shardwire.CoordinatorClient(server.address)
        listed = client.list_sources(state="READY")
        assert sorted(r["rank"] for r in listed) == [0, 1] and {r["layout"] for r in listed} == {"tp=2"}
        loaders = [_run(LOAD, server.address, str(ckpt), "tp=1", "0", HERE),
                   _run(LOAD, server.address, str(ckpt), "tp=4", "1", HERE)]
        for layout, p in zip(["tp=1", "tp=4"], loaders):
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, out + err
            lay = shardwire.Layout.from_string(model, layout)
            want = sum(s["nbytes"] for r in range(lay.world_size) for s in lay.shards(r))
            assert f"LOADED {layout} {want}" in out
        out, err = seed.communicate(input="", timeout=60)  # closes its stdin: it closes its sources
        assert seed.returncode == 0 and "CLOSED" in out, out + err
        assert client.list_sources(state="READY") == []  # closing deregistered every rank


def test_loaded_instance_serves_the_next_one(tmp_path):
    """tp=2 checkpoint seed -> tp=1 loader -> become_source; seed closed -> tp=4 loads from it."""
    ckpt = checkpoint_dir(tmp_path)
    full = read_safetensors(ckpt / "model.safetensors")
    model = shardwire.Model.from_checkpoint(str(ckpt))
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        seeds = [shardwire.ModelSource(client, model, "tp=2", r, checkpoint=str(ckpt), instance_id="seed")
                 for r in range(2)]
        first = shardwire.ModelLoader(client, model, "tp=1", 0, instance_id="first")
        with pytest.raises(errors.FailedPreconditionError):
            first.become_source()  # nothing loaded yet
        first.load()
        lay1 = shardwire.Layout.from_string(model, "tp=1")
        with pytest.raises(errors.InvalidArgumentError):
            first.become_source(heartbeat_interval_s=0)
        # Refused: the loader keeps its arena, and its views still read the loaded bytes (a
        # freed arena would crash this process here).
        assert first.loaded
        for s in lay1.shards(0):
            assert same_bytes(first.tensors[s["name"]], expected_shard(full, s)), s["name"]
        served = first.become_source()
        for s in seeds:
            s.close()
        lay4 = shardwire.Layout.from_string(model, "tp=4")
        for r in range(4):
            loader = shardwire.ModelLoader(client, model, "tp=4", r, instance_id="second")
            report = loader.load()
            assert report["bytes_per_instance"] == {"first": report["bytes_from_sources"]}, report
            for s in lay4.shards(r):
                assert same_bytes(loader.tensors[s["name"]], expected_shard(full, s)), s["name"]
        assert served.digests_served > 0
        served.close()


# Views kept by the caller after close() and after every Shardwire object is dropped: a source's
# views, and a loader's arena views after the arena moved into the source it became. Each
# is read against the oracle; a freed buffer (munmap'ed huge pages) would crash this child.
VIEWS_OUTLIVE = textwrap.dedent("""
    import gc, sys, torch, shardwire
    sys.path.insert(0, sys.argv[3])
    from checkpoint_oracle import read_safetensors, expected_shard, same_bytes
    address, ckpt = sys.argv[1:3]
    client = shardwire.CoordinatorClient(address)
    model = shardwire.Model.from_checkpoint(ckpt)
    lay = shardwire.Layout.from_string(model, "tp=1")
    full = read_safetensors(ckpt + "/model.safetensors")
    seed = shardwire.ModelSource(client, model, "tp=1", 0, checkpoint=ckpt, instance_id="seed")
    from_source = dict(seed.tensors)
    loader = shardwire.ModelLoader(client, model, "tp=1", 0, instance_id="new")
    loader.load()
    from_loader = {name: t[:1] for name, t in loader.tensors.items()}  # views of views, too
    served = loader.become_source()
    # In place: the loader writes the caller's memory, and the source it becomes serves that
    # memory; the source's views must keep the caller's memory alive, not only the source.
    buf, params = shardwire.allocate_shard_buffer(lay, 0)
    inplace = shardwire.ModelLoader(client, model, "tp=1", 0, params=params, instance_id="inplace")
    assert inplace.in_place
    inplace.load()
    served_in_place = inplace.become_source()
    from_in_place = dict(served_in_place.tensors)
    assert seed.closed is False
    seed.close()
    served.close()
    served_in_place.close()
    assert seed.closed and served.closed and seed.tensors == {}
    del seed, loader, served, inplace, served_in_place, buf, params
    gc.collect()
    reuse = [torch.full((1 << 16,), 0x5A, dtype=torch.uint8) for _ in range(256)]  # takes freed memory
    for s in lay.shards(0):
        want = expected_shard(full, s)
        assert same_bytes(from_source[s["name"]], want), s["name"]
        assert same_bytes(from_loader[s["name"]], want[:1]), s["name"]
        assert same_bytes(from_in_place[s["name"]], want), s["name"]
    print("VIEWS OK", len(from_source), flush=True)
""")


def test_views_stay_valid_after_close_and_after_the_objects_are_dropped(tmp_path):
    ckpt = checkpoint_dir(tmp_path)
    with shardwire.CoordinatorServer() as server:
        p = _run(VIEWS_OUTLIVE, server.address, str(ckpt), HERE)
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and "VIEWS OK" in out, f"exit {p.returncode}: {out}{err}"
        client = shardwire.CoordinatorClient(server.address)
        assert client.list_sources(state="READY") == []  # close() deregistered both sources


def test_numpy_arrays_are_served_and_loaded_without_torch_tensors():
    """numpy arrays as a source's params and as a loader's own params (float32 model: numpy has
    no bf16): the loaded arrays equal the served ones, and the loader wrote into the caller's
    arrays themselves. The oracle is the arrays; nothing here reads Shardwire's buffers."""
    import json
    import numpy as np
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96, "torch_dtype": "float32"}
    model = shardwire.Model.from_config_json(json.dumps(cfg))
    lay = shardwire.Layout.from_string(model, "tp=1")
    rng = np.random.default_rng(5)
    served = {s["name"]: rng.standard_normal(s["shape"]).astype(np.float32) for s in lay.shards(0)}
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        src = shardwire.ModelSource(client, model, "tp=1", 0, params=served, revision="np-1", instance_id="np-seed")
        mine = {name: np.zeros_like(a) for name, a in served.items()}
        loader = shardwire.ModelLoader(client, model, "tp=1", 0, params=mine, instance_id="np-new")
        report = loader.load()
        assert report["bytes_per_instance"] == {"np-seed": report["bytes_from_sources"]}, report
        for name, a in served.items():
            assert np.array_equal(mine[name], a), name  # the caller's own arrays were filled
        with pytest.raises(errors.InvalidArgumentError, match="cannot be shared with torch"):
            shardwire.ModelSource(client, model, "tp=1", 0, revision="np-2",
                                  params=dict(served, **{"lm_head.weight": served["lm_head.weight"].astype(">f4")}))
        src.close()


def test_a_source_learns_of_a_loaders_mark_from_its_heartbeats():
    """mark_source_stale as a loader calls it: a held mark shows in the source's last_mark as
    STALE with the reason while the coordinator holds it (loaders list it STALE), then READY once
    the hold (mark_hold_s = 5 s here) is over; a mark without hold shows once, READY."""
    import json
    import numpy as np
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 1,
           "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 96, "torch_dtype": "float32"}
    model = shardwire.Model.from_config_json(json.dumps(cfg))
    lay = shardwire.Layout.from_string(model, "tp=1")
    served = {s["name"]: np.ones(s["shape"], np.float32) for s in lay.shards(0)}

    def eventually(cond, timeout_s=10.0):
        end = time.monotonic() + timeout_s
        while not cond() and time.monotonic() < end:
            time.sleep(0.02)
        return cond()

    with shardwire.CoordinatorServer(mark_hold_s=5.0) as server:
        client = shardwire.CoordinatorClient(server.address)
        with shardwire.ModelSource(client, model, "tp=1", 0, params=served, revision="r", instance_id="marked",
                                   heartbeat_interval_s=0.05) as src:
            time.sleep(0.2)
            assert src.last_mark is None and src.marks_seen == 0
            client.mark_source_stale(src.source_id, "block 2 failed its digest", hold=True)
            assert eventually(lambda: src.last_mark is not None), "no heartbeat reported the mark"
            assert src.last_mark == {"state": "STALE", "stale_reason": "block 2 failed its digest"}
            assert [s["state"] for s in client.list_sources()] == ["STALE"]  # held against heartbeats
            assert eventually(lambda: src.last_mark["state"] == "READY"), "the hold never ended"
            assert src.last_mark["stale_reason"] == "block 2 failed its digest"
            assert eventually(lambda: [s["state"] for s in client.list_sources()] == ["READY"])
            seen = src.marks_seen
            client.mark_source_stale(src.source_id, "stalled")
            assert eventually(lambda: src.last_mark["stale_reason"] == "stalled")
            assert src.last_mark["state"] == "READY" and src.marks_seen == seen + 1


def test_nobody_serving_is_not_found_and_checkpoint_fallback_loads(tmp_path):
    ckpt = checkpoint_dir(tmp_path)
    full = read_safetensors(ckpt / "model.safetensors")
    model = shardwire.Model.from_checkpoint(str(ckpt))
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        loader = shardwire.ModelLoader(client, model, "tp=2", 1, instance_id="lonely")
        with pytest.raises(errors.NotFoundError, match="no READY source serves model"):
            loader.load()
        assert not loader.loaded
        fallback = shardwire.ModelLoader(client, model, "tp=2", 1, instance_id="disk", checkpoint=str(ckpt))
        report = fallback.load()
        assert report["bytes_from_disk"] == report["buffer_bytes"] > 0 and report["bytes_from_sources"] == 0
        for s in shardwire.Layout.from_string(model, "tp=2").shards(1):
            assert same_bytes(fallback.tensors[s["name"]], expected_shard(full, s)), s["name"]


def test_a_seed_and_a_loader_in_one_process_with_default_ids_load(tmp_path):
    """Both defaulted to instance_id "py-<pid>", and a loader passes over its own instance's
    sources: the README's one-process example raised NotFoundError with two READY sources listed."""
    ckpt = checkpoint_dir(tmp_path)
    full = read_safetensors(ckpt / "model.safetensors")
    model = shardwire.Model.from_checkpoint(str(ckpt))
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        seeds = [shardwire.ModelSource(client, model, "tp=2", r, checkpoint=str(ckpt)) for r in range(2)]
        try:
            loader = shardwire.ModelLoader(client, model, "tp=1", 0)
            report = loader.load()
            assert report["bytes_from_sources"] == report["buffer_bytes"] > 0
            for s in shardwire.Layout.from_string(model, "tp=1").shards(0):
                assert same_bytes(loader.tensors[s["name"]], expected_shard(full, s)), s["name"]
            # Named alike on purpose, the sources are the loader's own instance: the error says so.
            same = shardwire.ModelLoader(client, model, "tp=1", 0, instance_id=f"py-{os.getpid()}")
            with pytest.raises(errors.NotFoundError, match="this loader's own instance_id"):
                same.load()
            # A revision nobody serves: the error lists the ones served (it named only the digest).
            typo = shardwire.ModelLoader(client, model, "tp=1", 0, revision="step-nope")
            with pytest.raises(errors.NotFoundError,
                               match="revision step-nope is not served; the revisions served of this model: xxh3"):
                typo.load()
        finally:
            for s in seeds:
                s.close()


def test_bad_tensors_for_a_source_or_loader_are_refused_before_registration(tmp_path):
    ckpt = checkpoint_dir(tmp_path)
    full = read_safetensors(ckpt / "model.safetensors")
    model = shardwire.Model.from_checkpoint(str(ckpt))
    lay = shardwire.Layout.from_string(model, "tp=2")
    good = {s["name"]: expected_shard(full, s).contiguous() for s in lay.shards(0)}
    name = "model.layers.0.self_attn.q_proj.weight"
    shape = tuple(good[name].shape)
    bad_cases = [
        ("lack it", {k: v for k, v in good.items() if k != name}),
        ("not held", dict(good, extra_tensor=torch.zeros(4, dtype=torch.bfloat16))),
        ("torch.float32", dict(good, **{name: good[name].float()})),
        (r"\(32, 32\)|\(1, 64\)", dict(good, **{name: good[name].reshape(-1)[:64].reshape(1, 64)})),
        ("not contiguous", dict(good, **{name: torch.zeros(shape[::-1], dtype=torch.bfloat16).T})),
        ("device meta", dict(good, **{name: torch.empty(shape, dtype=torch.bfloat16, device="meta")})),
    ]
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        for what, params in bad_cases:
            with pytest.raises(errors.InvalidArgumentError, match=what) as e:
                shardwire.ModelSource(client, model, "tp=2", 0, params=params, revision="r")
            assert "extra_tensor" in str(e.value) or name in str(e.value)
            with pytest.raises(errors.InvalidArgumentError, match=what):
                shardwire.ModelLoader(client, model, "tp=2", 0, params=params, instance_id="x")
        with pytest.raises(errors.InvalidArgumentError, match="revision"):
            shardwire.ModelSource(client, model, "tp=2", 0, params=good)  # tensors need a revision
        # An empty checkpoint path is named as such (it was taken for params= and blamed the revision).
        with pytest.raises(errors.InvalidArgumentError, match="checkpoint= is empty"):
            shardwire.ModelSource(client, model, "tp=2", 0, checkpoint="")
        assert client.list_sources() == []  # nothing was registered by any refused call
        with shardwire.ModelSource(client, model, "tp=2", 0, params=good, revision="r") as ok:
            assert len(client.list_sources()) == 1
            assert all(same_bytes(ok.tensors[k], v) for k, v in good.items())


def test_close_deregisters_within_its_own_bound(tmp_path):
    ckpt = str(checkpoint_dir(tmp_path))
    model = shardwire.Model.from_checkpoint(ckpt)
    server = shardwire.CoordinatorServer()
    try:
        client = shardwire.CoordinatorClient(server.address, unavailable_timeout_s=60)
        for bad in (-1.0, float("nan"), float("inf")):
            with pytest.raises(errors.InvalidArgumentError, match="shutdown_timeout_s"):
                shardwire.ModelSource(client, model, "tp=1", checkpoint=ckpt, shutdown_timeout_s=bad)
        assert client.list_sources() == []
        kept = shardwire.ModelSource(client, model, "tp=1", checkpoint=ckpt, instance_id="kept",
                                     shutdown_timeout_s=0)
        kept.close()  # 0: no deregistration, the record is left to its lease
        assert [s["instance_id"] for s in client.list_sources()] == ["kept"]
        gone = shardwire.ModelSource(client, model, "tp=1", checkpoint=ckpt, instance_id="gone")
        gone.close()
        assert [s["instance_id"] for s in client.list_sources()] == ["kept"]
        orphan = shardwire.ModelSource(client, model, "tp=1", checkpoint=ckpt, instance_id="orphan",
                                       shutdown_timeout_s=0.5)
    finally:
        server.shutdown(0)
    # The coordinator is gone and the client would retry for 60 s: close() gives up within the
    # source's own bounds (one heartbeat, 2 s, plus 0.5 s) and raises nothing. (The 30 s below
    # is a bound against waiting out the client's 60 s, not a speed figure.)
    started = time.monotonic()
    orphan.close()
    assert orphan._impl.closed
    assert time.monotonic() - started < 30


CTRL_C_LOAD = textwrap.dedent("""
    import sys, shardwire
    address, ckpt = sys.argv[1], sys.argv[2]
    client = shardwire.CoordinatorClient(address)
    model = shardwire.Model.from_checkpoint(ckpt)
    loader = shardwire.ModelLoader(client, model, "tp=1", 0, instance_id="waiting", stall_timeout_s=300,
                                   load_timeout_s=300)
    try:
        print("loading", flush=True)
        loader.load()
    except KeyboardInterrupt:
        print("interrupted loaded=%s" % loader.loaded, flush=True)
        sys.exit(7)
""")


def test_ctrl_c_interrupts_a_load_from_a_stalled_source(tmp_path):
    """The only source is stopped (SIGSTOP): the loader waits for it (stall timeout 300 s) until
    SIGINT raises KeyboardInterrupt, with nothing committed."""
    ckpt = checkpoint_dir(tmp_path)
    with shardwire.CoordinatorServer(stale_after_s=300, delete_after_s=600) as server:
        seed = _run(SEED, server.address, str(ckpt), "tp=1", "checkpoint", HERE, stdin=subprocess.PIPE)
        assert seed.stdout.readline().startswith("READY")
        seed.send_signal(signal.SIGSTOP)
        try:
            loader = _run(CTRL_C_LOAD, server.address, str(ckpt))
            assert loader.stdout.readline().strip() == "loading"
            import time
            time.sleep(1.0)  # let it enter load() (not a timing assertion)
            loader.send_signal(signal.SIGINT)
            out, err = loader.communicate(timeout=60)  # a hang guard
            assert loader.returncode == 7, out + err
            assert "interrupted loaded=False" in out
        finally:
            seed.send_signal(signal.SIGCONT)
            seed.kill()
            seed.communicate(timeout=30)
