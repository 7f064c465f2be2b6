#!/usr/bin/env bash
# Wheels a GPU machine without network needs for scripts/gpu_check.sh, downloaded here into the
# folder .whl/ (ignored through .git/info/exclude: never committed, and for the same reason NOT
# sent with the working tree unless asked: the device tool's run call must name it, carry: [".whl"]). Today that is numpy < 2.5: numba-cuda 0.30 cannot compile a kernel under numpy 2.5
# (np.row_stack is gone), and the H200 image of 2026-12 holds numpy 2.5; gpu_check.sh installs the
# wheel into a private folder when the machine's numpy lacks row_stack.
#
#   bash scripts/gpu_wheels.sh            # then, on the GPU machine: bash scripts/gpu_check.sh
#
# PYTHON_VERSION (default 3.12) is the GPU machine's Python, not this one's; gpu_check.sh picks the
# wheel whose cp tag matches its python and says so when none does.
set -euo pipefail
cd "$(dirname "$0")/.."
PYV="${PYTHON_VERSION:-3.12}"
EXCLUDE="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$EXCLUDE")" .whl
grep -qx "/.whl/" "$EXCLUDE" 2>/dev/null || echo "/.whl/" >> "$EXCLUDE"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$PYV" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .whl "numpy==2.4.6"
ls -l .whl
