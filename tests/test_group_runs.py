"""kernels/layout.py `group_runs`: which dense layouts hold each group (an index over the first
group_ndim dims) in runs of memory, and the launchers that run the flat grouped kernel there
(fastdrop/_cpu.py, `grouped_dropout_into`; fastdrop/_core.py, `_dense_grouped_dropout`)."""
import itertools

import numpy as np
import pytest
import torch

import fastdrop
from fastdrop.kernels.layout import group_runs
from fastdrop.mask import dropout_mask

P, SEED, OFFSET = 0.4, 2024, 5


def _positions(shape, strides):
    """Memory position of every element, as an array of `shape`."""
    pos = np.zeros(shape, np.int64)
    for d, (n, s) in enumerate(zip(shape, strides)):
        pos += (np.arange(n) * s).reshape((1,) * d + (n,) + (1,) * (len(shape) - d - 1))
    return pos


def _holds(shape, strides, g, outer, run):
    """Does the answer hold: run r of group r % groups at memory positions [r * run, (r + 1) * run)."""
    groups = int(np.prod(shape[:g]))
    group_of = np.arange(groups).reshape(shape[:g] + (1,) * (len(shape) - g))
    pos = _positions(shape, strides)
    return outer * groups * run == np.prod(shape) and \
        np.array_equal(np.broadcast_to(group_of, shape), (pos // run) % groups)


@pytest.mark.parametrize("ndim", [2, 3, 4])
def test_every_permutation_answer_holds(ndim):
    """Every dense permuted layout of a few shapes: where group_runs answers, the runs are where it
    says; where the group dims are outermost, or in order between the other dims, it answers."""
    for shape in [(3, 4, 5, 2)[:ndim], (2, 1, 6, 3)[:ndim], (5, 3, 1, 4)[:ndim]]:
        for perm in itertools.permutations(range(ndim)):
            strides = [0] * ndim
            step = 1
            for d in reversed(perm):  # perm lists the dims outermost first
                strides[d] = step
                step *= shape[d]
            for g in range(1, ndim + 1):
                answer = group_runs(shape, strides, g)
                big = [d for d in range(g) if shape[d] > 1]
                order = [d for d in perm if shape[d] > 1]
                idx = [order.index(d) for d in big]
                in_order = idx == list(range(idx[0], idx[0] + len(idx))) if idx else True
                if answer is None:
                    assert not in_order, (shape, perm, g)
                else:
                    assert in_order and _holds(shape, strides, g, *answer), (shape, perm, g, answer)


def test_layouts_without_runs():
    assert group_runs((4, 6), (1, 4), 1) == (6, 1)              # a transposed matrix: runs of one
    assert group_runs((4, 6), (12, 2), 1) is None               # gaps
    assert group_runs((4, 6), (0, 1), 1) is None                # expanded
    assert group_runs((2, 3, 5, 5), (75, 1, 15, 3), 2) is None  # channels_last: channels innermost


def _sequence_first(rng, shape, dtype):
    return np.ascontiguousarray(rng.standard_normal((shape[1], shape[0]) + shape[2:]).astype(dtype)).swapaxes(0, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("shape", [(5, 7, 24), (16, 64, 40)])  # serial; parallel
@pytest.mark.parametrize("inplace", [False, True])
def test_numpy_sequence_first_drop_path(dtype, shape, inplace, spy_kernels):
    """(L, N, D) seen as (N, L, D): the flat grouped kernel over x's memory, no copy of x or out."""
    x = _sequence_first(np.random.default_rng(3), shape, dtype)
    keep = dropout_mask((shape[0],), P, SEED, OFFSET).reshape(-1, 1, 1)
    compute = np.float64 if dtype == np.float64 else np.float32  # half types in float32, rounded once
    want = np.where(keep, (x.astype(compute) * compute(1 / (1 - P))).astype(dtype), 0)
    calls = spy_kernels("dropout_groups_flat", "dropout_groups_flat_serial", "apply_group_mask",
                        "apply_group_mask_serial")
    y = fastdrop.drop_path(x, P, seed=SEED, offset=OFFSET, inplace=inplace)
    assert calls and set(calls) <= {"dropout_groups_flat", "dropout_groups_flat_serial"}
    assert (y is x) == inplace and y.strides == x.strides
    np.testing.assert_array_equal(y, want)


def test_numpy_spatial_dropout_with_its_groups_between_other_dims():
    """Spatial dropout whose (N, C) groups sit in the middle of memory, a dim outside them and one
    inside: (N, C, L, D) laid out as (L, N, C, D), each group L runs of D."""
    rng = np.random.default_rng(4)
    base = rng.standard_normal((6, 3, 4, 20)).astype(np.float32)   # memory (L=6, N=3, C=4, D=20)
    x = base.transpose(1, 2, 0, 3)                                   # (N, C, L, D): groups in the middle
    assert group_runs(x.shape, [s // 4 for s in x.strides], 2) == (6, 20)
    want = fastdrop.dropout2d(np.ascontiguousarray(x), P, seed=SEED, offset=OFFSET)
    np.testing.assert_array_equal(fastdrop.dropout2d(x, P, seed=SEED, offset=OFFSET), want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_torch_sequence_first_no_grad(dtype):
    x = torch.randn(40, 8, 96, dtype=dtype).transpose(0, 1)
    y = fastdrop.drop_path(x, P, seed=SEED, offset=OFFSET)
    assert y.stride() == x.stride()
    assert torch.equal(y, fastdrop.drop_path(x.contiguous(), P, seed=SEED, offset=OFFSET))


# ---- one element per group, and short runs ---------------------------------------------------
ONE_ELEMENT = [  # (op, shape): every dim after the groups' is 1
    (fastdrop.dropout2d, (64, 48, 1, 1)),   # pooled features
    (fastdrop.dropout1d, (9, 700, 1)),
    (fastdrop.drop_path, (1500,)),          # a 1-D batch
    (fastdrop.drop_path, (300, 1, 1)),
    (fastdrop.dropout3d, (4, 6, 1, 1, 1)),
]


@pytest.mark.parametrize("op,shape", ONE_ELEMENT, ids=str)
@pytest.mark.parametrize("kind", ["numpy", "torch", "torch_grad"])
def test_one_element_groups_take_the_elementwise_kernels(op, shape, kind, spy_kernels):
    """Where every group is one element, the group mask is the elementwise mask of the same seed
    and offset (group i is element i), so elementwise dropout's kernels run it: the same values
    as the README's recipe, no grouped kernel called (they walked a run per element: Dropout2d of
    256x4096x1x1 took 9.3 ms, 0.7x torch's time), and the same gradient."""
    rng = np.random.default_rng(7)
    xn = rng.standard_normal(shape).astype(np.float32)
    xn.reshape(-1)[:3] = [np.inf, -np.inf, np.nan]  # exact zeros where dropped, whatever x holds
    groups = int(np.prod([d for d in shape if d != 1] or [1]))
    keep = dropout_mask((groups,), P, SEED, OFFSET).reshape(shape)
    want = np.where(keep, xn * np.float32(1 / (1 - P)), np.float32(0))
    calls = spy_kernels("dropout_groups_flat", "dropout_groups_flat_serial", "dropout_groups_flat_at",
                        "dropout_groups_flat_at_serial", "apply_group_mask", "apply_group_mask_serial")
    if kind == "numpy":
        y = op(xn, P, seed=SEED, offset=OFFSET)
    else:
        x = torch.from_numpy(xn.copy()).requires_grad_(kind == "torch_grad")
        y = op(x, P, seed=SEED, offset=OFFSET)
        if kind == "torch_grad":
            g = torch.randn(shape)
            y.backward(g)
            want_grad = np.where(keep, g.numpy() * np.float32(1 / (1 - P)), np.float32(0))
            np.testing.assert_array_equal(x.grad.numpy(), want_grad)
        y = y.detach().numpy()
    assert calls == []
    np.testing.assert_array_equal(y, want)
    np.testing.assert_array_equal(y, fastdrop.dropout(xn, P, seed=SEED, offset=OFFSET))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("run", [2, 3, 7, 15, 16, 17, 49, 1023, 1024])  # tiles, flagged and not; pieces
@pytest.mark.parametrize("rows", [5, 700])  # serial; parallel
def test_short_runs_match_the_reference(run, rows, dtype):
    """The flat grouped kernels take runs shorter than RUN_TILE elements a tile of whole runs at a
    time (flags per element below TINY_RUN), and partial last tiles: the README's recipe bit for
    bit, numpy contiguous and torch sequence-first (run r of group r % groups)."""
    rng = np.random.default_rng(run)
    shape = (rows, 3, run)
    xn = rng.standard_normal(shape).astype(dtype)
    keep = dropout_mask(shape[:2], P, SEED, OFFSET)[..., None]
    compute = np.float64 if dtype == np.float64 else np.float32
    want = np.where(keep, (xn.astype(compute) * compute(1 / (1 - P))).astype(dtype), 0).astype(dtype)
    np.testing.assert_array_equal(fastdrop.dropout1d(xn, P, seed=SEED, offset=OFFSET), want)
    if dtype != np.float16:
        # groups in runs between other dims: (L, N, D) seen as (N, L, D), runs of D
        xs = torch.from_numpy(np.ascontiguousarray(xn.transpose(1, 0, 2))).transpose(0, 1)
        ys = fastdrop.drop_path(xs, P, seed=SEED, offset=OFFSET)
        keep_rows = dropout_mask((rows,), P, SEED, OFFSET)[:, None, None]
        want_rows = np.where(keep_rows, (xn.astype(compute) * compute(1 / (1 - P))).astype(dtype), 0)
        np.testing.assert_array_equal(ys.numpy(), want_rows.astype(dtype))
