"""Every CUDA kernel, compiled as a GPU would compile it, without a GPU: Numba -> NVVM -> PTX -> ptxas.

For every kernel of every `fastdrop.kernels.*_cuda` module and every argument-type specialization
the launchers use (SIGNATURES below), for sm_80 (A100) and sm_90 (H100/H200):
  1. compile the kernel to PTX through NVVM (`numba.cuda.compile_ptx`, in this process, with the
     real CUDA target: never the simulator),
  2. assemble the PTX with `ptxas -v -arch=sm_XX` (in parallel) and read what ptxas reports:
     registers, spill stores/loads, stack frame, local memory (lmem), shared memory (smem),
  3. compute the theoretical occupancy at the block size the launcher uses (LAUNCH_THREADS).

    python scripts/cuda_kernel_report.py                      # table on stdout
    python scripts/cuda_kernel_report.py --doc docs/cuda_kernels.md
    python scripts/cuda_kernel_report.py --json build/cuda-kernels/report.json --check

`--check` exits 1 on a kernel without signatures, a failed compile, or any spill / local memory.
tests/cuda/test_nvvm_compile.py runs this script with --json and fails on the same things
(tests/cuda/test_nvvm_compile.py: KNOWN_SPILLS lists the accepted exceptions, as strict xfails).

Toolchain (no CUDA toolkit needed): the pip wheels nvidia-cuda-nvcc-cu12 (libnvvm, libdevice, ptxas),
nvidia-cuda-nvrtc-cu12 (libnvrtc) and nvidia-cuda-runtime-cu12 (libcudart: numba-cuda's compiler asks
it for the runtime version on import), installed by the `ci` extra. numba-cuda finds the libraries
in site-packages by itself (cuda.pathfinder: site-packages first, then conda, then
CUDA_HOME/CUDA_PATH, then the system); ptxas is found the same way (the wheel's
nvidia/cuda_nvcc/bin/ptxas first), or taken from FASTDROP_PTXAS. Without the toolchain the script
prints `TOOLCHAIN-MISSING <reason>` and exits 2.

Numba's on-disk cache (the kernels are `cache=True`) goes to NUMBA_CACHE_DIR, default
build/numba-cuda-report, never next to the sources; compile_ptx itself reads or writes no cache.
"""
import argparse
import concurrent.futures
import importlib
import inspect
import json
import os
import pkgutil
import re
import shutil
import subprocess
import sys
import time
import types as pytypes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

ARCHS = ((8, 0), (9, 0))  # A100, H100/H200
# Per SM (CUDA C Programming Guide, "Compute Capabilities"): the same register file, thread and
# block limits for 8.0 and 9.0; shared memory per SM differs (the per-block 1 KiB system
# reservation counts against it).
SM_LIMITS = {
    "sm_80": dict(regs=65536, threads=2048, blocks=32, smem=164 * 1024),
    "sm_90": dict(regs=65536, threads=2048, blocks=32, smem=228 * 1024),
}
REG_ALLOC_UNIT = 256       # registers are allocated per warp in units of 256
SMEM_ALLOC_UNIT = 128      # shared memory per block is rounded up to 128 bytes
SMEM_RESERVED = 1024       # per block, reserved by the system (cc >= 8.0)


class ToolchainMissing(Exception):
    pass


# ----------------------------------------------------------------------------- what to compile
def signatures():
    """{kernel name: [(variant label, argument types)]}: every specialization the launchers compile
    (fastdrop/_cuda.py, fastdrop/max_norm.py), and {factory name:
    [(variant, factory argument, argument types)]} for kernel factories (none today).

    The argument types are what Numba infers from the launch arguments: 1-D C-contiguous device
    arrays (`_flat`), the Philox words of kernel_rng_args (4 x uint64 key/offset words, the uint32
    threshold), Python ints -> int64, Python bools -> boolean, Python floats -> float64, numpy
    scalars keep their type. float16 data has a float32 scale (computed in float32); bfloat16
    torch tensors come as int16 views of their bits (the `_bf16` kernels, float32 scale); the dense
    layers' half types are converted to float32 before any kernel (device arrays by `scale` from
    float16 to float32 and back). Every Philox kernel's `seeds` is a 1-D int64 array (empty: the
    host seed; one element: the seed in device memory, CUDA-graph capture)."""
    from numba import types as T
    u64, u32, i64, b = T.uint64, T.uint32, T.int64, T.boolean
    rng = (i64[::1], u64, u64, u64, u64, u32)  # seeds, key_lo, key_hi, off_lo, off_hi, thr
    sigs = {"dropout_cuda.keep_mask": [("bool", (b[::1],) + rng)]}
    for dt, sc in ((T.float32, T.float32), (T.float64, T.float64), (T.float16, T.float32)):
        a = dt[::1]
        label = str(dt)
        sigs.setdefault("dropout_cuda.dropout_flat", []).append((label, (a, a) + rng + (sc,)))
        sigs.setdefault("dropout_cuda.apply_group_mask", []).append((label, (a, a, b[::1], i64, i64, sc)))
        sigs.setdefault("dropout_cuda.scale", []).append((label, (a, a, sc)))
        # A, R, L of the batched transpose (Python ints)
        sigs.setdefault("dropout_cuda.dropout_transposed", []).append(
            (label, (a, a, i64, i64, i64) + rng + (sc,)))
    # bfloat16 torch tensors go in as int16 views of their bits, with a float32 scale
    bf = T.int16[::1]
    sigs["dropout_cuda.dropout_flat_bf16"] = [("bfloat16 bits", (bf, bf) + rng + (T.float32,))]
    sigs["dropout_cuda.apply_group_mask_bf16"] = [("bfloat16 bits", (bf, bf, b[::1], i64, i64, T.float32))]
    # float16 CUDA device arrays into the dense layers: _cuda.astype converts them with `scale`
    sigs["dropout_cuda.scale"] += [("float16->float32", (T.float16[::1], T.float32[::1], T.float32)),
                                   ("float32->float16", (T.float32[::1], T.float16[::1], T.float32))]
    for dt in (T.float32, T.float64):
        m = dt[:, ::1]
        label = str(dt)
        # A, B, C, bias, has_bias, a_trans, b_trans, mask_on, rng..., scale
        sigs.setdefault("linear_cuda.masked_gemm", []).append(
            (label, (m, m, m, dt[::1], b, b, b, i64) + rng + (dt,)))
        # A, B, C, bias, has_bias, a_trans, b_trans, product, n_dim, o_dim, i_dim, rng..., scale
        sigs.setdefault("linear_cuda.sample_gemm", []).append(
            (label, (m, m, m, dt[::1], b, b, b, i64, i64, i64, i64) + rng + (dt,)))
        sigs.setdefault("linear_cuda.column_sums", []).append((label, (m, dt[::1])))
        d3 = dt[:, :, ::1]  # (splits, rows, cols): C as (1, rows, cols), or the split-K partials
        # x, W, dst, bias, has_bias, rng..., scale
        sigs.setdefault("sample_cuda.sample_dot", []).append((label, (m, m, d3, dt[::1], b) + rng + (dt,)))
        # P, Q, dst, p_trans, rows_are_n, out_dim, rng..., scale
        sigs.setdefault("sample_cuda.sample_axpy", []).append((label, (m, m, d3, b, b, i64) + rng + (dt,)))
        sigs.setdefault("sample_cuda.sum_splits", []).append((label, (d3, m, dt[::1], b, dt)))
        # the weight as a 2-D (rows, cols) view of a torch tensor: contiguous, transposed (dim=0 of
        # a 2-D weight) or strided; Python-float max_value and eps
        for layout, arr in (("C", dt[:, ::1]), ("F", dt[::1, :]), ("A", dt[:, :])):
            sigs.setdefault("variants_cuda.max_norm_rows", []).append(
                (f"{dt} {layout}", (arr, T.float64, T.float64)))
    # a float16 CUDA device array goes to max_norm_rows as it is (torch half tensors are upcast)
    sigs["variants_cuda.max_norm_rows"].append(("float16 C", (T.float16[:, ::1], T.float64, T.float64)))
    factory_sigs = {}
    return sigs, factory_sigs


def launch_threads():
    """Threads per block each kernel is launched with (the launchers' constants)."""
    from fastdrop.kernels import config, linear_cuda, sample_cuda, variants_cuda
    return {
        "dropout_cuda.dropout_flat": config.CUDA_THREADS,
        "dropout_cuda.keep_mask": config.CUDA_THREADS,
        "dropout_cuda.apply_group_mask": config.CUDA_THREADS,
        "dropout_cuda.dropout_flat_bf16": config.CUDA_THREADS,
        "dropout_cuda.dropout_transposed": config.CUDA_THREADS,
        "dropout_cuda.apply_group_mask_bf16": config.CUDA_THREADS,
        "dropout_cuda.scale": config.CUDA_THREADS,
        "linear_cuda.masked_gemm": linear_cuda.TILE * linear_cuda.TILE,
        "linear_cuda.sample_gemm": linear_cuda.TILE * linear_cuda.TILE,
        "linear_cuda.column_sums": config.CUDA_THREADS,
        "sample_cuda.sample_dot": sample_cuda.THREADS,
        "sample_cuda.sample_axpy": sample_cuda.THREADS,
        "sample_cuda.sum_splits": config.CUDA_THREADS,
        "variants_cuda.max_norm_rows": variants_cuda.MAX_NORM_THREADS,
    }


def find_kernels():
    """({name: kernel dispatcher}, {name: kernel factory}) of every *_cuda module: module-level
    kernels (not device functions) and factories (functions that define a kernel inside)."""
    import fastdrop.kernels
    import numba.cuda.dispatcher as dispatcher
    kernels, factories = {}, {}
    for info in sorted(pkgutil.iter_modules(fastdrop.kernels.__path__), key=lambda i: i.name):
        if not info.name.endswith("_cuda"):
            continue
        mod = importlib.import_module("fastdrop.kernels." + info.name)
        for name, obj in vars(mod).items():
            if isinstance(obj, dispatcher.CUDADispatcher) and not obj.targetoptions.get("device") \
                    and obj.py_func.__module__ == mod.__name__:
                kernels[info.name + "." + name] = obj
            elif inspect.isfunction(obj) and obj.__module__ == mod.__name__ and \
                    "cuda.jit" in inspect.getsource(obj):
                factories[info.name + "." + name] = obj
    return kernels, factories


# ----------------------------------------------------------------------------- toolchain
def find_ptxas():
    path = os.environ.get("FASTDROP_PTXAS")
    if path:
        if not os.access(path, os.X_OK):
            raise ToolchainMissing(f"FASTDROP_PTXAS={path} is not an executable")
        return path
    try:
        from cuda.pathfinder import find_nvidia_binary_utility
        path = find_nvidia_binary_utility("ptxas")
    except ImportError:  # an older cuda-pathfinder: the wheel's layout, then PATH
        path = None
        for d in sys.path:
            cand = os.path.join(d, "nvidia", "cuda_nvcc", "bin", "ptxas")
            if os.access(cand, os.X_OK):
                path = cand
                break
        path = path or shutil.which("ptxas")
    if not path:
        raise ToolchainMissing("ptxas not found (pip install nvidia-cuda-nvcc-cu12, or set FASTDROP_PTXAS)")
    return path


def _wheel_versions():
    """'nvidia-cuda-nvcc-cu12 12.9.86, ...' for the toolchain wheels installed here ('' if none)."""
    from importlib import metadata
    found = []
    for dist in ("nvidia-cuda-nvcc-cu12", "nvidia-cuda-nvrtc-cu12", "nvidia-cuda-runtime-cu12",
                 "nvidia-cuda-nvcc", "nvidia-nvvm", "nvidia-cuda-nvrtc", "nvidia-cuda-runtime", "cuda-bindings"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join(found)


def toolchain():
    """{nvvm, nvrtc, libdevice, ptxas: path, versions}; ToolchainMissing if a piece is missing."""
    try:
        import numba
        from numba.cuda.cudadrv import nvrtc, nvvm
        from numba.cuda.cuda_paths import get_cuda_paths
        nv = nvvm.NVVM()
        nvrtc_version = nvrtc._get_nvrtc_version()
        nvrtc.get_lowest_supported_cc()
        paths = get_cuda_paths()
        import numba_cuda
    except Exception as e:  # noqa: BLE001 - any failure to load the libraries means "missing"
        msg = str(e).splitlines()[0] if str(e) else ""
        raise ToolchainMissing(f"CUDA libraries (libnvvm, libnvrtc, libcudart): {type(e).__name__}: {msg}") from e
    ptxas = find_ptxas()
    res = subprocess.run([ptxas, "--version"], capture_output=True, text=True)
    ptxas_version = re.findall(r"release (\S+?),", res.stdout)
    info = lambda key: getattr(paths.get(key), "info", None)
    return {
        "toolkit": _wheel_versions(),
        "numba": numba.__version__,
        "numba_cuda": getattr(numba_cuda, "__version__", "?"),
        "nvvm": info("nvvm"), "nvvm_version": ".".join(map(str, nv.get_version())),
        "nvrtc": info("nvrtc"), "nvrtc_version": ".".join(map(str, nvrtc_version)),
        "libdevice": info("libdevice"),
        "ptxas": ptxas, "ptxas_version": ptxas_version[0] if ptxas_version else "?",
    }


# ----------------------------------------------------------------------------- ptxas
_NUM = r"(\d+)"


def parse_ptxas(text):
    """Per-kernel resources from `ptxas -v` output: registers, smem, cmem of the entry function;
    stack frame, spill stores/loads and lmem summed over every function in the PTX (a callee's
    local memory is the kernel's)."""
    res = dict(registers=None, smem=0, stack=0, spill_stores=0, spill_loads=0, lmem=0, functions=0)
    props = 0  # "N bytes stack frame, ..." lines seen: none would mean ptxas changed its format
    entry = None
    current = None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            entry = current = m.group(1)
            continue
        m = re.search(r"Function properties for (\S+)", line)
        if m:
            current = m.group(1)
            res["functions"] += 1
            continue
        m = re.search(_NUM + r" bytes stack frame, " + _NUM + r" bytes spill stores, " + _NUM +
                      r" bytes spill loads", line)
        if m:
            props += 1
            res["stack"] += int(m.group(1))
            res["spill_stores"] += int(m.group(2))
            res["spill_loads"] += int(m.group(3))
            continue
        m = re.search(r"Used " + _NUM + r" registers", line)
        if m:
            if current == entry:
                res["registers"] = int(m.group(1))
                s = re.search(_NUM + r" bytes smem", line)
                res["smem"] = int(s.group(1)) if s else 0
            lm = re.search(_NUM + r" bytes lmem", line)
            if lm:
                res["lmem"] += int(lm.group(1))
    if res["registers"] is None or not props:
        raise ValueError("no 'Used N registers' or 'bytes stack frame' line for the entry function "
                         "in the ptxas output (has its format changed?):\n" + text)
    return res


def occupancy(registers, smem, threads, arch):
    """Theoretical occupancy (resident warps / max warps per SM) at `threads` per block, and the
    limiting resource; the CUDA occupancy calculator's rules for cc 8.0/9.0."""
    lim = SM_LIMITS[arch]
    warps = -(-threads // 32)
    regs_per_warp = -(-max(registers, 1) * 32 // REG_ALLOC_UNIT) * REG_ALLOC_UNIT
    smem_per_block = -(-smem // SMEM_ALLOC_UNIT) * SMEM_ALLOC_UNIT + SMEM_RESERVED
    limits = {
        "threads": lim["threads"] // (warps * 32),
        "blocks": lim["blocks"],
        "registers": (lim["regs"] // regs_per_warp) // warps,
        "smem": lim["smem"] // smem_per_block,
    }
    blocks = min(limits.values())
    limiter = min(limits, key=lambda k: (limits[k], k != "threads"))
    return blocks * warps / (lim["threads"] // 32), blocks, limiter


# ----------------------------------------------------------------------------- the run
def run(workdir, jobs=None, log=print):
    """Compile and assemble everything; returns the report dict (see main for its use)."""
    tc = toolchain()
    from numba import cuda
    import numba.cuda.dispatcher as dispatcher
    kernels, factories = find_kernels()
    sigs, factory_sigs = signatures()
    threads = launch_threads()
    report = {"toolchain": tc, "kernels": sorted(set(kernels) | set(factories)), "missing": [],
              "errors": [], "rows": []}
    for name in sorted(set(kernels) - set(sigs)) + sorted(set(factories) - set(factory_sigs)):
        report["missing"].append(name)
    for name in sorted(set(kernels) | set(factories)):
        if name not in threads:
            report["missing"].append(name + " (no block size in LAUNCH_THREADS)")
    todo = []  # (kernel name, variant, python function, argument types)
    for name, kernel in sorted(kernels.items()):
        todo += [(name, label, kernel, sig) for label, sig in sigs.get(name, [])]
    for name, factory in sorted(factories.items()):
        todo += [(name, label, factory(arg), sig) for label, arg, sig in factory_sigs.get(name, [])]

    ptxdir = os.path.join(workdir, "ptx")
    os.makedirs(ptxdir, exist_ok=True)
    ptxas = tc["ptxas"]

    def assemble(path, arch):
        res = subprocess.run([ptxas, "-v", f"-arch={arch}", "-o", os.devnull, path],
                             capture_output=True, text=True)
        if res.returncode:
            raise RuntimeError(f"ptxas failed ({res.returncode}): {res.stderr[-2000:]}")
        return parse_ptxas(res.stdout + res.stderr)

    t0 = time.perf_counter()
    futures = []
    with concurrent.futures.ThreadPoolExecutor(jobs or os.cpu_count() or 2) as pool:
        for cc in ARCHS:
            arch = "sm_%d%d" % cc
            # Device functions ask the current device for its compute capability; there is none.
            dispatcher.get_current_device = lambda cc=cc: pytypes.SimpleNamespace(compute_capability=cc)
            for name, label, kernel, sig in todo:
                opts = {k: kernel.targetoptions[k] for k in ("fastmath", "lineinfo", "debug", "opt")
                        if kernel.targetoptions.get(k) is not None}
                try:
                    ptx, _ = cuda.compile_ptx(kernel.py_func, sig, cc=cc, **opts)
                    if f".target {arch}" not in ptx:
                        raise AssertionError(f"PTX for another target than {arch}")
                except Exception as e:  # noqa: BLE001 - reported per kernel
                    report["errors"].append(f"{name} [{label}] {arch}: compile: {type(e).__name__}: "
                                            f"{str(e)[:1500]}")
                    continue
                path = os.path.join(ptxdir, f"{name}.{label.replace(' ', '_')}.{arch}.ptx")
                with open(path, "w") as f:
                    f.write(ptx)
                futures.append(((name, label, arch), pool.submit(assemble, path, arch)))
        compiled = time.perf_counter()
        for (name, label, arch), fut in futures:
            try:
                r = fut.result()
            except Exception as e:  # noqa: BLE001
                report["errors"].append(f"{name} [{label}] {arch}: ptxas: {e}")
                continue
            occ = None
            if name in threads:
                occ, blocks, limiter = occupancy(r["registers"], r["smem"], threads[name], arch)
                r.update(block=threads[name], occupancy=occ, blocks_per_sm=blocks, limiter=limiter)
            report["rows"].append(dict(kernel=name, variant=label, arch=arch, **r))
    report["seconds"] = {"compile": round(compiled - t0, 1),
                         "total": round(time.perf_counter() - t0, 1)}
    report["bad"] = [f"{r['kernel']} [{r['variant']}] {r['arch']}" for r in report["rows"] if is_bad(r)]
    return report


def is_bad(row):
    """Any spill or local memory (stack frame, lmem)."""
    return bool(row["spill_stores"] or row["spill_loads"] or row["stack"] or row["lmem"])


# ----------------------------------------------------------------------------- the table
def markdown(report):
    tc = report["toolchain"]
    out = [
        "# CUDA kernels: registers, spills, shared memory, occupancy",
        "",
        "Generated by `python scripts/cuda_kernel_report.py --doc docs/cuda_kernels.md` (no GPU needed:",
        "Numba -> NVVM -> PTX, then `ptxas -v`); do not edit by hand. Every kernel of every",
        "`kernels/*_cuda.py` module, for every argument-type specialization the launchers use",
        "(`fastdrop/_cuda.py`, `fastdrop/max_norm.py`), for sm_80 (A100) and",
        "sm_90 (H100/H200). `tests/cuda/test_nvvm_compile.py` runs the same compile in CI and fails on any",
        "spill or local memory; it compares nothing with this table (the numbers change with the",
        "toolchain and the kernels).",
        "",
        f"Toolchain: numba {tc['numba']}, numba-cuda {tc['numba_cuda']}, libNVVM {tc['nvvm_version']}, "
        f"NVRTC {tc['nvrtc_version']}, ptxas {tc['ptxas_version']}"
        + (f" (wheels: {tc['toolkit']})." if tc.get("toolkit") else "."),
        "",
        "Columns: dtype / layout: the data's dtype (float16 kernels compute in float32: float32 scale),",
        "for max_norm_rows also the layout Numba types the 2-D weight view with (C: contiguous, F: a",
        "transposed view, A: strided); registers per thread; spill stores / loads (bytes); stack frame",
        "and lmem: local memory in bytes (ptxas 12+ reports it as the stack frame; any spill or local",
        "memory fails the test); smem: static shared memory per block",
        "(bytes); threads: the launchers' block size; occupancy: theoretical resident warps / 64 per SM",
        "at that block size (65536 registers per SM, allocated per warp in units of 256; 2048 threads, 32 blocks,",
        "164 KiB (sm_80) / 228 KiB (sm_90) shared memory per SM with 1 KiB reserved per block), and the",
        "resource that limits it.",
        "",
        "Machine code, checked by hand (not by this script) on 2026-12-05 with nvdisasm 13.5 (pip",
        "wheel nvidia-cuda-nvdisasm) on ptxas's sm_90 cubins: the Philox rounds' 64-bit multiplies in",
        "the PTX (`mul.lo.s64` of zero-extended 32-bit words, from the uint64 source shared with the",
        "CPU) are narrowed by ptxas to `IMAD.WIDE.U32`, two per round, 20 per Philox call, and the key",
        "schedule runs on the uniform datapath (`UIADD3`); a 32-bit rewrite of the source would not",
        "change the machine code. The test's other PTX gate: no f64 arithmetic in any float32 or half",
        "specialization (max_norm_rows excepted: it sums squares in float64 on purpose).",
        "",
        "| kernel | dtype / layout | arch | registers | spill st/ld | stack | lmem | smem | threads | occupancy | limited by |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in sorted(report["rows"], key=lambda r: (r["kernel"], r["arch"], r["variant"])):
        occ = f"{r['occupancy']:.0%}" if r.get("occupancy") is not None else "?"
        flag = " **(!)**" if is_bad(r) else ""
        out.append(f"| `{r['kernel']}` | {r['variant']} | {r['arch']} | {r['registers']} | "
                   f"{r['spill_stores']}/{r['spill_loads']}{flag} | {r['stack']} | {r['lmem']} | "
                   f"{r['smem']} | {r.get('block', '?')} | {occ} | {r.get('limiter', '?')} |")
    out.append("")
    if report["bad"]:
        out += ["Spills or local memory (the test's KNOWN_SPILLS lists them as strict xfails):", ""]
        out += [f"- {b}" for b in report["bad"]] + [""]
    if report["missing"] or report["errors"]:
        out += ["Not compiled:", ""]
        out += [f"- {m}: no signature" for m in report["missing"]]
        out += [f"- {e.splitlines()[0]}" for e in report["errors"]] + [""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--doc", help="write the markdown table here (e.g. docs/cuda_kernels.md)")
    ap.add_argument("--json", help="write the full report (JSON) here")
    ap.add_argument("--workdir", default=os.path.join(ROOT, "build", "cuda-kernels"),
                    help="where the PTX files go (default build/cuda-kernels)")
    ap.add_argument("--jobs", type=int, default=None, help="parallel ptxas processes (default: CPUs)")
    ap.add_argument("--check", action="store_true",
                    help="exit 1 on a kernel without signatures, a failed compile, or a spill")
    args = ap.parse_args(argv)
    # Before numba is imported (only run() imports it): the real CUDA target, not the simulator, and
    # no cache files in the source tree.
    os.environ.pop("NUMBA_ENABLE_CUDASIM", None)
    os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(ROOT, "build", "numba-cuda-report"))
    if "numba" in sys.modules:
        raise RuntimeError("cuda_kernel_report.main must run before numba is imported")
    try:
        report = run(args.workdir, args.jobs)
    except ToolchainMissing as e:
        print("TOOLCHAIN-MISSING", e)
        return 2
    text = markdown(report)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    if args.doc:
        with open(args.doc, "w") as f:
            f.write(text)
    if not (args.json or args.doc):
        print(text)
    n = len(report["rows"])
    print(f"DONE {n} compiled+assembled, {len(report['missing'])} missing, {len(report['errors'])} errors, "
          f"{len(report['bad'])} with spills/lmem, {report['seconds']['total']} s")
    if args.check and (report["missing"] or report["errors"] or report["bad"]):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
