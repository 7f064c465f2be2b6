#!/usr/bin/env bash
# Create .venv (once) and install fastdrop with its test/bench extras.
# torch is pinned to the local CPU build by ci/constraints.txt, so pip never resolves the multi-GB
# CUDA build. With a GPU, install your own CUDA torch first and use `pip install -e .[torch,test]`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
stamp=.venv/.fastdrop-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ ci/constraints.txt -nt "$stamp" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check -c ci/constraints.txt -e ".[torch,test]"
    touch "$stamp"
fi
