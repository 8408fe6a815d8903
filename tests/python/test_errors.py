"""Every exception class of shardwire.errors raised by a real failure (not by _raise_error).

Two codes have no failure reachable from Python, and are checked only through the mapping
test in test_model_layout_plan.py (test_every_error_code_has_its_class):
- VerificationFailedError (kVerificationFailed): the library never returns it; only the CLI's
  --verify-against checks (src/cli) do. Library-side mismatches (digests) are re-read from
  another source inside ModelLoader, or surface as kUnavailable / kCorruptData.
- InternalError (kInternal): a broken invariant inside Shardwire (a bug); no input reaches it.
"""
import json
import os
import pathlib
import signal
import struct
import subprocess
import sys
import textwrap

import pytest
import torch

import shardwire
from shardwire import errors

sys.path.insert(0, str(pathlib.Path(__file__).parent))
from checkpoint_oracle import LLAMA  # noqa: E402

PY = "/usr/bin/python3"


def llama():
    return shardwire.Model.from_config_json(json.dumps(LLAMA))


def test_invalid_argument_negative_layers_and_tiny_buckets(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA))
    # -1 meant "the config's layers", silently.
    with pytest.raises(errors.InvalidArgumentError, match="num_layers -1 is negative"):
        shardwire.Model.from_config(str(config), -1)
    assert len(shardwire.Model.from_config(str(config), 1).tensors) < len(shardwire.Model.from_config(str(config)).tensors)
    # A 1-byte bucket cut the plan into more moves than memory holds: MemoryError, not a typed error.
    big = shardwire.Model.from_config_json(json.dumps(dict(LLAMA, vocab_size=1 << 19, hidden_size=512)))
    src = shardwire.Layout.from_string(big, "fsdp=1")
    dst = shardwire.Layout.from_string(big, "tp=2")
    with pytest.raises(errors.InvalidArgumentError, match="bucket_bytes 1 cuts the plan"):
        shardwire.plan(src, dst, bucket_bytes=1)


def test_integers_and_text_the_bindings_cannot_take_are_invalid_argument_naming_them(tmp_path):
    """pybind11 refused these with a TypeError ("incompatible function arguments") naming no
    argument; the wrappers check first."""
    model = llama()
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1")
    with pytest.raises(errors.InvalidArgumentError, match=r"rank is 2147483648; it must be in \[0, 2147483647\]"):
        shardwire.allocate_shard_buffer(dst, 2**31)
    with pytest.raises(errors.InvalidArgumentError, match="rank must be an integer, got float"):
        shardwire.allocate_shard_buffer(dst, 0.0)
    with pytest.raises(errors.InvalidArgumentError, match="rank is 4294967296"):
        shardwire.shard_views(torch.zeros(16, dtype=torch.uint8), dst, 2**32)
    # What pybind11 took before the checks still passes: numpy and 0-d torch integers.
    import numpy as np
    assert shardwire.allocate_shard_buffer(dst, np.int64(0))[0].numel() == dst.buffer_bytes(0)
    assert shardwire.allocate_shard_buffer(dst, torch.tensor(0))[0].numel() == dst.buffer_bytes(0)
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        with pytest.raises(errors.InvalidArgumentError, match="rank is -1"):
            shardwire.WeightPublisher(client, src, dst, -1, job="args")
        with pytest.raises(errors.InvalidArgumentError, match="job is not valid UTF-8"):
            shardwire.WeightPublisher(client, src, dst, 0, job="bad\ud800")
        with pytest.raises(errors.InvalidArgumentError, match="lanes is -1"):
            shardwire.WeightPublisher(client, src, dst, 0, job="args", lanes=-1)
        with pytest.raises(errors.InvalidArgumentError, match="max_concurrency is 4294967296"):
            shardwire.WeightSubscriber(client, src, dst, 0, job="args", max_concurrency=2**32)
        pub = shardwire.WeightPublisher(client, src, dst, 0, job="args")
        sub = shardwire.WeightSubscriber(client, src, dst, 0, job="args")
        with pytest.raises(errors.InvalidArgumentError, match=r"version is -1; it must be in \[0, 18446744073709551615\]"):
            pub.push(-1)
        with pytest.raises(errors.InvalidArgumentError, match="version is 18446744073709551616"):
            sub.begin_update(2**64)
        with pytest.raises(errors.InvalidArgumentError, match="version must be an integer, got bool"):
            sub.wait_for_update(True)
        with pytest.raises(errors.InvalidArgumentError, match="engine_ranks is 2147483648"):
            pub.wait_for_engines(2**31, 0.1)
        with pytest.raises(errors.InvalidArgumentError, match="instance_id is not valid UTF-8"):
            shardwire.ModelLoader(client, model, "tp=1", 0, instance_id="\udcff")
        with pytest.raises(errors.InvalidArgumentError, match="rank is 4294967296"):
            shardwire.ModelLoader(client, model, "tp=1", 2**32)


def test_arguments_the_raw_bindings_cannot_take_are_invalid_argument_naming_the_call():
    """The classes bound straight from C++ raised pybind11's TypeError for an argument that does
    not fit the C++ parameter; now InvalidArgumentError (a ValueError) with pybind11's message:
    the call, the signature it takes and the values it was given."""
    model = llama()
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1")
    refused = r"incompatible (function|constructor) arguments"
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        with pytest.raises(errors.InvalidArgumentError, match=r"add\(\): " + refused) as e:
            client.add("k", 2**70)
        assert "1180591620717411303424" in str(e.value)  # the value given
        with pytest.raises(errors.InvalidArgumentError, match=r"commit_version\(\): " + refused):
            client.commit_version("job", "m", -1)
        with pytest.raises(errors.InvalidArgumentError, match=r"__init__\(\): " + refused):
            shardwire.CoordinatorClient(server.address, call_timeout_s="soon")
        with pytest.raises(errors.InvalidArgumentError, match=r"mark_source_stale\(\): " + refused):
            client.mark_source_stale("src-0000000000000000", "x", hold="yes")
        assert client.add("k", 2) == 2  # the client still works; nothing was applied
        # The workflow classes too (their pybind11 constructors raised TypeError), and layout
        # strings where Layout objects are taken (an AttributeError on 'buffer_bytes').
        with pytest.raises(errors.InvalidArgumentError, match=r"__init__\(\): " + refused):
            shardwire.WeightPublisher(client, src, dst, 0, job="x", timeout_s="5")
        with pytest.raises(errors.InvalidArgumentError, match=r"__init__\(\): " + refused):
            shardwire.WeightSubscriber(server.address, src, dst, 0, job="x")  # an address, not a client
        with pytest.raises(errors.InvalidArgumentError, match=r"__init__\(\): " + refused):
            shardwire.ModelLoader(client, model, "tp=1", 0, stall_timeout_s="3")
        with pytest.raises(errors.InvalidArgumentError, match="trainer_layout must be a shardwire.Layout"):
            shardwire.WeightPublisher(client, "fsdp=1", "tp=1", 0, job="x")
    with pytest.raises(errors.InvalidArgumentError, match=r"plan\(\): " + refused):
        shardwire.plan(src, dst, bucket_bytes=-1)
    with pytest.raises(errors.InvalidArgumentError, match=r"from_checkpoint\(\): " + refused):
        shardwire.Model.from_checkpoint(5)  # a static method
    with pytest.raises(errors.InvalidArgumentError, match=r"buffer_bytes\(\): " + refused):
        dst.buffer_bytes(2**40)
    # Errors the C++ side raises keep their own class and message.
    with pytest.raises(errors.InvalidArgumentError, match="TP size 3 does not divide"):
        shardwire.Layout.from_string(model, "tp=3")
    assert shardwire.CoordinatorClient.add.__doc__.startswith("add(")  # docstrings kept


def test_invalid_argument_bad_layout_string():
    with pytest.raises(errors.InvalidArgumentError, match="TP size 3 does not divide"):
        shardwire.Layout.from_string(llama(), "tp=3")  # 4 heads do not split 3 ways
    with pytest.raises(errors.InvalidArgumentError):
        shardwire.Layout.from_string(llama(), "tp=2,,x")


def test_not_found_model_nobody_serves(tmp_path):
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        loader = shardwire.ModelLoader(client, llama(), "tp=1", 0, instance_id="n")
        with pytest.raises(errors.NotFoundError, match="no READY source"):
            loader.load()
        with pytest.raises(errors.NotFoundError):
            client.leave_job("no-such-job", "nobody")


def test_corrupt_data_checkpoint_header_and_nan_into_fp8(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(struct.pack("<Q", 40) + b'{"a": {"dtype": "BF16", "shape": [2,' + b" " * 8)
    (tmp_path / "config.json").write_text(json.dumps(LLAMA))
    with pytest.raises(errors.CorruptDataError, match="model.safetensors"):
        shardwire.Model.from_checkpoint(str(bad))
    x = torch.zeros(128, 128)
    x[3, 5] = float("nan")
    with pytest.raises(errors.CorruptDataError, match="w_nan"):
        shardwire.quantize_fp8_block(x, name="w_nan")


def test_layout_mismatch_plan_between_different_models():
    other = dict(LLAMA, hidden_size=128, intermediate_size=256)
    a = shardwire.Layout.from_string(llama(), "tp=2")
    b = shardwire.Layout.from_string(shardwire.Model.from_config_json(json.dumps(other)), "tp=2")
    with pytest.raises(errors.LayoutMismatchError):
        shardwire.plan(a, b)


def test_io_error_port_in_use():
    with shardwire.CoordinatorServer() as server:
        with pytest.raises(errors.IoError, match=str(server.port)):
            shardwire.CoordinatorServer(listen_address=server.address)


def test_transport_error_when_ucx_has_no_usable_transport():
    # UCX_TLS naming no transport makes ucp_init fail in the child (its own environment).
    code = textwrap.dedent("""
        import json, sys, shardwire
        from shardwire import errors
        model = shardwire.Model.from_config_json(sys.argv[1])
        lay = shardwire.Layout.from_string(model, "tp=1")
        with shardwire.CoordinatorServer() as server:
            try:
                shardwire.WeightSubscriber(shardwire.CoordinatorClient(server.address), lay, lay, 0)
            except errors.TransportError as e:
                print("TransportError", e)
    """)
    r = subprocess.run([PY, "-c", code, json.dumps(LLAMA)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, UCX_TLS="no_such_transport"))
    assert r.returncode == 0, r.stderr
    assert "TransportError" in r.stdout and "ucp_init" in r.stdout, r.stdout + r.stderr


TRAINER = textwrap.dedent("""
    import json, sys, shardwire
    model = shardwire.Model.from_config_json(sys.argv[1])
    lay = shardwire.Layout.from_string(model, "tp=1")
    pub = shardwire.WeightPublisher(shardwire.CoordinatorClient(sys.argv[2]), lay, lay, 0, job="dies")
    pub.connect()
    print("connected", flush=True)
    sys.stdin.read()
""")


def test_peer_disconnected_when_the_trainer_process_is_killed():
    lay = shardwire.Layout.from_string(llama(), "tp=1")
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        sub = shardwire.WeightSubscriber(client, lay, lay, 0, job="dies", timeout_s=60)
        trainer = subprocess.Popen([PY, "-c", TRAINER, json.dumps(LLAMA), server.address], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            sub.connect()
            assert trainer.stdout.readline().strip() == "connected"
            assert sub.holds_committed_version
            sub.begin_update(1)
            assert not sub.holds_committed_version  # single-buffered: the trainers write it now
            trainer.send_signal(signal.SIGKILL)
            trainer.wait(timeout=30)
            with pytest.raises(errors.PeerDisconnectedError, match="dies/trainer/0"):
                sub.wait_for_update(1)
            assert sub.committed_version == 0
            # single-buffered: the weights may hold part of v1 now, not v0
            assert not sub.holds_committed_version
        finally:
            if trainer.poll() is None:
                trainer.kill()
            trainer.communicate()


def test_timed_out_wait_with_nobody_publishing():
    lay = shardwire.Layout.from_string(llama(), "tp=1")
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        sub = shardwire.WeightSubscriber(client, lay, lay, 0, job="quiet", timeout_s=0.5)
        with pytest.raises(errors.TimedOutError, match="quiet/trainer/0"):
            sub.connect()  # no trainer ever published its metadata
        pub = shardwire.WeightPublisher(client, lay, lay, 0, job="quiet", timeout_s=0.5)
        sub.connect()
        pub.connect()
        sub.begin_update(1)
        with pytest.raises(errors.TimedOutError, match="DONE v1"):
            sub.wait_for_update(1)  # the trainer never pushes
        assert sub.committed_version == 0


def test_unsupported_model_type():
    with pytest.raises(errors.UnsupportedError, match="model_type"):
        shardwire.Model.from_config_json(json.dumps(dict(LLAMA, model_type="no-such-architecture")))


def test_unauthenticated_wrong_token():
    with shardwire.CoordinatorServer(token="right") as server:
        with pytest.raises(errors.UnauthenticatedError):
            shardwire.CoordinatorClient(server.address, token="wrong", unavailable_timeout_s=2).put("k", b"v")


def test_unavailable_nothing_listening():
    with shardwire.CoordinatorServer() as server:
        address = server.address
    with pytest.raises(errors.UnavailableError, match=address.split(":")[-1]):
        shardwire.CoordinatorClient(address, unavailable_timeout_s=1)


def test_already_exists_live_member_joins_again():
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        client.join_job("job", "engine-0/rank-0")
        with pytest.raises(errors.AlreadyExistsError, match="engine-0/rank-0"):
            client.join_job("job", "engine-0/rank-0")
        assert [m["member_id"] for m in client.job("job")["members"]] == ["engine-0/rank-0"]


def test_failed_precondition_version_backwards_and_source_before_load():
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        client.join_job("job", "e0")
        client.commit_version("job", "e0", 5)
        with pytest.raises(errors.FailedPreconditionError, match="below"):
            client.commit_version("job", "e0", 4)
        loader = shardwire.ModelLoader(client, llama(), "tp=1", 0, instance_id="early")
        with pytest.raises(errors.FailedPreconditionError, match="before a committed load"):
            loader.become_source()


def test_every_class_has_a_real_failure_here_or_is_listed_as_unreachable():
    """Keeps this file complete when a code is added: each class is named by a test above or
    in the module docstring's unreachable list."""
    text = pathlib.Path(__file__).read_text()
    for code, name in shardwire._shardwire.ERROR_CODES:
        cls = errors.error_class(code)
        assert cls is not errors.ShardwireError
        assert f"errors.{cls.__name__}" in text or f"- {cls.__name__}" in text, cls.__name__
