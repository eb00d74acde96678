"""Runs a bitqat GGUF export in llama.cpp itself (the pinned llama-cpp-python, launch/setup.sh --tests)
and writes what llama.cpp computed, for tests/interop/export_gguf_test.cpp to compare with bitqat.

usage: llama_cpp_check.py MODEL.gguf INPUT.safetensors OUT.safetensors
INPUT holds `windows` (int64 [W, T]: token windows, each evaluated from an empty context) and
`text` (uint8 [n]: a sample text's bytes). OUT gets `logits` (float32 [W, T, V]: llama.cpp's logits at
every position of every window) and `tokens` (int64 [m]: llama.cpp's tokenization of the text, no
BOS, specials not parsed). The KV cache is F32 and flash attention off, so that llama.cpp's only
approximations are its own (block-wise 8-bit activations, fp16 block scales).
"""
import sys

import numpy as np
from safetensors.numpy import load_file, save_file


def main() -> int:
    import llama_cpp

    model_path, inp_path, out_path = sys.argv[1:4]
    inp = load_file(inp_path)
    windows, text = inp["windows"], bytes(inp["text"].tolist())
    n_ctx = int(windows.shape[1])
    llm = llama_cpp.Llama(
        model_path=model_path,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        n_threads=2,
        logits_all=True,
        type_k=0,  # GGML_TYPE_F32
        type_v=0,
        flash_attn=False,
        verbose=False,
    )
    print("llama_cpp", llama_cpp.__version__, "n_vocab", llm.n_vocab())
    logits = np.zeros((windows.shape[0], n_ctx, llm.n_vocab()), dtype=np.float32)
    for w in range(windows.shape[0]):
        llm.reset()
        llm.eval([int(t) for t in windows[w]])
        logits[w] = np.asarray(llm.scores[:n_ctx], dtype=np.float32)
    tokens = np.asarray(llm.tokenize(text, add_bos=False, special=False), dtype=np.int64)
    save_file({"logits": logits, "tokens": tokens}, out_path)
    print(f"evaluated {windows.shape[0]} windows of {n_ctx} tokens; text of {len(text)} bytes -> {len(tokens)} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
