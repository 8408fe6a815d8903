"""The two ways a Shardwire object is used that its C++ side cannot survive: from a process
forked from the one that made it, and from two threads at once.

fork() without exec copies an object but none of its threads (transport lanes, heartbeats,
conversion workers) nor gRPC's: a call from the child waited without end or crashed, and the
object's destructor in the child joined threads that do not exist there (SIGSEGV at exit).
``ObjectGuard(owner)`` records the process that made an object (``keep`` adds the C++ object it
wraps); ``ObjectGuard.use`` refuses a call from another process with FailedPreconditionError,
and after a fork every recorded object the child inherited gets one reference that is never
dropped, so its destructor never runs in the child (the parent's copy is untouched). Memory the transport registered is not inherited (UCX maps it
MADV_DONTFORK): a child reading such a buffer's views gets SIGSEGV, which no check can prevent.
Make Shardwire objects in the process that uses them, or start workers with spawn
(multiprocessing's 'spawn' start method; vLLM: VLLM_WORKER_MULTIPROC_METHOD=spawn).

The objects are documented "one thread at a time"; ``ObjectGuard.use`` also refuses a second
thread at once (FailedPreconditionError naming the call in progress) instead of letting two
pushes race (one failed after engine_timeout_s saying no engine received it) or two waits for
one version (the second waited out its timeout for a version already committed).
Thread-safety: an ObjectGuard's methods may be called from any thread.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import threading
import weakref
from typing import Iterator

from .errors import FailedPreconditionError

_tracked: "weakref.WeakSet[object]" = weakref.WeakSet()


class ObjectGuard:
    """The process that made an object, and the call one thread is making on it now."""

    def __init__(self, owner: object):
        self.created_in = os.getpid()
        self._name = type(owner).__name__
        self._lock = threading.Lock()
        self._busy_with = ""
        self._busy_thread = 0  # threading.get_ident() of the thread in the call, 0: none
        _tracked.add(owner)

    def keep(self, impl: object) -> None:
        """Also keeps ``impl`` (the C++ object the owner wraps) in forked children: tensor views
        hold it too, and may outlive the owner (a ModelSource dropped while its views are used)."""
        _tracked.add(impl)

    def inherited(self) -> bool:
        """True in a process forked from the one that made the object."""
        return os.getpid() != self.created_in

    def check_process(self, what: str) -> None:
        """Raises FailedPreconditionError when called in a forked child."""
        if self.inherited():
            raise FailedPreconditionError(
                f"failed precondition: {what}: this {self._name} was made in process {self.created_in}, and "
                f"process {os.getpid()} is a fork of it, which has none of its threads or connections: make "
                "Shardwire objects in the process that uses them, or start workers with spawn "
                "(multiprocessing 'spawn'; vLLM: VLLM_WORKER_MULTIPROC_METHOD=spawn)")

    @contextlib.contextmanager
    def use(self, what: str) -> Iterator[None]:
        """Around one call: refuses it in a forked child, or while another thread is in one."""
        self.check_process(what)
        if not self._lock.acquire(blocking=False):
            if self._busy_thread == threading.get_ident():
                # A signal handler running between two slices of this thread's own wait: the C++
                # call underneath holds the object's locks, so a second call would deadlock.
                raise FailedPreconditionError(
                    f"failed precondition: {what}: this thread is in {self._busy_with} on this {self._name} (a "
                    "signal handler interrupted it): raise an exception from the handler to end that call, "
                    "then call this")
            raise FailedPreconditionError(
                f"failed precondition: {what}: another thread is in {self._busy_with} on this {self._name} "
                "(one thread at a time per object)")
        self._busy_with, self._busy_thread = what, threading.get_ident()
        try:
            yield
        finally:
            self._busy_with, self._busy_thread = "", 0
            self._lock.release()


def _keep_inherited_objects() -> None:
    # In the child: one more reference to each object, never dropped, so that neither garbage
    # collection nor the interpreter's end runs a destructor that would join absent threads.
    for obj in list(_tracked):
        ctypes.pythonapi.Py_IncRef(ctypes.py_object(obj))
    _tracked.clear()


os.register_at_fork(after_in_child=_keep_inherited_objects)
