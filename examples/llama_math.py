"""A Llama forward pass in plain torch, for one tensor-parallel rank of tp_size ranks.

Used by examples/rl_loop.py both by the trainer (tp_size=1, the full model, autograd on) and
by the inference engine (tp_size=2, vLLM-style: fused qkv_proj and gate_up_proj column-parallel,
o_proj and down_proj row-parallel with an all-reduce, embed_tokens and lm_head vocab-parallel).
Shapes follow Hugging Face LlamaForCausalLM; weights are [out_features, in_features].
RoPE: the original (non-scaled) rotary embedding with the config's rope_theta; both sides use
this same function, so the comparison in rl_loop.py is unaffected by that simplification.
"""
from __future__ import annotations

from typing import Callable, Dict

import torch


def rms_norm(x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def rope(x: torch.Tensor, theta: float) -> torch.Tensor:
    """x: [batch, heads, seq, head_dim] -> rotated (HF rotate_half convention)."""
    seq, dim = x.shape[-2], x.shape[-1]
    inv = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs = torch.outer(torch.arange(seq, dtype=torch.float32), inv)
    cos, sin = torch.cat([freqs, freqs], -1).cos(), torch.cat([freqs, freqs], -1).sin()
    x1, x2 = x[..., : dim // 2], x[..., dim // 2:]
    return x * cos + torch.cat([-x2, x1], -1) * sin


def forward(w: Dict[str, torch.Tensor], tokens: torch.Tensor, cfg: dict, tp_rank: int = 0, tp_size: int = 1,
            all_reduce: Callable[[torch.Tensor], torch.Tensor] = lambda t: t,
            all_gather_last: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """Logits [batch, seq, vocab] (fp32) of `tokens` [batch, seq].

    `w`: this rank's weights (fp32 or bf16, computed in fp32): with tp_size=1 the HF tensors;
    with tp_size>1 the vLLM names `qkv_proj` / `gate_up_proj` (each rank's own shards of the
    parts, concatenated), `o_proj` / `down_proj` column shards, and vocab shards of the
    embedding and lm_head. `all_reduce` sums a tensor over the TP group; `all_gather_last`
    concatenates the vocab shards of the logits along the last dim."""
    f = lambda name: w[name].float()  # noqa: E731
    hidden, heads, kv_heads = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim", hidden // heads)
    eps, theta = cfg["rms_norm_eps"], cfg.get("rope_theta", 10000.0)
    lh, lkv = heads // tp_size, kv_heads // tp_size
    emb = f("model.embed_tokens.weight")  # [vocab / tp, hidden]
    lo = tp_rank * emb.shape[0]
    local = tokens - lo
    mask = (local >= 0) & (local < emb.shape[0])
    x = all_reduce(emb[local.clamp(0, emb.shape[0] - 1)] * mask.unsqueeze(-1))
    b, s = tokens.shape
    causal = torch.full((s, s), float("-inf")).triu(1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, f(p + "input_layernorm.weight"), eps)
        if tp_size == 1:
            q, k, v = h @ f(p + "self_attn.q_proj.weight").T, h @ f(p + "self_attn.k_proj.weight").T, \
                h @ f(p + "self_attn.v_proj.weight").T
        else:
            q, k, v = (h @ f(p + "self_attn.qkv_proj.weight").T).split([lh * head_dim, lkv * head_dim,
                                                                       lkv * head_dim], -1)
        q = rope(q.view(b, s, lh, head_dim).transpose(1, 2), theta)
        k = rope(k.view(b, s, lkv, head_dim).transpose(1, 2), theta).repeat_interleave(lh // lkv, 1)
        v = v.view(b, s, lkv, head_dim).transpose(1, 2).repeat_interleave(lh // lkv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / head_dim ** 0.5 + causal, -1) @ v
        x = x + all_reduce(att.transpose(1, 2).reshape(b, s, lh * head_dim) @ f(p + "self_attn.o_proj.weight").T)
        h = rms_norm(x, f(p + "post_attention_layernorm.weight"), eps)
        if tp_size == 1:
            gate, up = h @ f(p + "mlp.gate_proj.weight").T, h @ f(p + "mlp.up_proj.weight").T
        else:
            gate, up = (h @ f(p + "mlp.gate_up_proj.weight").T).chunk(2, -1)
        x = x + all_reduce((torch.nn.functional.silu(gate) * up) @ f(p + "mlp.down_proj.weight").T)
    x = rms_norm(x, f("model.norm.weight"), eps)
    return all_gather_last(x @ f("lm_head.weight").T)
