"""Fused dense layers, forward+backward: DropoutLinear vs Dropout + Linear, DropConnect (one mask per
batch, one per example) vs the torch composites, each against a bare nn.Linear floor. Skipped while
fastdrop.dropout_linear / dropconnect_linear have not landed."""
import pytest

from bench_cases import all_cases, pytest_params, run_benchmark

CASES = [c for c in all_cases("full") if c.op.startswith(("dropout_linear", "dropconnect"))]


@pytest.mark.parametrize("case, device, provider", pytest_params(CASES))
def test_dense(benchmark, case, device, provider):
    run_benchmark(benchmark, case, device, provider)
