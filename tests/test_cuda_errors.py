"""CUDA data without a GPU (and without the simulator) gets a clear RuntimeError, never a silent
CPU fallback; and `import fastdrop` alone never loads numba.cuda."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastdrop

NO_CUDA = os.environ.get("NUMBA_ENABLE_CUDASIM") != "1"


class FakeDeviceArray:
    """Looks like a CUDA device array to the dispatcher; its pointer is never dereferenced."""

    def __init__(self, shape=(3, 4), dtype=np.float32):
        self.shape = shape
        self.dtype = np.dtype(dtype)
        self.__cuda_array_interface__ = {"shape": shape, "typestr": self.dtype.str,
                                         "data": (4096, False), "strides": None, "version": 3}


def _gpu_present():
    from numba import cuda
    return cuda.is_available()


needs_no_gpu = pytest.mark.skipif(not NO_CUDA or _gpu_present(),
                                  reason="a GPU or the CUDA simulator is available here")


@needs_no_gpu
@pytest.mark.parametrize("call", [
    lambda x: fastdrop.dropout(x, 0.5, seed=1),
    lambda x: fastdrop.dropout(x, 0.5),
    lambda x: fastdrop.dropout(x, 0.5, seed=1, inplace=True),
    lambda x: fastdrop.dropout1d(x, 0.5, seed=1),
    lambda x: fastdrop.dropout(x, 0.5, training=False, mode="classic"),
], ids=["dropout", "seed-none", "inplace", "dropout1d", "classic-eval"])
def test_cuda_input_without_gpu_raises(call):
    state = fastdrop._seeds._numpy_source.bit_generator.state
    with pytest.raises(RuntimeError, match=r"needs a CUDA GPU \(or NUMBA_ENABLE_CUDASIM=1"):
        call(FakeDeviceArray())
    assert fastdrop._seeds._numpy_source.bit_generator.state == state  # refused before the draw


@needs_no_gpu
def test_an_object_with_only_the_interface_is_checked_on_it():
    """No shape or dtype attributes: read from __cuda_array_interface__ (the dtype refused there, the
    read-only flag honoured), then the GPU is asked for, before any seed is drawn."""
    class InterfaceOnly:
        def __init__(self, typestr="<f4", readonly=False):
            self.__cuda_array_interface__ = {"shape": (4,), "typestr": typestr, "data": (4096, readonly),
                                             "strides": None, "version": 3}

    state = fastdrop._seeds._numpy_source.bit_generator.state
    with pytest.raises(TypeError, match="floating point dtype"):
        fastdrop.dropout(InterfaceOnly("<i4"), 0.5)
    with pytest.raises(ValueError, match="read-only"):
        fastdrop.dropout(InterfaceOnly(readonly=True), 0.5, inplace=True)
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        fastdrop.dropout(InterfaceOnly(), 0.5)
    assert fastdrop._seeds._numpy_source.bit_generator.state == state
    # the trivial calls return the object given, not the wrapper that read its interface (a review)
    x = InterfaceOnly()
    for call in (lambda: fastdrop.dropout(x, 0.5, training=False), lambda: fastdrop.dropout(x, 0.0),
                 lambda: fastdrop.dropout2d(x, 0.0), lambda: fastdrop.drop_path(x, 0.5, training=False),
                 lambda: fastdrop.dropout(x, 0.5, training=False, inplace=True)):
        assert call() is x


@needs_no_gpu
def test_device_mask_without_gpu_raises():
    from fastdrop import mask
    with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
        mask.dropout_mask_device((3, 4), 0.5, 1)


def test_trivial_cases_need_no_gpu():
    """p=0 and inverted eval return x untouched before any dispatch: no device work at all."""
    x = FakeDeviceArray()
    assert fastdrop.dropout(x, 0.0, seed=1) is x
    assert fastdrop.dropout(x, 0.5, training=False) is x


def test_bad_arguments_are_rejected_before_the_device():
    with pytest.raises(ValueError, match="1.5"):
        fastdrop.dropout(FakeDeviceArray(), 1.5, seed=1)
    with pytest.raises(TypeError, match="floating point"):
        fastdrop.dropout(FakeDeviceArray(dtype=np.int32), 0.5, seed=1)


def test_import_fastdrop_does_not_load_numba_cuda():
    code = ("import sys, numpy as np, fastdrop; fastdrop.dropout(np.ones(8, np.float32), 0.5, seed=1); "
            "fastdrop.dropout_mask((4,), 0.5, 1); print('numba.cuda' in sys.modules)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "False"


def test_a_seed_in_device_memory_is_never_read_by_the_host():
    """CUDA-graph capture keeps a seed=None call's seed on the device (a tensor the kernels read;
    tests/gpu/test_cuda_graphs.py runs the capture on a GPU). A host route that would need it as
    an int refuses clearly instead of syncing (which a capture forbids); the launchers take it
    only as one int64 element on the launch's device."""
    torch = pytest.importorskip("torch")
    from fastdrop import _core, _cuda, _seeds

    class OnDevice:  # stands in for a 0-d int64 CUDA tensor (only is_cuda is asked)
        is_cuda = True
    with pytest.raises(RuntimeError, match="under CUDA-graph capture the seed lives on the device"):
        _core._seed_int(OnDevice())
    assert _core._seed_int(torch.tensor(-1)) == 2**64 - 1  # a host tensor's bits, as before
    cpu = torch.device("cpu")
    seed = torch.tensor(2**40 + 3)
    assert _cuda._seed_tensor(torch, seed, cpu).shape == (1,)
    assert _cuda._seed_tensor(torch, seed, cpu).data_ptr() == seed.data_ptr()  # a view, no copy
    for bad in (torch.tensor(3, dtype=torch.int32), torch.tensor([1, 2])):
        with pytest.raises(ValueError, match="one int64 element"):
            _cuda._seed_tensor(torch, bad, cpu)
    # the draw itself: torch's generator of the device, the range of every drawn seed
    torch.manual_seed(0)
    a = _seeds.device_seed_tensor(torch, cpu)
    torch.manual_seed(0)
    assert a.dtype == torch.int64 and a.dim() == 0 and 0 <= int(a) < 2**63 - 1
    assert int(_seeds.device_seed_tensor(torch, cpu)) == int(a)


@pytest.mark.parametrize("data, strides, error, match", [
    ((4096, True), None, ValueError, "read-only"),                 # a read-only export
    ((4096, False), (0, 4), RuntimeError, "single memory location"),  # a broadcast (stride-0) view
    ((0, False), None, ValueError, "null data pointer"),            # a kernel would fault
], ids=["read-only", "overlapping", "null"])
def test_inplace_on_unwritable_cuda_export_is_refused_before_anything(data, strides, error, match):
    """In place on a CUDA array is checked from its __cuda_array_interface__ like numpy's flags and
    torch's overlap rule: refused before the GPU is asked for and before any seed is drawn."""
    x = FakeDeviceArray((3, 4))
    x.__cuda_array_interface__.update(data=data, strides=strides)
    state = fastdrop._seeds._numpy_source.bit_generator.state
    with pytest.raises(error, match=match):
        fastdrop.dropout(x, 0.5, inplace=True)
    assert fastdrop._seeds._numpy_source.bit_generator.state == state


@pytest.mark.skipif(not NO_CUDA, reason="the simulator's arrays are numpy's")
def test_unsqueeze0_keeps_a_device_arrays_strides():
    """drop_path's batch mode views x as a batch of one: for a transposed (F-ordered) device array
    the view must keep its strides (numba's reshape gives C strides over the same memory, so the
    kernel would read the data in the wrong order). Only the view arithmetic: no GPU needed."""
    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from fastdrop import _cuda

    class Memory:  # never dereferenced
        device_ctypes_pointer = type("Pointer", (), {"value": 0x1000})()

    xt = DeviceNDArray(shape=(4, 3), strides=(4, 16), dtype=np.float32, gpu_data=Memory())
    u = _cuda.unsqueeze0(xt)
    assert u.shape == (1, 4, 3) and u.strides[1:] == (4, 16)
    c = DeviceNDArray(shape=(4, 3), strides=(12, 4), dtype=np.float32, gpu_data=Memory())
    assert _cuda.unsqueeze0(c).strides[1:] == (12, 4)


def test_numpy_without_row_stack_is_named_before_a_compile(monkeypatch):
    """numba-cuda 0.30 fails to compile any kernel under numpy >= 2.5 (np.row_stack removed; the
    first H200 run): on a GPU the launch preconditions say so instead of numba's AttributeError."""
    from fastdrop import _cuda
    monkeypatch.setattr(_cuda.cuda, "is_available", lambda: True)
    monkeypatch.setattr(_cuda, "NUMPY_TOO_NEW", True)
    with pytest.raises(RuntimeError, match=r"np.row_stack.*install numpy<2.5"):
        _cuda.require_gpu()
    monkeypatch.setattr(_cuda, "NUMPY_TOO_NEW", False)
    _cuda.require_gpu()
