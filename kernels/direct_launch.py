"""Launching the dropout kernels on torch CUDA tensors without numba's per-call machinery.

The first GPU run (bench/results/nvidia-h200-2026-12-04-gpu-check.md) found the torch-CUDA route
host-bound: 250-530 us of Python per `dropout` call (torch: 12-187 us), the GPU waiting. Each
`kernel[grid, block, stream](*args)` on arrays from `cuda.as_cuda_array`
  1. builds a numba Stream for torch's stream, and a launch configuration for it (numba caches
     configurations per Stream object, and every call brought a new one);
  2. builds a DeviceNDArray per tensor, one more per reshape, and types each anew to pick the
     overload;
  3. asks the driver for the current context, wraps every argument (`_Kernel._prepare_args`) and
     builds a cuda.core LaunchConfig;
all inside a `cuda.gpus[i]` context push and pop.

A launch needs three things: the CUfunction of the overload for the arguments' types, the stream,
and the kernel's parameter list. Numba passes an array as

    meminfo (0), parent (0), nitems, itemsize, data, shape..., strides... (bytes)

and a scalar as the C type of its numba type. So this module keeps
  - per (kernel, argument kinds): the overload (`CUDADispatcher.compile`, which loads from numba's
    disk cache as a first dispatch does), its argument types and one packer per argument;
  - per (overload, device): the CUfunction (loaded once in that device's context);
  - per device: its primary context (numba's and torch's); per (device, torch stream handle): a
    cuda.core Stream; per (grid, block): a LaunchConfig;
and a launch packs the parameters from `Flat` views (data_ptr, numel) into cuda.core's `launch`.
`torch_stream` hands the route out only when the calling thread's current context is the
device's (one driver query); otherwise the caller launches through numba inside `cuda.gpus[i]`.

The first launch of each overload on each device packs its arguments both ways, here and with
numba's `_Kernel._prepare_args` on `cuda.as_cuda_array` views of the same memory: any difference
(a numba-cuda that lays parameters out differently), or cuda.core refusing that first launch,
turns this route off for the process with a warning, and numba's dispatch launches everything
from then on (an error of a later launch propagates: it is no longer about the route). FASTDROP_CUDA_LAUNCH=numba turns
it off from the start (A/B timing: bench/gpu_host_profile.py). numba-cuda internals used (0.30):
CUDADispatcher.compile, _Kernel.argument_types, _Kernel._codelibrary.get_cufunc().kernel and, for
the check only, _Kernel._prepare_args.
"""
import ctypes
import warnings

import numpy as np

from .config import env_choice

ENV = "FASTDROP_CUDA_LAUNCH"
_state = {"on": env_choice(ENV, {"direct": True, "numba": False}, "direct"), "why_off": None}
if not _state["on"]:
    _state["why_off"] = f"{ENV}=numba"

_NP = {}          # torch dtype -> numpy dtype (filled on first use: torch is imported lazily)
_OVERLOADS = {}   # (dispatcher, kinds) -> _Overload
_CONTEXTS = {}    # device index -> int handle of its primary context (numba's = torch's)
_STREAMS = {}     # (device index, torch stream handle) -> cuda.core Stream
_CONFIGS = {}     # (grid, block) -> cuda.core LaunchConfig
_DRIVER = {}      # cuCtxGetCurrent, CUDA_SUCCESS, cuda.core's launch, torch's stream query: bound once


class DirectLaunchUnsupported(Exception):
    """An argument this module does not pack (the launch goes through numba instead)."""


def enabled():
    return _state["on"]


def turn_off(why):
    """Every later launch goes through numba's dispatch (the process's remaining calls), said in a
    warning; returns the exception that sends the current call there."""
    _state["on"], _state["why_off"] = False, why
    warnings.warn(f"fastdrop: {why}; its direct launcher is off and numba's dispatch launches every "
                  "kernel from now on (a slower host path, the same results)", RuntimeWarning, stacklevel=3)
    return DirectLaunchUnsupported(why)


def why_off():
    return _state["why_off"]


# ---- arguments ----------------------------------------------------------------------------------

class Flat:
    """A C-contiguous run of a torch tensor's memory as a 1-D kernel array: what _cuda's launch
    functions read of a device array (size, dtype, shape, ndim, reshape to its own size)."""

    __slots__ = ("tensor", "ptr", "size", "dtype", "shape")
    ndim = 1

    def __init__(self, t):
        self.tensor = t  # keeps the memory alive until the launch is enqueued
        self.size = t.numel()
        # an empty tensor passes a null pointer, as its __cuda_array_interface__ gives numba
        self.ptr = t.data_ptr() if self.size else 0
        self.dtype = numpy_dtype(t.dtype)
        self.shape = (self.size,)

    def reshape(self, *shape):
        if shape not in ((self.size,), ((self.size,),)):
            raise ValueError(f"a Flat argument of {self.size} elements has no shape {shape}")
        return self


def numpy_dtype(torch_dtype):
    dt = _NP.get(torch_dtype)
    if dt is None:
        import torch
        names = {torch.float16: "float16", torch.float32: "float32", torch.float64: "float64",
                 torch.int16: "int16", torch.int64: "int64", torch.bool: "bool", torch.uint8: "uint8"}
        if torch_dtype not in names:
            raise DirectLaunchUnsupported(f"no kernel array of dtype {torch_dtype}")
        dt = _NP[torch_dtype] = np.dtype(names[torch_dtype])
    return dt


def _kind(a):
    return a.dtype if type(a) is Flat else type(a)


# numba type -> how _Kernel._prepare_args passes a scalar of it (dispatcher.py, numba-cuda 0.30)
def _scalar_packer(ty):
    from numba.cuda import types
    if isinstance(ty, types.Integer):
        c = getattr(ctypes, f"c_{ty}")
        return lambda v: c(v)
    if ty == types.float32:
        return ctypes.c_float
    if ty == types.float64:
        return ctypes.c_double
    if ty == types.float16:
        return lambda v: ctypes.c_uint16(np.float16(v).view(np.uint16))
    if ty == types.boolean:
        return lambda v: v
    raise DirectLaunchUnsupported(f"no packer for a scalar of numba type {ty}")


def argument_types(args):
    """The numba types dispatch would give `args` (Flat -> its C-contiguous 1-D array type, as
    typeof gives an exported torch tensor's reshape; scalars through numba's own typeof)."""
    from numba.cuda import types
    from numba.cuda.np.numpy_support import from_dtype
    from numba.cuda.typing.typeof import Purpose, typeof
    return tuple(types.Array(from_dtype(a.dtype), 1, "C") if type(a) is Flat
                 else typeof(a, Purpose.argument) for a in args)


def packers(argtypes):
    """One entry per argument: None for an array (packed inline), else its scalar packer."""
    from numba.cuda import types
    out = []
    for ty in argtypes:
        if isinstance(ty, types.Array):
            if ty.ndim != 1 or ty.layout != "C":
                raise DirectLaunchUnsupported(f"array argument of type {ty}")
            out.append(None)
        else:
            out.append(_scalar_packer(ty))
    return tuple(out)


def pack(packs, args):
    """The kernel's parameter list for `args`, in numba's layout (see the module docstring)."""
    params = []
    for a, p in zip(args, packs):
        if p is None:
            item = a.dtype.itemsize
            params += (0, 0, a.size, item, a.ptr, a.size, item)
        else:
            params.append(p(a))
    return params


def same_params(ours, numbas):
    """Parameter lists equal value for value and C type for C type (ctypes objects compare by
    identity, so by (type, value) here)."""
    def norm(v):
        return (type(v).__name__, v.value) if isinstance(v, ctypes._SimpleCData) else ("py", int(v))
    return len(ours) == len(numbas) and all(norm(a) == norm(b) for a, b in zip(ours, numbas))


# ---- launching ----------------------------------------------------------------------------------

class _Overload:
    __slots__ = ("kernel", "argtypes", "packs", "functions")

    def __init__(self, dispatcher, args):
        self.argtypes = argument_types(args)
        self.packs = packers(self.argtypes)
        self.kernel = dispatcher.compile(self.argtypes)  # compiled or loaded from the disk cache
        self.functions = {}  # device index -> cuda.core Kernel

    def function(self, device, args, core_stream):
        """The device's CUfunction, after checking the packing against numba's once."""
        fn = self.functions.get(device)
        if fn is None:
            from numba import cuda
            try:
                with cuda.gpus[device]:
                    fn = self.kernel._codelibrary.get_cufunc().kernel
                    numbas, retr = [], []
                    for ty, a in zip(self.argtypes, args):
                        v = cuda.as_cuda_array(a.tensor, sync=False).reshape(a.size) if type(a) is Flat else a
                        self.kernel._prepare_args(ty, v, core_stream, retr, numbas)
                same = same_params(pack(self.packs, args), numbas)
            except (AttributeError, TypeError) as e:  # a numba-cuda without these internals
                same, why = False, f"numba-cuda internals changed ({type(e).__name__}: {e})"
            else:
                why = f"the parameter layout of {self.kernel} differs from numba-cuda's"
            if not same:
                raise turn_off(why)
            self.functions[device] = fn
        return fn


def _config(grid, block):
    cfg = _CONFIGS.get((grid, block))
    if cfg is None:
        from cuda.core import LaunchConfig
        cfg = _CONFIGS[(grid, block)] = LaunchConfig(grid=grid, block=block, shmem_size=0)
    return cfg


class TorchStream:
    """torch's current stream on one device as the `stream` of fastdrop._cuda's launch functions:
    they hand their kernels here (`launch`) instead of configuring them through numba."""

    __slots__ = ("device", "core")

    def __init__(self, device, core):
        self.device, self.core = device, core

    def launch(self, dispatcher, grid, block, args):
        kinds = tuple(_kind(a) for a in args)
        ov = _OVERLOADS.get((dispatcher, kinds))
        if ov is None:
            from numba import cuda
            with cuda.gpus[self.device]:  # compiled for this device's compute capability
                ov = _OVERLOADS[(dispatcher, kinds)] = _Overload(dispatcher, args)
        first = self.device not in ov.functions
        fn = ov.function(self.device, args, self.core)
        if not first:
            _DRIVER["launch"](self.core, _config(grid, block), fn, *pack(ov.packs, args))
            return
        try:  # the first launch of an overload on a device: a refusal turns the route off
            _DRIVER["launch"](self.core, _config(grid, block), fn, *pack(ov.packs, args))
        except Exception as e:  # (a launch that is refused enqueues nothing)
            ov.functions.pop(self.device, None)  # (two threads may fail the same first launch)
            # an earlier kernel's error, which CUDA reports at the next driver call, lands here
            # too; the context is lost then, and numba's launch of this call raises it again
            raise turn_off(f"cuda.core refused the first direct launch of {ov.kernel} "
                           f"({type(e).__name__}: {e}; if an earlier kernel failed, this is "
                           f"its error)") from e


def _primary_context(device):
    ctx = _CONTEXTS.get(device)
    if ctx is None:
        from numba import cuda
        with cuda.gpus[device]:
            ctx = _CONTEXTS[device] = int(cuda.current_context().handle)
    return ctx


def torch_stream(torch, device):
    """A TorchStream for torch's current stream on `device` (torch.device), or None when the route
    is off or this thread's current context is not the device's (then launch through numba)."""
    if not _state["on"]:
        return None
    if not _DRIVER:
        from cuda.bindings import driver
        from cuda.core import launch
        # torch's raw query: the handle as an int, without the torch.cuda.Stream object that
        # torch.cuda.current_stream builds on every call
        raw = getattr(torch._C, "_cuda_getCurrentRawStream", None) or \
            (lambda i: torch.cuda.current_stream(i).cuda_stream)
        _DRIVER.update(current=driver.cuCtxGetCurrent, ok=driver.CUresult.CUDA_SUCCESS, launch=launch,
                       stream=raw)
    idx = device.index
    err, current = _DRIVER["current"]()
    if err != _DRIVER["ok"] or int(current) != _primary_context(idx):
        return None
    # keyed by device too: the legacy default stream is handle 0 on every device
    key = (idx, _DRIVER["stream"](idx))
    core = _STREAMS.get(key)
    if core is None:
        from cuda.core import Stream
        if len(_STREAMS) >= 1024:  # streams come and go: bounded, not one entry per stream forever
            _STREAMS.clear()
        core = _STREAMS[key] = Stream.from_handle(key[1])
    return TorchStream(idx, core)
