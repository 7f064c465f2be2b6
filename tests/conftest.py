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
