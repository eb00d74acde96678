#!/usr/bin/env python3
"""Tokenize text files with a model's own tokenizer into llm.c token shards for `data: {kind: shards}`.

usage: prepare_shards.py --tokenizer PATH --out DIR [--name NAME] [--val-fraction F | --val FILE [--val FILE ...]]
                         [--boundary tokenizer|eos|none] [--shard-tokens N] TEXT [TEXT ...]

--tokenizer is a Hugging Face model or tokenizer directory (tokenizer.json, tokenizer_config.json) or
a GGUF file (its tokenizer.ggml.* metadata), loaded with transformers' AutoTokenizer. transformers
gives a GGUF's BPE tokenizer GPT-2's pre-tokenizer whatever tokenizer.ggml.pre says; the pre-tokenizer
the file names is put back ("smollm": each digit on its own first, as SmolLM2's tokenizer.json and
llama.cpp do), and a BPE GGUF whose pre type is neither gpt-2 nor smollm is refused (use the model's
Hugging Face directory), so the shards hold the ids the model's own tokenizer gives.

Each TEXT file is one document. Between documents the tokenizer's own settings decide (--boundary
tokenizer, the default): each document is encoded with add_special_tokens=True, so it gets exactly
the BOS / EOS the tokenizer adds to any text (Llama 2 and 3 tokenizers add BOS; GPT-2-style ones such
as SmolLM2's add nothing, and documents then follow each other directly). --boundary eos appends the
tokenizer's EOS token after each document as well; --boundary none adds no special token at all.
What was added is printed and written to the manifest.

Output (llm.c's format, dev/data/data_common.py): NAME_train_XXXXXX.bin and NAME_val_XXXXXX.bin, a
header of 256 int32 (magic, version, token count) then the tokens: magic 20240520 version 1 with
uint16 tokens when every id fits (vocabulary up to 65,536), else magic 20240801 version 7 with
uint32 tokens. --val-fraction F holds out the last floor(F * n) tokens of the whole stream (as
bitqat's data.val_fraction does); --val FILE tokenizes separate validation documents instead.
DIR/NAME.manifest.json records the tokenizer, the source files (size, SHA-256), the boundary
handling and the token counts. Files are written to a temporary name and renamed.
"""
import argparse
import glob
import hashlib
import json
import math
import os
import sys

import numpy as np

LAYOUTS = {  # llm.c's HEADERS_INFO
    "uint16": {"magic": 20240520, "version": 1, "dtype": np.uint16},
    "uint32": {"magic": 20240801, "version": 7, "dtype": np.uint32},
}


def read_shards(pattern):
    """The tokens (int64) of every shard the glob matches, in sorted order, as bitqat reads a data.train
    or data.val glob. ValueError naming the file when none matches, one has no header of LAYOUTS, or its
    size is not the header's token count."""
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise ValueError(f"{pattern}: no file matches")
    dtypes = {(info["magic"], info["version"]): info["dtype"] for info in LAYOUTS.values()}
    parts = []
    for path in paths:
        header = np.fromfile(path, dtype="<i4", count=256)
        key = (int(header[0]), int(header[1])) if header.size == 256 else None
        if key not in dtypes:
            raise ValueError(f"{path}: not an llm.c token shard (expected magic 20240520 version 1 or "
                             f"20240801 version 7 in a 1024-byte header)")
        dtype = np.dtype(dtypes[key]).newbyteorder("<")
        count = int(header[2])
        expected = 1024 + count * dtype.itemsize
        if count < 0 or os.path.getsize(path) != expected:
            raise ValueError(f"{path}: the header says {count} tokens ({expected} bytes), the file has "
                             f"{os.path.getsize(path)} bytes")
        parts.append(np.fromfile(path, dtype=dtype, count=count, offset=1024).astype(np.int64))
    return np.concatenate(parts)


def fail(msg):
    print(f"prepare_shards: {msg}", file=sys.stderr)
    sys.exit(2)


def gguf_string(reader, key):
    f = reader.fields.get(key)
    return None if f is None else bytes(f.parts[f.data[0]]).decode("utf-8")


def set_gguf_pre_tokenizer(tok, path):
    """The pre-tokenizer a GGUF's tokenizer.ggml.pre names, on transformers' tokenizer of it."""
    from gguf import GGUFReader
    from tokenizers import pre_tokenizers

    reader = GGUFReader(path)
    if gguf_string(reader, "tokenizer.ggml.model") != "gpt2":
        return  # SentencePiece and other models: transformers builds them as the file says
    pre = gguf_string(reader, "tokenizer.ggml.pre") or "gpt-2"
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("gpt-2", "default"):
        tok.backend_tokenizer.pre_tokenizer = byte_level
    elif pre == "smollm":
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        fail(f"--tokenizer {path}: tokenizer.ggml.pre = {pre}: only gpt-2 and smollm are known here "
             "(transformers ignores the key when it loads a GGUF); pass the model's Hugging Face directory, "
             "whose tokenizer.json holds its pre-tokenizer")


def load_tokenizer(path):
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()  # no warnings about texts longer than the model's context
    try:
        if os.path.isfile(path):
            with open(path, "rb") as f:
                if f.read(4) != b"GGUF":
                    fail(f"--tokenizer {path}: not a GGUF file (magic) and not a directory")
            directory, name = os.path.split(os.path.abspath(path))
            tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
            set_gguf_pre_tokenizer(tok, path)
            return tok, "gguf"
        if os.path.isdir(path):
            return AutoTokenizer.from_pretrained(path), "hf"
    except (OSError, ValueError, KeyError) as e:
        fail(f"--tokenizer {path}: transformers could not load a tokenizer from it: {e}")
    fail(f"--tokenizer {path}: no such file or directory")


def special_tokens_added(tok):
    """The ids the tokenizer adds before and after any text (add_special_tokens=True)."""
    probe = "a"
    plain = tok(probe, add_special_tokens=False)["input_ids"]
    full = tok(probe, add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            return full[:start], full[start + len(plain) :]
    fail("cannot tell which special tokens the tokenizer adds (the probe text was changed)")


def encode_documents(tok, files, boundary):
    parts = []
    for path in files:
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            fail(f"{path}: cannot read it as UTF-8 text: {e}")
        ids = tok(text, add_special_tokens=boundary != "none")["input_ids"]
        if boundary == "eos":
            ids.append(tok.eos_token_id)
        parts.append(np.asarray(ids, dtype=np.int64))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def file_info(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": os.path.abspath(path), "bytes": os.path.getsize(path), "sha256": h.hexdigest()}


def write_atomic(path, write):
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_shards(out_dir, name, split, ids, layout, shard_tokens):
    info = LAYOUTS[layout]
    files = []
    count = max(1, math.ceil(len(ids) / shard_tokens))
    for i in range(count):
        part = np.asarray(ids[i * shard_tokens : (i + 1) * shard_tokens], dtype=info["dtype"])
        header = np.zeros(256, dtype=np.int32)
        header[:3] = [info["magic"], info["version"], len(part)]
        path = os.path.join(out_dir, f"{name}_{split}_{i:06d}.bin")
        write_atomic(path, lambda f: (f.write(header.tobytes()), f.write(part.tobytes())))
        files.append(os.path.basename(path))
    return files


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokenizer", required=True, help="Hugging Face directory or GGUF file")
    p.add_argument("--out", required=True, help="output directory (created)")
    p.add_argument("--name", default="data", help="shard file prefix (default: data)")
    p.add_argument("--val-fraction", type=float, default=None, help="hold out the last fraction of tokens")
    p.add_argument("--val", action="append", default=None,
                   help="a separate validation text file (repeat for several)")
    p.add_argument("--boundary", choices=["tokenizer", "eos", "none"], default="tokenizer")
    p.add_argument("--shard-tokens", type=int, default=100_000_000, help="tokens per shard file")
    p.add_argument("text", nargs="+", help="training text files (one document each)")
    a = p.parse_args()
    if (a.val_fraction is None) == (a.val is None):
        fail("give exactly one of --val-fraction F or --val FILE (repeatable)")
    if a.val_fraction is not None and not 0.0 < a.val_fraction < 1.0:
        fail(f"--val-fraction {a.val_fraction}: expected a number in (0, 1)")
    if a.shard_tokens < 1 or a.shard_tokens >= 2**31:
        fail(f"--shard-tokens {a.shard_tokens}: expected an integer in [1, 2^31)")
    if "/" in a.name or not a.name:
        fail(f"--name {a.name!r}: expected a file name prefix without '/'")
    for f in a.text + (a.val or []):
        if not os.path.isfile(f):
            fail(f"{f}: no such file")

    tok, kind = load_tokenizer(a.tokenizer)
    vocab = len(tok)
    if a.boundary == "eos" and tok.eos_token_id is None:
        fail(f"--boundary eos: the tokenizer of {a.tokenizer} has no EOS token")
    before, after = special_tokens_added(tok) if a.boundary != "none" else ([], [])
    eos = [tok.eos_token_id] if a.boundary == "eos" else []
    names = lambda ids: [f"{tok.convert_ids_to_tokens(i)} ({i})" for i in ids]
    if before or after or eos:
        stated = (f"each document starts with {names(before) or 'nothing'} and ends with "
                  f"{names(after + eos) or 'nothing'}")
    else:
        stated = "no special token is added: documents follow each other directly"
    print(f"tokenizer {a.tokenizer} ({kind}, {type(tok).__name__}): vocabulary {vocab}; --boundary {a.boundary}: "
          f"{stated}")

    train = encode_documents(tok, a.text, a.boundary)
    if a.val is not None:
        val = encode_documents(tok, a.val, a.boundary)
    else:
        n_val = int(len(train) * a.val_fraction)
        train, val = train[: len(train) - n_val], train[len(train) - n_val :]
    top = max(int(train.max(initial=0)), int(val.max(initial=0)))
    if top >= vocab:
        fail(f"token id {top} is outside the tokenizer's own vocabulary of {vocab}")
    layout = "uint16" if vocab <= 65536 else "uint32"

    os.makedirs(a.out, exist_ok=True)
    train_files = write_shards(a.out, a.name, "train", train, layout, a.shard_tokens)
    val_files = write_shards(a.out, a.name, "val", val, layout, a.shard_tokens)
    manifest = {
        "format": "bitqat-shards",
        "version": 1,
        "tokenizer": {
            "source": os.path.abspath(a.tokenizer),
            "kind": kind,
            "class": type(tok).__name__,
            "vocab_size": vocab,
            "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        "boundary": {"mode": a.boundary, "document_start": before, "document_end": after + eos, "stated": stated},
        "layout": {"token_dtype": layout, "magic": LAYOUTS[layout]["magic"], "version": LAYOUTS[layout]["version"]},
        "sources": [file_info(f) for f in a.text],
        "validation": ({"fraction": a.val_fraction} if a.val is None else {"sources": [file_info(f) for f in a.val]}),
        "train": {"files": train_files, "tokens": len(train)},
        "val": {"files": val_files, "tokens": len(val)},
    }
    manifest_path = os.path.join(a.out, f"{a.name}.manifest.json")
    write_atomic(manifest_path, lambda f: f.write((json.dumps(manifest, indent=2) + "\n").encode()))
    print(f"train: {len(train):,} tokens in {len(train_files)} file(s); val: {len(val):,} tokens in "
          f"{len(val_files)} file(s); {layout} tokens; manifest {manifest_path}")
    print(f"data: {{kind: shards, train: {os.path.join(a.out, a.name + '_train_*.bin')}, "
          f"val: {os.path.join(a.out, a.name + '_val_*.bin')}, vocab_size: {vocab}}}")


if __name__ == "__main__":
    main()
