"""RL weight sync from Python: trainer ranks push their parameters into inference engines' weights.

A rank's shards live in ONE contiguous buffer laid out by its Layout (every shard a dense
row-major box at a byte offset; FSDP's FlatParameter and vLLM's fused weights are the same idea).
``adopt_parameters`` moves a rank's parameter tensors into such a buffer once (one copy at setup)
and re-points each tensor at its slot, so training (or serving) then reads and writes the buffer
in place; the publisher and subscriber register that buffer with the transport without any
staging copy. Every push after that moves bytes straight from the trainer's parameters into the
engines' parameters.

Protocol of a version v (C++ weight_sync.h): subscriber ``begin_update(v)`` (the engine stops
reading its weights), publisher ``push(v)``, subscriber ``wait_for_update(v)`` commits v only
when every byte arrived; ``committed_version`` is the version the engine serves.
"""
from __future__ import annotations

import ctypes
from typing import Any, Dict, Mapping, Optional

import torch

from . import _shardwire
from ._args import INT32_MAX, UINT32_MAX, check_int, check_rank, check_text, check_version
from ._process_guard import ObjectGuard
from .errors import FailedPreconditionError, InvalidArgumentError
from .tensors import RegisteredMemory, as_tensors, check_shard_tensors, shard_buffer_address, shard_views


def allocate_shard_buffer(layout, rank: int):
    """A zeroed CPU uint8 buffer of ``layout.buffer_bytes(rank)`` bytes and the views of every
    shard of ``rank`` into it: ``(buffer, {name: tensor})``. The buffer's storage (numpy-owned)
    cannot be resized or freed in place (``resize_`` raises RuntimeError), so memory registered
    with the transport never moves under it."""
    import numpy as np

    rank = check_rank("rank", rank)
    buffer = torch.from_numpy(np.zeros(max(layout.buffer_bytes(rank), 1), dtype=np.uint8))
    return buffer, shard_views(buffer, layout, rank)


def _check_parameters(params: Mapping[str, torch.Tensor], layout, rank: int) -> None:
    """Raises InvalidArgumentError naming the first tensor that does not fit rank's slots
    (see shardwire.tensors.check_shard_tensors)."""
    check_shard_tensors(params, layout, rank)


def adopt_parameters(params: Mapping[str, torch.Tensor], layout, rank: int) -> torch.Tensor:
    """Moves ``params`` (name -> tensor, exactly the shards rank ``rank`` of ``layout`` holds,
    with their dtypes and shard shapes) into one shard buffer and re-points every tensor at
    its slot (``t.data = view``), so nn.Parameters stay the same objects. One copy, here;
    none afterwards. Returns the buffer (CPU uint8). Raises InvalidArgumentError naming the
    tensor before anything is changed."""
    rank = check_rank("rank", rank)
    _check_parameters(params, layout, rank)
    buffer, views = allocate_shard_buffer(layout, rank)
    with torch.no_grad():
        for name, t in params.items():
            views[name].copy_(t)
            t.data = views[name]
    return buffer


class _Endpoint:
    """Shared construction of publisher and subscriber, and their close()."""

    _kept_properties: tuple = ()  # properties of the C++ object answered after close()

    def __init__(self, cls, coordinator, trainer_layout, engine_layout, layout, rank: int,
                 params: Optional[Mapping[str, torch.Tensor]], job: str, timeout_s: float, writable: bool,
                 **flags):
        self._guard = ObjectGuard(self)  # forked children and a second thread are refused
        rank, job = check_rank("rank", rank), check_text("job", job)
        for name, value in (("trainer_layout", trainer_layout), ("engine_layout", engine_layout)):
            if not isinstance(value, _shardwire.Layout):
                raise InvalidArgumentError(f"invalid argument: {name} must be a shardwire.Layout "
                                           f"(shardwire.Layout.from_string(model, 'fsdp=8')), got {type(value).__name__}")
        for name in ("max_concurrency", "engine_ranks"):
            if name in flags:
                flags[name] = check_int(name, flags[name], -INT32_MAX - 1, INT32_MAX)
        for name in ("convert_threads", "lanes"):
            if name in flags:
                flags[name] = check_int(name, flags[name], 0, UINT32_MAX)
        nbytes = layout.buffer_bytes(rank)
        self._registered: Optional[RegisteredMemory] = None
        if params is None:
            # Shardwire allocates the buffer as a transport arena (BufferMemory::kAuto: shared
            # memory that same-host trainers map and stream into, or private huge pages they write
            # by kernel copy, whichever this host does faster); the tensors are views of it and
            # keep this object alive (the arena is freed with it, after the last view).
            self._impl = cls(coordinator, trainer_layout, engine_layout, rank, 0, 0, job, timeout_s, **flags)
            self._guard.keep(self._impl)  # the views hold it too
            raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(self._impl.buffer_address)
            raw._shardwire_owner = self._impl  # every view keeps the arena's owner alive
            self.buffer = torch.frombuffer(raw, dtype=torch.uint8)
            self.tensors = shard_views(self.buffer, layout, rank)
        else:
            params = as_tensors(params, writable)  # numpy arrays: torch views, no copy
            address = shard_buffer_address(params, layout, rank)  # checks every tensor first
            self.buffer, self.tensors = None, dict(params)
            # The registered memory is the tensors' storage: kept alive by detached aliases even
            # if the caller re-points a parameter (p.data = ...) while peers still write into it.
            self._registered = RegisteredMemory(self.tensors)
            self._impl = cls(coordinator, trainer_layout, engine_layout, rank, address, nbytes, job, timeout_s,
                             **flags)
            self._guard.keep(self._impl)

    def _open(self, what: str):
        """The C++ object; raises FailedPreconditionError naming ``what`` after close()."""
        if self._impl is None:
            raise FailedPreconditionError(f"failed precondition: {type(self).__name__}.{what} after close()")
        return self._impl

    @property
    def closed(self) -> bool:
        """True once close() ran."""
        return self._impl is None

    def close(self) -> None:
        """Stops taking part in the job and lets go of the transport. Idempotent. A subscriber
        that joined (dynamic membership) leaves first (best effort: the trainers skip it from
        their next push), and a relay parent closed between begin_update and wait_for_update
        tells its children it will not forward that version; a publisher's engines see no more pushes from it. With a fixed
        membership (dynamic_membership=False) a closed subscriber whose views live on is still
        counted by the trainers: each push waits engine_timeout_s for it and lists it in
        ``missed``. With ``params``
        the transport agent is destroyed now: the memory is deregistered, the connections and
        threads end, and the tensors are the caller's again. With params=None ``tensors`` is
        emptied; views taken from it before stay readable (the engine may keep serving them)
        and hold the arena, and with it the agent, until the last of them is gone. Every
        other call afterwards raises FailedPreconditionError; the properties keep their last
        values. Blocks (GIL released) while a dynamic member leaves: a few coordinator calls,
        each bounded by the client's call_timeout_s and unavailable_timeout_s. Raises FailedPreconditionError while another thread is in a call on this
        object. In a process forked from the one that made it: does nothing (the object is
        the parent's; shardwire/_process_guard.py)."""
        if self._guard.inherited() or self._impl is None:
            return
        with self._guard.use("close"):
            impl = self._impl
            self._last = {name: getattr(impl, name) for name in self._kept_properties}
            impl.close()
            self._impl = None
            self.tensors, self.buffer = {}, None
            del impl  # with params (no view holds it): the agent is destroyed here

    def __enter__(self):
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def _property(self, name: str):
        """A property of the C++ object, or its value at close()."""
        impl = self._impl  # once: a close() from another thread may clear it meanwhile
        return self._last[name] if impl is None else getattr(impl, name)

    def _check_registered(self, what: str) -> None:
        """Raises FailedPreconditionError when the caller's registered storage was resized or
        freed in place since construction (see shardwire.tensors.RegisteredMemory)."""
        if self._registered is not None:
            self._registered.check(what)


class WeightPublisher(_Endpoint):
    """One trainer rank. ``params``: the rank's parameter tensors (name -> tensor, or numpy arrays
    shared without a copy) in one shard buffer (see adopt_parameters), registered in place;
    None lets Shardwire allocate the buffer as a transport arena whose views are ``self.tensors`` (faster on this UCX build: arenas take
    true one-sided writes, registered caller memory is emulated; docs/transport.md). Those views
    keep the publisher alive, so they never point at freed memory; with ``params`` the storage
    they have now is what is registered, and it is kept alive by the publisher even if a
    parameter is re-pointed (``p.data = ...``): write new weights into that storage.
    ``coordinator``: a CoordinatorClient. Times in seconds.
    Raises InvalidArgumentError (tensors), LayoutMismatchError (layouts), TransportError.
    Thread-safety: one thread at a time: a call while another thread is in one raises
    FailedPreconditionError at once. Not usable in a process forked from the one that made it
    (FailedPreconditionError; shardwire/_process_guard.py)."""

    _kept_properties = ("bytes_per_push",)  # answered after close() (_Endpoint._property)

    def __init__(self, coordinator, trainer_layout, engine_layout, rank: int,
                 params: Optional[Mapping[str, torch.Tensor]] = None, job: str = "shardwire",
                 timeout_s: float = 120.0, engine_timeout_s: float = 10.0, dynamic_membership: bool = False,
                 verify_digests: bool = False, max_concurrency: int = 4, relay_broadcasts: bool = False,
                 convert_into_mapped: bool = True, convert_threads: int = 2, lanes: int = 0,
                 copy_into_mapped: bool = True):
        """``engine_timeout_s``: seconds one engine rank may take (READY, its transfers) before it
        misses a version. ``dynamic_membership``: engines join and leave through the coordinator
        (WeightSubscriber.join); each push writes to the members of the job. ``verify_digests``:
        each DONE carries the XXH3 digest of the bytes sent, engines commit only if what landed
        matches. ``max_concurrency``: K of the plan's rounds; in each round no trainer rank writes
        more than K engine ranks and no engine rank is written by more than K trainer ranks, and
        the push waits between rounds (WeightSyncOptions::max_concurrency). ``relay_broadcasts``:
        the trainers write one replica of each engine rank's shards and each replica forwards
        them to the next (a K-ary tree) once it committed (WeightSyncOptions::relay_broadcasts).
        Publishers and subscribers of one job must agree on all four. ``convert_into_mapped`` and
        ``convert_threads`` (this publisher only; used when the engines hold another dtype, e.g. FP8):
        quantise straight into engine buffers the transport maps into this process (same-host
        arenas), with that many threads; False forces the staging ring
        (WeightSyncOptions::convert_into_mapped, convert_threads). ``lanes``: this rank's transport
        lanes, the threads that copy its pushes into same-host engines (0: the default, 2); where
        several trainer ranks share a host's cores, cores / ranks avoids more copy threads than
        cores (WeightSyncOptions::lanes). ``copy_into_mapped`` (this publisher only): the pushing
        thread and lanes - 1 helpers copy the moved bytes into engine buffers the transport maps
        into this process, each chunk into every replica that takes it while it is in cache (the
        source is read once, not once per replica); False leaves every copy to the lanes
        (WeightSyncOptions::copy_into_mapped)."""
        super().__init__(_shardwire._WeightPublisher, coordinator, trainer_layout, engine_layout, trainer_layout,
                         rank, params, job, timeout_s, False, engine_timeout_s=engine_timeout_s,
                         dynamic_membership=dynamic_membership, verify_digests=verify_digests,
                         max_concurrency=max_concurrency, relay_broadcasts=relay_broadcasts,
                         convert_into_mapped=convert_into_mapped, convert_threads=convert_threads, lanes=lanes,
                         copy_into_mapped=copy_into_mapped)

    def wait_for_engines(self, engine_ranks: int, timeout_s: float) -> int:
        """Dynamic membership: waits (GIL released) until at least ``engine_ranks`` engine ranks
        asked to join; returns how many did. Raises TimedOutError saying how many asked."""
        engine_ranks = check_int("engine_ranks", engine_ranks, -INT32_MAX - 1, INT32_MAX)
        with self._guard.use("wait_for_engines"):
            return self._open("wait_for_engines").wait_for_engines(engine_ranks, timeout_s)

    def connect(self) -> None:
        """Prepares one transfer per destination engine rank (waits up to timeout_s for them; GIL
        released; Ctrl-C raises KeyboardInterrupt within ~0.1 s and connect() may be called again).
        Raises TimedOutError naming the missing engine rank."""
        with self._guard.use("connect"):
            impl = self._open("connect")
            self._check_registered("connect")
            impl.connect()

    def push(self, version: int) -> Dict[str, Any]:
        """Pushes weight version ``version`` (GIL released) to every destination engine rank that
        is ready within the engine timeout (``engine_timeout_s``), and returns {version, bytes (written, bytes),
        descriptors, ready_wait_s, transfer_s (seconds), converted_bytes, convert_s,
        staging_peak_bytes (conversion in the push, when the engines hold another dtype),
        mapped_bytes, convert_cpu_s (bytes converted straight into mapped engine buffers, and the
        conversion threads' CPU seconds), copied_bytes, copy_read_bytes, copy_cpu_s (moved bytes the
        pushing threads copied into mapped engine buffers, every replica counted, the source bytes
        they read for them, each once, and their CPU seconds), rounds, round_wait_s (the plan's rounds this rank wrote in, and its seconds waiting for
        other trainer ranks' earlier rounds), relayed (engine ranks their relay parent forwards
        this version to), hold_s, held_for (dynamic membership, trainer rank 0: seconds this push waited
        for engine processes catching up, and the engine ranks it waited for), missed, absent}. ``absent`` (dynamic membership) lists engine ranks that are not members
        for this version (not misses). ``missed`` lists the engine ranks this push could not deliver the version to, each
        {engine_rank, code (error code name), reason}: a dead, silent or failing engine rank
        misses the version while the others commit it (fault isolation). An engine rank that dies
        after its bytes and DONE were delivered, before it committed, is not in ``missed`` (the push
        does not wait for commits): the next push lists it. Raises
        PeerDisconnectedError when no engine rank received it; AlreadyExistsError when another
        publisher took this trainer rank; FailedPreconditionError when an in-memory coordinator lost
        the job (restarted); UnavailableError when the coordinator cannot be reached within the
        client's unavailable_timeout_s (every push asks it which engine ranks are members);
        CorruptDataError when a converting push meets a NaN or an infinity (FP8). A push that fails
        after the engine ranks' READY (a conversion error, another trainer rank failing, Ctrl-C
        during the writes) tells each of them so, with its error: their wait_for_update(version)
        raises it at once instead of at their timeout. Ctrl-C raises KeyboardInterrupt
        within ~0.1 s: while waiting for READY nothing was written and push(version) may be called
        again; during the writes the unfinished ones are cancelled and no engine commits
        ``version`` (they need begin_update(version) again). A push shorter than the ~0.1 s
        between two looks at the signal may complete first: KeyboardInterrupt is then raised
        after it, the engines commit ``version``, and push(version) again raises
        FailedPreconditionError (the last pushed version): push the next one. Raises FailedPreconditionError, with
        nothing moved, when ``params``' storage was resized or freed in place since construction."""
        version = check_version("version", version)
        with self._guard.use(f"push({version})"):
            impl = self._open(f"push({version})")
            self._check_registered(f"push({version})")
            return impl.push(version)

    @property
    def bytes_per_push(self) -> int:
        """Bytes this rank writes per push."""
        return self._property("bytes_per_push")


class WeightSubscriber(_Endpoint):
    """One inference-engine rank, receiving into ``params`` (its weights, in one shard buffer;
    see adopt_parameters) in place, or, with params=None, into a transport arena whose views
    (``self.tensors``) the engine then uses as its weights; each view keeps the subscriber (and
    so the arena) alive. With ``params`` their current storage is registered and kept alive by
    the subscriber even if a parameter is re-pointed (``p.data = ...``), which would make that
    parameter stop receiving updates. Thread-safety: one thread at a time per object (as the
    C++ classes): a call while another thread is in one raises FailedPreconditionError at once.
    Not usable in a process forked from the one that made it (FailedPreconditionError)."""

    _kept_properties = ("incarnation", "committed_version", "holds_committed_version")

    def __init__(self, coordinator, trainer_layout, engine_layout, rank: int,
                 params: Optional[Mapping[str, torch.Tensor]] = None, job: str = "shardwire",
                 timeout_s: float = 120.0, dynamic_membership: bool = False, verify_digests: bool = False,
                 max_concurrency: int = 4, relay_broadcasts: bool = False, engine_timeout_s: float = 10.0):
        """``dynamic_membership``, ``verify_digests``, ``max_concurrency`` and ``relay_broadcasts``: as
        WeightPublisher (must agree). ``engine_timeout_s``: with ``relay_broadcasts``, seconds a relay
        parent waits for each child it forwards a version to (its READY, its transfers) before that
        child misses the version."""
        super().__init__(_shardwire._WeightSubscriber, coordinator, trainer_layout, engine_layout, engine_layout,
                         rank, params, job, timeout_s, True, engine_timeout_s=engine_timeout_s,
                         dynamic_membership=dynamic_membership,
                         verify_digests=verify_digests, max_concurrency=max_concurrency,
                         relay_broadcasts=relay_broadcasts)

    def join(self, timeout_s: float = -1.0) -> int:
        """Dynamic membership: asks the trainers to write to this engine process from their next
        push on and waits (GIL released; timeout_s < 0: the constructor's) until a push admits
        it. Returns that push's version: call begin_update with it. Call after connect() and
        after every failed wait_for_update (a missed version). Raises TimedOutError."""
        with self._guard.use("join"):
            return self._open("join").join(timeout_s)

    def leave(self) -> None:
        """Dynamic membership: the trainers stop writing to this rank from their next push."""
        with self._guard.use("leave"):
            self._open("leave").leave()

    def adopt_version(self, version: int) -> None:
        """Declares that the weights already hold ``version`` (e.g. loaded from a live engine
        with shardwire.ModelLoader after a restart). Raises FailedPreconditionError when not
        above committed_version."""
        version = check_version("version", version)
        with self._guard.use(f"adopt_version({version})"):
            self._open(f"adopt_version({version})").adopt_version(version)

    @property
    def incarnation(self) -> int:
        """This process's incarnation of its rank (dynamic membership; 0 otherwise)."""
        return self._property("incarnation")

    def connect(self) -> None:
        """Looks up every trainer rank this rank receives from (waits up to timeout_s; GIL released;
        Ctrl-C raises KeyboardInterrupt within ~0.1 s and connect() may be called again)."""
        with self._guard.use("connect"):
            impl = self._open("connect")
            self._check_registered("connect")
            impl.connect()

    def begin_update(self, version: int) -> None:
        """Declares the engine paused for ``version``: trainers may now write its weights.
        Raises InvalidArgumentError before connect() or when ``version`` is not newer than
        committed_version. A trainer that cannot be reached does not raise here (the others
        write): the next wait_for_update raises PeerDisconnectedError naming it. Raises
        FailedPreconditionError, before any trainer is told, when ``params``' storage was resized
        or freed in place since construction."""
        version = check_version("version", version)
        with self._guard.use(f"begin_update({version})"):
            impl = self._open(f"begin_update({version})")
            self._check_registered(f"begin_update({version})")
            impl.begin_update(version)

    def wait_for_update(self, version: int, timeout_s: Optional[float] = None) -> Dict[str, Any]:
        """Blocks (GIL released) until every source delivered ``version``, then commits it.
        ``timeout_s`` (seconds, >= 0, inf allowed; 0 takes only what already arrived): bounds
        this call's waits in place of the constructor's timeout_s (None: that one); a wait that
        timed out may be called again for the same version (what arrived is kept), except on a
        relay parent that gave the version up (below); one that a trainer's "gave up on v"
        ended ends so again at once: begin the version again first.
        Returns {version, bytes, sources, wait_s (seconds), relayed_from (relay_broadcasts: the
        engine rank that forwarded it, -1: the trainers), relayed_to (the children this rank
        forwarded it to, after committing), relay_s}. Raises TimedOutError naming missing sources,
        PeerDisconnectedError naming a trainer process that died; when a trainer's push of
        ``version`` failed after this rank began it, that push's error at once, naming the trainer
        (e.g. CorruptDataError for a NaN its FP8 conversion met, FailedPreconditionError for a
        trainer interrupted by Ctrl-C): begin the same version again (the trainers' retry writes
        it) or a later one; a relay parent that told its children takes a later one, and a
        dynamic member calls join() first. Ctrl-C raises KeyboardInterrupt
        within ~0.1 s with nothing committed; wait_for_update(version) may then be called again
        (DONE messages that arrived are kept), except on a relay parent that told its children it
        will not forward ``version``: FailedPreconditionError, begin a later version. A relay
        parent forwards ``version`` to its children after committing it (bounded by
        engine_timeout_s): a Ctrl-C then cuts those forwards (the children miss ``version``) and
        is raised after the commit; ``committed_version`` tells which happened.
        Raises FailedPreconditionError, nothing committed, when ``params``' storage was resized
        or freed in place since construction."""
        version = check_version("version", version)
        bound_s = -1.0  # None: the constructor's
        if timeout_s is not None:
            try:  # numbers of any kind (numpy floats and ints, 0-d tensors), never bools or text
                bound_s = float(timeout_s) if not isinstance(timeout_s, (bool, str, bytes)) else float("nan")
            except (TypeError, ValueError, OverflowError, RuntimeError):  # RuntimeError: a tensor of many elements
                bound_s = float("nan")
            if not bound_s >= 0:
                raise InvalidArgumentError(f"invalid argument: wait_for_update({version}): timeout_s must be a number "
                                           f"of seconds >= 0 (inf: no bound) or None, got {timeout_s!r}")
        with self._guard.use(f"wait_for_update({version})"):
            impl = self._open(f"wait_for_update({version})")
            self._check_registered(f"wait_for_update({version})")
            return impl.wait_for_update(version, bound_s)

    @property
    def committed_version(self) -> int:
        """The version the engine's weights hold completely (0 before the first); label
        generated tokens with it, unless holds_committed_version is False."""
        return self._property("committed_version")

    @property
    def holds_committed_version(self) -> bool:
        """Whether the weights hold exactly committed_version. Single-buffered: False from
        begin_update (the trainers write the weights it serves) until a version commits
        (wait_for_update or adopt_version), so also after a failed or interrupted
        wait_for_update: do not serve, or do not label tokens with committed_version, until
        then. (The C++ WeightSubscriber's double-buffered mode, WeightSyncOptions::double_buffered,
        keeps it True; this Python class is single-buffered.)"""
        return self._property("holds_committed_version")
