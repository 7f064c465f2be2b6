"""Fused dense-layer CUDA kernels (fastdrop/_cuda.py) against a numpy reference that takes the
kernel's own mask (fastdrop.dropout_mask) and against the CPU ops (fastdrop.linear's declarations on numpy).
Tiny shapes, one of them larger than a tile with no dimension a multiple of it."""
import numpy as np
import pytest
from numba import cuda

import fastdrop
from fastdrop import _cuda as CL
from fastdrop.kernels.linear_cuda import TILE
from fastdrop._core import NumpyBackend, Rng
from fastdrop.linear import DROPCONNECT, DROPCONNECT_SAMPLE, DROPOUT_LINEAR

pytestmark = pytest.mark.cudasim

# (N, in, out); the last spans two tiles along N and in, none a multiple of TILE (the simulator
# runs every thread as a Python thread: shapes stay tiny).
SHAPES = [(3, 5, 4), (1, 1, 1), (TILE + 1, TILE + 2, 3)]
DTYPES = [(np.float32, 1e-5), (np.float64, 1e-12)]
SEED, OFFSET = 2**32 + 99, 2**33 + 7


def reference(kind, x, w, b, g, p, seed, offset, s):
    """(y, gx, gw, gb) in float64 from the kernel's own mask."""
    x, w, g = (a.astype(np.float64) for a in (x, w, g))
    N, I = x.shape
    O = w.shape[0]
    bias = 0.0 if b is None else b.astype(np.float64)
    if kind == "dropout":
        m = fastdrop.dropout_mask((N, I), p, seed, offset) * s
        y = (x * m) @ w.T + bias
        return y, (g @ w) * m, g.T @ (x * m), g.sum(0)
    if kind == "batch":
        m = fastdrop.dropout_mask((O, I), p, seed, offset) * s
        return x @ (w * m).T + bias, g @ (w * m), (g.T @ x) * m, g.sum(0)
    m = fastdrop.dropout_mask((N, O, I), p, seed, offset) * s
    return (np.einsum("ni,oi,noi->no", x, w, m) + bias, np.einsum("no,oi,noi->ni", g, w, m),
            np.einsum("no,ni,noi->oi", g, x, m), g.sum(0))


def run(kind, x, w, b, g, p, seed, offset, s):
    d = cuda.to_device
    if kind == "dropout":
        y = CL.dropout_linear_forward(d(x), d(w), None if b is None else d(b), p, seed, offset, s)
        grads = CL.dropout_linear_backward(d(g), d(x), d(w), p, seed, offset, s)
    else:
        ps = kind == "sample"
        y = CL.dropconnect_forward(d(x), d(w), None if b is None else d(b), p, seed, offset, s, ps)
        grads = CL.dropconnect_backward(d(g), d(x), d(w), p, seed, offset, s, ps)
    return (y.copy_to_host(),) + tuple(a.copy_to_host() for a in grads)


def close(got, ref, rtol):
    assert got.shape == ref.shape
    # rtol relative to the largest reference value: sums with cancellation make tiny entries
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("kind", ["dropout", "batch", "sample"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, rtol", DTYPES)
def test_forward_and_backward_match_reference(rng, kind, shape, dtype, rtol):
    N, I, O = shape
    x, w, b, g = (rng.standard_normal(s).astype(dtype) for s in ((N, I), (O, I), (O,), (N, O)))
    p = 0.3
    got = run(kind, x, w, b, g, p, SEED, OFFSET, 1 / (1 - p))
    ref = reference(kind, x, w, b, g, p, SEED, OFFSET, 1 / (1 - p))
    for a, r in zip(got, ref):
        assert a.dtype == dtype
        close(a, r, rtol)


@pytest.mark.parametrize("kind", ["dropout", "batch", "sample"])
def test_matches_cpu_launchers(rng, kind):
    N, I, O = 5, 7, 6
    x, w, b, g = (rng.standard_normal(s) for s in ((N, I), (O, I), (O,), (N, O)))
    got = run(kind, x, w, b, g, 0.5, 3, 2**40, 2.0)
    op = {"dropout": DROPOUT_LINEAR, "batch": DROPCONNECT, "sample": DROPCONNECT_SAMPLE}[kind]
    r = Rng(0.5, 3, 2**40, 2.0)
    cpu = (op.forward(NumpyBackend, (x, w, b), r, ()),
           *op.backward(NumpyBackend, g, (x, w, b), r, (), (True, True, True)))
    for a, c in zip(got, cpu):
        close(a, c, 1e-12)


def _decode(v, n):
    """Bits of the non-negative integers in v (float64, exact), least significant first."""
    v = v.astype(np.int64)
    return (v[..., None] >> np.arange(n)) & 1 == 1


@pytest.mark.parametrize("kind", ["dropout", "batch", "sample"])
def test_masks_bit_for_bit_in_every_product(kind):
    """Power-of-two operands make every output an exact binary encoding of the mask bits the
    kernel used along its reduction: forward, grad_x and grad_w each read back bit for bit."""
    N, I, O = TILE + 1, TILE + 2, 3  # products with 1 or 2 tiles along every axis
    p = 0.5
    ones = np.ones
    pw = lambda n: 2.0 ** np.arange(n)  # noqa: E731
    d = cuda.to_device
    seed, off = 2**63 + 5, 2**32 + 1
    if kind == "dropout":
        m = fastdrop.dropout_mask((N, I), p, seed, off)
        y = CL.dropout_linear_forward(d(ones((N, I))), d(np.tile(pw(I), (O, 1))), None, p, seed, off, 1.0)
        assert (_decode(y.copy_to_host(), I) == m[:, None, :]).all()  # y[n, o] encodes m[n, :]
        gx, gw, _ = CL.dropout_linear_backward(d(ones((N, O))), d(ones((N, I))), d(ones((O, I))),
                                               p, seed, off, 1.0)
        assert (gx.copy_to_host() == O * m).all()
        gw, = [CL.dropout_linear_backward(d(np.tile(pw(N)[:, None], (1, O))), d(ones((N, I))),
                                          d(ones((O, I))), p, seed, off, 1.0)[1]]
        assert (_decode(gw.copy_to_host(), N) == m.T[None, :, :]).all()  # gw[o, i] encodes m[:, i]
    elif kind == "batch":
        m = fastdrop.dropout_mask((O, I), p, seed, off)
        y = CL.dropconnect_forward(d(ones((N, I))), d(np.tile(pw(I), (O, 1))), None, p, seed, off, 1.0, False)
        assert (_decode(y.copy_to_host(), I) == m[None, :, :]).all()
        gx, gw, _ = CL.dropconnect_backward(d(ones((N, O))), d(ones((N, I))), d(np.tile(pw(O)[:, None], (1, I))),
                                            p, seed, off, 1.0, False)
        assert (_decode(gx.copy_to_host(), O) == m.T[None, :, :]).all()  # gx[n, i] encodes m[:, i]
        assert (gw.copy_to_host() == N * m).all()
    else:
        m = fastdrop.dropout_mask((N, O, I), p, seed, off)
        y = CL.dropconnect_forward(d(ones((N, I))), d(np.tile(pw(I), (O, 1))), None, p, seed, off, 1.0, True)
        assert (_decode(y.copy_to_host(), I) == m).all()  # y[n, o] encodes m[n, o, :]
        gx, _, _ = CL.dropconnect_backward(d(ones((N, O))), d(ones((N, I))), d(np.tile(pw(O)[:, None], (1, I))),
                                           p, seed, off, 1.0, True)
        assert (_decode(gx.copy_to_host(), O) == m.transpose(0, 2, 1)).all()  # gx[n, i]: m[n, :, i]
        _, gw, _ = CL.dropconnect_backward(d(np.tile(pw(N)[:, None], (1, O))), d(ones((N, I))),
                                           d(ones((O, I))), p, seed, off, 1.0, True)
        assert (_decode(gw.copy_to_host(), N) == m.transpose(1, 2, 0)).all()  # gw[o, i]: m[:, o, i]


@pytest.mark.parametrize("kind", ["dropout", "batch", "sample"])
@pytest.mark.parametrize("shape", [(0, 5, 4), (3, 0, 4), (3, 5, 0)])
def test_empty_dimensions(rng, kind, shape):
    N, I, O = shape
    x, w, b, g = (rng.standard_normal(s) for s in ((N, I), (O, I), (O,), (N, O)))
    got = run(kind, x, w, b, g, 0.5, 1, 0, 2.0)
    for a, r in zip(got, reference(kind, x, w, b, g, 0.5, 1, 0, 2.0)):
        assert a.shape == r.shape
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["dropout", "batch", "sample"])
def test_p0_is_plain_linear_and_p1_drops_everything(rng, kind):
    N, I, O = 4, 6, 3
    x, w, b, g = (rng.standard_normal(s) for s in ((N, I), (O, I), (O,), (N, O)))
    y, gx, gw, gb = run(kind, x, w, b, g, 0.0, 1, 0, 1.0)
    close(y, x @ w.T + b, 1e-12)
    close(gx, g @ w, 1e-12)
    close(gw, g.T @ x, 1e-12)
    y, gx, gw, gb = run(kind, x, w, None, g, 1.0, 1, 0, 1.0)
    assert not y.any() and not gx.any() and not gw.any()
    close(gb, g.sum(0), 1e-12)


def test_grid_stride_over_tiles(rng, monkeypatch):
    """A grid smaller than the number of tiles: each block walks several output tiles."""
    monkeypatch.setattr(CL, "_tiles", lambda M, Nc: 2)
    N, I, O = 2 * TILE + 1, 3, 2  # 3 output tiles over 2 blocks
    x, w, b, g = (rng.standard_normal(s) for s in ((N, I), (O, I), (O,), (N, O)))
    for kind in ("dropout", "sample"):
        for a, r in zip(run(kind, x, w, b, g, 0.5, 4, 5, 2.0), reference(kind, x, w, b, g, 0.5, 4, 5, 2.0)):
            close(a, r, 1e-12)


@pytest.mark.parametrize("per_sample", [False, True])
def test_backward_without_bias_grad_skips_it_and_changes_nothing_else(per_sample):
    """The per-sample op's formula takes gb from g.sum(0), so its CUDA route asks for no column
    sums: gb is None, gx and gW are the same arrays' values."""
    rng = np.random.default_rng(3)
    x, w, g = (rng.standard_normal(s).astype(np.float32) for s in ((3, 5), (4, 5), (3, 4)))
    d = cuda.to_device
    full = CL.dropconnect_backward(d(g), d(x), d(w), 0.5, 7, 1, 2.0, per_sample)
    gx, gw, gb = CL.dropconnect_backward(d(g), d(x), d(w), 0.5, 7, 1, 2.0, per_sample, bias_grad=False)
    assert gb is None and full[2] is not None
    np.testing.assert_array_equal(gx.copy_to_host(), full[0].copy_to_host())
    np.testing.assert_array_equal(gw.copy_to_host(), full[1].copy_to_host())
    via = CL.dense_call("dropconnect_backward", d(x), d(w), None, Rng(0.5, 7, 1, 2.0), per_sample,
                        grad=d(g), bias_grad=False)
    assert via[2] is None
    np.testing.assert_array_equal(via[0].copy_to_host(), full[0].copy_to_host())


@pytest.mark.parametrize("kind", ["dropout", "batch", "sample"])
def test_a_seed_in_device_memory_gives_the_host_seeds_products(kind):
    """The dense kernels read the seed from memory when `seeds` holds it (CUDA-graph capture): the
    same products, bit for bit, as with the host seed; the host seed passed beside it is ignored."""
    rng = np.random.default_rng(3)
    N, I, O = TILE + 1, 5, 3
    x, w, b, g = (rng.standard_normal(s).astype(np.float32) for s in ((N, I), (O, I), (O,), (N, O)))
    p, s = 0.4, 1 / 0.6
    seeds = cuda.to_device(np.array([SEED], dtype=np.int64))
    d = cuda.to_device

    def products(seed, seeds):
        if kind == "dropout":
            y = CL.dropout_linear_forward(d(x), d(w), d(b), p, seed, OFFSET, s, seeds=seeds)
            grads = CL.dropout_linear_backward(d(g), d(x), d(w), p, seed, OFFSET, s, seeds=seeds)
        else:
            ps = kind == "sample"
            y = CL.dropconnect_forward(d(x), d(w), d(b), p, seed, OFFSET, s, ps, seeds=seeds)
            grads = CL.dropconnect_backward(d(g), d(x), d(w), p, seed, OFFSET, s, ps, seeds=seeds)
        return [a.copy_to_host() for a in (y, *grads)]
    for got, ref in zip(products(7, seeds), products(SEED, None)):
        np.testing.assert_array_equal(got, ref)
