"""Shardwire objects across fork() and between threads (shardwire/_process_guard.py and the
coordinator client's fork checks): a forked child is refused at once instead of waiting without
end (gRPC) or crashing (transport threads), its exit leaves the parent's objects working, and a
second thread's call on a busy object is refused at once."""
import json
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import shardwire
from shardwire import errors

LLAMA = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "torch_dtype": "bfloat16",
}

# Runs in its own interpreter (a fork inside pytest's process would return into pytest). The
# parent holds a coordinator, a client, a publisher and a subscriber that pushed version 1, then
# forks; the child tries what a forked vLLM worker would, and exits through the interpreter's
# normal end (destructors of everything it inherited run then, or are kept from running).
FORKED = textwrap.dedent("""
    import json, os, signal, sys, torch, shardwire
    from shardwire import errors
    cfg = json.loads(sys.argv[1])
    model = shardwire.Model.from_config_json(json.dumps(cfg))
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1")
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        pub = shardwire.WeightPublisher(client, src, dst, 0, job="fork", timeout_s=10)
        sub = shardwire.WeightSubscriber(client, src, dst, 0, job="fork", timeout_s=10)
        sub.connect(); pub.connect(); sub.begin_update(1); pub.push(1); sub.wait_for_update(1)
        # Views that outlive their source hold its C++ object (and its threads) alone.
        params = {s["name"]: torch.zeros(s["shape"], dtype=torch.bfloat16) for s in dst.shards(0)}
        views = shardwire.ModelSource(client, model, "tp=1", 0, params=params, revision="r").tensors
        pid = os.fork()
        if pid == 0:
            signal.alarm(60)  # a hang ends as SIGALRM, which the parent reports
            seen = []
            for name, call in [("inherited client", lambda: client.put("k", b"v")),
                               ("new client", lambda: shardwire.CoordinatorClient(server.address)),
                               ("inherited publisher", lambda: pub.push(2)),
                               ("inherited subscriber", lambda: sub.begin_update(2))]:
                try:
                    call()
                    seen.append(name + ": no error")
                except errors.FailedPreconditionError as e:
                    seen.append(name + ": " + ("fork" if "fork" in str(e) else str(e)))
            print(json.dumps(seen), flush=True)
            sys.exit(7)  # the interpreter's normal end, inside the with-block of the server
        _, status = os.waitpid(pid, 0)
        print("child", os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status), flush=True)
        # The parent's objects still work: the child neither shut the server down nor broke gRPC.
        client.put("after", b"1")
        sub.begin_update(2); pub.push(2); committed = sub.wait_for_update(2)["version"]
        print("parent", client.get("after", 5).decode(), committed, flush=True)
""")


def test_a_forked_child_is_refused_at_once_and_leaves_the_parent_working():
    out = subprocess.run([sys.executable, "-c", FORKED, json.dumps(LLAMA)], capture_output=True, text=True,
                         timeout=240)
    lines = [line for line in out.stdout.splitlines() if line.startswith(('["', "child ", "parent "))]
    assert len(lines) == 3, out.stdout + out.stderr
    assert json.loads(lines[0]) == ["inherited client: fork", "new client: fork", "inherited publisher: fork",
                                    "inherited subscriber: fork"], out.stderr
    assert lines[1] == "child 7", out.stdout + out.stderr  # not SIGALRM (-14, a hang) nor SIGSEGV (-11)
    assert lines[2] == "parent 1 2", out.stdout + out.stderr
    assert out.returncode == 0, out.stderr


def test_a_second_thread_on_a_busy_object_is_refused_at_once():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1")
    with shardwire.CoordinatorServer() as server:
        client = shardwire.CoordinatorClient(server.address)
        sub = shardwire.WeightSubscriber(client, src, dst, 0, job="threads", timeout_s=10)
        pub = shardwire.WeightPublisher(client, src, dst, 0, job="threads", timeout_s=10)
        connect = threading.Thread(target=sub.connect)
        connect.start()
        pub.connect()
        connect.join(timeout=60)
        sub.begin_update(1)
        result = {}

        def wait():
            try:
                result["update"] = sub.wait_for_update(1)
            except Exception as e:  # noqa: BLE001 - reported by the assertion below
                result["error"] = e

        waiter = threading.Thread(target=wait)
        waiter.start()
        deadline = time.monotonic() + 60
        while sub._guard._busy_with != "wait_for_update(1)":  # until the waiter is inside (nothing pushed yet)
            assert time.monotonic() < deadline and waiter.is_alive(), result
            time.sleep(0.01)
        with pytest.raises(errors.FailedPreconditionError, match=r"another thread is in wait_for_update\(1\)"):
            sub.wait_for_update(1)
        pub.push(1)
        waiter.join(timeout=60)
        assert result.get("update", {}).get("version") == 1, result


# A daemon thread still in wait_for_update when the main thread ends: the interpreter's
# shutdown ended it with pthread_exit as it took the GIL back, which aborted the process
# (exit code 134, "terminate called without an active exception").
DAEMON_WAITER = textwrap.dedent("""
    import json, sys, threading, time, shardwire
    cfg = json.loads(sys.argv[1])
    model = shardwire.Model.from_config_json(json.dumps(cfg))
    src, dst = shardwire.Layout.from_string(model, "fsdp=1"), shardwire.Layout.from_string(model, "tp=1")
    server = shardwire.CoordinatorServer()
    client = shardwire.CoordinatorClient(server.address)
    pub = shardwire.WeightPublisher(client, src, dst, 0, job="daemon", timeout_s=10)
    sub = shardwire.WeightSubscriber(client, src, dst, 0, job="daemon", timeout_s=600)
    connect = threading.Thread(target=sub.connect)
    connect.start(); pub.connect(); connect.join()
    sub.begin_update(1)
    threading.Thread(target=sub.wait_for_update, args=(1,), daemon=True).start()
    while sub._guard._busy_with != "wait_for_update(1)":
        time.sleep(0.01)
    print("main thread returns", flush=True)
""")


def test_the_interpreter_ends_cleanly_with_a_daemon_thread_in_a_wait():
    out = subprocess.run([sys.executable, "-c", DAEMON_WAITER, json.dumps(LLAMA)], capture_output=True, text=True,
                         timeout=240)
    assert "main thread returns" in out.stdout, out.stdout + out.stderr
    assert out.returncode == 0, f"exit code {out.returncode}: {out.stderr}"
