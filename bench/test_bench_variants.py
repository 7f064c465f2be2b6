"""The dropout family's variants against the torch composite a user would otherwise write:
drop_path, max_norm_, mc_predict (T=32), dropout_matmul. Each is skipped until its API lands."""
import pytest

from bench_cases import all_cases, pytest_params, run_benchmark

CASES = [c for c in all_cases("full")
         if c.op.startswith(("drop_path", "max_norm", "mc_predict", "dropout_matmul"))]


@pytest.mark.parametrize("case, device, provider", pytest_params(CASES))
def test_variant(benchmark, case, device, provider):
    run_benchmark(benchmark, case, device, provider)
