"""Torch views of Shardwire shard buffers, without copies.

A rank's shards live in one contiguous buffer (a Layout places every shard as a dense
row-major box at a byte offset). ``shard_views`` turns such a buffer, given as any object
with the buffer protocol (a memoryview, a numpy array, a Shardwire buffer) or a uint8 torch
tensor, into ``{tensor name: torch tensor}`` views that share its memory.
"""
from __future__ import annotations

from typing import Dict

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
    Raises shardwire.errors.InvalidArgumentError when the buffer is too small or not contiguous.
    """
    from .errors import InvalidArgumentError

    if isinstance(buffer, torch.Tensor):
        if buffer.dtype != torch.uint8 or not buffer.is_contiguous() or buffer.device.type != "cpu":
            raise InvalidArgumentError("invalid argument: shard buffer must be a contiguous CPU uint8 tensor")
        flat = buffer.view(-1)
    else:
        flat = torch.frombuffer(buffer, dtype=torch.uint8)
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
