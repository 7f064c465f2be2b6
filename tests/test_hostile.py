"""Hostile and bad inputs: each is refused with a clear ValueError / TypeError (or MemoryError for
impossible sizes) before any work, and changes no state: the input is not modified, and neither
fastdrop's numpy seed stream nor torch's generator is consumed. docs/robustness.md lists them."""
import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch

import fastdrop
from fastdrop import _alloc, _seeds

NAN, INF = float("nan"), float("inf")
_SELF_CONTAINING = []
_SELF_CONTAINING.append(_SELF_CONTAINING)  # a list holding itself: its repr is [[...]]


class Interface:
    """An object with only __cuda_array_interface__ (None: the property raises)."""

    def __init__(self, value):
        self.value = value

    @property
    def __cuda_array_interface__(self):
        if self.value is None:
            return 1 / 0
        return self.value

    def __eq__(self, other):  # (the test compares the input before and after the call)
        return type(other) is Interface and other.value == self.value


def cai(shape=(4,), typestr="<f4", data=(1234, False)):
    return {"shape": shape, "typestr": typestr, "data": data, "strides": None, "version": 3}


def two_tensor(t):
    """A __torch_dispatch__ wrapper subclass (torch's test TwoTensor) around t."""
    from torch.testing._internal.two_tensor import TwoTensor
    return TwoTensor(t, t.clone())


class _SkipsItsDropout(torch.nn.Module):
    """Holds a fastdrop layer that its forward never calls: mc_predict refuses it (no variance)."""

    def __init__(self):
        super().__init__()
        self.drop = F.nn.Dropout(0.5)

    def forward(self, x):
        return x * 2


def x_np():
    return np.arange(1, 25, dtype=np.float32).reshape(2, 3, 4)


def x_t():
    return torch.arange(1, 25, dtype=torch.float32).reshape(2, 3, 4)


def read_only(a):
    a.flags.writeable = False
    return a


F = fastdrop
_HALF_OUT = fastdrop._alloc.PHYSICAL_BYTES // 4 // 2**20 + 1  # 2^20 rows: float32 output > memory
SHARED = np.arange(1, 41, dtype=np.float32)  # memory two tensors from torch.from_numpy share
CASES = [
    # (id, input factory, call, exception, message fragment)
    ("p-tensor", x_np, lambda x: F.dropout(x, torch.tensor(0.5)), TypeError, "p must be a real"),
    ("p-str", x_np, lambda x: F.dropout(x, "0.5"), TypeError, "p must be a real"),
    ("p-none", x_np, lambda x: F.dropout(x, None), TypeError, "p must be a real"),
    ("p-bool", x_np, lambda x: F.dropout(x, True), TypeError, "p must be a real"),
    ("p-complex", x_np, lambda x: F.dropout(x, 0.5j), TypeError, "p must be a real"),
    ("p-nan", x_np, lambda x: F.dropout(x, NAN), ValueError, "p=nan"),
    ("p-nan-eval", x_np, lambda x: F.dropout(x, NAN, training=False), ValueError, "p=nan"),
    ("p-inf", x_np, lambda x: F.dropout(x, INF), ValueError, "p=inf"),
    ("p-neg", x_np, lambda x: F.dropout(x, -0.1), ValueError, "p=-0.1"),
    ("p-above-1", x_np, lambda x: F.dropout(x, 1.5), ValueError, "p=1.5"),
    ("p-tensor-torch", x_t, lambda x: F.dropout(x, torch.tensor(0.5)), TypeError, "p must be a real"),
    ("p-nan-torch", x_t, lambda x: F.dropout2d(x.view(1, 2, 3, 4), NAN), ValueError, "p=nan"),
    ("seed-neg", x_np, lambda x: F.dropout(x, 0.5, seed=-1), ValueError, "seed must be in"),
    ("seed-2^64", x_np, lambda x: F.dropout(x, 0.5, seed=2**64), ValueError, "seed must be in"),
    ("seed-float", x_np, lambda x: F.dropout(x, 0.5, seed=1.0), TypeError, "seed must be an int"),
    ("seed-tensor", x_t, lambda x: F.dropout(x, 0.5, seed=torch.tensor(3)), TypeError, "seed must be an int"),
    ("seed-neg-torch", x_t, lambda x: F.dropout(x, 0.5, seed=-5), ValueError, "seed must be in"),
    ("offset-neg", x_np, lambda x: F.dropout(x, 0.5, offset=-1), ValueError, "offset must be in"),
    ("offset-2^64", x_t, lambda x: F.dropout(x, 0.5, offset=2**64), ValueError, "offset must be in"),
    ("offset-2^64-p0", x_np, lambda x: F.dropout(x, 0.0, offset=2**64), ValueError, "offset must be in"),
    ("offset-str", x_np, lambda x: F.dropout(x, 0.5, offset="1"), TypeError, "offset must be an int"),
    ("mode", x_np, lambda x: F.dropout(x, 0.5, mode="paper"), ValueError, "mode must be one of"),
    ("int-array", lambda: np.ones(3, np.int32), lambda x: F.dropout(x, 0.5), TypeError, "floating point"),
    ("bool-array", lambda: np.ones(3, bool), lambda x: F.dropout(x, 0.5), TypeError, "floating point"),
    ("complex-array", lambda: np.ones(3, np.complex64), lambda x: F.dropout(x, 0.5), TypeError, "floating point"),
    ("object-array", lambda: np.ones(3, object), lambda x: F.dropout(x, 0.5), TypeError, "floating point"),
    ("int-tensor", lambda: torch.ones(3, dtype=torch.int64), lambda x: F.dropout(x, 0.5), TypeError, "floating point"),
    ("complex-tensor", lambda: torch.ones(3, dtype=torch.complex64), lambda x: F.dropout(x, 0.5), TypeError, "floating point"),
    ("list", lambda: [1.0, 2.0], lambda x: F.dropout(x, 0.5), TypeError, "numpy array, a torch tensor"),
    ("python-float", lambda: 1.0, lambda x: F.dropout(x, 0.5), TypeError, "numpy array, a torch tensor"),
    ("meta-with-cpu-weight", lambda: torch.ones(3, 4, device="meta"),
     lambda x: F.dropout_linear(x, torch.ones(2, 4)), ValueError, "x is on meta but weight is on cpu"),
    ("read-only-inplace", lambda: read_only(x_np()), lambda x: F.dropout(x, 0.5, inplace=True), ValueError, "read-only"),
    ("inplace-leaf", lambda: torch.ones(3, requires_grad=True),
     lambda x: F.dropout(x, 0.5, inplace=True), ValueError, "leaf"),
    ("inplace-leaf-as-torch", lambda: torch.ones(3, requires_grad=True),  # torch raises RuntimeError
     lambda x: F.nn.Dropout(0.5, inplace=True)(x), RuntimeError, "leaf"),
    ("dropout1d-4d", lambda: np.ones((2, 2, 2, 2), np.float32), lambda x: F.dropout1d(x, 0.5), ValueError, "4D input"),
    ("dropout1d-1d", lambda: np.ones(3, np.float32), lambda x: F.dropout1d(x, 0.5), ValueError, "1D input"),
    ("dropout2d-1d", lambda: np.ones(3, np.float32), lambda x: F.dropout2d(x, 0.5), ValueError, "at least 2 dimensions"),
    ("dropout2d-0d-torch", lambda: torch.ones(()), lambda x: F.dropout2d(x, 0.5), RuntimeError, "at least 2 dimensions"),
    ("dropout3d-0d-torch", lambda: torch.ones(()), lambda x: F.dropout3d(x, 0.5), RuntimeError, "at least 2 dimensions"),
    ("dropout3d-0d", lambda: np.ones((), np.float32), lambda x: F.dropout3d(x, 0.5), ValueError, "at least 2 dimensions"),
    ("module-p-nan", x_t, lambda x: F.nn.Dropout(NAN), ValueError, "but got nan"),
    ("module-p-tensor", x_t, lambda x: F.nn.Dropout2d(torch.tensor(0.1)), TypeError, "p must be a real"),
    ("module-p-2", x_t, lambda x: F.nn.Dropout3d(2), ValueError, "but got 2"),
    ("module-mode", x_t, lambda x: F.nn.Dropout(0.1, mode="x"), ValueError, "mode must be one of"),
    ("manual_seed-neg", x_np, lambda x: F.manual_seed(-1), ValueError, "seed must be in"),
    ("mask-neg-shape", x_np, lambda x: F.dropout_mask((-1, 3), 0.5, 1), ValueError, "non-negative"),
    ("mask-float-shape", x_np, lambda x: F.dropout_mask((2.0,), 0.5, 1), TypeError, "sequence of ints"),
    ("mask-none-shape", x_np, lambda x: F.dropout_mask(None, 0.5, 1), TypeError, "sequence of ints"),
    ("mask-seed-2^64", x_np, lambda x: F.dropout_mask((3,), 0.5, 2**64), ValueError, "seed must be in"),
    ("mask-p-nan", x_np, lambda x: F.dropout_mask((3,), NAN, 1), ValueError, "p=nan"),
    ("mask-1TiB", x_np, lambda x: F.dropout_mask((2**40,), 0.5, 1), MemoryError, "physical memory"),
    ("mask-2^80", x_np, lambda x: F.dropout_mask((2**40, 2**40), 0.5, 1), MemoryError, "physical memory"),
    ("mask-empty-2^64", x_np, lambda x: F.dropout_mask((0, 2**64), 0.5, 1), ValueError, "beyond any array"),
    ("philox-key-range", x_np, lambda x: F.philox4x32([0, 0, 0, 0], [2**32, 0]), ValueError, "2^32"),
    ("philox-float", x_np, lambda x: F.philox4x32([0.0, 0, 0, 0], [0, 0]), TypeError, "integers"),
    ("philox-shape", x_np, lambda x: F.philox4x32([0, 0, 0], [0, 0]), ValueError, "shape (..., 4)"),
    # fused dense layers (fastdrop.linear): mismatched shapes, dtypes, kinds and devices
    ("linear-w-dtype", x_np, lambda x: F.dropout_linear(x, np.ones((2, 4), np.float64)), TypeError, "must have the same dtype"),
    ("linear-w-shape", x_np, lambda x: F.dropout_linear(x, np.ones((2, 3), np.float32)), ValueError, "weight must be"),
    ("linear-b-shape", x_np, lambda x: F.dropout_linear(x, np.ones((2, 4), np.float32), np.ones(3, np.float32)),
     ValueError, "bias has shape"),
    ("linear-x-0d", lambda: np.ones((), np.float32), lambda x: F.dropout_linear(x, np.ones((2, 1), np.float32)),
     ValueError, "at least 1 dimension"),
    ("linear-kinds", x_np, lambda x: F.dropout_linear(x, torch.ones(2, 4)), TypeError, "same kind"),
    # a torch x with a numpy weight or bias on the default call (the dense lane asked torch's
    # subclass query of the array: torch's "incompatible function arguments", a review)
    ("linear-kinds-torch-x", x_t, lambda x: F.dropout_linear(x, np.ones((2, 4), np.float32)), TypeError, "same kind"),
    ("dropconnect-kinds-torch-x", x_t, lambda x: F.dropconnect_linear(x, torch.ones(2, 4), np.ones(2, np.float32)),
     TypeError, "same kind"),
    ("dropconnect-w-kinds-torch-x", x_t, lambda x: F.dropconnect_linear(x, np.ones((2, 4), np.float32)), TypeError,
     "same kind"),
    ("linear-torch-dtype", x_t, lambda x: F.dropout_linear(x, torch.ones(2, 4, dtype=torch.float64)),
     TypeError, "must have the same dtype"),
    ("linear-devices", x_t, lambda x: F.dropout_linear(x, torch.ones(2, 4, device="meta")), ValueError, "on meta"),
    ("linear-p-nan", x_np, lambda x: F.dropout_linear(x, np.ones((2, 4), np.float32), p=NAN), ValueError, "p=nan"),
    ("dropconnect-w-shape", x_t, lambda x: F.dropconnect_linear(x, torch.ones(2, 3)), ValueError, "weight must be"),
    ("dropconnect-dtype", x_np, lambda x: F.dropconnect_linear(x, np.ones((2, 4), np.float64)), TypeError, "must have the same dtype"),
    # found by a review (2026-12-03): each of these used to write, crash or draw a seed first
    ("out-np-matrix", lambda: np.arange(1.0, 13.0).reshape(3, 4),
     lambda x: F.dropout1d(x, 0.5, out=np.matrix(np.zeros((3, 4)))), TypeError, "numpy.ndarray or np.memmap"),
    ("out-masked-array", x_np, lambda x: F.dropout(x, 0.5, out=np.ma.zeros((2, 3, 4), np.float32)),
     TypeError, "numpy.ndarray or np.memmap"),
    ("out-big-endian", x_np, lambda x: F.dropout(x, 0.5, out=np.zeros((2, 3, 4), ">f4")), TypeError, "byte order"),
    ("mask-out-matrix", x_np, lambda x: F.dropout_mask((3, 4), 0.5, 1, out=np.matrix(np.zeros((3, 4), bool))),
     TypeError, "numpy bool array or np.memmap"),
    ("mask-out-read-only", x_np, lambda x: F.dropout_mask((3,), 0.5, 1, out=read_only(np.zeros(3, bool))),
     ValueError, "out is read-only"),
    ("inplace-big-endian", lambda: np.arange(1, 9, dtype=">f4"), lambda x: F.dropout(x, 0.5, inplace=True),
     TypeError, "byte order"),
    ("inplace-big-endian-dropout2d", lambda: np.ones((2, 3, 4), ">f8"), lambda x: F.dropout2d(x, 0.5, inplace=True),
     TypeError, "byte order"),
    ("float8-tensor", lambda: torch.ones(4).to(torch.float8_e4m3fn), lambda x: F.dropout(x, 0.5), TypeError, "floating point"),
    ("float8-drop-path", lambda: torch.ones(4, 2).to(torch.float8_e5m2), lambda x: F.drop_path(x, 0.5), TypeError, "floating point"),
    ("inplace-view-of-leaf", lambda: torch.ones(8, requires_grad=True),
     lambda x: F.dropout(x[:4], 0.5, inplace=True), ValueError, "view of a leaf"),
    ("inplace-view-of-leaf-2d", lambda: torch.ones(3, 4, 5, requires_grad=True),
     lambda x: F.dropout2d(x[1:], 0.5, inplace=True), ValueError, "view of a leaf"),
    ("out-parameter", x_t, lambda x: F.dropout(x, 0.5, out=torch.nn.Parameter(torch.zeros(2, 3, 4))),
     RuntimeError, "out=... arguments don't support automatic differentiation"),
    ("out-overlaps-from-numpy", lambda: torch.from_numpy(SHARED[0:32]),  # two storages, one memory
     lambda x: F.dropout(x, 0.5, out=torch.from_numpy(SHARED[4:36])), ValueError, "shares memory"),
    ("inplace-neg-view", lambda: torch._neg_view(torch.ones(4)), lambda x: F.dropout(x, 0.5, inplace=True),
     ValueError, "resolve_neg"),
    ("out-sparse", x_t, lambda x: F.dropout(x, 0.5, out=torch.zeros(2, 3, 4).to_sparse()),
     TypeError, "out must be a dense"),
    ("out-nested", lambda: torch.zeros(2, 3), lambda x: F.dropout(x, 0.5, out=torch.nested.nested_tensor(
        [torch.zeros(3), torch.zeros(3)])), TypeError, "out must be a dense"),
    ("out-mkldnn", x_t, lambda x: F.dropout(x, 0.5, out=torch.zeros(2, 3, 4).to_mkldnn()),
     TypeError, "out must be a dense"),
    ("out-neg-view", x_t, lambda x: F.dropout(x, 0.5, out=torch._neg_view(torch.zeros(2, 3, 4))),
     ValueError, "resolve_neg"),
    ("max-norm-expanded", lambda: torch.tensor([[1.0], [2.0], [3.0]]), lambda x: F.max_norm_(x.expand(3, 4), 1.0),
     RuntimeError, "single memory location"),
    ("keep-threshold-2", x_np, lambda x: F.keep_threshold(2.0), ValueError, "between 0 and 1"),
    # finite reals past float's range: ValueError, not float()'s OverflowError (a review)
    ("p-huge-int", x_np, lambda x: F.dropout(x, 10**400), ValueError, "between 0 and 1"),
    ("p-huge-fraction", x_t, lambda x: F.dropout(x, Fraction(10**400, 3)), ValueError, "between 0 and 1"),
    ("p-huge-negative", x_t, lambda x: F.dropout2d(x, -10**400), ValueError, "between 0 and 1"),
    ("p-huge-module", x_t, lambda x: fastdrop.nn.Dropout2d(10**400)(x), ValueError, "between 0 and 1"),
    ("p-over-4300-digits", x_t, lambda x: F.dropout(x, 10**5000), ValueError, "between 0 and 1, but got p=about"),
    # ints past float's range or str()'s 4300 digits elsewhere: the argument named, the value shown
    ("max-norm-huge-int", x_np, lambda x: F.max_norm_(x, 10**400), ValueError,
     "max_value must be a positive finite number, got 1000"),
    ("max-norm-huge-fraction", x_t, lambda x: F.max_norm_(x, Fraction(10**400)), ValueError, "max_value must be"),
    ("max-norm-eps-huge", x_np, lambda x: F.max_norm_(x, 1.0, eps=10**400), ValueError, "eps must be"),
    ("max-norm-dim-4300-digits", x_np, lambda x: F.max_norm_(x, 1.0, dim=10**5000), ValueError,
     "dim about 10"),
    ("seed-4300-digits", x_t, lambda x: F.dropout(x, 0.5, seed=10**5000), ValueError,
     "got about 10"),
    ("offset-4300-digits", x_np, lambda x: F.dropout(x, 0.5, seed=1, offset=10**5000), ValueError,
     "offset must be in"),
    ("mask-shape-4300-digits", x_np, lambda x: F.dropout_mask((10**5000,), 0.5, 1), ValueError, "about 10"),
    ("mask-str-shape", x_np, lambda x: F.dropout_mask("ab", 0.5, 1), TypeError, "sequence of ints, got str 'a'"),
    ("philox-key-2^64", x_np, lambda x: F.philox4x32([0, 0, 0, 0], [2**64 - 1, 0]), ValueError,
     "key values must lie in"),
    ("philox-counter-2^70", x_np, lambda x: F.philox4x32([[0, 0, 0, 2**70]], [0, 0]), ValueError,
     "counter values must lie in"),
    ("philox-key-float", x_np, lambda x: F.philox4x32([0, 0, 0, 0], [0.5, 0]), TypeError, "must hold integers"),
    ("philox-rounds-4300-digits", x_np, lambda x: F.philox4x32([0, 0, 0, 0], [0, 0], 10**5000), ValueError,
     "rounds must be in"),
    ("samples-4300-digits", x_np, lambda x: F.dropconnect_linear(x, np.ones((2, 4), np.float32), training=False,
                                                                 activation=np.tanh, samples=-10**5000),
     ValueError, "samples must be a positive int, got -about"),
    ("seed-fraction-4300-digits", x_np, lambda x: F.dropout(x, 0.5, seed=Fraction(10**5000, 3)), TypeError,
     "seed must be an int in"),
    ("max-norm-eps-fraction-4300-digits", x_np, lambda x: F.max_norm_(x, 1.0, eps=Fraction(-(10**5000 + 1), 10**5000)),
     ValueError, "eps must be a non-negative finite number"),
    ("mask-self-containing-shape", x_np, lambda x: F.dropout_mask(_SELF_CONTAINING, 0.5, 1), TypeError,
     "shape must be a sequence of ints"),
    ("p-just-above-1", x_t, lambda x: fastdrop.nn.Dropout(Fraction(10**400 + 1, 10**400))(x), ValueError,
     "between 0 and 1"),
    # a numpy longdouble just past [0, 1] (float() rounds it into the interval; a review)
    ("p-longdouble-just-above-1", x_np, lambda x: F.dropout(x, np.longdouble(1) + np.longdouble(2) ** -60),
     ValueError, "between 0 and 1"),
    ("p-longdouble-just-below-0", x_t, lambda x: F.dropout(x, -(np.longdouble(2) ** -1100)), ValueError,
     "between 0 and 1"),
    ("mask-longdouble-p", x_np, lambda x: F.dropout_mask((4,), np.longdouble(1) + np.longdouble(2) ** -60, 1),
     ValueError, "between 0 and 1"),
    ("keep-threshold-bool", x_np, lambda x: F.keep_threshold(True), TypeError, "real number"),
    ("keep-threshold-str", x_np, lambda x: F.keep_threshold("0.5"), TypeError, "real number"),
    ("keep-threshold-tensor", x_np, lambda x: F.keep_threshold(torch.tensor(0.5)), TypeError, "real number"),
    ("training-str", x_t, lambda x: F.dropout(x, 0.5, training="False"), TypeError, "training must be a bool"),
    ("training-none-numpy", x_np, lambda x: F.dropout(x, 0.5, training=None), TypeError, "training must be a bool"),
    ("training-tensor-drop-path", x_t, lambda x: F.drop_path(x, 0.5, torch.tensor(True)), TypeError,
     "training must be a bool"),
    ("training-float-linear", x_np, lambda x: F.dropout_linear(x, np.ones((2, 4), np.float32), training=1.0),
     TypeError, "training must be a bool"),
    ("per-sample-str", x_t, lambda x: F.dropconnect_linear(x, torch.ones(2, 4), per_sample="False"),
     TypeError, "per_sample must be a bool"),
    ("per-sample-int-numpy", x_np, lambda x: F.dropconnect_linear(x, np.ones((2, 4), np.float32), per_sample=2),
     TypeError, "per_sample must be a bool"),
    # found by a review (2026-12-05): each of these drew a seed first, or failed from inside
    ("linear-output-2^44", lambda: np.broadcast_to(np.float32(1), (2**20, 1)),  # x 4 MiB, output 2^44
     lambda x: F.dropout_linear(x, np.broadcast_to(np.float32(1), (2**24, 1))), MemoryError, "physical memory"),
    ("per-sample-output-2^44", lambda: torch.ones(1, 1).expand(2**20, 1),
     lambda x: F.dropconnect_linear(x, torch.ones(1, 1).expand(2**24, 1), per_sample=True), MemoryError,
     "physical memory"),
    ("matmul-output-2^44", lambda: torch.ones(1, 1).expand(2**22, 1),
     lambda x: F.dropout_matmul(x, torch.ones(1, 1).expand(1, 2**22)), MemoryError, "physical memory"),
    ("out-is-x-autograd", lambda: torch.ones(2, 3, requires_grad=True) * 1,
     lambda x: F.dropout(x, 0.5, out=x), RuntimeError, "out=... arguments don't support automatic differentiation"),
    ("out-is-x-and-inplace", x_t, lambda x: F.dropout(x, 0.5, inplace=True, out=x), ValueError,
     "either inplace=True or out="),
    ("mc-0d-input", lambda: torch.tensor(3.0), lambda x: F.mc_predict(torch.nn.Sequential(F.nn.Dropout(0.5)), x, 4),
     ValueError, "batch dim"),
    # mc_predict drew its seed before these inputs failed in the model's forward (the model may
    # convert its input first, so they are refused there; the failed call gives its draw back)
    ("mc-wrapper-subclass", lambda: two_tensor(torch.ones(2, 4)),
     lambda x: F.mc_predict(torch.nn.Sequential(torch.nn.Flatten(), F.nn.Dropout(0.5)).eval(), x, 4),
     TypeError, "tensor subclass"),
    ("mc-integer-input", lambda: torch.ones(2, 4, dtype=torch.int64),
     lambda x: F.mc_predict(torch.nn.Sequential(torch.nn.Flatten(), F.nn.Dropout(0.5)).eval(), x, 4),
     TypeError, "floating point"),
    ("mc-no-fastdrop-layer-runs", lambda: torch.ones(2, 4),
     lambda x: F.mc_predict(_SkipsItsDropout(), x, 4), ValueError, "none of the model.s fastdrop stochastic modules ran"),
    ("mc-meta", lambda: torch.ones(2, 4, device="meta"),
     lambda x: F.mc_predict(torch.nn.Sequential(F.nn.Dropout(0.5)), x, 4), ValueError, "device meta"),
    ("interface-not-a-dict", lambda: Interface(3), lambda x: F.dropout(x, 0.5), TypeError,
     "__cuda_array_interface__ must be a dict"),
    ("interface-no-shape", lambda: Interface({"typestr": "<f4", "data": (1, False)}), lambda x: F.dropout(x, 0.5),
     TypeError, "__cuda_array_interface__ must be a dict"),
    ("interface-raises", lambda: Interface(None), lambda x: F.dropout(x, 0.5), TypeError, "raised ZeroDivisionError"),
    ("interface-typestr", lambda: Interface(cai(typestr="zz")), lambda x: F.dropout(x, 0.5), TypeError,
     "typestr 'zz'"),
    ("interface-neg-shape", lambda: Interface(cai(shape=(-1,))), lambda x: F.dropout(x, 0.5), ValueError,
     "shape (-1,)"),
    ("interface-data", lambda: Interface(cai(data=1234)), lambda x: F.max_norm_(x, 1.0, 0), TypeError,
     "(pointer, read-only)"),
    ("interface-max-norm", lambda: Interface(cai(shape=(4, 3))), lambda x: F.max_norm_(x, 1.0), RuntimeError, "GPU"),
    # max_norm_'s refusals name its argument, weight (they said x, and inplace=True)
    ("interface-read-only-max-norm", lambda: Interface(cai(shape=(4, 3), data=(1234, True))),
     lambda x: F.max_norm_(x, 1.0), ValueError, "weight's __cuda_array_interface__ marks it read-only"),
    ("wrapper-subclass-max-norm", lambda: two_tensor(torch.ones(4, 3)), lambda x: F.max_norm_(x, 1.0), TypeError,
     "weight is a TwoTensor"),
    # found by a review (2026-12-05, evening): these drew a seed, then failed in the allocator or
    # in the user's activation
    ("moment-matching-output-2^44", lambda: torch.ones(1, 1).expand(2**20, 1),  # x 4 MiB, moments 2^44
     lambda x: F.dropconnect_linear(x, torch.ones(1, 1).expand(2**24, 1), training=False, activation=torch.relu),
     MemoryError, "physical memory"),
    ("moment-matching-output-2^44-numpy", lambda: np.broadcast_to(np.float32(1), (2**20, 1)),
     lambda x: F.dropconnect_linear(x, np.broadcast_to(np.float32(1), (2**24, 1)), training=False,
                                    activation=np.tanh), MemoryError, "physical memory"),
    # a review (2026-12-07): the weight-sized working arrays (W * W, its float copy) of an
    # expanded weight, 2^38 elements from 4 bytes, with an output of 2^22: torch's allocator error
    ("moment-matching-weight-2^38", lambda: torch.ones(1, 2**16),
     lambda x: F.dropconnect_linear(x, torch.zeros(1, 1).expand(2**22, 2**16), training=False, seed=1,
                                    activation=torch.relu), MemoryError, "physical memory"),
    ("moment-matching-activation-fails", x_t,
     lambda x: F.dropconnect_linear(x, torch.ones(2, x.shape[-1]), training=False,
                                    activation=lambda t: t.reshape(-1, 7)), RuntimeError, "invalid"),
    ("moment-matching-activation-fails-numpy", x_np,
     lambda x: F.dropconnect_linear(x, np.ones((2, x.shape[-1]), x.dtype), training=False,
                                    activation=torch.relu), TypeError, "must be Tensor"),
    # the float32 working copies of half operands: twice the bytes of the half output (x 2 MiB,
    # output about half of physical memory as float16)
    ("half-linear-float32-copy", lambda: torch.ones(1, 1, dtype=torch.float16).expand(2**20, 1),
     lambda x: F.dropout_linear(x, torch.ones(1, 1, dtype=torch.float16).expand(_HALF_OUT, 1)), MemoryError,
     "physical memory"),
    ("half-linear-float32-copy-numpy", lambda: np.broadcast_to(np.float16(1), (2**20, 1)),
     lambda x: F.dropconnect_linear(x, np.broadcast_to(np.float16(1), (_HALF_OUT, 1))), MemoryError,
     "physical memory"),
]


def test_inplace_on_an_inference_tensor_outside_inference_mode_is_refused():
    with torch.inference_mode():
        x = torch.ones(4)
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="inference tensor"):
        F.dropout(x, 0.5, inplace=True)
    assert torch.equal(x, torch.ones(4)) and torch.equal(torch.get_rng_state(), state)
    with torch.inference_mode():  # inside inference mode it is allowed, as in torch
        assert F.dropout(x, 0.5, seed=1, inplace=True) is x


def test_out_may_be_another_part_of_xs_storage_or_empty():
    """out= is refused only when it really shares memory with x: disjoint rows of one storage and
    empty tensors are fine (as in torch's out= ops)."""
    buf = torch.arange(1.0, 17.0).reshape(2, 8)
    F.dropout(buf[0], 0.5, seed=1, out=buf[1])
    want = np.where(F.dropout_mask((8,), 0.5, 1), np.arange(1.0, 9.0, dtype=np.float32) * 2, 0)
    np.testing.assert_array_equal(buf[1].numpy(), want)
    np.testing.assert_array_equal(buf[0].numpy(), np.arange(1.0, 9.0, dtype=np.float32))
    assert F.dropout(torch.empty(0, 3), 0.5, seed=1, out=torch.empty(0, 3)).shape == (0, 3)


@pytest.mark.parametrize("call", [
    lambda x, out: F.dropout(x, 0.5, training=False, out=out),
    lambda x, out: F.dropout(x, 0.0, out=out),
    lambda x, out: F.dropout2d(x.reshape(4, 8, 4, 4), 0.5, training=False, out=out.reshape(4, 8, 4, 4))])
def test_out_copy_of_an_unchanged_x_refuses_freed_memory(call):
    """Eval or p = 0 with out=: x is copied into out, so x's memory is read and checked as on
    every other route (a freed storage, FSDP-style, crashed the process: a review)."""
    x = torch.randn(512)
    x.untyped_storage().resize_(0)
    out = torch.zeros(512)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="no memory"):
        call(x, out)
    assert torch.equal(out, torch.zeros(512)) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("training", [True, False])
def test_out_over_the_memory_of_a_converted_x_is_refused(training):
    """A big-endian x is computed from a converted copy; an out over the caller's x's memory still
    shares memory with x and is refused (a review: accepted, and x overwritten)."""
    x = np.arange(1, 9, dtype=">f4")
    out = x.view("<f4")
    before = x.copy()
    with pytest.raises(ValueError, match="shares memory"):
        F.dropout(x, 0.5, training=training, seed=0, out=out)
    assert np.array_equal(x, before)


def test_out_disjoint_from_a_negated_view_is_accepted():
    """A lazily negated view of one half of a buffer and out= over the other half share no
    element (a review: refused as overlapping); the result is the resolved x's."""
    base = torch.randn(6, 2, 8)
    x, out = base[:, 0]._neg_view(), base[:, 1]
    want = F.dropout(x.resolve_neg(), 0.5, seed=3)
    assert F.dropout(x, 0.5, seed=3, out=out) is out
    assert torch.equal(out, want)
    with pytest.raises(ValueError, match="shares memory"):
        F.dropout(base[:, 0]._neg_view(), 0.5, seed=3, out=base[:, 0, :])


def test_dropconnect_on_meta_gives_shapes_and_changes_no_state():
    x = torch.ones(4, 3, device="meta")
    state = torch.get_rng_state()
    y = F.dropconnect_linear(x, torch.ones(2, 3, device="meta"))
    assert y.is_meta and y.shape == (4, 2)
    assert torch.equal(torch.get_rng_state(), state)  # no seed drawn: no values to mask


def snapshot(x):
    if isinstance(x, torch.Tensor):
        return x.detach().clone() if x.device.type != "meta" else None
    return copy.deepcopy(x)


def same(a, b):
    if isinstance(a, torch.Tensor):
        return b is None or torch.equal(a.detach(), b)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a == b


@pytest.mark.parametrize("make_x, call, exc, fragment",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_refused_cleanly_without_state_change(make_x, call, exc, fragment):
    x = make_x()
    before = snapshot(x)
    np_state = copy.deepcopy(_seeds._numpy_source.bit_generator.state)
    torch_state = torch.get_rng_state()
    with pytest.raises(exc, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("^", r"\^")):
        call(x)
    assert same(x, before), "input modified"
    assert _seeds._numpy_source.bit_generator.state == np_state, "numpy seed stream consumed"
    assert torch.equal(torch.get_rng_state(), torch_state), "torch generator consumed"


@pytest.mark.parametrize("make", [lambda a: a, lambda a: a[:, ::2], lambda a: a.transpose(2, 0, 1),
                                  lambda a: a[::-1]])
def test_read_only_numpy_input_is_fine(make):
    base = read_only(np.random.rand(4, 6, 5).astype(np.float32))
    x = make(base)
    assert not x.flags.writeable
    y = fastdrop.dropout(x, 0.3, seed=9)
    keep = fastdrop.dropout_mask(x.shape, 0.3, 9)
    np.testing.assert_array_equal(y, np.where(keep, x * np.float32(1 / 0.7), 0))
    y2 = fastdrop.dropout2d(x[None], 0.5, seed=9)[0]
    keep2 = fastdrop.dropout_mask((1, x.shape[0]), 0.5, 9)[0]
    np.testing.assert_array_equal(y2, np.where(keep2[:, None, None], x * np.float32(2), 0))
    # a broadcast (zero-stride, read-only) input
    b = np.broadcast_to(np.float32(3), (5, 7))
    np.testing.assert_array_equal(fastdrop.dropout(b, 0.5, seed=1),
                                  np.where(fastdrop.dropout_mask((5, 7), 0.5, 1), np.float32(6), 0))


def test_numpy_integers_where_python_ints_are_taken():
    """numpy scalars and 0-d arrays read as the Python numbers they hold, as p and seed take them:
    a mask's shape, and set_rank_streams' flag (a numpy bool, as every flag takes it)."""
    np.testing.assert_array_equal(fastdrop.dropout_mask(np.array(5), 0.5, 1), fastdrop.dropout_mask((5,), 0.5, 1))
    np.testing.assert_array_equal(fastdrop.dropout_mask(np.int64(3), 0.5, 1), fastdrop.dropout_mask(3, 0.5, 1))
    previous = fastdrop.set_rank_streams(np.False_)
    try:
        assert fastdrop.set_rank_streams(np.True_) is False
    finally:
        fastdrop.set_rank_streams(previous)


@pytest.mark.parametrize("to", [np.asarray, torch.from_numpy])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_values_propagate_in_kept_elements(to, dtype):
    vals = np.array([np.nan, np.inf, -np.inf, 1e38, -0.0, 1.0], dtype)
    x = np.tile(vals, 20)
    y = np.asarray(fastdrop.dropout(to(x.copy()), 0.5, seed=4))
    keep = fastdrop.dropout_mask(x.shape, 0.5, 4)
    with np.errstate(over="ignore"):
        expected = np.where(keep, x * dtype(2), dtype(0))
    np.testing.assert_array_equal(y, expected)  # NaN == NaN position-wise here
    assert np.isnan(y[keep & np.isnan(x)]).all() and keep[np.isnan(x)].any()
    assert (y[~keep] == 0).all()  # dropped elements are exact zeros, even where x is NaN


def test_dropout_mask_just_under_the_memory_limit_is_not_refused():
    # the check is on bytes, not elements: a moderate mask is computed normally
    assert fastdrop.dropout_mask((3, 5), 0.5, 1).shape == (3, 5)
    assert fastdrop.dropout_mask((0, 2**62), 0.5, 1).shape == (0, 2**62)
    assert math.prod((0, 2**62)) == 0


# built here, not in the call: its initialization draws from torch's generator
_FUSED_HEAD_MODEL = torch.nn.Sequential(torch.nn.Linear(16, 16), fastdrop.nn.Dropout(0.5),
                                        torch.nn.Linear(16, 3)).eval()


def _backward(op, a, b):
    y = op(a, b, p=0.5, seed=1)
    y.sum().backward()
    return a.grad


@pytest.mark.parametrize("call", [
    lambda t: fastdrop.dropout(t, 0.5, seed=1), lambda t: fastdrop.dropout(t, 0.5),
    lambda t: fastdrop.dropout(t, 0.5, seed=1, inplace=True), lambda t: fastdrop.nn.Dropout(0.5)(t),
    lambda t: fastdrop.dropout(t.bfloat16(), 0.5, seed=1), lambda t: fastdrop.dropout(t.T, 0.5, seed=1),
    lambda t: fastdrop.dropout(t, 0.5, seed=1, out=torch.empty_like(t)),
    lambda t: fastdrop.dropout2d(t.reshape(0, 2**60, 2, 2), 0.5, seed=1),
    lambda t: fastdrop.drop_path(t, 0.5, seed=1), lambda t: fastdrop.max_norm_(t, 1.0),
    lambda t: _backward(fastdrop.dropout_linear, t.reshape(0, 2**58, 16).requires_grad_(),
                        torch.ones(4, 16, requires_grad=True)),
    lambda t: _backward(fastdrop.dropout_matmul, t.reshape(0, 2**58, 16).requires_grad_(),
                        torch.ones(16, 3, requires_grad=True)),
    lambda t: fastdrop.mc_predict(_FUSED_HEAD_MODEL, t.reshape(0, 2**58, 16), 4, seed=1).mean],
    ids=["dropout", "seed-none", "inplace", "module", "bfloat16", "transposed", "out", "dropout2d",
         "drop_path", "max_norm_", "dropout_linear-backward", "dropout_matmul-backward", "mc_predict-fused"])
def test_empty_tensors_whose_other_dims_overflow_numpy(call):
    """torch holds an empty (0, 2**62) tensor; numpy cannot view it (its size check multiplies the
    other dims), and every CPU route that viewed the memory raised numpy's internal error instead
    of returning the empty result torch's dropout returns (helper review). Nothing to write: the
    routes return before any view."""
    t = torch.empty((0, 2**62))
    state = torch.get_rng_state()
    y = call(t)
    assert y.numel() == 0 and torch.equal(torch.get_rng_state(), state)


@pytest.mark.skipif(not __import__("numba").config.BOUNDSCHECK,
                    reason="only in the NUMBA_BOUNDSCHECK=1 pass of scripts/test.sh")
def test_boundscheck_pass_is_effective():
    """The pass really checks bounds: kernels are compiled serial (tests/boundscheck_plugin.py) and
    a launch whose output is too short raises IndexError instead of writing past it."""
    from fastdrop.kernels import dropout_cpu
    from fastdrop.mask import kernel_rng_args
    assert dropout_cpu.dropout_flat.targetoptions.get("parallel") is False
    x, out = np.ones(4096, np.float32), np.empty(4000, np.float32)
    with pytest.raises(IndexError):
        dropout_cpu.dropout_flat(x, out, *kernel_rng_args(1, 0, 0.5), np.float32(2))


@pytest.mark.parametrize("shape", [{1, 8}, {8: "a", 1: "b"}, (s for s in (2, 3))])
def test_dropout_mask_refuses_a_shape_without_order(shape):
    """A set, a dict or a generator is no shape (numpy refuses them): {1, 8} came out as (8, 1), in
    the set's hash order (a review)."""
    with pytest.raises(TypeError, match="shape must be a sequence of ints"):
        F.dropout_mask(shape, 0.3, 1)
    assert F.dropout_mask(np.array([2, 3]), 0.3, 1).shape == (2, 3)  # an array of ints is a sequence
    assert F.dropout_mask(torch.Size([2, 3]), 0.3, 1).shape == (2, 3)


def test_max_norm_takes_numpy_scalars_as_p_takes_them():
    """max_value and eps as numpy 0-d arrays or scalars, as p is taken (a 0-d max_value was refused:
    a review); the result is the Python number's."""
    w = np.random.default_rng(0).standard_normal((4, 6)) * 3
    want = F.max_norm_(w.copy(), 1.5, eps=1e-7)
    for c, eps in ((np.array(1.5), np.array(1e-7)), (np.float32(1.5), np.float64(1e-7))):
        np.testing.assert_array_equal(F.max_norm_(w.copy(), c, eps=eps), F.max_norm_(w.copy(), float(c), eps=float(eps)))
    np.testing.assert_array_equal(F.max_norm_(w.copy(), np.array(1.5), eps=np.array(1e-7)), want)


# ---- shapes torch allows and numpy does not (a review, 2026-12-07) -------------------------------
# More than 64 dims, and size-1 dims with strides past numpy's byte-stride range: every route that
# views tensor memory with numpy failed on them after the seed draw (numpy's ValueError, or an
# OverflowError). The mask follows the logical index, which size-1 dims do not change.

def _masked(x, p, seed, g=0):
    """x times the README's mask: one element per element (g = 0) or per index of the first g dims."""
    groups = math.prod(x.shape[:g]) if g else x.numel()
    keep = torch.from_numpy(fastdrop.dropout_mask((groups,), p, seed)).to(x.dtype)
    return (x.reshape(groups, -1) * keep[:, None] / (1 - p)).reshape(x.shape)


def _many_dims(*sizes, ones=60):
    return torch.randn(*sizes, *[1] * ones)


MANY_DIMS_CASES = {  # name: (x, the call on x, its seed, its group dims)
    "dropout transposed": (lambda: _many_dims(2, 3, 4).transpose(0, 1), lambda x: F.dropout(x, 0.5, seed=3), 3, 0),
    "dropout2d": (lambda: _many_dims(2, 3, 4).transpose(2, 0), lambda x: F.dropout2d(x, 0.5, seed=4), 4, 2),
    "drop_path, its groups after ones": (lambda: torch.randn(*[1] * 40, 3, 4, *[1] * 30).transpose(40, 41),
                                         lambda x: F.drop_path(x, 0.5, seed=5), 5, 1),
    "drop_path, grad": (lambda: _many_dims(2, 3, 4).transpose(0, 2).requires_grad_(),
                        lambda x: F.drop_path(x, 0.5, seed=6), 6, 1),
    "dropout, grad": (lambda: _many_dims(2, 3, 4).transpose(0, 2).requires_grad_(),
                      lambda x: F.dropout(x, 0.5, seed=7), 7, 0),
    "size-1 dim strided 2**61": (lambda: torch.as_strided(torch.randn(24), (4, 1, 6), (1, 2**61, 4)),
                                 lambda x: F.drop_path(x, 0.5, seed=8), 8, 1),
    "dropout1d, size-1 dim strided 2**61": (lambda: torch.as_strided(torch.randn(24), (4, 1, 6), (1, 2**61, 4)),
                                            lambda x: F.dropout1d(x, 0.5, seed=1), 1, 2),
}


@pytest.mark.parametrize("case", list(MANY_DIMS_CASES))
def test_shapes_past_numpy_get_the_mask_of_their_logical_index(case):
    make, call, seed, g = MANY_DIMS_CASES[case]
    x = make()
    y = call(x)
    assert y.shape == x.shape
    assert torch.equal(y.detach(), _masked(x.detach(), 0.5, seed, g))
    if x.requires_grad:
        gx, = torch.autograd.grad(y, x, torch.ones_like(y))
        assert torch.equal(gx, _masked(torch.ones_like(x), 0.5, seed, g))


# The same at the output cache's sizes (fastdrop/_alloc.py, MIN_BYTES: 32 MiB and more), whose
# blocks were cut with numpy's geometry: numpy's errors after the draw, forward and backward (a
# review). 8.4M float32 elements, 33.6 MiB.
BIG_GEOMETRY_CASES = {
    "dropout, 66 dims, grad": (lambda: torch.randn(4096, 2050, *[1] * 64).requires_grad_(),
                               lambda x: F.dropout(x, 0.5, seed=11), 11, 0),
    "dropout, 66 dims transposed": (lambda: torch.randn(2050, 4096, *[1] * 64).transpose(0, 1),
                                    lambda x: F.dropout(x, 0.5, seed=12), 12, 0),
    "dropout, size-1 dim strided 2**61": (lambda: torch.as_strided(torch.randn(4096 * 2050), (4096, 1, 2050),
                                                                   (1, 2**61, 4096)),
                                          lambda x: F.dropout(x, 0.5, seed=13), 13, 0),
    "drop_path, size-1 dim strided 2**61": (lambda: torch.as_strided(torch.randn(4096 * 2050), (4096, 1, 2050),
                                                                     (1, 2**61, 4096)),
                                            lambda x: F.drop_path(x, 0.5, seed=14), 14, 1),
}


@pytest.mark.parametrize("case", list(BIG_GEOMETRY_CASES))
def test_cached_outputs_take_geometries_past_numpy(case):
    make, call, seed, g = BIG_GEOMETRY_CASES[case]
    x = make()
    assert x.numel() * 4 >= _alloc.MIN_BYTES
    y = call(x)
    assert y.shape == x.shape and y.stride() == torch.empty_like(x).stride() and y._base is None
    assert torch.equal(y.detach(), _masked(x.detach(), 0.5, seed, g))
    if x.requires_grad:
        gx, = torch.autograd.grad(y, x, torch.ones_like(y))
        assert torch.equal(gx, _masked(torch.ones_like(x), 0.5, seed, g))


@pytest.mark.parametrize("where", ["out=", "in place", "seed drawn"])
def test_more_than_64_dims_out_and_in_place(where):
    x = _many_dims(2, 3, 4)
    ref = _masked(x, 0.5, 9)
    if where == "out=":
        out = torch.empty(3, 2, *x.shape[2:]).transpose(0, 1)  # a permuted out: the numpy-view route
        assert F.dropout(x, 0.5, seed=9, out=out) is out and torch.equal(out, ref)
    elif where == "in place":
        xi = x.transpose(0, 1).contiguous().transpose(0, 1)  # x's values, permuted memory
        assert F.dropout(xi, 0.5, seed=9, inplace=True) is xi and torch.equal(xi, ref)
    else:  # seed=None: the same draw as a contiguous x of the same shape
        xt = x.transpose(0, 1)
        torch.manual_seed(0)
        y = F.dropout(xt, 0.5)
        torch.manual_seed(0)
        assert torch.equal(y, F.dropout(xt.contiguous(), 0.5))


@pytest.mark.parametrize("dim,low", [(1, 1), (0, 0), ((0, 1), (0, 1)), (65, 3), (-1, -1)])
@pytest.mark.parametrize("lead", [1, 3])
def test_max_norm_past_64_dims_equals_the_squeezed_weight(dim, low, lead):
    """max_norm_ of a 66-dim weight equals max_norm_ of the same values with 4 dims: the dims it
    norms over are renumbered past the dropped size-1 dims, never taken as others."""
    w = torch.randn(lead, 4, *[1] * 63, 5) * 3
    small = w.reshape(lead, 4, 1, 5).clone()
    fastdrop.max_norm_(w, 1.0, dim=dim)
    fastdrop.max_norm_(small, 1.0, dim=low)
    assert torch.equal(w.reshape(small.shape), small)


def test_out_with_a_size_1_dim_strided_past_numpy():
    x = torch.randn(4, 1, 6)
    out = torch.as_strided(torch.empty(24), (4, 1, 6), (1, 2**61, 4))
    F.dropout(x, 0.5, seed=1, out=out)
    assert torch.equal(out, _masked(x, 0.5, 1))


def test_dropout_mask_names_numpy_dims_limit():
    with pytest.raises(ValueError, match="has 65 dims"):
        fastdrop.dropout_mask((1,) * 65, 0.5, 1)


def test_in_place_on_a_view_made_under_no_grad_gets_torchs_reason():
    """Such a view is a leaf: it was refused as one ("a leaf tensor that requires grad"), where torch
    says why (made in no_grad mode); before the draw either way."""
    a = torch.ones(3, 4, requires_grad=True) * 1
    with torch.no_grad():
        v = a[1:]
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="made in no_grad mode"):
        F.dropout(v, 0.5, inplace=True)
    assert torch.equal(state, torch.get_rng_state()) and torch.equal(v, torch.ones(2, 4))


@pytest.mark.parametrize("call", [lambda: F.dropout2d(torch.randn(2, 3, 4), 2.0),
                                  lambda: F.dropout3d(torch.randn(2, 3, 4), NAN),
                                  lambda: F.dropout2d(torch.randn(3), 0.5, training=2)])
def test_bad_arguments_refused_before_the_rank_warnings(call):
    """torch's dropout2d/3d raise for a bad p without warning about the rank first."""
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises((ValueError, TypeError)):
            call()
    assert not caught
