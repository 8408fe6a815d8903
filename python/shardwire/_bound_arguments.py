"""pybind11's refusal of an argument it cannot convert, raised as InvalidArgumentError.

The classes and functions bound straight from C++ (CoordinatorClient, CoordinatorServer, Model,
Layout, Plan, plan) take their arguments through pybind11, which refuses a value that does not
fit the C++ parameter (``add("k", 2**70)`` for an int64, ``rank=-1`` for a uint32, a float where an
int is expected, a lone surrogate in a str) with a TypeError, "incompatible function arguments",
outside Shardwire's error classes. ``translate_argument_errors`` wraps such a class's methods
(constructors and static methods included) so that this refusal is an InvalidArgumentError (a
ShardwireError and a ValueError) whose message is pybind11's: the function, the signature it takes
and the values it was given. Any other TypeError passes unchanged. The wrappers keep the
docstrings (functools.wraps) and add one Python call per call.
Thread-safety: applied once, at import.
"""
from __future__ import annotations

import functools
from typing import Callable, TypeVar

from .errors import InvalidArgumentError

# The first line of pybind11's message for arguments no overload accepts (pybind11/pybind11.h).
_REFUSALS = ("incompatible function arguments", "incompatible constructor arguments")

F = TypeVar("F", bound=Callable)
C = TypeVar("C", bound=type)


def translate(fn: F) -> F:
    """``fn`` with pybind11's argument refusal raised as InvalidArgumentError."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TypeError as e:
            text = str(e)
            if not any(r in text for r in _REFUSALS):
                raise
            raise InvalidArgumentError(f"invalid argument: {text}") from None

    return call  # type: ignore[return-value]


def translate_argument_errors(cls: C) -> C:
    """Wraps, in place, every method, static method and constructor ``cls`` defines (not its
    properties or other dunder methods) with ``translate``; returns ``cls``."""
    for name, attr in list(vars(cls).items()):
        if name.startswith("__") and name != "__init__":
            continue
        if isinstance(attr, staticmethod):
            setattr(cls, name, staticmethod(translate(attr.__func__)))
        elif isinstance(attr, (property, classmethod)) or not callable(attr):
            continue
        else:
            setattr(cls, name, translate(attr))
    return cls
