"""FP8 block quantisation from Python, bit for bit against the numpy oracle of the C++
convert tests (tests/convert/convert_oracle.py, which shares no code with the kernels)."""
import pathlib
import sys

import numpy as np
import pytest
import torch

import shardwire
from shardwire import errors

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "convert"))
import convert_oracle  # noqa: E402


@pytest.mark.parametrize("shape", [[256, 384], [130, 200], [3, 129, 77]])
@pytest.mark.parametrize("scale", ["fp32", "ue8m0"])
def test_quantize_matches_oracle(shape, scale):
    g = torch.Generator().manual_seed(5)
    x = (torch.randn(shape, generator=g) * 3).to(torch.bfloat16)
    x.view(-1)[:200] = 0  # an all-zero run (amax clamped at 1e-4)
    q, sinv = shardwire.quantize_fp8_block(x, "w", ue8m0=(scale == "ue8m0"))
    x3 = x.float().numpy().reshape([-1] + shape[-2:])
    want_q, want_s = convert_oracle.quantize(x3, "cuda", scale)
    assert np.array_equal(q.numpy().reshape(want_q.shape), want_q)
    assert np.array_equal(sinv.numpy().reshape(want_s.shape).view(np.uint32), want_s.view(np.uint32))
    back = shardwire.dequantize_fp8_block(q, sinv, torch.float32, ue8m0=(scale == "ue8m0"))
    assert torch.allclose(back, x.float(), rtol=0.07, atol=1e-3)  # e4m3 keeps 3 mantissa bits


def test_bad_input_is_typed():
    with pytest.raises(errors.CorruptDataError, match="w0"):
        t = torch.zeros(128, 128, dtype=torch.float32)
        t[5, 7] = float("nan")
        shardwire.quantize_fp8_block(t, "w0")
    with pytest.raises(errors.InvalidArgumentError, match="float64|bfloat16"):
        shardwire.quantize_fp8_block(torch.zeros(4, 4, dtype=torch.float64))
    with pytest.raises(errors.InvalidArgumentError, match="contiguous"):
        shardwire.quantize_fp8_block(torch.zeros(8, 4, dtype=torch.bfloat16).T)
    with pytest.raises(errors.InvalidArgumentError, match="'w1'.*2-D"):
        shardwire.quantize_fp8_block(torch.zeros(8, dtype=torch.bfloat16), "w1")
    with pytest.raises(errors.InvalidArgumentError, match="'w2'.*layout"):
        shardwire.quantize_fp8_block(torch.zeros(8, 8).to_sparse(), "w2")
    # A name that is not UTF-8 (bytes) in the message: the typed error, not a UnicodeDecodeError
    # raised while building it.
    with pytest.raises(errors.CorruptDataError, match=r"\\xff"):
        t = torch.zeros(128, 128, dtype=torch.float32)
        t[0, 0] = float("nan")
        shardwire.quantize_fp8_block(t, b"\xff")


def test_numpy_arrays_are_quantised_in_place_like_tensors():
    """A numpy array gave "tensor 'tensor' is float32; ... takes bfloat16, float16 or float32":
    the check compared numpy's dtype with torch's. Arrays are now read without a copy, and the
    result equals the tensor path's bit for bit."""
    g = np.random.default_rng(7)
    for dtype in (np.float32, np.float16):
        x = (g.standard_normal((130, 200)) * 2).astype(dtype)
        q, sinv = shardwire.quantize_fp8_block(x, "np_w")
        want_q, want_s = shardwire.quantize_fp8_block(torch.from_numpy(x.copy()), "np_w")
        assert isinstance(q, torch.Tensor) and torch.equal(q, want_q) and torch.equal(sinv, want_s)
        back = shardwire.dequantize_fp8_block(q.numpy(), sinv.numpy(), torch.float32)
        assert torch.equal(back, shardwire.dequantize_fp8_block(q, sinv, torch.float32))
    with pytest.raises(errors.InvalidArgumentError, match="'np_i'.*int32"):
        shardwire.quantize_fp8_block(np.zeros((4, 4), np.int32), "np_i")
    with pytest.raises(errors.InvalidArgumentError, match="torch.Tensor or a numpy array, got list"):
        shardwire.quantize_fp8_block([[1.0, 2.0]], "as_list")
