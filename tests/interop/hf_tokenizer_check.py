"""Hugging Face tokenizers against llama.cpp, for tests/interop/gguf_tokenizer_test.cpp.

usage: hf_tokenizer_check.py make DIR TEXT_FILE VOCAB
         trains a byte-level BPE tokenizer (the `tokenizers` package: ByteLevel pre-tokenizer and
         decoder, GPT-2's regex, no prefix space) with VOCAB tokens on TEXT_FILE plus the special
         tokens <s> and </s>, and writes DIR/tokenizer.json and DIR/tokenizer_config.json;
       hf_tokenizer_check.py compare DIR MODEL.gguf TEXT_FILE
         tokenizes TEXT_FILE with DIR/tokenizer.json and writes the ids as an llm.c token shard,
         DIR/sample_hf.bin (how a user makes the shards bitqat trains on: bitqat's data pipeline reads
         them with data::read_shard), and with llama.cpp loading MODEL.gguf (vocab only), written likewise
         to DIR/sample_llama_cpp.bin; prints both counts and "tokens equal" or the first difference;
         exits 1 when they differ.
"""
import json
import os
import sys

import numpy as np


def write_shard(path, ids):
    """llm.c token shard: 256 int32 header (magic 20240520, version 1, token count), then uint16 ids."""
    if any(i < 0 or i > 0xFFFF for i in ids):
        raise SystemExit(f"{path}: token ids outside uint16")
    header = np.zeros(256, dtype="<i4")
    header[:3] = (20240520, 1, len(ids))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(ids, dtype="<u2").tobytes())


def make(out_dir, text_file, vocab):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([text_file], trainer)
    os.makedirs(out_dir, exist_ok=True)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "add_bos_token": False}, f)
    print("vocab", tok.get_vocab_size())
    return 0


def compare(tok_dir, model, text_file):
    import llama_cpp
    from tokenizers import Tokenizer

    text = open(text_file, encoding="utf-8").read()
    want = Tokenizer.from_file(os.path.join(tok_dir, "tokenizer.json")).encode(text).ids
    llm = llama_cpp.Llama(model_path=model, vocab_only=True, verbose=False)
    got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
    write_shard(os.path.join(tok_dir, "sample_hf.bin"), list(want))
    write_shard(os.path.join(tok_dir, "sample_llama_cpp.bin"), list(got))
    print(f"text of {len(text.encode('utf-8'))} bytes: hf {len(want)} tokens, llama.cpp {len(got)} tokens")
    if list(want) == list(got):
        print("tokens equal")
        return 0
    i = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
    print(f"tokens differ at {i}: hf {want[i:i + 5]} llama.cpp {got[i:i + 5]}")
    return 1


if __name__ == "__main__":
    if sys.argv[1] == "make":
        sys.exit(make(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    sys.exit(compare(sys.argv[2], sys.argv[3], sys.argv[4]))
