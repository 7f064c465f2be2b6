"""CUDA dropout kernels against the CPU path: masks and outputs bit for bit (same seed, offset)."""
import numpy as np
import pytest
from numba import cuda

import fastdrop
from fastdrop import _cuda, mask
from fastdrop.kernels import dropout_cuda as K
from fastdrop.mask import kernel_rng_args

pytestmark = pytest.mark.cudasim

SHAPES = [(1,), (7,), (3, 5), (2, 3, 4), (33,)]
SEEDS_OFFSETS = [(0, 0), (12345, 1), (2**32 + 17, 2**32 + 5), (2**64 - 1, 2**63 + 11)]
PS = [0.0, 0.1, 0.5, 0.9, 1.0]
DTYPES = [np.float32, np.float64, np.float16]


def train_scale(p, mode="inverted"):
    return 1.0 if mode == "classic" or p == 1.0 else 1.0 / (1.0 - p)


def same_bits(a, b):
    """Bit-for-bit equality (NaN payloads and signed zeros included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(
        a.view(f"u{a.itemsize}"), b.view(f"u{b.itemsize}"))


def data(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("shape", SHAPES + [(0,), (4, 0)])
@pytest.mark.parametrize("p", PS)
@pytest.mark.parametrize("seed, offset", SEEDS_OFFSETS)
def test_device_mask_is_the_cpu_mask(shape, p, seed, offset):
    got = mask.dropout_mask_device(shape, p, seed, offset).copy_to_host()
    assert got.dtype == np.bool_ and got.shape == shape
    np.testing.assert_array_equal(got, fastdrop.dropout_mask(shape, p, seed, offset))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", PS)
def test_dropout_bit_identical_to_cpu(rng, shape, dtype, p):
    x = data(rng, shape, dtype)
    for seed, offset in SEEDS_OFFSETS[1:3]:
        got = _cuda.dropout_array(cuda.to_device(x), p, seed, offset, train_scale(p), 0, False)
        assert same_bits(got.copy_to_host(), fastdrop.dropout(x, p, seed=seed, offset=offset))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_grid_stride_loop_covers_everything(rng, dtype, mode):
    """A grid far smaller than the data: each thread walks several Philox blocks."""
    x = data(rng, (101,), dtype)
    out = cuda.device_array_like(x)
    K.dropout_flat[1, 4](cuda.to_device(x), out, _cuda.no_seeds(), *kernel_rng_args(7, 9, 0.3),
                         dtype(train_scale(0.3, mode)))
    assert same_bits(out.copy_to_host(), fastdrop.dropout(x, 0.3, seed=7, offset=9, mode=mode))


@pytest.mark.parametrize("shape, group_ndim", [((2, 3, 4), 2), ((2, 3, 4), 1), ((3, 5), 1),
                                               ((2, 3, 2, 2), 2), ((33, 1), 1), ((1, 7), 1)])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9, 1.0])
def test_grouped_bit_identical_to_cpu(rng, shape, group_ndim, dtype, p):
    x = data(rng, shape, dtype)
    seed, offset = 2**32 + 17, 2**32 + 5
    got = _cuda.dropout_array(cuda.to_device(x), p, seed, offset, train_scale(p), group_ndim, False)
    # The CPU path of the same op (what dropout1d/2d/3d run for numpy input).
    work = x.astype(np.float32) if dtype == np.float16 else x
    ref = np.empty_like(work)
    fastdrop._cpu.grouped_dropout_into(work, ref, p, seed, offset, train_scale(p), group_ndim)
    assert same_bits(got.copy_to_host(), ref.astype(dtype))
    keep = fastdrop.dropout_mask(shape[:group_ndim], p, seed, offset)
    kept = np.broadcast_to(keep.reshape(keep.shape + (1,) * (len(shape) - group_ndim)), shape)
    assert not np.any(got.copy_to_host()[~kept])


def test_spatial_dropout_matches_public_cpu_api(rng):
    x = data(rng, (2, 3, 2, 2), np.float32)
    got = _cuda.dropout_array(cuda.to_device(x), 0.5, 11, 0, 2.0, 2, False)
    assert same_bits(got.copy_to_host(), fastdrop.dropout2d(x, 0.5, seed=11))
    x3 = data(rng, (3, 4, 5), np.float64)
    got = _cuda.dropout_array(cuda.to_device(x3), 0.25, 11, 3, 1 / 0.75, 2, False)
    assert same_bits(got.copy_to_host(), fastdrop.dropout1d(x3, 0.25, seed=11, offset=3))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("group_ndim", [0, 1])
def test_inplace_writes_x_and_returns_it(rng, dtype, group_ndim):
    x = data(rng, (3, 5), dtype)
    d = cuda.to_device(x)
    got = _cuda.dropout_array(d, 0.5, 3, 4, 2.0, group_ndim, True)
    assert got is d
    ref = fastdrop.dropout1d(x, 0.5, seed=3, offset=4) if group_ndim else \
        fastdrop.dropout(x, 0.5, seed=3, offset=4)
    assert same_bits(d.copy_to_host(), ref)


@pytest.mark.parametrize("inplace", [False, True])
@pytest.mark.parametrize("group_ndim", [0, 1])
def test_non_contiguous_input(rng, inplace, group_ndim):
    """Strided device arrays are copied to a contiguous buffer first; the mask follows the logical
    C-order index, so the result equals the CPU result on the same strided view."""
    base = data(rng, (4, 10), np.float32)
    view = base[:, ::3]
    d = cuda.to_device(base)[:, ::3]
    assert not d.is_c_contiguous()
    got = _cuda.dropout_array(d, 0.5, 9, 1, 2.0, group_ndim, inplace)
    ref = fastdrop.dropout1d(view, 0.5, seed=9, offset=1) if group_ndim else \
        fastdrop.dropout(view, 0.5, seed=9, offset=1)
    assert same_bits(got.copy_to_host(), ref)
    if inplace:
        assert got is d


def test_p0_is_identity_and_p1_gives_zeros_even_for_nan():
    x = np.array([1.5, -2.0, np.nan, np.inf, -0.0, 3.0, 1e-40], np.float32)
    same = _cuda.dropout_array(cuda.to_device(x), 0.0, 5, 0, 1.0, 0, False).copy_to_host()
    assert same_bits(same, x)
    zeros = _cuda.dropout_array(cuda.to_device(x), 1.0, 5, 0, 1.0, 0, False).copy_to_host()
    assert same_bits(zeros, np.zeros_like(x))


def test_nan_and_inf_propagate_in_kept_elements():
    x = np.array([np.nan, np.inf, -np.inf] * 11, np.float64)
    got = _cuda.dropout_array(cuda.to_device(x), 0.5, 1, 2, 2.0, 0, False).copy_to_host()
    assert same_bits(got, fastdrop.dropout(x, 0.5, seed=1, offset=2))
    keep = fastdrop.dropout_mask(x.shape, 0.5, 1, 2)
    assert keep.any() and (~keep).any()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("inplace", [False, True])
def test_classic_eval_scale(rng, dtype, inplace):
    x = data(rng, (2, 3, 4), dtype)
    d = cuda.to_device(x)
    got = _cuda.scale_array(d, 1.0 - 0.3, inplace)
    assert (got is d) == inplace
    ref = fastdrop.dropout(x, 0.3, training=False, mode="classic")
    assert same_bits(got.copy_to_host(), ref)


def test_classic_training_mode(rng):
    x = data(rng, (33,), np.float32)
    got = _cuda.dropout_array(cuda.to_device(x), 0.4, 8, 0, 1.0, 0, False)
    assert same_bits(got.copy_to_host(), fastdrop.dropout(x, 0.4, seed=8, mode="classic"))


@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3)])
def test_zero_d_and_empty(shape):
    x = np.full(shape, 2.5, np.float32)
    got = _cuda.dropout_array(cuda.to_device(x), 0.5, 1, 0, 2.0, 0, False).copy_to_host()
    assert same_bits(got, fastdrop.dropout(x, 0.5, seed=1))


def test_scale_non_contiguous(rng):
    base = data(rng, (3, 8), np.float64)
    d = cuda.to_device(base)[:, 1::2]
    got = _cuda.scale_array(d, 0.5, False)
    assert same_bits(got.copy_to_host(), base[:, 1::2] * 0.5)


# ---- bfloat16 as its bits: the kernels the torch route launches for bfloat16 CUDA tensors ---------

def _bf16_bits(rng, n):
    """int16 bfloat16 bit patterns: normal values, and every special class (zeros, subnormals, the
    largest finite values whose products round to Inf, Inf, quiet and signalling NaNs of both signs)."""
    normal = (rng.standard_normal(n).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)
    special = np.array([0x0000, 0x8000, 0x0001, 0x807F, 0x7F7F, 0xFF7F, 0x7F80, 0xFF80,
                        0x7FC0, 0xFFC1, 0x7F81, 0xFF81, 0x3F80, 0x3F81], np.uint16)
    return np.concatenate([special, normal]).view(np.int16)


def _cpu_bf16(bits, p, seed, offset, scale, group_ndim=0, shape=None):
    """The CPU kernels' bfloat16 result (fastdrop._cpu, as the torch CPU route runs them)."""
    from fastdrop import _cpu
    x = bits.view(np.uint16).reshape(shape or bits.shape)
    out = np.empty_like(x)
    if group_ndim:
        _cpu.grouped_dropout_into(x, out, p, seed, offset, scale, group_ndim, bf16=True)
    else:
        _cpu.dropout_into(x, out, p, seed, offset, scale, bf16=True)
    return out.view(np.int16)


@pytest.mark.parametrize("p", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("n", [1, 13, 2 * K.TILE + 5])
def test_bf16_bits_bit_identical_to_cpu(rng, p, n):
    """float32 arithmetic, one rounding to nearest even, NaN kept quiet with its payload: the same
    bits as the CPU kernels for every class of input, and a tail past whole tiles."""
    bits = _bf16_bits(rng, max(n - 14, 0))[:n]
    scale = train_scale(p)
    out = cuda.device_array(bits.shape, np.int16)
    _cuda.dropout_flat_into(cuda.to_device(bits), out, p, 99, 7, scale, bf16=True)
    want = _cpu_bf16(bits, p, 99, 7, scale)
    np.testing.assert_array_equal(out.copy_to_host(), want)
    # and it is the mask contract: kept elements are bfloat16(float32(x) * scale), dropped are +0
    keep = fastdrop.dropout_mask(bits.shape, p, 99, 7)
    assert not want[~keep].any()


@pytest.mark.parametrize("group_ndim, shape", [(1, (5, 3, 4)), (2, (2, 3, 7))])
def test_grouped_bf16_bits_bit_identical_to_cpu(rng, group_ndim, shape):
    bits = _bf16_bits(rng, int(np.prod(shape)))[:int(np.prod(shape))].reshape(shape)
    out = cuda.device_array(shape, np.int16)
    _cuda.grouped_dropout_into(cuda.to_device(bits), out, 0.5, 3, 1, 2.0, group_ndim, bf16=True)
    np.testing.assert_array_equal(out.copy_to_host(), _cpu_bf16(bits, 0.5, 3, 1, 2.0, group_ndim))


def test_bf16_conversions_round_to_nearest_even_and_keep_nan():
    """The device functions alone, over every bfloat16 pattern and the float32 halfway cases."""
    allbits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(np.int16)

    @cuda.jit
    def roundtrip(h, f, back):
        i = cuda.grid(1)
        if i < h.size:
            f[i] = K.bf16_to_f32(h[i])
            back[i] = K.f32_to_bf16(f[i])

    f = cuda.device_array(allbits.shape, np.float32)
    back = cuda.device_array(allbits.shape, np.int16)
    roundtrip[(allbits.size + 255) // 256, 256](cuda.to_device(allbits), f, back)
    widened = f.copy_to_host()
    np.testing.assert_array_equal(widened.view(np.uint32), allbits.view(np.uint16).astype(np.uint32) << 16)
    u = allbits.view(np.uint16)
    nan = ((u & 0x7FFF) > 0x7F80)
    # exact values come back unchanged; NaNs come back quiet (bit 6 of the 16 set), sign and payload kept
    np.testing.assert_array_equal(back.copy_to_host().view(np.uint16), np.where(nan, u | 0x40, u))

    # float32 values halfway between two bfloat16 values round to the even one
    @cuda.jit
    def narrow(f, h):
        i = cuda.grid(1)
        if i < f.size:
            h[i] = K.f32_to_bf16(f[i])

    halfway = np.array([0x3F808000, 0x3F818000, 0x3F808001, 0x3F817FFF, 0x7F7F8000, 0xBF808000], np.uint32)
    h = cuda.device_array(halfway.shape, np.int16)
    narrow[1, 32](cuda.to_device(halfway.view(np.float32)), h)
    np.testing.assert_array_equal(h.copy_to_host().view(np.uint16),
                                  np.array([0x3F80, 0x3F82, 0x3F81, 0x3F81, 0x7F80, 0xBF80], np.uint16))


# ---- dense permuted layouts indexed directly by the grouped kernel (the torch route) -------------

def _memory_groups(shape, order, group_ndim):
    """(group index of the element at each memory position, element strides) of an array of
    `shape` stored with its dims in memory order `order` (outermost first)."""
    strides = [0] * len(shape)
    step = 1
    for d in reversed(order):
        strides[d] = step
        step *= shape[d]
    n = int(np.prod(shape))
    idx = np.indices(shape).reshape(len(shape), -1)            # logical index of each element
    group = np.ravel_multi_index(idx[:group_ndim], shape[:group_ndim]) if group_ndim else np.zeros(n, int)
    pos = (np.array(strides)[:, None] * idx).sum(0)           # memory position of each element
    by_pos = np.empty(n, int)
    by_pos[pos] = group
    return by_pos, tuple(strides)


def _random_layouts(rng, count=300):
    """(shape, memory order) pairs: 2-4 dims of size 1-4 (size-1 dims included), any order."""
    for _ in range(count):
        ndim = int(rng.integers(2, 5))
        yield tuple(int(s) for s in rng.integers(1, 5, ndim)), list(rng.permutation(ndim))


def test_group_layout_reads_the_right_group_off_every_memory_position():
    """Every layout group_layout accepts really gives (j // row) * inner + j % inner = the group of
    the element at memory position j; channels_last, DropPath on permuted views and plain C order
    are accepted; 300 random shapes and memory orders, size-1 dims included."""
    rng = np.random.default_rng(5)
    accepted = 0
    for shape, order in _random_layouts(rng):
        group_ndim = int(rng.integers(1, len(shape)))
        by_pos, strides = _memory_groups(shape, order, group_ndim)
        layout = _cuda.group_layout(shape, strides, group_ndim)
        if layout is None:
            continue
        accepted += 1
        row, inner = layout
        j = np.arange(by_pos.size)
        np.testing.assert_array_equal((j // row) * inner + j % inner if inner > 1 else j // row, by_pos,
                                      err_msg=f"{shape} order {order} groups {group_ndim}: {layout}")
    assert accepted > 100
    # the layouts that matter, by name
    assert _cuda.group_layout((8, 16, 5, 6), (480, 1, 96, 16), 2) == (480, 16)      # channels_last
    assert _cuda.group_layout((8, 16, 5, 6), (480, 1, 96, 16), 1) == (480, 1)       # DropPath on it
    assert _cuda.group_layout((2, 4, 3, 5, 6), (360, 1, 120, 24, 4), 2) == (360, 4)  # channels_last_3d
    assert _cuda.group_layout((8, 16, 5, 6), (480, 30, 6, 1), 2) == (30, 1)         # C order
    assert _cuda.group_layout((8, 16, 5, 6), (30, 240, 6, 1), 2) is None           # (C, N, H, W) memory


@pytest.mark.parametrize("bf16", [False, True])
@pytest.mark.parametrize("shape, order, group_ndim", [
    ((3, 5, 4, 6), (0, 2, 3, 1), 2),      # Dropout2d, channels_last
    ((3, 5, 4, 6), (0, 2, 3, 1), 1),      # DropPath, channels_last
    ((2, 3, 2, 4, 5), (0, 2, 3, 4, 1), 2),  # Dropout3d, channels_last_3d
    ((6, 7), (1, 0), 1),                  # DropPath on a transposed matrix: the batch dim innermost
])
def test_grouped_kernel_on_permuted_memory_is_the_cpu_result(rng, shape, order, group_ndim, bf16):
    """The launch the torch route makes for such tensors: the flat memory of x and out with
    group_layout's (row, inner), against the CPU result of the same logical array."""
    x = rng.standard_normal(shape).astype(np.float32)
    if bf16:
        x = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.int16)
    memory = np.ascontiguousarray(x.transpose(order))          # x's elements in memory order
    _, strides = _memory_groups(shape, list(order), group_ndim)
    layout = _cuda.group_layout(shape, strides, group_ndim)
    assert layout is not None
    keep = cuda.device_array(int(np.prod(shape[:group_ndim])), np.bool_)
    out = cuda.device_array(memory.size, memory.dtype)
    _cuda.grouped_dropout_into(cuda.to_device(memory.ravel()), out, 0.4, 11, 2, 1 / 0.6, group_ndim,
                               keep=keep, bf16=bf16, layout=layout)
    got = out.copy_to_host().reshape(memory.shape).transpose(np.argsort(order))
    if bf16:
        want = _cpu_bf16(x, 0.4, 11, 2, 1 / 0.6, group_ndim)
    else:
        from fastdrop import _cpu
        want = _cpu.grouped_dropout_into(x, np.empty_like(x), 0.4, 11, 2, 1 / 0.6, group_ndim)
    assert same_bits(got, want)


def test_transpose_layout_maps_every_memory_position_to_its_logical_index():
    """Every layout transpose_layout accepts stores logical (a, r, l) at memory (a, l, r); channels_last,
    channels_last_3d and transposed matrices are accepted, C order is not (it has its own kernel)."""
    rng = np.random.default_rng(6)
    accepted = 0
    for shape, order in _random_layouts(rng):
        by_pos, strides = _memory_groups(shape, order, len(shape))  # all dims grouped: the logical index
        layout = _cuda.transpose_layout(shape, strides)
        if layout is None:
            continue
        accepted += 1
        A, R, L = layout
        m = np.arange(by_pos.size)
        a, l, r = m // (L * R), (m // R) % L, m % R
        np.testing.assert_array_equal((a * R + r) * L + l, by_pos, err_msg=f"{shape} order {order}")
    assert accepted > 50
    assert _cuda.transpose_layout((8, 16, 5, 6), (480, 1, 96, 16)) == (8, 16, 30)        # channels_last
    assert _cuda.transpose_layout((2, 4, 3, 5, 6), (360, 1, 120, 24, 4)) == (2, 4, 90)    # channels_last_3d
    assert _cuda.transpose_layout((7, 9), (1, 7)) == (1, 7, 9)                             # transposed
    assert _cuda.transpose_layout((8, 16, 5, 6), (480, 30, 6, 1)) is None                 # C order
    assert _cuda.transpose_layout((8, 16, 5, 6), (480, 1, 16, 80)) is None                # (N, W, H, C)


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("shape, order", [
    ((2, 40, 9, 9), (0, 2, 3, 1)),        # channels_last, two row tiles and two column tiles
    ((70, 130), (1, 0)),                  # a transposed matrix: rows start mid-Philox-block
    ((1, 3, 2, 5, 7), (0, 2, 3, 4, 1)),   # channels_last_3d, tiny
])
def test_transposed_kernel_is_the_cpu_result(rng, shape, order, dtype):
    """Elementwise dropout straight on a permuted tensor's memory (the torch route's launch for
    channels_last and transposed tensors) gives the CPU's bits at every element, NaN inputs
    included; p = 0.4 and p = 1 (all dropped)."""
    x = data(rng, shape, dtype)
    x.flat[::17] = np.nan
    memory = np.ascontiguousarray(x.transpose(order))
    _, strides = _memory_groups(shape, list(order), len(shape))
    layout = _cuda.transpose_layout(shape, strides)
    assert layout is not None
    for p in (0.4, 1.0):
        out = cuda.device_array(memory.size, memory.dtype)
        _cuda.dropout_transposed_into(cuda.to_device(memory.ravel()), out, layout, p, 2**40 + 3, 9,
                                      train_scale(p))
        got = out.copy_to_host().reshape(memory.shape).transpose(np.argsort(order))
        assert same_bits(got, fastdrop.dropout(x, p, seed=2**40 + 3, offset=9))


# ---- the seed in device memory (CUDA-graph capture: _cuda.rng_args, dropout_cuda.philox_key) ----

def _in_memory(seed):
    """The one-element int64 device array a capture passes as `seeds` (a seed >= 2^63 wraps to a
    negative int64: its bits are the seed's)."""
    return cuda.to_device(np.array([seed], dtype=np.uint64).view(np.int64))


WRONG_HOST_SEED = 99  # what the launchers get as `seed` when the seed is in memory: never read


@pytest.mark.parametrize("seed, offset", SEEDS_OFFSETS)
@pytest.mark.parametrize("kind", ["float32", "float16", "bfloat16 bits", "transposed", "grouped",
                                  "grouped bf16 bits", "mask"])
def test_a_seed_in_device_memory_gives_the_host_seeds_result(rng, seed, offset, kind):
    """Every Philox kernel the torch route launches, bit for bit: host seed vs the same seed read
    from memory (with a different host seed passed beside it, which must be ignored)."""
    p, scale = 0.4, 1 / 0.6
    x = rng.standard_normal(1029).astype(np.float16 if kind == "float16" else np.float32)
    bf16 = "bf16" in kind
    if bf16:
        x = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.int16)

    def launch(host_seed, seeds):
        xd, out = cuda.to_device(x), cuda.device_array(x.shape, x.dtype)
        if kind == "mask":
            keep = cuda.device_array(37, np.bool_)
            return _cuda.keep_mask_into(keep, p, host_seed, offset, seeds=seeds).copy_to_host()
        if kind == "transposed":
            _cuda.dropout_transposed_into(xd, out, (3, 7, 49), p, host_seed, offset, scale, seeds=seeds)
        elif kind.startswith("grouped"):
            x3 = xd.reshape(7, 3, 49)
            _cuda.grouped_dropout_into(x3, out.reshape(7, 3, 49), p, host_seed, offset, scale, 2,
                                       bf16=bf16, seeds=seeds)
        else:
            _cuda.dropout_flat_into(xd, out, p, host_seed, offset, scale, bf16=bf16, seeds=seeds)
        return out.copy_to_host()
    host = launch(seed, None)
    memory = launch(WRONG_HOST_SEED, _in_memory(seed))
    assert same_bits(memory, host)
    # an empty `seeds` passed explicitly (the torch route's host-seed launches): the host seed
    assert same_bits(launch(seed, cuda.device_array(0, np.int64)), host)
    assert not same_bits(launch(WRONG_HOST_SEED, None), host)  # the host seed matters otherwise
