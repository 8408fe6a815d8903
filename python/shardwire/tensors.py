"""Torch views of Shardwire shard buffers, without copies.

A rank's shards live in one contiguous buffer (a Layout places every shard as a dense
row-major box at a byte offset). ``shard_views`` turns such a buffer, given as any object
with the buffer protocol (a memoryview, a bytearray, a numpy array) or a uint8 torch
tensor, into ``{tensor name: torch tensor}`` views that share its memory.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional

import torch

# safetensors dtype names (the C++ DTypeName) -> torch dtypes. FP8 has no torch dtype in
# torch 1.13 (Debian 12): FP8 shards are exposed as torch.uint8 with the same shape.
_TORCH_DTYPES = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "I32": torch.int32,
    "I64": torch.int64,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "F8_E4M3": torch.uint8,
    "F8_E5M2": torch.uint8,
}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype name ('BF16' -> torch.bfloat16; FP8 -> torch.uint8).

    Raises shardwire.errors.UnsupportedError for a dtype torch cannot hold (U16, U32, U64)."""
    from .errors import UnsupportedError

    try:
        return _TORCH_DTYPES[name]
    except KeyError:
        raise UnsupportedError(f"unsupported: dtype {name} has no torch equivalent") from None


def shard_views(buffer, layout, rank: int) -> Dict[str, torch.Tensor]:
    """Views of every shard rank ``rank`` of ``layout`` holds, into ``buffer`` (no copy).

    ``buffer``: the rank's shard buffer, at least ``layout.buffer_bytes(rank)`` bytes (a
    contiguous CPU uint8 tensor or any buffer-protocol object). Each view has the shard's
    shape (``shards(rank)[i]['shape']``) and dtype. Writing a view writes the buffer.
    Raises shardwire.errors.InvalidArgumentError when the buffer is too small, not contiguous,
    or not a buffer at all.
    """
    from .errors import InvalidArgumentError

    if isinstance(buffer, torch.Tensor):
        if buffer.dtype != torch.uint8 or not buffer.is_contiguous() or buffer.device.type != "cpu":
            raise InvalidArgumentError("invalid argument: shard buffer must be a contiguous CPU uint8 tensor")
        flat = buffer.view(-1)
    else:
        try:
            flat = torch.frombuffer(buffer, dtype=torch.uint8)
        except (TypeError, ValueError, BufferError) as e:  # no buffer protocol, or not contiguous
            raise InvalidArgumentError(f"invalid argument: shard buffer of rank {rank}: {e}") from None
    need = layout.buffer_bytes(rank)
    if flat.numel() < need:
        raise InvalidArgumentError(
            f"invalid argument: shard buffer of rank {rank} has {flat.numel()} bytes, layout "
            f"{layout.description!r} needs {need}")
    views: Dict[str, torch.Tensor] = {}
    for s in layout.shards(rank):
        dt = torch_dtype(s["dtype"])
        raw = flat[s["byte_offset"]:s["byte_offset"] + s["nbytes"]]
        views[s["name"]] = raw.view(dt).view(s["shape"]) if s["shape"] else raw.view(dt).view(())
    return views


def as_tensors(params):
    """``params`` (name -> tensor) with every numpy array replaced by a torch tensor sharing its
    memory (torch.from_numpy, no copy), so workflows take numpy arrays wherever they take
    tensors; other values are kept (check_shard_tensors judges them). A non-mapping is returned
    as is. Raises InvalidArgumentError naming an array torch cannot share (e.g. an unsupported
    numpy dtype; bf16 and FP8 shards have no numpy dtype: pass torch tensors for those)."""
    from .errors import InvalidArgumentError

    if not isinstance(params, Mapping):
        return params
    import numpy as np

    out = {}
    for name, v in params.items():
        if isinstance(v, np.ndarray):
            try:
                v = torch.from_numpy(v)
            except (TypeError, ValueError) as e:
                raise InvalidArgumentError(f"invalid argument: parameter {name!r}: numpy array of dtype {v.dtype} "
                                           f"cannot be shared with torch: {e}") from None
        out[name] = v
    return out


def check_shard_tensors(params: Mapping[str, torch.Tensor], layout, rank: int, what: str = "parameter") -> None:
    """Checks that ``params`` (name -> torch tensor) holds exactly the shards rank ``rank`` of
    ``layout`` holds, each a contiguous CPU tensor of its slot's dtype and shard shape.

    Raises shardwire.errors.InvalidArgumentError naming the first offending tensor and what
    its slot expects: a name the rank holds but ``params`` lacks, a name the rank does not
    hold, a tensor on another device (this build moves host memory only; 'cuda' and 'meta'
    tensors are refused), of another dtype or shape, or not contiguous. Nothing is changed."""
    from .errors import InvalidArgumentError

    if not isinstance(params, Mapping):
        raise InvalidArgumentError(f"invalid argument: {what}s must be a mapping name -> torch.Tensor, "
                                   f"got {type(params).__name__}")
    slots = {s["name"]: s for s in layout.shards(rank)}
    missing = sorted(set(slots) - set(params))
    extra = sorted(set(params) - set(slots))
    where = f"rank {rank} of layout {layout.description!r}"
    if missing:
        s = slots[missing[0]]
        raise InvalidArgumentError(f"invalid argument: {where} holds {missing[0]!r} ({s['dtype']} {s['shape']}) but "
                                   f"the {what}s lack it ({len(missing)} missing)")
    if extra:
        raise InvalidArgumentError(f"invalid argument: {what} {extra[0]!r} is not held by {where} "
                                   f"({len(extra)} extra; expected exactly the rank's {len(slots)} shards)")
    for name, slot in slots.items():
        t = params[name]
        if not isinstance(t, torch.Tensor):
            raise InvalidArgumentError(f"invalid argument: {what} {name!r} is a {type(t).__name__}, expected a "
                                       f"torch.Tensor")
        want_dtype, want_shape = torch_dtype(slot["dtype"]), tuple(slot["shape"])
        if t.device.type != "cpu":
            raise InvalidArgumentError(f"invalid argument: {what} {name!r} is on device {t.device}; expected a CPU "
                                       f"tensor (this build moves host memory only, no GPU transport here)")
        if t.dtype != want_dtype or tuple(t.shape) != want_shape:
            raise InvalidArgumentError(f"invalid argument: {what} {name!r} is {t.dtype} {tuple(t.shape)}, "
                                       f"its slot in {where} is {want_dtype} {want_shape}")
        if not t.is_contiguous():
            raise InvalidArgumentError(f"invalid argument: {what} {name!r} is not contiguous (strides "
                                       f"{tuple(t.stride())}); expected a contiguous row-major tensor of shape "
                                       f"{want_shape}")


def shard_buffer_address(params: Mapping[str, torch.Tensor], layout, rank: int) -> int:
    """The start address of the shard buffer ``params`` live in, checking that each tensor sits
    exactly at its slot of one buffer (as adopt_parameters / allocate_shard_buffer leave them).
    Raises InvalidArgumentError naming the first tensor that does not."""
    from .errors import InvalidArgumentError
    check_shard_tensors(params, layout, rank)
    base: Optional[int] = None
    for s in layout.shards(rank):
        t = params[s["name"]]
        b = t.data_ptr() - s["byte_offset"]
        if base is None:
            base = b
        elif b != base:
            raise InvalidArgumentError(
                f"invalid argument: parameter {s['name']!r} does not sit at its slot of one shard buffer "
                f"(call shardwire.adopt_parameters first)")
    return base if base is not None else 0
