"""Fused dense-layer CUDA kernels (fastdrop/_cuda.py) against a numpy reference that takes the
kernel's own mask (fastdrop.dropout_mask) and against the CPU ops (fastdrop.linear's declarations on numpy).
Tiny shapes, one of them larger than a tile with no dimension a multiple of it."""
import os

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
# per-example DropConnect twice: "sample" on the tiled kernel (linear_cuda.sample_gemm),
# "sample-registers" on kernels/sample_cuda.py (CL.SAMPLE_KERNEL, set by the fixture below)
KINDS = ["dropout", "batch", "sample", "sample-registers"]


@pytest.fixture(autouse=True)
def _sample_kernel(request, monkeypatch):
    callspec = getattr(request.node, "callspec", None)
    kind = callspec.params.get("kind") if callspec else None
    monkeypatch.setattr(CL, "SAMPLE_KERNEL", "registers" if kind == "sample-registers" else "tiled")


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
        ps = kind.startswith("sample")
        y = CL.dropconnect_forward(d(x), d(w), None if b is None else d(b), p, seed, offset, s, ps)
        grads = CL.dropconnect_backward(d(g), d(x), d(w), p, seed, offset, s, ps)
    return (y.copy_to_host(),) + tuple(a.copy_to_host() for a in grads)


def close(got, ref, rtol):
    assert got.shape == ref.shape
    # rtol relative to the largest reference value: sums with cancellation make tiny entries
    np.testing.assert_allclose(got, ref, rtol=rtol, atol=rtol * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("kind", KINDS)
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


@pytest.mark.parametrize("kind", KINDS)
def test_matches_cpu_launchers(rng, kind):
    N, I, O = 5, 7, 6
    x, w, b, g = (rng.standard_normal(s) for s in ((N, I), (O, I), (O,), (N, O)))
    got = run(kind, x, w, b, g, 0.5, 3, 2**40, 2.0)
    op = {"dropout": DROPOUT_LINEAR, "batch": DROPCONNECT}.get(kind, DROPCONNECT_SAMPLE)
    r = Rng(0.5, 3, 2**40, 2.0)
    cpu = (op.forward(NumpyBackend, (x, w, b), r, ()),
           *op.backward(NumpyBackend, g, (x, w, b), r, (), (True, True, True)))
    for a, c in zip(got, cpu):
        close(a, c, 1e-12)


def _decode(v, n):
    """Bits of the non-negative integers in v (float64, exact), least significant first."""
    v = v.astype(np.int64)
    return (v[..., None] >> np.arange(n)) & 1 == 1


@pytest.mark.parametrize("kind", KINDS)
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


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("shape", [(0, 5, 4), (3, 0, 4), (3, 5, 0)])
def test_empty_dimensions(rng, kind, shape):
    N, I, O = shape
    x, w, b, g = (rng.standard_normal(s) for s in ((N, I), (O, I), (O,), (N, O)))
    got = run(kind, x, w, b, g, 0.5, 1, 0, 2.0)
    for a, r in zip(got, reference(kind, x, w, b, g, 0.5, 1, 0, 2.0)):
        assert a.shape == r.shape
        np.testing.assert_allclose(a, r, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
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


@pytest.mark.parametrize("kind", KINDS)
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
            ps = kind.startswith("sample")
            y = CL.dropconnect_forward(d(x), d(w), d(b), p, seed, OFFSET, s, ps, seeds=seeds)
            grads = CL.dropconnect_backward(d(g), d(x), d(w), p, seed, OFFSET, s, ps, seeds=seeds)
        return [a.copy_to_host() for a in (y, *grads)]
    for got, ref in zip(products(7, seeds), products(SEED, None)):
        np.testing.assert_array_equal(got, ref)


@pytest.mark.parametrize("kind", ["sample", "sample-registers"])
def test_per_sample_skips_dropped_terms_with_non_finite_values(rng, kind):
    """Dropped terms are skipped, not multiplied by 0: inf weights and NaN inputs at positions every
    mask drops leave every product finite (the registers kernel's first version started each
    chunk's sum at w * 0, a NaN for an inf weight)."""
    N, I, O = 1, 13, 4
    p, s = 0.5, 2.0
    m = fastdrop.dropout_mask((N, O, I), p, SEED, OFFSET)
    x, w, g = (rng.standard_normal(sh) for sh in ((N, I), (O, I), (N, O)))
    w[~m.any(0)] = np.inf   # weights dropped for every example
    x[~m.any(1)] = np.nan   # inputs dropped for every output
    # some chunk of 8 starts on an inf weight, and some input is NaN
    assert np.isinf(w[:, ::8]).any() and np.isnan(x).any()
    y, gx, gw, _ = run(kind, x, w, None, g, p, SEED, OFFSET, s)
    kept = lambda a: np.where(m, a, 0.0)  # noqa: E731
    with np.errstate(invalid="ignore"):
        close(y, s * kept(x[:, None, :] * w[None]).sum(2), 1e-12)
        close(gx, s * kept(g[:, :, None] * w[None]).sum(1), 1e-12)
        close(gw, s * kept(g[:, :, None] * x[:, None, :]).sum(0), 1e-12)


# ---- kernels/sample_cuda.py: what the tiled kernel has no counterpart of -----------------------

def _count_split_sums(monkeypatch):
    """Launches of sum_splits (the split-K finish) while the test runs."""
    from fastdrop.kernels import sample_cuda
    launches = []
    real = sample_cuda.sum_splits

    class Counting:
        def __getitem__(self, config):
            launches.append(config)
            return real[config]
    monkeypatch.setattr(sample_cuda, "sum_splits", Counting())
    return launches


@pytest.mark.parametrize("shape", [(3, 300, 4), (5, 45, 130), (2, 11, 9)])
def test_registers_split_k_matches_reference_and_is_deterministic(rng, monkeypatch, shape):
    """Forced split-K (the fill target made huge, the minimum split length 8): every product is
    cut into several partial sums and summed in order; results match the reference and repeat bit
    for bit. Shapes: `in` not a multiple of 8 (rows straddle Philox blocks), out > the block's
    128 threads, a reduction shorter than two splits."""
    monkeypatch.setattr(CL, "SAMPLE_KERNEL", "registers")
    monkeypatch.setattr(CL, "CUDA_FILL_THREADS", 1 << 30)
    monkeypatch.setattr(CL, "SPLIT_MIN_REDUCTION", 8)
    launches = _count_split_sums(monkeypatch)
    N, I, O = shape
    x, w, b, g = (rng.standard_normal(s) for s in ((N, I), (O, I), (O,), (N, O)))
    got = run("sample", x, w, b, g, 0.3, SEED, OFFSET, 1 / 0.7)
    for a, r in zip(got, reference("sample", x, w, b, g, 0.3, SEED, OFFSET, 1 / 0.7)):
        close(a, r, 1e-12)
    # forward splits `in` (in chunks of 8), grad x splits out, grad W splits N (each when >= 16)
    assert len(launches) == sum(n >= 16 for n in (I, O, N))
    again = run("sample", x, w, b, g, 0.3, SEED, OFFSET, 1 / 0.7)
    for a, r in zip(got, again):
        np.testing.assert_array_equal(a, r)


def test_registers_default_launch_does_not_split_a_large_enough_product(rng, monkeypatch):
    """With the shipped knobs a product whose outputs fill the GPU runs in one pass (no partial
    buffer, no sum_splits); the fill target is lowered to make a tiny product count as full."""
    monkeypatch.setattr(CL, "SAMPLE_KERNEL", "registers")
    monkeypatch.setattr(CL, "CUDA_FILL_THREADS", 1)
    launches = _count_split_sums(monkeypatch)
    N, I, O = 3, 200, 5
    x, w, b, g = (rng.standard_normal(s) for s in ((N, I), (O, I), (O,), (N, O)))
    for a, r in zip(run("sample", x, w, b, g, 0.5, 1, 2, 2.0), reference("sample", x, w, b, g, 0.5, 1, 2, 2.0)):
        close(a, r, 1e-12)
    assert launches == []


def test_registers_grid_loops_over_row_groups(rng, monkeypatch):
    """A grid with fewer y blocks than row groups (MAX_GRID_Y = 1): each block walks them all."""
    monkeypatch.setattr(CL, "SAMPLE_KERNEL", "registers")
    monkeypatch.setattr(CL, "MAX_GRID_Y", 1)
    N, I, O = 9, 10, 5  # 3 groups of 4 n (forward), 5 of 2 rows (grad x), 3 of 2 (grad W)
    x, w, b, g = (rng.standard_normal(s) for s in ((N, I), (O, I), (O,), (N, O)))
    for a, r in zip(run("sample", x, w, b, g, 0.5, 4, 5, 2.0), reference("sample", x, w, b, g, 0.5, 4, 5, 2.0)):
        close(a, r, 1e-12)


def test_sample_kernel_switch_is_read_and_checked_at_import(tmp_path):
    """FASTDROP_SAMPLE_KERNEL picks the kernels; anything else warns when fastdrop._cuda loads and
    keeps "tiled" (it raised there, which failed every CUDA op, not only per-sample DropConnect).
    (Run outside the checkout: there ./fastdrop, without kernels/, would shadow an import through
    scripts/gpu_check.sh's shim, as on the GPU machine, where nothing is installed.)"""
    import subprocess
    import sys
    code = "import fastdrop._cuda as C; print(C.SAMPLE_KERNEL)"
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    for value, want in (("registers", "registers"), (" Tiled ", "tiled")):
        out = subprocess.run([sys.executable, "-c", code], env=dict(env, FASTDROP_SAMPLE_KERNEL=value),
                             capture_output=True, text=True, check=True, cwd=tmp_path).stdout.split()[-1]
        assert out == want
    bad = subprocess.run([sys.executable, "-c", code], env=dict(env, FASTDROP_SAMPLE_KERNEL="fast"),
                         capture_output=True, text=True, check=True, cwd=tmp_path)
    assert bad.stdout.split()[-1] == "tiled"
    assert "FASTDROP_SAMPLE_KERNEL='fast' is not one of 'tiled', 'registers'; using 'tiled'" in bad.stderr


def test_registers_forward_makes_each_philox_block_once(rng, monkeypatch):
    """The forward's Philox work is the floor: each block a mask row touches is made once (a chunk
    straddling two blocks hands the second to the next chunk), also when `in` is not a multiple
    of 8. Counted by wrapping block_bits (the simulator calls device functions as Python)."""
    from fastdrop.kernels import sample_cuda
    monkeypatch.setattr(CL, "SAMPLE_KERNEL", "registers")
    calls = []
    real = sample_cuda.block_bits

    def counting(block, *args):
        calls.append(int(block))
        return real(block, *args)
    monkeypatch.setattr(sample_cuda, "block_bits", counting)
    N, I, O = 2, 203, 3
    x, w = rng.standard_normal((N, I)), rng.standard_normal((O, I))
    y = CL.dropconnect_forward(cuda.to_device(x), cuda.to_device(w), None, 0.5, SEED, OFFSET, 2.0, True)
    close(y.copy_to_host(), reference("sample", x, w, None, np.zeros((N, O)), 0.5, SEED, OFFSET, 2.0)[0], 1e-12)
    rows = [(n * O + o) * I for n in range(N) for o in range(O)]
    touched = sorted(b for e in rows for b in range(e // 8, (e + I - 1) // 8 + 1))
    assert sorted(calls) == touched
