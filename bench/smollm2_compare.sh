#!/usr/bin/env bash
# Training throughput and peak memory of the SmolLM2-135M ternary fine-tune (configs/smollm2_ternary.yaml)
# in bitqat against the same job in PyTorch (bench/smollm2_pytorch.py: transformers' LlamaForCausalLM
# with BitLinear swapped in), eager and under torch.compile, without distillation, with logit
# distillation and with logit plus attention-relation distillation, in one invocation. Both run fully
# quantized (bitqat: lambda 1 from step 1, absmean scales as the peer's), batches of 4 x 256 tokens, the same threads, warm-up and
# timed steps. Per row: median tokens/s over the timed steps, peak resident set (bitqat: the process's
# maximum RSS from /usr/bin/time; PyTorch: the process's own ru_maxrss, its compile workers are other
# processes), and bitqat's ratio to each peer.
#
#   bench/smollm2_compare.sh [--threads 2] [--warmup 3] [--steps 8] [--only none|logits|attention]
#
# Needs: a build (build/bench/train_bench), the venv and the SmolLM2 files (launch/setup.sh --smollm2).
set -euo pipefail
cd "$(dirname "$0")/.."
threads=2 warmup=3 steps=8 only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --threads) threads="$2"; shift 2 ;;
    --warmup) warmup="$2"; shift 2 ;;
    --steps) steps="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) echo "smollm2_compare.sh: unknown argument '$1' (expected --threads, --warmup, --steps, --only)" >&2; exit 2 ;;
  esac
done
for v in "$threads" "$warmup" "$steps"; do
  [[ "$v" =~ ^[1-9][0-9]*$ ]] || { echo "smollm2_compare.sh: '$v': expected a positive integer" >&2; exit 2; }
done
case "$only" in ""|none|logits|attention) ;; *) echo "smollm2_compare.sh: --only $only: expected none, logits or attention" >&2; exit 2 ;; esac
bench=build/bench/train_bench py=.venv/bin/python
for f in "$bench" "$py" data/cache/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf; do
  [ -e "$f" ] || { echo "smollm2_compare.sh: $f is missing: run launch/setup.sh --smollm2 and build first" >&2; exit 2; }
done
export OMP_NUM_THREADS="$threads"
out=$(mktemp) tv=$(mktemp)
trap 'rm -f "$out" "$tv"' EXIT
echo "commit $(git rev-parse --short HEAD)$(git diff --quiet || echo ' (modified)'), $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for mode in none logits attention; do
  [ -z "$only" ] || [ "$only" = "$mode" ] || continue
  sets=(--set "quant.lambda_w={kind: constant, value: 1.0}" --set "quant.lambda_a={kind: constant, value: 1.0}"
        --set train.eval_at_start=false --set "train.steps=$((warmup + steps + 1))" --set optim.lr.warmup_steps=1 --set quant.weight.scale=absmean)
  case "$mode" in
    none) sets+=(--set distill.enabled=false) ;;
    attention) sets+=(--set "distill.attention={layer: 27, weight: 1.0}") ;;
  esac
  /usr/bin/time -v -o "$tv" "$bench" --config configs/smollm2_ternary.yaml --warmup "$warmup" --steps "$steps" \
    --threads "$threads" "${sets[@]}" | tail -n1 >"$out.line"
  rss_kib=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$tv")
  "$py" -c 'import json,sys; j=json.loads(open(sys.argv[1]).read()); j["trainer"]="bitqat"; j["distill"]=sys.argv[2]; j["peak_rss_mib"]=round(int(sys.argv[3])/1024,1); print(json.dumps(j))' \
    "$out.line" "$mode" "$rss_kib" | tee -a "$out"
  for c in "" --compile; do
    "$py" bench/smollm2_pytorch.py $c --distill "$mode" --threads "$threads" --warmup "$warmup" --steps "$steps" \
      2>/dev/null | tail -n1 | tee -a "$out"
  done
done
rm -f "$out.line"
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
"$py" - "$out" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
print("| distillation | trainer | tokens/s | peak RSS (MiB) | bitqat / this |")
print("|---|---|---|---|---|")
for i in range(0, len(rows), 3):
    ours = rows[i]["median_tokens_per_s"]
    for r in rows[i:i + 3]:
        print(f"| {r['distill']} | {r['trainer']} | {r['median_tokens_per_s']:.1f} | {r['peak_rss_mib']:.0f} | "
              f"{ours / r['median_tokens_per_s']:.2f} |")
PY
