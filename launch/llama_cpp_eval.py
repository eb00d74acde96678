#!/usr/bin/env python3
"""Validation loss and perplexity of a GGUF model in llama.cpp (the llama-cpp-python that
`launch/setup.sh --tests` installs), over the same held-out windows `bitqat eval` scores, so the two
numbers can be put side by side.

usage: launch/llama_cpp_eval.py MODEL.gguf (--text data/cache/kjv.txt [--val-fraction 0.02]
                                            | --shards 'data/cache/smollm2/kjv/kjv_val_*.bin')
                                [--seq-len 128] [--windows 256] [--threads 2]

--text, for a byte-level text run (data.kind text): the held-out text is the last
floor(size * val_fraction) bytes of the file (bitqat's data.val_fraction split), which llama.cpp
tokenizes (for bitqat's byte tokenizer: one token per byte). --shards, for a token-shard run
(data.kind shards): the tokens of the files the glob matches (the run's data.val), in sorted order,
as bitqat reads them (llm.c shards, uint16 or uint32 tokens); llama.cpp is given these token ids, so
both programs score the very same tokens. Window w is tokens [w * seq_len, w * seq_len + seq_len + 1),
every position predicts the next token, as `bitqat eval` computes val_loss (train.eval_batches *
train.batch_size windows, or --batches * batch size: pass --windows accordingly). Prints val_loss
(mean nats per token) and perplexity exp(val_loss).
"""
import argparse
import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))
from prepare_shards import read_shards  # noqa: E402  (the shard format's reader beside its writer)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="a text file; its last --val-fraction bytes are held out")
    src.add_argument("--shards", help="a glob of llm.c token shards (a run's data.val)")
    ap.add_argument("--val-fraction", type=float, default=0.02)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--windows", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    try:
        import llama_cpp
    except ImportError:
        print("llama_cpp is not installed: run launch/setup.sh --tests", file=sys.stderr)
        return 2
    if a.shards is not None:
        try:
            tokens = read_shards(a.shards).tolist()
        except ValueError as e:
            print(f"--shards {e}", file=sys.stderr)
            return 2
    llm = llama_cpp.Llama(model_path=a.model, n_ctx=a.seq_len, n_batch=a.seq_len, n_ubatch=a.seq_len,
                          n_threads=a.threads, logits_all=True, verbose=False)
    if a.text is not None:
        size = os.path.getsize(a.text)
        n_val = int(size * a.val_fraction)
        with open(a.text, "rb") as f:
            f.seek(size - n_val)
            held_out = f.read(n_val)
        tokens = llm.tokenize(held_out, add_bos=False, special=False)
    windows = min(a.windows, (len(tokens) - 1) // a.seq_len)
    if windows < 1:
        print(f"{a.text or a.shards}: the held-out split holds no window of {a.seq_len + 1} tokens", file=sys.stderr)
        return 2
    top = max(tokens[: windows * a.seq_len + 1])
    if a.shards is not None and top >= llm.n_vocab():
        print(f"{a.shards}: token {top} is outside the model's vocabulary of {llm.n_vocab()}", file=sys.stderr)
        return 2
    nll, count = 0.0, 0
    for w in range(windows):
        x = tokens[w * a.seq_len : w * a.seq_len + a.seq_len + 1]
        llm.reset()
        llm.eval(x[:-1])
        logits = np.asarray(llm.scores[: a.seq_len], dtype=np.float64)
        logits -= logits.max(-1, keepdims=True)
        lp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= lp[np.arange(a.seq_len), x[1:]].sum()
        count += a.seq_len
    loss = nll / count
    print(f"{a.model}: {windows} windows of {a.seq_len} tokens: val_loss {loss:.4f}, perplexity {math.exp(loss):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
