"""Property-based tests (hypothesis): for random shapes (0- and 1-size dims included), layouts
(slices, transposes, negative strides), dtypes, p, seeds and offsets anywhere in [0, 2^64),
every dropout op equals the boring reference built from `dropout_mask`, and `dropout_mask`
itself equals the mask contract written out with `philox4x32`."""
import numpy as np
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import fastdrop
from contract import mask as contract_mask

U64 = st.integers(0, 2**64 - 1)
P = st.one_of(st.sampled_from([0.0, 1.0, 0.5, 1e-12, 1 - 1e-12]), st.floats(0.0, 1.0))
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def arrays(draw, min_ndim=0, max_ndim=4):
    """A float array of a random shape, possibly a strided view (slice / transpose / reversal)."""
    ndim = draw(st.integers(min_ndim, max_ndim))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    layout = draw(st.sampled_from(["contiguous", "slice", "transpose", "reverse"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if layout == "slice" and ndim:
        axis = draw(st.integers(0, ndim - 1))
        big = list(shape)
        big[axis] = 2 * shape[axis]
        base = rng.standard_normal(big).astype(dtype)
        x = base[(slice(None),) * axis + (slice(None, None, 2),)]
    elif layout == "transpose" and ndim > 1:
        perm = draw(st.permutations(range(ndim)))
        base = rng.standard_normal([shape[i] for i in np.argsort(perm)]).astype(dtype)
        x = base.transpose(perm)
    elif layout == "reverse" and ndim:
        x = rng.standard_normal(shape).astype(dtype)[::-1]
    else:
        x = rng.standard_normal(shape).astype(dtype)
    assert x.shape == shape
    return x


def reference(x, keep, p, mode):
    scale = 1.0 if mode == "classic" or p == 1.0 else 1.0 / (1.0 - p)
    return np.where(keep, x * x.dtype.type(scale), x.dtype.type(0))


def as_kind(x, kind):
    if kind == "numpy":
        return x.copy() if not x.flags.writeable else x
    # torch has no negative strides: numpy's reversed views become contiguous copies
    return torch.from_numpy(x.copy() if any(s < 0 for s in x.strides) else x)


@SETTINGS
@given(x=arrays(), p=P, seed=U64, offset=U64, kind=st.sampled_from(["numpy", "torch"]),
       mode=st.sampled_from(["inverted", "classic"]))
def test_dropout_equals_mask_reference(x, p, seed, offset, kind, mode):
    xin = as_kind(x, kind)
    y = np.asarray(fastdrop.dropout(xin, p, seed=seed, offset=offset, mode=mode))
    keep = fastdrop.dropout_mask(x.shape, p, seed, offset)
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, reference(x, keep, p, mode))


@SETTINGS
@given(x=arrays(min_ndim=2, max_ndim=5), p=P, seed=U64, offset=U64,
       kind=st.sampled_from(["numpy", "torch"]))
def test_spatial_dropout_equals_mask_reference(x, p, seed, offset, kind):
    ops = {2: [(fastdrop.dropout1d, 1)], 3: [(fastdrop.dropout1d, 2)],
           4: [(fastdrop.dropout2d, 2), (fastdrop.dropout3d, 1)], 5: [(fastdrop.dropout3d, 2)]}
    for op, lead in ops[x.ndim]:
        y = np.asarray(op(as_kind(x, kind), p, seed=seed, offset=offset))
        keep = fastdrop.dropout_mask(x.shape[:lead], p, seed, offset)
        keep = keep.reshape(keep.shape + (1,) * (x.ndim - lead))
        np.testing.assert_array_equal(y, reference(x, keep, p, "inverted"))


@SETTINGS
@given(x=arrays(max_ndim=3), p=P, seed=U64, offset=U64)
def test_inplace_equals_out_of_place(x, p, seed, offset):
    expected = fastdrop.dropout(x, p, seed=seed, offset=offset)
    work = x.copy()
    assert fastdrop.dropout(work, p, seed=seed, offset=offset, inplace=True) is work
    np.testing.assert_array_equal(work, expected)
    t = torch.from_numpy(x.copy())
    fastdrop.dropout(t, p, seed=seed, offset=offset, inplace=True)
    np.testing.assert_array_equal(t.numpy(), expected)


@SETTINGS
@given(shape=st.lists(st.integers(0, 9), max_size=3).map(tuple), p=P, seed=U64, offset=U64)
def test_dropout_mask_is_the_contract(shape, p, seed, offset):
    np.testing.assert_array_equal(fastdrop.dropout_mask(shape, p, seed, offset),
                                  contract_mask(shape, p, seed, offset))


@SETTINGS
@given(x=arrays(max_ndim=3), p=P, seed=U64, offset=U64)
def test_torch_gradient_is_the_same_mask(x, p, seed, offset):
    t = torch.from_numpy(x.copy()).requires_grad_()  # (ascontiguousarray makes 0-d 1-d)
    g = torch.from_numpy(np.random.default_rng(0).standard_normal(x.shape).astype(x.dtype))
    fastdrop.dropout(t, p, seed=seed, offset=offset).backward(g)
    keep = fastdrop.dropout_mask(x.shape, p, seed, offset)
    if p == 0.0:  # p = 0 returns x itself: the gradient passes through
        keep = np.ones(x.shape, bool)
    np.testing.assert_array_equal(t.grad.numpy(), reference(g.numpy(), keep, p, "inverted"))
