#!/usr/bin/env python3
"""A synthetic Llama with random weights, written by Hugging Face transformers (save_pretrained:
config.json and safetensors shards), for bench/import_memory.sh.

usage: make_synthetic_llama.py OUT_DIR [--dtype bfloat16|float32] [--layers N]

The shape is TinyLlama-1.1B's (hidden 2048, 22 layers, 32 heads / 4 KV heads, SwiGLU 5632, vocab
32000, untied head): 1,100,048,384 parameters. Weights are drawn by transformers' own
initialisation; the model is built directly in --dtype so that writing it needs one copy.
"""
import argparse
import os

import torch
from transformers import LlamaConfig, LlamaForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--layers", type=int, default=22)
    a = ap.parse_args()
    cfg = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=a.layers, num_attention_heads=32,
                      num_key_value_heads=4, vocab_size=32000, max_position_embeddings=2048, rms_norm_eps=1e-5,
                      rope_theta=10000.0, tie_word_embeddings=False)
    torch.manual_seed(0)
    torch.set_default_dtype(getattr(torch, a.dtype))
    model = LlamaForCausalLM(cfg)
    n = sum(p.numel() for p in model.parameters())
    os.makedirs(a.out, exist_ok=True)
    model.save_pretrained(a.out, max_shard_size="1GB")
    print(f"wrote {a.out}: {n:,} parameters in {a.dtype} ({4 * n / 2**30:.2f} GiB as float32)")


if __name__ == "__main__":
    main()
