#!/usr/bin/python3
"""Fault injection: kill -9 or SIGSTOP Shardwire's processes at random moments, many times.

Each scenario starts real processes (the `shardwire` binary: demo rl-sync, serve, seed, load,
redis-server), injects one fault at a uniformly random moment, and checks the outcome:

  rl-engine-kill       kill -9 one engine rank of `demo rl-sync`: the run must go on for 10 more steps,
                       the other engine ranks verifying every step byte for byte
  rl-engine-stop       SIGSTOP one engine rank for 1-12 s, then SIGCONT: 10 more steps after the resume,
                       with every engine rank verified again, every commit verified
                       (a stall below engine_timeout_s only delays; above it the rank misses versions)
  rl-trainer-stop      SIGSTOP one trainer for 1-12 s, then SIGCONT: 10 more steps after the resume, with
                       every engine rank verified again (a stalled trainer delays pushes; nothing is lost),
                       and no engine rank missing a version for the trainer's own stop
  rl-trainer-kill      kill -9 one trainer: the run must end with a typed error naming it, in bounded
                       time, with no engine committing a wrong byte
  p2p-source-kill      kill -9 one of two seeds while a tp=4 instance loads from both (bandwidth-capped):
                       the load must complete (other source, or the disk fallback) and verify every byte
  p2p-source-stop      SIGSTOP one of two seeds for 1-12 s while a tp=4 instance loads from both: the load
                       must complete verified, and after SIGCONT the stopped seed must serve the next
                       loader (no disk bytes, the seed among its sources)
  p2p-loader-stop      SIGSTOP a loader mid-load for 1-12 s, then SIGCONT: it must finish verified (the time
                       column: from the resume) without blaming its seeds for its own stop (no failed
                       source, no disk bytes), and the seeds serve the next loader
  p2p-loader-kill      kill -9 a loader mid-load: the seeds stay healthy and the next loader succeeds
  coordinator-restart  kill -9 a Redis-backed `shardwire serve` during demo rl-sync and restart it on the
                       same port: the run must go on for 10 more steps, nothing lost
  coordinator-memory-restart
                       kill -9 an in-memory `shardwire serve` (its state dies with it, by design) during
                       demo rl-sync and restart it empty: the demo must either go on for 10 more steps or
                       end by itself with a typed error within 60 s; never hang, commit a wrong byte or
                       leave a process behind (the note says which outcome)
  p2p-coordinator-memory-restart
                       kill -9 an in-memory `shardwire serve` while two seeds are registered with it and
                       restart it empty: every seed must register again (a heartbeat answered NOT_FOUND)
                       within 30 s, and the next loader must take every byte from the seeds (no disk)
  p2p-coordinator-gone-stop
                       kill -9 the coordinator while two seeds are registered with it, then SIGTERM each
                       seed: each must exit cleanly (code 0) within 10 s although it cannot deregister
                       (its heartbeats and its deregistration are bounded by the source's own options);
                       the time column is the slowest seed's exit after its SIGTERM
  redis-restart        kill -9 redis-server (append-only file, fsync always) during demo rl-sync and
                       restart it: the run must go on for 10 more steps
  coordinator-stop     SIGSTOP an in-memory `shardwire serve` for 1-12 s during demo rl-sync, then SIGCONT:
                       the run must go on for 10 more steps (calls whose deadline passed are sent again)
  redis-stop           SIGSTOP the redis-server under a Redis-backed `shardwire serve` for 1-12 s during
                       demo rl-sync, then SIGCONT: the run must go on for 10 more steps

RL runs are unbounded (--steps 100000); once a run has shown what it must, the script stops it
with Ctrl-C, which must end every process within 30 s. A run whose victim was already gone
(the fault not injected) fails.

Per scenario it prints: runs, passes, hangs (no exit within the bound), partial commits (an engine
that committed bytes that fail verification), lost registrations (a healthy seed not READY after a
loader died), orphans (processes of the run still alive after it ended), and the time from the fault
to detection / recovery (median, max). Usage:

  /usr/bin/python3 scripts/fault_injection.py [--runs N] [--scenario NAME ...] [--shardwire PATH]

Exit status: 0 when every run of every scenario passed with no hang, partial commit, lost
registration or orphan.
"""
import argparse
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def procs_with(needle):
    """PIDs whose command line contains `needle` (bytes)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if needle in cmd:
            # Zombies are reaped by their parent; count only live processes.
            try:
                with open(f"/proc/{pid}/stat") as f:
                    if f.read().split(") ")[-1].startswith("Z"):
                        continue
            except OSError:
                continue
            out.append(int(pid))
    return out


def worker_pid(job, role, rank):
    needle = b"\0".join([b"--role", role.encode(), b"--rank", str(rank).encode()])
    for pid in procs_with(b"--job\0" + job.encode() + b"\0"):
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if needle in f.read():
                return pid
    return None


class Lines:
    """Reads a process's stdout in a thread, timestamping every line."""

    def __init__(self, proc):
        self.lines = []
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc):
        for line in proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def first(self, text, after=0.0):
        for t, line in list(self.lines):
            if t >= after and text in line:
                return t
        return None

    def text(self):
        return "\n".join(line for _, line in self.lines)


class Result:
    def __init__(self):
        self.passed = False
        self.hang = False
        self.partial = False
        self.lost = False
        self.orphans = 0
        self.recovery_s = None
        self.ended_at = None  # monotonic time the run was seen to end by itself (went_on_or_failed_typed)
        self.note = ""


def wait(proc, timeout):
    try:
        proc.wait(timeout=timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def small_model_args(work):
    shared = os.environ.get("SHARDWIRE_SHARED_DIR", os.path.join(os.path.dirname(ROOT), "shared"))
    tiny = os.path.join(shared, "models", "tiny-llama3-bf16")
    if os.path.isdir(tiny):
        return ["--checkpoint", tiny]
    cfg = os.path.join(work, "small-llama.json")
    with open(cfg, "w") as f:
        f.write('{"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64, '
                '"intermediate_size": 128, "num_attention_heads": 4, "num_key_value_heads": 2, '
                '"num_hidden_layers": 2, "vocab_size": 256, "torch_dtype": "bfloat16"}')
    return ["--generate", cfg, "--work-dir", work]


# RL runs are unbounded (the script ends them with Ctrl-C once they have shown what they must):
# a fault at a random moment always lands mid-run, however fast the steps are.
RL_STEPS = 100000
# Steps the demo must complete after the fault (or after the resume / restart) to pass.
STEPS_AFTER = 10


def steps_after(lines, t):
    """Step lines printed at or after monotonic time t."""
    return sum(1 for ts, line in list(lines.lines) if ts >= t and line.startswith("step "))


def run_on_then_interrupt(proc, lines, t, r):
    """Waits for STEPS_AFTER steps after t (60 s bound), then stops the demo with Ctrl-C (30 s
    bound). Returns True when both happened; a demo that ended by itself fails the run."""
    deadline = time.monotonic() + 60
    while steps_after(lines, t) < STEPS_AFTER and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        r.note += f"; the demo ended by itself (exit {proc.returncode})"
        return False
    if steps_after(lines, t) < STEPS_AFTER:
        r.hang = True
        r.note += f"; fewer than {STEPS_AFTER} steps within 60 s after the fault"
    proc.send_signal(signal.SIGINT)
    if not wait(proc, 30):
        r.hang = True
        r.note += "; the demo did not stop within 30 s of Ctrl-C"
        return False
    return not r.hang


def went_on_or_failed_typed(proc, lines, t, r):
    """After a fault whose state loss the demo may not survive: True when it either ran
    STEPS_AFTER more steps (then stopped with Ctrl-C within 30 s) or ended by itself within 60 s
    with a typed error line ("shardwire demo rl-sync: <error code>: ..."). A run still going
    without new steps after 60 s is a hang."""
    deadline = time.monotonic() + 60
    while steps_after(lines, t) < STEPS_AFTER and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.poll() is not None:
        r.ended_at = time.monotonic()  # within 50 ms of the exit
        time.sleep(0.2)  # let the reader thread take the last lines
        typed = [l for _, l in list(lines.lines) if l.startswith("shardwire demo rl-sync: ")]
        if proc.returncode != 0 and typed:
            # The failing worker's own typed error ("shardwire: trainer 0: <code>: ..."), then the demo's.
            worker = [l for ts, l in list(lines.lines) if ts >= t and l.startswith("shardwire: ")]
            r.note += f"; ended with a typed error: {(worker[:1] or typed[-1:])[0][:300]}"
            return True
        r.note += f"; ended (exit {proc.returncode}) without a typed error"
        return False
    r.note += "; went on"
    return run_on_then_interrupt(proc, lines, t, r)


def rl_demo(sw, work, job, steps, extra=(), env=None):
    cmd = [sw, "demo", "rl-sync", *small_model_args(work), "--steps", str(steps), "--job", job,
           "--timeout", "30", *extra]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    return proc, Lines(proc)


def start_rl_run(sw, work, extra=()):
    """Starts an unbounded demo rl-sync under a fresh job name and returns (job, proc, lines)
    at a uniformly random moment 0-2 s after its step 2."""
    job = f"fi-{os.getpid()}-{random.randrange(1 << 30)}"
    proc, lines = rl_demo(sw, work, job, RL_STEPS, extra)
    while lines.first("step 2/") is None and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(random.uniform(0.0, 2.0))
    return job, proc, lines


def check_rl_output(r, lines):
    text = lines.text()
    if "verification failed" in text or "differs from its recomputation" in text:
        r.partial = True


def scenario_rl_engine(sw, work, stop, role="engine"):
    r = Result()
    job, proc, lines = start_rl_run(sw, work)
    rank = random.randrange(4 if role == "engine" else 2)
    pid = worker_pid(job, role, rank)
    t_fault = time.monotonic()
    resumed = t_fault
    if pid is None:
        r.note = f"{role} rank {rank} not found: fault not injected"
    elif stop:
        stall = random.uniform(1.0, 12.0)
        os.kill(pid, signal.SIGSTOP)
        time.sleep(stall)
        os.kill(pid, signal.SIGCONT)
        resumed = time.monotonic()
        r.note = f"stalled {role} rank {rank} {stall:.1f} s"
    else:
        os.kill(pid, signal.SIGKILL)
        r.note = f"killed engine rank {rank} (pid {pid})"
    ran_on = pid is not None and run_on_then_interrupt(proc, lines, resumed, r)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    lines.thread.join(timeout=5)
    check_rl_output(r, lines)
    if not stop and pid is not None:
        seen = lines.first(f"engine rank {rank} was killed", after=t_fault)
        r.recovery_s = seen - t_fault if seen else None
        ran_on = ran_on and seen is not None
    elif pid is not None:
        # Recovery: the first step reported after SIGCONT with every engine rank verified.
        seen = lines.first("verified 4/4", after=resumed)
        r.recovery_s = seen - resumed if seen else None
        ran_on = ran_on and seen is not None
        if role == "trainer" and lines.first(" missed v", after=t_fault) is not None:
            # Every engine was healthy: a version missed is the trainer blaming an engine for its
            # own stop (a READY wait whose deadline counted the stop; own_pause.h, session 29).
            r.note += "; an engine rank missed a version for the trainer's own stop"
            ran_on = False
    r.orphans = len(procs_with(b"--job\0" + job.encode() + b"\0"))
    r.passed = ran_on and not r.partial and r.orphans == 0
    if not r.passed:
        txt = lines.text()
        r.note += f"; {len(lines.lines)} lines, killed-line={'was killed' in txt}, ran_on={ran_on}"
        r.note += f"; exit {proc.returncode}: " + "\n".join(
            l for l in lines.text().splitlines()
            # A worker's own error line ("shardwire: engine rank 2: ...") and its exit come first:
            # session 24's CI failure note cut them off, and with them the cause.
            if l.startswith("shardwire") or "exited with" in l)[-600:]
        r.note += "\n" + "\n".join(
            l for l in lines.text().splitlines() if "killed" in l or "missed" in l or "step 1/" in l)[-900:]
    return r


def scenario_rl_trainer_kill(sw, work):
    r = Result()
    job, proc, lines = start_rl_run(sw, work)
    rank = random.randrange(2)
    pid = worker_pid(job, "trainer", rank)
    t_fault = time.monotonic()
    if pid is not None:
        os.kill(pid, signal.SIGKILL)
    finished = pid is not None and wait(proc, 120)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    r.hang = not finished
    lines.thread.join(timeout=5)
    check_rl_output(r, lines)
    r.recovery_s = time.monotonic() - t_fault if finished else None
    r.orphans = len(procs_with(b"--job\0" + job.encode() + b"\0"))
    text = lines.text()
    named = f"trainer {rank} was killed" in text
    r.passed = finished and proc.returncode != 0 and named and not r.partial and r.orphans == 0
    r.note = f"killed trainer {rank}" if pid is not None else f"trainer {rank} not found: fault not injected"
    if not r.passed:
        r.note += f"; exit {proc.returncode}: {text[-600:]}"
    return r


def generated_checkpoint(sw, work):
    out = os.path.join(work, "TinyLlama-1.1B-1L")
    if not os.path.exists(os.path.join(out, "model.safetensors")):
        subprocess.run([sw, "generate", "--config", "tinyllama-1.1b", "--layers", "1", "--out", work],
                       check=True, stdout=subprocess.DEVNULL)
    return os.path.join(out, "model.safetensors"), os.path.join(out, "config.json")


def start_serve(sw, port, redis_url=None):
    cmd = [sw, "serve", "--port", str(port)] + (["--redis", redis_url] if redis_url else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"shardwire serve on port {port} did not start")


def start_seed(sw, coord, ckpt, layout, instance, bandwidth):
    proc = subprocess.Popen([sw, "seed", "--coordinator", coord, "--checkpoint", ckpt, "--layout", layout,
                             "--instance-id", instance, "--bandwidth", str(bandwidth)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = Lines(proc)
    deadline = time.monotonic() + 60
    while lines.first("SEED READY") is None and time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("seed exited: " + lines.text())
        time.sleep(0.05)
    return proc, lines


def start_p2p_run(sw, work):
    """The common start of a P2P scenario: the generated checkpoint and its config, an in-memory
    `shardwire serve` on a free port, and a random tag that names every process of the run."""
    ckpt, config = generated_checkpoint(sw, work)
    port = free_port()
    serve = start_serve(sw, port)
    return ckpt, config, port, f"127.0.0.1:{port}", serve, f"fi{random.randrange(1 << 30)}"


def next_load(load_cmd, tag):
    """The second loader of a P2P scenario (180 s bound), run to its end."""
    return subprocess.run(load_cmd + ["--instance-id", f"{tag}-l2"], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=180)


def ended_load(r, finished, loader, loader_lines):
    """Records a first load's end in r (hang; partial = exit 0 unverified) and returns its output."""
    r.hang = not finished
    loader_lines.thread.join(timeout=5)
    text = loader_lines.text()
    r.partial = loader.returncode == 0 and "verified=byte-for-byte" not in text
    return text


def scenario_p2p(sw, work, kill_what):
    r = Result()
    ckpt, config, port, coord, serve, tag = start_p2p_run(sw, work)
    procs = [serve]
    labels = {serve.pid: "coordinator"}
    try:
        # 64 MB/s per rank: a 350 MB tp=4 load from two instances takes a few seconds.
        seeds = [start_seed(sw, coord, ckpt, "tp=2", f"{tag}-a", 64e6),
                 start_seed(sw, coord, ckpt, "tp=1", f"{tag}-b", 64e6)]
        procs += [p for p, _ in seeds]
        labels.update({seeds[0][0].pid: "seed a", seeds[1][0].pid: "seed b"})
        load_cmd = [sw, "load", "--coordinator", coord, "--config", config, "--layout", "tp=4",
                    "--verify-against", ckpt, "--checkpoint", ckpt]
        loader = subprocess.Popen(load_cmd + ["--instance-id", f"{tag}-l1"], stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
        procs.append(loader)
        labels[loader.pid] = "loader"
        loader_lines = Lines(loader)
        time.sleep(random.uniform(0.3, 2.0))
        t_fault = time.monotonic()
        if kill_what == "source-stop":
            # A seed stopped 1-12 s mid-load: the load completes verified (from the other seed,
            # or from this one once it runs again), and the stopped seed serves again afterwards.
            victim = random.randrange(2)
            stall = random.uniform(1.0, 12.0)
            seeds[victim][0].send_signal(signal.SIGSTOP)
            resume = threading.Timer(stall, seeds[victim][0].send_signal, args=(signal.SIGCONT,))
            resume.start()
            r.note = f"stalled seed {'ab'[victim]} {stall:.1f} s"
            finished = wait(loader, 180)
            r.recovery_s = time.monotonic() - t_fault if finished else None  # the stop to the load's end
            resume.join()
            text = ended_load(r, finished, loader, loader_lines)
            # Its heartbeats (1 s) make it READY again if anything marked it STALE meanwhile.
            time.sleep(3.0)
            second = next_load(load_cmd, tag)
            used = re.search(r" sources=(\S+) ", second.stdout)
            victim_id = f"{tag}-{'ab'[victim]}"
            r.lost = (seeds[victim][0].poll() is not None or used is None or victim_id not in used.group(1)
                      or " disk_bytes=0 " not in second.stdout)
            r.passed = finished and loader.returncode == 0 and not r.partial and second.returncode == 0 and not r.lost
            if not r.passed:
                r.note += (f"; load exit {loader.returncode}: {text[-400:]}; second load exit {second.returncode}: "
                           f"{second.stdout[-400:]}")
        elif kill_what == "loader-stop":
            # A loader stopped 1-12 s mid-load: when it runs again it finishes verified (moves
            # whose deadlines passed meanwhile are re-read), and the seeds stay healthy.
            stall = random.uniform(1.0, 12.0)
            loader.send_signal(signal.SIGSTOP)
            time.sleep(stall)
            loader.send_signal(signal.SIGCONT)
            resumed = time.monotonic()
            r.note = f"stalled the loader {stall:.1f} s"
            finished = wait(loader, 180)
            r.recovery_s = time.monotonic() - resumed if finished else None  # the resume to the load's end
            text = ended_load(r, finished, loader, loader_lines)
            alive = all(p.poll() is None for p, _ in seeds)
            # The loader's own stop is no fault of the seeds: none failed, nothing came from disk.
            blamed = " failed=0 " not in text or " disk_bytes=0 " not in text
            second = next_load(load_cmd, tag)
            r.lost = not alive or blamed or " disk_bytes=0 " not in second.stdout
            r.passed = finished and loader.returncode == 0 and not r.partial and second.returncode == 0 and not r.lost
            if not r.passed:
                r.note += (f"; seeds alive={alive}, blamed={blamed}; load exit {loader.returncode}: {text[-400:]}; "
                           f"second load exit "
                           f"{second.returncode}: {second.stdout[-400:]}")
        elif kill_what == "source":
            victim = random.randrange(2)
            seeds[victim][0].send_signal(signal.SIGKILL)
            r.note = f"killed seed {'ab'[victim]}"
            finished = wait(loader, 180)
            text = ended_load(r, finished, loader, loader_lines)
            r.recovery_s = time.monotonic() - t_fault if finished else None
            r.passed = finished and loader.returncode == 0 and not r.partial
            if not r.passed:
                r.note += f"; load exit {loader.returncode}: {text[-600:]}"
        else:
            loader.send_signal(signal.SIGKILL)
            loader.wait()
            r.note = "killed the loader"
            # The seeds must stay healthy (alive, and serving the next loader).
            alive = all(p.poll() is None for p, _ in seeds)
            second = next_load(load_cmd, tag)
            r.recovery_s = time.monotonic() - t_fault
            # Lost registration: a seed alive but no longer used (the second load fell back to disk).
            r.lost = not alive or " disk_bytes=0 " not in second.stdout
            r.passed = alive and second.returncode == 0 and not r.lost
            if not r.passed:
                r.note += f"; seeds alive={alive}; second load exit {second.returncode}: {second.stdout[-600:]}"
    except subprocess.TimeoutExpired:
        r.hang = True
    finally:
        stop_in_order(reversed(procs), labels, r)
    r.orphans = len(procs_with(tag.encode()))
    if r.orphans:
        r.passed = False
    return r


def stop_in_order(procs, labels, r):
    """SIGTERMs each process in turn and waits up to 10 s for it; one that does not exit is a hang.
    Callers list clients before the service, as an orchestrator would (a seed stopped after the
    coordinator is gone exits too, within its own bounds: scenario p2p-coordinator-gone-stop)."""
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
        if not wait(p, 10):
            r.hang = True
            r.passed = False
            r.note += f"; {labels.get(p.pid, p.pid)} did not exit within 10 s of SIGTERM"


def two_seed_run(sw, work, body):
    """Runs `body(run)` with an in-memory `shardwire serve` and two seeds registered with it (tp=2
    and tp=1, no bandwidth cap) after a random 0-2 s, then stops the seeds and the coordinator
    (`run.serve`, which the body may replace) and counts orphans. `run` holds r (the Result),
    ckpt, config, port, coord, serve, tag and seeds ((process, Lines) pairs)."""
    ckpt, config, port, coord, serve, tag = start_p2p_run(sw, work)
    run = types.SimpleNamespace(r=Result(), sw=sw, ckpt=ckpt, config=config, port=port, coord=coord, serve=serve,
                                tag=tag, seeds=[])
    try:
        run.seeds = [start_seed(sw, coord, ckpt, "tp=2", f"{tag}-a", 0),
                     start_seed(sw, coord, ckpt, "tp=1", f"{tag}-b", 0)]
        time.sleep(random.uniform(0.0, 2.0))
        body(run)
    except subprocess.TimeoutExpired:
        run.r.hang = True
    finally:
        labels = {run.serve.pid: "coordinator", **{p.pid: f"seed {'ab'[i]}" for i, (p, _) in enumerate(run.seeds)}}
        stop_in_order([p for p, _ in reversed(run.seeds)] + [run.serve], labels, run.r)
    run.r.orphans = len(procs_with(tag.encode()))
    if run.r.orphans:
        run.r.passed = False
    return run.r


def coordinator_memory_restart_under_seeds(run):
    r, seeds = run.r, run.seeds
    t_fault = time.monotonic()
    run.serve.send_signal(signal.SIGKILL)
    run.serve.wait()
    time.sleep(0.5)
    run.serve = start_serve(run.sw, run.port)
    r.note = "restarted the in-memory coordinator"
    # Every rank of every seed logs its registration again ("registered again as").
    ranks = 3  # tp=2 + tp=1
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        again = sum(lines.text().count("registered again as") for _, lines in seeds)
        if again >= ranks:
            break
        time.sleep(0.05)
    again = sum(lines.text().count("registered again as") for _, lines in seeds)
    if again >= ranks:
        r.recovery_s = time.monotonic() - t_fault
    alive = all(p.poll() is None for p, _ in seeds)
    load = subprocess.run([run.sw, "load", "--coordinator", run.coord, "--config", run.config, "--layout", "tp=4",
                           "--verify-against", run.ckpt, "--checkpoint", run.ckpt, "--instance-id", f"{run.tag}-l"],
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    # Lost registration: a seed alive but not used (the load fell back to the disk).
    r.lost = again < ranks or " disk_bytes=0 " not in load.stdout
    r.partial = load.returncode == 0 and "verified=byte-for-byte" not in load.stdout
    r.passed = alive and load.returncode == 0 and not r.lost and not r.partial
    r.note += f"; {again} of {ranks} seed ranks registered again"
    if not r.passed:
        r.note += f"; seeds alive={alive}; load exit {load.returncode}: {load.stdout[-600:]}"


def seeds_stopped_with_the_coordinator_gone(run):
    r = run.r
    run.serve.send_signal(signal.SIGKILL)
    run.serve.wait()
    time.sleep(random.uniform(0.0, 2.0))  # heartbeats now fail, each bounded by the source itself
    r.note = "killed the coordinator, then stopped the seeds"
    slowest = 0.0
    for i, (p, _) in enumerate(run.seeds):
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        if not wait(p, 10):
            r.hang = True
            r.note += f"; seed {'ab'[i]} did not exit within 10 s of SIGTERM"
        slowest = max(slowest, time.monotonic() - t0)
    r.recovery_s = slowest
    codes = [p.returncode for p, _ in run.seeds]
    r.passed = not r.hang and all(c == 0 for c in codes)
    r.note += f"; slowest seed exit {slowest:.2f} s, exit codes {codes}"
    if not r.passed:
        r.note += "; " + " | ".join(lines.text()[-300:] for _, lines in run.seeds)


def start_redis(port, data_dir):
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "yes", "--appendfsync", "always", "--dir", data_dir],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return proc
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("redis-server did not start")


def scenario_restart(sw, work, what):
    r = Result()
    redis_port, port = free_port(), free_port()
    data = tempfile.mkdtemp(dir=work)
    in_memory = what in ("coordinator-memory", "coordinator-stop")
    redis = None if in_memory else start_redis(redis_port, data)
    url = None if in_memory else f"redis://127.0.0.1:{redis_port}"
    serve = start_serve(sw, port, url)
    job, proc, lines = start_rl_run(sw, work, ["--coordinator", f"127.0.0.1:{port}"])
    try:
        t_fault = time.monotonic()
        if what in ("coordinator-stop", "redis-stop"):
            # Stopped, not killed: the state survives, and every call in flight meanwhile must
            # outlive the stop (an attempt's deadline may pass: it is sent again).
            victim = serve if what == "coordinator-stop" else redis
            stall = random.uniform(1.0, 12.0)
            victim.send_signal(signal.SIGSTOP)
            time.sleep(stall)
            victim.send_signal(signal.SIGCONT)
            t_fault = time.monotonic()  # the time column: from the resume to the next step
            r.note = f"stalled the {what[:-len('-stop')]} {stall:.1f} s"
        elif what in ("coordinator", "coordinator-memory"):
            serve.send_signal(signal.SIGKILL)
            serve.wait()
            time.sleep(0.5)
            serve = start_serve(sw, port, url)
        else:
            redis.send_signal(signal.SIGKILL)
            redis.wait()
            time.sleep(0.5)
            redis = start_redis(redis_port, data)
        if not r.note:
            r.note = f"restarted the {what}"
        t_back = time.monotonic()
        if what == "coordinator-memory":
            ran_on = went_on_or_failed_typed(proc, lines, t_back, r)
        else:
            ran_on = run_on_then_interrupt(proc, lines, t_back, r)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        lines.thread.join(timeout=5)
        check_rl_output(r, lines)
        if r.ended_at is not None:
            r.recovery_s = r.ended_at - t_fault  # the demo ended by itself with a typed error
        else:
            seen = lines.first("step", after=t_fault)
            r.recovery_s = seen - t_fault if seen else None
        r.orphans = len(procs_with(b"--job\0" + job.encode() + b"\0"))
        r.passed = ran_on and not r.partial and r.orphans == 0
        if not r.passed:
            r.note += f"; exit {proc.returncode}: {lines.text()[-600:]}"
    finally:
        for p in (serve, redis):
            if p is not None:
                p.send_signal(signal.SIGTERM)
                wait(p, 10)
    return r


SCENARIOS = {
    "rl-engine-kill": lambda sw, w: scenario_rl_engine(sw, w, stop=False),
    "rl-engine-stop": lambda sw, w: scenario_rl_engine(sw, w, stop=True),
    "rl-trainer-stop": lambda sw, w: scenario_rl_engine(sw, w, stop=True, role="trainer"),
    "rl-trainer-kill": scenario_rl_trainer_kill,
    "p2p-source-kill": lambda sw, w: scenario_p2p(sw, w, "source"),
    "p2p-loader-kill": lambda sw, w: scenario_p2p(sw, w, "loader"),
    "p2p-source-stop": lambda sw, w: scenario_p2p(sw, w, "source-stop"),
    "p2p-loader-stop": lambda sw, w: scenario_p2p(sw, w, "loader-stop"),
    "coordinator-restart": lambda sw, w: scenario_restart(sw, w, "coordinator"),
    "coordinator-memory-restart": lambda sw, w: scenario_restart(sw, w, "coordinator-memory"),
    "p2p-coordinator-memory-restart": lambda sw, w: two_seed_run(sw, w, coordinator_memory_restart_under_seeds),
    "p2p-coordinator-gone-stop": lambda sw, w: two_seed_run(sw, w, seeds_stopped_with_the_coordinator_gone),
    "redis-restart": lambda sw, w: scenario_restart(sw, w, "redis"),
    "coordinator-stop": lambda sw, w: scenario_restart(sw, w, "coordinator-stop"),
    "redis-stop": lambda sw, w: scenario_restart(sw, w, "redis-stop"),
}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--scenario", action="append", choices=sorted(SCENARIOS))
    p.add_argument("--shardwire", default=os.path.join(ROOT, "build", "src", "cli", "shardwire"))
    p.add_argument("--seed", type=int, default=None, help="random seed (default: time)")
    p.add_argument("--verbose", action="store_true")
    a = p.parse_args()
    seed = a.seed if a.seed is not None else int(time.time())
    random.seed(seed)
    print(f"fault injection: {a.runs} run(s) per scenario, random seed {seed}")
    ok = True
    with tempfile.TemporaryDirectory(prefix="shardwire-fi-") as work:
        print(f"| scenario | runs | passed | hangs | partial commits | lost registrations | orphans | "
              f"detect/recover median s | max s |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
        for name in a.scenario or list(SCENARIOS):
            results = []
            for i in range(a.runs):
                r = SCENARIOS[name](a.shardwire, work)
                results.append(r)
                if a.verbose or not r.passed:
                    print(f"  {name} run {i + 1}: {'pass' if r.passed else 'FAIL'} ({r.note})", file=sys.stderr)
            times = [r.recovery_s for r in results if r.recovery_s is not None]
            med = f"{statistics.median(times):.2f}" if times else "-"
            mx = f"{max(times):.2f}" if times else "-"
            passed = sum(r.passed for r in results)
            row = (len(results), passed, sum(r.hang for r in results), sum(r.partial for r in results),
                   sum(r.lost for r in results), sum(r.orphans for r in results))
            print(f"| {name} | {row[0]} | {row[1]} | {row[2]} | {row[3]} | {row[4]} | {row[5]} | {med} | {mx} |",
                  flush=True)
            ok = ok and passed == len(results) and not any(row[2:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
