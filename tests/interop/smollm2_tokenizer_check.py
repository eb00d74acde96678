#!/usr/bin/env python3
"""Hugging Face's token ids for texts, with the tokenizer of a GGUF file, for
tests/interop/gguf_tokenizer_test.cpp.

usage: smollm2_tokenizer_check.py MODEL.gguf CASES.json OUT.json

CASES.json is a JSON list of strings. "shards" holds the ids tools/prepare_shards.py makes shards of
(its load_tokenizer: transformers' AutoTokenizer with gguf_file=, the file's pre-tokenizer put back):
tokenizer.encode(text, add_special_tokens=False). "own" holds the ids of the same vocabulary behind
the pre-tokenizer SmolLM2's tokenizer.json has (and llama.cpp runs for pre type "smollm"), built here
independently: Sequence[Digits(individual_digits=True), ByteLevel(add_prefix_space=False)].
OUT.json: {"pre_tokenizer": <prepare_shards' pre-tokenizer>, "shards": [[ids]...], "own": [[ids]...]}.
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
    own = Tokenizer.from_str(AutoTokenizer.from_pretrained(directory, gguf_file=name).backend_tokenizer.to_str())
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
    from prepare_shards import load_tokenizer
    tok, _ = load_tokenizer(model)
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
