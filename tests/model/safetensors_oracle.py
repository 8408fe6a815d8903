#!/usr/bin/env python3
"""Independent oracle for the safetensors reader tests (stdlib only).

Usage: safetensors_oracle.py FILE
Prints one line "header <header_len> <data_size>", then one line per tensor in
data-offset order:
    <name> <dtype> <d0,d1,...|-> <begin> <end> <fnv1a64 of the tensor bytes, 16 hex digits>
Format: huggingface/safetensors README "Format" (u64 LE header length, JSON header,
data section; data_offsets relative to the data section).
"""
import json
import struct
import sys


def fnv1a64(data: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def main() -> int:
    with open(sys.argv[1], "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    data = blob[8 + n:]
    print(f"header {n} {len(data)}")
    entries = [(k, v) for k, v in header.items() if k != "__metadata__"]
    entries.sort(key=lambda kv: (kv[1]["data_offsets"][0], kv[1]["data_offsets"][1]))
    for name, info in entries:
        begin, end = info["data_offsets"]
        shape = ",".join(str(d) for d in info["shape"]) or "-"
        print(f"{name} {info['dtype']} {shape} {begin} {end} {fnv1a64(data[begin:end]):016x}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
