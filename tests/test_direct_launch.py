"""The direct launcher of the torch-CUDA route (kernels/direct_launch.py), without a GPU.

On a GPU it replaces numba's dispatch, so what it passes must be exactly what numba would: the
overload numba's typeof would pick, and numba's parameter layout. Here every launch the torch
route makes (_cuda._launch_tensor, on CPU tensors standing in for CUDA ones: only their data_ptr,
numel and dtype are read) is recorded, and its argument types and parameters are compared with
numba-cuda's own typeof and `_Kernel._prepare_args` on DeviceNDArrays over the same addresses,
and with the specializations the NVVM compile gate builds (scripts/cuda_kernel_report.py). On a
GPU, tests/gpu/test_torch_cuda.py runs the route itself against numba's.
"""
import ctypes
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba.cuda")
if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    pytest.skip("numba-cuda's real target types (the simulator replaces them)", allow_module_level=True)

from numba.cuda.cudadrv import driver  # noqa: E402
from numba.cuda.cudadrv.devicearray import DeviceNDArray  # noqa: E402
from numba.cuda.dispatcher import _Kernel  # noqa: E402
from numba.cuda.typing.typeof import Purpose, typeof  # noqa: E402
from numba.cuda import types as numba_types  # noqa: E402

from fastdrop import _cuda  # noqa: E402
from fastdrop.kernels import direct_launch as D  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _report():
    spec = importlib.util.spec_from_file_location("cuda_kernel_report", ROOT / "scripts" / "cuda_kernel_report.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _routes():
    """(label, src, dst, keep, seeds, options) for every branch of _cuda._launch_tensor, with the
    host seed (empty `seeds`) and with the seed in memory (one int64 element, CUDA-graph capture)."""
    out = []
    for label, src, dst, keep, opt in _branches():
        for kind, seeds in (("host seed", torch.empty(0, dtype=torch.int64)),
                            ("seed in memory", torch.tensor([2**40 + 3], dtype=torch.int64))):
            out.append((f"{label}, {kind}", src, dst, keep, seeds, opt))
    return out


def _branches():
    x4 = torch.randn(2, 3, 4, 5)
    cl = x4.to(memory_format=torch.channels_last)
    out = []
    for dt in (torch.float16, torch.float32, torch.float64, torch.bfloat16):
        x = torch.randn(7, 9).to(dt)
        bf16 = dt == torch.bfloat16
        view = (lambda t: t.view(torch.int16)) if bf16 else (lambda t: t)
        out.append((f"flat {dt}", view(x), view(torch.empty_like(x)), None,
                    dict(group_ndim=0, bf16=bf16, layout=None, transposed=None)))
        keep = torch.empty(6, dtype=torch.bool)
        out.append((f"grouped {dt}", view(x4.to(dt)), view(torch.empty_like(x4.to(dt))), keep,
                    dict(group_ndim=2, bf16=bf16, layout=None, transposed=None)))
        if not bf16:
            n = cl.numel()
            c = cl.to(dt)
            flat = c.as_strided((n,), (1,))
            out.append((f"transposed {dt}", flat, torch.empty_like(flat), None,
                        dict(group_ndim=0, bf16=False, layout=None,
                             transposed=_cuda.transpose_layout(c.shape, c.stride()))))
        c = cl.to(dt)
        n = c.numel()
        out.append((f"grouped channels_last {dt}", view(c.as_strided((n,), (1,))),
                    view(torch.empty(n, dtype=dt)), keep,
                    dict(group_ndim=2, bf16=bf16, layout=_cuda.group_layout(c.shape, c.stride(), 2),
                         transposed=None)))
    return out


def _recorded_launches(monkeypatch):
    launches = []
    monkeypatch.setattr(D.TorchStream, "launch",
                        lambda self, kernel, grid, block, args: launches.append((kernel, grid, block, args)))
    stream = D.TorchStream(0, None)
    for label, src, dst, keep, seeds, opt in _routes():
        start = len(launches)
        _cuda._launch_tensor(D.Flat, src, dst, keep, seeds, stream, 0.3, 12345, 7, 1 / 0.7,
                             opt["group_ndim"], opt["bf16"], opt["layout"], opt["transposed"])
        assert len(launches) > start, label
        launches[start:] = [(label, *launch) for launch in launches[start:]]
    return launches


def _numba_view(a):
    """What the numba route passes for a Flat: a 1-D DeviceNDArray over the same memory (no GPU
    needed to build one over a given address)."""
    if type(a) is not D.Flat:
        return a
    item = a.dtype.itemsize
    mem = driver.MemoryPointer(None, a.ptr, size=a.size * item)
    return DeviceNDArray((a.size,), (item,), a.dtype, gpu_data=mem)


class _NoExtensions:
    extensions = ()


@pytest.fixture(autouse=True)
def _no_context(monkeypatch):
    """An empty DeviceNDArray gets a null pointer in the current context (numba-cuda makes one for
    any size-0 array); without a GPU there is none to ask for, and the pointer needs none."""
    from numba.cuda.cudadrv import devices
    monkeypatch.setattr(devices, "get_context", lambda *a: None)


def test_every_route_launches_what_numba_would(monkeypatch):
    sigs, _ = _report().signatures()
    launches = _recorded_launches(monkeypatch)
    kernels = set()
    for label, kernel, grid, block, args in launches:
        name = f"{kernel.py_func.__module__.rsplit('.', 1)[-1]}.{kernel.py_func.__name__}"
        kernels.add(name)
        views = [_numba_view(a) for a in args]
        types = D.argument_types(args)
        # the overload numba's dispatch would pick for the arrays it used to build
        assert types == tuple(typeof(v, Purpose.argument) for v in views), (label, name)
        # one the NVVM compile gate compiles and assembles for sm_80 / sm_90
        assert types in [t for _, t in sigs[name]], (label, name, types)
        numbas = []
        for ty, v in zip(types, views):
            _Kernel._prepare_args(_NoExtensions(), ty, v, 0, [], numbas)
        ours = D.pack(D.packers(types), args)
        assert D.same_params(ours, numbas), (label, name, ours, numbas)
        # the Philox key: the host seed's words beside an empty `seeds`, unread zeros beside a seed
        # in memory (the kernels take the key from whichever holds it: dropout_cuda.philox_key)
        at = [k for k, a in enumerate(args) if type(a) is D.Flat and a.dtype == np.int64]
        if at:
            seeds, key = args[at[0]], (int(args[at[0] + 1]), int(args[at[0] + 2]))
            assert key == ((0, 0) if seeds.size else (12345, 0)), (label, name, key)
        assert isinstance(grid, int) and isinstance(block, int) and grid >= 1 and block >= 1
    assert kernels == {"dropout_cuda.dropout_flat", "dropout_cuda.dropout_flat_bf16",
                       "dropout_cuda.dropout_transposed", "dropout_cuda.keep_mask",
                       "dropout_cuda.apply_group_mask", "dropout_cuda.apply_group_mask_bf16"}


def test_same_params_tells_layouts_apart():
    a = [0, 0, 10, 4, 1234, 10, 4, ctypes.c_uint64(7), ctypes.c_float(2.0)]
    assert D.same_params(a, list(a))
    assert not D.same_params(a, a[:-1])
    assert not D.same_params(a, a[:-1] + [ctypes.c_double(2.0)])      # C type
    assert not D.same_params(a, a[:-1] + [ctypes.c_float(2.5)])       # value
    assert not D.same_params(a, [0, 0, 10, 4, 1234, 10, 8] + a[7:])   # stride
    assert not D.same_params(a, a[:7] + [ctypes.c_uint32(7)] + a[8:])  # width


def test_scalar_packers_follow_numba():
    from numba.cuda import types
    vals = [(types.uint64, np.uint64(2**64 - 1)), (types.uint32, np.uint32(5)), (types.int64, -3),
            (types.float32, np.float32(1.25)), (types.float64, 0.1), (types.float16, np.float16(1.5)),
            (types.boolean, True)]
    for ty, v in vals:
        numbas = []
        _Kernel._prepare_args(_NoExtensions(), ty, v, 0, [], numbas)
        assert D.same_params(D.pack(D.packers((ty,)), [v]), numbas), ty


def test_unpacked_kinds_are_refused():
    from numba.cuda import types
    with pytest.raises(D.DirectLaunchUnsupported):
        D.packers((types.Array(types.float32, 2, "C"),))
    with pytest.raises(D.DirectLaunchUnsupported):
        D.packers((types.complex64,))
    with pytest.raises(D.DirectLaunchUnsupported):
        D.Flat(torch.zeros(3, dtype=torch.complex64))


def test_flat_has_only_its_own_shape():
    f = D.Flat(torch.zeros(3, 4))
    assert (f.shape, f.size, f.ndim, f.dtype) == ((12,), 12, 1, np.dtype(np.float32))
    assert f.reshape(12) is f and f.reshape((12,)) is f
    with pytest.raises(ValueError, match="12 elements"):
        f.reshape(3, 4)


def test_environment_turns_the_route_off():
    code = ("from fastdrop.kernels import direct_launch as D; import torch; "
            "print(D.enabled(), D.why_off(), D.torch_stream(torch, torch.device('cuda', 0)))")
    env = dict(os.environ, FASTDROP_CUDA_LAUNCH="numba")
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["False", "FASTDROP_CUDA_LAUNCH=numba", "None"]
    # another value keeps the route on, saying so (it was ignored silently: a review)
    env["FASTDROP_CUDA_LAUNCH"] = "off"
    code = "from fastdrop.kernels import direct_launch as D; print(D.enabled())"
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT)
    assert res.stdout.split()[0] == "True" and "FASTDROP_CUDA_LAUNCH='off' is not one of" in res.stderr


class _FakeKernel:
    """A compiled overload without a GPU: numba's own _prepare_args, a stand-in CUfunction."""
    extensions = ()
    _prepare_args = _Kernel._prepare_args

    def __init__(self, argtypes):
        self.argument_types = argtypes
        self.function = object()
        self._codelibrary = type("Lib", (), {"get_cufunc": lambda lib: type("F", (), {"kernel": self.function})()})()


class _FakeGpus:
    def __getitem__(self, device):
        import contextlib
        return contextlib.nullcontext()


@pytest.fixture
def fake_device(monkeypatch):
    """TorchStream.launch's numba-cuda and driver steps on CPU tensors: compile gives a
    _FakeKernel, as_cuda_array a DeviceNDArray over the tensor's address, and cuda.core's
    launch records (stream, config, function, parameters)."""
    from numba import cuda
    compiled, launched = [], []

    def compile_(self, argtypes):
        compiled.append((self, argtypes))
        return _FakeKernel(argtypes)
    monkeypatch.setattr(type(_cuda.K.dropout_flat), "compile", compile_)
    monkeypatch.setattr(cuda, "gpus", _FakeGpus())
    monkeypatch.setattr(cuda, "as_cuda_array", lambda t, sync=True: _numba_view(D.Flat(t)))
    monkeypatch.setattr(D, "_OVERLOADS", {})
    monkeypatch.setattr(D, "_DRIVER", {"launch": lambda *a: launched.append(a)})
    monkeypatch.setattr(D, "_state", {"on": True, "why_off": None})
    return compiled, launched


def test_launch_compiles_once_checks_once_and_packs(fake_device):
    compiled, launched = fake_device
    stream = D.TorchStream(0, "core stream")
    for label, src, dst, keep, seeds, opt in _routes() * 2:  # every route twice: then from the caches
        _cuda._launch_tensor(D.Flat, src, dst, keep, seeds, stream, 0.3, 12345, 7, 1 / 0.7,
                             opt["group_ndim"], opt["bf16"], opt["layout"], opt["transposed"])
    assert D.enabled()
    assert len(compiled) == len(D._OVERLOADS) == len({(k, t) for k, t in compiled})  # once per overload
    for core, config, fn, *params in launched:
        assert core == "core stream" and fn in [ov.kernel.function for ov in D._OVERLOADS.values()]
        assert config is D._config(config.grid[0], config.block[0])  # one LaunchConfig per shape
        assert all(isinstance(v, (int, bool, ctypes._SimpleCData)) for v in params)
    assert len(launched) == 2 * sum(2 if keep is not None else 1 for _, _, _, keep, _, _ in _routes())


def test_a_parameter_mismatch_turns_the_route_off(fake_device, monkeypatch):
    """A numba-cuda that packs differently: a warning, the route off, and apply_tensor's launches
    go to numba instead (`_launched_directly` False, nothing launched directly)."""
    compiled, launched = fake_device

    def other_layout(self, ty, val, stream, retr, kernelargs):
        _Kernel._prepare_args(self, ty, val, stream, retr, kernelargs)
        if isinstance(ty, numba_types.Array):
            kernelargs.append(0)  # one parameter more per array
    monkeypatch.setattr(_FakeKernel, "_prepare_args", other_layout)
    monkeypatch.setattr(D, "torch_stream", lambda torch, device: D.TorchStream(0, "core stream"))
    label, src, dst, keep, seeds, opt = _routes()[2]
    with pytest.warns(RuntimeWarning, match="direct launcher is off"):
        done = _cuda._launched_directly(torch, torch.device("cpu"), src, dst, keep, seeds,
                                        (0.3, 1, 0, 1 / 0.7, opt["group_ndim"], opt["bf16"],
                                         opt["layout"], opt["transposed"]))
    assert not done and not launched and not D.enabled()
    assert "differs from numba-cuda's" in D.why_off()


def _first_route_launcher(monkeypatch, launch):
    """The first dropout route launched directly on a fake device whose driver launch is `launch`:
    a function that runs it and returns whether the direct launcher took it."""
    monkeypatch.setitem(D._DRIVER, "launch", launch)
    monkeypatch.setattr(D, "torch_stream", lambda torch, device: D.TorchStream(0, "core stream"))
    label, src, dst, keep, seeds, opt = _routes()[0]
    args = (0.3, 1, 0, 1 / 0.7, opt["group_ndim"], opt["bf16"], opt["layout"], opt["transposed"])
    return lambda: _cuda._launched_directly(torch, torch.device("cpu"), src, dst, keep, seeds, args)


def test_a_refused_first_launch_turns_the_route_off(fake_device, monkeypatch):
    """cuda.core refusing the first launch of an overload (a context or handle it does not take):
    a warning, the route off, numba's dispatch instead; a later launch's error is not swallowed."""
    compiled, launched = fake_device

    def refuse(*a):
        raise RuntimeError("CUDA_ERROR_INVALID_HANDLE")
    run = _first_route_launcher(monkeypatch, refuse)
    with pytest.warns(RuntimeWarning, match="refused the first direct launch"):
        assert not run()
    assert not D.enabled() and "CUDA_ERROR_INVALID_HANDLE" in D.why_off()
    # after a first launch went through, an error of a later launch propagates
    monkeypatch.setattr(D, "_state", {"on": True, "why_off": None})
    monkeypatch.setitem(D._DRIVER, "launch", lambda *a: launched.append(a))
    assert run()
    monkeypatch.setitem(D._DRIVER, "launch", refuse)
    with pytest.raises(RuntimeError, match="INVALID_HANDLE"):
        run()


def test_a_first_launch_refused_in_two_threads_falls_back_in_both(fake_device, monkeypatch):
    """Two threads failing the first launch of one overload on one device: the second found the
    compiled function already dropped by the first, and its KeyError reached the user instead of
    numba's dispatch. Here the other thread's drop happens inside the refused launch."""
    def refuse_after_the_other_thread(*a):
        for ov in D._OVERLOADS.values():
            ov.functions.clear()
        raise RuntimeError("CUDA_ERROR_INVALID_HANDLE")
    run = _first_route_launcher(monkeypatch, refuse_after_the_other_thread)
    with pytest.warns(RuntimeWarning, match="refused the first direct launch"):
        assert not run()
    assert not D.enabled()
