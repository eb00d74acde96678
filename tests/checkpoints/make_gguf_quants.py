#!/usr/bin/env python3
"""Writes GGUF files with llama.cpp's own Python package (gguf-py) holding one tensor of every type
bitqat dequantizes, and the values gguf-py's dequantizers read back from the written file, for
tests/checkpoints/gguf_quants_test.cpp.

usage: make_gguf_quants.py OUT_DIR

OUT_DIR/quants.gguf: tensors named after their types (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0,
Q4_K, Q5_K, Q6_K), several rows each. The 32-weight types are quantized from random floats by
gguf-py's quantizers; gguf-py has none for the K types, whose blocks are random bytes with finite
fp16 scales. OUT_DIR/expected.safetensors: per tensor, gguf-py's float32 dequantization of the file
as GGUFReader reads it, in torch order (GGUF dims reversed).
OUT_DIR/q3_k.gguf: one Q3_K tensor (a type bitqat refuses).
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFReader, GGUFWriter
from gguf.constants import GGML_QUANT_SIZES
from gguf.quants import dequantize, quantize
from safetensors.numpy import save_file

QUANTIZED_FROM_FLOATS = [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0]
RANDOM_BLOCKS = {  # byte offsets of fp16 scale fields inside a block
    T.Q4_K: [0, 2],
    T.Q5_K: [0, 2],
    T.Q6_K: [208],
}


def random_blocks(rng, qtype, rows, cols):
    block, size = GGML_QUANT_SIZES[qtype]
    n_blocks = rows * cols // block
    raw = rng.integers(0, 256, size=(n_blocks, size), dtype=np.uint8)
    for off in RANDOM_BLOCKS[qtype]:
        scales = (rng.standard_normal(n_blocks) * 0.01).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(rows, cols // block * size)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(11)
    path = os.path.join(out, "quants.gguf")
    w = GGUFWriter(path, "llama")
    for qtype in QUANTIZED_FROM_FLOATS:
        rows, cols = 3, 96
        x = (rng.standard_normal((rows, cols)) * 0.5).astype(np.float32)
        x[0, :32] = 0.0  # an all-zero block (scale 0)
        data = quantize(x, qtype)
        w.add_tensor(qtype.name, data, raw_dtype=qtype)
    for qtype in RANDOM_BLOCKS:
        rows, cols = 3, 512
        w.add_tensor(qtype.name, random_blocks(rng, qtype, rows, cols), raw_dtype=qtype)
    # A 3-D tensor: rows of rows.
    x = rng.standard_normal((2, 3, 64)).astype(np.float32)
    w.add_tensor("Q8_0_3d", quantize(x, T.Q8_0), raw_dtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    expected = {}
    for t in GGUFReader(path).tensors:
        shape = [int(d) for d in reversed(t.shape)]
        expected[t.name] = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(shape)
    save_file(expected, os.path.join(out, "expected.safetensors"))

    w = GGUFWriter(os.path.join(out, "q3_k.gguf"), "llama")
    block, size = GGML_QUANT_SIZES[T.Q3_K]
    w.add_tensor("blk.0.attn_q.weight", np.zeros((2, 256 // block * size), dtype=np.uint8), raw_dtype=T.Q3_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print(f"wrote {path}: {len(expected)} tensors")


if __name__ == "__main__":
    main()
