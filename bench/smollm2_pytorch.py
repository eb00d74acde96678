"""SmolLM2-135M-Instruct's ternary QAT step the way a PyTorch user would write it, for comparisons
with `bitqat train configs/smollm2_ternary.yaml` (bench/smollm2_compare.sh runs both).

The model: transformers' LlamaForCausalLM read from the same GGUF (gguf_file=, float32), every
linear of the decoder layers (q, k, v, o, gate, up, down: bitqat's quant.include "layers.*") swapped
for a BitLinear with per-channel absmean ternary weights and 8-bit per-token activations written as
`x + (q(x) - x).detach()` straight-through estimators, fully quantized (bitqat's lambda 1). The
embedding (tied head) and the norms train in float32. torch.optim.AdamW (0.9, 0.95, lr 1e-3, no
weight decay, as the config), gradient clipping at 1.0, batches of 4 x 256 tokens from the same
llm.c shards (random windows).

Distillation (--distill logits or attention) adds the imported model itself as the teacher: a
frozen float32 copy whose forward runs under torch.no_grad(); loss = alpha CE + (1 - alpha) T^2
KL(teacher || student) over the vocabulary (alpha 0.5, T 2), and with `attention` plus MiniLM-v2's
q-q, k-k, v-v relation KL of block 27 (3 relation heads, causal, before RoPE: the outputs of the
q/k/v projections, as bitqat's distill.attention), weight 1. --compile compiles the student's and
the teacher's forward with torch.compile.

Prints one JSON line: the median tokens/s over the timed steps after the warm-up, and the peak
resident set of the process (ru_maxrss).

    python bench/smollm2_pytorch.py [--compile] [--distill none|logits|attention] [--threads 2]
                                    [--warmup 3] [--steps 8]
"""

import argparse
import copy
import json
import os
import resource
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "tools"))
from prepare_shards import read_shards  # noqa: E402  (the shard format's reader beside its writer)

GGUF = os.path.join(ROOT, "data/cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
SHARDS = os.path.join(ROOT, "data/cache/smollm2/kjv/kjv_train_*.bin")
ALPHA, TEMPERATURE, ATTN_LAYER, ATTN_HEADS = 0.5, 2.0, 27, 3


def ternary(w):
    gamma = w.abs().mean(dim=1, keepdim=True)
    return (w / (gamma + 1e-5)).round().clamp(-1, 1) * gamma


def act8(x):
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * s).round().clamp(-128, 127) / s


class BitLinear(nn.Linear):
    def forward(self, x):
        x = x + (act8(x) - x).detach()
        w = self.weight
        w = w + (ternary(w) - w).detach()
        return F.linear(x, w)


def to_bitlinear(model):
    for layer in model.model.layers:
        for parent, names in ((layer.self_attn, ("q_proj", "k_proj", "v_proj", "o_proj")),
                              (layer.mlp, ("gate_proj", "up_proj", "down_proj"))):
            for name in names:
                old = getattr(parent, name)
                new = BitLinear(old.in_features, old.out_features, bias=False)
                new.weight = old.weight
                setattr(parent, name, new)
    return model


def tokens():
    try:
        return read_shards(SHARDS)
    except ValueError as e:
        sys.exit(f"smollm2_pytorch.py: {e}: run launch/setup.sh --smollm2")


class Taps:
    """The outputs of block ATTN_LAYER's q, k, v projections (forward hooks)."""

    def __init__(self, model):
        attn = model.model.layers[ATTN_LAYER].self_attn
        self.out = {}
        for key, mod in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)):
            mod.register_forward_hook(lambda m, i, o, key=key: self.out.__setitem__(key, o))


def relation_kl(xs, xt, heads):
    b, t, d = xs.shape
    dr = d // heads
    mask = torch.ones(t, t, dtype=torch.bool).triu(1)

    def log_rel(x):
        h = x.view(b, t, heads, dr).transpose(1, 2)
        scores = (h @ h.transpose(-1, -2)) / dr ** 0.5
        return scores.masked_fill(mask, float("-inf")).log_softmax(-1)

    ls, lt = log_rel(xs), log_rel(xt)
    kl = (lt.exp() * (lt - ls)).masked_fill(mask, 0.0).sum(-1)
    return kl.mean()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--compile", action="store_true")
    p.add_argument("--distill", choices=["none", "logits", "attention"], default="none")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(os.path.dirname(GGUF), gguf_file=os.path.basename(GGUF),
                                            dtype=torch.float32)
    teacher = None
    if a.distill != "none":
        teacher = copy.deepcopy(base).eval()
        teacher.requires_grad_(False)
    model = to_bitlinear(base).train()
    st = tt = None
    if a.distill == "attention":
        st, tt = Taps(model), Taps(teacher)
    student_fwd = torch.compile(model) if a.compile else model
    teacher_fwd = (torch.compile(teacher) if a.compile else teacher) if teacher is not None else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.0)
    data = tokens()
    rng = np.random.default_rng(0)
    times = []
    for step in range(a.warmup + a.steps):
        starts = rng.integers(0, len(data) - a.seq - 1, size=a.batch)
        batch = torch.from_numpy(np.stack([data[s:s + a.seq + 1] for s in starts]))
        x, y = batch[:, :-1], batch[:, 1:]
        t0 = time.perf_counter()
        logits = student_fwd(input_ids=x).logits
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1))
        loss = ce
        if teacher_fwd is not None:
            with torch.no_grad():
                tlogits = teacher_fwd(input_ids=x).logits
            ls = F.log_softmax(logits.reshape(-1, logits.size(-1)) / TEMPERATURE, -1)
            lt = F.log_softmax(tlogits.reshape(-1, tlogits.size(-1)) / TEMPERATURE, -1)
            kl = F.kl_div(ls, lt, log_target=True, reduction="batchmean")
            loss = ALPHA * ce + (1 - ALPHA) * TEMPERATURE ** 2 * kl
            if st is not None:
                loss = loss + sum(relation_kl(st.out[r], tt.out[r].detach(), ATTN_HEADS) for r in "qkv") / 3
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.perf_counter() - t0
        if step >= a.warmup:
            times.append(dt)
        print(f"step {step + 1}: loss {loss.item():.4f} {a.batch * a.seq / dt:.1f} tok/s", file=sys.stderr)
    med = statistics.median(times)
    print(json.dumps({
        "trainer": "pytorch " + ("compile" if a.compile else "eager"),
        "distill": a.distill,
        "median_tokens_per_s": round(a.batch * a.seq / med, 1),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "threads": a.threads, "warmup": a.warmup, "steps": a.steps,
    }))


if __name__ == "__main__":
    main()
