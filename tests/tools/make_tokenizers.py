#!/usr/bin/env python3
"""Tiny tokenizers whose tokenization of the test texts is known by hand, for
tests/tools/prepare_shards_test.cpp.

usage: make_tokenizers.py OUT_DIR

OUT_DIR/words: a Hugging Face tokenizer directory (tokenizer.json + tokenizer_config.json) with a
  lower-casing word-level model: [UNK] 0, <s> 1, </s> 2, in 3, the 4, beginning 5, god 6, created 7,
  heaven 8, and 9, earth 10, "." 11; its post-processor adds <s> before every text (as Llama's do).
OUT_DIR/wide: a word-level model of 70,001 tokens ([UNK] 0, then wN as N + 1), no special tokens
  added: a vocabulary that needs uint32 shards.
OUT_DIR/tok.gguf: a GPT-2 byte-level BPE in GGUF metadata (written by gguf-py): tokens
  <|endoftext|> 0, a 1, b 2, c 3, \u0120 4, ab 5, \u0120a 6, abc 7; merges "a b", "\u0120 a", "ab c"; no BOS added.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFWriter
from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors
from tokenizers.models import WordLevel


def save_hf(tok, directory, config):
    os.makedirs(directory, exist_ok=True)
    tok.save(os.path.join(directory, "tokenizer.json"))
    with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
        json.dump(dict(tokenizer_class="PreTrainedTokenizerFast", **config), f)


def main():
    out = sys.argv[1]
    words = ["[UNK]", "<s>", "</s>", "in", "the", "beginning", "god", "created", "heaven", "and", "earth", "."]
    tok = Tokenizer(WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    save_hf(tok, os.path.join(out, "words"), {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "[UNK]"})

    vocab = {"[UNK]": 0}
    vocab.update({f"w{n}": n + 1 for n in range(70000)})
    wide = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    wide.pre_tokenizer = pre_tokenizers.Whitespace()
    save_hf(wide, os.path.join(out, "wide"), {"unk_token": "[UNK]"})

    w = GGUFWriter(os.path.join(out, "tok.gguf"), "llama")
    w.add_uint32("llama.context_length", 64)
    w.add_uint32("llama.embedding_length", 32)
    w.add_uint32("llama.block_count", 1)
    w.add_uint32("llama.feed_forward_length", 64)
    w.add_uint32("llama.attention.head_count", 2)
    w.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(["<|endoftext|>", "a", "b", "c", "\u0120", "ab", "\u0120a", "abc"])
    w.add_token_types([3, 1, 1, 1, 1, 1, 1, 1])
    w.add_token_merges(["a b", "\u0120 a", "ab c"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(0)
    w.add_add_bos_token(False)
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
