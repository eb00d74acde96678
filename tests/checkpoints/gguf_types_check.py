#!/usr/bin/env python3
"""Checks bitqat's GGUF type table (checkpoints/gguf_types.cpp) against sources that do not share it:
gguf-py's constants (GGMLQuantizationType, GGML_QUANT_SIZES, LlamaFileType) and, with --ggml, the
type traits of llama.cpp's own libggml-base (ggml_get_type_traits: type_name, blck_size, type_size).

usage: gguf_types_check.py [--ggml] TABLE

TABLE has one line per row of the table, "number name block_size type_size file_type", then lines
"name NUMBER NAME" with bitqat's ggml_type_name of every number it was asked about. Prints one line
per check and a summary; exits 1 on any mismatch.
"""
import os
import sys


def read_table(path):
    rows, names = [], {}
    for line in open(path):
        f = line.split()
        if f[0] == "name":
            names[int(f[1])] = f[2]
        else:
            rows.append((int(f[0]), f[1], int(f[2]), int(f[3]), int(f[4])))
    return rows, names


def check_gguf_py(rows, names):
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, LlamaFileType

    known = {t.value: t for t in GGMLQuantizationType}
    ftypes = {f.value: f.name for f in LlamaFileType}
    bad, absent = 0, []
    for number, name, block, size, ftype in rows:
        if number not in known:
            absent.append(name)
            print(f"absent {name} ({number}): gguf-py has no such type")
            continue
        t = known[number]
        want_ftype = {"ALL_F32" if name == "F32" else f"MOSTLY_{name}"}
        ftype_ok = ftypes.get(ftype) in want_ftype if ftype >= 0 else not want_ftype & set(ftypes.values())
        ok = t.name == name and GGML_QUANT_SIZES[t] == (block, size) and ftype_ok
        bad += not ok
        print(
            f"{'ok' if ok else 'MISMATCH'} {name} ({number}): gguf-py {t.name} {GGML_QUANT_SIZES[t]}, "
            f"bitqat ({block}, {size}); file type {ftype} = gguf-py {ftypes.get(ftype)}"
        )
    for number, name in sorted(names.items()):
        want = known[number].name if number in known else None
        if want is not None and want != name:
            bad += 1
            print(f"MISMATCH ggml_type_name({number}) = {name}, gguf-py {want}")
    print(f"{len(rows)} types checked against gguf-py, absent from it: {' '.join(absent) or 'none'}; {bad} bad")
    return bad


def check_ggml(rows):
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from ggml_check import load_ggml_base

    g = load_ggml_base()
    bad = 0
    for number, name, block, size, _ in rows:
        tr = g.ggml_get_type_traits(number).contents
        # ggml spells its names in lower case but for the K ("q4_K"): compare them without case.
        got = (tr.type_name.decode().upper() if tr.type_name else None, tr.blck_size, tr.type_size)
        ok = got == (name, block, size)
        bad += not ok
        print(f"{'ok' if ok else 'MISMATCH'} {name} ({number}): ggml {got}, bitqat ({block}, {size})")
    print(f"{len(rows)} types checked against ggml; {bad} bad")
    return bad


def main():
    args = sys.argv[1:]
    ggml = args[0] == "--ggml"
    rows, names = read_table(args[-1])
    return 1 if (check_ggml(rows) if ggml else check_gguf_py(rows, names)) else 0


if __name__ == "__main__":
    sys.exit(main())
