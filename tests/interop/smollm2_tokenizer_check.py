#!/usr/bin/env python3
"""Hugging Face's token ids for texts, with the tokenizer of a GGUF file, for
tests/interop/gguf_tokenizer_test.cpp.

usage: smollm2_tokenizer_check.py MODEL.gguf CASES.json OUT.json

CASES.json is a JSON list of strings. The tokenizer is loaded as tools/prepare_shards.py loads it
(transformers' AutoTokenizer with gguf_file=), so "shards" holds the ids the training shards were made
of: tokenizer.encode(text, add_special_tokens=False). transformers builds that tokenizer with GPT-2's
ByteLevel pre-tokenizer whatever the file's tokenizer.ggml.pre says; "own" holds the ids of the same
vocabulary behind the pre-tokenizer SmolLM2's tokenizer.json has (and llama.cpp runs for pre type
"smollm"): Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)].
OUT.json: {"pre_tokenizer": <transformers' pre-tokenizer>, "shards": [[ids]...], "own": [[ids]...]}.
"""
import json
import os
import sys


def main():
    model, cases_path, out_path = sys.argv[1:4]
    from tokenizers import Tokenizer, pre_tokenizers
    from transformers import AutoTokenizer
    from transformers.utils import logging

    logging.set_verbosity_error()
    directory, name = os.path.split(os.path.abspath(model))
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    own = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    own.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True),
         pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    with open(cases_path, encoding="utf-8") as f:
        cases = json.load(f)
    out = {
        "pre_tokenizer": json.loads(tok.backend_tokenizer.to_str())["pre_tokenizer"],
        "shards": [tok.encode(c, add_special_tokens=False) for c in cases],
        "own": [own.encode(c, add_special_tokens=False).ids for c in cases],
    }
    with open(out_path, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
