"""dropout and dropout2d, forward and forward+backward: fastdrop.nn vs torch.nn vs the copy floor.
The full matrix: shapes 64x512 .. 4096x4096 and batch 8192, p in {0.1, 0.5, 0.9}, float32/float64."""
import pytest

from bench_cases import all_cases, pytest_params, run_benchmark

# (dropout_fwd*, dropout2d_*: not dropout_linear / dropout_matmul, which test_bench_linear and
# test_bench_variants run)
CASES = [c for c in all_cases("full") if c.op.startswith(("dropout_fwd", "dropout2d_"))]


@pytest.mark.parametrize("case, device, provider", pytest_params(CASES))
def test_dropout(benchmark, case, device, provider):
    run_benchmark(benchmark, case, device, provider)
