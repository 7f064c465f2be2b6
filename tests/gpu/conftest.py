"""Tests that need a real NVIDIA GPU and a CUDA build of torch (the torch-CUDA route, CUDA streams,
CUDA graphs). Run them with `bash scripts/gpu_check.sh`, or `pytest tests/gpu`.

Collected only when asked: when a path inside tests/gpu is given on the command line, or with
FASTDROP_GPU_TESTS=1. The default run (`pytest`, testpaths = tests) does not collect them, so the
CPU suite and the simulator run (`NUMBA_ENABLE_CUDASIM=1 pytest tests/cuda`) are unchanged.
When asked on a machine without a usable GPU (no torch CUDA device, no numba.cuda device, or
Numba's simulator switched on, which cannot take torch CUDA tensors) every test here is skipped
with the reason.
"""
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def _asked(config):
    if os.environ.get("FASTDROP_GPU_TESTS") == "1":
        return True
    root = Path(str(config.invocation_params.dir))
    for arg in config.invocation_params.args:
        arg = str(arg)
        if arg.startswith("-"):
            continue
        path = Path(arg.split("::", 1)[0])
        path = (path if path.is_absolute() else root / path).resolve()
        if path == HERE or HERE in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path, config):
    path = Path(str(collection_path)).resolve()
    if HERE in path.parents and path.suffix == ".py" and path.name.startswith("test_"):
        return None if _asked(config) else True
    return None


_REASON = None


def gpu_unavailable_reason():
    """None when the torch-CUDA route can run here, else why not (cached)."""
    global _REASON
    if _REASON is None:
        _REASON = _probe() or ""
    return _REASON or None


def _probe():
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return "NUMBA_ENABLE_CUDASIM=1: the simulator cannot take torch CUDA tensors (run tests/gpu without it)"
    try:
        import torch
    except ImportError:
        return "torch is not installed"
    if not torch.cuda.is_available():
        return f"no CUDA device for torch (torch {torch.__version__})"
    try:
        from numba import cuda
        if not cuda.is_available():
            return "numba.cuda sees no GPU (driver / CUDA bindings)"
    except Exception as e:  # pragma: no cover - depends on the machine
        return f"numba.cuda failed to load: {type(e).__name__}: {e}"
    return None


def pytest_collection_modifyitems(config, items):
    mine = [it for it in items if HERE in Path(str(it.path)).resolve().parents]
    if not mine:
        return
    reason = gpu_unavailable_reason()
    if reason is None:
        return
    skip = pytest.mark.skip(reason=f"needs a real CUDA GPU: {reason}")
    for item in mine:
        item.add_marker(skip)
