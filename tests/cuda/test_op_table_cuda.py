"""Every op of tests/op_table.py on CUDA device arrays (Numba's simulator) against the numpy path:
the same kernel contract, so the same masks; values to the dtype's rounding (the dense products
run in a different summation order). Ops that take no device arrays refuse them with a TypeError
before drawing a seed."""
import numpy as np
import pytest
from numba import cuda

import fastdrop
from fastdrop import _seeds
from op_table import CASES, numpy_operands

pytestmark = pytest.mark.cudasim
DEVICE_ARRAY_OPS = [n for n in CASES if "matmul" not in n and "_grad_" not in n]


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("name", DEVICE_ARRAY_OPS)
def test_device_arrays_match_numpy(name, dtype, tol):
    case = CASES[name]
    ops = numpy_operands(case, dtype)
    ref = case.call(*ops, seed=7, offset=2**33 + 1)
    got = case.call(*(cuda.to_device(a) for a in ops), seed=7, offset=2**33 + 1).copy_to_host()
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(got == 0, ref == 0)  # the same mask
    np.testing.assert_allclose(got, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("name", [n for n in CASES if n not in DEVICE_ARRAY_OPS])
def test_other_ops_refuse_device_arrays_before_the_seed_draw(name):
    case = CASES[name]
    ops = tuple(cuda.to_device(a) for a in numpy_operands(case))
    state = _seeds._numpy_source.bit_generator.state
    with pytest.raises(TypeError):
        case.call(*ops)
    assert _seeds._numpy_source.bit_generator.state == state


@pytest.mark.parametrize("name", [n for n in DEVICE_ARRAY_OPS if CASES[n].inplace])
def test_inplace_on_device_arrays(name):
    case = CASES[name]
    x = numpy_operands(case, np.float32)[0]
    d = cuda.to_device(x)
    assert case.call(d, seed=3, inplace=True) is d
    np.testing.assert_allclose(d.copy_to_host(), case.call(x, seed=3), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in DEVICE_ARRAY_OPS if len(CASES[n].shapes) > 1])
def test_dense_ops_take_a_1d_x(name):
    """A 1-D x (one example, no batch dim), as numpy and torch take it: the launchers got it
    unreshaped and failed inside the kernel (IndexError on its shape)."""
    case = CASES[name]
    ops = numpy_operands(case, np.float64)
    x1 = ops[0].reshape(-1, ops[0].shape[-1])[0]
    ref = case.call(x1, *ops[1:], seed=7)
    got = case.call(cuda.to_device(x1), *(cuda.to_device(a) for a in ops[1:]), seed=7).copy_to_host()
    assert got.shape == ref.shape
    np.testing.assert_allclose(got, ref, rtol=1e-12, atol=1e-12)
