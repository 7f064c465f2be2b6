"""The torch CUDA route of the masked ops (`_cuda.apply_tensor`: layout choice, flat views of
permuted memory, storage offsets, the copy back into a strided `out`, bfloat16 as int16 bits, the
arguments each kernel receives) without a GPU: CPU tensors go through it, and the launches run the
simulated kernels over the tensors' own memory (the launcher's packing and cuda.core's launch are
replaced here; tests/test_direct_launch.py checks the packing). Compared with the CPU route bit
for bit.

Simulator only: on a GPU, tests/gpu runs the same route on real CUDA tensors. Written after a
bfloat16 result that took the copy back (channels_last, strided out=, in place on a strided view)
came out as its bits' integer values (`out.copy_` of the int16 view), which the launcher's own
tests could not see: they check the packed arguments, never run this route.
"""
import ctypes
import itertools

import numba
import numpy as np
import pytest
import torch

import fastdrop
from fastdrop import _cuda
from fastdrop.kernels import direct_launch

pytestmark = pytest.mark.skipif(not numba.config.ENABLE_CUDASIM, reason="runs the simulator over CPU memory")

P, SEED, OFFSET = 0.4, 123456789, 77
REFERENCE = {0: fastdrop.dropout, 1: fastdrop.drop_path, 2: fastdrop.dropout2d}


def _host_view(a):
    """A direct-launch array argument (its device pointer is a CPU tensor's address here) as numpy."""
    if type(a) is not direct_launch.Flat:
        return a
    if a.size == 0:
        return np.empty(0, a.dtype)
    return np.frombuffer((ctypes.c_char * (a.size * a.dtype.itemsize)).from_address(a.ptr), dtype=a.dtype)


@pytest.fixture
def launches(monkeypatch):
    """Kernels the direct launcher ran, each run by the simulator over the tensors' memory."""
    names = []

    def launch(self, kernel, grid, block, args):
        names.append(getattr(kernel, "__name__", str(kernel)))
        kernel[grid, block](*[_host_view(a) for a in args])
    monkeypatch.setattr(direct_launch.TorchStream, "launch", launch)
    monkeypatch.setattr(direct_launch, "torch_stream", lambda torch, device: direct_launch.TorchStream(0, None))
    return names


def _bits(t):
    as_int = {torch.float32: torch.int32, torch.float64: torch.int64,
              torch.float16: torch.int16, torch.bfloat16: torch.int16}[t.dtype]
    return t.contiguous().view(as_int)


def _layouts(dtype):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(2, 3, 4, 5, generator=g).to(dtype)
    flat = torch.randn(400, generator=g).to(dtype)
    return {
        "contiguous": base,
        "storage_offset": flat[7:7 + 120].view(2, 3, 4, 5),
        "channels_last": base.to(memory_format=torch.channels_last),
        "channels_last_offset": flat[11:11 + 120].view(2, 4, 5, 3).permute(0, 3, 1, 2),
        "transposed": base.transpose(2, 3),
        "sliced": base[:, :, ::2],
        "permuted": base.permute(0, 2, 3, 1),
    }


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_torch_route_equals_the_cpu_in_every_layout(launches, dtype):
    for (name, x), group_ndim in itertools.product(_layouts(dtype).items(), (0, 1, 2)):
        expected = REFERENCE[group_ndim](x.clone(), P, seed=SEED, offset=OFFSET)
        case = (name, group_ndim)
        y = _cuda.apply_tensor(x, P, SEED, OFFSET, 1 / (1 - P), group_ndim)
        assert y.shape == x.shape and torch.equal(_bits(y), _bits(expected)), case
        # in place (out is x, its strides kept), and out= a fresh tensor of x's layout
        inplace = torch.empty_strided(x.shape, x.stride(), dtype=dtype).copy_(x)
        assert _cuda.apply_tensor(inplace, P, SEED, OFFSET, 1 / (1 - P), group_ndim, inplace) is inplace
        assert torch.equal(_bits(inplace), _bits(expected)), case
        for out in (torch.empty_like(x), torch.empty(x.shape[::-1], dtype=dtype).permute(3, 2, 1, 0)):
            _cuda.apply_tensor(x, P, SEED, OFFSET, 1 / (1 - P), group_ndim, out)
            assert torch.equal(_bits(out), _bits(expected)), case
    assert launches  # the direct launcher ran the kernels (not numba's dispatch)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_dense_permuted_layouts_run_in_place_of_a_copy(launches, dtype):
    """A channels_last or transposed x (out with its strides) is indexed where it lies: the
    transposed kernel elementwise, the grouped kernels over its flat memory; no contiguous copy and
    copy back (bfloat16 elementwise takes the copy, its kernel has no transposed form)."""
    x = _layouts(dtype)["channels_last"]
    launches.clear()
    _cuda.apply_tensor(x, P, SEED, OFFSET, 1 / (1 - P), 0)
    assert launches == ["dropout_transposed"]
    launches.clear()
    _cuda.apply_tensor(_layouts(dtype)["transposed"], P, SEED, OFFSET, 1 / (1 - P), 0)
    assert launches == ["dropout_transposed"]
    copies = []
    real_copy = torch.Tensor.copy_
    torch.Tensor.copy_ = lambda self, src, *a, **k: (copies.append(1), real_copy(self, src, *a, **k))[1]
    try:
        for group_ndim in (1, 2):
            _cuda.apply_tensor(x, P, SEED, OFFSET, 1 / (1 - P), group_ndim)
    finally:
        torch.Tensor.copy_ = real_copy
    assert not copies
