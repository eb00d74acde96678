#!/usr/bin/env python3
"""Checks bitqat's Llama tensor name table (interop/llama_tensor_names.cpp) against sources that do not
share it: gguf-py's constants (MODEL_TENSORS, TENSOR_NAMES and its TensorNameMap from Hugging Face
names) and the parameters of transformers' own LlamaForCausalLM and BitNetForCausalLM built with the
same sizes.

usage: llama_tensor_names_check.py TABLE.json

TABLE.json: {"config": {vocab_size, dim, n_layers, n_heads, n_kv_heads, ffn_dim}, "models": [{"arch":
"llama" | "bitnet", "tied": bool, "tensors": [{"hf", "gguf", "shape"}, ...]}, ...]}, names without the
".weight" every tensor carries. Prints one line per problem and a summary per model; exits 1 on any.
"""
import json
import sys

import gguf


def gguf_names(arch, n_layers):
    """Every tensor name gguf-py gives the architecture, and its Hugging Face name map."""
    a = {"llama": gguf.MODEL_ARCH.LLAMA, "bitnet": gguf.MODEL_ARCH.BITNET}[arch]
    names = set()
    for t in gguf.MODEL_TENSORS[a]:
        pattern = gguf.TENSOR_NAMES[t]
        names.update({pattern.format(bid=b) for b in range(n_layers)} if "{bid}" in pattern else {pattern})
    return names, gguf.get_tensor_name_map(a, n_layers)


def transformers_params(arch, cfg, tied):
    import torch
    from transformers import BitNetConfig, BitNetForCausalLM, LlamaConfig, LlamaForCausalLM

    kw = dict(
        vocab_size=cfg["vocab_size"],
        hidden_size=cfg["dim"],
        intermediate_size=cfg["ffn_dim"],
        num_hidden_layers=cfg["n_layers"],
        num_attention_heads=cfg["n_heads"],
        num_key_value_heads=cfg["n_kv_heads"],
        tie_word_embeddings=tied,
        bos_token_id=None,
        eos_token_id=None,
        pad_token_id=None,
    )
    config, model_class = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (BitNetConfig, BitNetForCausalLM)
    with torch.device("meta"):
        model = model_class(config(**kw))
    # named_parameters drops a tied head (it is the embedding); buffers (rotary inv_freq) are not weights.
    return {name: list(p.shape) for name, p in model.named_parameters()}


def check(model, cfg):
    arch, tensors = model["arch"], model["tensors"]
    bad = []
    known, name_map = gguf_names(arch, cfg["n_layers"])
    params = transformers_params(arch, cfg, model["tied"])
    ours = {t["hf"] + ".weight": t["shape"] for t in tensors}
    if ours != params:
        for name in sorted(set(ours) | set(params)):
            if ours.get(name) != params.get(name):
                bad.append(f"{arch}: {name}: bitqat {ours.get(name)}, transformers {params.get(name)}")
    for t in tensors:
        if t["gguf"] not in known:
            bad.append(f"{arch}: {t['gguf']} is not a gguf-py tensor name of {arch}")
        mapped = name_map.get_name(t["hf"] + ".weight", try_suffixes=(".weight",))
        # gguf-py maps BitNet's SubLN norms from the 1bitLLM checkpoints' names (inner_attn_ln,
        # ffn_layernorm); transformers' BitNetForCausalLM (the names checked above) calls them
        # attn_sub_norm and ffn_sub_norm, which gguf-py does not know.
        if mapped is None and t["gguf"].endswith("_sub_norm"):
            continue
        if mapped != t["gguf"] + ".weight":
            bad.append(f"{arch}: gguf-py maps {t['hf']}.weight to {mapped}, bitqat to {t['gguf']}.weight")
    for b in bad:
        print("MISMATCH", b)
    print(f"{arch} ({'tied' if model['tied'] else 'untied'}): {len(tensors)} tensors checked, {len(bad)} bad")
    return len(bad)


def main():
    table = json.load(open(sys.argv[1]))
    return 1 if sum(check(m, table["config"]) for m in table["models"]) else 0


if __name__ == "__main__":
    sys.exit(main())
