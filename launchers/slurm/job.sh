# Body shared by launchers/slurm/*.sbatch (sourced, not run): rendezvous from SLURM_* variables, one launcher
# per node, and requeue when the run stopped on SLURM's warning signal.
#
# Set by the template:   ENTRY (pretrain.py | finetune.py | sample.py), REQUEUE_ON_SIGNAL (1 | 0)
# Optional environment (launchers/submit.py sets them from configs/cluster/*.yaml):
#   DSL_SCALE_ROOT      the repository (default: the directory sbatch was called from)
#   DSL_SCALE_PYTHON    the Python that has dsl_scale installed (default: $DSL_SCALE_ROOT/.venv/bin/python)
#   DSL_LAUNCHER        torchrun (one torchrun per node via srun) | deepspeed (deepspeed --launcher slurm)
#   DSL_RANKS_PER_NODE  processes per node (default: the GPUs SLURM gave the node, else 1); with
#                       DSL_LAUNCHER=deepspeed also submit with --ntasks-per-node=<that number>
#   DSL_MASTER_PORT     rendezvous port (default: 20000 + job id mod 20000)
# Script arguments are Hydra overrides for the entry point (model=small run_dir=runs/x ...).
#
# NCCL (GPU jobs; a value already in the environment, e.g. from cluster.env or sbatch --export, wins):
#   NCCL_DEBUG=WARN                      set here; INFO (with NCCL_DEBUG_SUBSYS=INIT,NET) shows the network NCCL chose
#   TORCH_NCCL_ASYNC_ERROR_HANDLING=3    set here (torch's default, made explicit): a failed or timed-out collective
#                                        ends the process, and --kill-on-bad-exit then ends the job instead of a hang
#   PYTHONFAULTHANDLER=1                 set here: a crashing rank prints every thread's stack
# Site-specific, so not set here (put them in cluster.env):
#   NCCL_SOCKET_IFNAME=ib0 (or eth0, ^lo,docker0)  the interface for NCCL's bootstrap and socket transport
#   NCCL_IB_HCA=mlx5                     which InfiniBand adapters to use; NCCL_IB_GID_INDEX=3 on RoCE
#   NCCL_IB_DISABLE=1                    no InfiniBand: TCP sockets (slow; a test cluster only)
#   TORCH_NCCL_BLOCKING_WAIT=1           collectives block and raise on timeout: for debugging a hang (slower)

set -uo pipefail
ROOT=${DSL_SCALE_ROOT:-$SLURM_SUBMIT_DIR}
cd "$ROOT" || exit 1
PY=${DSL_SCALE_PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=python3
LAUNCHER=${DSL_LAUNCHER:-torchrun}
RANKS_PER_NODE=${DSL_RANKS_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}
NNODES=$SLURM_JOB_NUM_NODES
GPUS_ON_NODE=${SLURM_GPUS_ON_NODE:-0}
if [ "$GPUS_ON_NODE" -gt 0 ] && [ "$RANKS_PER_NODE" -gt "$GPUS_ON_NODE" ]; then
  echo "[slurm] $RANKS_PER_NODE ranks per node (DSL_RANKS_PER_NODE) but SLURM gave each node $GPUS_ON_NODE GPU(s):" \
       "ranks would share a GPU; submit with --gpus-per-node=$RANKS_PER_NODE or lower DSL_RANKS_PER_NODE" >&2
  exit 2
fi
# SLURM >= 22.05: srun no longer inherits sbatch's --cpus-per-task, so it is passed explicitly. Without one, the
# node's whole allocation (e.g. an --exclusive node) goes to its tasks.
CPUS_ON_NODE=${SLURM_CPUS_PER_TASK:-${SLURM_CPUS_ON_NODE:-1}}
# Every task sees all of its node's GPUs (rank k uses cuda:LOCAL_RANK); a per-task binding would renumber them.
GPU_ARGS=""
[ "$GPUS_ON_NODE" -gt 0 ] && GPU_ARGS="--gpus-per-node=$GPUS_ON_NODE"
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-3}
export PYTHONFAULTHANDLER=${PYTHONFAULTHANDLER:-1}

# Rendezvous: the first node of the allocation hosts it, at the address SLURM itself uses for that node.
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
MASTER_ADDR=$(scontrol show node "$HEAD" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
MASTER_ADDR=${MASTER_ADDR:-$HEAD}
MASTER_PORT=${DSL_MASTER_PORT:-$((20000 + SLURM_JOB_ID % 20000))}
export MASTER_ADDR MASTER_PORT

ARGS=("$@")
RUN_DIR=""
for arg in "${ARGS[@]}"; do
  case "$arg" in run_dir=*) RUN_DIR=${arg#run_dir=} ;; esac
done
if [ "$REQUEUE_ON_SIGNAL" = 1 ] && [ -z "$RUN_DIR" ]; then
  # A fixed run directory per job: a requeued job (same id) must find its own checkpoints.
  RUN_DIR=runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}
  ARGS+=("run_dir=$RUN_DIR")
fi
MARKER=${RUN_DIR:+$RUN_DIR/REQUEUE}
[ -n "$MARKER" ] && rm -f "$MARKER"

echo "[slurm] job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on ${NODES[*]}: $LAUNCHER, $NNODES node(s) ×" \
     "$RANKS_PER_NODE rank(s), rendezvous $MASTER_ADDR:$MASTER_PORT, $ENTRY ${ARGS[*]}"

case "$LAUNCHER" in
  torchrun)
    # srun delivers the warning signal to every process of the step: torchrun ignores it (the disposition
    # is inherited through exec) and the training processes, which install their own handler, act on it.
    # shellcheck disable=SC2086  # GPU_ARGS: empty or one option
    srun --ntasks-per-node=1 --cpus-per-task="$CPUS_ON_NODE" $GPU_ARGS --kill-on-bad-exit=1 bash -c 'trap "" USR1; export PET_NODE_RANK=$SLURM_NODEID; exec "$@"' \
      torchrun "$PY" -m torch.distributed.run --nnodes="$NNODES" --nproc-per-node="$RANKS_PER_NODE" \
      --rdzv-backend=static --master-addr="$MASTER_ADDR" --master-port="$MASTER_PORT" \
      "launchers/$ENTRY" "${ARGS[@]}"
    ;;
  deepspeed)
    # DeepSpeed's slurm backend runs `srun -n <slots> python launchers/$ENTRY`; dsl_scale.launch maps each
    # task's SLURM_PROCID/SLURM_LOCALID to RANK/LOCAL_RANK.
    # SLURM_CPUS_PER_TASK is already per rank here (a task per rank); otherwise share the node's CPUs.
    CPUS_PER_RANK=${SLURM_CPUS_PER_TASK:-$(( ${SLURM_CPUS_ON_NODE:-$RANKS_PER_NODE} / RANKS_PER_NODE ))}
    HOSTFILE=$(mktemp "${TMPDIR:-/tmp}/hostfile.$SLURM_JOB_ID.XXXX")
    for node in "${NODES[@]}"; do echo "$node slots=$RANKS_PER_NODE"; done > "$HOSTFILE"
    "$PY" -m deepspeed.launcher.runner --hostfile "$HOSTFILE" --launcher slurm --no_ssh_check \
      --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
      --launcher_args "--ntasks-per-node=$RANKS_PER_NODE --cpus-per-task=$(( CPUS_PER_RANK > 0 ? CPUS_PER_RANK : 1 )) $GPU_ARGS --kill-on-bad-exit=1" \
      "launchers/$ENTRY" "${ARGS[@]}"
    ;;
  *)
    echo "DSL_LAUNCHER=$LAUNCHER: expected torchrun or deepspeed" >&2
    exit 2
    ;;
esac
STATUS=$?

# The trainer leaves $RUN_DIR/REQUEUE (and exits 75) after checkpointing on the warning signal; torchrun
# reports any failed worker as 1, so the marker is the reliable sign.
if [ "$REQUEUE_ON_SIGNAL" = 1 ] && { [ -n "$MARKER" ] && [ -e "$MARKER" ] || [ "$STATUS" = 75 ]; }; then
  echo "[slurm] checkpoint saved on the warning signal: requeueing job $SLURM_JOB_ID"
  scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
exit "$STATUS"
