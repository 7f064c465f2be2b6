"""CPU kernels for elementwise and grouped (spatial / per-sample) dropout.

The mask contract (README, "The mask"; the formula is at the top of kernels/philox.py): element i
is kept iff its 16-bit mask word h(i), a half of a Philox4x32-10 output word (eight per Philox
call), is below T(p) = floor((1 - p) * 2^16). A kept element becomes x * scale, a dropped one 0.

Every kernel first fills a small scratch buffer with the mask words of a run of consecutive blocks
(a straight-line loop LLVM vectorizes: vpmuludq does 8 Philox lanes at once), then applies it.
Interleaving generation and application in one loop keeps Philox scalar and runs ~4x slower.
For large arrays the fill prefetches the chunk's data as it goes (`fill_chunk`), so the Philox
rounds overlap the memory traffic instead of alternating with it (docs/cpu_kernels.md).
The apply loops index chunk slices (`xs[k]`, not `x[start + k]`): LLVM then proves the accesses
in bounds and free of overlap and vectorizes them.

Half precision. Numba's CPU target has no float16 (nor bfloat16), so 16-bit data comes in as its
bits, and the dtype of the view names the format: uint16 = IEEE float16, int16 = bfloat16 (numpy
has no bfloat16; fastdrop._cpu makes the views). Each element is widened to float32 in a
register, multiplied by a float32 scale and rounded once back to 16 bits (round to nearest even),
so the result equals `(x.astype(float32) * scale).astype(half)` bit for bit while no float32 copy
of the data, not even a per-chunk one, is ever stored: out of place costs the output, in place
nothing. float16 converts with the F16C instructions where the CPU has them, else with the bit
code below (both tested over every input that can reach them); bfloat16 is the top half of a
float32, so its bit code is a shift and a rounding add. `_scaled` picks the arithmetic by the
element type when a kernel is compiled, so every kernel below serves all four dtypes.
NaN stays NaN with its sign and payload, quiet bit set (numpy's astype; torch's vectorized casts
give the same for float16, while its bfloat16 cast and its <8-element float16 cast replace every
NaN by one fixed pattern).
"""
import platform

import numpy as np
import numba
from llvmlite import binding as llvm_binding, ir
from numba.core import cgutils, types
from numba.extending import intrinsic, overload

from .config import jit_off_hint
from .config import (CPU_BLOCKS_PER_CHUNK, CPU_PREFETCH_GROUP, CPU_PREFETCH_MIN_BYTES, JIT_OPTIONS, TILED_A,
                     TILED_L, cpu_kernel)
from .philox import HALF_MASK, LANES, SHIFT16, philox_block_cpu

CHUNK = LANES * CPU_BLOCKS_PER_CHUNK  # elements (16-bit mask words) per scratch buffer


@intrinsic
def _f32_bits(typingctx, f):
    """The bits of a float32, as uint32 (a register move, no memory)."""
    if f != types.float32:
        return None
    return types.uint32(types.float32), lambda ctx, builder, sig, args: builder.bitcast(args[0], ir.IntType(32))


@intrinsic
def _f32_from_bits(typingctx, u):
    """The float32 with bits u (a uint32)."""
    if u != types.uint32:
        return None
    return types.float32(types.uint32), lambda ctx, builder, sig, args: builder.bitcast(args[0], ir.FloatType())


@intrinsic
def f16_to_f32_hw(typingctx, h):
    """float16 bits (uint16) -> float32 with LLVM's `fpext half`: one vcvtph2ps per 8 elements."""
    if h != types.uint16:
        return None
    return types.float32(types.uint16), lambda ctx, builder, sig, args: builder.fpext(
        builder.bitcast(args[0], ir.HalfType()), ir.FloatType())


@intrinsic
def f32_to_f16_hw(typingctx, f):
    """float32 -> float16 bits (uint16) with LLVM's `fptrunc` (round to nearest even): vcvtps2ph."""
    if f != types.float32:
        return None
    return types.uint16(types.float32), lambda ctx, builder, sig, args: builder.bitcast(
        builder.fptrunc(args[0], ir.HalfType()), ir.IntType(16))


# The bit-manipulation conversions below wrap every intermediate in uint32: Numba widens integer
# arithmetic to 64 bits, and the truncations let LLVM vectorize in 32-bit lanes (2.5x faster).
# Branches are written as selects (all candidates computed), which vectorize.
_u32 = np.uint32


@numba.njit(inline="always", **JIT_OPTIONS)
def f16_to_f32_bits(h):
    """float16 bits (uint16) -> float32, exact. A normal's 15 magnitude bits, shifted into float32
    position and multiplied by 2^112 (the exponent bias 127 - 15), give its value; an exponent
    field of 31 lands at >= 2^16 and becomes Inf/NaN, payload kept. A subnormal (m * 2^-24) is
    0.5 + m * 2^-24 (its mantissa under 0.5's exponent) minus 0.5: float32 normals only, where
    the shift made a float32 subnormal, which a thread with denormals-are-zero on
    (`torch.set_flush_denormal(True)`) read as 0 (a review, 2026-12-06)."""
    u = _u32(h)
    mag = _u32(u & _u32(0x7FFF))
    normal = _f32_from_bits(_u32(mag << _u32(13))) * np.float32(2.0 ** 112)
    sub = _f32_from_bits(_u32(_u32(0x3F000000) | mag)) - np.float32(0.5)
    f = sub if mag < _u32(0x400) else normal
    inf_nan = _u32(0x7F800000) if f >= np.float32(65536.0) else _u32(0)
    return _f32_from_bits(_u32(_u32(_f32_bits(f) | inf_nan) | _u32(_u32(u & _u32(0x8000)) << _u32(16))))


@numba.njit(inline="always", **JIT_OPTIONS)
def f32_to_f16_bits(f):
    """float32 -> float16 bits (uint16), round to nearest even: overflow to Inf, gradual underflow,
    NaN quiet with its sign and top payload bits, as vcvtps2ph does (F. Giesen's
    float_to_half_fast3_rtne, with the payload kept)."""
    u = _f32_bits(f)
    a = _u32(u & _u32(0x7FFFFFFF))
    nan = _u32(_u32(0x7E00) | _u32(_u32(a >> _u32(13)) & _u32(0x3FF)))
    # below 2^-14 (a float16 subnormal or zero): adding 0.5 rounds to a multiple of 2^-24, the
    # float16 subnormal step, and leaves it in the low mantissa bits
    sub = _u32(_f32_bits(_f32_from_bits(a) + np.float32(0.5)) - _u32(0x3F000000))
    # normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even;
    # 65520 <= |f| < 2^16 rounds up into the Inf pattern 0x7C00 here
    normal = _u32(_u32(_u32(a - _u32(0x38000000)) + _u32(_u32(0xFFF) + _u32(_u32(a >> _u32(13)) & _u32(1))))
                  >> _u32(13))
    h = sub if a < _u32(0x38800000) else normal
    h = _u32(0x7C00) if a >= _u32(0x47800000) else h
    h = nan if a > _u32(0x7F800000) else h
    return np.uint16(_u32(_u32(u >> _u32(16)) & _u32(0x8000)) | h)


@numba.njit(inline="always", **JIT_OPTIONS)
def bf16_to_f32(h):
    """bfloat16 bits (int16) -> float32, exact: they are its top 16 bits."""
    return _f32_from_bits(_u32(_u32(np.uint16(h)) << _u32(16)))


@numba.njit(inline="always", **JIT_OPTIONS)
def f32_to_bf16(f):
    """float32 -> bfloat16 bits (int16), round to nearest even on the 16 dropped bits (overflow
    to Inf); NaN quiet with its sign and top payload bits."""
    u = _f32_bits(f)
    nan = _u32(_u32(u >> _u32(16)) | _u32(0x40))
    rounded = _u32(_u32(_u32(u + _u32(0x7FFF)) + _u32(_u32(u >> _u32(16)) & _u32(1))) >> _u32(16))
    # a select by mask, not `nan if ... else rounded`: inlined into the apply loops, the branch's
    # phi made Numba warn "variable ... is not in scope" (NumbaIRAssumptionWarning) at compile time
    pick_nan = _u32(0) - _u32(_u32(u & _u32(0x7FFFFFFF)) > _u32(0x7F800000))
    return np.int16(np.uint16(rounded ^ _u32(_u32(rounded ^ nan) & pick_nan)))


def _native_f16():
    """True when Numba compiles for this host and it has F16C: LLVM then lowers the half
    conversions to instructions (8x faster than the bit code). Elsewhere (no F16C, another
    architecture, or NUMBA_CPU_NAME naming a portable target) LLVM would emit calls to runtime
    helpers that Numba's JIT may not resolve, so the bit code runs there."""
    if numba.config.CPU_NAME or platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return bool(llvm_binding.get_host_cpu_features().get("f16c", False))


NATIVE_F16 = _native_f16()
f16_to_f32 = f16_to_f32_hw if NATIVE_F16 else f16_to_f32_bits
f32_to_f16 = f32_to_f16_hw if NATIVE_F16 else f32_to_f16_bits


def _scaled(v, scale):
    """v * scale in v's own format (the element op of every kernel below); compiled code only."""
    raise NotImplementedError("fastdrop.kernels.dropout_cpu._scaled runs inside compiled kernels" + jit_off_hint())


@overload(_scaled, inline="always", jit_options=JIT_OPTIONS)
def _scaled_impl(v, scale):
    if isinstance(v, types.Float):
        return lambda v, scale: v * scale
    if v == types.uint16:
        return lambda v, scale: f32_to_f16(f16_to_f32(v) * scale)
    if v == types.int16:
        return lambda v, scale: f32_to_bf16(bf16_to_f32(v) * scale)
    return None


@numba.njit(inline="always", **JIT_OPTIONS)
def fill_words(buf, first_block, nblocks, off_lo, off_hi, key_lo, key_hi):
    """buf[8*j + l] = mask word l (16 bits) of block first_block + j, for j < nblocks; buf is uint16."""
    for j in range(nblocks):
        r0, r1, r2, r3 = philox_block_cpu(np.uint64(first_block + j), off_lo, off_hi, key_lo, key_hi)
        buf[8 * j] = np.uint16(r0 & HALF_MASK)
        buf[8 * j + 1] = np.uint16(r0 >> SHIFT16)
        buf[8 * j + 2] = np.uint16(r1 & HALF_MASK)
        buf[8 * j + 3] = np.uint16(r1 >> SHIFT16)
        buf[8 * j + 4] = np.uint16(r2 & HALF_MASK)
        buf[8 * j + 5] = np.uint16(r2 >> SHIFT16)
        buf[8 * j + 6] = np.uint16(r3 & HALF_MASK)
        buf[8 * j + 7] = np.uint16(r3 >> SHIFT16)


def _prefetch_intrinsic(for_write):
    """An intrinsic (a, i) -> None: llvm.prefetch of the cache line holding a[i] for a 1-D array
    a, to all cache levels; for_write emits prefetchw (the line arrives owned, so the store that
    follows needs no read-for-ownership). A hint: it never faults, even past the end of a."""
    def typer(typingctx, a, i):
        if not (isinstance(a, types.Array) and a.ndim == 1 and isinstance(i, types.Integer)):
            return None

        def codegen(ctx, builder, sig, args):
            aryty = sig.args[0]
            ary = ctx.make_array(aryty)(ctx, builder, args[0])
            ptr = cgutils.get_item_pointer(ctx, builder, aryty, ary, [args[1]], wraparound=False)
            i8p, i32 = ir.PointerType(ir.IntType(8)), ir.IntType(32)
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), "llvm.prefetch.p0i8")
            # (address, rw, locality 3 = keep in all levels, cache type 1 = data)
            builder.call(fn, [builder.bitcast(ptr, i8p), ir.Constant(i32, int(for_write)),
                              ir.Constant(i32, 3), ir.Constant(i32, 1)])
            return ctx.get_dummy_value()
        return types.void(a, i), codegen
    typer.__name__ = "prefetch_write" if for_write else "prefetch_read"
    return intrinsic(typer)


prefetch_read = _prefetch_intrinsic(False)
prefetch_write = _prefetch_intrinsic(True)


@numba.njit(inline="always", **JIT_OPTIONS)
def fill_chunk(buf, start, m, reads, writes, off_lo, off_hi, key_lo, key_hi):
    """The mask words of elements [start, start + m) (start a multiple of LANES) into buf[:m].
    When the arrays are large (config.CPU_PREFETCH_MIN_BYTES), CPU_PREFETCH_GROUP words at a
    time, each group's elements of the 1-D arrays in `reads` prefetched and those in `writes`
    claimed for writing first (config.CPU_PREFETCH_GROUP says why); reads and writes are tuples
    of arrays indexed like the mask."""
    out = writes[0]
    if out.size * out.itemsize < CPU_PREFETCH_MIN_BYTES:
        fill_words(buf, start // LANES, (m + LANES - 1) // LANES, off_lo, off_hi, key_lo, key_hi)
        return
    line = max(1, 64 // out.itemsize)  # elements per 64-byte cache line
    for g in range(0, m, CPU_PREFETCH_GROUP):
        gm = min(CPU_PREFETCH_GROUP, m - g)
        for q in range(start + g, start + g + gm, line):
            for a in reads:
                prefetch_read(a, q)
            for a in writes:
                prefetch_write(a, q)
        fill_words(buf[g:g + CPU_PREFETCH_GROUP], (start + g) // LANES, (gm + LANES - 1) // LANES,
                   off_lo, off_hi, key_lo, key_hi)


@numba.njit(inline="always", **JIT_OPTIONS)
def fill_run(buf, first, count, off_lo, off_hi, key_lo, key_hi):
    """The mask words of elements [first, first + count) (count >= 1), which may start mid-block,
    into buf (at least count + LANES long); returns where element `first` landed in buf."""
    b0 = first // LANES
    fill_words(buf, b0, (first + count - 1) // LANES - b0 + 1, off_lo, off_hi, key_lo, key_hi)
    return first - LANES * b0


@cpu_kernel
def keep_mask(out, key_lo, key_hi, off_lo, off_hi, thr):
    """out[i] = (element i is kept) for a flat bool array `out`."""
    n = out.size
    for c in numba.prange((n + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint16)
        start = c * CHUNK
        m = min(CHUNK, n - start)
        fill_words(buf, start // LANES, (m + LANES - 1) // LANES, off_lo, off_hi, key_lo, key_hi)
        os = out[start:start + m]
        for k in range(m):
            os[k] = np.uint32(buf[k]) < thr


@cpu_kernel(parallel=False)
def group_factors_at(address, groups, seed, offset, thr, scale, f64):
    """The factors torch's own multiply applies for a grouped op (fastdrop/_grouped.py,
    `native_grouped`): factor g = scale if mask element g is kept else 0, written to `groups`
    contiguous float64 (f64) or float32 elements at `address` (a torch tensor's data_ptr(), made
    in the shape it broadcasts in); returns how many groups were dropped. seed, offset: the int64
    bits of the uint64 values; thr: T(p) as an int; scale: a Python float rounded once to the
    factors' dtype, as the kernels' scale scalars are, never 0 (p < 1). Every argument a Python
    int or float: Numba's dispatcher types those fastest, where an array argument cost ~1 us
    more inside a training step, where every call runs cold. One value per sample or channel, a
    few thousand at most: serial."""
    key_lo, key_hi, off_lo, off_hi, t = _int_rng_args(seed, offset, thr)
    words = _group_words(groups, key_lo, key_hi, off_lo, off_hi)
    if f64:
        return _write_factors(_view_at(address, groups, 0.0), words, t, scale)
    return _write_factors(_view_at(address, groups, np.float32(0)), words, t, np.float32(scale))


@numba.njit(inline="always", **JIT_OPTIONS)
def _write_factors(factors, words, t, kept):
    zero = factors.dtype.type(0)
    count = 0
    for g in range(factors.size):
        if np.uint32(words[g]) < t:
            factors[g] = kept
        else:
            factors[g] = zero
            count += 1
    return count


@intrinsic
def _address_as_pointer(typingctx, address):
    """An integer address (torch's Tensor.data_ptr()) as a void pointer for numba.carray."""
    if not isinstance(address, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)
    return types.voidptr(address), codegen


def _view_at(address, n, like):
    """n contiguous elements of like's type at an integer address, as a 1-D array (njit only)."""
    raise NotImplementedError("_view_at is for njit code" + jit_off_hint())


@overload(_view_at, inline="always")
def _view_at_overload(address, n, like):
    dtype = numba.np.numpy_support.as_dtype(like)

    def view(address, n, like):
        return numba.carray(_address_as_pointer(address), n, dtype)
    return view


@cpu_kernel
def zero_dropped_runs_at(address, n, run, groups, seed, offset, thr, f64):
    """Exact zeros over the dropped groups of a grouped op's output (mask word >= thr: the groups
    whose factor `group_factors_at` made 0, drawn again from the same seed): n float64 (f64) or
    float32 elements at `address` (a torch tensor's data_ptr(): the caller checked its memory is
    dense in runs of `run` elements, run r of group r % groups, kernels/layout.py `group_runs`).
    An address and ints, not a numpy view of the tensor nor the factors array: the view (detach,
    numpy, reshape) cost more than the zeros inside a training step, where every call runs cold.

    Parallel over the runs, in equal contiguous shares, as torch's multiply that wrote the
    output split it across the same OpenMP threads: each thread zeroes lines its own core wrote
    and still holds. Serial on the main thread, the zeros of the other thread's half pulled those
    lines across cores, and the next call's multiply pulled them back: a Dropout2d forward of
    8x16x32x32 spent 25 us in the multiply and zero pass, 12 us this way (docs/cpu_kernels.md)."""
    key_lo, key_hi, off_lo, off_hi, t = _int_rng_args(seed, offset, thr)
    words = _group_words(groups, key_lo, key_hi, off_lo, off_hi)
    out64 = _view_at(address, n if f64 else 0, 0.0)
    out32 = _view_at(address, 0 if f64 else n, np.float32(0))
    runs = n // run
    if run < RUN_TILE:  # short runs: tiles of whole runs, as the flat kernels take them
        per = RUN_TILE // run
        for i in numba.prange((runs + per - 1) // per):
            first = i * per
            g = first % groups
            for r in range(first, min(first + per, runs)):
                if np.uint32(words[g]) >= t:
                    if f64:
                        _zero_slice(out64[r * run:(r + 1) * run])
                    else:
                        _zero_slice(out32[r * run:(r + 1) * run])
                g += 1
                if g == groups:
                    g = 0
    else:
        pieces, size = _run_pieces(run)  # long runs in pieces, as the flat kernels split them
        for i in numba.prange(runs * pieces):
            r = i // pieces
            if np.uint32(words[r % groups]) >= t:
                start = r * run + (i - r * pieces) * size
                stop = min(start + size, (r + 1) * run)
                if f64:
                    _zero_slice(out64[start:stop])
                else:
                    _zero_slice(out32[start:stop])


@numba.njit(inline="always", **JIT_OPTIONS)
def _zero_slice(fs):
    # a slice per piece: LLVM then proves the stores in bounds and makes them a memset
    # (indexing the whole array ran 7x slower: 29 vs 4 us for 256 KiB)
    zero = fs.dtype.type(0)
    for k in range(fs.size):
        fs[k] = zero


@numba.njit(inline="always", **JIT_OPTIONS)
def _int_rng_args(seed, offset, thr):
    """(key_lo, key_hi, off_lo, off_hi, threshold) from the int64 bits of a uint64 seed and
    offset and an integer threshold: the `*_serial_at` kernels take those three as Python ints,
    which Numba's dispatcher types several times faster than numpy scalars (~0.35 us a call for
    the five of `philox.kernel_rng_args`, twice per small layer's step)."""
    s = np.uint64(seed)
    o = np.uint64(offset)
    low = np.uint64(0xFFFFFFFF)
    return s & low, s >> np.uint64(32), o & low, o >> np.uint64(32), np.uint32(thr)


@cpu_kernel(parallel=False)
def dropout_flat_serial_at(x_address, out_address, n, seed, offset, thr, scale, like):
    """`dropout_flat_serial` on n contiguous elements of like's type at two addresses (torch
    tensors' data_ptr(), not overlapping): the small calls of a training step. Addresses, not
    numpy views: a view (`Tensor.numpy()`, reshape) costs about 1 us per tensor, the kernel's
    whole call ~10 us at 64x512, and torch marks a storage lent to numpy as not resizable.
    seed, offset: the int64 bits of the uint64 values; thr: T(p) as an int (`_int_rng_args`);
    like: scale for float32 / float64, or float16 / bfloat16 bits (a numpy uint16 / int16, scale
    float32: computed in float32, rounded once, as `dropout_groups_flat_at`)."""
    x = _view_at(x_address, n, like)
    out = _view_at(out_address, n, like)
    key_lo, key_hi, off_lo, off_hi, thr = _int_rng_args(seed, offset, thr)
    buf = np.empty(CHUNK, np.uint16)
    for c in range((n + CHUNK - 1) // CHUNK):
        _dropout_chunk(x, out, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel(parallel=False)
def dropout_flat_inplace_serial_at(address, n, seed, offset, thr, scale, like):
    """`dropout_flat_inplace` on the calling thread over n contiguous elements of like's type at
    an address (arguments as `dropout_flat_serial_at`): a small in-place call on a torch tensor."""
    x = _view_at(address, n, like)
    key_lo, key_hi, off_lo, off_hi, thr = _int_rng_args(seed, offset, thr)
    buf = np.empty(CHUNK, np.uint16)
    for c in range((n + CHUNK - 1) // CHUNK):
        _dropout_chunk_inplace(x, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@numba.njit(inline="always", **JIT_OPTIONS)
def _select_words_inplace(xs, ws, thr, scale):
    """xs[k] = xs[k] * scale if mask word ws[k] < thr else 0, for k < xs.size: the apply loop on
    one array. Written with two arrays over the same memory (out = x), LLVM's runtime overlap
    check fails and its scalar fallback runs: in-place dropout of 4096x4096 float32 took 13 ms
    against 5 ms out of place. The kernels that take out may be x (strided, tiled, grouped) keep
    that slower in-place path: a branch to this loop inside them cost 5-30% out of place."""
    zero = xs.dtype.type(0)
    for k in range(xs.size):
        y = _scaled(xs[k], scale)  # then selected, as in _dropout_chunk
        xs[k] = y if np.uint32(ws[k]) < thr else zero


@numba.njit(inline="always", **JIT_OPTIONS)
def _dropout_chunk(x, out, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Chunk c of `dropout_flat`: elements [c * CHUNK, (c + 1) * CHUNK)."""
    start = c * CHUNK
    m = min(CHUNK, x.size - start)
    fill_chunk(buf, start, m, (x,), (out,), off_lo, off_hi, key_lo, key_hi)
    zero = x.dtype.type(0)
    xs = x[start:start + m]
    os = out[start:start + m]
    for k in range(m):
        # computed for every element, then selected: a branch around the 16-bit conversions
        # is not if-converted and mispredicts on half the elements at p = 0.5 (3x slower)
        y = _scaled(xs[k], scale)
        os[k] = y if np.uint32(buf[k]) < thr else zero


@cpu_kernel
def dropout_flat(x, out, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """out = where(mask, x * scale, 0) for flat contiguous x, out (out may alias x)."""
    for c in numba.prange((x.size + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint16)
        _dropout_chunk(x, out, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel
def dropout_flat_inplace(x, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """`dropout_flat` with out = x. Its own kernel, not a branch in dropout_flat: with both loops
    in one function the serial kernel ran 20% slower out of place (32768 and 2^20 float32)."""
    for c in numba.prange((x.size + CHUNK - 1) // CHUNK):
        buf = np.empty(CHUNK, np.uint16)
        _dropout_chunk_inplace(x, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@numba.njit(inline="always", **JIT_OPTIONS)
def _dropout_chunk_inplace(x, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Chunk c of `dropout_flat_inplace`: elements [c * CHUNK, (c + 1) * CHUNK) of x."""
    start = c * CHUNK
    m = min(CHUNK, x.size - start)
    fill_chunk(buf, start, m, (x,), (x,), off_lo, off_hi, key_lo, key_hi)
    _select_words_inplace(x[start:start + m], buf[:m], thr, scale)


@cpu_kernel(parallel=False)
def dropout_flat_serial(x, out, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """`dropout_flat` on the calling thread, for inputs below CPU_PARALLEL_MIN elements: waking
    Numba's thread pool costs more than it saves there (its own function, not a flag: Numba's
    disk cache does not key on `parallel`)."""
    buf = np.empty(CHUNK, np.uint16)
    for c in range((x.size + CHUNK - 1) // CHUNK):
        _dropout_chunk(x, out, c, buf, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel
def dropout_strided(xb, x_start, x_strides, ob, o_start, o_strides, shape,
                    key_lo, key_hi, off_lo, off_hi, thr, scale):
    """The same op on arbitrary (even negative) strides, addressed as base + sum(index * stride).

    xb / ob are 1-D views of the memory spans; strides are in elements. Rows of the last logical
    dimension are processed in order, so the mask words of a row are consecutive and generated
    in bulk as in `dropout_flat`.
    """
    nd = shape.size
    length = shape[nd - 1]
    rows = 1
    for d in range(nd - 1):
        rows *= shape[d]
    xs = x_strides[nd - 1]
    os = o_strides[nd - 1]
    zero = xb.dtype.type(0)
    rows_per_chunk = max(1, CHUNK // max(length, 1))
    for c in numba.prange((rows + rows_per_chunk - 1) // rows_per_chunk):
        buf = np.empty(CHUNK + LANES, np.uint16)
        for r in range(c * rows_per_chunk, min(rows, (c + 1) * rows_per_chunk)):
            rem = r
            xo = x_start
            oo = o_start
            for d in range(nd - 2, -1, -1):
                idx = rem % shape[d]
                rem //= shape[d]
                xo += idx * x_strides[d]
                oo += idx * o_strides[d]
            j = 0
            while j < length:
                seg = min(length - j, CHUNK)
                shift = fill_run(buf, r * length + j, seg, off_lo, off_hi, key_lo, key_hi)
                for k in range(seg):
                    y = _scaled(xb[xo + (j + k) * xs], scale)  # then selected, as in _dropout_chunk
                    ob[oo + (j + k) * os] = y if np.uint32(buf[shift + k]) < thr else zero
                j += seg


@numba.njit(inline="always", **JIT_OPTIONS)
def _prefetch_tile_rows(xb, ob, xr0, or0, xsl, osl, first_il, end_il, ta, line):
    """Prefetch rows [first_il, end_il) of a tile (ta unit-stride elements each) of x, and claim
    those of out: the rows then arrive while the words are made (as in fill_chunk)."""
    for il in range(first_il, end_il):
        for q in range(0, ta, line):
            prefetch_read(xb, xr0 + il * xsl + q)
            prefetch_write(ob, or0 + il * osl + q)


@numba.njit(inline="always", **JIT_OPTIONS)
def _whole_block_counter(ia, j, b0, block_stride):
    """Block j of row ia when the rows are block_stride whole blocks apart from block b0."""
    return np.uint64(b0 + j + ia * block_stride)


@numba.njit(inline="always", **JIT_OPTIONS)
def _row_block_counter(ia, j, first, lstride_a):
    """Block j of row ia counted from the row's own first block (row ia starts at logical index
    first + ia * lstride_a, mid-block or not)."""
    # an unsigned shift, not //: Python's floor division of a signed int does not vectorize
    return (np.uint64(first + ia * lstride_a) >> np.uint64(3)) + np.uint64(j)


@numba.njit(inline="always", **JIT_OPTIONS)
def _block_words_across_rows(words, j, ta, counter, c0, c1, off_lo, off_hi, key_lo, key_hi):
    """Block counter(ia, j, c0, c1) of each of a tile's ta rows into buffer rows 8j .. 8j + 7:
    word k of row ia's block at words[(8j + k) * TILED_A + ia]. counter is one of the two above,
    a compile-time argument (each jitted function is its own type), so the loop is specialized."""
    # a slice per lane: eight unit-stride stores across rows, which LLVM vectorizes
    row0 = LANES * j * TILED_A
    w0 = words[row0:row0 + TILED_A]
    w1 = words[row0 + TILED_A:row0 + 2 * TILED_A]
    w2 = words[row0 + 2 * TILED_A:row0 + 3 * TILED_A]
    w3 = words[row0 + 3 * TILED_A:row0 + 4 * TILED_A]
    w4 = words[row0 + 4 * TILED_A:row0 + 5 * TILED_A]
    w5 = words[row0 + 5 * TILED_A:row0 + 6 * TILED_A]
    w6 = words[row0 + 6 * TILED_A:row0 + 7 * TILED_A]
    w7 = words[row0 + 7 * TILED_A:row0 + 8 * TILED_A]
    for ia in range(ta):
        r0, r1, r2, r3 = philox_block_cpu(counter(ia, j, c0, c1), off_lo, off_hi, key_lo, key_hi)
        w0[ia] = np.uint16(r0 & HALF_MASK)
        w1[ia] = np.uint16(r0 >> SHIFT16)
        w2[ia] = np.uint16(r1 & HALF_MASK)
        w3[ia] = np.uint16(r1 >> SHIFT16)
        w4[ia] = np.uint16(r2 & HALF_MASK)
        w5[ia] = np.uint16(r2 >> SHIFT16)
        w6[ia] = np.uint16(r3 & HALF_MASK)
        w7[ia] = np.uint16(r3 >> SHIFT16)


@numba.njit(inline="always", **JIT_OPTIONS)
def _tile_words_by_rows(words, first, block_stride, ta, tl, xb, ob, xr0, or0, xsl, osl, line,
                        off_lo, off_hi, key_lo, key_hi):
    """`dropout_tiled`'s words when every row of the tile starts at the same lane of its Philox
    block (the rows are block_stride whole blocks apart): Philox runs vectorized across the ta
    rows, and each of a block's 8 words lands straight in its transposed place, no scatter.
    Returns the shift: the word of element (ia, il) is words[(il + shift) * TILED_A + ia]."""
    shift = first % LANES
    b0 = first // LANES
    for j in range((shift + tl + LANES - 1) // LANES):
        _prefetch_tile_rows(xb, ob, xr0, or0, xsl, osl, max(0, LANES * j - shift),
                            min(tl, LANES * j + LANES - shift), ta, line)
        _block_words_across_rows(words, j, ta, _whole_block_counter, b0, block_stride, off_lo, off_hi,
                                 key_lo, key_hi)
    return shift


@numba.njit(inline="always", **JIT_OPTIONS)
def _tile_words_phased(words, first, lstride_a, ta, tl, xb, ob, xr0, or0, xsl, osl, line,
                       off_lo, off_hi, key_lo, key_hi):
    """`dropout_tiled`'s mask words of a tile in transposed order when its rows start at
    different lanes of their blocks: the word of tile element (ia, il) ends at
    words[(il + shift) * TILED_A + ia]; returns shift.

    Row ia starts at logical index first + ia * lstride_a, at lane (its phase) `that % 8` of its
    Philox block. Philox runs vectorized across the ta rows, block j of each row counted from the
    row's own first block, and each of a block's 8 words is a unit-stride store across rows, so
    the word of (ia, il) lands in buffer row il + phase, as in `_tile_words_by_rows` (which runs
    when every row has the same phase, without the bookkeeping below; both fill through
    `_block_words_across_rows`, each with its own block counter: this one's per-row counter made
    the by-rows tiles 0-8% slower). Then the rows of each larger phase q are moved to the smallest
    one, q0, in a pass per phase present: row il + q0 takes the words of row il + q where a row's
    phase is q, contiguous loads, a select and contiguous stores, which vectorize (docs/
    cpu_kernels.md: 1.4-2.7x faster than making each row's words and scattering them).
    """
    present = 0  # bit q set: some row has phase q (& 7: the indices are not negative)
    for ia in range(ta):
        present |= 1 << ((first + ia * lstride_a) & (LANES - 1))
    shift = 0
    while not present & (1 << shift):
        shift += 1
    top = LANES - 1
    while not present & (1 << top):
        top -= 1
    for j in range((top + tl + LANES - 1) // LANES):
        _prefetch_tile_rows(xb, ob, xr0, or0, xsl, osl, min(tl, max(0, LANES * j - shift)),
                            min(tl, LANES * j + LANES - shift), ta, line)
        _block_words_across_rows(words, j, ta, _row_block_counter, first, lstride_a, off_lo, off_hi,
                                 key_lo, key_hi)
    if top == shift:
        return shift
    phases = np.empty(TILED_A, np.uint16)
    for ia in range(ta):
        phases[ia] = np.uint16((first + ia * lstride_a) & (LANES - 1))
    # row il + q is read before any later il writes it (the rows written, il + shift, trail it)
    for q in range(shift + 1, top + 1):
        if present & (1 << q):
            qq = np.uint16(q)
            if ta == TILED_A:  # a full tile: a constant trip count, so the loop vectorizes whole
                for il in range(tl):
                    dst = words[(il + shift) * TILED_A:(il + shift + 1) * TILED_A]
                    src = words[(il + q) * TILED_A:(il + q + 1) * TILED_A]
                    for ia in range(TILED_A):
                        s = src[ia]  # both loads before the select, so the loop vectorizes
                        d = dst[ia]
                        dst[ia] = s if phases[ia] == qq else d
            else:
                for il in range(tl):
                    dst = words[(il + shift) * TILED_A:(il + shift) * TILED_A + ta]
                    src = words[(il + q) * TILED_A:(il + q) * TILED_A + ta]
                    for ia in range(ta):
                        s = src[ia]
                        d = dst[ia]
                        dst[ia] = s if phases[ia] == qq else d
    return shift


@cpu_kernel
def dropout_tiled(xb, x_strides, ob, o_strides, shape, a, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """`dropout_strided` for layouts whose unit-stride dim `a` (in x and out alike) is not the last
    logical dim l: channels_last (a = C), transposed matrices (a = 0), other permuted views.

    There the mask words of a logical row are consecutive while the row's elements lie a stride
    apart in memory, so walking rows touches one cache line per element. Here the work goes by
    tiles of TILED_A x TILED_L elements (indices along a and l, the other dims fixed): the tile's
    words go into an L1 buffer in transposed order (Philox vectorized across rows:
    `_tile_words_by_rows`, `_tile_words_phased`), then the tile is walked in memory order, TILED_A
    unit-stride elements at a time (docs/cpu_kernels.md). xb / ob are 1-D views of the
    memory spans, strides in elements (positive), shape the logical shape.
    """
    tasks, grid = _tile_grid(shape, a, xb.itemsize)
    for task in numba.prange(tasks):
        _tile_task(task, grid, xb, x_strides, ob, o_strides, shape, a, key_lo, key_hi, off_lo, off_hi, thr, scale)


@cpu_kernel
def dropout_tiled_at(x_address, x_span, out_address, o_span, layout, a, seed, offset, thr, scale, like):
    """`dropout_tiled` on the memory of torch tensors of like's type: x_span / o_span elements
    from the two addresses (their data_ptr()), layout one int64 array (shape, x's strides, out's
    strides; in elements, as kernels/layout.py `tiled_layout` gives them), seed, offset, thr,
    scale and like as `dropout_flat_serial_at` takes them. Addresses and one small array, not numpy views: the
    views and their layout checks cost ~40 us a call, more than the kernel below ~10^5 elements
    (docs/cpu_kernels.md, "Permuted layouts without numpy")."""
    nd = layout.size // 3
    shape = layout[:nd]
    x_strides = layout[nd:2 * nd]
    o_strides = layout[2 * nd:]
    xb = _view_at(x_address, x_span, like)
    ob = _view_at(out_address, o_span, like)
    key_lo, key_hi, off_lo, off_hi, t = _int_rng_args(seed, offset, thr)
    tasks, grid = _tile_grid(shape, a, xb.itemsize)
    for task in numba.prange(tasks):
        _tile_task(task, grid, xb, x_strides, ob, o_strides, shape, a, key_lo, key_hi, off_lo, off_hi, t, scale)


@numba.njit(**JIT_OPTIONS)
def _tile_grid(shape, a, itemsize):
    """(task count, grid) of `dropout_tiled`'s tiles: grid = (na_el, nl_el, lstride_a, na, nl, line),
    the sizes of dims a and l, the logical (C-order) stride of dim a, the tile counts along a and
    l, and the elements per 64-byte cache line. Tasks: outer dims x na x nl."""
    nd = shape.size
    l = nd - 1
    na_el = shape[a]
    nl_el = shape[l]
    lstride_a = 1
    for d in range(a + 1, nd):
        lstride_a *= shape[d]
    outer = 1
    for d in range(nd):
        if d != a and d != l:
            outer *= shape[d]
    na = (na_el + TILED_A - 1) // TILED_A
    nl = (nl_el + TILED_L - 1) // TILED_L
    return outer * na * nl, (na_el, nl_el, lstride_a, na, nl, max(1, 64 // itemsize))


@numba.njit(inline="always", **JIT_OPTIONS)
def _tile_task(task, grid, xb, x_strides, ob, o_strides, shape, a, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Tile `task` of `dropout_tiled`: its words, then its elements in memory order."""
    na_el, nl_el, lstride_a, na, nl, line = grid
    nd = shape.size
    l = nd - 1
    xsl = x_strides[l]
    osl = o_strides[l]
    zero = xb.dtype.type(0)
    o = task // (na * nl)
    r = task - o * (na * nl)
    ab = r // nl
    lb = r - ab * nl
    # this tile's origin: the other dims' indices from o (C order), as memory offsets and as
    # the logical index of element (.., a = 0, .., l = 0)
    rem = o
    xo = 0
    oo = 0
    lo = 0
    lst = 1
    for d in range(nd - 1, -1, -1):
        if d != a and d != l:
            idx = rem % shape[d]
            rem //= shape[d]
            xo += idx * x_strides[d]
            oo += idx * o_strides[d]
            lo += idx * lst
        lst *= shape[d]
    a0 = ab * TILED_A
    ta = min(na_el - a0, TILED_A)
    l0 = lb * TILED_L
    tl = min(nl_el - l0, TILED_L)
    # words[(il + shift) * TILED_A + ia]: the mask word of tile element (ia, il)
    words = np.empty(TILED_A * (TILED_L + 2 * LANES), np.uint16)
    first = lo + a0 * lstride_a + l0  # logical index of tile element (0, 0)
    xr0 = xo + l0 * xsl + a0  # memory offsets of tile element (0, 0)
    or0 = oo + l0 * osl + a0
    if lstride_a % LANES == 0:
        shift = _tile_words_by_rows(words, first, lstride_a // LANES, ta, tl, xb, ob, xr0, or0,
                                    xsl, osl, line, off_lo, off_hi, key_lo, key_hi)
    else:
        shift = _tile_words_phased(words, first, lstride_a, ta, tl, xb, ob, xr0, or0, xsl, osl,
                                   line, off_lo, off_hi, key_lo, key_hi)
    for il in range(tl):
        xr = xo + (l0 + il) * xsl + a0
        orow = oo + (l0 + il) * osl + a0
        xs = xb[xr:xr + ta]  # unit stride along a: slices, so the loop vectorizes
        os = ob[orow:orow + ta]
        ws = words[(il + shift) * TILED_A:(il + shift) * TILED_A + ta]
        for k in range(ta):
            y = _scaled(xs[k], scale)  # then selected, as in _dropout_chunk
            os[k] = y if np.uint32(ws[k]) < thr else zero


@cpu_kernel
def dropout_groups_flat(x, out, length, ngroups, key_lo, key_hi, off_lo, off_hi, thr, scale):
    """Spatial dropout / DropPath on flat x, out in memory order: runs of `length` elements, run r
    of group r % ngroups (kernels/layout.py, `group_runs`: one run per group for contiguous data,
    L runs per sample for a sequence-first (L, N, D) tensor seen as (N, L, D)), kept, times scale,
    iff mask word (r % ngroups) < thr; otherwise 0. One launch: the group mask (a few thousand words
    in practice) is generated first, on the calling thread."""
    words = _group_words(ngroups, key_lo, key_hi, off_lo, off_hi)
    runs = x.size // length
    if length < TINY_RUN:  # runs of a few elements: tiles, flags per element (`_apply_runs_flagged`)
        per = RUN_TILE // length
        for t in numba.prange((runs + per - 1) // per):
            _apply_runs_flagged(x, out, t * per, min(per, runs - t * per), length, words, ngroups, thr, scale)
    elif length < RUN_TILE:  # short runs: tiles of whole runs (`_apply_runs`)
        per = RUN_TILE // length
        for t in numba.prange((runs + per - 1) // per):
            _apply_runs(x, out, t * per, min(per, runs - t * per), length, words, ngroups, thr, scale)
    else:
        pieces, size = _run_pieces(length)
        for i in numba.prange(runs * pieces):
            _apply_piece(x, out, i, pieces, size, length, words, ngroups, thr, scale)


@cpu_kernel
def dropout_groups_flat_at(x_address, out_address, n, length, ngroups, key_lo, key_hi, off_lo, off_hi, thr,
                           scale, like):
    """`dropout_groups_flat` on n elements of like's type at two addresses (torch tensors'
    data_ptr(), their memory in memory order; see `dropout_flat_serial_at`): float32 / float64
    (like is scale), or float16 / bfloat16 bits (like a numpy uint16 / int16, scale float32)."""
    x = _view_at(x_address, n, like)
    out = _view_at(out_address, n, like)
    words = _group_words(ngroups, key_lo, key_hi, off_lo, off_hi)
    runs = n // length
    if length < TINY_RUN:  # runs of a few elements: tiles, flags per element (`_apply_runs_flagged`)
        per = RUN_TILE // length
        for t in numba.prange((runs + per - 1) // per):
            _apply_runs_flagged(x, out, t * per, min(per, runs - t * per), length, words, ngroups, thr, scale)
    elif length < RUN_TILE:  # short runs: tiles of whole runs (`_apply_runs`)
        per = RUN_TILE // length
        for t in numba.prange((runs + per - 1) // per):
            _apply_runs(x, out, t * per, min(per, runs - t * per), length, words, ngroups, thr, scale)
    else:
        pieces, size = _run_pieces(length)
        for i in numba.prange(runs * pieces):
            _apply_piece(x, out, i, pieces, size, length, words, ngroups, thr, scale)


@numba.njit(inline="always", **JIT_OPTIONS)
def _group_words(ngroups, key_lo, key_hi, off_lo, off_hi):
    """The mask words of groups 0 .. ngroups - 1 (whole Philox blocks: LANES of slack)."""
    words = np.empty(ngroups + LANES, np.uint16)
    fill_words(words, 0, (ngroups + LANES - 1) // LANES, off_lo, off_hi, key_lo, key_hi)
    return words


# Runs longer than this many elements are split into equal pieces, so that few long runs (DropPath
# of one sample, 1x196x768) still spread over the threads: the pieces of a run are consecutive
# loop indices, so the static schedule still gives each thread one contiguous share of memory.
RUN_PIECE = 1 << 14


@numba.njit(inline="always", **JIT_OPTIONS)
def _run_pieces(length):
    """(pieces per run, elements per piece) for runs of `length` elements."""
    pieces = max(1, (length + RUN_PIECE - 1) // RUN_PIECE)
    return pieces, (length + pieces - 1) // pieces


# Runs shorter than RUN_TILE elements (spatial dropout of 2x2 to 7x7 maps, Dropout1d of a few
# steps) go RUN_TILE elements of whole runs per loop step, where a step per run, with its slices
# and branch, cost ~18 ns for a run of 4 elements (Dropout2d 256x4096x2x2: 9.4 ms, 0.76x torch's
# time); runs shorter than TINY_RUN copy their flags to the elements first, so that one loop
# selects over the whole tile (a loop per run of a few elements does not vectorize). Dropout1d of
# 64xCxL float32, 2^21 elements, per call: L = 2 / 4 / 8 / 16 / 32 / 49 / 64: 9.4 / 4.7 / 2.4 / 1.3 /
# 0.66 / 0.49 / 0.38 ms -> 1.9 / 1.4 / 0.85 / 0.78 / 0.40 / 0.33 / 0.28 ms (docs/cpu_kernels.md).
TINY_RUN = 16
RUN_TILE = 1024


@numba.njit(inline="always", **JIT_OPTIONS)
def _apply_runs(x, out, first, count, length, words, ngroups, thr, scale):
    """Runs first .. first + count - 1 of a flat grouped op (runs of TINY_RUN to RUN_TILE
    elements): each run's elements times scale, or 0, in a loop of its own (one vector step or
    more per run), without the loop step per run of `_apply_piece`."""
    start = first * length
    m = count * length
    xs = x[start:start + m]
    os = out[start:start + m]
    g = first % ngroups
    zero = x.dtype.type(0)
    for j in range(count):
        rx = xs[j * length:(j + 1) * length]
        ro = os[j * length:(j + 1) * length]
        if np.uint32(words[g]) < thr:
            for k in range(length):
                ro[k] = _scaled(rx[k], scale)
        else:
            for k in range(length):
                ro[k] = zero
        g += 1
        if g == ngroups:
            g = 0


@numba.njit(inline="always", **JIT_OPTIONS)
def _apply_runs_flagged(x, out, first, count, length, words, ngroups, thr, scale):
    """Runs first .. first + count - 1 of a flat grouped op (short runs of `length` elements): each
    run's keep flag copied to its elements, then one loop over the tile that selects x * scale or
    0 per element, as the elementwise kernels' apply loops do (it vectorizes; a loop per run of a
    few elements does not)."""
    start = first * length
    m = count * length
    xs = x[start:start + m]
    os = out[start:start + m]
    flags = np.empty(m, np.bool_)
    g = first % ngroups
    j = 0
    for _ in range(count):
        kept = np.uint32(words[g]) < thr
        for _k in range(length):
            flags[j] = kept
            j += 1
        g += 1
        if g == ngroups:
            g = 0
    zero = x.dtype.type(0)
    for k in range(m):
        y = _scaled(xs[k], scale)  # then selected, as in _dropout_chunk
        os[k] = y if flags[k] else zero


@numba.njit(inline="always", **JIT_OPTIONS)
def _apply_piece(x, out, i, pieces, size, length, words, ngroups, thr, scale):
    """Piece i % pieces of run i // pieces of a flat grouped op: its elements times scale if its
    group's mask word is below thr, else 0."""
    r = i // pieces
    start = r * length + (i - r * pieces) * size
    stop = min(start + size, (r + 1) * length)
    xs = x[start:stop]
    os = out[start:stop]
    if np.uint32(words[r % ngroups]) < thr:
        for k in range(xs.size):
            os[k] = _scaled(xs[k], scale)
    else:
        zero = x.dtype.type(0)
        for k in range(xs.size):
            os[k] = zero


@cpu_kernel
def apply_group_mask(x, out, keep, scale):
    """out[a, b, :] = x[a, b, :] * scale if keep[a * B + b] else 0, for 3-D (A, B, L) strided views."""
    nb = x.shape[1]
    zero = x.dtype.type(0)
    for g in numba.prange(x.shape[0] * nb):
        a = g // nb
        b = g - a * nb
        xr = x[a, b]  # row slices: the loops below vectorize (indexing x[a, b, k] does not)
        orow = out[a, b]
        if keep[g]:
            for k in range(xr.size):
                orow[k] = _scaled(xr[k], scale)
        else:
            for k in range(xr.size):
                orow[k] = zero


_INNER_ROWS = 256  # elements of one pattern row of the inner-group kernels below (whole runs of the group dim)
# Pattern rows per parallel step: one row (256 elements) a step ran 1.23x torch's broadcast multiply
# on channels_last Dropout2d 32x64x56x56 float32 with x and out in DRAM (2099 vs 1568 us, 2 threads;
# 16 rows: 1711), and as fast when both sat in the L3 (docs/cpu_kernels.md, "Sixteen pattern rows
# a step"). Fewer where 16 would leave a call fewer than 64 steps (`_inner_steps`).
_INNER_STEP_ROWS = 16


@numba.njit(inline="always", **JIT_OPTIONS)
def _inner_steps(na, n, pattern):
    """(rows, chunks) of an inner-group kernel over na rows of n elements: pattern rows per
    parallel step, `_INNER_STEP_ROWS` or fewer (at least 1) so that a call has `_INNER_MIN_STEPS`
    steps where it has as many pattern rows (a single sample of 2048 channels at 8x8, 2^17
    elements, would otherwise be 4 steps), and the steps per row (`_inner_span`). A constant, not
    the thread count: `numba.get_num_threads()` in a kernel keeps Numba from caching it."""
    width = pattern.shape[1]
    widths = na * ((n + width - 1) // width)
    rows = max(1, min(_INNER_STEP_ROWS, widths // _INNER_MIN_STEPS))
    return rows, (n + width * rows - 1) // (width * rows)


_INNER_MIN_STEPS = 64


@numba.njit(inline="always", **JIT_OPTIONS)
def _inner_span(r, chunks, rows, width, n):
    """(row a, start, end) of step r of an inner-group kernel: `rows` pattern widths of row
    r // chunks ((rows, chunks) from `_inner_steps`), rows n elements long."""
    a = r // chunks
    start = (r - a * chunks) * width * rows
    return a, start, min(start + width * rows, n)


@numba.njit(inline="always", **JIT_OPTIONS)
def _inner_pattern(keep, na, nb):
    """keep's flags of `_INNER_ROWS // nb` whole runs of nb, for each of the na rows."""
    per = max(1, _INNER_ROWS // nb)
    pattern = np.empty((na, per * nb), np.bool_)
    for a in range(na):
        row = pattern[a]
        flags = keep[a * nb:(a + 1) * nb]
        for j in range(per):  # (not `k % nb` per element: an integer division each)
            for c in range(nb):
                row[j * nb + c] = flags[c]
    return pattern


@numba.njit(inline="always", **JIT_OPTIONS)
def _inner_chunk(x, out, pattern, r, chunks, rows, scale):
    """Step r of an inner-group kernel (`_inner_span`), one pattern width at a time."""
    width = pattern.shape[1]
    a, start, end = _inner_span(r, chunks, rows, width, x.shape[1])
    pa = pattern[a]
    zero = x.dtype.type(0)
    for s in range(start, end, width):
        stop = min(s + width, end)
        # slices indexed from 0, as every apply loop here (module docstring): indexed at s + k the
        # loop ran scalar, 4.4x slower (Dropout2d 8x16x32x32 channels_last: 54 vs 12 us serial)
        xs, os = x[a, s:stop], out[a, s:stop]
        for k in range(xs.size):
            y = _scaled(xs[k], scale)  # then selected, as in _dropout_chunk
            os[k] = y if pa[k] else zero


@cpu_kernel
def apply_group_mask_inner(x, out, keep, nb, scale):
    """out[a, j] = x[a, j] * scale if keep[a * nb + j % nb] else 0, for 2-D (A, L * nb) views whose
    rows are contiguous and hold L runs of nb elements, the groups' innermost index: channels_last
    spatial dropout as (N, H*W*C). The keep flags of whole runs are laid out once per row
    (`_inner_pattern`), so the loop runs over ~256 elements at a time and vectorizes whatever nb
    is: with a loop per run of nb (`apply_group_mask_inner_strided`) the kernel alone took 2.6x
    torch's whole Dropout2d for C = 16 and 1.7-2.8x for C = 4 (this kernel: 8x16x32x32 45.7 ->
    19.9 us, 1x4x512x512 1064 -> 130 us, the same bits). The numpy launcher takes it for C <=
    `_cpu.INNER_ROWS_MAX_C` (64); torch tensors take its by-address twin for any C (above 256
    channels a pattern row is one run of C)."""
    na, n = x.shape
    pattern = _inner_pattern(keep, na, nb)
    rows, chunks = _inner_steps(na, n, pattern)
    for r in numba.prange(na * chunks):
        _inner_chunk(x, out, pattern, r, chunks, rows, scale)


@cpu_kernel
def dropout_groups_inner_at(x_address, out_address, n, na, nb, key_lo, key_hi, off_lo, off_hi, thr, scale,
                            like):
    """`apply_group_mask_inner` on n contiguous elements of like's type at two addresses (torch
    tensors' data_ptr(): a channels_last tensor's (N, H, W, C) memory, na = N rows of runs of
    nb = C), drawing the keep flags of its na * nb groups itself: one launch and no numpy views,
    as `dropout_groups_flat_at` for groups that are runs of memory; like as there (scale itself
    for float32 / float64, a numpy uint16 / int16 for float16 / bfloat16 bits, scale float32)."""
    x = _view_at(x_address, n, like).reshape((na, n // na))
    out = _view_at(out_address, n, like).reshape((na, n // na))
    words = _group_words(na * nb, key_lo, key_hi, off_lo, off_hi)
    keep = np.empty(na * nb, np.bool_)
    for g in range(na * nb):
        keep[g] = np.uint32(words[g]) < thr
    pattern = _inner_pattern(keep, na, nb)
    rows, chunks = _inner_steps(na, n // na, pattern)
    for r in numba.prange(na * chunks):
        _inner_chunk(x, out, pattern, r, chunks, rows, scale)


@cpu_kernel
def zero_dropped_inner_at(address, n, na, nb, seed, offset, thr, f64):
    """`zero_dropped_runs_at` for groups with their channels innermost (kernels/layout.py,
    `channels_innermost`: channels_last spatial dropout): n float64 (f64) or float32 elements at
    `address`, na rows of runs of nb (N rows of H*W runs of C), element j of row a zeroed iff
    group a * nb + j % nb is dropped. Every element is read and written back (a dropped channel
    is every nb-th element), in the long loops of `apply_group_mask_inner`, and in contiguous
    shares over the threads, as torch's multiply that wrote them split its range. The kept
    elements pass `_inner_chunk_inplace` at scale 1 (exact: y * 1 is y, and torch's multiply
    left no signalling NaN to quiet)."""
    key_lo, key_hi, off_lo, off_hi, t = _int_rng_args(seed, offset, thr)
    words = _group_words(na * nb, key_lo, key_hi, off_lo, off_hi)
    keep = np.empty(na * nb, np.bool_)
    for g in range(na * nb):
        keep[g] = np.uint32(words[g]) < t
    pattern = _inner_pattern(keep, na, nb)
    rows, chunks = _inner_steps(na, n // na, pattern)
    out64 = _view_at(address, n if f64 else 0, 0.0).reshape((na if f64 else 0, n // na))
    out32 = _view_at(address, 0 if f64 else n, np.float32(0)).reshape((0 if f64 else na, n // na))
    for r in numba.prange(na * chunks):
        if f64:
            _inner_chunk_inplace(out64, pattern, r, chunks, rows, 1.0)
        else:
            _inner_chunk_inplace(out32, pattern, r, chunks, rows, np.float32(1))


@cpu_kernel
def apply_group_mask_inner_strided(x, out, keep, scale):
    """out[a, l, b] = x[a, l, b] * scale if keep[a * B + b] else 0, for 3-D (A, L, B) strided views
    whose last dim is the groups' innermost index and has unit stride, where the runs are not
    contiguous one after another (a channels_last tensor sliced along W): each row of B elements
    takes its keep flags from one contiguous run of the mask."""
    nl = x.shape[1]
    nb = x.shape[2]
    zero = x.dtype.type(0)
    for r in numba.prange(x.shape[0] * nl):
        a = r // nl
        xr = x[a, r - a * nl]
        orow = out[a, r - a * nl]
        kr = keep[a * nb:(a + 1) * nb]
        for k in range(nb):
            y = _scaled(xr[k], scale)  # then selected, as in _dropout_chunk
            orow[k] = y if kr[k] else zero


@numba.njit(inline="always", **JIT_OPTIONS)
def _inner_chunk_inplace(x, pattern, r, chunks, rows, scale):
    """`_inner_chunk` with x its own output: one array, so LLVM vectorizes the loop (two views of
    one memory fail its runtime overlap check and run its scalar fallback: in-place Dropout2d on
    channels_last ran 2x its out-of-place time, a tester found)."""
    width = pattern.shape[1]
    a, start, end = _inner_span(r, chunks, rows, width, x.shape[1])
    pa = pattern[a]
    zero = x.dtype.type(0)
    for s in range(start, end, width):
        xa = x[a, s:min(s + width, end)]
        for k in range(xa.size):
            y = _scaled(xa[k], scale)
            xa[k] = y if pa[k] else zero


@cpu_kernel
def apply_group_mask_inner_inplace(x, keep, nb, scale):
    """`apply_group_mask_inner` in place (out is x)."""
    na, n = x.shape
    pattern = _inner_pattern(keep, na, nb)
    rows, chunks = _inner_steps(na, n, pattern)
    for r in numba.prange(na * chunks):
        _inner_chunk_inplace(x, pattern, r, chunks, rows, scale)


@cpu_kernel
def apply_group_mask_inner_strided_inplace(x, keep, scale):
    """`apply_group_mask_inner_strided` in place (out is x): one array, so the row loop vectorizes."""
    nl = x.shape[1]
    nb = x.shape[2]
    zero = x.dtype.type(0)
    for r in numba.prange(x.shape[0] * nl):
        a = r // nl
        xr = x[a, r - a * nl]
        kr = keep[a * nb:(a + 1) * nb]
        for k in range(nb):
            y = _scaled(xr[k], scale)
            xr[k] = y if kr[k] else zero


# The serial twins the launchers pick below their thresholds (fastdrop/_cpu.py, fastdrop/mask.py):
# the per-channel masks of spatial dropout and the masks of small calls are a few thousand elements.
keep_mask_serial = keep_mask.serial
dropout_tiled_serial = dropout_tiled.serial
dropout_tiled_at_serial = dropout_tiled_at.serial
dropout_flat_inplace_serial = dropout_flat_inplace.serial
apply_group_mask_serial = apply_group_mask.serial
apply_group_mask_inner_serial = apply_group_mask_inner.serial
apply_group_mask_inner_strided_serial = apply_group_mask_inner_strided.serial
apply_group_mask_inner_inplace_serial = apply_group_mask_inner_inplace.serial
apply_group_mask_inner_strided_inplace_serial = apply_group_mask_inner_strided_inplace.serial
dropout_groups_inner_at_serial = dropout_groups_inner_at.serial
dropout_groups_flat_serial = dropout_groups_flat.serial
dropout_groups_flat_at_serial = dropout_groups_flat_at.serial
