#!/usr/bin/env python3
"""GGUF llama models written by llama.cpp's gguf-py, and what Hugging Face transformers computes from
them (LlamaForCausalLM.from_pretrained(..., gguf_file=...), float32), for
tests/interop/gguf_llama_test.cpp.

usage: make_tiny_gguf_llama.py OUT_DIR [--tied] [--seed N]        a tiny random model
       make_tiny_gguf_llama.py OUT_DIR --model FILE.gguf            an existing GGUF (e.g. SmolLM2)
       make_tiny_gguf_llama.py OUT_DIR --variant NAME                a malformed file for error tests

The tiny model (dim 256, 2 blocks, 4 heads / 2 KV heads, SwiGLU 512, vocab 320) is written the way
llama.cpp's convert_hf_to_gguf.py writes a Llama: its names, its metadata, and q / k rows permuted
for ggml's RoPE. Its weights use every type bitqat reads: block 0 Q4_0 / Q4_1 / Q5_0 / Q5_1 for
attention (quantized by gguf-py from random floats) and random-byte Q4_K / Q5_K / Q6_K blocks for the
FFN (gguf-py has no K quantizers), block 1 F16 / BF16 / Q8_0 / F32, the embedding Q8_0, an untied
head Q6_K. OUT_DIR/expected.safetensors: tokens int64 [2, 33], logits float32 [2, 32, vocab] for
tokens[:, :32] and loss float64 [1] (mean cross-entropy of predicting tokens[:, 1:]), computed by
transformers from the GGUF file. Variants: arch (general.architecture qwen2), truncated (the tiny
file cut short), bias (an extra blk.0.attn_q.bias), rope_scaling (llama.rope.scaling.type linear).
"""
import argparse
import os

import numpy as np
import torch
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import quantize
from safetensors.numpy import save_file

DIM, LAYERS, HEADS, KV, FFN, VOCAB = 256, 2, 4, 2, 512, 320


def permute(w, n_head):
    """llama.cpp's LlamaModel.permute: HF rotate-half rows -> ggml's interleaved pairs."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def k_blocks(rng, qtype, rows, cols):
    block, size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(rows * cols // block, size), dtype=np.uint8)
    offsets = [208] if qtype == T.Q6_K else [0, 2]
    for off in offsets:
        s = (rng.uniform(0.5, 1.0, raw.shape[0]) * (0.0001 if qtype != T.Q6_K else 0.00003)).astype(np.float16)
        raw[:, off : off + 2] = s.view(np.uint8).reshape(-1, 2)
    return raw.reshape(rows, cols // block * size)


def add(w, name, x, qtype):
    if qtype == T.F32:
        w.add_tensor(name, x.astype(np.float32))
    else:
        w.add_tensor(name, quantize(x.astype(np.float32), qtype), raw_dtype=qtype)


def write_tiny(path, seed, tied, variant):
    rng = np.random.default_rng(seed)
    hd = DIM // HEADS
    w = GGUFWriter(path, "qwen2" if variant == "arch" else "llama")
    arch = "qwen2" if variant == "arch" else "llama"
    w.add_uint32(f"{arch}.context_length", 64)
    w.add_uint32(f"{arch}.embedding_length", DIM)
    w.add_uint32(f"{arch}.block_count", LAYERS)
    w.add_uint32(f"{arch}.feed_forward_length", FFN)
    w.add_uint32(f"{arch}.attention.head_count", HEADS)
    w.add_uint32(f"{arch}.attention.head_count_kv", KV)
    w.add_float32(f"{arch}.rope.freq_base", 10000.0)
    w.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_uint32(f"{arch}.rope.dimension_count", hd)
    w.add_uint32(f"{arch}.vocab_size", VOCAB)
    if variant == "rope_scaling":
        w.add_string(f"{arch}.rope.scaling.type", "linear")
        w.add_float32(f"{arch}.rope.scaling.factor", 2.0)
    # A byte-level GPT-2 style vocabulary (transformers' GGUF loader wants a tokenizer).
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list([f"t{i}" for i in range(VOCAB)])
    w.add_token_types([1] * VOCAB)
    w.add_token_merges([])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)

    g = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.05
    add(w, "token_embd.weight", g(VOCAB, DIM) * 2, T.Q8_0)
    types = [
        {"q": T.Q4_0, "k": T.Q4_1, "v": T.Q5_0, "o": T.Q5_1},
        {"q": T.F16, "k": T.BF16, "v": T.Q8_0, "o": T.F32},
    ]
    for i in range(LAYERS):
        p = f"blk.{i}."
        add(w, p + "attn_norm.weight", 1 + g(DIM), T.F32)
        add(w, p + "attn_q.weight", permute(g(HEADS * hd, DIM), HEADS), types[i]["q"])
        add(w, p + "attn_k.weight", permute(g(KV * hd, DIM), KV), types[i]["k"])
        add(w, p + "attn_v.weight", g(KV * hd, DIM), types[i]["v"])
        add(w, p + "attn_output.weight", g(DIM, HEADS * hd), types[i]["o"])
        if variant == "bias" and i == 0:
            add(w, p + "attn_q.bias", g(HEADS * hd), T.F32)
        add(w, p + "ffn_norm.weight", 1 + g(DIM), T.F32)
        if i == 0:
            w.add_tensor(p + "ffn_gate.weight", k_blocks(rng, T.Q4_K, FFN, DIM), raw_dtype=T.Q4_K)
            w.add_tensor(p + "ffn_up.weight", k_blocks(rng, T.Q5_K, FFN, DIM), raw_dtype=T.Q5_K)
            w.add_tensor(p + "ffn_down.weight", k_blocks(rng, T.Q6_K, DIM, FFN), raw_dtype=T.Q6_K)
        else:
            add(w, p + "ffn_gate.weight", g(FFN, DIM), T.F32)
            add(w, p + "ffn_up.weight", g(FFN, DIM), T.F32)
            add(w, p + "ffn_down.weight", g(DIM, FFN), T.F32)
    add(w, "output_norm.weight", 1 + g(DIM), T.F32)
    if not tied:
        w.add_tensor("output.weight", k_blocks(rng, T.Q6_K, VOCAB, DIM), raw_dtype=T.Q6_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    if variant == "truncated":
        size = os.path.getsize(path)
        with open(path, "r+b") as f:
            f.truncate(size - 1000)


def expected_from_transformers(path, out, tokens):
    from transformers import LlamaForCausalLM
    from transformers.utils import logging

    logging.set_verbosity_error()
    directory, name = os.path.split(os.path.abspath(path))
    model = LlamaForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    model.eval()
    t = torch.tensor(tokens, dtype=torch.int64)
    with torch.no_grad():
        logits = model(t[:, :-1]).logits.float()
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), t[:, 1:].reshape(-1))
    save_file(
        {"tokens": t.numpy(), "logits": logits.numpy(), "loss": np.array([loss.item()], dtype=np.float64)},
        os.path.join(out, "expected.safetensors"),
    )
    print(f"transformers: loss {loss.item():.6f} on {t[:, 1:].numel()} tokens")


def text_tokens(path):
    """Two rows of 129 tokens of a fixed text, from the GGUF's own tokenizer."""
    from transformers import AutoTokenizer

    directory, name = os.path.split(os.path.abspath(path))
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    text = (
        "In the beginning God created the heaven and the earth. And the earth was without form, and void; and "
        "darkness was upon the face of the deep. And the Spirit of God moved upon the face of the waters. And God "
        "said, Let there be light: and there was light. And God saw the light, that it was good: and God divided the "
        "light from the darkness. And God called the light Day, and the darkness he called Night. And the evening "
        "and the morning were the first day. And God said, Let there be a firmament in the midst of the waters, and "
        "let it divide the waters from the waters. And God made the firmament, and divided the waters which were "
        "under the firmament from the waters which were above the firmament: and it was so. And God called the "
        "firmament Heaven. And the evening and the morning were the second day. And God said, Let the waters under "
        "the heaven be gathered together unto one place, and let the dry land appear: and it was so. And God called "
        "the dry land Earth; and the gathering together of the waters called he Seas: and God saw that it was good. "
        "And God said, Let the earth bring forth grass, the herb yielding seed, and the fruit tree yielding fruit "
        "after his kind, whose seed is in itself, upon the earth: and it was so. And the earth brought forth grass, "
        "and herb yielding seed after his kind, and the tree yielding fruit, whose seed was in itself, after his "
        "kind: and God saw that it was good. And the evening and the morning were the third day."
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) >= 258, len(ids)
    return [ids[:129], ids[129:258]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tied", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default=None)
    ap.add_argument("--variant", default=None, choices=["arch", "truncated", "bias", "rope_scaling"])
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    if a.model:
        expected_from_transformers(a.model, a.out, text_tokens(a.model))
        return
    path = os.path.join(a.out, "model.gguf")
    write_tiny(path, a.seed, a.tied, a.variant)
    if a.variant is None:
        rng = np.random.default_rng(a.seed + 100)
        expected_from_transformers(path, a.out, rng.integers(0, VOCAB, size=(2, 33)).tolist())


if __name__ == "__main__":
    main()
