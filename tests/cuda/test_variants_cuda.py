"""CUDA kernels of the dropout family against the CPU path (tiny shapes: the simulator is slow)."""
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
    K.max_norm_array(d, 1.5, [1, 2, 3], 1e-7)
    np.testing.assert_allclose(d.copy_to_host(), expected, rtol=1e-13, atol=1e-13)
    with pytest.raises(ValueError, match="trailing"):
        K.max_norm_array(d, 1.5, [0], 1e-7)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("a_shape, b_shape", [((2, 5, 7), (2, 7, 3)), ((1, 17, 18), (1, 18, 2)),
                                              ((3, 4, 5), (1, 5, 6)), ((1, 3, 4), (2, 4, 2))])
@pytest.mark.parametrize("p, seed, offset", [(0.3, 7, 0), (0.5, 2**40 + 3, 2**33 + 1)])
def test_dropout_matmul_matches_cpu(rng, dtype, tol, a_shape, b_shape, p, seed, offset):
    a = rng.standard_normal(a_shape).astype(dtype)
    b = rng.standard_normal(b_shape).astype(dtype)
    a_batched, b_batched = a_shape[0] > 1 or b_shape[0] == 1, b_shape[0] > 1 or a_shape[0] == 1
    G = max(a_shape[0], b_shape[0])
    out = cuda.device_array((G, a_shape[1], b_shape[2]), dtype)
    scale = 1 / (1 - p)
    K.dropout_matmul_device(cuda.to_device(a), cuda.to_device(b), out, a_batched, b_batched,
                            p, seed, offset, scale)
    a_cpu = a if a_batched else a[0]
    b_cpu = b if b_batched else b[0]
    expected = fastdrop.dropout_matmul(a_cpu, b_cpu, p, seed=seed, offset=offset)
    np.testing.assert_allclose(out.copy_to_host(), np.broadcast_to(expected, out.shape), rtol=tol, atol=tol)
