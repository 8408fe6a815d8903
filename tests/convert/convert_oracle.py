#!/usr/bin/python3
"""Independent oracle for the convert-layer tests (numpy only; shares no code with Shardwire).

Commands (raw files are little-endian element arrays, no header):
  cast FROM TO IN OUT
      FROM/TO in BF16, F16, F32. Widening is exact; F32->F16 uses numpy's astype (RNE);
      F32->BF16 picks the nearer of the two bf16 neighbours by exact float64 distance,
      ties to the even code (a different method from the bit trick under test).
  quant DTYPE E M N ARITH SCALE IN QOUT SOUT
      DeepGEMM per_block_cast_to_fp8 in numpy on E matrices [M, N] (E=0: one 2-D matrix).
      ARITH: cuda  (s = (1/amax)*448, scale_inv = amax*fp32(1/448): what torch computes on a GPU)
             exact (s = 448/amax, scale_inv = amax/448)
      SCALE: fp32 | ue8m0 (DeepGEMM ceil_to_ue8m0: sf rounded up to a power of two, s = 1/sf).
      E4M3 RNE by nearest-value search over the 127 non-negative finite codes, ties to even.
  dequant E M N QIN SIN OUT   fp8 block + scale_inv -> F32 (product in fp32)
  checkpoint SRC OUT FORMAT [ue8m0]
      Reads both checkpoints with a stdlib safetensors reader, recomputes every output tensor
      from the source (FORMAT fp8-block128 | bf16 | fp16 | fp32) and prints "ok <n tensors>"
      or the first mismatch; checks index total_size and config.json quantization_config.
"""
import glob
import json
import os
import struct
import sys

import numpy as np


def load(path, dtype):
    raw = np.fromfile(path, dtype=np.uint8)
    return from_bytes(raw.tobytes(), dtype)


def from_bytes(raw, dtype):
    if dtype == "BF16":
        u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return u.view(np.float32)
    if dtype == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float32)
    if dtype == "F32":
        return np.frombuffer(raw, dtype="<f4").copy()
    raise SystemExit(f"oracle: dtype {dtype} not handled")


def to_bf16_bits(x):
    with np.errstate(invalid="ignore", over="ignore"):
        return _to_bf16_bits(x)


def _to_bf16_bits(x):
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32)
    lo = (u >> 16).astype(np.uint32)  # truncation toward zero (magnitude)
    hi = lo + 1
    mag_lo = lo & 0x7FFF
    val = lambda m: np.where(m >= 0x7F80, np.float64(2.0) ** 128,
                             ((m.astype(np.uint32) << 16).view(np.float32)).astype(np.float64))
    a = np.abs(x.astype(np.float64))
    d_lo = a - val(mag_lo)
    d_hi = val(hi & 0x7FFF) - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & ((lo & 1) == 1))
    out = np.where(pick_hi, hi, lo).astype(np.uint32)
    nan = np.isnan(x)
    out = np.where(nan, (u >> 16) | 0x40, out)
    inf = np.isinf(x)
    out = np.where(inf, u >> 16, out)
    return out.astype(np.uint16)


def to_bytes(x, dtype):
    if dtype == "BF16":
        return to_bf16_bits(x).astype("<u2").tobytes()
    if dtype == "F16":
        with np.errstate(over="ignore"):
            return np.asarray(x, dtype=np.float32).astype("<f2").tobytes()
    return np.asarray(x, dtype="<f4").tobytes()


def e4m3_values():
    vals = []
    for code in range(0x7F):  # 0x7F is NaN
        e, m = code >> 3, code & 7
        vals.append(m * 2.0 ** -9 if e == 0 else (8 + m) * 2.0 ** (e - 10))
    return np.array(vals, dtype=np.float64)


E4M3 = e4m3_values()


def to_e4m3(y):
    y = np.asarray(y, dtype=np.float32)
    a = np.minimum(np.abs(y).astype(np.float64), 448.0)
    lo = np.clip(np.searchsorted(E4M3, a, side="right") - 1, 0, 126)
    hi = np.minimum(lo + 1, 126)
    d_lo = a - E4M3[lo]
    d_hi = E4M3[hi] - a
    pick_hi = (d_hi < d_lo) | ((d_hi == d_lo) & (hi % 2 == 0) & (hi != lo))
    code = np.where(pick_hi, hi, lo).astype(np.uint8)
    return np.where(np.signbit(y), code | 0x80, code).astype(np.uint8)


def ceil_to_ue8m0(sf):
    bits = sf.astype(np.float32).view(np.uint32)
    exp = ((bits >> 23) & 0xFF) + ((bits & 0x7FFFFF) != 0).astype(np.uint32)
    return (np.clip(exp, 1, 254).astype(np.uint32) << 23).view(np.float32)


def quantize(x, arith, scale):
    """x: float32 [E, m, n] -> (uint8 [E, m, n], float32 [E, ceil(m/128), ceil(n/128)])."""
    e, m, n = x.shape
    bm, bn = -(-m // 128), -(-n // 128)
    pad = np.zeros((e, bm * 128, bn * 128), dtype=np.float32)
    pad[:, :m, :n] = x
    view = pad.reshape(e, bm, 128, bn, 128)
    amax = np.abs(view).max(axis=(2, 4)).astype(np.float32)
    amax = np.maximum(amax, np.float32(1e-4))
    inv448 = np.float32(1.0 / 448.0)
    if scale == "ue8m0":
        sf = amax * inv448 if arith == "cuda" else amax / np.float32(448.0)
        sf = ceil_to_ue8m0(sf)
        s = np.float32(1.0) / sf
        sinv = sf
    elif arith == "cuda":
        s = (np.float32(1.0) / amax) * np.float32(448.0)
        sinv = amax * inv448
    else:
        s = np.float32(448.0) / amax
        sinv = amax / np.float32(448.0)
    y = (view * s[:, :, None, :, None].astype(np.float32)).astype(np.float32)
    q = to_e4m3(y).reshape(e, bm * 128, bn * 128)[:, :m, :n]
    return np.ascontiguousarray(q), sinv.astype(np.float32)


def e4m3_decode(q):
    table = np.concatenate([E4M3, [np.nan]]).astype(np.float32)
    v = table[q & 0x7F]
    return np.where(q & 0x80, -v, v).astype(np.float32)


def dequantize(q, sinv):
    e, m, n = q.shape
    rows = np.arange(m) // 128
    cols = np.arange(n) // 128
    s = sinv[:, rows][:, :, cols]
    return (e4m3_decode(q) * s).astype(np.float32)


def read_safetensors(path):
    with open(path, "rb") as f:
        blob = f.read()
    (hlen,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + hlen])
    data = blob[8 + hlen:]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        out[name] = (info["dtype"], info["shape"], data[b:e])
    return out


def read_checkpoint(d):
    tensors = {}
    index = glob.glob(os.path.join(d, "*.safetensors.index.json"))
    files = glob.glob(os.path.join(d, "*.safetensors"))
    if index:
        with open(index[0]) as f:
            idx = json.load(f)
        shards = sorted(set(idx["weight_map"].values()))
        for s in shards:
            for k, v in read_safetensors(os.path.join(d, s)).items():
                assert idx["weight_map"][k] == s, f"{k} mapped to {idx['weight_map'][k]}, found in {s}"
                tensors[k] = v
        assert set(idx["weight_map"]) == set(tensors), "index and shards disagree"
        total = sum(len(v[2]) for v in tensors.values())
        assert idx["metadata"]["total_size"] == total, f"total_size {idx['metadata']['total_size']} != {total}"
    else:
        assert len(files) == 1, files
        tensors = read_safetensors(files[0])
    return tensors


def keeps_high_precision(name, shape):
    """DeepSeek-V3 FP8 release / vLLM: only 2-D (or stacked 3-D) linear weights are FP8."""
    if not name.endswith(".weight") or len(shape) not in (2, 3):
        return True
    lowered = name.lower()
    for word in ("embed", "lm_head", "norm", "wte", "wpe"):
        if word in lowered:
            return True
    return name.endswith(".gate.weight") or ".router." in name  # MoE routers (DeepSeek mlp.gate, Mixtral)


def check_checkpoint(src, out, fmt, scale):
    a = read_checkpoint(src)
    b = read_checkpoint(out)
    n = 0
    for name, (dt, shape, raw) in a.items():
        x = from_bytes(raw, dt)
        if fmt == "fp8-block128" and not keeps_high_precision(name, shape):
            bdt, bshape, braw = b[name]
            sdt, sshape, sraw = b[name + "_scale_inv"]
            assert bdt == "F8_E4M3" and bshape == shape, (name, bdt, bshape)
            x3 = x.reshape([1] + shape if len(shape) == 2 else shape)
            q, s = quantize(x3, "cuda", scale)
            exp_sshape = list(s.shape[1:]) if len(shape) == 2 else list(s.shape)
            assert sdt == "F32" and sshape == exp_sshape, (name, sdt, sshape, exp_sshape)
            if q.tobytes() != braw:
                return f"mismatch {name}"
            if s.astype("<f4").tobytes() != sraw:
                return f"mismatch {name}_scale_inv"
            n += 2
            continue
        target = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}.get(fmt, dt)
        bdt, bshape, braw = b[name]
        assert bdt == target and bshape == shape, (name, bdt, target, bshape, shape)
        if to_bytes(x, target) != braw:
            return f"mismatch {name}"
        n += 1
    if n != len(b):
        return f"output holds {len(b)} tensors, expected {n}"
    with open(os.path.join(out, "config.json")) as f:
        cfg = json.load(f)
    if fmt == "fp8-block128":
        qc = cfg.get("quantization_config")
        want = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [128, 128]}
        for k, v in want.items():
            if qc.get(k) != v:
                return f"quantization_config[{k}] = {qc.get(k)}"
        if scale == "ue8m0" and qc.get("scale_fmt") != "ue8m0":
            return "quantization_config lacks scale_fmt ue8m0"
    elif "quantization_config" in cfg:
        return "quantization_config present after a cast"
    return f"ok {n}"


def main():
    cmd = sys.argv[1]
    if cmd == "cast":
        _, _, src_dt, dst_dt, inp, outp = sys.argv
        x = load(inp, src_dt)
        with open(outp, "wb") as f:
            f.write(to_bytes(x, dst_dt))
    elif cmd == "quant":
        _, _, dt, e, m, n, arith, scale, inp, qout, sout = sys.argv
        e, m, n = int(e), int(m), int(n)
        x = load(inp, dt).reshape(max(e, 1), m, n)
        q, s = quantize(x, arith, scale)
        q.tofile(qout)
        s.astype("<f4").tofile(sout)
    elif cmd == "dequant":
        _, _, e, m, n, qin, sin, outp = sys.argv
        e, m, n = int(e), int(m), int(n)
        q = np.fromfile(qin, dtype=np.uint8).reshape(max(e, 1), m, n)
        s = np.fromfile(sin, dtype="<f4").reshape(max(e, 1), -(-m // 128), -(-n // 128))
        dequantize(q, s).astype("<f4").tofile(outp)
    elif cmd == "checkpoint":
        scale = sys.argv[5] if len(sys.argv) > 5 else "fp32"
        print(check_checkpoint(sys.argv[2], sys.argv[3], sys.argv[4], scale))
    else:
        raise SystemExit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
