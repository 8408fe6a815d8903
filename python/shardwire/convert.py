"""FP8 E4M3 128x128 block quantisation of torch tensors (the C++ convert layer, fp8_block.h).

Bit-exact to DeepGEMM's ``per_block_cast_to_fp8`` as it runs on a GPU (amax of each 128x128
block in fp32, clamped below at 1e-4; q = e4m3fn_rne(x * s) with s = fp32(1/amax) * 448 and
scale_inv = amax * fp32(1/448), the operations torch's CUDA kernels perform); ``exact_division``
uses 448/amax and amax/448 instead. ``ue8m0`` rounds scales up to powers of two (DeepGEMM's
``ceil_to_ue8m0``, Blackwell). torch 1.13 has no float8 dtype: FP8 codes are torch.uint8.
docs/convert.md has the derivation.
"""
from __future__ import annotations

from typing import Tuple, Union

import numpy as np

import torch

from . import _shardwire
from .errors import InvalidArgumentError
from .tensors import as_tensors

_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


def _as_tensor(t, name: str, what: str, writable: bool = False) -> torch.Tensor:
    """``t`` itself when a torch tensor; a numpy array as a torch tensor sharing its memory
    (shardwire.tensors.as_tensors: no copy). Else InvalidArgumentError naming ``name``."""
    if isinstance(t, np.ndarray):
        return as_tensors({name: t}, writable)[name]
    if not isinstance(t, torch.Tensor):
        raise InvalidArgumentError(f"invalid argument: {what} {name!r} must be a torch.Tensor or a numpy array, "
                                   f"got {type(t).__name__}")
    return t


def _check(t: torch.Tensor, name: str, what: str) -> None:
    if t.layout != torch.strided:
        raise InvalidArgumentError(f"invalid argument: {what} {name!r} has layout {t.layout}; dense tensors only")
    if t.device.type != "cpu":
        raise InvalidArgumentError(f"invalid argument: {what} {name!r} is on {t.device}; only CPU tensors here")
    if not t.is_contiguous():
        raise InvalidArgumentError(f"invalid argument: {what} {name!r} is not contiguous")


def quantize_fp8_block(tensor: Union[torch.Tensor, np.ndarray], name: str = "tensor", ue8m0: bool = False,
                       exact_division: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """Quantises a 2-D [m, n] or 3-D [E, m, n] (per expert) bf16/fp16/fp32 tensor.

    Returns (q: torch.uint8 of the same shape, E4M3 codes; scale_inv: torch.float32 of shape
    [ceil(m/128), ceil(n/128)] (or [E, ...])). Releases the GIL. Raises InvalidArgumentError
    (dtype, rank, device, contiguity) and CorruptDataError naming `name` and the element for
    NaN or Inf input. A numpy array (float16, float32) is read in place, without a copy; the
    results are torch tensors either way."""
    tensor = _as_tensor(tensor, name, "tensor")
    if tensor.dtype not in _DTYPES:
        raise InvalidArgumentError(f"invalid argument: tensor {name!r} is {tensor.dtype}; FP8 block quantisation "
                                   f"takes bfloat16, float16 or float32")
    _check(tensor, name, "tensor")
    if tensor.dim() not in (2, 3):
        raise InvalidArgumentError(f"invalid argument: tensor {name!r} has shape {list(tensor.shape)}; FP8 block "
                                   f"quantisation takes a 2-D [m, n] or 3-D [E, m, n] tensor")
    shape = list(tensor.shape)
    q = torch.empty(shape, dtype=torch.uint8)
    scale_inv = torch.empty(_shardwire._fp8_scale_shape(shape), dtype=torch.float32)
    _shardwire._quantize_fp8_block(name, _DTYPES[tensor.dtype], shape, tensor.data_ptr(), q.data_ptr(),
                                   scale_inv.data_ptr(), ue8m0, exact_division)
    return q, scale_inv


def dequantize_fp8_block(q: Union[torch.Tensor, np.ndarray], scale_inv: Union[torch.Tensor, np.ndarray],
                         dtype: torch.dtype = torch.bfloat16, ue8m0: bool = False) -> torch.Tensor:
    """Inverse for checks: rne(e4m3(q) * scale_inv[block]) in ``dtype`` (bf16, fp16, fp32).
    ``q`` and ``scale_inv`` may be numpy arrays (uint8, float32), read without a copy."""
    q, scale_inv = _as_tensor(q, "q", "tensor"), _as_tensor(scale_inv, "scale_inv", "tensor")
    if q.dtype != torch.uint8 or scale_inv.dtype != torch.float32 or dtype not in _DTYPES:
        raise InvalidArgumentError("invalid argument: q must be uint8, scale_inv float32, dtype bf16/fp16/fp32")
    _check(q, "q", "tensor")
    _check(scale_inv, "scale_inv", "tensor")
    if list(scale_inv.shape) != _shardwire._fp8_scale_shape(list(q.shape)):
        raise InvalidArgumentError(f"invalid argument: scale_inv has shape {list(scale_inv.shape)}, expected "
                                   f"{_shardwire._fp8_scale_shape(list(q.shape))} for q of shape {list(q.shape)}")
    out = torch.empty(list(q.shape), dtype=dtype)
    _shardwire._dequantize_fp8_block(list(q.shape), q.data_ptr(), scale_inv.data_ptr(), _DTYPES[dtype],
                                     out.data_ptr(), ue8m0)
    return out
