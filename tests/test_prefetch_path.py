"""Large arrays take the prefetching fill (kernels.dropout_cpu.fill_chunk: mask words generated a
group at a time, the group's data prefetched first). The other tests use small arrays, which
take the plain fill; these check that the grouped fill gives the contract's bits in every kernel
that uses it, with a tail that is neither a whole group nor a whole Philox block."""
import numpy as np
import pytest

import fastdrop
from fastdrop.kernels.config import CPU_PREFETCH_GROUP, CPU_PREFETCH_MIN_BYTES
from fastdrop.kernels.dropout_cpu import CHUNK, dropout_flat
from fastdrop.kernels.mask_pair_cpu import dropout_pair
from fastdrop.kernels.mc_dropout_cpu import dropout_samples, dropout_samples_serial
from fastdrop.kernels.philox import kernel_rng_args

from contract import apply, mask

SEED, P = 987654321, 0.3


def _large(dtype, rng):
    """A flat array just above the prefetch threshold, its length 3 past a group boundary."""
    n = CPU_PREFETCH_MIN_BYTES // np.dtype(dtype).itemsize + CPU_PREFETCH_GROUP * 5 + 3
    assert n * np.dtype(dtype).itemsize >= CPU_PREFETCH_MIN_BYTES and n % CHUNK % CPU_PREFETCH_GROUP == 3
    return rng.standard_normal(n).astype(dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("inplace", [False, True])
def test_dropout_large_matches_contract(dtype, inplace):
    x = _large(dtype, np.random.default_rng(0))
    want = apply(x, mask(x.shape, P, SEED), 1 / (1 - P))
    y = fastdrop.dropout(x, P, seed=SEED, inplace=inplace)
    assert (y is x) == inplace
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("kernel", [dropout_flat.parallel, dropout_flat.serial], ids=["parallel", "serial"])
def test_flat_kernel_twins_large(kernel):
    x = _large(np.float32, np.random.default_rng(1))
    out = np.full_like(x, np.nan)
    kernel(x, out, *kernel_rng_args(SEED, 5, P), np.float32(2.0))
    np.testing.assert_array_equal(out, apply(x, mask(x.shape, P, SEED, 5), 2.0))


def test_pair_kernel_large():
    rng = np.random.default_rng(2)
    x1, x2 = _large(np.float32, rng), _large(np.float32, rng)
    o1, o2 = np.full_like(x1, np.nan), np.full_like(x2, np.nan)
    dropout_pair(x1, x2, o1, o2, *kernel_rng_args(SEED, 0, P), np.float32(1.5))
    keep = mask(x1.shape, P, SEED)
    np.testing.assert_array_equal(o1, apply(x1, keep, 1.5))
    np.testing.assert_array_equal(o2, apply(x2, keep, 1.5))


@pytest.mark.parametrize("kernel", [dropout_samples, dropout_samples_serial], ids=["parallel", "serial"])
@pytest.mark.parametrize("broadcast", [False, True])
def test_samples_kernel_large(kernel, broadcast):
    rng = np.random.default_rng(3)
    row = _large(np.float32, rng)
    x = np.broadcast_to(row, (2, row.size)) if broadcast else np.stack([row, row[::-1].copy()])
    out = np.full(x.shape, np.nan, np.float32)
    offsets = np.array([7, 1 << 40], np.uint64)
    key_lo, key_hi, _, _, thr = kernel_rng_args(SEED, 0, P)
    kernel(x, out, offsets & np.uint64(0xFFFFFFFF), offsets >> np.uint64(32), key_lo, key_hi, thr, np.float32(2.0))
    for t, off in enumerate(offsets.tolist()):
        np.testing.assert_array_equal(out[t], apply(x[t], mask((row.size,), P, SEED, off), 2.0))


@pytest.mark.parametrize("n", [1000, CPU_PREFETCH_MIN_BYTES // 4 + 13])  # serial; parallel, prefetching
@pytest.mark.parametrize("kind", ["numpy", "torch"])
def test_inplace_contiguous_takes_the_one_array_kernel(n, kind, spy_kernels):
    """In place on contiguous data runs dropout_flat_inplace (a loop over one array, which
    vectorizes; out = x through dropout_flat's two arrays falls to LLVM's scalar loop; a small
    torch tensor its twin on the tensor's address) and gives the out-of-place bits."""
    calls = spy_kernels("dropout_flat_inplace", "dropout_flat_inplace_serial", "dropout_flat_inplace_serial_at")
    x = np.random.default_rng(4).standard_normal(n).astype(np.float32)
    want = fastdrop.dropout(x, P, seed=SEED, offset=9)
    if kind == "torch":
        torch = pytest.importorskip("torch")
        t = torch.from_numpy(x.copy())
        y = fastdrop.dropout(t, P, seed=SEED, offset=9, inplace=True)
        assert y is t
        got = t.numpy()
    else:
        got = x.copy()
        assert fastdrop.dropout(got, P, seed=SEED, offset=9, inplace=True) is got
    assert calls, "the in-place kernel did not run"
    np.testing.assert_array_equal(got, want)
