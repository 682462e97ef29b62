#!/usr/bin/env bash
# The main job on an embedded default: real Wikipedia text → MDS shards → a tiny DiT trained with MDLM
# on 2 CPU ranks through the deepspeed launcher for about five minutes → samples from it.
#   QUICKSTART_MINUTES=5 QUICKSTART_RANKS=2 bash tools/quickstart.sh [extra hydra overrides]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh

MINUTES=${QUICKSTART_MINUTES:-5}
RANKS=${QUICKSTART_RANKS:-2}
SEQ_LEN=128
DATA=data/wikipedia-sample-L$SEQ_LEN
RUN=runs/quickstart-$(date +%Y%m%d-%H%M%S)
export DS_ACCELERATOR=cpu PYTHONWARNINGS=ignore

if [ ! -f "$DATA/manifest.json" ]; then
  .venv/bin/python tools/prepare_data.py --source wikipedia-sample --out "$DATA" --seq-len $SEQ_LEN
fi

mkdir -p "$RUN"
echo "[quickstart] training model=tiny on $RANKS ranks for $MINUTES minutes → $RUN (full log: $RUN/train.log)"
.venv/bin/deepspeed --num_gpus "$RANKS" launchers/pretrain.py \
  model=tiny data.path="$DATA" run_dir="$RUN" \
  train.steps=100000 train.max_minutes="$MINUTES" train.global_batch=16 train.micro_batch=8 \
  train.log_every=5 train.eval_every=10 train.eval_examples=32 train.save_every=1000 \
  optim.lr=1e-3 optim.warmup_steps=10 "$@" 2>&1 | tee "$RUN/train.log" \
  | grep --line-buffered -E "^\[dsl_scale\]|Error|error:" || { echo "training failed: see $RUN/train.log"; exit 1; }

.venv/bin/python tools/summarize_run.py "$RUN"
.venv/bin/python launchers/sample.py checkpoint="$RUN" weights=model steps=64 num_samples=3 \
  out="$RUN/samples.jsonl" print_samples=3 2>&1 | grep -v -i warn
rm -f /dev/shm/deepspeed_allreduce_buffer_* 2>/dev/null || true
