#!/usr/bin/env bash
# Data-parallel training under PyTorch's torchrun, which starts the `bitqat` binary itself
# (--no-python) with RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT and
# its agent's store (TORCHELASTIC_USE_AGENT_STORE), and stops every rank when one fails.
#
#   one node, 8 GPUs:   launch/torchrun.sh 8 configs/lm_gpu_x8.yaml [--set key=value ...]
#   several nodes:      NNODES=4 RDZV_HOST=node001 launch/torchrun.sh 8 configs/lm_gpu_x8.yaml \
#                           --set train.batch_size=4   (4 x 32 GPUs keeps the global batch of 128)
#                       (run the same line on every node; RDZV_HOST is any one of them)
#   CPU smoke test:     launch/torchrun.sh 2 configs/quickstart.yaml --set device.type=cpu
#
# torchrun comes with the torch wheel (TORCHRUN=/path/to/venv/bin/torchrun to pick one).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ]; then
  echo "usage: launch/torchrun.sh NPROC_PER_NODE CONFIG.yaml [--set key=value ...] [--resume]" >&2
  exit 2
fi
nproc="$1"
shift
torchrun="${TORCHRUN:-$(command -v torchrun || echo "$root/.venv/bin/torchrun")}"
bin="${BITQAT_BIN:-$root/build/bitqat}"
if [ "${NNODES:-1}" = 1 ]; then
  exec "$torchrun" --standalone --nproc-per-node="$nproc" --no-python "$bin" train "$@"
fi
exec "$torchrun" --nnodes="$NNODES" --nproc-per-node="$nproc" --rdzv-backend=c10d \
  --rdzv-endpoint="${RDZV_HOST:?set RDZV_HOST to one node of the job}:${RDZV_PORT:-29400}" \
  --rdzv-id="${RDZV_ID:-bitqat}" --no-python "$bin" train "$@"
