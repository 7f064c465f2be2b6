"""The per-call shortcuts of small torch calls give what the general routes give.

- Small C-contiguous float32/float64 CPU tensors launch the serial kernel straight from the op
  core (fastdrop._core._small_dense_dropout), skipping _cpu.dropout_into's dispatch: same result
  as the numpy route, forward and backward, and the layouts and dtypes it does not take still
  go the general way.
- float32/float64 CPU tensors of spatial dropout / DropPath whose groups are contiguous runs of
  memory (C-contiguous, or permuted inside the groups as timm's ConvNeXt hands DropPath an
  (N, H, W, C) tensor permuted to (N, C, H, W)) launch the one-launch grouped kernel straight from
  the op core (fastdrop._core._dense_grouped_dropout), serial below CPU_PARALLEL_MIN elements,
  parallel above: the numpy route's result, forward and backward, in x's layout.
- seed=None draws into a reused per-thread 0-d buffer (fastdrop._seeds.draw_torch_seed): the
  same seeds, and the same generator state afterwards, as `torch.randint`, whatever mode or
  default device the first draw ran under.
"""
import threading

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import fastdrop  # noqa: E402
from fastdrop import _core, _cpu, _grouped, _seeds  # noqa: E402


def _numpy_result(x, p, seed):
    return torch.from_numpy(fastdrop.dropout(x.detach().numpy().copy(), p, seed=seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(64, 512), (3, 5), (1,), (2, 1, 7)])
def test_small_dense_matches_numpy_route(dtype, shape):
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    y = fastdrop.dropout(x, 0.3, seed=11, offset=5)
    expected = torch.from_numpy(fastdrop.dropout(x.detach().numpy().copy(), 0.3, seed=11, offset=5))
    assert torch.equal(y.detach(), expected)
    g = torch.randn(shape, dtype=dtype)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, torch.from_numpy(fastdrop.dropout(g.numpy().copy(), 0.3, seed=11, offset=5)))


@pytest.mark.parametrize("seed, offset", [(0, 0), (2**63 - 1, 2**63 - 1), (2**63, 2**63), (2**64 - 1, 2**64 - 1),
                                          (2**32 + 7, 2**40 + 3)])
def test_small_dense_kernels_take_every_uint64_seed_and_offset(seed, offset):
    """The serial `*_at` kernels take seed and offset as the int64 bits of their uint64 values (a
    faster dispatch than numpy scalars): the numpy route's result at both ends of the range, out of
    place, in place, into out= and in backward."""
    x = torch.randn(64, 33, dtype=torch.float64, requires_grad=True)
    expected = torch.from_numpy(fastdrop.dropout(x.detach().numpy().copy(), 0.3, seed=seed, offset=offset))
    y = fastdrop.dropout(x, 0.3, seed=seed, offset=offset)
    assert torch.equal(y.detach(), expected)
    g = torch.randn(64, 33, dtype=torch.float64)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, torch.from_numpy(fastdrop.dropout(g.numpy().copy(), 0.3, seed=seed, offset=offset)))
    out = torch.empty(64, 33, dtype=torch.float64)
    fastdrop.dropout(x.detach(), 0.3, seed=seed, offset=offset, out=out)
    assert torch.equal(out, expected)
    z = x.detach().clone()
    fastdrop.dropout(z, 0.3, seed=seed, offset=offset, inplace=True)
    assert torch.equal(z, expected)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (8, 16, 32, 32), (2, 4, 128, 300), (3, 2, 5, 4, 6),
                                   (4, 48, 16, 16), (2, 64, 32, 40), (2, 65, 3, 5), (8, 128, 16, 16),
                                   (3, 300, 2, 3), (2, 96, 56, 56), (2, 70, 2, 3, 4)])
def test_channels_last_take_the_one_launch_inner_kernel(shape, dtype, spy_kernels):
    """Spatial dropout of a channels_last (channels_last_3d) tensor, few channels or many (more
    than INNER_ROWS_MAX_C: a pattern row of 256 // C runs, at least one; the numpy views before 2026-12-07), launches
    `dropout_groups_inner_at` on its memory (serial or parallel by size): the
    numpy route's result on the same values, in x's layout, on x and on a gradient. (Under
    autograd small ones take the native route: test_native_grouped.py.)"""
    fmt = torch.channels_last if len(shape) == 4 else torch.channels_last_3d
    op = fastdrop.dropout2d if len(shape) == 4 else fastdrop.dropout3d
    x = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
    calls = spy_kernels("dropout_groups_inner_at", "dropout_groups_inner_at_serial")
    y = op(x, 0.4, seed=9, offset=3)
    g = torch.randn(shape, dtype=dtype).contiguous(memory_format=fmt)
    gx = op(g, 0.4, seed=9, offset=3)
    assert len(calls) == 2, calls
    assert y.is_contiguous(memory_format=fmt)
    want = torch.from_numpy(op(x.detach().contiguous().numpy(), 0.4, seed=9, offset=3))
    assert torch.equal(y.detach().contiguous(), want)
    assert torch.equal(gx.contiguous(), torch.from_numpy(op(g.contiguous().numpy(), 0.4, seed=9, offset=3)))


def test_small_dense_shortcut_is_taken(monkeypatch):
    """A test of the shortcut, not of the general route: count its launches (the training lane's
    Function calls the shortcut's kernel call, `_serial_dropout`, directly)."""
    calls = []
    shortcut = _core._serial_dropout
    monkeypatch.setattr(_core, "_serial_dropout", lambda *args: calls.append(1) or shortcut(*args))
    x = torch.randn(8, 16, requires_grad=True)
    y = fastdrop.nn.Dropout(0.5)(x)
    torch.autograd.grad(y, x, torch.ones_like(y))
    assert len(calls) == 2  # forward and backward
    torch.autograd.grad(fastdrop.nn.Dropout(0.5)(x).sum(), x)  # expanded gradient: general route
    assert len(calls) == 3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fn, shape", [
    (fastdrop.dropout2d, (8, 16, 32, 32)),      # exactly CPU_PARALLEL_MIN elements: parallel kernel
    (fastdrop.dropout2d, (2, 3, 4, 5)),         # serial kernel
    (fastdrop.dropout1d, (3, 7)),               # unbatched (C, L)
    (fastdrop.drop_path, (5, 2, 3)),            # one mask element per sample
])
def test_dense_grouped_matches_numpy_route(monkeypatch, fn, shape, dtype):
    calls = []
    shortcut = _core._dense_grouped_dropout
    monkeypatch.setattr(_core, "_dense_grouped_dropout", lambda *args: calls.append(1) or shortcut(*args))
    # the Function route (under autograd these inputs take the native one: test_native_grouped.py)
    monkeypatch.setattr(_grouped, "NATIVE_GROUPED_MAX_BYTES", 0)
    x = torch.randn(shape, dtype=dtype, requires_grad=True)
    y = fn(x, 0.4, seed=13, offset=2)
    assert torch.equal(y.detach(), torch.from_numpy(fn(x.detach().numpy().copy(), 0.4, seed=13, offset=2)))
    g = torch.randn(shape, dtype=dtype)
    (gx,) = torch.autograd.grad(y, x, g)
    assert torch.equal(gx, torch.from_numpy(fn(g.numpy().copy(), 0.4, seed=13, offset=2)))
    assert len(calls) == 2  # forward and backward took the shortcut


@pytest.mark.parametrize("fn, make, taken", [
    (fastdrop.drop_path, lambda: torch.randn(8, 16, 16, 32).permute(0, 3, 1, 2), True),  # ConvNeXt
    (fastdrop.drop_path, lambda: torch.randn(64, 32, 32, 2).permute(0, 3, 1, 2), True),  # parallel
    (fastdrop.dropout2d, lambda: torch.randn(4, 6, 5, 3).transpose(2, 3), True),        # (N, C) outer
    (fastdrop.drop_path, lambda: torch.randn(1, 7, 5).transpose(1, 2), True),           # size-1 batch
    (fastdrop.drop_path, lambda: torch.randn(5, 4, 3).transpose(0, 1), False),          # batch not outer
    (fastdrop.dropout2d, lambda: torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last), False),
    (fastdrop.drop_path, lambda: torch.randn(3, 1, 4).expand(3, 5, 4), False),          # overlapping
    (fastdrop.drop_path, lambda: torch.randn(4, 10)[:, ::2], False),                    # gaps
])
def test_permuted_groups_take_the_grouped_shortcut(monkeypatch, fn, make, taken):
    calls = []
    shortcut = _core._dense_grouped_dropout
    monkeypatch.setattr(_core, "_dense_grouped_dropout", lambda *args: calls.append(1) or shortcut(*args))
    x = make()
    with torch.no_grad():
        y = fn(x, 0.4, seed=17, offset=1)
    assert len(calls) == int(taken)
    assert y.stride() == torch.empty_like(x).stride()
    expected = fn(x.contiguous().numpy().copy(), 0.4, seed=17, offset=1)
    np.testing.assert_array_equal(y.numpy(), expected)
    xg = x.clone().requires_grad_()  # clone keeps a dense layout
    (gx,) = torch.autograd.grad(fn(xg, 0.4, seed=17, offset=1), xg, x)  # x as the upstream gradient
    np.testing.assert_array_equal(gx.contiguous().numpy(), expected)


@pytest.mark.parametrize("make", [
    lambda: torch.randn(16, 8).t(),                                     # transposed: strided kernel
    lambda: torch.randn(2, 3, 4, 5).to(memory_format=torch.channels_last),
    lambda: torch.randn(4, 6, dtype=torch.float16),                      # 16-bit kernels
    lambda: torch.randn(4, 6, dtype=torch.bfloat16),
    lambda: torch.randn(4, 6)._neg_view(),                               # negative bit
    lambda: torch.randn(0, 3),                                           # empty
])
def test_other_layouts_and_dtypes_unchanged(make):
    x = make()
    y = fastdrop.dropout(x, 0.4, seed=3)
    assert y.shape == x.shape and y.dtype == x.dtype and y.stride() == torch.empty_like(x).stride()
    xf = x.resolve_neg().float().contiguous()
    expected = fastdrop.dropout(xf.numpy().copy(), 0.4, seed=3)
    if x.dtype in (torch.float16, torch.bfloat16):
        expected = torch.from_numpy(expected).to(x.dtype).float().numpy()
    np.testing.assert_array_equal(y.float().numpy(), expected)


def test_seed_draw_is_randints():
    torch.manual_seed(123)
    drawn = [_seeds.draw_torch_seed() for _ in range(5)]
    after = torch.get_rng_state()
    torch.manual_seed(123)
    expected = [int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)) for _ in range(5)]
    assert drawn == expected
    assert torch.equal(after, torch.get_rng_state())


def _in_fresh_thread(fn):
    """fn() in a new thread, whose seed buffer does not exist yet; returns its result or raises."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # re-raised in the test's thread
            out["error"] = e
    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def test_seed_buffer_made_under_inference_mode_works_outside():
    def draws():
        with torch.inference_mode():
            first = _seeds.draw_torch_seed()
        return first, _seeds.draw_torch_seed()  # would fail writing an inference tensor
    a, b = _in_fresh_thread(draws)
    assert a != b


def test_seed_buffer_is_cpu_whatever_the_default_device():
    def draw():
        with torch.device("meta"):
            return _seeds.draw_torch_seed(), _seeds._seed_buffers.pair[0].device
    seed, device = _in_fresh_thread(draw)
    assert isinstance(seed, int) and device.type == "cpu"


def test_threads_have_their_own_seed_buffer():
    _seeds.draw_torch_seed()
    here = _seeds._seed_buffers.pair[0]
    there = _in_fresh_thread(lambda: (_seeds.draw_torch_seed(), _seeds._seed_buffers.pair[0])[1])
    assert there is not here


@pytest.mark.parametrize("shape", [(4, 80, 64, 64), (2, 300, 9, 7), (3, 65, 5, 5)])
def test_many_channels_last_take_the_kernel_by_address(spy_kernels, shape):
    """float32 channels_last with more than INNER_ROWS_MAX_C channels, at 2^20 elements and more
    too (the numpy launcher's per-row kernel took those until 2026-12-07), takes the inner-group
    kernel by address; the numpy launcher's bits, a row of several steps among them."""
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    assert shape[1] > _cpu.INNER_ROWS_MAX_C
    calls = spy_kernels("dropout_groups_inner_at", "dropout_groups_inner_at_serial")
    y = fastdrop.dropout2d(x, 0.4, seed=9)
    assert calls and set(calls) <= {"dropout_groups_inner_at", "dropout_groups_inner_at_serial"}
    want = torch.from_numpy(fastdrop.dropout2d(x.contiguous().numpy(), 0.4, seed=9))
    assert y.is_contiguous(memory_format=torch.channels_last) and torch.equal(y.contiguous(), want)
