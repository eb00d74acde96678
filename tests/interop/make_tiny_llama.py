#!/usr/bin/env python3
"""Writes a tiny Llama checkpoint the way Hugging Face lays it out, with the Python `safetensors`
package, plus the logits of an independent numpy forward pass, for tests/models/hf_import_test.cpp.

usage: make_tiny_llama.py OUT_DIR [--tied] [--sharded] [--float16] [--seed N] [--vocab V] [--dim D] [--ffn F]

OUT_DIR gets config.json, model.safetensors (or two shards and model.safetensors.index.json with
--sharded), and expected.safetensors holding `tokens` [2, 7] int64 and `logits` [2, 7, vocab]
float32 computed in float64 from the stored weights. The reference follows the Llama definition
(transformers' modeling_llama): RMSNorm in the residual stream, rotary embedding in the rotate-half
layout, grouped-query attention with causal softmax, SwiGLU MLP, final RMSNorm, LM head.
"""
import argparse
import json
import os

import numpy as np
from safetensors.numpy import save_file


def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotate_half(x):
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def forward(w, cfg, tokens):
    d = cfg["hidden_size"]
    nh = cfg["num_attention_heads"]
    nkv = cfg["num_key_value_heads"]
    hd = d // nh
    eps = cfg["rms_norm_eps"]
    B, T = tokens.shape
    f = {k: v.astype(np.float64) for k, v in w.items()}
    x = f["model.embed_tokens.weight"][tokens]  # [B, T, d]
    inv = 1.0 / (cfg["rope_theta"] ** (np.arange(0, hd, 2, dtype=np.float64) / hd))
    ang = np.outer(np.arange(T, dtype=np.float64), inv)
    emb = np.concatenate([ang, ang], axis=-1)
    cos, sin = np.cos(emb), np.sin(emb)  # [T, hd]
    mask = np.triu(np.full((T, T), -np.inf), k=1)
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        h = rms_norm(x, f[p + "input_layernorm.weight"], eps)
        q = (h @ f[p + "self_attn.q_proj.weight"].T).reshape(B, T, nh, hd).transpose(0, 2, 1, 3)
        k = (h @ f[p + "self_attn.k_proj.weight"].T).reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        v = (h @ f[p + "self_attn.v_proj.weight"].T).reshape(B, T, nkv, hd).transpose(0, 2, 1, 3)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k = np.repeat(k, nh // nkv, axis=1)  # kv head j serves query heads j*rep .. j*rep+rep-1
        v = np.repeat(v, nh // nkv, axis=1)
        s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=-1, keepdims=True))
        a = (s / s.sum(axis=-1, keepdims=True)) @ v  # [B, nh, T, hd]
        a = a.transpose(0, 2, 1, 3).reshape(B, T, nh * hd)
        x = x + a @ f[p + "self_attn.o_proj.weight"].T
        h = rms_norm(x, f[p + "post_attention_layernorm.weight"], eps)
        g = h @ f[p + "mlp.gate_proj.weight"].T
        u = h @ f[p + "mlp.up_proj.weight"].T
        x = x + (g / (1.0 + np.exp(-g)) * u) @ f[p + "mlp.down_proj.weight"].T
    x = rms_norm(x, f["model.norm.weight"], eps)
    head = f["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else f["lm_head.weight"]
    return x @ head.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--sharded", action="store_true")
    ap.add_argument("--float16", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vocab", type=int, default=61)
    ap.add_argument("--dim", type=int, default=32)  # hidden_size; 4 heads
    ap.add_argument("--ffn", type=int, default=48)  # intermediate_size
    args = ap.parse_args()

    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": args.dim,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": args.ffn,
        "vocab_size": args.vocab,
        "rms_norm_eps": 1e-5,
        "rope_theta": 500.0,
        "max_position_embeddings": 64,
        "tie_word_embeddings": args.tied,
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "rope_scaling": None,
        "torch_dtype": "float16" if args.float16 else "float32",
    }
    rng = np.random.default_rng(args.seed)
    d, ff, V = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kv = d // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    dtype = np.float16 if args.float16 else np.float32

    def mat(o, i, scale=0.15):
        return (rng.standard_normal((o, i)) * scale).astype(dtype)

    def norm_w():  # not ones, so that a norm mapped to the wrong place shows
        return (1.0 + 0.2 * rng.standard_normal(d)).astype(dtype)

    w = {"model.embed_tokens.weight": mat(V, d, 0.5)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        w[p + "input_layernorm.weight"] = norm_w()
        w[p + "self_attn.q_proj.weight"] = mat(d, d)
        w[p + "self_attn.k_proj.weight"] = mat(kv, d)
        w[p + "self_attn.v_proj.weight"] = mat(kv, d)
        w[p + "self_attn.o_proj.weight"] = mat(d, d)
        w[p + "post_attention_layernorm.weight"] = norm_w()
        w[p + "mlp.gate_proj.weight"] = mat(ff, d)
        w[p + "mlp.up_proj.weight"] = mat(ff, d)
        w[p + "mlp.down_proj.weight"] = mat(d, ff)
    w["model.norm.weight"] = norm_w()
    if not args.tied:
        w["lm_head.weight"] = mat(V, d)

    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "config.json"), "w") as fh:
        json.dump(cfg, fh, indent=2)
    meta = {"format": "pt"}
    if args.sharded:
        names = sorted(w)
        parts = [names[: len(names) // 2], names[len(names) // 2:]]
        files = [f"model-0000{i + 1}-of-00002.safetensors" for i in range(2)]
        weight_map = {}
        for part, fname in zip(parts, files):
            save_file({n: w[n] for n in part}, os.path.join(args.out, fname), metadata=meta)
            weight_map.update({n: fname for n in part})
        total = int(sum(t.nbytes for t in w.values()))
        with open(os.path.join(args.out, "model.safetensors.index.json"), "w") as fh:
            json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, fh, indent=2)
    else:
        save_file(w, os.path.join(args.out, "model.safetensors"), metadata=meta)

    tokens = rng.integers(0, V, size=(2, 7)).astype(np.int64)
    logits = forward(w, cfg, tokens).astype(np.float32)
    save_file({"tokens": tokens, "logits": logits}, os.path.join(args.out, "expected.safetensors"))


if __name__ == "__main__":
    main()
