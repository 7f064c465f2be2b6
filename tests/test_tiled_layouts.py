"""Permuted layouts: elementwise dropout on channels_last, transposed and other permuted views
takes the tiled kernel (kernels.dropout_cpu.dropout_tiled: tiles walked in memory order, their
mask words in transposed order in a buffer); spatial dropout / DropPath whose last group dim is
innermost takes apply_group_mask_inner. Checked against the contract's mask over tile tails in
both tile dims, both ways of making a tile's words, dtypes, in place, serial and parallel, numpy
and torch, forward and backward, and that the layouts they are meant for do take them."""
import numpy as np
import pytest
import torch

import fastdrop
from fastdrop import _cpu
from fastdrop.kernels import dropout_cpu
from fastdrop.kernels.config import CPU_PARALLEL_MIN
from fastdrop.kernels.dropout_cpu import TILED_A, TILED_L

from contract import apply, mask

SEED, OFFSET, P = 2024, 11, 0.35


def _reference(x, p=P, seed=SEED, offset=OFFSET, group_ndim=None):
    """The contract's result: one mask element per element of x, or per index of its first
    group_ndim dims, broadcast over the rest."""
    lead = x.shape if group_ndim is None else x.shape[:group_ndim]
    keep = mask(lead, p, seed, offset).reshape(lead + (1,) * (x.ndim - len(lead)))
    return apply(x, keep, 1 / (1 - p))


def _apply_torch(t, keep, scale):
    """torch's twin of contract.apply: bfloat16 through float32, rounded once."""
    wide = torch.float32 if t.dtype == torch.bfloat16 else t.dtype
    return torch.where(keep, (t.detach().to(wide) * scale).to(t.dtype), torch.zeros((), dtype=t.dtype))


def _channels_last(rng, shape, dtype):
    n, c, h, w = shape
    return np.ascontiguousarray(rng.standard_normal((n, h, w, c)).astype(dtype)).transpose(0, 3, 1, 2)


def _layouts(dtype):
    """(name, array, the dim the tiled kernel walks, whether its rows are whole Philox blocks
    apart): the two ways it makes a tile's words, each with tails past TILED_A and TILED_L, rows
    starting mid-block, serial and parallel sizes."""
    rng = np.random.default_rng(7)
    a_tail = TILED_A + 6
    big_w = CPU_PARALLEL_MIN // 2048

    def normal(*shape):
        return rng.standard_normal(shape).astype(dtype)

    def cl(*shape):
        return _channels_last(rng, shape, dtype)

    def transposed(rows, cols):
        return np.ascontiguousarray(normal(rows, cols)).T

    return [
        # row starts at different lanes of their blocks: words per row, scattered
        ("channels_last", cl(2, a_tail, 3, TILED_L + 5), 1, False),
        ("channels_last_small", cl(3, 5, 2, 7), 1, False),
        ("channels_last_big", cl(2, 64, 33, big_w + 3), 1, False),
        ("transposed", transposed(TILED_L + 5, a_tail), 0, False),
        ("permuted_3d", normal(9, 4, 2 * TILED_A + 1).transpose(2, 0, 1), 0, False),
        # rows a multiple of 8 elements apart: Philox vectorized across rows (odd h: shift 4)
        ("channels_last_rows", cl(2, a_tail, 2, TILED_L + 4), 1, True),
        ("channels_last_rows_big", cl(2, 64, 32, big_w + 8), 1, True),
        ("transposed_rows", transposed(TILED_L + 8, a_tail), 0, True),
        ("permuted_4d_rows", normal(6, 5, 4, 3).transpose(1, 3, 0, 2), 1, True),
        # size-1 dims (W = 1, and one in the middle): dropped before the layout is read
        ("channels_last_w1", cl(2, a_tail, 5, 1), 1, False),
        ("channels_last_h1", cl(2, a_tail, 1, TILED_L + 5), 1, False),
    ]


def _rows_apart_whole_blocks(x, a):
    return int(np.prod(x.shape[a + 1:])) % 8 == 0


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("case", range(11))
def test_numpy_permuted_layouts_match_the_contract(dtype, case, spy_kernels):
    name, x, a, by_rows = _layouts(dtype)[case]
    squeezed = np.squeeze(x, tuple(d for d in range(x.ndim) if x.shape[d] == 1))
    assert _cpu._unit_stride_dim(squeezed, np.empty_like(squeezed)) == a, name
    assert _rows_apart_whole_blocks(squeezed, a) == by_rows, name
    calls = spy_kernels("dropout_tiled", "dropout_tiled_serial")
    y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET)
    assert calls, f"{name}: the tiled kernel did not run"
    assert y.strides == x.strides  # numpy's empty_like keeps the layout
    np.testing.assert_array_equal(y, _reference(x))


@pytest.mark.parametrize("case", range(11))
def test_numpy_permuted_inplace(case):
    name, x, _, _ = _layouts(np.float32)[case]
    want = _reference(x)
    y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET, inplace=True)
    assert y is x
    np.testing.assert_array_equal(x, want)


@pytest.mark.parametrize("case", [2, 6])
def test_serial_and_parallel_twins_agree(case):
    _, x, a, _ = _layouts(np.float32)[case]
    xb, xs = _cpu.span_view(x)
    args = _cpu.kernel_rng_args(SEED, OFFSET, P)
    outs = []
    for kernel in (dropout_cpu.dropout_tiled.parallel, dropout_cpu.dropout_tiled_serial):
        out = np.full_like(x, np.nan)
        ob, os = _cpu.span_view(out)
        kernel(xb, xs, ob, os, np.array(x.shape, np.int64), a, *args, np.float32(1 / (1 - P)))
        outs.append(out)
    np.testing.assert_array_equal(outs[0], _reference(x))
    np.testing.assert_array_equal(outs[1], outs[0])


@pytest.mark.parametrize("hw", [(14, 14), (7, 7), (30, 30), (28, 28)])
def test_channels_last_rows_run_over_h_times_w(hw, monkeypatch):
    """H and W are one run of memory in channels_last: `_merge_runs` makes them one dim (the
    logical index, hence the mask, is unchanged), which the launcher uses when rows start
    mid-block (H*W % 8 != 0: 14x14, 7x7, 30x30), so the tiled kernel's rows are H*W long; 28x28
    keeps its rows. Shapes of a ResNet's later stages, big enough for the parallel kernel."""
    rng = np.random.default_rng(9)
    n = CPU_PARALLEL_MIN // (96 * hw[0] * hw[1]) + 1
    x = _channels_last(rng, (n, 96) + hw, np.float32)
    xm, om = _cpu._merge_runs(x, np.empty_like(x))
    assert xm.shape == om.shape == (n, 96, hw[0] * hw[1])
    assert np.shares_memory(xm, x) and xm.strides == (x.strides[0], x.strides[1], x.strides[3])
    shapes, kernel = [], dropout_cpu.dropout_tiled
    monkeypatch.setattr(dropout_cpu, "dropout_tiled", lambda *a: (shapes.append(tuple(a[4])), kernel(*a))[1])
    y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET)
    assert shapes == [(n, 96, hw[0] * hw[1]) if hw[0] * hw[1] % 8 else (n, 96) + hw]  # what it walked
    np.testing.assert_array_equal(y, _reference(x))
    t = torch.from_numpy(x).requires_grad_()
    yt = fastdrop.dropout(t, P, seed=SEED, offset=OFFSET)
    assert yt.is_contiguous(memory_format=torch.channels_last)
    assert np.array_equal(yt.detach().numpy(), y)
    (gx,) = torch.autograd.grad(yt, t, torch.ones_like(yt))
    assert torch.equal(gx, _apply_torch(torch.ones_like(t), torch.from_numpy(y != 0), 1 / (1 - P)))


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
@pytest.mark.parametrize("how", ["inplace", "out", "broadcast", "read_only"])
def test_merged_rows_with_other_dtypes_and_outputs(dtype, how):
    """The merged channels_last walk (rows start mid-block) for half and double data, in place,
    into a given channels_last out and from a read-only input; and a broadcast input (zero
    strides: the strided kernel, whose rows are not merged)."""
    rng = np.random.default_rng(4)
    x = _channels_last(rng, (3, TILED_A + 5, 7, 7), dtype)
    want = _reference(x)
    if how == "inplace":
        y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET, inplace=True)
        assert y is x
    elif how == "out":
        out = _channels_last(rng, x.shape, dtype)
        y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET, out=out)
        assert y is out
    elif how == "broadcast":
        x = np.broadcast_to(x[:1, :1], x.shape)
        want = _reference(x)
        y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET)
    else:
        x.flags.writeable = False
        y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET)
    np.testing.assert_array_equal(y, want)


def test_merge_runs_needs_a_run_in_x_and_out():
    """Dims are merged only where both x and out are one run; a transposed out keeps them apart."""
    x = np.zeros((4, 5, 6), np.float32)
    assert _cpu._merge_runs(x, np.zeros((4, 5, 6), np.float32))[0].shape == (120,)
    out = np.zeros((6, 5, 4), np.float32).transpose(2, 1, 0)
    xm, om = _cpu._merge_runs(x, out)
    assert xm.shape == om.shape == (4, 5, 6)
    out = np.zeros((4, 6, 5), np.float32).transpose(0, 2, 1)  # dims 0 and (1, 2) apart in out
    xm, om = _cpu._merge_runs(x, out)
    assert xm.shape == (4, 5, 6)
    x2 = np.zeros((3, 8, 5), np.float32)[:, ::2]  # every other row: (n, r) one run, rows apart
    xm, om = _cpu._merge_runs(x2, np.empty((3, 4, 5), np.float32))
    assert xm.shape == om.shape == (12, 5) and np.shares_memory(xm, x2)


def test_out_without_the_unit_stride_takes_the_strided_kernel():
    """x channels_last, out contiguous: no dim has unit stride in both, the strided kernel runs."""
    _, x, _, _ = _layouts(np.float32)[0]
    out = np.empty(x.shape, np.float32)
    assert _cpu._unit_stride_dim(x, out) is None
    fastdrop.dropout(x, P, seed=SEED, offset=OFFSET, out=out)
    np.testing.assert_array_equal(out, _reference(x))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("h", [5, 4])  # H*W: rows mid-block, rows whole blocks apart
def test_torch_channels_last_forward_and_backward(dtype, h):
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.standard_normal((2, TILED_A + 3, h, TILED_L + 2))).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.from_numpy(rng.standard_normal(tuple(x.shape))).to(dtype).contiguous(
        memory_format=torch.channels_last)
    y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET)
    assert y.is_contiguous(memory_format=torch.channels_last)
    keep = torch.from_numpy(mask(tuple(x.shape), P, SEED, OFFSET))
    assert torch.equal(y, _apply_torch(x, keep, 1 / (1 - P)))
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, _apply_torch(g, keep, 1 / (1 - P)))


# ---- spatial dropout / DropPath with the last group dim innermost (apply_group_mask_inner) ----

def _grouped_layouts(dtype):
    """(name, fn, array, group_ndim): the last group dim has unit stride."""
    rng = np.random.default_rng(11)
    cl3d = np.ascontiguousarray(rng.standard_normal((2, 3, 4, 5, 7)).astype(dtype)).transpose(0, 4, 1, 2, 3)
    batch_inner = np.ascontiguousarray(rng.standard_normal((6, 5, 9)).astype(dtype)).transpose(2, 0, 1)
    return [
        ("dropout2d channels_last", fastdrop.dropout2d, _channels_last(rng, (3, 70, 5, 6), dtype), 2),
        ("dropout2d channels_last big", fastdrop.dropout2d,
         _channels_last(rng, (4, 64, 24, CPU_PARALLEL_MIN // 6144 + 1), dtype), 2),
        ("dropout3d channels_last_3d", fastdrop.dropout3d, cl3d, 2),
        ("drop_path batch innermost", fastdrop.drop_path, batch_inner, 1),
        # runs of C not one after another (W sliced with a step): the strided inner kernel
        ("dropout2d channels_last, W sliced", fastdrop.dropout2d, _channels_last(rng, (3, 70, 5, 12), dtype)[..., ::2],
         2),
        ("dropout2d channels_last, W sliced, big", fastdrop.dropout2d,
         _channels_last(rng, (4, 64, 24, 2 * (CPU_PARALLEL_MIN // 6144 + 1)), dtype)[..., ::2], 2),
        # few channels: the long-loop kernel's chunks of whole runs (_cpu.INNER_ROWS_MAX_C)
        ("dropout2d channels_last, C = 3", fastdrop.dropout2d, _channels_last(rng, (5, 3, 7, 9), dtype), 2),
        ("dropout2d channels_last, C = 4, big", fastdrop.dropout2d,
         _channels_last(rng, (2, 4, 128, CPU_PARALLEL_MIN // 1024 + 1), dtype), 2),
        ("dropout2d channels_last, C = 48", fastdrop.dropout2d, _channels_last(rng, (3, 48, 5, 7), dtype), 2),
    ]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("case", range(9))
@pytest.mark.parametrize("inplace", [False, True])
def test_grouped_inner_layouts_match_the_contract(dtype, case, inplace, spy_kernels):
    name, fn, x, group_ndim = _grouped_layouts(dtype)[case]
    assert _cpu._inner_group_views(x, x, group_ndim) is not None, name
    want = _reference(x, group_ndim=group_ndim)
    runs = x.shape[group_ndim - 1]
    strided = "sliced" in name or runs > _cpu.INNER_ROWS_MAX_C
    kernel = "apply_group_mask_inner_strided" if strided else "apply_group_mask_inner"
    if inplace:  # one array, not two views of one memory (the loops vectorize)
        kernel += "_inplace"
    calls = spy_kernels(kernel, kernel + "_serial")
    y = fn(x, P, seed=SEED, offset=OFFSET, inplace=inplace)
    assert calls, f"{name}: the inner-group kernel did not run"
    assert (y is x) == inplace
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_dropout2d_channels_last_forward_and_backward(dtype):
    rng = np.random.default_rng(5)
    x = torch.from_numpy(rng.standard_normal((3, 70, 5, 6))).to(dtype)
    x = x.contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.from_numpy(rng.standard_normal(tuple(x.shape))).to(dtype).contiguous(
        memory_format=torch.channels_last)
    y = fastdrop.dropout2d(x, P, seed=SEED, offset=OFFSET)
    assert y.is_contiguous(memory_format=torch.channels_last)
    keep = torch.from_numpy(mask((3, 70), P, SEED, OFFSET))[:, :, None, None]
    assert torch.equal(y, _apply_torch(x, keep, 1 / (1 - P)))
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, _apply_torch(g, keep, 1 / (1 - P)))


# ---- random layouts: every kernel choice against the contract ------------------------------------

def _random_layout(rng, base):
    """base's values under a random memory order (a permuted copy viewed back), sometimes sliced
    with steps: the launchers then pick the flat, tiled, strided, grouped or inner-group kernel."""
    perm = tuple(int(d) for d in rng.permutation(base.ndim))
    x = np.ascontiguousarray(base.transpose(perm)).transpose(np.argsort(perm))
    if rng.random() < 0.3:
        x = x[tuple(slice(None, None, int(rng.integers(1, 3))) for _ in range(x.ndim))]
    return x


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_random_layouts_elementwise(dtype):
    rng = np.random.default_rng(123)
    for _ in range(60):
        shape = tuple(int(s) for s in rng.integers(1, 40, int(rng.integers(1, 5))))
        x = _random_layout(rng, rng.standard_normal(shape).astype(dtype))
        p = float(rng.choice([0.1, 0.5, 0.9]))
        seed, offset = int(rng.integers(0, 2**63)), int(rng.integers(0, 999))
        inplace = bool(rng.random() < 0.3)
        want = _reference(x.copy(), p, seed, offset)
        y = fastdrop.dropout(x, p, seed=seed, offset=offset, inplace=inplace)
        assert (y is x) == inplace
        np.testing.assert_array_equal(y, want, err_msg=f"shape {shape}, strides {x.strides}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_random_layouts_grouped(dtype):
    rng = np.random.default_rng(7)
    fns = {3: fastdrop.dropout1d, 4: fastdrop.dropout2d, 5: fastdrop.dropout3d}
    for trial in range(60):
        nd = int(rng.integers(3, 6))
        shape = tuple(int(s) for s in rng.integers(1, 20, nd))
        fn, group_ndim = (fastdrop.drop_path, 1) if trial % 4 == 0 else (fns[nd], 2)
        perm = [int(d) for d in rng.permutation(nd)]
        x = torch.randn(*[shape[d] for d in perm]).to(dtype).permute(*np.argsort(perm).tolist())
        p, seed, offset = float(rng.choice([0.2, 0.5])), int(rng.integers(0, 2**63)), int(rng.integers(0, 99))
        inplace = bool(rng.random() < 0.25)
        src = x.clone()
        y = fn(x, p, seed=seed, offset=offset, inplace=inplace)
        lead = shape[:group_ndim]
        keep = torch.from_numpy(mask(lead, p, seed, offset)).reshape(lead + (1,) * (nd - group_ndim))
        want = _apply_torch(src, keep, 1 / (1 - p))
        assert torch.equal(y, want), f"{fn.__name__} shape {shape} perm {perm} inplace {inplace}"


# ---- torch tensors: the same walks on their memory by address, no numpy views ------------------

def test_tiled_layout_drops_ones_and_merges_rows_that_start_mid_block():
    """kernels/layout.py `tiled_layout`, on element strides: channels_last 14x14 (H*W % 8 != 0)
    gets rows over H*W, 28x28 keeps its dims, size-1 dims go first, and without a unit-stride dim
    in both x and out (C-contiguous, or a transposed out) there is no tiled walk."""
    from fastdrop.kernels.layout import tiled_layout

    def cl(n, c, h, w):
        return (h * w * c, 1, w * c, c)
    assert tiled_layout((2, 70, 14, 14), cl(2, 70, 14, 14), cl(2, 70, 14, 14), 8) == \
        ((2, 70, 196), (13720, 1, 70), (13720, 1, 70), 1)
    assert tiled_layout((2, 70, 28, 28), cl(2, 70, 28, 28), cl(2, 70, 28, 28), 8) == \
        ((2, 70, 28, 28), cl(2, 70, 28, 28), cl(2, 70, 28, 28), 1)
    assert tiled_layout((1, 70, 1, 9), cl(1, 70, 1, 9), cl(1, 70, 1, 9), 8) == ((70, 9), (1, 70), (1, 70), 0)
    assert tiled_layout((4, 5, 6), (30, 6, 1), (30, 6, 1), 8) is None
    assert tiled_layout((4, 5), (1, 4), (5, 1), 8) is None  # x transposed, out contiguous
    assert tiled_layout((1, 1), (1, 1), (1, 1), 8) is None


def _torch_routes(spy_kernels, monkeypatch, *more):
    """Spies on the kernels the torch launcher's permuted route may take (and `more`); the numpy
    launcher made to fail (the route must not reach it)."""
    def no_numpy(*args, **kwargs):
        raise AssertionError("the permuted torch route went through numpy views")
    monkeypatch.setattr(_cpu, "dropout_into", no_numpy)
    return spy_kernels("dropout_tiled_at", "dropout_tiled_at_serial", "dropout_flat_serial_at",
                       "dropout_flat_inplace_serial_at", *more)


def _dropout_how(t, how):
    """fastdrop.dropout of t into a given out= of t's layout, in place, or fresh (in torch's
    layout for t's dropout), checked to return what each promises."""
    if how == "out":
        out = torch.empty_like(t)
        y = fastdrop.dropout(t, P, seed=SEED, offset=OFFSET, out=out)
        assert y is out
    elif how == "inplace":
        y = fastdrop.dropout(t, P, seed=SEED, offset=OFFSET, inplace=True)
        assert y is t
    else:
        y = fastdrop.dropout(t, P, seed=SEED, offset=OFFSET)
        assert y.stride() == torch.empty_like(t).stride()
    return y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", range(11))
@pytest.mark.parametrize("how", ["new", "out", "inplace", "parallel"])
def test_torch_permuted_layouts_by_address(dtype, case, how, spy_kernels, monkeypatch):
    """Elementwise dropout of a permuted torch tensor: the contract's bits, torch's layout for the
    output, and the tiled kernel on the tensors' memory (or, small and with few unit-stride rows
    or few elements, the serial kernel on a C-order copy), never the numpy launcher."""
    name, x, a, _ = _layouts(np.float32 if dtype == torch.float32 else np.float64)[case]
    want = _reference(x)
    t = torch.from_numpy(x.copy(order="K"))
    assert t.stride() == tuple(s // x.itemsize for s in x.strides), name
    if how == "parallel":  # every size on the pool
        monkeypatch.setattr(_cpu, "CPU_PARALLEL_MIN", 1)
    calls = _torch_routes(spy_kernels, monkeypatch)
    y = _dropout_how(t, how)
    assert np.array_equal(y.numpy(), want), name
    from fastdrop._core import _COPY_BELOW_ROWS, _COPY_MAX_ELEMENTS
    from fastdrop.kernels.layout import tiled_layout
    shape, _, _, a = tiled_layout(t.shape, t.stride(), t.stride(), 8)
    copied = how == "new" and t.numel() < CPU_PARALLEL_MIN and (
        t.numel() <= _COPY_MAX_ELEMENTS or shape[a] < _COPY_BELOW_ROWS)
    expected = ("dropout_flat_inplace_serial_at" if copied else
                "dropout_tiled_at" if how == "parallel" or t.numel() >= CPU_PARALLEL_MIN else "dropout_tiled_at_serial")
    assert calls == [expected], (name, calls)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", range(11))
@pytest.mark.parametrize("how", ["new", "out", "inplace", "parallel", "grad"])
def test_torch_permuted_half_layouts_by_address(dtype, case, how, spy_kernels, monkeypatch):
    """A permuted float16/bfloat16 tensor takes the same kernels on its memory as float32 (it took
    numpy views before 2026-12-07), the element type its bits: every 16-bit pattern (NaN payloads,
    subnormals, infs) in each layout gives the numpy-view route's bits, fresh, out=, in place, on
    the pool, and as the forward and backward under autograd."""
    name, shaped, _, _ = _layouts(np.float32)[case]
    bf16 = dtype == torch.bfloat16
    bits = np.empty_like(shaped, dtype=np.uint16)  # shaped's memory order
    bits[...] = np.random.default_rng(case).permutation(np.resize(np.arange(1 << 16, dtype=np.uint32),
                                                                  bits.size)).astype(np.uint16).reshape(bits.shape)

    def want(b):  # the numpy launcher on a view of b's memory
        out = np.empty_like(b)
        typed = (lambda a: a) if bf16 else (lambda a: a.view(np.float16))
        _cpu.dropout_into(typed(b), typed(out), P, SEED, OFFSET, 1 / (1 - P), bf16=bf16)
        return out

    def bits_of(t):
        return t.detach().view(torch.int16).numpy().view(np.uint16)

    def as_torch(b):
        return torch.from_numpy(b.view(np.int16)).view(dtype)
    expected = want(bits)
    t = as_torch(bits.copy(order="K"))
    assert t.stride() == tuple(s // 2 for s in bits.strides), name
    if how == "parallel":
        monkeypatch.setattr(_cpu, "CPU_PARALLEL_MIN", 1)
    if how == "grad":
        grad_bits = np.empty_like(bits)
        grad_bits[...] = np.random.default_rng(99).integers(0, 1 << 16, bits.shape).astype(np.uint16)
        grad_expected = want(grad_bits)
    calls = _torch_routes(spy_kernels, monkeypatch, "dropout_flat_inplace")
    if how == "grad":
        leaf = t.clone().requires_grad_(True)  # (clone keeps a dense layout)
        y = fastdrop.dropout(leaf, P, seed=SEED, offset=OFFSET)
        y.backward(as_torch(grad_bits.copy(order="K")))
        assert np.array_equal(bits_of(leaf.grad), grad_expected), name
    else:
        y = _dropout_how(t, how)
    assert y.stride() == torch.empty_like(t).stride()
    assert np.array_equal(bits_of(y), expected), name
    assert calls and len(calls) == (2 if how == "grad" else 1), calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_random_layouts_elementwise(dtype):
    """Random memory orders, sometimes sliced with steps (then no tiled walk: a small x is
    copied to C order, the strided kernel takes a large one), fresh, in place and into a given
    out of x's layout or a contiguous one, under autograd too: the contract's bits."""
    rng = np.random.default_rng(321)
    for trial in range(80):
        shape = tuple(int(s) for s in rng.integers(1, 40, int(rng.integers(1, 5))))
        x = _random_layout(rng, rng.standard_normal(shape))
        t = torch.from_numpy(x.copy(order="K")).to(dtype)
        p = float(rng.choice([0.1, 0.5, 0.9]))
        seed, offset = int(rng.integers(0, 2**63)), int(rng.integers(0, 999))
        want = _reference(t.numpy().copy(), p, seed, offset)
        how = ["new", "inplace", "out", "out_contiguous", "grad"][trial % 5]
        if how == "inplace":
            y = fastdrop.dropout(t, p, seed=seed, offset=offset, inplace=True)
            assert y is t
        elif how.startswith("out"):
            out = torch.empty(t.shape, dtype=dtype) if how == "out_contiguous" else torch.empty_like(t)
            assert fastdrop.dropout(t, p, seed=seed, offset=offset, out=out) is out
            y = out
        elif how == "grad":
            t.requires_grad_()
            y = fastdrop.dropout(t, p, seed=seed, offset=offset)
            (g,) = torch.autograd.grad(y, t, torch.ones_like(y))
            assert np.array_equal(g.numpy(), _reference(np.ones(want.shape, want.dtype), p, seed, offset)), (shape, t.stride())
            y = y.detach()
        else:
            y = fastdrop.dropout(t, p, seed=seed, offset=offset)
        assert np.array_equal(y.numpy(), want), f"{how}: shape {shape}, strides {t.stride()}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("size", ["small", "big"])
@pytest.mark.parametrize("make", ["expanded", "sliced"])
def test_torch_sliced_and_expanded_copied_into_the_output(dtype, size, make, spy_kernels, monkeypatch):
    """No tiled walk (a sliced or expanded x: its fresh output is contiguous): x's values go into
    the output, and the flat kernel runs in place there, serial or on the pool; an expanded x is
    the incoming gradient of a sum, whose backward ran the strided kernel's scalar loop before
    (2026-12-06). The contract's bits, forward and as that backward."""
    cols = 96 if size == "small" else CPU_PARALLEL_MIN // 64 + 8
    base = torch.from_numpy(np.random.default_rng(2).standard_normal((64, 2 * cols))).to(dtype)
    x = base[:1, :cols].expand(64, cols) if make == "expanded" else base[:, ::2]
    want = _reference(x.contiguous().numpy())
    calls = _torch_routes(spy_kernels, monkeypatch, "dropout_flat_inplace")
    y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET)
    assert y.is_contiguous() and np.array_equal(y.numpy(), want)
    assert calls == ["dropout_flat_inplace_serial_at" if size == "small" else "dropout_flat_inplace"], calls
    monkeypatch.undo()  # (a big contiguous forward takes the numpy launcher)
    t = torch.zeros(64, cols, dtype=dtype, requires_grad=True)
    (g,) = torch.autograd.grad(fastdrop.dropout(t, P, seed=SEED, offset=OFFSET).sum(), t)
    assert np.array_equal(g.numpy(), _reference(np.ones((64, cols), want.dtype)))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("size", ["small", "big"])
@pytest.mark.parametrize("make", ["expanded", "sliced"])
def test_torch_sliced_and_expanded_half_copied_into_the_output(dtype, size, make, spy_kernels, monkeypatch):
    """`test_torch_sliced_and_expanded_copied_into_the_output` for float16/bfloat16: x's bits go
    into the output, and the flat kernel runs in place there on the element type's bits (serial
    by address, or parallel on a view of the output as that type); the bits of the numpy-view
    route over every 16-bit pattern."""
    cols = 96 if size == "small" else CPU_PARALLEL_MIN // 64 + 8
    bits = np.resize(np.arange(1 << 16, dtype=np.uint32), 64 * 2 * cols).astype(np.uint16).reshape(64, 2 * cols)
    base = torch.from_numpy(np.random.default_rng(3).permutation(bits).view(np.int16)).view(dtype)
    x = base[:1, :cols].expand(64, cols) if make == "expanded" else base[:, ::2]
    src = x.contiguous().view(torch.int16).numpy().view(np.uint16)
    bf16 = dtype == torch.bfloat16
    want = np.empty_like(src)
    typed = (lambda a: a) if bf16 else (lambda a: a.view(np.float16))
    _cpu.dropout_into(typed(src), typed(want), P, SEED, OFFSET, 1 / (1 - P), bf16=bf16)
    calls = _torch_routes(spy_kernels, monkeypatch, "dropout_flat_inplace")
    y = fastdrop.dropout(x, P, seed=SEED, offset=OFFSET)
    assert y.is_contiguous() and np.array_equal(y.view(torch.int16).numpy().view(np.uint16), want)
    assert calls == ["dropout_flat_inplace_serial_at" if size == "small" else "dropout_flat_inplace"], calls
