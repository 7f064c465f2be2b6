"""Determinism and index math.

- The same (seed, offset) gives bit-identical outputs with 1 and 2 Numba threads, in a fresh
  process, and from several Python threads calling at once (the kernels release the GIL).
- Element indices past 2^32: the element -> Philox counter mapping carries the block index's
  high half in counter word 1, so block 2^32 + k is never block k (no wrap into an earlier
  element's bits); checked directly on the compiled block function and scratch fill the kernels
  use, and through offsets >= 2^32.
- The Numba dispatchers compile once per dtype/layout, not once per shape.
"""
import hashlib
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
import torch

import fastdrop
from fastdrop.kernels import dropout_cpu
from fastdrop.kernels.philox import philox_block_cpu

SEED, OFFSET = 0x0123456789ABCDEF, 2**40 + 7


def workload():
    """Every CPU kernel: flat, strided (transpose, negative strides), grouped, keep_mask, torch."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 129)).astype(np.float32)
    x64 = rng.standard_normal((6, 5, 33)).astype(np.float64)
    outs = [fastdrop.dropout(x, 0.3, seed=SEED, offset=OFFSET),
            fastdrop.dropout(x.T, 0.3, seed=SEED, offset=OFFSET),
            fastdrop.dropout(x[::-2, ::3], 0.7, seed=SEED),
            fastdrop.dropout1d(x64, 0.5, seed=SEED, offset=OFFSET),
            fastdrop.dropout_mask((3001,), 0.25, SEED, OFFSET),
            fastdrop.dropout(torch.from_numpy(x64), 0.4, seed=SEED).numpy()]
    return outs


def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")
def test_bit_identical_with_1_and_2_numba_threads():
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = workload()
        numba.set_num_threads(2)
        two = workload()
    finally:
        numba.set_num_threads(previous)
    for a, b in zip(one, two):
        assert a.tobytes() == b.tobytes()


def test_bit_identical_across_processes():
    code = ("import sys; sys.path.insert(0, %r); import test_determinism as t; "
            "print(t.digest(t.workload()))" % str(__import__("pathlib").Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == digest(workload())


def test_seed_none_reproducible_across_processes():
    """seed=None after fastdrop.manual_seed / torch.manual_seed: the same masks in a fresh process."""
    code = ("import numpy as np, torch, fastdrop, hashlib; fastdrop.manual_seed(11); torch.manual_seed(11); "
            "a = fastdrop.dropout(np.ones(500), 0.5); b = fastdrop.dropout(torch.ones(500), 0.5).numpy(); "
            "print(hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    fastdrop.manual_seed(11)
    torch.manual_seed(11)
    a = fastdrop.dropout(np.ones(500), 0.5)
    b = fastdrop.dropout(torch.ones(500), 0.5).numpy()
    assert out.stdout.strip() == hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest()


def test_concurrent_calls_from_python_threads():
    if numba.threading_layer() == "workqueue":  # set once the first parallel kernel has run
        pytest.skip("Numba's workqueue threading layer is not thread-safe (docs/robustness.md)")
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((257, 65)).astype(np.float32) for _ in range(4)]
    expected = {(i, s): fastdrop.dropout(xs[i], 0.5, seed=s) for i in range(4) for s in range(6)}
    barrier = threading.Barrier(4)

    def job(i):
        barrier.wait()
        res = {}
        for s in range(6):
            res[(i, s)] = fastdrop.dropout(xs[i], 0.5, seed=s)
            t = fastdrop.dropout(torch.from_numpy(xs[i]), 0.5, seed=s).numpy()
            assert np.array_equal(t, res[(i, s)])
        return res

    with ThreadPoolExecutor(4) as pool:
        for res in pool.map(job, range(4)):
            for key, y in res.items():
                assert np.array_equal(y, expected[key])


def test_seed_none_draws_are_thread_safe():
    """Concurrent seed=None draws never hand two calls the same seed (the draw is locked)."""
    x = np.ones(4096, np.float32)
    with ThreadPoolExecutor(4) as pool:
        masks = list(pool.map(lambda _: fastdrop.dropout(x, 0.5) != 0, range(16)))
    assert len({m.tobytes() for m in masks}) == 16


# ---- index math past 2^32 ----------------------------------------------------------------

def contract_words(block, offset, seed):
    ctr = np.array([[block & 0xFFFFFFFF, block >> 32, offset & 0xFFFFFFFF, offset >> 32]], np.uint64)
    return fastdrop.philox4x32(ctr, [seed & 0xFFFFFFFF, seed >> 32])[0]


def kernel_words(block, offset, seed):
    r = philox_block_cpu(np.uint64(block), np.uint64(offset & 0xFFFFFFFF), np.uint64(offset >> 32),
                         np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32))
    return np.array([np.uint32(v) for v in r], np.uint32)


@pytest.mark.parametrize("element", [2**32 - 4, 2**32, 2**32 + 4, 2**34 + 8, 2**36 * 3 + 12,
                                     2**62, 2**64 - 4])
def test_block_mapping_past_2_32_never_wraps(element):
    block = element // 4
    low = block & 0xFFFFFFFF  # the block a 32-bit counter would wrap to
    got = kernel_words(block, OFFSET, SEED)
    np.testing.assert_array_equal(got, contract_words(block, OFFSET, SEED))
    if block >= 2**32:
        assert not np.array_equal(got, contract_words(low, OFFSET, SEED))


@numba.njit
def _fill(buf, first_block, nblocks, off_lo, off_hi, key_lo, key_hi):
    dropout_cpu.fill_words(buf, first_block, nblocks, off_lo, off_hi, key_lo, key_hi)


def test_scratch_fill_across_the_2_32_block_boundary():
    """fill_words (the scratch generator inside every CPU kernel) over blocks 2^32 - 3 .. 2^32 + 2."""
    first = 2**32 - 3
    buf = np.empty(24, np.uint32)
    _fill(buf, np.uint64(first), 6, np.uint64(OFFSET & 0xFFFFFFFF), np.uint64(OFFSET >> 32),
          np.uint64(SEED & 0xFFFFFFFF), np.uint64(SEED >> 32))
    expected = np.concatenate([contract_words(first + j, OFFSET, SEED) for j in range(6)])
    np.testing.assert_array_equal(buf, expected)


@pytest.mark.parametrize("offset", [2**32 - 1, 2**32, 2**33 + 5, 2**63, 2**64 - 1])
def test_offsets_past_2_32_follow_the_contract(offset):
    n = 4099
    words = np.concatenate([contract_words(b, offset, SEED) for b in range((n + 3) // 4)])[:n]
    expected = words.astype(np.uint64) < fastdrop.keep_threshold(0.5)
    np.testing.assert_array_equal(fastdrop.dropout_mask((n,), 0.5, SEED, offset), expected)
    # offsets differing only in the high half give different masks
    low = fastdrop.dropout_mask((n,), 0.5, SEED, offset & 0xFFFFFFFF)
    assert offset < 2**32 or not np.array_equal(low, expected)


# ---- Numba dispatcher: one compilation per dtype/layout, not per shape ----------------------

def test_no_recompilation_for_new_shapes():
    kernels = [dropout_cpu.dropout_flat, dropout_cpu.dropout_strided, dropout_cpu.keep_mask,
               dropout_cpu.apply_group_mask]

    def run(shape, dtype):
        x = np.ones(shape, dtype)
        fastdrop.dropout(x, 0.5, seed=1)
        fastdrop.dropout(np.swapaxes(x, 0, -1), 0.5, seed=1)
        fastdrop.dropout2d(x, 0.5, seed=1)
        fastdrop.dropout_mask(shape, 0.5, 1)

    for dtype in (np.float32, np.float64):
        run((2, 3, 4, 5), dtype)
    before = [len(k.signatures) for k in kernels]
    for shape in ((7, 1, 9, 2), (1, 1, 1, 1), (3, 8, 2, 129), (5, 2, 4, 3)):
        for dtype in (np.float32, np.float64):
            run(shape, dtype)
    assert [len(k.signatures) for k in kernels] == before
