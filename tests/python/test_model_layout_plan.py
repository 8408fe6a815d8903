"""Models, layouts and plans from Python, checked against independent expectations."""
import json
import struct

import pytest
import torch

import shardwire
from shardwire import errors

LLAMA = {
    "model_type": "llama", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
    "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": 256, "torch_dtype": "bfloat16",
}


def test_model_from_config_lists_roles():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    by_name = {t["name"]: t for t in model.tensors}
    assert by_name["model.layers.0.self_attn.q_proj.weight"]["role"] == "column"
    assert by_name["model.layers.0.self_attn.o_proj.weight"]["role"] == "row"
    assert by_name["model.embed_tokens.weight"]["role"] == "vocab"
    assert by_name["model.norm.weight"]["role"] == "replicated"
    assert by_name["model.layers.1.self_attn.k_proj.weight"]["shape"] == [2 * 16, 64]
    # bf16: 2 bytes per element, total = sum of shapes
    assert model.total_bytes == sum(2 * _numel(t["shape"]) for t in model.tensors)
    assert model.fused["model.layers.0.self_attn.qkv_proj.weight"] == [
        "model.layers.0.self_attn.q_proj.weight", "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.weight"]


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def test_tp_layout_shards_match_megatron_split():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    tp = shardwire.Layout.from_string(model, "tp=2")
    assert tp.world_size == 2
    shards = {s["name"]: s for s in tp.shards(1)}
    q = shards["model.layers.0.self_attn.q_proj.weight"]
    assert q["offset"] == [32, 0] and q["shape"] == [32, 64]  # column-parallel: rows 32..63
    o = shards["model.layers.0.self_attn.o_proj.weight"]
    assert o["offset"] == [0, 32] and o["shape"] == [64, 32]  # row-parallel: columns 32..63
    spans = sorted((s["byte_offset"], s["byte_offset"] + s["nbytes"]) for s in tp.shards(0))
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # shards never overlap
    assert spans[-1][1] <= tp.buffer_bytes(0)


def test_plan_fsdp_to_tp_delivers_every_byte_once_per_replica():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src = shardwire.Layout.from_string(model, "fsdp=2")
    dst = shardwire.Layout.from_string(model, "tp=2,dp=2")
    plan = shardwire.plan(src, dst)
    received = plan.bytes_received_per_destination()
    # every destination rank receives exactly the bytes of its shards (replicated ones whole)
    for rank in range(4):
        assert received[rank] == sum(s["nbytes"] for s in dst.shards(rank))
    assert plan.total_bytes == sum(received)
    assert sum(plan.bytes_sent_per_source()) == plan.total_bytes


def test_plan_moves_reassemble_destination_from_source_buffers():
    """Executes a plan with torch copies (an oracle independent of the transport) and checks
    every destination shard equals the slice of the global tensor it should hold."""
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    src = shardwire.Layout.from_string(model, "fsdp=2")
    dst = shardwire.Layout.from_string(model, "tp=2")
    full = {t["name"]: torch.randn(t["shape"]).to(torch.bfloat16) for t in model.tensors}
    src_bufs = [torch.zeros(src.buffer_bytes(r), dtype=torch.uint8) for r in range(2)]
    for r in range(2):
        views = shardwire.shard_views(src_bufs[r], src, r)
        for s in src.shards(r):
            idx = tuple(slice(o, o + n) for o, n in zip(s["offset"], s["shape"]))
            views[s["name"]].copy_(full[s["name"]][idx])
    plan = shardwire.plan(src, dst)
    for d in range(2):
        out = torch.zeros(dst.buffer_bytes(d), dtype=torch.uint8)
        for mv in plan.moves_to(d):
            for i in range(mv["count"]):
                so, do = mv["src_offset"] + i * mv["src_stride"], mv["dst_offset"] + i * mv["dst_stride"]
                out[do:do + mv["length"]] = src_bufs[mv["src_rank"]][so:so + mv["length"]]
        views = shardwire.shard_views(out, dst, d)
        for s in dst.shards(d):
            idx = tuple(slice(o, o + n) for o, n in zip(s["offset"], s["shape"]))
            assert torch.equal(views[s["name"]], full[s["name"]][idx]), s["name"]


def test_real_checkpoint_describes(shared_models):
    model = shardwire.Model.from_checkpoint(str(shared_models / "tiny-llama3-bf16"))
    assert len(model) == 21 and model.model_type == "llama"
    # independent oracle: the safetensors header read with the standard library
    raw = (shared_models / "tiny-llama3-bf16" / "model.safetensors").read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header.pop("__metadata__", None)
    assert {t["name"]: t["shape"] for t in model.tensors} == {k: v["shape"] for k, v in header.items()}


def test_errors_are_typed_subclasses():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    with pytest.raises(errors.InvalidArgumentError) as e:
        shardwire.Layout.from_string(model, "tp=3")
    assert isinstance(e.value, errors.ShardwireError) and "TP size 3" in str(e.value)
    with pytest.raises(errors.UnsupportedError, match="model_type"):
        shardwire.Model.from_config_json(json.dumps(dict(LLAMA, model_type="no-such-family")))
    with pytest.raises(errors.NotFoundError):
        shardwire.Model.from_checkpoint("/nonexistent/checkpoint.safetensors")
    other = shardwire.Model.from_config_json(json.dumps(dict(LLAMA, hidden_size=128)))
    with pytest.raises(errors.LayoutMismatchError):
        shardwire.plan(shardwire.Layout.from_string(model, "fsdp=2"), shardwire.Layout.from_string(other, "tp=2"))


def test_every_error_code_has_its_class():
    from shardwire import _shardwire
    for code, name in _shardwire.ERROR_CODES:
        cls = errors.error_class(code)
        assert cls is not errors.ShardwireError and cls.code == code
        with pytest.raises(cls, match="boom"):
            _shardwire._raise_error(code, "boom")


def test_shard_views_reject_bad_buffers():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    tp = shardwire.Layout.from_string(model, "tp=2")
    with pytest.raises(errors.InvalidArgumentError, match="needs"):
        shardwire.shard_views(torch.zeros(16, dtype=torch.uint8), tp, 0)
    with pytest.raises(errors.InvalidArgumentError, match="contiguous"):
        shardwire.shard_views(torch.zeros(tp.buffer_bytes(0), dtype=torch.float32), tp, 0)
    with pytest.raises(errors.InvalidArgumentError, match="shard buffer of rank 0"):
        shardwire.shard_views(12345, tp, 0)  # no buffer protocol at all


def test_out_of_range_ranks_are_invalid_argument_errors():
    model = shardwire.Model.from_config_json(json.dumps(LLAMA))
    fsdp, tp = shardwire.Layout.from_string(model, "fsdp=2"), shardwire.Layout.from_string(model, "tp=2")
    plan = shardwire.plan(fsdp, tp)
    for call in (lambda: tp.buffer_bytes(2), lambda: tp.shards(-1), lambda: plan.moves_to(2),
                 lambda: plan.sources_of(5)):
        with pytest.raises(errors.InvalidArgumentError, match="outside its 2 ranks"):
            call()
    assert plan.sources_of(1) == [0, 1]


def test_a_rules_file_describes_a_family_nobody_described(tmp_path):
    """Python had no way to pass a rules file (the CLI's --model-rules): a model_type without
    built-in rules could not be described. load_model_rules registers one for the process; a
    second file for the same model_type is refused naming both."""
    config = {"model_type": "py-ssm-toy", "hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 10,
              "torch_dtype": "float32"}
    with pytest.raises(errors.UnsupportedError, match="py-ssm-toy"):
        shardwire.Model.from_config_json(json.dumps(config))
    rules = tmp_path / "ssm.yaml"
    rules.write_text("family: py-ssm-toy\nmodel_types: [py-ssm-toy]\ntensors:\n"
                     "  - tensor: model.embed_tokens.weight\n    shape: [vocab_size, hidden_size]\n    role: vocab\n"
                     "  - for: layer\n    count: num_hidden_layers\n    do:\n"
                     "      - linear: model.layers.{layer}.mixer.in_proj\n        out: 2 * hidden_size\n"
                     "        in: hidden_size\n        role: column\n")
    shardwire.load_model_rules(str(rules))
    model = shardwire.Model.from_config_json(json.dumps(config))
    shapes = {t["name"]: t["shape"] for t in model.tensors}
    assert shapes == {"model.embed_tokens.weight": [10, 8], "model.layers.0.mixer.in_proj.weight": [16, 8],
                      "model.layers.1.mixer.in_proj.weight": [16, 8]}
    other = tmp_path / "other.yaml"
    other.write_text(rules.read_text())
    with pytest.raises(errors.InvalidArgumentError, match="other.yaml: model_type \"py-ssm-toy\" is described by"):
        shardwire.load_model_rules(str(other))
    with pytest.raises(errors.IoError, match="absent.yaml"):
        shardwire.load_model_rules(str(tmp_path / "absent.yaml"))
    with pytest.raises(errors.InvalidArgumentError):
        shardwire.load_model_rules(3)
