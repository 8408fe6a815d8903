"""An independent safetensors reader and writer for the tests (struct + json + torch only; no
Shardwire code): the oracle loaded shards are compared with, and a generator of a small
checkpoint with a real architecture's shapes for machines without ../shared/models.

safetensors format (https://huggingface.co/docs/safetensors): 8-byte little-endian header
length N, N bytes of JSON {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": ...},
then the data section; offsets are relative to the data section.
"""
import json
import os
import pathlib
import struct
from typing import Dict

import torch

_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "I64": torch.int64,
           "U8": torch.uint8}

LLAMA = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "torch_dtype": "bfloat16",
}


def read_safetensors(path) -> Dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, as torch tensors (copies)."""
    data = pathlib.Path(path).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        raw = torch.frombuffer(bytearray(data[base + b:base + end]), dtype=torch.uint8)
        out[name] = raw.view(_DTYPES[e["dtype"]]).reshape(e["shape"]).clone()
    return out


def write_checkpoint(directory, config: dict = LLAMA, seed: int = 7) -> pathlib.Path:
    """Writes config.json and model.safetensors (bf16 tensors with the shapes of a Llama of
    `config`, deterministic random values) into `directory`; returns the safetensors path."""
    d = pathlib.Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(config))
    h, i, v = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    hd = h // config["num_attention_heads"]
    kv = config["num_key_value_heads"] * hd
    shapes = {"model.embed_tokens.weight": [v, h], "model.norm.weight": [h], "lm_head.weight": [v, h]}
    for layer in range(config["num_hidden_layers"]):
        p = f"model.layers.{layer}."
        shapes.update({p + "input_layernorm.weight": [h], p + "post_attention_layernorm.weight": [h],
                       p + "self_attn.q_proj.weight": [h, h], p + "self_attn.k_proj.weight": [kv, h],
                       p + "self_attn.v_proj.weight": [kv, h], p + "self_attn.o_proj.weight": [h, h],
                       p + "mlp.gate_proj.weight": [i, h], p + "mlp.up_proj.weight": [i, h],
                       p + "mlp.down_proj.weight": [h, i]})
    g = torch.Generator().manual_seed(seed)
    header, blobs, offset = {}, [], 0
    for name, shape in shapes.items():
        t = torch.randn(shape, generator=g).to(torch.bfloat16)
        b = t.view(torch.uint8).numpy().tobytes() if t.dim() else t.reshape(1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": "BF16", "shape": shape, "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path = d / "model.safetensors"
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)
    return path


def checkpoint_dir(tmp_path) -> pathlib.Path:
    """The tiny real Llama of ../shared/models (SHARDWIRE_SHARED_DIR) when present, else a
    generated checkpoint with the same architecture's shapes in tmp_path."""
    shared = pathlib.Path(os.environ.get("SHARDWIRE_SHARED_DIR", "../shared")) / "models" / "tiny-llama3-bf16"
    if (shared / "model.safetensors").exists():
        return shared
    write_checkpoint(tmp_path / "generated-llama")
    return tmp_path / "generated-llama"


def expected_shard(full: Dict[str, torch.Tensor], shard: dict) -> torch.Tensor:
    """The box of a layout shard (Layout.shards(rank) entry) cut out of the full tensor."""
    t = full[shard["name"]]
    return t[tuple(slice(o, o + n) for o, n in zip(shard["offset"], shard["shape"]))]


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Byte-for-byte equality (NaN payloads and -0.0 included)."""
    return a.dtype == b.dtype and tuple(a.shape) == tuple(b.shape) and torch.equal(
        a.contiguous().view(torch.uint8), b.contiguous().view(torch.uint8))
