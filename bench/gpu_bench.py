"""The GPU benchmark (issue 10): fastdrop's torch-CUDA route against torch's own ops on one GPU.

    python3 bench/gpu_bench.py                  # the full run, < 3 min on an H100/H200 (--budget-s)
    python3 bench/gpu_bench.py --tiny           # tiny shapes on the GPU (a smoke run, seconds)
    python3 bench/gpu_bench.py --dry-run        # no GPU needed: tiny shapes on CPU tensors, timed
                                                # with perf_counter, files into a temp directory

scripts/gpu_check.sh runs it after the GPU tests. Sections (--only to pick some):
  dropout      fastdrop.dropout vs torch.nn.functional.dropout, forward and forward+backward, at
               2^20 .. 2^26 float32 and bfloat16 elements, with the device-copy floor (y.copy_(x),
               one copy per read+write pass) and its bandwidth in GB/s;
  dense        fastdrop.nn.DropoutLinear / DropConnectLinear forward+backward vs the torch composite
               (nn.Dropout + nn.Linear; F.linear(x, F.dropout(W))) and a bare nn.Linear, at
               8192x4096->4096 and 1024x1024->1024, float32 and bfloat16;
  per_sample   per-sample DropConnect (fastdrop.dropconnect_linear(per_sample=True)) vs torch's
               materialized composite (bernoulli mask N x out x in, einsum) where that fits in
               memory; fastdrop alone where it does not;
  matmul       fastdrop.dropout_matmul vs torch.matmul(F.dropout(a), v), forward+backward;
  layouts      dropout, dropout2d and drop_path forward on a channels_last (N, C, H, W) tensor vs
               torch's (F.dropout, F.dropout2d, timm's x * bernoulli mask), with the copy floor.

How it measures: CUDA events on the current stream around `number` back-to-back calls (so the
GPU time of a call, or the host time where the host cannot keep the GPU busy; `host_s` is the
time the host took to enqueue them); every provider is warmed up first (NVVM compile, cuBLAS
handles, the caching allocator); providers are interleaved inside every round (A B F, F B A, ...);
the median over rounds is reported with the interquartile range. seed=None everywhere (each call
draws its seed, as in training). GB/s count the useful bytes (read x, write y; backward: read the
gradient, write grad_x), TFLOP/s 2*N*in*out per GEMM (3 GEMMs for forward+backward).

Writes bench/results/<gpu>-<date>.json (every sample, the machine, the versions), .md (the
tables and the issue's GPU targets, pass/fail) and .png (if matplotlib imports). --dry-run and
--tiny never write into bench/results unless --out-dir says so.
"""
import argparse
import datetime
import gc
import json
import math
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
T0 = time.perf_counter()
SECTIONS = ("dropout", "dense", "per_sample", "matmul", "layouts")
P = 0.5  # drop probability of every row (torch's fused dropout costs the same for any p)
MIB = 1 << 20


def log(msg):
    el = time.perf_counter() - T0
    print(f"[gpu_bench {int(el // 60):2d}:{int(el % 60):02d}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ plan
def plan(mode):
    """Rows in priority order (the issue's target rows first), as dicts: section, op, shape,
    dtype. mode: "full" (GPU), "tiny" (GPU smoke) or "dry" (CPU, no GPU)."""
    small = mode != "full"
    sizes = [1 << 10, 1 << 12] if small else [1 << 26, 1 << 24, 1 << 22, 1 << 20]
    dense = [(16, 24, 8), (8, 8, 8)] if small else [(8192, 4096, 4096), (1024, 1024, 1024)]
    per_sample = [(8, 16, 12), (64, 64, 64), (32, 128, 128)] if small else \
        [(256, 1024, 1024), (64, 1024, 1024), (1024, 2048, 2048), (8192, 4096, 4096)]
    matmul = [(1, 2, 16, 8)] if small else [(8, 16, 1024, 64)]
    layouts = [(2, 8, 4, 6)] if small else [(64, 256, 56, 56)]
    rows = []
    for dtype in ("float32", "bfloat16"):
        for n in sizes:
            for op in ("dropout_fwd", "dropout_fwd_bwd"):
                rows.append(dict(section="dropout", op=op, shape=(n,), dtype=dtype))
        for shape in dense:
            for op in ("dropout_linear_fwd_bwd", "dropconnect_fwd_bwd"):
                rows.append(dict(section="dense", op=op, shape=shape, dtype=dtype))
        if dtype == "float32":
            rows += [dict(section="per_sample", op="dropconnect_per_sample_fwd_bwd", shape=s, dtype=dtype)
                     for s in per_sample]
        rows += [dict(section="matmul", op="dropout_matmul_fwd_bwd", shape=s, dtype=dtype) for s in matmul]
        rows += [dict(section="layouts", op=op, shape=s, dtype=dtype) for s in layouts
                 for op in ("dropout_cl_fwd", "dropout2d_cl_fwd", "drop_path_cl_fwd")]
    # the target rows first: biggest dropout size and dense shape of float32, then the rest
    key = {"dropout": 0, "dense": 1, "per_sample": 2, "matmul": 3, "layouts": 4}
    rows.sort(key=lambda r: (r["dtype"] != "float32", key[r["section"]]))
    for r in rows:
        r["id"] = f"{r['op']}|{'x'.join(map(str, r['shape']))}|{r['dtype']}"
    return rows


def targets_spec(rows):
    """The issue's GPU targets on this plan's rows (the biggest measured size / first dense shape
    stand in for 2^26 and 8192x4096->4096 in --tiny / --dry-run)."""
    f32 = [r for r in rows if r["dtype"] == "float32"]
    big_n = max(r["shape"][0] for r in f32 if r["section"] == "dropout")
    dense0 = next(r["shape"] for r in f32 if r["section"] == "dense")
    ds = "x".join(map(str, dense0))
    return [
        dict(id=f"dropout_fwd|{big_n}|float32", quantity="fastdrop_bw_vs_copy", op=">=", bound=0.8,
             text=f"dropout fwd >= 80% of the device-copy bandwidth at {big_n} float32"),
        dict(id=f"dropout_fwd|{big_n}|float32", quantity="speedup", op=">=", bound=1.0,
             text=f"dropout fwd no slower than torch.nn.functional.dropout at {big_n} float32"),
        dict(id=f"dropout_fwd_bwd|{big_n}|float32", quantity="speedup", op=">=", bound=1.3,
             text=f"dropout fwd+bwd >= 1.3x torch at {big_n} float32"),
        dict(id=f"dropout_linear_fwd_bwd|{ds}|float32", quantity="fastdrop_vs_floor", op="<=", bound=1.1,
             text=f"DropoutLinear fwd+bwd within 1.1x a bare nn.Linear at {ds} float32"),
        dict(id=f"dropconnect_fwd_bwd|{ds}|float32", quantity="fastdrop_vs_floor", op="<=", bound=1.1,
             text=f"DropConnectLinear fwd+bwd within 1.1x a bare nn.Linear at {ds} float32"),
    ] + [
        dict(id=r["id"], quantity="per_sample", op=">=", bound=10.0,
             text=f"per-sample DropConnect {'x'.join(map(str, r['shape']))} >= 10x torch's composite "
                  f"where it fits, and runs where it does not")
        for r in f32 if r["section"] == "per_sample"]


# ---------------------------------------------------------------------------------------- timing
class Timer:
    """Seconds per call of fn over `number` back-to-back calls: CUDA events on the current stream
    (cuda), perf_counter (cpu). Returns (device seconds, host enqueue seconds) per call."""

    def __init__(self, device):
        import torch
        self.torch, self.cuda = torch, device == "cuda"

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize()

    def __call__(self, fn, number):
        torch = self.torch
        if not self.cuda:
            t0 = time.perf_counter()
            for _ in range(number):
                fn()
            dt = (time.perf_counter() - t0) / number
            return dt, dt
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        h0 = time.perf_counter()
        e0.record()
        for _ in range(number):
            fn()
        e1.record()
        host = (time.perf_counter() - h0) / number
        e1.synchronize()
        return e0.elapsed_time(e1) * 1e-3 / number, host


def summarize(samples, hosts):
    import numpy as np
    a = np.array(samples)
    med = float(np.median(a))
    q1, q3 = (float(v) for v in np.percentile(a, [25, 75]))
    return {"median_s": med, "q1_s": q1, "q3_s": q3, "min_s": float(a.min()),
            "iqr_pct": 100.0 * (q3 - q1) / med if med else 0.0, "samples_s": [float(v) for v in a],
            "host_s": float(np.median(hosts))}


def measure(providers, timer, rounds, sample_s, row_cap_s):
    """Warm-up, calibration, then `rounds` interleaved rounds (order reversed every other round);
    fewer rounds when one call is so slow that the row would pass row_cap_s."""
    names = list(providers)
    for fn in providers.values():  # warm-up: NVVM / cuBLAS / allocator
        fn()
    timer.sync()
    first = {k: timer(providers[k], 1)[0] for k in names}
    per_round = sum(first.values())
    number = {k: max(1, min(1000, math.ceil(sample_s / max(first[k], 1e-7)))) for k in names}
    per_round = sum(first[k] * number[k] for k in names)
    rounds = max(1, min(rounds, int(row_cap_s / max(per_round, 1e-9))))
    samples = {k: [] for k in names}
    hosts = {k: [] for k in names}
    for r in range(rounds):
        for k in (names if r % 2 == 0 else names[::-1]):
            dev, host = timer(providers[k], number[k])
            samples[k].append(dev)
            hosts[k].append(host)
    return {k: dict(summarize(samples[k], hosts[k]), number=number[k], rounds=rounds) for k in names}


# ----------------------------------------------------------------------------------------- cases
def _grad(fn, inputs, g):
    import torch
    return lambda: torch.autograd.grad(fn(), inputs, g)


def _with_sample_kernel(name, fn):
    """fn with per-sample DropConnect's CUDA kernels set to `name` (fastdrop._cuda.SAMPLE_KERNEL,
    forward and backward) while it runs."""
    def run():
        import fastdrop._cuda as C
        old, C.SAMPLE_KERNEL = C.SAMPLE_KERNEL, name
        try:
            return fn()
        finally:
            C.SAMPLE_KERNEL = old
    return run


def build(row, device, free_bytes):
    """(providers, work, unit, notes) of a row. Providers: fastdrop, torch, floor (some rows have
    no torch provider: notes says why)."""
    import torch
    import torch.nn.functional as F
    import fastdrop
    td = getattr(torch, row["dtype"])
    op, shape = row["op"], row["shape"]
    notes = {}
    if row["section"] == "dropout":
        (n,) = shape
        item = torch.empty((), dtype=td).element_size()
        x = torch.randn(n, device=device, dtype=td)
        y = torch.empty_like(x)
        if op == "dropout_fwd":
            return ({"fastdrop": lambda: fastdrop.dropout(x, P), "torch": lambda: F.dropout(x, P),
                     "floor": lambda: y.copy_(x)}, 2.0 * n * item, "GB/s", notes)
        xg = x.clone().requires_grad_(True)
        g = torch.randn_like(x)

        def floor():
            y.copy_(x)
            y.copy_(g)
        return ({"fastdrop": _grad(lambda: fastdrop.dropout(xg, P), [xg], g),
                 "torch": _grad(lambda: F.dropout(xg, P), [xg], g), "floor": floor},
                4.0 * n * item, "GB/s", notes)
    if row["section"] in ("dense", "per_sample"):
        n, fin, fout = shape
        x = torch.randn(n, fin, device=device, dtype=td, requires_grad=True)
        lin = torch.nn.Linear(fin, fout, device=device, dtype=td)
        g = torch.randn(n, fout, device=device, dtype=td)
        params = [x, lin.weight, lin.bias]
        flops = 6.0 * n * fin * fout
        floor = _grad(lambda: lin(x), params, g)
        if op == "dropout_linear_fwd_bwd":
            fd = fastdrop.nn.DropoutLinear(fin, fout, p=P, device=device, dtype=td)
            fd.load_state_dict(lin.state_dict())
            th = torch.nn.Sequential(torch.nn.Dropout(P), lin)
            return ({"fastdrop": _grad(lambda: fd(x), [x, fd.weight, fd.bias], g),
                     "torch": _grad(lambda: th(x), params, g), "floor": floor}, flops, "TFLOP/s", notes)
        if op == "dropconnect_fwd_bwd":
            fd = fastdrop.nn.DropConnectLinear(fin, fout, p=P, device=device, dtype=td)
            fd.load_state_dict(lin.state_dict())
            return ({"fastdrop": _grad(lambda: fd(x), [x, fd.weight, fd.bias], g),
                     "torch": _grad(lambda: F.linear(x, F.dropout(lin.weight, P), lin.bias), params, g),
                     "floor": floor}, flops, "TFLOP/s", notes)
        # per-sample DropConnect; torch's composite materializes an N x out x in mask, the masked
        # weights and their gradient (about 5 such tensors alive at the peak of fwd+bwd)
        w, b = lin.weight, lin.bias
        fd = _grad(lambda: fastdrop.dropconnect_linear(x, w, b, P, per_sample=True), params, g)
        # both CUDA kernels (fastdrop/_cuda.py SAMPLE_KERNEL): the default and kernels/sample_cuda.py
        providers = {"fastdrop": fd, "registers": _with_sample_kernel("registers", fd), "floor": floor}
        need = 5 * n * fout * fin * x.element_size()
        notes["composite_bytes"] = need
        if need > 0.7 * free_bytes:
            notes["torch"] = f"does not fit: needs ~{need / 2**30:.3g} GiB, {free_bytes / 2**30:.3g} GiB free"
        else:
            def th():
                m = torch.empty(n, fout, fin, dtype=w.dtype, device=device).bernoulli_(1 - P)
                return torch.einsum("ni,noi->no", x, w * m / (1 - P)) + b
            providers["torch"] = _grad(th, params, g)
        return providers, flops, "TFLOP/s", notes
    if row["section"] == "layouts":
        # channels_last (N, C, H, W): fastdrop indexes the memory where it lies (no contiguous
        # copy; bfloat16 elementwise is the exception), torch's ops keep the layout too
        x = torch.randn(shape, device=device, dtype=td).contiguous(memory_format=torch.channels_last)
        y = torch.empty_like(x)
        fd, th = {"dropout_cl_fwd": (lambda: fastdrop.dropout(x, P), lambda: F.dropout(x, P)),
                  "dropout2d_cl_fwd": (lambda: fastdrop.dropout2d(x, P), lambda: F.dropout2d(x, P)),
                  "drop_path_cl_fwd": (lambda: fastdrop.drop_path(x, P), lambda: x * x.new_empty(
                      (shape[0], 1, 1, 1)).bernoulli_(1 - P).div_(1 - P))}[op]
        return ({"fastdrop": fd, "torch": th, "floor": lambda: y.copy_(x)},
                2.0 * x.numel() * x.element_size(), "GB/s", notes)
    if row["section"] == "matmul":
        b, h, length, d = shape
        a = torch.rand(b, h, length, length, device=device, dtype=td, requires_grad=True)
        v = torch.randn(b, h, length, d, device=device, dtype=td, requires_grad=True)
        g = torch.randn(b, h, length, d, device=device, dtype=td)
        return ({"fastdrop": _grad(lambda: fastdrop.dropout_matmul(a, v, P), [a, v], g),
                 "torch": _grad(lambda: torch.matmul(F.dropout(a, P), v), [a, v], g),
                 "floor": _grad(lambda: torch.matmul(a, v), [a, v], g)},
                6.0 * b * h * length * length * d, "TFLOP/s", notes)
    raise ValueError(row)


def _free_bytes(device, dry_free):
    import torch
    if dry_free is not None:
        return dry_free
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def run_row(row, device, timer, cfg, dry_free=None):
    import torch
    out = dict(row, shape=list(row["shape"]))
    providers = None
    try:
        if device == "cuda":
            torch.cuda.empty_cache()
        providers, work, unit, notes = build(row, device, _free_bytes(device, dry_free))
        out.update(work=work, unit=unit, **notes)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        t = measure(providers, timer, cfg["rounds"], cfg["sample_s"], cfg["row_cap_s"])
        if device == "cuda":
            out["peak_torch_bytes"] = torch.cuda.max_memory_allocated() - base
        out["timings"] = t
        scale = 1e9 if unit == "GB/s" else 1e12
        for k, v in t.items():
            out[f"{k}_rate"] = work / v["median_s"] / scale
        fd, fl = t["fastdrop"]["median_s"], t["floor"]["median_s"]
        out["fastdrop_vs_floor"] = fd / fl
        if "torch" in t:
            out["speedup"] = t["torch"]["median_s"] / fd
            out["torch_vs_floor"] = t["torch"]["median_s"] / fl
        if unit == "GB/s":
            out["fastdrop_bw_vs_copy"] = fl / fd  # the same bytes moved: bandwidth ratio
        if "registers" in t:  # per-sample DropConnect's other kernel
            out["registers_vs_default"] = t["registers"]["median_s"] / fd
            if "torch" in t:
                out["speedup_registers"] = t["torch"]["median_s"] / t["registers"]["median_s"]
    except Exception as e:  # one broken row must not take the run down
        out["error"] = f"{type(e).__name__}: {e}"[:600]
    finally:
        providers = None
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
    return out


def evaluate_targets(spec, rows):
    by_id = {r["id"]: r for r in rows}
    res = []
    for t in spec:
        r = by_id.get(t["id"])
        item = dict(t, measured=None, result="not measured")
        if r is None or "timings" not in r:
            item["why"] = "row missing" if r is None else r.get("error") or r.get("skipped") or "no timings"
        elif t["quantity"] == "per_sample":
            if "speedup" in r:
                item["measured"] = r["speedup"]
                item["result"] = "PASS" if r["speedup"] >= t["bound"] else "FAIL"
            else:  # the composite does not fit: the target is that fastdrop runs
                item["measured"] = "ran; " + r.get("torch", "no torch provider")
                item["result"] = "PASS"
        else:
            v = r.get(t["quantity"])
            item["measured"] = v
            ok = v is not None and (v >= t["bound"] if t["op"] == ">=" else v <= t["bound"])
            item["result"] = "PASS" if ok else "FAIL"
        res.append(item)
    return res


# ------------------------------------------------------------------------------------ machine
def _run(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def machine_info(device):
    import numba
    import torch
    import fastdrop
    try:
        from importlib.metadata import version
        numba_cuda = version("numba-cuda")
    except Exception:
        numba_cuda = "not installed"
    info = {"device": device, "hostname": platform.node(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "numba": numba.__version__,
            "numba_cuda": numba_cuda, "fastdrop": fastdrop.__version__, "fastdrop_path": fastdrop.__file__,
            "cpu": platform.processor(), "cores": os.cpu_count(),
            # (the device machine gets the working tree without .git: the caller passes the commit)
            "git_commit": _run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
            or os.environ.get("FASTDROP_COMMIT") or "unknown",
            "git_dirty": bool(_run(["git", "-C", ROOT, "status", "--porcelain", "--", "fastdrop", "kernels"])),
            "date": datetime.datetime.now().isoformat(timespec="seconds")}
    if device == "cuda":
        prop = torch.cuda.get_device_properties(0)
        info.update(gpu=prop.name, gpu_memory_gib=round(prop.total_memory / 2**30, 1),
                    compute_capability=f"{prop.major}.{prop.minor}", sms=prop.multi_processor_count,
                    driver=_run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]).split("\n")[0]
                    or "unknown",
                    allow_tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                    float32_matmul_precision=torch.get_float32_matmul_precision())
    else:
        info["gpu"] = None
    return info


def slug(info, mode):
    name = info["gpu"] or "cpu"
    s = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return s + ("" if mode == "full" else f"-{mode}")


# ------------------------------------------------------------------------------------- reports
def fmt_t(s):
    if s is None:
        return "-"
    for unit, f in (("s", 1), ("ms", 1e3), ("us", 1e6)):
        if s * f >= 1:
            return f"{s * f:.3g} {unit}"
    return f"{s * 1e9:.3g} ns"


def _med(r, k):
    t = r.get("timings", {}).get(k)
    return None if t is None else t["median_s"]


def _cell(r, k):
    t = r.get("timings", {}).get(k)
    if t is None:
        return r.get(k, "-") if k == "torch" else "-"
    return f"{fmt_t(t['median_s'])} ±{t['iqr_pct']:.0f}%"


def _x(v, nd=2):
    return "-" if v is None else f"{v:.{nd}f}x"


def markdown(res):
    m = res["machine"]
    lines = [f"# fastdrop GPU benchmark: {m.get('gpu') or 'CPU (dry run)'}, {m['date'][:10]}", ""]
    if res["mode"] != "full":
        lines += [f"**{res['mode']} mode: tiny shapes" + (" on CPU tensors, no GPU" if res["mode"] == "dry" else "")
                  + "; these numbers say nothing about GPU performance.**", ""]
    lines += [f"GPU {m.get('gpu')} ({m.get('gpu_memory_gib')} GiB, cc {m.get('compute_capability')}, "
              f"{m.get('sms')} SMs), driver {m.get('driver')}; torch {m['torch']} (CUDA {m['torch_cuda']}), "
              f"numba {m['numba']}, numba-cuda {m['numba_cuda']}, fastdrop {m['fastdrop']} at "
              f"{m['git_commit']}{' (modified)' if m['git_dirty'] else ''}; TF32 matmul "
              f"{m.get('allow_tf32_matmul')}. p = {P}, seed=None on every call. Medians of interleaved "
              f"rounds (CUDA events around back-to-back calls), ± the interquartile range. "
              f"Run time {res['elapsed_s']:.0f} s.", ""]
    rows = res["rows"]

    def errs(sec):
        return [f"- {r['id']}: {r.get('error') or r.get('skipped')}" for r in rows
                if r["section"] == sec and ("error" in r or "skipped" in r)]
    lines += ["## Targets (issue 10)", "", "| target | measured | bound | result |", "|---|---|---|---|"]
    for t in res["targets"]:
        v = t["measured"]
        v = f"{v:.3g}" if isinstance(v, float) else (v if v is not None else t.get("why", "-"))
        lines.append(f"| {t['text']} | {v} | {t['op']} {t['bound']} | **{t['result']}** |")
    lines += ["", "Bandwidth ceiling of the fwd+bwd target (arithmetic, not measured): torch's dropout "
              "moves 18 bytes per float32 element (forward: read x, write y and a 1-byte mask; "
              "backward: read the gradient and the mask, write grad_x), fastdrop's 16 (no mask), so "
              "with both at the copy bandwidth fastdrop is 18/16 = 1.125x torch; 1.3x needs torch "
              "below its floor."]
    lines += ["", "## Dropout (fwd: read x, write y; fwd+bwd adds read grad, write grad_x)", "",
              "| op | dtype | elements | fastdrop | torch | copy floor | fastdrop GB/s | torch GB/s | "
              "copy GB/s | fastdrop / copy BW | speedup vs torch | fastdrop host enqueue |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["section"] == "dropout" and "timings" in r:
            lines.append(f"| {r['op']} | {r['dtype']} | 2^{int(math.log2(r['shape'][0]))} | {_cell(r, 'fastdrop')} | "
                         f"{_cell(r, 'torch')} | {_cell(r, 'floor')} | {r['fastdrop_rate']:.4g} | "
                         f"{r['torch_rate']:.4g} | {r['floor_rate']:.4g} | {100 * r['fastdrop_bw_vs_copy']:.0f}% | "
                         f"{_x(r.get('speedup'))} | {fmt_t(r['timings']['fastdrop']['host_s'])} |")
    lines += errs("dropout")
    lines += ["", "## Dense layers, forward+backward (floor: bare nn.Linear)", "",
              "| layer | N x in -> out | dtype | fastdrop | torch composite | nn.Linear | fastdrop / Linear | "
              "speedup vs composite | fastdrop TFLOP/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["section"] == "dense" and "timings" in r:
            n, fi, fo = r["shape"]
            lines.append(f"| {r['op'].replace('_fwd_bwd', '')} | {n}x{fi}->{fo} | {r['dtype']} | {_cell(r, 'fastdrop')} | "
                         f"{_cell(r, 'torch')} | {_cell(r, 'floor')} | {_x(r['fastdrop_vs_floor'])} | "
                         f"{_x(r.get('speedup'))} | {r['fastdrop_rate']:.3g} |")
    lines += errs("dense")
    lines += ["", "## Per-sample DropConnect, forward+backward (torch: bernoulli mask N x out x in + einsum)", "",
              "fastdrop: the default kernel (`linear_cuda.sample_gemm`, tiled); registers: "
              "`kernels/sample_cuda.py` (FASTDROP_SAMPLE_KERNEL=registers), timed in the same rounds.", "",
              "| N x in -> out | fastdrop | registers | torch composite | nn.Linear | speedup vs composite "
              "| registers: speedup | registers / fastdrop | fastdrop TFLOP/s |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["section"] == "per_sample" and "timings" in r:
            n, fi, fo = r["shape"]
            lines.append(f"| {n}x{fi}->{fo} | {_cell(r, 'fastdrop')} | {_cell(r, 'registers')} | {_cell(r, 'torch')} | "
                         f"{_cell(r, 'floor')} | {_x(r.get('speedup'), 1)} | {_x(r.get('speedup_registers'), 1)} | "
                         f"{_x(r.get('registers_vs_default'))} | {r['fastdrop_rate']:.3g} |")
    lines += errs("per_sample")
    lines += ["", "## dropout_matmul, forward+backward (floor: bare matmul)", "",
              "| B x H x L x d | dtype | fastdrop | torch | matmul | fastdrop / matmul | speedup |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["section"] == "matmul" and "timings" in r:
            lines.append(f"| {'x'.join(map(str, r['shape']))} | {r['dtype']} | {_cell(r, 'fastdrop')} | "
                         f"{_cell(r, 'torch')} | {_cell(r, 'floor')} | {_x(r['fastdrop_vs_floor'])} | "
                         f"{_x(r.get('speedup'))} |")
    lines += errs("matmul")
    lines += ["", "## channels_last, forward (read x, write y; floor: a copy in the same layout)", "",
              "| op | dtype | N x C x H x W | fastdrop | torch | copy floor | fastdrop GB/s | "
              "fastdrop / copy BW | speedup vs torch |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["section"] == "layouts" and "timings" in r:
            lines.append(f"| {r['op'].replace('_cl_fwd', '')} | {r['dtype']} | {'x'.join(map(str, r['shape']))} | "
                         f"{_cell(r, 'fastdrop')} | {_cell(r, 'torch')} | {_cell(r, 'floor')} | "
                         f"{r['fastdrop_rate']:.4g} | {100 * r['fastdrop_rate'] / r['floor_rate']:.0f}% | "
                         f"{_x(r.get('speedup'))} |")
    lines += errs("layouts")
    return "\n".join(lines) + "\n"


def plot(res, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        log(f"no png: matplotlib unavailable ({type(e).__name__})")
        return False
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, op in zip(axes, ("dropout_fwd", "dropout_fwd_bwd")):
        for dtype, style in (("float32", "-"), ("bfloat16", "--")):
            rs = sorted((r for r in res["rows"] if r["op"] == op and r["dtype"] == dtype and "timings" in r),
                        key=lambda r: r["shape"][0])
            if not rs:
                continue
            xs = [r["shape"][0] for r in rs]
            for k, color in (("fastdrop", "C0"), ("torch", "C1"), ("floor", "C2")):
                ax.plot(xs, [r[f"{k}_rate"] for r in rs], style, color=color, marker="o",
                        label=f"{'copy floor' if k == 'floor' else k} {dtype}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("elements")
        ax.set_ylabel("GB/s (useful bytes)")
        ax.set_title(op)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"fastdrop vs torch dropout on {res['machine'].get('gpu') or 'CPU (dry run)'}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


# ----------------------------------------------------------------------------------------- main
MODES = {  # rounds, seconds per timing sample, cap on seconds per row
    "full": dict(rounds=7, sample_s=0.02, row_cap_s=12.0),
    "tiny": dict(rounds=3, sample_s=0.002, row_cap_s=2.0),
    "dry": dict(rounds=2, sample_s=0.0, row_cap_s=1.0),
}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="no GPU: tiny shapes on CPU tensors (checks the code)")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes on the GPU (smoke run)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, help="run these sections only")
    ap.add_argument("--budget-s", type=float, default=170.0,
                    help="stop starting rows after this many seconds (default 170); rows left are listed as skipped")
    ap.add_argument("--out-dir", help="where the files go (default: bench/results; a temp dir for --dry-run/--tiny)")
    args = ap.parse_args(argv)
    import torch
    mode = "dry" if args.dry_run else ("tiny" if args.tiny else "full")
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        log("no CUDA device for torch: use --dry-run to check the code without a GPU")
        return 2
    import fastdrop  # noqa: F401  (after torch: its ops register for torch.compile)
    out_dir = args.out_dir or (os.path.join(HERE, "results") if mode == "full"
                               else tempfile.mkdtemp(prefix="fastdrop-gpu-bench-"))
    os.makedirs(out_dir, exist_ok=True)
    info = machine_info(device)
    log(f"{info.get('gpu') or 'CPU (dry run)'}; torch {info['torch']}, numba-cuda {info['numba_cuda']}, "
        f"fastdrop from {info['fastdrop_path']}")
    rows = [r for r in plan(mode) if not args.only or r["section"] in args.only]
    timer, cfg = Timer(device), MODES[mode]
    # --dry-run: pretend little memory is free, so the "does not fit" branch runs too
    dry_free = 64 * 16 * 12 * 4 * 5 if mode == "dry" else None
    results = []
    interrupted = False
    for i, row in enumerate(rows):
        if interrupted or time.perf_counter() - T0 > args.budget_s:
            why = "interrupted (SIGINT: the step's time limit)" if interrupted else \
                f"time budget ({args.budget_s:.0f} s) spent"
            results.append(dict(row, shape=list(row["shape"]), skipped=why))
            continue
        t_row = time.perf_counter()
        try:
            r = run_row(row, device, timer, cfg, dry_free)
        except KeyboardInterrupt:
            # gpu_check.sh stops a step with SIGINT at its limit: the rows measured so far are
            # still written (they were lost with the whole run)
            interrupted = True
            log(f"[{i + 1}/{len(rows)}] {row['id']}: interrupted; writing the rows measured so far")
            results.append(dict(row, shape=list(row["shape"]), skipped="interrupted (SIGINT: the step's time limit)"))
            continue
        results.append(r)
        if "error" in r:
            log(f"[{i + 1}/{len(rows)}] {row['id']}: ERROR {r['error'][:200]}")
        else:
            log(f"[{i + 1}/{len(rows)}] {row['id']}: fastdrop {fmt_t(_med(r, 'fastdrop'))}, "
                f"torch {fmt_t(_med(r, 'torch')) if 'torch' in r['timings'] else r.get('torch', '-')}, "
                f"floor {fmt_t(_med(r, 'floor'))} ({time.perf_counter() - t_row:.1f} s)")
    res = {"mode": mode, "machine": info, "config": dict(cfg, p=P, budget_s=args.budget_s),
           "rows": results, "targets": evaluate_targets(targets_spec(plan(mode)), results),
           "elapsed_s": time.perf_counter() - T0}
    stem = os.path.join(out_dir, f"{slug(info, mode)}-{info['date'][:10]}" +
                        (f"-only-{'-'.join(args.only)}" if args.only else ""))
    with open(stem + ".json", "w") as f:
        json.dump(res, f, indent=1, default=str)
    md = markdown(res)
    with open(stem + ".md", "w") as f:
        f.write(md)
    png = plot(res, stem + ".png")
    print(md)
    failed = [t for t in res["targets"] if t["result"] != "PASS"]
    errors = [r for r in results if "error" in r]
    log(f"wrote {stem}.json, .md{', .png' if png else ''}; {len(errors)} row errors, "
        f"{len(failed)} of {len(res['targets'])} targets not met or not measured")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
