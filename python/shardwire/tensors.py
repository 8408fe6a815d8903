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
    read-only (views are written in place: torch would write into memory it may not), or not a
    buffer at all.
    """
    from ._args import check_rank
    from .errors import InvalidArgumentError

    rank = check_rank("rank", rank)
    if isinstance(buffer, torch.Tensor):
        if (buffer.layout != torch.strided or buffer.dtype != torch.uint8 or not buffer.is_contiguous()
                or buffer.device.type != "cpu"):
            raise InvalidArgumentError("invalid argument: shard buffer must be a contiguous CPU uint8 tensor")
        flat = buffer.view(-1)
    else:
        try:
            mv = memoryview(buffer)
        except TypeError as e:  # no buffer protocol
            raise InvalidArgumentError(f"invalid argument: shard buffer of rank {rank}: {e}") from None
        if not mv.c_contiguous:
            raise InvalidArgumentError(f"invalid argument: shard buffer of rank {rank} is not contiguous "
                                       f"(strides {mv.strides})")
        if mv.readonly:
            raise InvalidArgumentError(f"invalid argument: shard buffer of rank {rank} is read-only; its views "
                                       f"are written in place")
        try:
            flat = torch.frombuffer(buffer, dtype=torch.uint8)
        except (TypeError, ValueError, BufferError, RuntimeError) as e:
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


def as_tensors(params, writable: bool = False):
    """``params`` (name -> tensor) with every numpy array replaced by a torch tensor sharing its
    memory (torch.from_numpy, no copy), so workflows take numpy arrays wherever they take
    tensors; other values are kept (check_shard_tensors judges them). A non-mapping is returned
    as is. ``writable``: the arrays are destinations (a subscriber's or loader's weights).
    Raises InvalidArgumentError naming an array torch cannot share (e.g. an unsupported
    numpy dtype; bf16 and FP8 shards have no numpy dtype: pass torch tensors for those), or,
    with ``writable``, a read-only array (``flags.writeable`` False, e.g. ``np.load(...,
    mmap_mode='r')``), which a transfer into it would crash on or silently change."""
    from .errors import InvalidArgumentError

    if not isinstance(params, Mapping):
        return params
    import numpy as np

    out = {}
    for name, v in params.items():
        if isinstance(v, np.ndarray):
            if writable and not v.flags.writeable:
                raise InvalidArgumentError(f"invalid argument: parameter {name!r} is a read-only numpy array; "
                                           f"weights received into it must be writable")
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
    from ._args import check_rank
    from .errors import InvalidArgumentError

    rank = check_rank("rank", rank)
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
        if t.layout != torch.strided:
            raise InvalidArgumentError(f"invalid argument: {what} {name!r} has layout {t.layout}; expected a dense "
                                       f"(strided) tensor")
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


def _storage_of(t: torch.Tensor):
    """The storage under ``t`` (torch >= 2: untyped_storage; torch 1.13, Debian 12: storage)."""
    return t.untyped_storage() if hasattr(t, "untyped_storage") else t.storage()


def shard_buffer_address(params: Mapping[str, torch.Tensor], layout, rank: int) -> int:
    """The start address of the shard buffer ``params`` live in, checking that each tensor sits
    exactly at its slot of one buffer (as adopt_parameters / allocate_shard_buffer leave them)
    and that the whole buffer, ``layout.buffer_bytes(rank)`` bytes from that address (padding
    included), lies inside the storage the tensors share, since all of it is registered.
    Raises InvalidArgumentError naming the first tensor that does not."""
    from .errors import InvalidArgumentError
    check_shard_tensors(params, layout, rank)
    base: Optional[int] = None
    storage_begin = storage_end = 0
    for s in layout.shards(rank):
        t = params[s["name"]]
        b = t.data_ptr() - s["byte_offset"]
        st = _storage_of(t)
        if base is None:
            base, storage_begin, storage_end = b, st.data_ptr(), st.data_ptr() + st.nbytes()
        elif b != base or st.data_ptr() != storage_begin:
            raise InvalidArgumentError(
                f"invalid argument: parameter {s['name']!r} does not sit at its slot of one shard buffer "
                f"(call shardwire.adopt_parameters first)")
    if base is None:
        return 0
    need = layout.buffer_bytes(rank)
    if base < storage_begin or base + need > storage_end:
        raise InvalidArgumentError(
            f"invalid argument: rank {rank}'s shard buffer of layout {layout.description!r} needs {need} bytes from "
            f"the first slot's start, but the parameters' storage holds {storage_end - base} from there "
            f"(allocate it with shardwire.allocate_shard_buffer or adopt_parameters)")
    return base


class RegisteredMemory:
    """The caller's tensors whose memory a Shardwire object registered with the transport.

    Detached aliases keep the storage alive even if the caller re-points a parameter
    (``p.data = ...``). Storage resized or freed in place (``t.resize_``, or
    ``t.storage().resize_(0)`` as FSDP does to free parameters) moves the memory under every
    alias while the transport keeps the old address: ``check`` finds that before the next
    transfer. Buffers from allocate_shard_buffer / adopt_parameters cannot be resized."""

    def __init__(self, tensors: Mapping[str, torch.Tensor]) -> None:
        self._aliases = {name: (t.detach(), t.data_ptr()) for name, t in tensors.items()}

    def check(self, what: str) -> None:
        """Raises FailedPreconditionError naming the first tensor whose memory moved since
        registration (nothing is transferred by ``what`` then)."""
        from .errors import FailedPreconditionError
        for name, (alias, address) in self._aliases.items():
            if alias.data_ptr() != address:
                raise FailedPreconditionError(
                    f"failed precondition: {what}: the storage of {name!r} was resized or freed since it was "
                    f"registered (address {address:#x}, now {alias.data_ptr():#x}); registered memory must stay "
                    f"where it is for the object's life")

    def aliases(self) -> list:
        """The detached aliases (they keep the storage alive)."""
        return [alias for alias, _ in self._aliases.values()]
