#!/usr/bin/env bash
# One-command smoke run of the GPU path (<= 10 minutes on one H100 or H200), from a checkout on a machine that has
# a CUDA torch and no network:
#
#   bash tools/gpu_wheelhouse.sh                  # here, with network: wheelhouse/ (our dependencies, no torch)
#   bash tools/gpu_smoke.sh --out smoke-out       # there: installs wheelhouse/ into python3, then the steps below
#   bash tools/gpu_smoke.sh --cpu                 # the same steps on the CPU (fp32, micro model, few steps): CI
#
# Options: --cpu; --wheelhouse DIR (default on GPU: wheelhouse/ when present; on --cpu only when given);
# --workdir DIR (default: a new temporary directory); --out DIR (every log and summary.json copied there, also
# after a failure); --from STEP (skip the steps before STEP, reusing an earlier --workdir's outputs);
# DSL_SMOKE_PYTHON=... the Python to use (default: python3 on GPU, .venv/bin/python with --cpu).
#
# Steps (the script stops at the first failure and exits non-zero; summary.json says which passed):
#   install   the wheelhouse's requirements checked against what stays on the machine (protobuf, transformers,
#             tokenizers, ...: a conflict stops here, before any work, naming the package and both versions),
#             then pip --no-index --no-deps, then every import the steps need
#   data      the checkout's own source and docs as text -> GPT-2 webdataset shards (and at L = 1024 for `small`)
#   scorer    a small autoregressive model (objective=ar) for generative perplexity, beside `train`
#   train     `tiny` in bf16 (GPU) for 50 steps at ZeRO-0, SIGKILLed once a checkpoint exists, then resumed
#   sample    MDLM sampler;  evaluate: gen-PPL under the AR scorer, entropy (no MAUVE: not in the wheelhouse)
#   export    to Hugging Face MDLM format, reloaded with transformers, checking our logits
#   figures   tokens/s and MFU of `train` against the matmul peak measured in the same run
#   zero1     ZeRO-1 at DP = 1 (every preset's path: DeepSpeed's ZeRO optimizer, fp32 gradient accumulation)
#   zero3     ZeRO-3 with the DSL objective at DP = 1 (zero.Init start-up, the converter's keys on the device)
#   finetune  a DSL fine-tune from `train`'s checkpoint at ZeRO-1 (the dsl_from_mdlm presets' path)
#   small     `small` at L = 1024 in bf16 with model.compile on and off: tokens/s and MFU (GPU; micro on --cpu)
#   bf16      one sampling step's logits in bf16 against fp32 within a stated bound (gpu_smoke_checks.py)
#   multi     with >= 2 GPUs: TP2, PP2 and ZeRO-3 runs on NCCL (2 ranks each)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
MODE=gpu
WHEELHOUSE=""
WORK=""
OUT=""
FROM=""
ALL_STEPS=(install data scorer train sample evaluate export figures zero1 zero3 finetune small bf16 multi)
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) MODE=cpu ;;
    --wheelhouse) WHEELHOUSE=${2:?--wheelhouse needs a directory}; shift ;;
    --workdir) WORK=${2:?--workdir needs a directory}; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    --from) FROM=${2:?--from needs a step name}; shift ;;
    -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
    *) echo "gpu_smoke: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

if [ "$MODE" = gpu ]; then
  PY=${DSL_SMOKE_PYTHON:-$(command -v python3 || command -v python)}
  [ -z "$WHEELHOUSE" ] && [ -d "$REPO/wheelhouse" ] && WHEELHOUSE=$REPO/wheelhouse
  DEVICE=cuda PRECISION=bf16 BACKEND=nccl MODEL=tiny SEQ_LEN=128 STEPS=50 SAVE_EVERY=10
  BATCH=64 MICRO=32 AR_STEPS=100 SAMPLES=32 SAMPLE_STEPS=64 MP_STEPS=10 MORE_TEXT=(tools launchers tests)
  PATH_STEPS=20 BIG_MODEL=small BIG_LEN=1024 BIG_BATCH=16 BIG_MICRO=8 BIG_STEPS=20 COMPILES=(true false)
else
  PY=${DSL_SMOKE_PYTHON:-$REPO/.venv/bin/python}
  [ -x "$PY" ] || PY=$(command -v python3)
  export DS_ACCELERATOR=cpu
  DEVICE=cpu PRECISION=fp32 BACKEND=gloo MODEL=micro SEQ_LEN=32 STEPS=12 SAVE_EVERY=3
  BATCH=8 MICRO=4 AR_STEPS=3 SAMPLES=4 SAMPLE_STEPS=8 MP_STEPS=0 MORE_TEXT=()
  PATH_STEPS=3 BIG_MODEL=micro BIG_LEN=64 BIG_BATCH=4 BIG_MICRO=4 BIG_STEPS=4 COMPILES=(false)
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
if [ -n "$FROM" ] && [[ " ${ALL_STEPS[*]} " != *" $FROM "* ]]; then
  echo "gpu_smoke: --from $FROM is not a step (${ALL_STEPS[*]})" >&2; exit 2
fi
# Steps: `begin NAME` says whether NAME runs (false before --from), `passed` closes it; steps.tsv keeps
# name, status, seconds and log for summary.json, written (and copied to --out) however the script ends.
STEP="" STEP_STARTED=0 STEP_LOG="" REACHED=${FROM:+no}
: > "$WORK/steps.tsv.new"; [ -n "$FROM" ] && [ -f "$WORK/steps.tsv" ] && cp "$WORK/steps.tsv" "$WORK/steps.tsv.new"
mv "$WORK/steps.tsv.new" "$WORK/steps.tsv"
begin() {
  STEP=$1 STEP_LOG=${2:-$1.log} STEP_STARTED=$SECONDS
  if [ "$REACHED" = no ] && [ "$1" != "$FROM" ]; then STEP=""; return 1; fi
  REACHED=yes
  sed -i "/^$1\t/d" "$WORK/steps.tsv"
}
passed() { printf '%s\tpassed\t%d\t%s\n' "$STEP" $((SECONDS - STEP_STARTED)) "$STEP_LOG" >> "$WORK/steps.tsv"; STEP=""; }
skipped() { printf '%s\tskipped\t0\t%s\n' "$1" "$2" >> "$WORK/steps.tsv"; }
finish() {
  local status=$?
  set +e
  [ -n "$STEP" ] && printf '%s\tfailed\t%d\t%s\n' "$STEP" $((SECONDS - STEP_STARTED)) "$STEP_LOG" >> "$WORK/steps.tsv"
  "$PY" tools/gpu_smoke_checks.py summary "$WORK" "$WORK/summary.json" || true
  if [ -n "$OUT" ]; then
    mkdir -p "$OUT" && cp "$WORK"/*.log "$WORK"/*.json "$WORK/steps.tsv" "$OUT"/ 2>/dev/null
    echo "[smoke] logs and summary.json copied to $OUT"
  fi
  exit "$status"
}
trap finish EXIT
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

# --- install ---------------------------------------------------------------------------------------------------
if begin install; then
  if [ -n "$WHEELHOUSE" ]; then
    [ -d "$WHEELHOUSE" ] || fail "--wheelhouse $WHEELHOUSE is not a directory"
    # which wheels, and whether they fit what stays on the machine: a conflict stops here, before any work
    if ! "$PY" tools/gpu_smoke_checks.py plan "$WHEELHOUSE" --versions "$WORK/versions.json" \
        > "$WORK/plan.txt" 2> "$WORK/plan.log"; then
      cat "$WORK/plan.log" >&2
      fail "the wheelhouse does not fit this machine (see above); nothing was installed"
    fi
    mapfile -t WHEELS < "$WORK/plan.txt"
    say "installing ${#WHEELS[@]} wheels from $WHEELHOUSE (no network)"
    PIP_BREAK_SYSTEM_PACKAGES=1 run_logged "$WORK/install.log" \
      "$PY" -m pip install --no-index --no-deps --disable-pip-version-check "${WHEELS[@]}"
  fi
  # (On --cpu without a wheelhouse the environment is the test suite's: the steps below import the same modules.)
  run_logged "$WORK/imports.log" "$PY" -c "
import torch, deepspeed, megatron.core, hydra, omegaconf, webdataset, tiktoken, safetensors, transformers
from torch.utils.tensorboard import SummaryWriter
import dsl_scale.cli.pretrain, dsl_scale.cli.sample, dsl_scale.cli.evaluate, dsl_scale.cli.convert_checkpoint
from dsl_scale.tokenizer import get_tokenizer
get_tokenizer('gpt2')
print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.device_count())
"
  passed
fi
GPUS=0
if [ "$MODE" = gpu ]; then
  GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)")
  [ "$GPUS" -ge 1 ] || fail "no usable CUDA device (torch.cuda.is_available() is False); use --cpu for the CPU run"
  say "$GPUS GPU(s)"
fi

COMMON=(data.format=wds train.precision="$PRECISION" parallel.backend="$BACKEND" train.log_every=1
        train.eval_examples=16 optim.warmup_steps=5)
SHORT=(data.path="$WORK/data" model.seq_len="$SEQ_LEN" train.global_batch="$BATCH" train.micro_batch="$MICRO")

# --- data ------------------------------------------------------------------------------------------------------
if begin data; then
  TEXT=$WORK/text
  rm -rf "$TEXT"
  mkdir -p "$TEXT"
  i=0
  while IFS= read -r file; do
    cp "$file" "$TEXT/$(printf '%05d' "$i").txt"
    i=$((i + 1))
  done < <(find README.md docs dsl_scale "${MORE_TEXT[@]}" -type f \( -name '*.py' -o -name '*.md' \) | sort)
  run_logged "$WORK/data.log" "$PY" tools/prepare_data.py --source "$TEXT" --out "$WORK/data" --seq-len "$SEQ_LEN" \
    --format wds --val-fraction 0.1
  run_logged "$WORK/data_long.log" "$PY" tools/prepare_data.py --source "$TEXT" --out "$WORK/data_long" \
    --seq-len "$BIG_LEN" --format wds --val-fraction 0.1
  say "data: $i documents -> $(grep -o '"blocks": [0-9]*' "$WORK/data/manifest.json" | head -1) ($WORK/data)"
  passed
fi

# --- scorer (in the background, beside `train`: it is needed only at `evaluate`) --------------------------------
AR_PID=""
if begin scorer ar.log; then
  "$PY" launchers/pretrain.py "${COMMON[@]}" "${SHORT[@]}" model=micro model.seq_len="$SEQ_LEN" \
    objective=ar train.steps="$AR_STEPS" train.eval_every="$AR_STEPS" train.save_every="$AR_STEPS" \
    optim.lr=1e-3 run_dir="$WORK/ar" > "$WORK/ar.log" 2>&1 &
  AR_PID=$! SCORER_STARTED=$SECONDS
  STEP=""  # closed at `evaluate`, which waits for it
fi

# --- train, kill, resume ---------------------------------------------------------------------------------------
RUN=$WORK/mdlm
TRAIN=("${COMMON[@]}" "${SHORT[@]}" model="$MODEL" model.seq_len="$SEQ_LEN" train.steps="$STEPS"
       train.save_every="$SAVE_EVERY" train.eval_every="$STEPS" run_dir="$RUN")
if begin train train2.log; then
  rm -rf "$RUN"
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
  passed
fi

# --- sample ----------------------------------------------------------------------------------------------------
if begin sample; then
  run_logged "$WORK/sample.log" "$PY" launchers/sample.py checkpoint="$RUN" sampler=mdlm steps="$SAMPLE_STEPS" \
    num_samples="$SAMPLES" batch_size="$SAMPLES" out="$WORK/samples.jsonl"
  [ "$(grep -c . "$WORK/samples.jsonl")" = "$SAMPLES" ] || fail "expected $SAMPLES samples in $WORK/samples.jsonl"
  say "sampled $SAMPLES sequences ($SAMPLE_STEPS steps)"
  passed
fi

# --- evaluate --------------------------------------------------------------------------------------------------
if [ -n "$AR_PID" ]; then
  STEP=scorer STEP_LOG=ar.log STEP_STARTED=$SCORER_STARTED
  wait "$AR_PID" || { tail -n 40 "$WORK/ar.log" >&2; fail "training the AR scorer failed (log: $WORK/ar.log)"; }
  say "AR scorer trained: $AR_STEPS steps"
  passed
fi
if begin evaluate; then
  run_logged "$WORK/evaluate.log" "$PY" launchers/evaluate.py samples="$WORK/samples.jsonl" \
    "metrics=[gen_ppl,entropy]" scorer="$WORK/ar" out="$WORK/results.json"
  "$PY" - "$WORK/results.json" <<'PYEOF' || fail "results.json lacks a finite gen_ppl or entropy"
import json, math, sys
r = json.load(open(sys.argv[1]))
ppl, entropy = r["gen_ppl"]["gen_ppl"], r["entropy"]["entropy"]
assert math.isfinite(ppl) and math.isfinite(entropy), (ppl, entropy)
print(f"[smoke] evaluate: gen_ppl {ppl:.4g} (under the AR scorer), entropy {entropy:.4g} nats")
PYEOF
  passed
fi

# --- export to Hugging Face and reload; figures -----------------------------------------------------------------
if begin export; then
  run_logged "$WORK/export.log" "$PY" tools/convert_checkpoint.py "$RUN" "$WORK/hf" --to hf-mdlm
  run_logged "$WORK/hf_check.log" "$PY" tools/gpu_smoke_checks.py hf "$RUN" "$WORK/hf"
  grep '^\[smoke\]' "$WORK/hf_check.log"
  passed
fi
figures() {  # RUN_DIR LABEL
  run_logged "$WORK/figures_$2.log" "$PY" tools/gpu_smoke_checks.py figures "$1" --label "$2" --device "$DEVICE" \
    --dtype "$PRECISION" --json "$WORK/figures.json"
  grep '^\[smoke\]' "$WORK/figures_$2.log"
}
if begin figures figures_train.log; then
  figures "$RUN" train
  passed
fi

# --- the presets' paths at DP = 1: ZeRO-1, ZeRO-3 (DSL), a DSL fine-tune --------------------------------------
path_run() {  # NAME LAUNCHER OVERRIDES...
  local name=$1 launcher=$2; shift 2
  rm -rf "$WORK/$name"
  run_logged "$WORK/$name.log" "$PY" "launchers/$launcher" "${COMMON[@]}" "${SHORT[@]}" model="$MODEL" \
    model.seq_len="$SEQ_LEN" train.steps="$PATH_STEPS" train.save_every="$PATH_STEPS" \
    train.eval_every="$PATH_STEPS" run_dir="$WORK/$name" "$@"
  [ "$(last_step "$WORK/$name/metrics.jsonl")" = "$PATH_STEPS" ] || fail "$name did not reach step $PATH_STEPS"
  say "$name: $PATH_STEPS steps, $(grep -o 'val_loss [0-9.]*' "$WORK/$name.log" | tail -1)"
}
if begin zero1; then path_run zero1 pretrain.py parallel.zero_stage=1; passed; fi
if begin zero3; then path_run zero3 pretrain.py parallel.zero_stage=3 objective=dsl; passed; fi
if begin finetune; then
  path_run finetune finetune.py parallel.zero_stage=1 init_from="$RUN"
  grep -q "new parameters" "$WORK/finetune.log" || fail "the fine-tune did not start from $RUN's weights"
  passed
fi

# --- `small` at L = 1024, compile on and off: tokens/s and MFU ---------------------------------------------------
if begin small figures.json; then
  for compile in "${COMPILES[@]}"; do
    name=small_compile_$compile
    rm -rf "$WORK/$name"
    run_logged "$WORK/$name.log" "$PY" launchers/pretrain.py "${COMMON[@]}" data.path="$WORK/data_long" \
      model="$BIG_MODEL" model.seq_len="$BIG_LEN" model.compile="$compile" train.global_batch="$BIG_BATCH" \
      train.micro_batch="$BIG_MICRO" train.steps="$BIG_STEPS" train.save_every=100000 \
      train.eval_every="$BIG_STEPS" run_dir="$WORK/$name"
    figures "$WORK/$name" "$name"
  done
  passed
fi

# --- one bf16 sampling step against fp32 -------------------------------------------------------------------------
if begin bf16 bf16_logits.log; then
  run_logged "$WORK/bf16_logits.log" "$PY" tools/gpu_smoke_checks.py bf16-logits "$RUN" --device "$DEVICE" \
    --json "$WORK/figures.json"
  grep '^\[smoke\]' "$WORK/bf16_logits.log"
  passed
fi

# --- multi-GPU layouts on NCCL -----------------------------------------------------------------------------------
if begin multi; then
  if [ "$MODE" = gpu ] && [ "$GPUS" -ge 2 ]; then
    for layout in "tp2:parallel.tp=2" "pp2:parallel.pp=2" "zero3_2:parallel.zero_stage=3"; do
      name=${layout%%:*}
      run_logged "$WORK/$name.log" "$PY" -m torch.distributed.run --nproc_per_node 2 launchers/pretrain.py \
        "${COMMON[@]}" "${SHORT[@]}" model="$MODEL" train.steps="$MP_STEPS" train.save_every="$MP_STEPS" \
        train.eval_every="$MP_STEPS" "${layout#*:}" run_dir="$WORK/$name"
      [ "$(last_step "$WORK/$name/metrics.jsonl")" = "$MP_STEPS" ] || fail "$name did not reach step $MP_STEPS"
      say "$name on NCCL: $MP_STEPS steps, $(grep -o 'val_loss [0-9.]*' "$WORK/$name.log" | tail -1)"
    done
    passed
  else
    STEP=""
    skipped multi "needs 2 GPUs"
    say "multi: skipped (the TP2 / PP2 / ZeRO-3 runs need two GPUs)"
  fi
fi
say "all steps passed (logs and outputs in $WORK)"
