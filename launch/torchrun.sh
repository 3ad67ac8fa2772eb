#!/usr/bin/env bash
# Run a nemo-subnet command (or the whole pipeline) under torchrun, on one node or many.
#
#   launch/torchrun.sh [--nproc N] -- nemo-subnet train --config run.yaml
#   launch/torchrun.sh --nproc 8 -- python -m nemo_subnet.pipeline --config pipeline.yaml
#
# Rendezvous, first match wins:
#   inside a SLURM allocation (SLURM_JOB_ID set): nodes and rank from SLURM, master = first node of
#     SLURM_JOB_NODELIST; start it once per node (`srun --ntasks-per-node=1 launch/torchrun.sh ...`);
#   --hosts h1,h2,... --node-rank R: given hosts, master = h1 (run it on every host with its rank);
#   otherwise: single node, localhost.
# NPROC defaults to the GPUs on the node (nvidia-smi), else 1. MASTER_PORT defaults to 29500.
set -euo pipefail

NPROC="${NPROC:-}"
HOSTS=""
NODE_RANK="${NODE_RANK:-0}"
while [[ $# -gt 0 ]]; do
  case "$1" in
    --nproc) NPROC="$2"; shift 2 ;;
    --hosts) HOSTS="$2"; shift 2 ;;
    --node-rank) NODE_RANK="$2"; shift 2 ;;
    --) shift; break ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
[[ $# -gt 0 ]] || { echo "torchrun.sh: no command given (see --help)" >&2; exit 2; }

if [[ -z "$NPROC" ]]; then
  NPROC=$( (command -v nvidia-smi >/dev/null && nvidia-smi -L 2>/dev/null | wc -l) || echo 0)
  [[ "$NPROC" -gt 0 ]] || NPROC=1
fi
PORT="${MASTER_PORT:-29500}"

if [[ -n "${SLURM_JOB_ID:-}" && -z "$HOSTS" ]]; then
  NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
  NODE_RANK="${SLURM_NODEID:-0}"
  MASTER=$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n1)
  RDZV_ID="${SLURM_JOB_ID}"
elif [[ -n "$HOSTS" ]]; then
  IFS=',' read -r -a HOST_ARRAY <<< "$HOSTS"
  NNODES="${#HOST_ARRAY[@]}"
  MASTER="${HOST_ARRAY[0]}"
  RDZV_ID="nemo-subnet-${MASTER}"
else
  NNODES=1; NODE_RANK=0; MASTER=127.0.0.1; RDZV_ID="nemo-subnet-local"
fi

# CPU ranks (gloo) share the cores: one OpenMP thread each unless the caller chose
if ! command -v nvidia-smi >/dev/null && [[ "$NPROC" -gt 1 ]]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi

# torchrun runs a Python file or module; `nemo-subnet X` becomes `-m nemo_subnet.cli X`
if [[ "$1" == "nemo-subnet" ]]; then shift; set -- -m nemo_subnet.cli "$@"; elif [[ "$1" == "python" || "$1" == python3 ]]; then shift; fi

PYTHON="${PYTHON:-python}"
if [[ "$NNODES" -eq 1 ]]; then
  exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc-per-node="$NPROC" \
    --master-addr="$MASTER" --master-port="$PORT" "$@"
fi
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --node-rank="$NODE_RANK" --nproc-per-node="$NPROC" \
  --rdzv-backend=c10d --rdzv-endpoint="$MASTER:$PORT" --rdzv-id="$RDZV_ID" "$@"
