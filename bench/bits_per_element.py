"""How many mask bits per element? The measurement behind version 2 of the mask contract.

The same chunked CPU kernel as kernels/dropout_cpu.py (vectorized Philox into a scratch buffer,
then a vectorized select loop), compiled three times with only the mask word width changed:
32 bits (4 elements per Philox call, contract version 1), 16 bits (8, version 2) and 8 bits (16).
Also timed, interleaved in the same rounds: the library's own kernel (`lib`, version 2) and a numpy
copy of the same bytes (`copy`, the memory floor; numpy copies on one thread). Forward is one
call; forward+backward is two (backward regenerates the mask and applies it to the gradient).

    .venv/bin/python bench/bits_per_element.py [--n 16777216] [--rounds 15]
"""
import argparse
import statistics
import time

import numba
import numpy as np

from fastdrop.kernels.dropout_cpu import CHUNK, dropout_flat
from fastdrop.kernels.philox import kernel_rng_args, philox_block_cpu

WIDTHS = (32, 16, 8)


def make_kernel(bits):
    """dropout_flat with `bits`-bit mask words: words are 32-bit Philox outputs cut into 32/bits
    pieces, low piece first (via a little-endian view of the scratch buffer)."""
    per_word = 32 // bits
    per_block = 4 * per_word
    piece = {8: np.uint8, 16: np.uint16, 32: np.uint32}[bits]

    def kernel(x, out, key_lo, key_hi, off_lo, off_hi, thr, scale):
        n = x.size
        for c in numba.prange((n + CHUNK - 1) // CHUNK):
            buf = np.empty(CHUNK // per_word + 4, np.uint32)
            start = c * CHUNK
            m = min(CHUNK, n - start)
            for j in range((m + per_block - 1) // per_block):
                r0, r1, r2, r3 = philox_block_cpu(np.uint64(start // per_block + j), off_lo, off_hi,
                                                  key_lo, key_hi)
                buf[4 * j] = np.uint32(r0)
                buf[4 * j + 1] = np.uint32(r1)
                buf[4 * j + 2] = np.uint32(r2)
                buf[4 * j + 3] = np.uint32(r3)
            words = buf.view(piece)
            xs = x[start:start + m]
            os = out[start:start + m]
            zero = x.dtype.type(0)
            for k in range(m):
                y = xs[k] * scale
                os[k] = y if np.uint32(words[k]) < thr else zero
    return numba.njit(parallel=True, nogil=True, error_model="numpy")(kernel)


def timed(fns, rounds):
    """Median seconds per provider, providers interleaved in every round (order reversed on odd rounds)."""
    for f in fns.values():
        f()
        f()
    samples = {k: [] for k in fns}
    order = list(fns)
    for r in range(rounds):
        for k in (order if r % 2 == 0 else order[::-1]):
            t = time.perf_counter()
            fns[k]()
            samples[k].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in samples.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096 * 4096)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    kernels = {b: make_kernel(b) for b in WIDTHS}
    x = np.random.default_rng(0).random(args.n, dtype=np.float32)
    out = np.empty_like(x)
    print(f"n = {args.n} float32, medians of {args.rounds} interleaved rounds, ms\n")
    print("| threads | p | pass | 32-bit | 16-bit | 8-bit | lib (v2) | copy | 32/16 | 32/8 |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for threads in (1, 2):
        numba.set_num_threads(threads)
        for p in (0.1, 0.5, 0.9):
            kl, kh, ol, oh, thr_lib = kernel_rng_args(123, 0, p)
            scale = np.float32(1 / (1 - p))
            fns = {}
            for b in WIDTHS:
                thr = np.uint32(int(np.floor((1 - p) * 2**b)))
                fns[b] = lambda b=b, thr=thr: kernels[b](x, out, kl, kh, ol, oh, thr, scale)
            fns["lib"] = lambda: dropout_flat(x, out, kl, kh, ol, oh, thr_lib, scale)
            fns["copy"] = lambda: np.copyto(out, x)
            fwd = timed(fns, args.rounds)
            both = {k: (lambda f=f: (f(), f())) for k, f in fns.items()}  # the gradient pass is the same op
            fwdbwd = timed(both, args.rounds)
            for name, t in (("fwd", fwd), ("fwd+bwd", fwdbwd)):
                print(f"| {threads} | {p} | {name} | " + " | ".join(f"{t[k] * 1e3:.2f}" for k in fns)
                      + f" | {t[32] / t[16]:.2f}x | {t[32] / t[8]:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
