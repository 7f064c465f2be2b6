"""Property tests (hypothesis) for the public API on CUDA device arrays: for random tiny shapes
(0- and 1-size dims), layouts (device-side slices), dtypes, p, seeds and offsets in [0, 2^64),
dropout and spatial dropout on the device equal the CPU path bit for bit, and repeated calls are
identical. Tiny and few examples: the simulator runs every thread in Python."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from numba import cuda

import fastdrop

pytestmark = pytest.mark.cudasim

U64 = st.integers(0, 2**64 - 1)
P = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(0.0, 1.0))
SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))


@st.composite
def host_and_device(draw, min_ndim=1, max_ndim=3):
    ndim = draw(st.integers(min_ndim, max_ndim))
    shape = tuple(draw(st.lists(st.integers(0, 4), min_size=ndim, max_size=ndim)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    sliced = draw(st.booleans())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if sliced:  # a strided device view: every other element of the last axis
        base = rng.standard_normal(shape[:-1] + (2 * shape[-1],)).astype(dtype)
        every_other = (slice(None),) * (ndim - 1) + (slice(None, None, 2),)  # [..., ::2]: a GPU's
        return base[every_other], cuda.to_device(base)[every_other]       # device arrays take no ...
    x = rng.standard_normal(shape).astype(dtype)
    return x, cuda.to_device(x)


@SETTINGS
@given(xd=host_and_device(), p=P, seed=U64, offset=U64, mode=st.sampled_from(["inverted", "classic"]))
def test_device_dropout_equals_cpu(xd, p, seed, offset, mode):
    x, d = xd
    expected = fastdrop.dropout(x, p, seed=seed, offset=offset, mode=mode)
    got = fastdrop.dropout(d, p, seed=seed, offset=offset, mode=mode)
    assert same_bits(np.asarray(got.copy_to_host() if hasattr(got, "copy_to_host") else got), expected)
    again = fastdrop.dropout(d, p, seed=seed, offset=offset, mode=mode)
    assert same_bits(np.asarray(again.copy_to_host() if hasattr(again, "copy_to_host") else again),
                     expected)


@SETTINGS
@given(xd=host_and_device(min_ndim=3, max_ndim=3), p=P, seed=U64, offset=U64)
def test_device_spatial_dropout_equals_cpu(xd, p, seed, offset):
    x, d = xd
    got = fastdrop.dropout1d(d, p, seed=seed, offset=offset)
    got = got.copy_to_host() if hasattr(got, "copy_to_host") else np.asarray(got)
    assert same_bits(got, fastdrop.dropout1d(x, p, seed=seed, offset=offset))
