#!/usr/bin/env python3
"""Plot several bitqat runs on shared axes: training loss, validation loss, learning rate and the
quantization ramps (lambda_w, lambda_a), one colour per run, from each run's metrics.jsonl.

usage: plot_runs.py --out PLOT.png [--title T] [--hline VALUE:LABEL ...] RUN_DIR[=LABEL] [RUN_DIR[=LABEL] ...]

RUN_DIR is a bitqat run directory (its metrics.jsonl: one JSON object per logged step with step,
loss, lr, lambda_w, lambda_a, and one per evaluation with step and val_loss). A run directory that
holds only an evaluation (bitqat quantize writes one at step 0) appears in the validation panel.
--hline draws a horizontal reference on both loss panels (e.g. the teacher's val_loss). The PNG is
written to a temporary name and renamed.
"""
import argparse
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def fail(msg):
    print(f"plot_runs: {msg}", file=sys.stderr)
    sys.exit(2)


def read_metrics(run_dir):
    path = os.path.join(run_dir, "metrics.jsonl")
    steps, evals = [], []
    try:
        with open(path) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    fail(f"{path}:{n}: not a JSON object: {e}")
                if not isinstance(rec, dict) or not isinstance(rec.get("step"), int):
                    fail(f"{path}:{n}: expected an object with an integer step")
                if isinstance(rec.get("val_loss"), (int, float)):
                    evals.append(rec)
                elif isinstance(rec.get("loss"), (int, float)):
                    steps.append(rec)
    except OSError as e:
        fail(f"{path}: cannot read it: {e.strerror}")
    if not steps and not evals:
        fail(f"{path}: no logged step and no evaluation")
    return steps, evals


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--title", default="")
    ap.add_argument("--hline", action="append", default=[], help="VALUE:LABEL, a reference on the loss panels")
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    hlines = []
    for h in a.hline:
        value, _, label = h.partition(":")
        try:
            hlines.append((float(value), label or value))
        except ValueError:
            fail(f"--hline {h}: expected VALUE:LABEL with a number VALUE")

    fig, axes = plt.subplots(2, 2, figsize=(12, 8), sharex=True)
    (ax_loss, ax_val), (ax_lr, ax_lambda) = axes
    for i, spec in enumerate(a.runs):
        run_dir, _, label = spec.partition("=")
        label = label or os.path.basename(os.path.normpath(run_dir))
        steps, evals = read_metrics(run_dir)
        colour = f"C{i % 10}"
        x = [r["step"] for r in steps]
        if steps:
            ax_loss.plot(x, [r["loss"] for r in steps], color=colour, label=label, linewidth=1.2)
            if all("loss_ce" in r for r in steps):
                ax_loss.plot(x, [r["loss_ce"] for r in steps], color=colour, linestyle=":", linewidth=1.0,
                             label=f"{label} (CE part)")
            ax_lr.plot(x, [r.get("lr", float("nan")) for r in steps], color=colour, label=label)
            ax_lambda.plot(x, [r.get("lambda_w", float("nan")) for r in steps], color=colour, label=f"{label} w")
            ax_lambda.plot(x, [r.get("lambda_a", float("nan")) for r in steps], color=colour, linestyle="--",
                           label=f"{label} a")
        if evals:
            ax_val.plot([r["step"] for r in evals], [r["val_loss"] for r in evals], color=colour, marker="o",
                        label=label)
    for value, label in hlines:
        for ax in (ax_loss, ax_val):
            ax.axhline(value, color="black", linestyle="--", linewidth=0.8)
        ax_val.annotate(label, (0, value), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax_loss.set_title("training loss (dotted: its cross-entropy part)")
    ax_val.set_title("validation loss")
    ax_lr.set_title("learning rate")
    ax_lambda.set_title("quantization ramp (solid lambda_w, dashed lambda_a)")
    for ax in axes.flat:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in (ax_lr, ax_lambda):
        ax.set_xlabel("step")
    for ax in (ax_loss, ax_val):
        ax.set_ylabel("nats per token")
    if a.title:
        fig.suptitle(a.title)
    fig.tight_layout()
    tmp = f"{a.out}.tmp.{os.getpid()}.png"
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, a.out)
    print(f"wrote {a.out} ({len(a.runs)} runs)")


if __name__ == "__main__":
    main()
