"""fastdrop.dropout and the spatial variants against a plain reference that takes the kernel's mask."""
import math
import warnings

import numpy as np
import pytest
import torch

import fastdrop

DTYPES = [(np.float32, 0.0), (np.float64, 0.0)]  # (dtype, atol): the op is exact in its dtype
SHAPES = [(), (1,), (1, 1, 1023), (3, 7, 256), (5, 1023), (0, 3), (4, 6, 5, 3)]


def reference(x, p, seed, offset=0, mode="inverted", mask_shape=None):
    """where(mask, x * scale, 0) with the mask broadcast from its own shape."""
    shape = x.shape if mask_shape is None else mask_shape
    m = fastdrop.dropout_mask(shape, p, seed, offset)
    m = m.reshape(m.shape + (1,) * (x.ndim - m.ndim))
    scale = x.dtype.type(1.0 if mode == "classic" or p == 1 else 1.0 / (1.0 - p))
    return np.where(m, x * scale, x.dtype.type(0))


@pytest.mark.parametrize("dtype, atol", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_numpy_matches_reference(dtype, atol, shape, p, mode):
    x = np.asarray(np.random.randn(*shape), dtype=dtype)
    y = fastdrop.dropout(x, p, seed=1234, mode=mode)
    assert type(y) is np.ndarray and y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y, reference(x, p, 1234, mode=mode))


@pytest.mark.parametrize("view", [
    lambda a: a.T,
    lambda a: a[::2, 1::3],
    lambda a: a[::-1],
    lambda a: a[:, ::-2],
    lambda a: np.broadcast_to(a[:1], a.shape),
])
def test_numpy_strided_inputs(view):
    x = view(np.random.randn(64, 96).astype(np.float32))
    y = fastdrop.dropout(x, 0.3, seed=5, offset=2)
    np.testing.assert_array_equal(y, reference(np.ascontiguousarray(x), 0.3, 5, offset=2))


def test_numpy_read_only_input_and_inplace():
    x = np.random.randn(10, 10)
    x.setflags(write=False)
    np.testing.assert_array_equal(fastdrop.dropout(x, 0.5, seed=1), reference(x, 0.5, 1))
    with pytest.raises(ValueError, match="read-only"):
        fastdrop.dropout(x, 0.5, seed=1, inplace=True)
    z = x.copy()
    out = fastdrop.dropout(z, 0.5, seed=1, inplace=True)
    assert out is z
    np.testing.assert_array_equal(z, reference(x, 0.5, 1))


def test_numpy_float16_rounds_once():
    x = np.random.randn(33, 17).astype(np.float16)
    y = fastdrop.dropout(x, 0.3, seed=2)
    assert y.dtype == np.float16
    ref = reference(x.astype(np.float32), 0.3, 2).astype(np.float16)
    np.testing.assert_array_equal(y, ref)


def test_trivial_cases():
    x = np.random.randn(8, 8).astype(np.float32)
    assert fastdrop.dropout(x, 0.0) is x
    assert fastdrop.dropout(x, 0.7, training=False) is x
    np.testing.assert_array_equal(fastdrop.dropout(x, 0.25, training=False, mode="classic"),
                                  x * np.float32(0.75))
    x[0, 0] = np.nan
    x[0, 1] = np.inf
    y = fastdrop.dropout(x, 1.0, seed=3)
    assert (y == 0).all() and not np.signbit(y).any()


def test_non_finite_values_propagate_where_kept():
    x = np.full((64,), np.nan, np.float32)
    x[::3] = np.inf
    y = fastdrop.dropout(x, 0.5, seed=8)
    m = fastdrop.dropout_mask(x.shape, 0.5, 8)
    assert np.isnan(y[m & ~np.isinf(x)]).all() and np.isinf(y[m & np.isinf(x)]).all()
    assert (y[~m] == 0).all()


def test_seed_none_numpy_source():
    x = np.ones(1000, np.float32)
    fastdrop.manual_seed(7)
    a, b = fastdrop.dropout(x, 0.5), fastdrop.dropout(x, 0.5)
    fastdrop.manual_seed(7)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(fastdrop.dropout(x, 0.5), a)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan"), float("inf")])
def test_bad_p(bad):
    with pytest.raises(ValueError, match="between 0 and 1"):
        fastdrop.dropout(np.ones(3), bad)


@pytest.mark.parametrize("x", [np.ones(3, np.int32), np.ones(3, bool), np.ones(3, np.complex64),
                               torch.ones(3, dtype=torch.int64)])
def test_bad_dtype(x):
    with pytest.raises(TypeError, match="floating point"):
        fastdrop.dropout(x, 0.5, seed=0)


def test_bad_container_seed_mode():
    with pytest.raises(TypeError, match="numpy array, a torch tensor"):
        fastdrop.dropout([1.0, 2.0], 0.5)
    with pytest.raises(ValueError, match="seed"):
        fastdrop.dropout(np.ones(3), 0.5, seed=-1)
    with pytest.raises(ValueError, match="seed"):
        fastdrop.dropout(np.ones(3), 0.5, seed=2**64)
    with pytest.raises(TypeError, match="seed"):
        fastdrop.dropout(np.ones(3), 0.5, seed=1.5)
    with pytest.raises(ValueError, match="mode"):
        fastdrop.dropout(np.ones(3), 0.5, mode="dropconnect")


# ---- torch tensors -------------------------------------------------------------------------

TORCH_DTYPES = [(torch.float32, 0.0), (torch.float64, 0.0)]


@pytest.mark.parametrize("dtype, atol", TORCH_DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["inverted", "classic"])
def test_torch_matches_reference(dtype, atol, shape, mode):
    x = torch.randn(shape, dtype=dtype)
    y = fastdrop.dropout(x, 0.4, seed=99, mode=mode)
    assert isinstance(y, torch.Tensor) and y.dtype == dtype and y.shape == x.shape
    np.testing.assert_array_equal(y.numpy(), reference(x.numpy(), 0.4, 99, mode=mode))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_torch_half_types(dtype):
    x = torch.randn(7, 33).to(dtype)
    y = fastdrop.dropout(x, 0.3, seed=4)
    assert y.dtype == dtype
    ref = torch.from_numpy(reference(x.float().numpy(), 0.3, 4)).to(dtype)
    assert torch.equal(y, ref)


def test_torch_layouts_preserved():
    x = torch.randn(2, 3, 5, 7).to(memory_format=torch.channels_last)
    y = fastdrop.dropout(x, 0.5, seed=1)
    assert y.is_contiguous(memory_format=torch.channels_last)
    np.testing.assert_array_equal(y.numpy(), reference(x.contiguous().numpy(), 0.5, 1))
    xt = torch.randn(40, 30).t()
    yt = fastdrop.dropout(xt, 0.5, seed=1)
    assert yt.stride() == xt.stride()
    np.testing.assert_array_equal(yt.numpy(), reference(xt.contiguous().numpy(), 0.5, 1))
    xs = torch.randn(40, 30)[::3, 1::2]
    np.testing.assert_array_equal(fastdrop.dropout(xs, 0.5, seed=1).numpy(),
                                  reference(xs.contiguous().numpy(), 0.5, 1))


def test_torch_gradcheck_and_no_saved_mask():
    x = torch.randn(5, 7, dtype=torch.float64, requires_grad=True)
    for mode in ("inverted", "classic"):
        f = lambda t: fastdrop.dropout(t, 0.35, seed=3, offset=1, mode=mode)  # noqa: E731
        assert torch.autograd.gradcheck(f, (x,))
        assert torch.autograd.gradgradcheck(f, (x,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = fastdrop.dropout(x, 0.5, seed=3)
    assert saved == []
    y.sum().backward()
    m = torch.from_numpy(fastdrop.dropout_mask(x.shape, 0.5, 3))
    assert torch.equal(x.grad, m.double() * 2.0)


def test_torch_seed_none_uses_torch_generator():
    x = torch.ones(1000)
    torch.manual_seed(11)
    a, b = fastdrop.dropout(x, 0.5), fastdrop.dropout(x, 0.5)
    torch.manual_seed(11)
    assert not torch.equal(a, b)
    assert torch.equal(fastdrop.dropout(x, 0.5), a)


def test_torch_inplace():
    x = torch.randn(6, 6)
    ref = reference(x.numpy().copy(), 0.5, 2)
    leaf = torch.randn(3, requires_grad=True)
    with pytest.raises(ValueError, match="leaf"):
        fastdrop.dropout(leaf, 0.5, inplace=True)
    y = fastdrop.dropout(x, 0.5, seed=2, inplace=True)
    assert y is x
    np.testing.assert_array_equal(x.numpy(), ref)
    a = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    h = a * 1.0
    fastdrop.dropout(h, 0.5, seed=2, inplace=True).sum().backward()
    assert torch.equal(a.grad, torch.from_numpy(reference(np.ones((4, 4)), 0.5, 2)))


# ---- spatial -------------------------------------------------------------------------------

@pytest.mark.parametrize("fn, shape, lead", [
    (fastdrop.dropout1d, (4, 6, 9), 2), (fastdrop.dropout1d, (6, 9), 1),
    (fastdrop.dropout2d, (4, 6, 5, 3), 2), (fastdrop.dropout3d, (2, 3, 4, 5, 2), 2),
    (fastdrop.dropout3d, (3, 4, 5, 2), 1),
])
def test_spatial_matches_reference(fn, shape, lead):
    x = np.random.randn(*shape)
    y = fn(x, 0.5, seed=21)
    np.testing.assert_array_equal(y, reference(x, 0.5, 21, mask_shape=shape[:lead]))
    xt = torch.from_numpy(x).to(memory_format=torch.channels_last) if len(shape) == 4 else torch.from_numpy(x)
    yt = fn(xt, 0.5, seed=21)
    np.testing.assert_array_equal(yt.numpy(), y)
    if len(shape) == 4:
        assert yt.is_contiguous(memory_format=torch.channels_last)


def test_spatial_rank_rules():
    with pytest.raises(ValueError, match="dropout1d: Expected 2D or 3D"):
        fastdrop.dropout1d(np.ones((2, 3, 4, 5)), 0.5)
    with pytest.raises(RuntimeError, match="at least 2"):  # torch: RuntimeError; RankError is both
        fastdrop.dropout3d(np.ones(()), 0.5)
    with pytest.warns(UserWarning, match="3D input"):
        fastdrop.dropout2d(np.ones((2, 3, 4)), 0.5, seed=0)
    with pytest.raises(ValueError, match="at least 2"):
        fastdrop.dropout2d(np.ones(3), 0.5)


@pytest.mark.parametrize("fn, shape", [(fastdrop.dropout2d, ()), (fastdrop.dropout2d, (5,)),
                                       (fastdrop.dropout3d, ())])
def test_too_small_ranks_pass_through_where_no_mask_is_drawn(fn, shape):
    """torch raises its feature-dropout rank error only where a mask is drawn (training, 0 < p < 1):
    eval and p = 0 return x, p = 1 zeros, and so do fastdrop's (numpy and torch)."""
    tfn = getattr(torch.nn.functional, fn.__name__)
    for x in (np.full(shape, 3.0), torch.full(shape, 3.0)):
        with pytest.raises(RuntimeError, match="at least 2 dimensions"):
            fn(x, 0.5)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for kw in (dict(p=0.5, training=False), dict(p=0.0), dict(p=1.0), dict(p=0.4, mode="classic", training=False)):
                y = np.asarray(fn(x, **kw))
                expected = 3.0 * (1.0 - kw["p"]) if kw.get("mode") == "classic" else (0.0 if kw["p"] == 1.0 else 3.0)
                assert y.shape == shape and np.allclose(y, expected, rtol=1e-6, atol=0), kw
                if "mode" not in kw:
                    assert np.array_equal(np.asarray(tfn(torch.full(shape, 3.0), **kw)), y)


@pytest.mark.parametrize("fn, shape", [(fastdrop.dropout2d, ()), (fastdrop.dropout2d, (5,)),
                                       (fastdrop.dropout2d, (0,)), (fastdrop.dropout3d, ())])
def test_too_small_ranks_warn_as_torch(fn, shape):
    """torch warns about these ranks in every case, also where it returns x; an empty input in
    training passes through (torch returns it before its rank check)."""
    tfn = getattr(torch.nn.functional, fn.__name__)
    for kw in (dict(p=0.5, training=False), dict(p=0.0)) + ((dict(p=0.5),) if shape == (0,) else ()):
        with pytest.warns(UserWarning, match="Received a"):
            tfn(torch.ones(shape), **kw)
        for x in (np.ones(shape), torch.ones(shape)):
            with pytest.warns(UserWarning, match="Received a"):
                y = fn(x, **kw)
            assert np.array_equal(np.asarray(y), np.ones(shape))


def test_drop_path_of_a_0d_input_as_timm_and_torchvision():
    """0-d input: refused only where row mode draws (timm and torchvision index x.shape[0] there);
    eval and p = 0 return x, batch mode draws its one element."""
    x = torch.tensor(3.0)
    with pytest.raises(ValueError, match="0-d"):
        fastdrop.drop_path(x, 0.1)
    assert fastdrop.drop_path(x, 0.1, training=False) is x
    assert fastdrop.drop_path(x, 0.0) is x
    ys = {float(fastdrop.drop_path(x, 0.5, mode="batch")) for _ in range(40)}
    assert ys == {0.0, 6.0}


@pytest.mark.parametrize("shape", [(6,), (4, 5), (3, 4, 5), (2, 2, 2, 2, 2, 2)])
def test_dropout3d_other_ranks_as_torch(shape):
    """torch's dropout3d reads any rank but 4 and 5 (0 aside) as unbatched, channels along dim 0,
    with a deprecation warning: the same rule, the mask of dim 0's indices."""
    x = np.random.randn(*shape) + 3.0
    with pytest.warns(UserWarning, match="Received a"):
        y = fastdrop.dropout3d(x, 0.5, seed=22)
    np.testing.assert_array_equal(y, reference(x, 0.5, 22, mask_shape=shape[:1]))
    with pytest.warns(UserWarning, match="Received a"):  # the torch route: the same mask
        np.testing.assert_array_equal(fastdrop.dropout3d(torch.from_numpy(x), 0.5, seed=22).numpy(), y)
    with pytest.warns(UserWarning, match="Received a"):
        t = torch.nn.functional.dropout3d(torch.ones(shape), 0.5)
    with pytest.warns(UserWarning, match="Received a"):
        ours = fastdrop.nn.Dropout3d(0.5)(torch.ones(shape))
    for out in (t, ours):  # whole rows of dim 0 dropped or kept
        rows = out.reshape(shape[0], -1)
        assert all(bool((r == r[0]).all()) for r in rows)


def test_spatial_gradcheck():
    x = torch.randn(2, 3, 4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: fastdrop.dropout2d(t, 0.5, seed=4), (x,))


@pytest.mark.parametrize("perm", [(0, 2, 3, 1), (0, 3, 1, 2), (0, 1, 3, 2)])
def test_grouped_masks_on_permuted_layouts(perm):
    """DropPath / spatial dropout on permuted views (timm's ConvNeXt hands drop_path an
    (N, H, W, C) view of (N, C, H, W) memory): the kernel's own mask, x's layout kept."""
    base = torch.randn(4, 5, 6, 7, dtype=torch.float64)
    x = base.permute(*perm)
    for fn, group in ((lambda t: fastdrop.drop_path(t, 0.4, seed=9), 1),
                      (lambda t: fastdrop.dropout2d(t, 0.4, seed=9), 2)):
        y = fn(x)
        keep = torch.from_numpy(fastdrop.dropout_mask(x.shape[:group], 0.4, 9))
        keep = keep.view(*keep.shape, *([1] * (x.dim() - group)))
        torch.testing.assert_close(y, torch.where(keep, x * (1 / 0.6), 0.0), rtol=0, atol=0)
        assert y.stride() == x.stride()
        yn = fn(x.numpy())
        np.testing.assert_array_equal(yn, y.numpy())


# ---- out= -------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("fn, shape", [(fastdrop.dropout, (6, 7)), (fastdrop.dropout2d, (2, 3, 4, 5))])
def test_out_receives_the_result(kind, fn, shape):
    x = np.random.randn(*shape).astype(np.float32)
    ref = fn(x, 0.4, seed=8)
    for view in (lambda a: a, lambda a: a.T.copy().T):  # contiguous and another layout
        out = view(np.full(shape, 7.0, np.float32))
        xin, o = (x, out) if kind == "numpy" else (torch.from_numpy(x), torch.from_numpy(out))
        assert fn(xin, 0.4, seed=8, out=o) is o
        np.testing.assert_array_equal(out, ref)
        assert fn(xin, 0.4, training=False, mode="classic", out=o) is o
        np.testing.assert_allclose(out, x * np.float32(0.6), rtol=1e-6)
    np.testing.assert_array_equal(x, np.asarray(fn(x, 0.0)))  # x untouched


def test_out_is_x_means_inplace():
    x = torch.randn(5, 6)
    ref = fastdrop.dropout(x.clone(), 0.5, seed=3)
    assert fastdrop.dropout(x, 0.5, seed=3, out=x) is x
    assert torch.equal(x, ref)


@pytest.mark.parametrize("make", ["memmap", "matrix", "big_endian", "neg_view"])
def test_out_is_x_means_inplace_for_arrays_fastdrop_views(make, tmp_path):
    """out=x names the object the caller passed, which fastdrop views as a plain array (a memmap,
    an np.matrix): in place on it, as inplace=True (before 2026-12-06 the view was compared, and
    out=x refused as memory shared with x). Where inplace=True is refused (a big-endian array, a
    torch neg view: results would go into a converted copy), out=x is refused the same way."""
    data = np.arange(1.0, 25.0, dtype=np.float32).reshape(4, 6)
    ref = fastdrop.dropout(data, 0.5, seed=3)
    if make == "memmap":
        x = np.memmap(tmp_path / "x.bin", np.float32, "w+", shape=(4, 6))
        x[:] = data
    elif make == "matrix":
        x = np.asmatrix(data.copy())
    elif make == "big_endian":
        x = data.astype(">f4")
    else:
        x = torch._neg_view(torch.from_numpy(-data))
    if make in ("big_endian", "neg_view"):
        with pytest.raises((TypeError, ValueError, RuntimeError)) as refused:
            fastdrop.dropout(x, 0.5, seed=3, inplace=True)
        with pytest.raises(type(refused.value)):
            fastdrop.dropout(x, 0.5, seed=3, out=x)
        return
    assert fastdrop.dropout(x, 0.5, seed=3, out=x) is x
    np.testing.assert_array_equal(np.asarray(x), ref)


@pytest.mark.parametrize("bad, exc, match", [
    (lambda x: x.numpy().copy(), TypeError, "same kind"),
    (lambda x: torch.empty(5, 7), ValueError, "shape"),
    (lambda x: torch.empty(5, 6, dtype=torch.float64), TypeError, "dtype"),
    (lambda x: x[:, :], ValueError, "shares memory"),
    (lambda x: torch.empty(6).expand(5, 6), RuntimeError, "single memory location"),
    (lambda x: torch.empty(5, 6, device="meta"), ValueError, "meta"),
])
def test_bad_out_refused_before_the_seed_draw(bad, exc, match):
    x = torch.randn(5, 6)
    out = bad(x)
    state = torch.get_rng_state()
    with pytest.raises(exc, match=match):
        fastdrop.dropout(x, 0.5, out=out)
    assert torch.equal(torch.get_rng_state(), state)


def test_out_refuses_autograd_and_inplace_together():
    x = torch.randn(4, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="automatic differentiation"):
        fastdrop.dropout(x, 0.5, out=torch.empty(4, 4))
    with torch.no_grad():
        out = torch.empty(4, 4)
        assert fastdrop.dropout(x, 0.5, seed=1, out=out) is out
    y = torch.randn(4, 4)
    with pytest.raises(ValueError, match="either inplace"):
        fastdrop.dropout(y, 0.5, inplace=True, out=torch.empty(4, 4))


@pytest.mark.parametrize("make", ["matrix", "memmap", "memmap_4d"])
def test_inplace_on_an_empty_matrix_or_memmap_returns_it(make, tmp_path):
    """In place on an empty np.matrix / np.memmap: nothing to write, the array given back (the
    check that the converted array shares x's memory said no for every empty array, and the call
    was refused with a TypeError about strides it did not have)."""
    np.zeros(4, np.float32).tofile(tmp_path / "e.bin")
    x = {"matrix": lambda: np.matrix(np.ones((1, 0), np.float32)),
         "memmap": lambda: np.memmap(tmp_path / "e.bin", np.float32, "r+", shape=(0,)),
         "memmap_4d": lambda: np.memmap(tmp_path / "e.bin", np.float32, "r+", shape=(0, 2, 2, 2))}[make]()
    fn = fastdrop.dropout2d if x.ndim == 4 else fastdrop.dropout
    assert fn(x, 0.5, inplace=True) is x


def test_memmaps_take_results(tmp_path):
    """np.memmap, which fastdrop takes as input, is also a valid out= (a disk-backed result),
    max_norm_ weight and dropout_mask out: written through to the file, returned as given."""
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    out = np.memmap(tmp_path / "out", dtype=np.float32, mode="w+", shape=(4, 6))
    assert fastdrop.dropout(x, 0.5, seed=1, out=out) is out
    assert fastdrop.dropout2d(x[:, :, None], 0.5, seed=1, out=out[:, :, None]).base is not None
    part = fastdrop.dropout(x[1:3], 0.5, seed=2, out=out[1:3])
    assert type(part) is np.memmap
    out.flush()
    on_disk = np.fromfile(tmp_path / "out", dtype=np.float32).reshape(4, 6)
    np.testing.assert_array_equal(on_disk[1:3], fastdrop.dropout(x[1:3], 0.5, seed=2))
    w = np.memmap(tmp_path / "w", dtype=np.float32, mode="w+", shape=(4, 6))
    w[...] = 3.0
    assert fastdrop.max_norm_(w, 1.0) is w
    np.testing.assert_allclose(np.linalg.norm(w, axis=1), 1.0, rtol=1e-6)
    mask = np.memmap(tmp_path / "m", dtype=np.bool_, mode="w+", shape=(4, 6))
    assert fastdrop.dropout_mask((4, 6), 0.5, 3, out=mask) is mask
    np.testing.assert_array_equal(mask, fastdrop.dropout_mask((4, 6), 0.5, 3))
    with pytest.raises(TypeError, match="np.memmap"):
        fastdrop.dropout(x, 0.5, out=np.asmatrix(np.zeros((4, 6), np.float32)))


def test_drop_path_scale_by_keep_must_be_a_bool():
    x = torch.ones(4, 3)
    state = torch.get_rng_state()
    with pytest.raises(TypeError, match="scale_by_keep must be a bool"):
        fastdrop.drop_path(x, 0.5, True, "False")  # truthy: it scaled
    assert torch.equal(torch.get_rng_state(), state)
    assert fastdrop.drop_path(x, 0.5, True, np.bool_(False), seed=1).max() == 1.0


def test_dropout_mask_out():
    out = np.zeros((6, 9), bool)
    assert fastdrop.dropout_mask((6, 9), 0.3, 5, 2, out=out) is out
    np.testing.assert_array_equal(out, fastdrop.dropout_mask((6, 9), 0.3, 5, 2))
    strided = np.zeros((9, 6), bool).T
    fastdrop.dropout_mask((6, 9), 0.3, 5, 2, out=strided)
    np.testing.assert_array_equal(strided, out)
    with pytest.raises(ValueError, match="shape"):
        fastdrop.dropout_mask((6, 8), 0.3, 5, out=out)
    with pytest.raises(TypeError, match="bool"):
        fastdrop.dropout_mask((6, 9), 0.3, 5, out=np.zeros((6, 9)))


# In place and out= write through numpy views, behind autograd's back: the version counter must
# still move, or a graph that saved the tensor computes its gradient from the changed values.
_WRITES = {
    "dropout-inplace": lambda x: fastdrop.dropout(x, 0.5, seed=1, inplace=True),
    "dropout1d-inplace": lambda x: fastdrop.dropout1d(x, 0.5, seed=1, inplace=True),
    "dropout2d-inplace": lambda x: fastdrop.dropout2d(x, 0.5, seed=1, inplace=True),
    "drop_path-inplace": lambda x: fastdrop.drop_path(x, 0.5, seed=1, inplace=True),
    "drop_path-batch-inplace": lambda x: fastdrop.drop_path(x, 0.5, seed=1, inplace=True, mode="batch"),
    "classic-eval-inplace": lambda x: fastdrop.dropout(x, 0.5, training=False, inplace=True, mode="classic"),
    "dropout-out-x": lambda x: fastdrop.dropout(x, 0.5, seed=1, out=x),
    "dropout-permuted-inplace": lambda x: fastdrop.dropout(x.permute(2, 0, 1), 0.5, seed=1, inplace=True),
}


@pytest.mark.parametrize("write", _WRITES.values(), ids=list(_WRITES))
def test_writes_bump_the_version_counter_so_stale_graphs_refuse_backward(write):
    w = torch.ones(2, 3, 4, requires_grad=True)
    x = torch.arange(1.0, 25.0).reshape(2, 3, 4)
    y = (w * x).sum()  # saves x for w's gradient
    before = x._version
    write(x)
    assert x._version > before
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_out_bumps_the_version_of_out():
    w = torch.ones(5, requires_grad=True)
    out = torch.zeros(5)
    y = (w * out).sum()
    fastdrop.dropout(torch.ones(5), 0.5, seed=2, out=out)
    assert out._version > 0
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


@pytest.mark.filterwarnings("ignore:.*0-D input")
@pytest.mark.parametrize("call", [
    lambda x: fastdrop.drop_path(x, 0.5, mode="batch", seed=1),  # one mask element for all of x
    lambda x: fastdrop.dropout2d(x, 1.0, seed=1), lambda x: fastdrop.dropout3d(x, 1.0, seed=1),
    lambda x: fastdrop.dropout(x, 0.5, seed=1),
    lambda x: fastdrop.dropout(x, 0.5, training=False, mode="classic"),  # numpy's x * f gave a scalar
    lambda x: fastdrop.dropout(x, 0.5, training=False)])
def test_0d_input_gives_a_0d_array_of_its_kind(call):
    """A 0-d numpy array comes back as a 0-d ndarray (the batch-of-one route returned y[0] of a
    (1,) array: a numpy scalar), a 0-d tensor as a 0-d tensor; values as the 1-element call's."""
    x = np.array(2.5, np.float32)
    y = call(x)
    assert type(y) is np.ndarray and y.shape == () and y.dtype == np.float32
    assert y == call(x.reshape(1))[0]
    t = call(torch.tensor(2.5))
    assert isinstance(t, torch.Tensor) and t.shape == () and t.item() == y


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_small_inplace_and_out_on_tensors_match_numpy(dtype):
    """Small contiguous torch calls in place and with out= take the serial kernels on the tensors'
    addresses: the numpy route's bits, and nothing written outside the view (a view with a
    storage offset in a larger buffer)."""
    from fastdrop.kernels import config
    for shape in [(1,), (7, 9), (64, 512)]:
        assert math.prod(shape) < config.CPU_PARALLEL_MIN
        x = torch.randn(shape, dtype=dtype)
        ref = fastdrop.dropout(x.numpy().copy(), 0.3, seed=9, offset=5)
        y = x.clone()
        assert fastdrop.dropout(y, 0.3, seed=9, offset=5, inplace=True) is y
        assert np.array_equal(y.numpy(), ref)
        out = torch.full_like(x, 7.0)
        assert fastdrop.dropout(x, 0.3, seed=9, offset=5, out=out) is out
        assert np.array_equal(out.numpy(), ref)
        base = torch.randn((3,) + shape, dtype=dtype)
        before = base.clone()
        view = base[1]
        expected = fastdrop.dropout(view.numpy().copy(), 0.3, seed=9, offset=5)
        fastdrop.dropout(view, 0.3, seed=9, offset=5, inplace=True)
        assert np.array_equal(base[1].numpy(), expected)
        assert torch.equal(base[0], before[0]) and torch.equal(base[2], before[2])


def test_dropout_mask_strided_out_checks_its_working_copy_fits(monkeypatch):
    """A strided out is filled through a C-order working copy of its size: that copy is checked
    against physical memory before it is allocated, as a fresh output is (a strided view of a
    memmap larger than RAM got the process killed instead of a MemoryError). The process's
    memory (`_alloc.PHYSICAL_BYTES`: physical memory or its cgroup's limit) is faked to 1 MiB
    here; a contiguous out of the same size takes no copy and is filled."""
    from fastdrop import _alloc
    monkeypatch.setattr(_alloc, "PHYSICAL_BYTES", 1 << 20)
    n = 2 << 20  # twice the faked memory
    strided = np.zeros((n, 2), bool)[:, 0]
    with pytest.raises(MemoryError):
        fastdrop.dropout_mask((n,), 0.5, 1, out=strided)
    assert not strided.any()
    out = np.zeros(n, bool)
    assert fastdrop.dropout_mask((n,), 0.5, 1, out=out) is out and out.any()
