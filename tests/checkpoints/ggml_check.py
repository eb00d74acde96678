"""Cross-check of a bitqat GGUF file with llama.cpp's own C code (the libggml-base built by the
pinned llama-cpp-python, launch/setup.sh --tests): llama.cpp's GGUF reader (gguf_init_from_file)
must parse the file, ggml_validate_row_data must accept every tensor's bytes, and ggml's reference
dequantizers (the to_float of ggml_get_type_traits: dequantize_row_q2_0, dequantize_row_q1_0,
dequantize_row_tq2_0, ...) must give exactly the values bitqat expects. gguf-py has no dequantizer
for Q2_0 or Q1_0, so this is the independent reader for those types.

usage: ggml_check.py FILE.gguf EXPECTED.safetensors
EXPECTED holds, per tensor name, the float32 values in torch order (ne reversed). Prints one line
per check and exits 1 on any mismatch.
"""
import ctypes
import glob
import os
import sys

import numpy as np
from safetensors.numpy import load_file


class GgufInitParams(ctypes.Structure):
    _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]


class GgmlTypeTraits(ctypes.Structure):  # ggml.h struct ggml_type_traits
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


def load_ggml_base():
    import llama_cpp  # the pinned llama-cpp-python; its lib/ holds the llama.cpp it built

    libs = glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-base.so*"))
    if not libs:
        raise SystemExit("libggml-base.so not found beside llama_cpp; run launch/setup.sh --tests")
    g = ctypes.CDLL(libs[0])
    g.gguf_init_from_file.restype = ctypes.c_void_p
    g.gguf_init_from_file.argtypes = [ctypes.c_char_p, GgufInitParams]
    for name, res in [("gguf_get_n_tensors", ctypes.c_int64), ("gguf_get_data_offset", ctypes.c_size_t)]:
        getattr(g, name).restype = res
        getattr(g, name).argtypes = [ctypes.c_void_p]
    for name, res in [
        ("gguf_get_tensor_name", ctypes.c_char_p),
        ("gguf_get_tensor_type", ctypes.c_int),
        ("gguf_get_tensor_offset", ctypes.c_size_t),
        ("gguf_get_tensor_size", ctypes.c_size_t),
    ]:
        getattr(g, name).restype = res
        getattr(g, name).argtypes = [ctypes.c_void_p, ctypes.c_int64]
    g.gguf_free.argtypes = [ctypes.c_void_p]
    g.ggml_get_type_traits.restype = ctypes.POINTER(GgmlTypeTraits)
    g.ggml_get_type_traits.argtypes = [ctypes.c_int]
    g.ggml_validate_row_data.restype = ctypes.c_bool
    g.ggml_validate_row_data.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t]
    return g


def main() -> int:
    path, expected = sys.argv[1], load_file(sys.argv[2])
    g = load_ggml_base()
    ctx = g.gguf_init_from_file(path.encode(), GgufInitParams(True, None))
    if not ctx:
        print("llama.cpp's gguf_init_from_file refused the file")
        return 1
    raw = open(path, "rb").read()
    base = g.gguf_get_data_offset(ctx)
    tensors = {}
    for i in range(g.gguf_get_n_tensors(ctx)):
        tensors[g.gguf_get_tensor_name(ctx, i).decode()] = (
            g.gguf_get_tensor_type(ctx, i),
            base + g.gguf_get_tensor_offset(ctx, i),
            g.gguf_get_tensor_size(ctx, i),
        )
    g.gguf_free(ctx)
    to_float_t = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)
    bad = 0
    for name, want in expected.items():
        if name not in tensors:
            print(f"MISSING {name}")
            bad += 1
            continue
        ttype, off, size = tensors[name]
        traits = g.ggml_get_type_traits(ttype).contents
        buf = ctypes.create_string_buffer(raw[off : off + size], size)
        valid = g.ggml_validate_row_data(ttype, buf, size)
        got = np.zeros(want.size, dtype=np.float32)
        if traits.to_float:
            to_float_t(traits.to_float)(buf, got.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), want.size)
        else:  # F32: the bytes are the values
            got = np.frombuffer(raw[off : off + size], dtype=np.float32).copy()
        got = got.reshape(want.shape)
        diff = float(np.max(np.abs(got - want))) if want.size else 0.0
        ok = valid and diff == 0.0
        bad += not ok
        print(f"{'ok' if ok else 'MISMATCH'} {name} {traits.type_name.decode()} valid {valid} max_abs_diff {diff}")
    print(f"{len(expected)} tensors checked, {bad} bad")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
