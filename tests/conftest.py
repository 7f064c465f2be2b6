import numpy as np
import pytest

import fastdrop


@pytest.fixture(autouse=True)
def _seed_everything():
    """One autouse seed: every test sees the same numpy, torch and fastdrop seed streams."""
    np.random.seed(0)
    fastdrop.manual_seed(0)
    try:
        import torch
        torch.manual_seed(0)
    except ImportError:
        pass
    yield


@pytest.fixture
def spy_kernels(monkeypatch):
    """spy_kernels(*names): wrap those kernels of fastdrop.kernels.dropout_cpu so that each call
    is recorded (by name) in the list returned, and still runs."""
    from fastdrop.kernels import dropout_cpu

    def spy(*names):
        calls = []
        for name in names:
            kernel = getattr(dropout_cpu, name)
            monkeypatch.setattr(dropout_cpu, name, lambda *a, _k=kernel, _n=name: (calls.append(_n), _k(*a))[1])
        return calls
    return spy
