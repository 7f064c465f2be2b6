"""`import fastdrop` is light: no torch, no numba.cuda; the numpy API works with torch absent."""
import subprocess
import sys

SCRIPT_NO_TORCH = """
import sys
sys.modules['torch'] = None  # any 'import torch' now raises ImportError
import numpy as np, fastdrop
y = fastdrop.dropout(np.ones((4, 5), np.float32), 0.5, seed=1)
assert (y == np.where(fastdrop.dropout_mask((4, 5), 0.5, 1), 2.0, 0.0)).all()
try:
    fastdrop.nn
except ImportError:
    print('ok')
"""

SCRIPT_LIGHT = """
import sys, fastdrop
print(sorted(m for m in ('torch', 'numba.cuda') if m in sys.modules))
"""


def _run(script):
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)


def test_numpy_api_without_torch():
    res = _run(SCRIPT_NO_TORCH)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"


def test_import_loads_neither_torch_nor_cuda():
    res = _run(SCRIPT_LIGHT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"
