#!/usr/bin/env python3
"""A greedy continuation of a prompt by a GGUF model in llama.cpp (the llama-cpp-python that
`launch/setup.sh --tests` installs), with the tokenizer the file carries: what a llama.cpp user of an
exported model sees.

usage: launch/llama_cpp_generate.py MODEL.gguf --prompt "In the beginning God" [--tokens 40] [--threads 2]

Prints the prompt followed by the continuation (temperature 0: the most likely token each step).
"""
import argparse
import sys


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--tokens", type=int, default=40)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.tokens < 1:
        print(f"--tokens {a.tokens}: expected an integer >= 1", file=sys.stderr)
        return 2
    try:
        import llama_cpp
    except ImportError:
        print("llama_cpp is not installed: run launch/setup.sh --tests", file=sys.stderr)
        return 2
    try:
        llm = llama_cpp.Llama(model_path=a.model, n_ctx=512, n_threads=a.threads, verbose=False)
    except (ValueError, RuntimeError) as e:
        print(f"{a.model}: llama.cpp cannot load it: {e}", file=sys.stderr)
        return 2
    out = llm.create_completion(a.prompt, max_tokens=a.tokens, temperature=0.0, top_k=1)
    print(a.prompt + out["choices"][0]["text"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
