"""The mask contract (version 2) written independently of the kernels: README's numpy recipe,
verbatim, plus the per-block helpers the boundary tests use."""
import numpy as np

import fastdrop


def mask(shape, p, seed, offset=0):
    """README's numpy recipe, kept verbatim."""
    n = int(np.prod(shape)); b = np.arange((n + 7) // 8, dtype=np.uint64)
    ctr = np.stack([b & 0xFFFFFFFF, b >> 32,
                    np.full_like(b, offset & 0xFFFFFFFF), np.full_like(b, offset >> 32)], -1)
    words = fastdrop.philox4x32(ctr, [seed & 0xFFFFFFFF, seed >> 32])           # (blocks, 4) uint32
    halves = np.stack([words & 0xFFFF, words >> 16], -1).reshape(-1)[:n]       # low half first
    return (halves < int(np.floor((1 - p) * 2**16))).reshape(shape)


def block_words(block, offset, seed):
    """The four 32-bit Philox words of one block."""
    ctr = np.array([[block & 0xFFFFFFFF, block >> 32, offset & 0xFFFFFFFF, offset >> 32]], np.uint64)
    return fastdrop.philox4x32(ctr, [seed & 0xFFFFFFFF, seed >> 32])[0]


def block_halves(block, offset, seed):
    """The eight 16-bit mask words of one block (elements 8 * block .. 8 * block + 7)."""
    w = block_words(block, offset, seed).astype(np.uint32)
    return np.stack([w & 0xFFFF, w >> 16], -1).reshape(-1).astype(np.uint16)


def apply(x, keep, scale):
    """where(keep, x * scale, 0) as the kernels compute it: in x's dtype, float16 through float32
    and rounded once; keep broadcasts against x."""
    wide = np.float32 if x.dtype == np.float16 else x.dtype.type
    return np.where(keep, (x.astype(wide) * wide(scale)).astype(x.dtype), x.dtype.type(0))
