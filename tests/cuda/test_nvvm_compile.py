"""Every CUDA kernel compiles for the real target and assembles without spills, without a GPU.

The simulator runs kernels as Python and accepts code the CUDA target rejects (a shared-array size
computed in the kernel, say), and it has no GPU to catch it. scripts/cuda_kernel_report.py compiles
each kernel of every `*_cuda` module for every argument-type specialization the launchers use
(its `signatures()` table: a kernel without an entry fails here instead of being skipped) through
Numba -> NVVM -> PTX for sm_80 (A100) and sm_90 (H100/H200), in a subprocess without the
simulator, then runs `ptxas -v` on each PTX. This test fails on a kernel without signatures, a
failed compile or assembly, and on any spill or local memory (stack frame, lmem) except the
(kernel, variant, arch) listed in KNOWN_SPILLS (strict xfails: a fixed kernel must leave the list).
Registers, shared memory and occupancy go to docs/cuda_kernels.md (regenerate with
`python scripts/cuda_kernel_report.py --doc docs/cuda_kernels.md`); nothing is compared with it.

Toolchain: libnvvm, libdevice, ptxas (pip: nvidia-cuda-nvcc-cu12), libnvrtc (nvidia-cuda-nvrtc-cu12)
and libcudart (nvidia-cuda-runtime-cu12; numba-cuda's compiler loads it on import), installed by the
`ci` extra (scripts/setup.sh installs it; by hand: `pip install -e ".[ci]"`); a
CUDA toolkit (CUDA_HOME or the system's) works too, FASTDROP_PTXAS=path picks a ptxas. Where the
toolchain is missing the test skips, except in CI (CI=true), where it fails: the gate cannot
silently vanish.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.cudasim

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "cuda_kernel_report.py"

# (kernel, variant, arch) that spill or use local memory today, accepted until their kernel is fixed.
# Each is a strict xfail of test_known_spill: when the kernel stops spilling the test fails, and
# the entry must go. Empty the list, don't grow it.
KNOWN_SPILLS = []

# The kernels known when this test was written: the enumeration of the *_cuda modules must find
# at least these (a broken enumeration must not pass by compiling nothing).
EXPECTED_KERNELS = {
    "dropout_cuda.dropout_flat", "dropout_cuda.keep_mask", "dropout_cuda.apply_group_mask",
    "dropout_cuda.dropout_flat_bf16", "dropout_cuda.apply_group_mask_bf16", "dropout_cuda.scale",
    "dropout_cuda.dropout_transposed", "linear_cuda.masked_gemm", "linear_cuda.sample_gemm",
    "linear_cuda.column_sums", "variants_cuda.max_norm_rows", "sample_cuda.sample_dot",
    "sample_cuda.sample_axpy", "sample_cuda.sum_splits",
}
ARCHS = ("sm_80", "sm_90")


def _in_ci():
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def _script_module():
    """scripts/cuda_kernel_report.py as a module (for its pure helpers; importing it loads no numba)."""
    spec = importlib.util.spec_from_file_location("cuda_kernel_report", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cuda-kernels")
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_CACHE_DIR"] = str(tmp / "numba-cache")  # never next to the sources (cache=True kernels)
    out = tmp / "report.json"
    res = subprocess.run([sys.executable, str(SCRIPT), "--json", str(out), "--workdir", str(tmp)],
                         capture_output=True, text=True, env=env, timeout=900, cwd=ROOT)
    missing = [line for line in res.stdout.splitlines() if line.startswith("TOOLCHAIN-MISSING")]
    if missing:
        msg = (f"CUDA compile toolchain missing: {missing[0]} (pip install -e '.[ci]' installs "
               f"nvidia-cuda-nvcc-cu12, nvidia-cuda-nvrtc-cu12 and nvidia-cuda-runtime-cu12)")
        if _in_ci():
            pytest.fail(msg + "; CI=true: the PTX/ptxas gate must run in CI", pytrace=False)
        pytest.skip(msg)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return dict(json.loads(out.read_text()), ptx_dir=str(tmp / "ptx"))


def _row_key(row):
    return (row["kernel"], row["variant"], row["arch"])


def _describe(row):
    return (f"{row['kernel']} [{row['variant']}] {row['arch']}: {row['spill_stores']} B spill stores, "
            f"{row['spill_loads']} B spill loads, {row['stack']} B stack frame, {row['lmem']} B lmem, "
            f"{row['registers']} registers")


def test_every_kernel_compiles_for_sm80_and_sm90(report):
    assert not report["missing"], (
        f"kernels without signatures (add them to signatures() / launch_threads() in "
        f"scripts/cuda_kernel_report.py): {report['missing']}")
    assert not report["errors"], "\n".join(report["errors"])
    assert EXPECTED_KERNELS <= set(report["kernels"]), report["kernels"]
    done = {}
    for row in report["rows"]:
        done.setdefault(row["kernel"], set()).add(row["arch"])
        assert row["registers"] > 0, row
    for name in report["kernels"]:
        assert done.get(name) == set(ARCHS), f"{name}: assembled for {sorted(done.get(name, ()))}"


def test_no_spills_or_local_memory(report):
    known = {tuple(k) for k in KNOWN_SPILLS}
    bad = [_describe(r) for r in report["rows"]
           if _script_module().is_bad(r) and _row_key(r) not in known]
    assert not bad, "spills or local memory (fix the kernel; KNOWN_SPILLS only for accepted ones):\n" + \
        "\n".join(bad)


# Kernels that sum in float64 on purpose for float32/half data (max-norm's sum of squares, as the
# CPU path does).
FLOAT64_ACCUMULATORS = {"variants_cuda.max_norm_rows"}
F64_ARITHMETIC = re.compile(r"^\s*(add|sub|mul|fma|div|cvt)[.\w]*\.f64\b", re.M)


def test_no_double_precision_arithmetic_in_float32_and_half_kernels(report):
    """Numba types `float32 * int` as float64, so a zero written `scale * 0` makes a float32
    kernel accumulate in double precision (half-rate adds and conversions in the inner loop; it
    happened in kernels/sample_cuda.py). The simulator computes with numpy scalars, which stay
    float32, so only the PTX shows it: no f64 arithmetic in any specialization but float64's."""
    bad = []
    for path in sorted(Path(report["ptx_dir"]).glob("*.ptx")):
        module, kernel, variant = path.name.split(".")[:3]
        if "float64" in variant or f"{module}.{kernel}" in FLOAT64_ACCUMULATORS:
            continue
        n = len(F64_ARITHMETIC.findall(path.read_text()))
        if n:
            bad.append(f"{path.name}: {n} f64 instructions")
    assert report["rows"] and not bad, "\n".join(bad)


def test_max_norm_sums_without_fused_multiply_adds(report):
    """The CPU kernels and the simulator round each square and each sum on its own; NVVM contracts
    a product and the add it feeds into one fma by default (7 fma.rn.f64 per specialization
    before 2026-12-07), a rounding the other two do not make. The squares are mul.rn, which is
    never contracted."""
    paths = sorted(Path(report["ptx_dir"]).glob("variants_cuda.max_norm_rows.*.ptx"))
    assert paths
    for path in paths:
        ptx = path.read_text()
        assert "fma.rn.f64" not in ptx and "mul.rn.f64" in ptx, path.name


class Spills(AssertionError):
    pass


if KNOWN_SPILLS:  # (an empty parametrization would show up as a skipped test)
    @pytest.mark.parametrize("case", [
        pytest.param(tuple(k), id="-".join(k), marks=pytest.mark.xfail(
            strict=True, raises=Spills, reason="known spill / local memory: remove it from KNOWN_SPILLS"))
        for k in KNOWN_SPILLS])
    def test_known_spill(report, case):
        rows = [r for r in report["rows"] if _row_key(r) == case]
        assert rows, f"KNOWN_SPILLS entry {case} matches no compiled kernel: remove it"
        if _script_module().is_bad(rows[0]):
            raise Spills(_describe(rows[0]))


PTXAS_SAMPLE = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN6cudapy4kern' for 'sm_90'
ptxas info    : Function properties for _ZN6cudapy4kern
    24 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, 16 bytes lmem, 4160 bytes smem, 412 bytes cmem[0]
ptxas info    : Function properties for _ZN6cudapy6helper
    16 bytes stack frame, 4 bytes spill stores, 4 bytes spill loads
"""

PTXAS_CLEAN = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_ZN6cudapy5scale' for 'sm_80'
ptxas info    : Function properties for _ZN6cudapy5scale
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 22 registers, 380 bytes cmem[0]
"""


def test_ptxas_parser_and_occupancy():
    """The gate is only as good as its parser: a sample with spills must read as spills."""
    m = _script_module()
    r = m.parse_ptxas(PTXAS_SAMPLE)
    assert (r["registers"], r["smem"], r["lmem"]) == (255, 4160, 16)
    assert (r["stack"], r["spill_stores"], r["spill_loads"]) == (40, 12, 16)
    assert m.is_bad(r)
    clean = m.parse_ptxas(PTXAS_CLEAN)
    assert not m.is_bad(clean) and (clean["registers"], clean["smem"]) == (22, 0)
    with pytest.raises(ValueError):
        m.parse_ptxas("ptxas info    : 0 bytes gmem\n")
    # 32 registers, 256 threads, no smem: 8 blocks = 64 warps, limited by threads
    assert m.occupancy(32, 0, 256, "sm_90")[:2] == (1.0, 8)
    # 96 registers -> 3072 per warp -> 21 warps -> 2 blocks of 8 warps = 16/64
    assert m.occupancy(96, 2304, 256, "sm_80") == (0.25, 2, "registers")
    # 100 KiB of smem per block: 1 block on sm_80 (164 KiB), 2 on sm_90 (228 KiB)
    assert m.occupancy(32, 100 * 1024, 256, "sm_80")[1:] == (1, "smem")
    assert m.occupancy(32, 100 * 1024, 256, "sm_90")[1:] == (2, "smem")
