"""The CUDA kernels' tests: run on a real GPU, or in Numba's CUDA simulator in their own process
(`NUMBA_ENABLE_CUDASIM=1 pytest tests/cuda`, see scripts/test.sh; the simulator must be switched
on before numba is imported). Anywhere else, every test here is skipped, not failed."""
import os
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).parent
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"


def _cuda_available():
    if SIMULATOR:
        return True
    from numba import cuda
    return cuda.is_available()


def pytest_collection_modifyitems(config, items):
    mine = [it for it in items if HERE in Path(str(it.path)).parents]
    if not mine or _cuda_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU or NUMBA_ENABLE_CUDASIM=1 (own process, "
                                   "see scripts/test.sh)")
    for item in mine:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def rng():
    return np.random.default_rng(20261123)
