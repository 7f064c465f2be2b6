"""Where the time of the CPU dropout kernel goes: Philox work, memory traffic, and their overlap.

The kernel's two halves, each timed alone, interleaved in the same rounds as the kernel:

- `philox`: only the mask words (the same `fill_words` into the same per-chunk scratch buffer),
  no data touched: the compute floor.
- `scale`: only the data (out = x * scale, chunked the same way, same vectorized loop), no mask:
  the memory floor of this loop (it pays the read-for-ownership of `out`, which numpy's copy,
  using non-temporal stores, does not).
- `plain`: the library's chunk loop with the plain fill (no prefetch), as before the prefetching
  fill: the data of a chunk is only touched after its words are made, so the two halves add up.
- `lib`: `kernels.dropout_cpu.dropout_flat` as shipped (prefetching fill above
  config.CPU_PREFETCH_MIN_BYTES).
- `copy`: numpy's copy of the same bytes (one thread).

A kernel that overlaps perfectly runs in max(philox, scale); one that alternates in philox + scale.

    .venv/bin/python bench/overlap.py [--n 16777216] [--rounds 21]
"""
import argparse

import numba
import numpy as np

from fastdrop.kernels.dropout_cpu import CHUNK, dropout_flat, fill_words
from fastdrop.kernels.philox import LANES, kernel_rng_args

from bits_per_element import timed


@numba.njit(parallel=True, nogil=True, error_model="numpy")
def philox_only(n, sink, key_lo, key_hi, off_lo, off_hi):
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint16)
        start = c * CHUNK
        m = min(CHUNK, n - start)
        fill_words(buf, start // LANES, (m + LANES - 1) // LANES, off_lo, off_hi, key_lo, key_hi)
        sink[c] = buf[c % m]  # keeps the words alive


@numba.njit(parallel=True, nogil=True, error_model="numpy")
def scale_only(x, out, scale):
    n = x.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        start = c * CHUNK
        m = min(CHUNK, n - start)
        xs = x[start:start + m]
        os = out[start:start + m]
        for k in range(m):
            os[k] = xs[k] * scale


@numba.njit(parallel=True, nogil=True, error_model="numpy")
def plain_fill(x, out, key_lo, key_hi, off_lo, off_hi, thr, scale):
    n = x.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint16)
        start = c * CHUNK
        m = min(CHUNK, n - start)
        fill_words(buf, start // LANES, (m + LANES - 1) // LANES, off_lo, off_hi, key_lo, key_hi)
        xs = x[start:start + m]
        os = out[start:start + m]
        zero = x.dtype.type(0)
        for k in range(m):
            y = xs[k] * scale
            os[k] = y if np.uint32(buf[k]) < thr else zero


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096 * 4096)
    ap.add_argument("--rounds", type=int, default=21)
    args = ap.parse_args()
    x = np.random.default_rng(0).random(args.n, dtype=np.float32)
    out = np.empty_like(x)
    sink = np.empty((args.n + CHUNK - 1) // CHUNK, np.uint16)
    kl, kh, ol, oh, thr = kernel_rng_args(123, 0, 0.5)
    scale = np.float32(2.0)
    fns = {
        "philox": lambda: philox_only(args.n, sink, kl, kh, ol, oh),
        "scale": lambda: scale_only(x, out, scale),
        "plain": lambda: plain_fill(x, out, kl, kh, ol, oh, thr, scale),
        "lib": lambda: dropout_flat(x, out, kl, kh, ol, oh, thr, scale),
        "copy": lambda: np.copyto(out, x),
    }
    print(f"n = {args.n} float32, p = 0.5, medians of {args.rounds} interleaved rounds, ms\n")
    print("| threads | philox | scale | philox + scale | plain | lib | copy | plain / lib | lib / max(philox, scale) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in (1, 2):
        numba.set_num_threads(threads)
        t = {k: v * 1e3 for k, v in timed(fns, args.rounds).items()}
        print(f"| {threads} | {t['philox']:.2f} | {t['scale']:.2f} | {t['philox'] + t['scale']:.2f} | "
              f"{t['plain']:.2f} | {t['lib']:.2f} | {t['copy']:.2f} | {t['plain'] / t['lib']:.2f}x | "
              f"{t['lib'] / max(t['philox'], t['scale']):.2f}x |", flush=True)


if __name__ == "__main__":
    main()
