"""Philox4x32-10 compiled with cuda.jit(device=True): Random123's known answers, and blocks whose
index needs more than 32 bits (counter words 0 and 1 both in play)."""
import numpy as np
import pytest
from numba import cuda

import fastdrop
from fastdrop.kernels.dropout_cuda import philox_block_cuda, philox_rounds_cuda
from fastdrop.kernels.philox import ROUNDS

pytestmark = pytest.mark.cudasim

KNOWN_ANSWERS = [  # (counter, key, expected), Random123's kat_vectors for philox4x32_10
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@cuda.jit
def rounds_kernel(ctr, key, out):
    i = cuda.grid(1)
    if i < ctr.shape[0]:
        r0, r1, r2, r3 = philox_rounds_cuda(ctr[i, 0], ctr[i, 1], ctr[i, 2], ctr[i, 3],
                                            key[i, 0], key[i, 1], ROUNDS)
        out[i, 0] = r0
        out[i, 1] = r1
        out[i, 2] = r2
        out[i, 3] = r3


@cuda.jit
def block_kernel(blocks, off_lo, off_hi, key_lo, key_hi, out):
    i = cuda.grid(1)
    if i < blocks.shape[0]:
        r0, r1, r2, r3 = philox_block_cuda(blocks[i], off_lo, off_hi, key_lo, key_hi)
        out[i, 0] = r0
        out[i, 1] = r1
        out[i, 2] = r2
        out[i, 3] = r3


def test_known_answers_on_device():
    ctr = np.array([c for c, _, _ in KNOWN_ANSWERS], dtype=np.uint64)
    key = np.array([k for _, k, _ in KNOWN_ANSWERS], dtype=np.uint64)
    out = cuda.device_array((len(KNOWN_ANSWERS), 4), dtype=np.uint64)
    rounds_kernel[1, 32](cuda.to_device(ctr), cuda.to_device(key), out)
    np.testing.assert_array_equal(out.copy_to_host(), [e for _, _, e in KNOWN_ANSWERS])


@pytest.mark.parametrize("seed, offset", [(0, 0), (2**32 + 7, 2**40 + 3), (2**64 - 1, 2**64 - 1)])
def test_block_index_beyond_32_bits(seed, offset):
    blocks = np.array([0, 1, 2**32 - 1, 2**32, 2**32 + 5, 2**40 + 7, 2**62 + 9, 2**64 - 1], np.uint64)
    out = cuda.device_array((blocks.size, 4), dtype=np.uint64)
    block_kernel[1, 32](cuda.to_device(blocks), np.uint64(offset & 0xFFFFFFFF), np.uint64(offset >> 32),
                        np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32), out)
    ctr = np.stack([blocks & np.uint64(0xFFFFFFFF), blocks >> np.uint64(32),
                    np.full_like(blocks, offset & 0xFFFFFFFF), np.full_like(blocks, offset >> 32)], -1)
    expected = fastdrop.philox4x32(ctr, [seed & 0xFFFFFFFF, seed >> 32])
    np.testing.assert_array_equal(out.copy_to_host(), expected)
