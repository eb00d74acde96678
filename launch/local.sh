#!/usr/bin/env bash
# Data-parallel training on one machine without Python: starts N `bitqat` processes with the
# variables torchrun would set (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR,
# MASTER_PORT). When one rank fails, the others are stopped (no stray processes) and the script exits
# with the first failure's status; Ctrl-C stops them all.
#
#   launch/local.sh N train CONFIG.yaml [--set key=value ...] [--resume]
#   BITQAT_BIN=build/bitqat MASTER_PORT=29500 launch/local.sh 2 train configs/quickstart.yaml --set device.type=cpu
#
# On GPUs each rank takes GPU LOCAL_RANK (NCCL); on the CPU the ranks use Gloo over loopback.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ $# -lt 2 ] || ! [[ "$1" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: launch/local.sh N train CONFIG.yaml [--set key=value ...] [--resume]" >&2
  exit 2
fi
n="$1"
shift
bin="${BITQAT_BIN:-$root/build/bitqat}"
if [ ! -x "$bin" ]; then
  echo "launch/local.sh: $bin is not an executable (build first, or set BITQAT_BIN)" >&2
  exit 2
fi
port="${MASTER_PORT:-}"
if [ -z "$port" ]; then
  # A port the kernel reports free now; 29500 (torchrun's default) without python3.
  port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
          2>/dev/null || echo 29500)"
fi

declare -A rank_of=()
pids=()
stop_all() {
  local p
  for p in "${pids[@]}"; do
    kill -TERM "$p" 2>/dev/null
    kill -CONT "$p" 2>/dev/null  # a stopped (hung) rank only sees TERM once it runs again
  done
}
trap 'stop_all; wait; exit 130' INT TERM

for ((r = 0; r < n; r++)); do
  RANK=$r WORLD_SIZE=$n LOCAL_RANK=$r LOCAL_WORLD_SIZE=$n MASTER_ADDR=127.0.0.1 MASTER_PORT=$port \
    "$bin" "$@" &
  pids+=("$!")
  rank_of[$!]=$r
done

status=0
left=$n
while ((left > 0)); do
  done_pid=""
  wait -n -p done_pid  # the ranks are this shell's only children
  rc=$?
  [ -z "$done_pid" ] && break  # no child left
  left=$((left - 1))
  if ((rc != 0 && status == 0)); then
    status=$rc
    echo "launch/local.sh: rank ${rank_of[$done_pid]} (pid $done_pid) exited with status $rc; stopping the other ranks" >&2
    stop_all
  fi
done
exit "$status"
