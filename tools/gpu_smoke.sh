#!/usr/bin/env bash
# One-command smoke run of the GPU path (<= 10 minutes on one H200), from a checkout on a machine that has
# a CUDA torch and no network:
#
#   bash tools/gpu_wheelhouse.sh                  # here, with network: wheelhouse/ (our dependencies, no torch)
#   bash tools/gpu_smoke.sh                       # there: installs wheelhouse/ into python3, then the steps below
#   bash tools/gpu_smoke.sh --cpu                 # the same steps on the CPU (fp32, micro model, few steps): CI
#
# Options: --cpu; --wheelhouse DIR (default on GPU: wheelhouse/ when present; on --cpu only when given);
# --workdir DIR (default: a new temporary directory); DSL_SMOKE_PYTHON=... the Python to use (default: python3
# on GPU, .venv/bin/python with --cpu).
#
# Steps, each checked (the script stops at the first failure and exits non-zero):
#   1. install: the wheelhouse with pip --no-index --no-deps (projects the machine already has among torch's
#      basics, e.g. numpy, are kept), then every import the steps need
#   2. data: the checkout's own source and docs as text documents -> GPT-2 webdataset shards
#   3. scorer: a small autoregressive model (objective=ar) for generative perplexity
#   4. train: `tiny` in bf16 (GPU) for 50 steps, SIGKILLed once a checkpoint exists, then resumed to the end
#   5. sample (MDLM sampler); 6. evaluate (gen-PPL under the AR scorer, entropy; MAUVE is not part of it: its
#      dependencies are not in the wheelhouse), 7. export to Hugging Face MDLM format and reload it with
#      transformers, checking our logits; 8. tokens/s and MFU against the matmul peak measured in the same run
#   9. with >= 2 GPUs: TP2, PP2 and ZeRO-3 runs on NCCL (2 ranks each)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=gpu
WHEELHOUSE=""
WORK=""
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift ;;
    --workdir) WORK=${2:?--workdir needs a directory}; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "gpu_smoke: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$MODE" = gpu ]; then
  PY=${DSL_SMOKE_PYTHON:-$(command -v python3 || command -v python)}
  [ -z "$WHEELHOUSE" ] && [ -d "$REPO/wheelhouse" ] && WHEELHOUSE=$REPO/wheelhouse
  DEVICE=cuda PRECISION=bf16 BACKEND=nccl MODEL=tiny SEQ_LEN=128 STEPS=50 SAVE_EVERY=10
  BATCH=64 MICRO=32 AR_STEPS=100 SAMPLES=32 SAMPLE_STEPS=64 MP_STEPS=10 MORE_TEXT=(tools launchers tests)
else
  PY=${DSL_SMOKE_PYTHON:-$REPO/.venv/bin/python}
  [ -x "$PY" ] || PY=$(command -v python3)
  export DS_ACCELERATOR=cpu
  DEVICE=cpu PRECISION=fp32 BACKEND=gloo MODEL=micro SEQ_LEN=32 STEPS=12 SAVE_EVERY=3
  BATCH=8 MICRO=4 AR_STEPS=3 SAMPLES=4 SAMPLE_STEPS=8 MP_STEPS=0 MORE_TEXT=()
fi
WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/dsl-smoke.XXXXXX")}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
# The checkout's dsl_scale (next to its configs/) even where the wheel is installed too.
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
cd "$REPO"

STARTED=$SECONDS
say() { echo "[smoke] $((SECONDS - STARTED)) s: $*"; }
fail() { echo "[smoke] FAILED: $*" >&2; exit 1; }
trap 'echo "[smoke] FAILED (exit $?) at line $LINENO: $BASH_COMMAND" >&2' ERR
# A step's output goes to its log; on failure the log's tail is shown.
run_logged() {
  local log=$1; shift
  if ! "$@" > "$log" 2>&1; then
    tail -n 40 "$log" >&2
    fail "$* (full log: $log)"
  fi
}
last_step() { "$PY" -c 'import json,sys; r=[json.loads(l) for l in open(sys.argv[1]) if l.strip()]; print(r[-1]["step"] if r else 0)' "$1"; }

say "mode $MODE ($DEVICE, $PRECISION, $BACKEND), python $PY, work directory $WORK"

# --- 1. install ------------------------------------------------------------------------------------------------
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || fail "--wheelhouse $WHEELHOUSE is not a directory"
  # torch's basics that the machine already has stay as they are (its torch was built and tested with them).
  mapfile -t WHEELS < <("$PY" - "$WHEELHOUSE" <<'EOF'
import importlib.metadata as md, sys
from pathlib import Path
KEEP = {"numpy", "typing-extensions", "filelock", "fsspec", "packaging", "pyyaml", "requests", "urllib3", "idna",
        "certifi", "charset-normalizer", "protobuf", "psutil", "tqdm"}
for wheel in sorted(Path(sys.argv[1]).glob("*.whl")):
    name = wheel.name.split("-")[0].replace("_", "-").lower()
    try:
        installed = md.version(name)
    except md.PackageNotFoundError:
        installed = None
    if installed is not None and name in KEEP:
        print(f"kept the machine's {name} {installed}", file=sys.stderr)
    else:
        print(wheel)
EOF
  )
  [ "${#WHEELS[@]}" -gt 0 ] || fail "no wheels in $WHEELHOUSE"
  say "installing ${#WHEELS[@]} wheels from $WHEELHOUSE (no network)"
  PIP_BREAK_SYSTEM_PACKAGES=1 run_logged "$WORK/install.log" \
    "$PY" -m pip install --no-index --no-deps --disable-pip-version-check "${WHEELS[@]}"
fi
# (On --cpu without a wheelhouse the environment is the test suite's: the steps below import the same modules.)
[ "$MODE" = gpu ] || [ -n "$WHEELHOUSE" ] && run_logged "$WORK/imports.log" "$PY" -c "
import torch, deepspeed, megatron.core, hydra, omegaconf, webdataset, tiktoken, safetensors, transformers
from torch.utils.tensorboard import SummaryWriter
import dsl_scale.cli.pretrain, dsl_scale.cli.sample, dsl_scale.cli.evaluate, dsl_scale.cli.convert_checkpoint
from dsl_scale.tokenizer import get_tokenizer
get_tokenizer('gpt2')
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())
"
GPUS=0
if [ "$MODE" = gpu ]; then
  GPUS=$(tail -n 1 "$WORK/imports.log" | awk '{print $NF}')
  [ "$GPUS" -ge 1 ] || fail "no usable CUDA device (torch.cuda.is_available() is False); use --cpu for the CPU run"
  say "imports fine: $(tail -n 1 "$WORK/imports.log")"
fi

# --- 2. data ---------------------------------------------------------------------------------------------------
TEXT=$WORK/text
mkdir -p "$TEXT"
i=0
while IFS= read -r file; do
  cp "$file" "$TEXT/$(printf '%05d' "$i").txt"
  i=$((i + 1))
done < <(find README.md docs dsl_scale "${MORE_TEXT[@]}" -type f \( -name '*.py' -o -name '*.md' \) | sort)
run_logged "$WORK/data.log" "$PY" tools/prepare_data.py --source "$TEXT" --out "$WORK/data" --seq-len "$SEQ_LEN" \
  --format wds --val-fraction 0.1
say "data: $i documents -> $(grep -o '"blocks": [0-9]*' "$WORK/data/manifest.json" | head -1) ($WORK/data)"

COMMON=(data.path="$WORK/data" data.format=wds model.seq_len="$SEQ_LEN" train.precision="$PRECISION"
        parallel.backend="$BACKEND" train.global_batch="$BATCH" train.micro_batch="$MICRO" train.log_every=1
        train.eval_examples=16 optim.warmup_steps=5)

# --- 3. scorer (in the background, beside step 4: it is needed only at step 6) ----------------------------------
run_logged "$WORK/ar.log" "$PY" launchers/pretrain.py "${COMMON[@]}" model=micro model.seq_len="$SEQ_LEN" \
  objective=ar train.steps="$AR_STEPS" train.eval_every="$AR_STEPS" train.save_every="$AR_STEPS" \
  optim.lr=1e-3 run_dir="$WORK/ar" &
AR_PID=$!

# --- 4. train, kill, resume ------------------------------------------------------------------------------------
RUN=$WORK/mdlm
TRAIN=("${COMMON[@]}" model="$MODEL" model.seq_len="$SEQ_LEN" train.steps="$STEPS" train.save_every="$SAVE_EVERY"
       train.eval_every="$STEPS" run_dir="$RUN")
"$PY" launchers/pretrain.py "${TRAIN[@]}" > "$WORK/train1.log" 2>&1 &
TRAIN_PID=$!
while kill -0 "$TRAIN_PID" 2>/dev/null && [ ! -s "$RUN/checkpoints/latest" ]; do sleep 0.05; done
if ! kill -KILL "$TRAIN_PID" 2>/dev/null; then
  tail -n 40 "$WORK/train1.log" >&2
  fail "training ended before it could be killed after its first checkpoint (log: $WORK/train1.log)"
fi
status=0
wait "$TRAIN_PID" || status=$?
[ "$status" = 137 ] || fail "the killed run exited with $status, not 137 (SIGKILL)"
KILLED_AT=$(sed 's/^step_0*//' "$RUN/checkpoints/latest")
[ "$KILLED_AT" -lt "$STEPS" ] || fail "killed only after the last checkpoint (step $KILLED_AT)"
say "killed (SIGKILL) with the checkpoint of step $KILLED_AT saved, metrics up to step $(last_step "$RUN/metrics.jsonl")"
run_logged "$WORK/train2.log" "$PY" launchers/pretrain.py "${TRAIN[@]}"
grep -q "resumed from .* at step $KILLED_AT" "$WORK/train2.log" || fail "the rerun did not resume from step $KILLED_AT"
[ "$(last_step "$RUN/metrics.jsonl")" = "$STEPS" ] || fail "the resumed run did not reach step $STEPS"
say "resumed at step $KILLED_AT and trained to $STEPS: $(grep -o 'val_loss [0-9.]*' "$WORK/train2.log" | tail -1)"

# --- 5. sample -------------------------------------------------------------------------------------------------
run_logged "$WORK/sample.log" "$PY" launchers/sample.py checkpoint="$RUN" sampler=mdlm steps="$SAMPLE_STEPS" \
  num_samples="$SAMPLES" batch_size="$SAMPLES" out="$WORK/samples.jsonl"
[ "$(grep -c . "$WORK/samples.jsonl")" = "$SAMPLES" ] || fail "expected $SAMPLES samples in $WORK/samples.jsonl"
say "sampled $SAMPLES sequences ($SAMPLE_STEPS steps)"

# --- 6. evaluate -----------------------------------------------------------------------------------------------
wait "$AR_PID" || fail "training the AR scorer failed (log: $WORK/ar.log)"
say "AR scorer trained: $AR_STEPS steps"
run_logged "$WORK/evaluate.log" "$PY" launchers/evaluate.py samples="$WORK/samples.jsonl" \
  "metrics=[gen_ppl,entropy]" scorer="$WORK/ar" out="$WORK/results.json"
"$PY" - "$WORK/results.json" <<'EOF' || fail "results.json lacks a finite gen_ppl or entropy"
import json, math, sys
r = json.load(open(sys.argv[1]))
ppl, entropy = r["gen_ppl"]["gen_ppl"], r["entropy"]["entropy"]
assert math.isfinite(ppl) and math.isfinite(entropy), (ppl, entropy)
print(f"[smoke] evaluate: gen_ppl {ppl:.4g} (under the AR scorer), entropy {entropy:.4g} nats")
EOF

# --- 7. export to Hugging Face and reload; 8. figures (one process) --------------------------------------------
run_logged "$WORK/export.log" "$PY" tools/convert_checkpoint.py "$RUN" "$WORK/hf" --to hf-mdlm
run_logged "$WORK/checks.log" "$PY" tools/gpu_smoke_checks.py "$RUN" --hf "$WORK/hf" --device "$DEVICE" \
  --dtype "$PRECISION"
grep '^\[smoke\]' "$WORK/checks.log"

# --- 9. multi-GPU layouts on NCCL ------------------------------------------------------------------------------
if [ "$MODE" = gpu ] && [ "$GPUS" -ge 2 ]; then
  for layout in "tp2:parallel.tp=2" "pp2:parallel.pp=2" "zero3:parallel.zero_stage=3"; do
    name=${layout%%:*}
    run_logged "$WORK/$name.log" "$PY" -m torch.distributed.run --nproc_per_node 2 launchers/pretrain.py \
      "${COMMON[@]}" model="$MODEL" train.steps="$MP_STEPS" train.save_every="$MP_STEPS" train.eval_every="$MP_STEPS" \
      "${layout#*:}" run_dir="$WORK/$name"
    [ "$(last_step "$WORK/$name/metrics.jsonl")" = "$MP_STEPS" ] || fail "$name did not reach step $MP_STEPS"
    say "$name on NCCL: $MP_STEPS steps, $(grep -o 'val_loss [0-9.]*' "$WORK/$name.log" | tail -1)"
  done
elif [ "$MODE" = gpu ]; then
  say "one GPU: the TP2 / PP2 / ZeRO-3 runs need two"
fi
say "all steps passed (logs and outputs in $WORK)"
