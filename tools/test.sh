#!/usr/bin/env bash
# Sets up .venv when needed, checks style, runs the test suite.
#   bash tools/test.sh            the default suite (not `slow`)
#   bash tools/test.sh --all      everything, `slow` included
#   bash tools/test.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh

args=()
for arg in "$@"; do
  if [ "$arg" = "--all" ]; then args+=(-m ""); else args+=("$arg"); fi
done

.venv/bin/ruff check .
export DS_ACCELERATOR=${DS_ACCELERATOR:-cpu}
status=0
.venv/bin/python -m pytest "${args[@]}" || status=$?
# DeepSpeed's CPU all-reduce leaves a shared-memory buffer per rank behind.
rm -f /dev/shm/deepspeed_allreduce_buffer_* 2>/dev/null || true
exit $status
