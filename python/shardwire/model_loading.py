"""P2P model loading from Python: serve a model's shards, or load them from the instances serving it.

A serving instance runs one :class:`ModelSource` per rank: it copies the rank's shards (a dict
of torch tensors, or read from a checkpoint) into a transport arena, registers that arena as a
weight source with the coordinator (with a heartbeat lease) and serves one-sided READs of it
until closed. A new instance runs one :class:`ModelLoader` per rank: ``load()`` lists the READY
sources of the same model identity (tensor list + revision), reads its layout's shards from
them whatever their tensor-parallel layout, verifies every move by digest, re-reads from other
sources when one fails, falls back to the checkpoint when given, and commits only when every
byte is verified. ``become_source()`` then serves the loaded shards to the next instance.
Protocol and failure handling: docs/p2p_loading.md; C++ API: include/shardwire/model_loading.h.

Layouts are layout strings (``"tp=2"``, as the CLI's ``shardwire seed/load --layout``).
Tensors are CPU torch tensors; shard shapes and dtypes are those of ``Layout.shards(rank)``
(FP8 shards are torch.uint8). Times in seconds, sizes in bytes.
"""
from __future__ import annotations

import ctypes
import os
from typing import Any, Dict, Mapping, Optional

import torch

from . import _shardwire
from ._args import check_rank, check_text
from ._process_guard import ObjectGuard
from .errors import InvalidArgumentError
from .tensors import RegisteredMemory, as_tensors, check_shard_tensors, shard_buffer_address, shard_views


class _MemoryOwner:
    """What keeps a Shardwire buffer alive: the binding object that holds it now (a loader's
    arena moves into the source it becomes, become_source re-points ``impl``), and, when the
    buffer is the caller's memory (a loader with ``params``), that memory (``storage``)."""

    def __init__(self, impl, storage=None) -> None:
        self.impl = impl
        self.storage = storage


def _views(address: int, nbytes: int, layout, rank: int, owner) -> Dict[str, torch.Tensor]:
    """Tensor views of the ``nbytes`` at ``address``; every view (and any view of a view) keeps
    ``owner`` alive through the buffer object torch.frombuffer holds, so the memory is not freed
    while a tensor still points into it."""
    raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(address)
    raw._shardwire_owner = owner
    return shard_views(torch.frombuffer(raw, dtype=torch.uint8), layout, rank)


class ModelSource:
    """One rank of a serving instance, registered as a weight source while it lives.

    ``coordinator``: a CoordinatorClient (kept alive by the source). ``model``: a shardwire.Model.
    ``layout``: the instance's layout string; ``rank``: this rank in it. Exactly one of
    ``params`` (name -> CPU torch tensor or numpy array: exactly the shards ``rank`` holds, with
    their dtypes and shard shapes, copied once into the served arena) and ``checkpoint`` (path of a
    safetensors file, index or directory; its shards are read straight into the arena).
    ``revision``: the content version served (e.g. a hub commit or a training step); two
    instances match only when model and revision are equal. Default for a checkpoint: the
    xxh3 digest of its tensors (CheckpointRevision); required with ``params``.
    ``instance_id``: shared by every rank of the instance (default ``"py-<pid>"``).
    ``heartbeat_interval_s``: seconds between lease renewals (keep it well below the
    coordinator's stale_after_s; each renewal gives up after max(2 x interval, 1 s) when the
    coordinator does not answer). ``bandwidth_bytes_per_s``: cap per rank (0: none).
    ``shutdown_timeout_s``: seconds close() spends at most deregistering (finite, >= 0; 0 skips
    it; an unreachable coordinator leaves the record to its lease, STALE after stale_after_s).
    close() first waits for a lease renewal in flight, so with a coordinator that does not
    answer it returns within shutdown_timeout_s plus one renewal bound (max(2 x
    heartbeat_interval_s, 1 s)): about 2 s with shutdown_timeout_s=0, 4 s by default;
    also the bound of the deregistration after a registration that failed as unavailable or
    timed out (the coordinator may have stored it before its reply was lost).

    ``tensors`` are views (no copy) of the served arena; each keeps the arena alive (also after
    close()), so it never points at freed memory; writing them makes digest checks report
    those bytes as corrupt (readers re-read elsewhere). Because the views keep it alive,
    dropping the source (``del source``) does not stop it while a view exists: it stays
    registered and serving; call close() (or use ``with``) to stop serving.

    Raises InvalidArgumentError (tensors, layout string, rank, missing revision; before
    anything is registered), NotFoundError / CorruptDataError / LayoutMismatchError (checkpoint),
    UnavailableError / UnauthenticatedError (coordinator), TransportError.
    Thread-safety: the source serves from two threads of its own; call close() from one thread."""

    def __init__(self, coordinator, model, layout: str, rank: int = 0, *,
                 params: Optional[Mapping[str, torch.Tensor]] = None, checkpoint: Optional[str] = None,
                 revision: str = "", instance_id: str = "", heartbeat_interval_s: float = 1.0,
                 bandwidth_bytes_per_s: float = 0.0, shutdown_timeout_s: float = 2.0, _impl=None, _params=None):
        self._guard = ObjectGuard(self)  # forked children and a second thread are refused
        if _impl is not None:  # from ModelLoader.become_source
            self._impl, self.layout, self.rank = _impl, layout, rank
        else:
            if (params is None) == (checkpoint is None):
                raise InvalidArgumentError("invalid argument: ModelSource takes exactly one of params= and "
                                           "checkpoint=")
            rank, layout = check_rank("rank", rank), check_text("layout", layout)
            instance_id = check_text("instance_id", instance_id or "")
            revision = check_text("revision", revision or "")
            if checkpoint is not None:
                checkpoint = check_text("checkpoint", checkpoint)
                if not checkpoint:  # "" would be taken for "serve params" below and fail on the revision
                    raise InvalidArgumentError("invalid argument: ModelSource checkpoint= is empty (give the "
                                               "checkpoint directory, or params=)")
            self.layout = _shardwire.Layout.from_string(model, layout)
            self.rank = rank
            if not 0 <= rank < self.layout.world_size:
                raise InvalidArgumentError(f"invalid argument: rank {rank} outside layout {layout!r} of "
                                           f"{self.layout.world_size} ranks")
            copies = []
            if params is not None:
                params = as_tensors(params)
                check_shard_tensors(params, self.layout, rank)
                copies = [(params[s["name"]].data_ptr(), s["byte_offset"], s["nbytes"])
                          for s in self.layout.shards(rank) if s["nbytes"] > 0]
            self._impl = _shardwire._ModelSource(coordinator, model, layout, rank,
                                                 instance_id or f"py-{os.getpid()}", revision, checkpoint or "",
                                                 copies, heartbeat_interval_s, bandwidth_bytes_per_s,
                                                 shutdown_timeout_s)
        self._guard.keep(self._impl)  # the views hold it too, and may outlive this object
        # A loader's source serving the caller's memory in place (``_params``): the views keep
        # that memory alive too, not only the source, which does not own it.
        self.tensors: Dict[str, torch.Tensor] = _views(self._impl.buffer_address, self._impl.buffer_bytes,
                                                       self.layout, self.rank, _MemoryOwner(self._impl, _params))
        self._params = _params

    @property
    def source_id(self) -> str:
        """The coordinator's id of this source."""
        return self._impl.source_id

    @property
    def identity(self) -> str:
        """The model identity served ("mi1-" + 32 hex digits: tensor list + revision)."""
        return self._impl.identity

    @property
    def revision(self) -> str:
        return self._impl.revision

    @property
    def digests_served(self) -> int:
        """Digest requests answered so far (one per move a loader read from this rank)."""
        return self._impl.digests_served

    @property
    def last_mark(self) -> Optional[Dict[str, str]]:
        """What the last heartbeat that found a loader's mark on this source found, or None while
        none has: ``{"state": "STALE" | "READY", "stale_reason": the loader's reason}``. "STALE":
        the mark holds (this source reported CORRUPT to a loader, its bytes differing from its
        committed content; loaders skip it for the coordinator's mark_hold_s); "READY": that heartbeat cleared it, or a later one found
        the hold over. Each new mark is also logged as a warning."""
        return self._impl.last_mark

    @property
    def marks_seen(self) -> int:
        """Heartbeats that found a loader's mark (a held mark counts at every heartbeat it holds)."""
        return self._impl.marks_seen

    @property
    def closed(self) -> bool:
        """True once close() ran (no longer registered or serving)."""
        return self._impl.closed

    def close(self) -> None:
        """Deregisters (best effort) and stops serving. Idempotent. ``tensors`` is emptied; views
        taken from it before stay readable: the buffer is freed only once neither this object nor
        any view of it is left. Blocks (GIL released) up to shutdown_timeout_s plus one lease
        renewal bound when the coordinator does not answer (see the class)."""
        if self._guard.inherited():
            return  # a forked child's copy: the source serves on in the parent (_process_guard.py)
        with self._guard.use("close"):
            self.tensors = {}
            self._impl.close()

    def __enter__(self) -> "ModelSource":
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()


class ModelLoader:
    """One rank of a new instance, loading its shards from the instances that serve the model.

    ``coordinator``: a CoordinatorClient; ``model``: a shardwire.Model (the identity's tensor
    list); ``layout``: the new instance's layout string; ``rank``: this rank. ``params``: the
    engine's own parameter tensors (name -> CPU tensor or numpy array, shared without a copy;
    exactly the rank's shards, checked here before anything is created). When they live in one shard buffer at their slots (see
    shardwire.adopt_parameters / allocate_shard_buffer) the load lands in them in place, no
    copy (``in_place`` is True); otherwise ``load()`` copies the verified shards into them (one
    copy out of the loader's arena). None: ``tensors`` are views of the arena (no copy); each keeps
    the arena alive, in the loader or in the source it becomes. The memory registered or
    copied into is the storage ``params`` have now: it is kept alive even if a parameter is
    re-pointed later (``p.data = ...``), and a source it becomes keeps it too. ``revision``: ''
    takes the one revision served; ``checkpoint``: path for the disk fallback ('' = none; checked against the
    content the sources advertise, and refused with FailedPreconditionError when they advertise none and
    ``revision`` was not named, since nothing then ties it to the revision served). ``stall_timeout_s``: seconds
    without progress before a source counts as dead; ``load_timeout_s``: bound of a whole load.
    ``instance_id``: shared by every rank of the new instance (default ``"py-<pid>-loader"``, not a
    ModelSource's default, so a seed in the same process is loaded from); sources registered under
    the loader's own instance_id are never loaded from (an instance does not load from itself; a
    NotFoundError of load() names them).

    Raises InvalidArgumentError (tensors, layout, rank) at construction; see load().
    Thread-safety: one thread at a time."""

    def __init__(self, coordinator, model, layout: str, rank: int = 0, *,
                 params: Optional[Mapping[str, torch.Tensor]] = None, instance_id: str = "", revision: str = "",
                 checkpoint: str = "", stall_timeout_s: float = 3.0, load_timeout_s: float = 600.0):
        self._guard = ObjectGuard(self)  # forked children and a second thread are refused
        rank, layout = check_rank("rank", rank), check_text("layout", layout)
        instance_id = check_text("instance_id", instance_id or "")
        revision = check_text("revision", revision or "")
        checkpoint = check_text("checkpoint", checkpoint or "")
        self.layout_string = layout
        self.layout = _shardwire.Layout.from_string(model, layout)
        self.rank = rank
        if not 0 <= rank < self.layout.world_size:
            raise InvalidArgumentError(f"invalid argument: rank {rank} outside layout {layout!r} of "
                                       f"{self.layout.world_size} ranks")
        self._params = None
        self._registered: Optional[RegisteredMemory] = None
        address, nbytes = 0, 0
        if params is not None:
            params = as_tensors(params, writable=True)  # numpy arrays: torch views of the same memory
            check_shard_tensors(params, self.layout, rank)
            self._params = dict(params)
            # The memory registered (in place) or copied into is the tensors' storage now: kept
            # alive by detached aliases even if the caller re-points a parameter (p.data = ...).
            self._registered = RegisteredMemory(self._params)
            try:
                address, nbytes = shard_buffer_address(self._params, self.layout, rank), self.layout.buffer_bytes(rank)
            except InvalidArgumentError:
                address, nbytes = 0, 0  # scattered tensors: load into an arena, then copy
        self.in_place = nbytes > 0
        instance_id = instance_id or f"py-{os.getpid()}-loader"
        self._impl = _shardwire._ModelLoader(coordinator, model, layout, rank, instance_id,
                                             revision, checkpoint, stall_timeout_s, load_timeout_s, address, nbytes)
        self._guard.keep(self._impl)  # the views hold it too, and may outlive this object
        self._owner = _MemoryOwner(self._impl)
        self._arena = self._params if self.in_place else _views(self._impl.buffer_address, self._impl.buffer_bytes,
                                                                self.layout, rank, self._owner)
        self.tensors: Dict[str, torch.Tensor] = self._params if self._params is not None else self._arena

    def load(self) -> Dict[str, Any]:
        """Loads every byte of this rank's shards and commits (GIL released; Ctrl-C stops it within
        about 0.1 s, raising KeyboardInterrupt with nothing committed; load() may be called again).
        With ``params``, then copies the shards into them. Returns the report {identity,
        buffer_bytes, bytes_from_sources, bytes_from_disk, bytes_per_instance, skipped, failed,
        moves, rereads, replans, seconds, digest_seconds, list_seconds, handshake_seconds,
        transfer_seconds, finish_seconds, paused_seconds} (bytes, seconds; handshake, transfer and
        finish are phases of the load; paused_seconds is time this process or its transport lanes
        did not run while it waited, which is not held against its sources; see LoadReport in
        model_loading.h).
        Raises NotFoundError (nobody serves the model and no checkpoint), UnavailableError
        (every source failed, no checkpoint), FailedPreconditionError (several revisions
        served), TimedOutError (load_timeout_s), checkpoint errors, InvalidArgumentError
        (loaded already), FailedPreconditionError (``params``' storage resized or freed in place
        since construction; nothing read)."""
        with self._guard.use("load"):
            if self._registered is not None:
                self._registered.check("load")
            report = self._impl.load()
            if self._params is not None and not self.in_place:
                with torch.no_grad():
                    for name, t in self._params.items():
                        t.copy_(self._arena[name])
            return report

    @property
    def loaded(self) -> bool:
        """True once load() committed."""
        return self._impl.loaded

    @property
    def identity(self) -> str:
        """The model identity loaded (valid after load())."""
        return self._impl.identity

    def become_source(self, heartbeat_interval_s: float = 1.0, bandwidth_bytes_per_s: float = 0.0,
                      shutdown_timeout_s: float = 2.0) -> ModelSource:
        """Serves the loaded shards (no copy: the arena moves into the source) as the same
        instance id and layout; the arguments as for ModelSource. The loader is empty afterwards.
        Raises FailedPreconditionError before a committed load, InvalidArgumentError for bad
        arguments, UnavailableError when the coordinator cannot be reached; after an error the
        loader is unchanged (loaded, its tensors valid) and become_source may be called again.
        In place (``params`` in one shard buffer), the source serves the caller's memory: its
        storage must not be resized or freed while the source lives (allocate_shard_buffer's
        and adopt_parameters' buffers cannot be)."""
        with self._guard.use("become_source"):
            impl = self._impl.become_source(heartbeat_interval_s, bandwidth_bytes_per_s, shutdown_timeout_s)
        self._owner.impl = impl  # views of the arena now keep the source (which holds it) alive
        self._arena = {}
        if self._params is None:
            self.tensors = {}
        # In place, the source serves the caller's tensors: it keeps their storage alive.
        return ModelSource(None, None, self.layout, self.rank, _impl=impl,
                           _params=self._registered.aliases() if self.in_place else None)
