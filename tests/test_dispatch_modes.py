"""Dispatch modes that change what an allocation returns: fastdrop's kernel routes allocate their
outputs and copies past the thread's modes (`_torch_state.past_modes`), because the kernels write
through the address. A mode that handed back a wrapper subclass without memory from
torch.empty_like (or a clone), or a float16 tensor for a float32 request, made the kernels write
through address 0 or past the buffer's end: a segfault or a heap overflow (a review, 2026-12-07).
Every op of the table, small and parallel, and the modules' training lanes with and without
autograd give the bits they give without the mode. Each mode runs in a child process (this file
run as a script: a crash fails the test, not the run), also as the first fastdrop call of its
process."""
import os
import subprocess
import sys

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastdrop.nn as fnn

A = torch.ops.aten
# the ops whose results a Wrapping mode replaces: allocations and copies
MADE = {A.empty_like.default, A.empty.memory_format, A.empty_strided.default, A.new_empty.default,
        A.clone.default, A._to_copy.default, A.empty_permuted.default}
ARMED = [True]  # the modules' inputs and parameters are made with the mode disarmed


class Wrapper(torch.Tensor):
    """A wrapper subclass: no memory of its own (data_ptr 0), its element inside."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, dtype=elem.dtype, strides=elem.stride())

    def __init__(self, elem):
        self.elem = elem

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        un = lambda t: t.elem if isinstance(t, Wrapper) else t  # noqa: E731
        return func(*[un(a) for a in args], **{k: un(v) for k, v in (kwargs or {}).items()})


class Wrapping(TorchDispatchMode):
    """Every allocation or copy comes back as a Wrapper."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        return Wrapper(out) if ARMED[0] and func in MADE and isinstance(out, torch.Tensor) else out


class Narrowing(TorchDispatchMode):
    """empty_like gives float16 whatever float32 was asked for: half the bytes."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is A.empty_like.default and out.dtype == torch.float32:
            return torch.empty(out.shape, dtype=torch.float16)
        return out


def _calls():
    """(name, variant, call) for every op of the table (small; one-operand ops also above the
    parallel threshold) and the modules' lanes (no grad and forward + backward)."""
    from op_table import CASES, operands
    for name, case in CASES.items():
        for size in (1, 300):
            ops = operands(case, dtype=torch.float32)
            if size > 1 and len(ops) > 1:
                continue
            if size > 1:
                ops = (ops[0].repeat(size, *[1] * (ops[0].dim() - 1)),)
            yield name, size, lambda ops=ops, case=case: case.call(*ops, seed=5, offset=2)
    for name in ("dropout_linear", "dropconnect_sample", "dropout_matmul"):  # half: float32 copies
        ops = tuple(o.bfloat16() for o in operands(CASES[name], dtype=torch.float32))
        yield name, "bfloat16", lambda ops=ops, case=CASES[name]: case.call(*ops, seed=5, offset=2)
    modules = [("Dropout", lambda: fnn.Dropout(0.3), (64, 512), False),
               ("Dropout2d", lambda: fnn.Dropout2d(0.3), (8, 16, 8, 8), False),
               ("Dropout2d channels_last", lambda: fnn.Dropout2d(0.3), (8, 16, 8, 8), True),
               ("DropPath", lambda: fnn.DropPath(0.3), (32, 8, 64), False),
               ("DropoutLinear", lambda: fnn.DropoutLinear(64, 8, p=0.3), (16, 64), False)]
    for name, make, shape, channels_last in modules:
        for grad in (False, True):
            def run(make=make, shape=shape, grad=grad, channels_last=channels_last):
                ARMED[0] = False
                torch.manual_seed(0)
                m, x = make(), torch.randn(shape)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                x.requires_grad_(grad)
                ARMED[0] = True
                torch.manual_seed(1)
                y = m(x)
                out = (y, torch.autograd.grad(y.square().sum(), x)[0]) if grad else (y,)
                ARMED[0] = False
                return out
            yield name, grad, run


def main(mode_name, when):
    import faulthandler
    faulthandler.enable()
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    mode = {"wrapping": Wrapping, "narrowing": Narrowing}[mode_name]
    bad = []
    for name, variant, run in _calls():
        want = None if when == "first" else run()  # ("first": fastdrop's first calls inside the mode)
        with mode():
            got = run()
        if want is None:
            continue
        want, got = (want if isinstance(want, tuple) else (want,)), (got if isinstance(got, tuple) else (got,))
        for w, g in zip(want, got):
            if type(g) is not torch.Tensor or g.dtype != w.dtype or not torch.equal(w.detach(), g.detach()):
                bad.append((name, variant))
    print("BAD", bad)
    print("DONE")


class _Sub(torch.Tensor):
    pass


class _Passing(torch.overrides.TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def test_a_subclass_input_keeps_its_type_under_a_torch_function_mode():
    """The modes are lifted for fastdrop's allocations, not a subclass's own __torch_function__:
    under `with torch.device(...)` (a torch-function mode) or any other, a subclass input's
    output keeps its type, as without the mode and as torch's dropout gives it (torch's
    DisableTorchFunction, used first, turned subclasses off too: plain tensors came back)."""
    import fastdrop
    x = torch.randn(64, 512).as_subclass(_Sub)
    x2 = torch.randn(8, 16, 8, 8).contiguous(memory_format=torch.channels_last).as_subclass(_Sub)
    w = torch.randn(5, 512)
    calls = [lambda: fastdrop.dropout(x, 0.3, seed=1), lambda: fastdrop.dropout2d(x2, 0.3, seed=1),
             lambda: fastdrop.dropout(torch.cat([x, x]), 0.3, seed=1),
             lambda: fastdrop.dropout_linear(x, w.as_subclass(_Sub), None, 0.3, seed=1)]
    want = [call() for call in calls]
    for mode in (torch.device("cpu"), _Passing()):
        with mode:
            for call, w_ in zip(calls, want):
                got = call()
                assert type(got) is type(w_) is _Sub and torch.equal(got, w_)


@pytest.mark.parametrize("mode, when", [("wrapping", "later"), ("narrowing", "later"), ("wrapping", "first")])
def test_modes_that_change_allocations_leave_the_results_alone(mode, when):
    res = subprocess.run([sys.executable, os.path.abspath(__file__), mode, when], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0 and "BAD []" in res.stdout and "DONE" in res.stdout, \
        (res.returncode, res.stdout[-2000:], res.stderr[-3000:])


if __name__ == "__main__":
    main(*sys.argv[1:])
