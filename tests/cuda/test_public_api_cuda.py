"""The public API on CUDA device arrays gives what it gives on numpy arrays: the dispatcher, the
launchers and the kernels together (bit for bit where the op is elementwise, float tolerance for
the products). Tiny shapes: the simulator runs every thread in Python."""
import numba
import numpy as np
import pytest
from numba import cuda

import fastdrop

SIMULATOR = bool(numba.config.ENABLE_CUDASIM)


def _host(a):
    return a.copy_to_host()


@pytest.mark.parametrize("fn, shape", [
    (fastdrop.dropout, (3, 5)), (fastdrop.dropout, (7,)), (fastdrop.dropout1d, (2, 3, 4)),
    (fastdrop.dropout2d, (2, 3, 2, 2)), (fastdrop.dropout3d, (1, 2, 2, 2, 2)),
    (fastdrop.drop_path, (3, 2, 2)),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_elementwise_ops_bit_identical(fn, shape, dtype):
    x = np.random.randn(*shape).astype(dtype)
    seed = 2**40 + 17
    y = fn(cuda.to_device(x), 0.5, seed=seed, offset=3)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(_host(y).view(np.uint8), fn(x, 0.5, seed=seed, offset=3).view(np.uint8))


@pytest.mark.filterwarnings("ignore:.*0-D input")
@pytest.mark.parametrize("call", [
    lambda x: fastdrop.drop_path(x, 0.5, mode="batch", seed=1),  # one mask element for all of x
    lambda x: fastdrop.dropout2d(x, 1.0, seed=1), lambda x: fastdrop.dropout(x, 0.5, seed=1)])
def test_0d_device_array_gives_a_0d_device_array(call):
    """A 0-d device array comes back on the device, 0-d (drop_path's batch mode and the p = 1
    spatial shortcut returned a host numpy scalar: y[0] of a (1,) array)."""
    x = np.array(2.5, np.float32)
    y = call(cuda.to_device(x))
    assert hasattr(y, "copy_to_host") and y.shape == ()
    assert _host(y) == call(x)


def test_modes_and_trivial_cases():
    x = np.random.randn(4, 3).astype(np.float32)
    d = cuda.to_device(x)
    assert fastdrop.dropout(d, 0.0) is d
    assert fastdrop.dropout(d, 0.5, training=False) is d
    np.testing.assert_array_equal(_host(fastdrop.dropout(d, 0.25, training=False, mode="classic")),
                                  fastdrop.dropout(x, 0.25, training=False, mode="classic"))
    np.testing.assert_array_equal(_host(fastdrop.dropout(d, 0.4, seed=1, mode="classic")),
                                  fastdrop.dropout(x, 0.4, seed=1, mode="classic"))
    assert (_host(fastdrop.dropout(d, 1.0, seed=1)) == 0).all()


def test_seed_none_uses_the_numpy_source():
    x = np.ones(16, np.float32)
    fastdrop.manual_seed(5)
    a = _host(fastdrop.dropout(cuda.to_device(x), 0.5))
    fastdrop.manual_seed(5)
    np.testing.assert_array_equal(a, fastdrop.dropout(x, 0.5))


@pytest.mark.parametrize("fn, kw", [
    (fastdrop.dropout_linear, {}), (fastdrop.dropout_linear, {"mode": "classic"}),
    (fastdrop.dropconnect_linear, {}), (fastdrop.dropconnect_linear, {"per_sample": True}),
])
@pytest.mark.parametrize("dtype, rtol", [(np.float32, 1e-5), (np.float64, 1e-12), (np.float16, 1e-3)])
def test_dense_layers_match_cpu(fn, kw, dtype, rtol, monkeypatch):
    """float16 device arrays are computed in float32 and rounded once, as numpy float16 arrays
    are (the products' kernels take float32/float64 only): converted on the device."""
    from fastdrop import _cuda
    converted = []
    astype = _cuda.astype
    monkeypatch.setattr(_cuda, "astype", lambda a, dt: converted.append(np.dtype(dt)) or astype(a, dt))
    x = np.random.randn(2, 3, 5).astype(dtype)
    w = np.random.randn(4, 5).astype(dtype)
    b = np.random.randn(4).astype(dtype)
    y = _host(fn(cuda.to_device(x), cuda.to_device(w), cuda.to_device(b), 0.5, seed=9, **kw))
    ref = fn(x, w, b, 0.5, seed=9, **kw)
    assert y.shape == ref.shape == (2, 3, 4)
    np.testing.assert_allclose(y, ref, rtol=rtol, atol=rtol * np.abs(ref).max())
    assert y.dtype == ref.dtype
    assert converted == ([np.dtype(np.float32)] * 3 + [np.dtype(np.float16)] if dtype == np.float16 else [])


@pytest.mark.parametrize("fn, kw", [
    (fastdrop.dropout_linear, {}), (fastdrop.dropout_linear, {"training": False}),
    (fastdrop.dropconnect_linear, {}), (fastdrop.dropconnect_linear, {"per_sample": True}),
    (fastdrop.dropconnect_linear, {"training": False}),
])
def test_dense_layers_take_strided_device_arrays(fn, kw):
    """'any strides', as the docstrings say: strided device arrays (a stepped slice, a transposed
    weight) are copied to contiguous ones on the device, as torch CUDA tensors are."""
    x = np.random.randn(4, 6).astype(np.float32)
    w = np.random.randn(3, 6).astype(np.float32)
    b = np.random.randn(6).astype(np.float32)
    xs, ws, bs = x[::2, ::2], w.T[::2], b[::2]
    assert not xs.flags.c_contiguous and not ws.flags.c_contiguous
    dx, dw, db = cuda.to_device(x)[::2, ::2], cuda.to_device(np.ascontiguousarray(w.T))[::2], cuda.to_device(b)[::2]
    y = _host(fn(dx, dw, db, 0.5, seed=9, **kw))
    ref = fn(xs, ws, bs, 0.5, seed=9, **kw)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def _transpose(a):
    """a.T for numpy and numba arrays of any rank (a device array's .T is 2-D only on a GPU)."""
    if isinstance(a, np.ndarray) or SIMULATOR:
        return a.T
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    return DeviceNDArray(a.shape[::-1], a.strides[::-1], a.dtype, gpu_data=a.gpu_data)


@pytest.mark.parametrize("view", [lambda a: a[:, ::2], lambda a: a[:, :, ::2], _transpose])
def test_max_norm_on_strided_device_arrays(view):
    """Constrained in place, as the numpy array is (a strided array used to be reshaped into a
    copy, which the kernel constrained instead)."""
    w = (np.random.default_rng(0).standard_normal((4, 3, 6)) * 5).astype(np.float32)
    host = w.copy()
    fastdrop.max_norm_(view(host), 3.0, dim=(1, 2))
    base = cuda.to_device(w)
    fastdrop.max_norm_(view(base), 3.0, dim=(1, 2))
    np.testing.assert_allclose(base.copy_to_host(), host, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("with_attributes", [True, False])
def test_foreign_objects_with_a_null_pointer_are_refused_before_the_draw(with_attributes):
    """A CuPy-like array whose interface points nowhere: the simulator cannot map foreign memory at
    all (TypeError); on a GPU the null pointer is refused (a kernel's fault there would end the
    process's CUDA context: on the first H200 run this test's launch made every later test fail)."""
    class Foreign:
        def __init__(self):
            if with_attributes:
                self.shape, self.dtype = (4,), np.dtype(np.float32)
            self.__cuda_array_interface__ = {"shape": (4,), "typestr": "<f4", "data": (0, False),
                                             "strides": None, "version": 3}

    state = fastdrop._seeds._numpy_source.bit_generator.state
    error, match = (TypeError, "simulator cannot map") if SIMULATOR else (ValueError, "null data pointer")
    with pytest.raises(error, match=match):
        fastdrop.dropout(Foreign(), 0.5)
    assert fastdrop._seeds._numpy_source.bit_generator.state == state


SCRIPT_CUDA_MARKED = """
import sys
import numpy as np
import torch
from torch._dynamo.utils import counters
import fastdrop
from numba import cuda
from fastdrop import _dynamo_skip
assert "fastdrop._cuda" not in sys.modules  # loads on the first CUDA input, after the marking ran
fastdrop.dropout(cuda.to_device(np.ones((4, 8), np.float32)), 0.5, seed=3)
from fastdrop import _cuda

def frames_compiled(fn, *args):
    before = counters["frames"]["total"]
    torch.compile(fn, backend="eager")(*args)
    return counters["frames"]["total"] - before

print(sorted(m for m in ("fastdrop._cuda", "fastdrop.kernels.dropout_cuda", "fastdrop.kernels.linear_cuda",
                         "fastdrop.kernels.variants_cuda") if m in _dynamo_skip.MARKED),
      [frames_compiled(_cuda._tiles, 100, 100), frames_compiled(_cuda.transpose_layout, (4, 8), (32, 4))])
"""


def test_cuda_code_loaded_later_is_marked_for_dynamo(tmp_path):
    """fastdrop._cuda and the CUDA kernels load on the first CUDA input, after keep_dynamo_out marked
    fastdrop's internal code (fastdrop/_dynamo_skip.py): they are marked then, so Dynamo never compiles one
    of their frames on its own (torch.compile of one of their functions compiles no frame)."""
    import os
    import subprocess
    import sys
    # cwd: not the checkout, whose ./fastdrop (without kernels/) would come first on `-c`'s path
    res = subprocess.run([sys.executable, "-c", SCRIPT_CUDA_MARKED], capture_output=True, text=True,
                         timeout=300, env=dict(os.environ), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    marked = ["fastdrop._cuda", "fastdrop.kernels.dropout_cuda", "fastdrop.kernels.linear_cuda",
              "fastdrop.kernels.variants_cuda"]
    assert res.stdout.strip() == f"{marked} [0, 0]", res.stdout


@pytest.mark.skipif(not SIMULATOR, reason="the simulator's arrays (a GPU's device arrays are checked "
                                         "through __cuda_array_interface__)")
@pytest.mark.parametrize("call", [
    lambda d: fastdrop.dropout(d, 0.5, inplace=True),
    lambda d: fastdrop.dropout2d(d.reshape(3, 4, 1, 1), 0.5, inplace=True),
    lambda d: fastdrop.dropout(d, 0.5, inplace=True, training=False, mode="classic"),
    lambda d: fastdrop.max_norm_(d, 1.0),
], ids=["dropout", "dropout2d", "classic_eval", "max_norm_"])
def test_overlapping_simulator_arrays_are_refused_before_the_draw(call):
    """A broadcast (stride-0) simulator array has rows sharing memory: a write into it is refused as
    on numpy arrays, before the seed draw, the array untouched. The simulator's arrays export no
    __cuda_array_interface__, and the check returned early for them: the rows were overwritten."""
    from fastdrop import _seeds
    row = np.arange(1, 5, dtype=np.float32) * 5
    d = cuda.to_device(np.broadcast_to(row, (3, 4)))
    fastdrop.manual_seed(0)
    state = _seeds._numpy_source.bit_generator.state
    with pytest.raises(RuntimeError, match="more than one element"):
        call(d)
    np.testing.assert_array_equal(_host(d), np.broadcast_to(row, (3, 4)))
    assert _seeds._numpy_source.bit_generator.state == state


@pytest.mark.skipif(not SIMULATOR, reason="the simulator keeps an ndarray subclass in its device arrays")
@pytest.mark.parametrize("call", [
    lambda m: fastdrop.dropout(m, 0.5),
    lambda m: fastdrop.dropout_linear(m, cuda.to_device(np.ones((2, 4), np.float32)), None, 0.5),
    lambda m: fastdrop.dropout_linear(cuda.to_device(np.ones((2, 4), np.float32)), m, None, 0.5),
], ids=["dropout_x", "dropout_linear_x", "dropout_linear_weight"])
def test_simulator_arrays_of_a_matrix_are_refused_before_the_draw(call):
    """The simulator's to_device keeps np.matrix (its reshape stays 2-d): the kernels failed with an
    IndexError after the seed draw. Now a TypeError first."""
    from fastdrop import _seeds
    m = cuda.to_device(np.matrix(np.ones((3, 4), np.float32)))
    fastdrop.manual_seed(0)
    state = _seeds._numpy_source.bit_generator.state
    with pytest.raises(TypeError, match="matrix"):
        call(m)
    assert _seeds._numpy_source.bit_generator.state == state


@pytest.mark.parametrize("call", [
    lambda d: fastdrop.dropout(d, 0.5), lambda d: fastdrop.dropout(d, 0.5, inplace=True),
    lambda d: fastdrop.dropout_linear(cuda.to_device(np.ones((2, 4), ">f4")), d, None, 0.5),
    # one operand big-endian, the other native: the byte order's error, not "the same dtype"'s
    lambda d: fastdrop.dropout_linear(cuda.to_device(np.ones((2, 4), "<f4")), d, None, 0.5),
    lambda d: fastdrop.dropconnect_linear(d, cuda.to_device(np.ones((3, 4), "<f4")), None, 0.5),
    lambda d: fastdrop.max_norm_(d, 1.0),
], ids=["dropout", "dropout_inplace", "dropout_linear_weight", "dropout_linear_mixed_order",
        "dropconnect_mixed_order", "max_norm_"])
def test_big_endian_device_arrays_are_refused_before_the_draw(call):
    """Numba cannot type a big-endian device array, so on a GPU the launch failed inside Numba
    after the seed draw (the simulator ran it and wrote in place byte-swapped; a review,
    2026-12-06): a TypeError first, the array untouched."""
    from fastdrop import _seeds
    host = (np.arange(8).reshape(2, 4) + 5).astype(">f4")
    d = cuda.to_device(host)
    fastdrop.manual_seed(0)
    state = _seeds._numpy_source.bit_generator.state
    with pytest.raises(TypeError, match="byte order"):
        call(d)
    assert _seeds._numpy_source.bit_generator.state == state
    np.testing.assert_array_equal(d.copy_to_host(), host)


@pytest.mark.parametrize("call", [lambda d: fastdrop.dropout(d, 0.5, training=False),
                                  lambda d: fastdrop.dropout(d, 0.0)], ids=["eval", "p=0"])
def test_big_endian_device_arrays_pass_where_no_kernel_runs(call):
    """At eval with inverted scaling, or p = 0, the op returns x untouched, as torch's dropout
    returns any x: the byte-order refusal is where a kernel would run (a review, 2026-12-06)."""
    d = cuda.to_device((np.arange(8).reshape(2, 4) + 5).astype(">f4"))
    assert call(d) is d


@pytest.mark.skipif(not SIMULATOR, reason="the simulator keeps an ndarray subclass in its device arrays")
def test_simulator_arrays_of_a_memmap_are_taken(tmp_path):
    """Only np.matrix is refused in a simulator array: one holding an np.memmap (np.load's
    mmap_mode) gives the numpy route's bits, out of place and in place, and max_norm_ takes it."""
    a = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32) * 3
    np.save(tmp_path / "a.npy", a)
    d = cuda.to_device(np.load(tmp_path / "a.npy", mmap_mode="r"))
    np.testing.assert_array_equal(_host(fastdrop.dropout(d, 0.5, seed=1)), fastdrop.dropout(a, 0.5, seed=1))
    assert fastdrop.dropout(d, 0.5, seed=1, inplace=True) is d
    np.testing.assert_array_equal(_host(d), fastdrop.dropout(a, 0.5, seed=1))
    d = cuda.to_device(np.load(tmp_path / "a.npy", mmap_mode="r"))
    fastdrop.max_norm_(d, 1.0)
    np.testing.assert_allclose(_host(d), fastdrop.max_norm_(a.copy(), 1.0), rtol=1e-6)
