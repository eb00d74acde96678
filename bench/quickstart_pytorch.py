"""The quickstart model trained the way a PyTorch user would write it, for throughput comparisons.

Same model, batch, optimizer and threads as configs/quickstart.yaml (or configs/quickstart_fp.yaml
with --fp): a byte-level BitNet-style LM (dim 128, 4 layers, 4 heads, ReLU^2 FFN 512, SubLN before
the attention output and FFN down projections, tied embeddings), ternary absmean weights per tensor
and 8-bit per-token activations written as `x + (q(x) - x).detach()` straight-through estimators,
torch.optim.AdamW (0.9, 0.95, weight decay 0.1 on 2-D non-norm, non-embedding weights), gradient
clipping at 1.0, batches of 16 x 128 bytes of the KJV text. Run eagerly or under torch.compile.

Prints one JSON line: the median tokens/s over the timed steps after the warm-up.

    python bench/quickstart_pytorch.py [--compile] [--fp] [--threads 2] [--warmup 20] [--steps 60]
"""

import argparse
import json
import math
import statistics
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


def ternary(w):
    gamma = w.abs().mean()
    return (w / (gamma + 1e-5)).round().clamp(-1, 1) * gamma


def act8(x):
    s = 127.0 / x.abs().amax(dim=-1, keepdim=True).clamp(min=1e-5)
    return (x * s).round().clamp(-128, 127) / s


class BitLinear(nn.Linear):
    def __init__(self, d_in, d_out, quant, sub_norm=False):
        super().__init__(d_in, d_out, bias=False)
        self.quant = quant
        self.norm = nn.RMSNorm(d_in, eps=1e-6) if sub_norm else None

    def forward(self, x):
        if self.norm is not None:
            x = self.norm(x)
        w = self.weight
        if self.quant:
            x = x + (act8(x) - x).detach()
            w = w + (ternary(w) - w).detach()
        return F.linear(x, w)


class Block(nn.Module):
    def __init__(self, dim, heads, ffn, quant):
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.RMSNorm(dim, eps=1e-6)
        self.q = BitLinear(dim, dim, quant)
        self.k = BitLinear(dim, dim, quant)
        self.v = BitLinear(dim, dim, quant)
        self.o = BitLinear(dim, dim, quant, sub_norm=True)
        self.ffn_norm = nn.RMSNorm(dim, eps=1e-6)
        self.up = BitLinear(dim, ffn, quant)
        self.down = BitLinear(ffn, dim, quant, sub_norm=True)

    def forward(self, x, cos, sin):
        b, t, d = x.shape
        h = self.attn_norm(x)

        def split(y):
            return y.view(b, t, self.heads, d // self.heads).transpose(1, 2)

        def rope(y):
            y1, y2 = y.chunk(2, dim=-1)
            return y * cos + torch.cat([-y2, y1], dim=-1) * sin

        q, k, v = rope(split(self.q(h))), rope(split(self.k(h))), split(self.v(h))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.relu(self.up(self.ffn_norm(x))).square())


class LM(nn.Module):
    def __init__(self, quant, vocab=256, dim=128, layers=4, heads=4, ffn=512, seq=128):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, ffn, quant) for _ in range(layers))
        self.norm = nn.RMSNorm(dim, eps=1e-6)
        hd = dim // heads
        inv = 10000.0 ** (-torch.arange(0, hd, 2, dtype=torch.float64) / hd)
        f = torch.outer(torch.arange(seq, dtype=torch.float64), inv)
        emb = torch.cat([f, f], dim=-1)
        self.register_buffer("cos", emb.cos().float(), persistent=False)
        self.register_buffer("sin", emb.sin().float(), persistent=False)
        nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, tokens):
        x = self.embed(tokens)
        for b in self.blocks:
            x = b(x, self.cos, self.sin)
        return F.linear(self.norm(x), self.embed.weight)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--fp", action="store_true", help="the full-precision twin (configs/quickstart_fp.yaml)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--text", default="data/cache/kjv.txt")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1234)
    data = np.frombuffer(open(args.text, "rb").read(), dtype=np.uint8)
    rng = np.random.default_rng(1234)
    batch, seq = 16, 128

    model = LM(quant=not args.fp)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "embed" not in n and "norm" not in n]
    other = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and "embed" not in n and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=4e-3, betas=(0.9, 0.95), eps=1e-8)

    def step(x, y):
        loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    run = torch.compile(step) if args.compile else step
    times = []
    for i in range(args.warmup + args.steps):
        starts = rng.integers(0, len(data) - seq - 1, size=batch)
        w = torch.from_numpy(np.stack([data[s:s + seq + 1] for s in starts]).astype(np.int64))
        t0 = time.perf_counter()
        loss = run(w[:, :-1], w[:, 1:])
        loss.item()
        times.append(time.perf_counter() - t0)
    timed = times[args.warmup:]
    med = statistics.median(timed)
    print(json.dumps({"trainer": "pytorch " + ("torch.compile" if args.compile else "eager"),
                      "model": "fp32" if args.fp else "ternary", "threads": args.threads,
                      "timed_steps": len(timed), "tokens_per_step": batch * seq,
                      "median_step_ms": 1e3 * med, "median_tokens_per_s": batch * seq / med,
                      "last_loss": loss.item(), "finite": math.isfinite(loss.item())}))


if __name__ == "__main__":
    main()
