"""Exceptions raised by Shardwire: one class per C++ ErrorCode, all under ShardwireError.

The C++ message (naming what is wrong and where: file, tensor, rank, peer, byte offset) is
the exception's message, prefixed with the code name, e.g.
``InvalidArgumentError('invalid argument: layout "tp=3": ...')``. An argument pybind11 cannot
convert to its C++ parameter is an InvalidArgumentError carrying pybind11's message
(_bound_arguments.py).
"""
from __future__ import annotations

from typing import Dict, Type


class ShardwireError(Exception):
    """Base class of every error Shardwire raises. ``code`` is the C++ ErrorCode value."""

    code: int = -1


class InvalidArgumentError(ShardwireError, ValueError):
    """A caller-supplied value is out of range or malformed."""


class NotFoundError(ShardwireError, LookupError):
    """A file, tensor, key or peer that was named does not exist."""


class CorruptDataError(ShardwireError):
    """Bytes on disk or on the wire violate their format."""


class LayoutMismatchError(ShardwireError):
    """Two descriptions of the same tensors disagree (shape, dtype, set)."""


class IoError(ShardwireError, OSError):
    """The operating system refused a file or socket operation."""


class TransportError(ShardwireError):
    """UCX reported an error."""


class PeerDisconnectedError(ShardwireError, ConnectionError):
    """A peer process went away."""


class TimedOutError(ShardwireError, TimeoutError):
    """A wait exceeded its timeout."""


class UnsupportedError(ShardwireError):
    """A valid request this build or machine cannot serve."""


class VerificationFailedError(ShardwireError):
    """Received bytes differ from what was expected."""


class InternalError(ShardwireError):
    """A broken invariant inside Shardwire (a bug: please report it)."""


class UnauthenticatedError(ShardwireError, PermissionError):
    """A service refused the caller's credentials (missing or wrong token)."""


class UnavailableError(ShardwireError, ConnectionError):
    """A service (coordinator, Redis) cannot be reached."""


class AlreadyExistsError(ShardwireError):
    """A name, rank or record that must be unique is already taken."""


class FailedPreconditionError(ShardwireError):
    """The request is valid but the current state forbids it (e.g. a version going backwards)."""


# C++ ErrorCode names (ErrorCodeName) -> class. Checked against the extension at import.
_BY_NAME: Dict[str, Type[ShardwireError]] = {
    "invalid argument": InvalidArgumentError,
    "not found": NotFoundError,
    "corrupt data": CorruptDataError,
    "layout mismatch": LayoutMismatchError,
    "I/O error": IoError,
    "transport error": TransportError,
    "peer disconnected": PeerDisconnectedError,
    "timed out": TimedOutError,
    "unsupported": UnsupportedError,
    "verification failed": VerificationFailedError,
    "internal error": InternalError,
    "unauthenticated": UnauthenticatedError,
    "unavailable": UnavailableError,
    "already exists": AlreadyExistsError,
    "failed precondition": FailedPreconditionError,
}
_BY_CODE: Dict[int, Type[ShardwireError]] = {}


def _register_codes(codes) -> None:
    """Binds each (code, name) pair of the extension to its class; a code without a class is
    an InternalError at import time, so a new C++ code cannot silently map to the base class."""
    for code, name in codes:
        cls = _BY_NAME.get(name)
        if cls is None:
            raise ImportError(f"shardwire.errors has no exception class for C++ error code {code} ({name!r})")
        cls.code = code
        _BY_CODE[code] = cls


def error_class(code: int) -> Type[ShardwireError]:
    """The exception class of C++ ErrorCode ``code`` (ShardwireError for an unknown code)."""
    return _BY_CODE.get(code, ShardwireError)
