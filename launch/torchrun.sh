#!/usr/bin/env bash
# Run a nemo-subnet command (or the whole pipeline) under torchrun, on one node or many.
#
#   launch/torchrun.sh [--nproc N] -- nemo-subnet train --config run.yaml
#   launch/torchrun.sh --nproc 8 -- python -m nemo_subnet.pipeline --config pipeline.yaml
#
# Rendezvous, first match wins:
#   inside a SLURM allocation (SLURM_JOB_ID set): nodes and rank from the step (SLURM_STEP_NUM_NODES,
#     SLURM_NODEID), master = first node of the step; start it once per node
#     (`srun --ntasks-per-node=1 launch/torchrun.sh ...`);
#   --hosts h1,h2,... --node-rank R: given hosts, master = h1 (run it on every host with its rank);
#   otherwise: single node, localhost.
# Several nodes: c10d rendezvous at master:MASTER_PORT. The node of rank 0 hosts the rendezvous store
#   (is_host, never guessed from hostnames: a node whose hostname resolves to another interface, or to
#   127.0.1.1, would otherwise wait for a store nobody serves), and every node advertises its own address
#   (--local-addr: h<R>, or the SLURM node's NodeAddr) instead of its hostname's, so the workers' MASTER_ADDR
#   is an address the other nodes reach. Give the hosts in address order: c10d numbers nodes by sorted
#   address, so then node rank = R. RDZV_ID (default: the SLURM job.step, or the first host) names the
#   rendezvous, RDZV_JOIN_TIMEOUT (s, default 600) is how long the first node waits for the others.
# NPROC (ranks per node) defaults to the GPUs this process was *given*, not the GPUs the node has:
#   the entries of CUDA_VISIBLE_DEVICES, else SLURM_GPUS_ON_NODE, else nvidia-smi -L, else 1 (CPU).
#   (Counting every GPU of a shared node would start two ranks per allocated GPU.) MASTER_PORT: 29500.
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
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
[[ $# -gt 0 ]] || { echo "torchrun.sh: no command given (see --help)" >&2; exit 2; }

visible_gpus() {  # GPUs given to this process: 0 when none is (CPU)
  if [[ -n "${CUDA_VISIBLE_DEVICES+set}" ]]; then
    # "0,1,3" or "GPU-<uuid>,..." -> count of entries; "" / "-1" / "NoDevFiles" (SLURM without GPUs) -> 0
    case "$CUDA_VISIBLE_DEVICES" in ""|-1|NoDevFiles) echo 0 ;; *) awk -F, '{print NF}' <<< "$CUDA_VISIBLE_DEVICES" ;; esac
  elif [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
    echo "${SLURM_GPUS_ON_NODE##*:}"  # a count; also accept a "gpu:4"-style type prefix
  elif command -v nvidia-smi >/dev/null; then
    nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true
  else
    echo 0
  fi
}
GPUS="$(visible_gpus)"
[[ "$GPUS" =~ ^[0-9]+$ ]] || { echo "torchrun.sh: cannot count the GPUs given to this process (got '$GPUS')" >&2; exit 2; }
if [[ -z "$NPROC" ]]; then
  NPROC="$GPUS"
  [[ "$NPROC" -gt 0 ]] || NPROC=1
fi
PORT="${MASTER_PORT:-29500}"

slurm_node_addr() {  # a SLURM node's NodeAddr (what slurmctld reaches it at), else its name
  local addr
  addr="$(scontrol show node -o "$1" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -n1)"
  echo "${addr:-$1}"
}

if [[ -n "${SLURM_JOB_ID:-}" && -z "$HOSTS" ]]; then
  # the step's nodes (a one-node step inside a two-node job is one node)
  NNODES="${SLURM_STEP_NUM_NODES:-${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}}}"
  NODE_RANK="${SLURM_NODEID:-0}"
  MASTER=127.0.0.1
  if [[ "$NNODES" -gt 1 ]]; then
    MASTER="$(slurm_node_addr "$(scontrol show hostnames "${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST}}" | head -n1)")"
    LOCAL_ADDR="$(slurm_node_addr "${SLURMD_NODENAME:-$(hostname -s)}")"
  fi
  RDZV_ID="${RDZV_ID:-${SLURM_JOB_ID}${SLURM_STEP_ID:+.${SLURM_STEP_ID}}}"
elif [[ -n "$HOSTS" ]]; then
  IFS=',' read -r -a HOST_ARRAY <<< "$HOSTS"
  NNODES="${#HOST_ARRAY[@]}"
  if ! [[ "$NODE_RANK" =~ ^[0-9]+$ ]] || [[ "$NODE_RANK" -ge "$NNODES" ]]; then
    echo "torchrun.sh: --node-rank $NODE_RANK is not one of 0..$((NNODES - 1)) (the positions in --hosts $HOSTS)" >&2
    exit 2
  fi
  MASTER="${HOST_ARRAY[0]}"
  LOCAL_ADDR="${HOST_ARRAY[$NODE_RANK]}"
  RDZV_ID="${RDZV_ID:-nemo-subnet-${MASTER}}"
else
  NNODES=1; NODE_RANK=0; MASTER=127.0.0.1; RDZV_ID="nemo-subnet-local"
fi

# CPU ranks (gloo) share the cores: one OpenMP thread each unless the caller chose
if [[ "$GPUS" -eq 0 && "$NPROC" -gt 1 ]]; then export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"; fi

# torchrun runs a Python file or module; `nemo-subnet X` becomes `-m nemo_subnet.cli X`
if [[ "$1" == "nemo-subnet" ]]; then shift; set -- -m nemo_subnet.cli "$@"; elif [[ "$1" == "python" || "$1" == python3 ]]; then shift; fi

PYTHON="${PYTHON:-python}"
if [[ "$NNODES" -eq 1 ]]; then
  exec "$PYTHON" -m torch.distributed.run --nnodes=1 --nproc-per-node="$NPROC" \
    --master-addr="$MASTER" --master-port="$PORT" "$@"
fi
IS_HOST=false; [[ "$NODE_RANK" -eq 0 ]] && IS_HOST=true
# (no --node-rank: c10d ignores it and numbers the nodes itself, see above)
exec "$PYTHON" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$NPROC" \
  --rdzv-backend=c10d --rdzv-endpoint="$MASTER:$PORT" --rdzv-id="$RDZV_ID" --local-addr="$LOCAL_ADDR" \
  --rdzv-conf="is_host=$IS_HOST,join_timeout=${RDZV_JOIN_TIMEOUT:-600}" "$@"
