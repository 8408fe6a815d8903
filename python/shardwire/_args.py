"""Checks of the integer and text arguments the Python API passes on to the C++ bindings.

pybind11 refuses an integer that does not fit the C++ parameter (``push(-1)`` for a uint64
version, ``rank=2**31`` for an int) and a ``str`` that is not valid UTF-8 (a lone surrogate)
with a TypeError, "incompatible function arguments", that names no argument. The public
wrappers check first and raise InvalidArgumentError naming the argument and its range.
Thread-safety: pure functions.
"""
from __future__ import annotations

import operator

from .errors import InvalidArgumentError

INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1


def check_int(name: str, value, lo: int, hi: int) -> int:
    """``value`` as an int when it is an integer in [lo, hi]: anything with ``__index__`` (a
    Python int, a numpy integer, a 0-d integer torch tensor) except bool (``push(True)`` is a bug,
    not version 1). Narrower than pybind11, which also converted floats and bools: those are
    refused. Else InvalidArgumentError naming ``name``, the value and the range."""
    if isinstance(value, bool):
        raise InvalidArgumentError(f"invalid argument: {name} must be an integer, got bool {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"invalid argument: {name} must be an integer, got {type(value).__name__} "
                                   f"{value!r}") from None
    if not lo <= v <= hi:
        raise InvalidArgumentError(f"invalid argument: {name} is {v}; it must be in [{lo}, {hi}]")
    return v


def check_version(name: str, value) -> int:
    """A weight version: an integer in [0, 2**64 - 1] (C++ uint64)."""
    return check_int(name, value, 0, UINT64_MAX)


def check_rank(name: str, value) -> int:
    """A rank or a count of ranks: an integer in [0, 2**31 - 1] (C++ int). Whether it is within
    a layout is the C++ side's check."""
    return check_int(name, value, 0, INT32_MAX)


def check_text(name: str, value):
    """``value`` when it is a str that encodes as UTF-8 (no lone surrogates), or bytes / bytearray
    (passed on as bytes, as pybind11 takes them); else InvalidArgumentError naming ``name``."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise InvalidArgumentError(f"invalid argument: {name} must be a str or bytes, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise InvalidArgumentError(f"invalid argument: {name} is not valid UTF-8 text ({e.reason} at "
                                   f"position {e.start})") from None
    return value
