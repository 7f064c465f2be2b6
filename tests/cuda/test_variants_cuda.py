"""CUDA max-norm against the CPU path (tiny shapes: the simulator is slow); dropout_matmul takes no
device arrays (on torch CUDA tensors it is the mask kernel + cuBLAS)."""
import numpy as np
import pytest
from numba import cuda

import fastdrop
from fastdrop.kernels import variants_cuda as K

pytestmark = pytest.mark.cudasim


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("shape", [(7, 11), (1, 300), (20, 3), (3, 0)])
def test_max_norm_rows_match_cpu(rng, dtype, tol, shape):
    w = (rng.standard_normal(shape) * 2).astype(dtype)
    # 0.999: no row sits on the boundary, where summation order decides in or out
    c = 0.999 * float(np.median(np.linalg.norm(w, axis=1))) if w.size else 1.0
    expected = w.copy()
    fastdrop.max_norm_(expected, c)
    d = cuda.to_device(w)
    K.max_norm_device(d, c, 1e-7)
    np.testing.assert_allclose(d.copy_to_host(), expected, rtol=tol, atol=tol)


def test_max_norm_array_on_a_device_array(rng):
    w = rng.standard_normal((4, 3, 2, 2)) * 3
    expected = w.copy()
    fastdrop.max_norm_(expected, 1.5, dim=(1, 2, 3))
    d = cuda.to_device(w)
    fastdrop.max_norm_(d, 1.5, dim=(1, 2, 3))
    np.testing.assert_allclose(d.copy_to_host(), expected, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="trailing"):
        fastdrop.max_norm_(d, 1.5, dim=0)


@pytest.mark.parametrize("shape, dim", [((4, 6), 1), ((3, 4, 5), (1, 2))])
def test_max_norm_float16_device_array_rounds_once_like_numpy(rng, shape, dim):
    """float16 device arrays are constrained in float32 and rounded once, as numpy and torch do
    (the kernel on float16 data rounded the scale to float16 first: 1 ulp off on some rows)."""
    w = (rng.standard_normal(shape) * 3).astype(np.float16)
    expected = w.copy()
    fastdrop.max_norm_(expected, 2.0, dim=dim)
    d = cuda.to_device(w)
    fastdrop.max_norm_(d, 2.0, dim=dim)
    np.testing.assert_array_equal(d.copy_to_host().view(np.uint16), expected.view(np.uint16))


def test_dropout_matmul_refuses_device_arrays():
    a = cuda.to_device(np.ones((2, 3)))
    with pytest.raises(TypeError, match="torch.as_tensor"):
        fastdrop.dropout_matmul(a, a, 0.5, seed=1)
