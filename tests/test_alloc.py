"""The caching allocator behind large CPU outputs (fastdrop/_alloc.py): right values, blocks reused
only once no tensor refers to them, a bounded cache."""
import gc

import numpy as np
import torch

import fastdrop
from fastdrop import _alloc

ROWS, COLS = 4096, 2048  # 32 MiB of float32: the smallest pooled size


def _reference(x, p, seed):
    m = torch.from_numpy(fastdrop.dropout_mask(x.shape, p, seed))
    return torch.where(m, x * (1 / (1 - p)), torch.zeros((), dtype=x.dtype))


def test_large_outputs_are_right_and_reused_after_release():
    x = torch.randn(ROWS, COLS)
    y = fastdrop.dropout(x, 0.5, seed=1)
    assert torch.equal(y, _reference(x, 0.5, 1))
    ptr = y.data_ptr()
    del y
    gc.collect()
    y2 = fastdrop.dropout(x, 0.5, seed=2)
    assert y2.data_ptr() == ptr
    assert torch.equal(y2, _reference(x, 0.5, 2))


def test_live_outputs_are_never_handed_out_again():
    x = torch.randn(ROWS, COLS)
    held = [fastdrop.dropout(x, 0.5, seed=s) for s in (3, 4, 5)]
    view = fastdrop.dropout(x, 0.5, seed=6)[:10]  # a view keeps its whole block alive
    ptrs = {t.data_ptr() for t in held}
    assert len(ptrs) == 3
    for _ in range(3):
        fastdrop.dropout(x, 0.5, seed=7)
    for s, t in zip((3, 4, 5), held):
        assert torch.equal(t, _reference(x, 0.5, s))
    assert torch.equal(view, _reference(x, 0.5, 6)[:10])


def test_backward_through_pooled_outputs():
    x = torch.randn(ROWS, COLS, requires_grad=True)
    y = fastdrop.dropout(x, 0.3, seed=8)
    y.backward(torch.ones_like(y))
    m = torch.from_numpy(fastdrop.dropout_mask(x.shape, 0.3, 8))
    assert torch.equal(x.grad, torch.where(m, torch.tensor(1 / 0.7), torch.tensor(0.0)))


def test_cache_is_bounded():
    x = torch.randn(ROWS, COLS)
    outs = [fastdrop.dropout(x, 0.5, seed=s) for s in range(20)]  # 640 MiB live
    del outs
    gc.collect()
    assert 0 < _alloc.cached_bytes() <= _alloc.MAX_CACHED_BYTES


def test_small_and_strided_outputs_use_torch():
    small = fastdrop.dropout(torch.randn(64, 64), 0.5, seed=1)
    small.resize_(10)  # an ordinary torch tensor: resizable
    cl = torch.randn(64, 64, 64, 64).to(memory_format=torch.channels_last)
    assert fastdrop.dropout(cl, 0.5, seed=1).is_contiguous(memory_format=torch.channels_last)
    assert np.isfinite(small.numpy()).all()
