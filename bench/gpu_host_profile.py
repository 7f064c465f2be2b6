"""Where the host time of fastdrop's torch-CUDA route goes (the GPU benchmark found the GPU waiting).

    python3 bench/gpu_host_profile.py [--out DIR]    # on a GPU machine, < 60 s (--budget-s)
    python3 bench/gpu_host_profile.py --dry-run      # no GPU: the same code on tiny CPU tensors

bench/gpu_bench.py on an H200 (2026-12-04) measured fastdrop.dropout at 2^20 float32 at 250-530 us
per call, torch.nn.functional.dropout at 12-19 us, and fastdrop's host enqueue time equal to its
total: the kernel is not the cost. A call whose host work outlasts its kernel takes

    t_call = max(t_host, t_gpu),   t_host = the sum of the host steps of one call,

so this script measures t_host and splits it into those steps:

1. enqueue: `calls` back-to-back calls timed with perf_counter and no synchronization inside
   (t_host per call), then one synchronize (t_total: t_host plus the queue's drain). Cases:
   dropout fwd and fwd+bwd at 2^20 float32, dropout2d fwd (16, 64, 32, 32), dropout_linear
   fwd+bwd 1024x1024->1024, each next to its torch counterpart. The collections of Python's
   garbage collector and the time spent in them during the window come from gc.callbacks; one
   row repeats dropout fwd with the collector off.
2. sync probe: one call enqueued behind a ~20 ms torch.cuda._sleep on the same stream. A call
   whose host time contains the sleep waits for the GPU somewhere (an implicit synchronize).
3. steps: the numba-cuda steps of fastdrop._cuda.apply_tensor, each alone (min over 3 repeats
   of the mean per call): torch's stream query, the `cuda.gpus[i]` context push/pop, the external
   stream, the array views, the launch configuration with a new and a reused Stream, dispatch
   with reused and fresh arrays, `_Kernel.launch` alone and the bare cuda.core launch (the floor
   of a Numba launch). The launch-configuration cache's hits and misses over section 1 are
   printed too (numba-cuda caches `kernel[grid, block, stream]` per Stream object).
4. cProfile of `prof_calls` calls of each fastdrop case: the top functions by cumulative and by own
   time, per fastdrop call. Python >= 3.12 profiles every thread (sys.monitoring), so the backward,
   which torch runs on its autograd device thread, is included; before 3.12 only the calling
   thread is seen. cProfile's own overhead inflates Python-heavy code (about 1.5-2x): read the
   profile for where the time goes, section 1 for how much there is.

The output (under ~300 lines) goes to stdout and, with --out DIR, to DIR/gpu_host_profile.txt.
"""
import argparse
import cProfile
import gc
import math
import os
import platform
import pstats
import statistics
import sys
import time

T0 = time.perf_counter()
P = 0.5
SEED = 12345  # the step timings call the launcher with a fixed seed (no draw)
LINES = []

MODES = {
    # elements of the dropout cases, the (N, C, H, W) of dropout2d, (N, in, out) of dropout_linear;
    # calls per enqueue window, windows, profiled calls, iterations per step timing
    "gpu": dict(n=1 << 20, nchw=(16, 64, 32, 32), linear=(1024, 1024, 1024), calls=200, rounds=5,
                prof_calls=200, step_iters=300, warmup=5),
    "dry": dict(n=1 << 10, nchw=(2, 4, 8, 16), linear=(16, 24, 8), calls=3, rounds=2,
                prof_calls=20, step_iters=20, warmup=2),
}


def emit(line=""):
    LINES.append(line)
    print(line, flush=True)


def elapsed():
    return time.perf_counter() - T0


def _version(dist):
    try:
        from importlib.metadata import version
        return version(dist)
    except Exception:
        return "-"


# ------------------------------------------------------------------------------------------ cases
def build_cases(torch, fastdrop, device, cfg):
    """[(name, is_fastdrop, fn)]: each fastdrop case followed by its torch counterpart. seed=None
    everywhere, as in training (every call draws its seed)."""
    F = torch.nn.functional
    grad = torch.autograd.grad
    n = cfg["n"]
    x = torch.randn(n, device=device)
    xg = x.clone().requires_grad_(True)
    g = torch.randn_like(x)
    x4 = torch.randn(cfg["nchw"], device=device)
    rows, fin, fout = cfg["linear"]
    xl = torch.randn(rows, fin, device=device, requires_grad=True)
    w = (torch.randn(fout, fin, device=device) / math.sqrt(fin)).requires_grad_(True)
    b = torch.zeros(fout, device=device, requires_grad=True)
    gl = torch.randn(rows, fout, device=device)
    nchw, lin = "x".join(map(str, cfg["nchw"])), f"{rows}x{fin}->{fout}"
    size = f"2^{int(math.log2(n))}"
    return [
        (f"dropout fwd {size}", True, lambda: fastdrop.dropout(x, P)),
        (f"F.dropout fwd {size}", False, lambda: F.dropout(x, P)),
        (f"dropout fwd+bwd {size}", True, lambda: grad(fastdrop.dropout(xg, P), [xg], g)),
        (f"F.dropout fwd+bwd {size}", False, lambda: grad(F.dropout(xg, P), [xg], g)),
        (f"dropout2d fwd {nchw}", True, lambda: fastdrop.dropout2d(x4, P)),
        (f"F.dropout2d fwd {nchw}", False, lambda: F.dropout2d(x4, P)),
        (f"dropout_linear fwd+bwd {lin}", True,
         lambda: grad(fastdrop.dropout_linear(xl, w, b, P), [xl, w, b], gl)),
        (f"F.linear(F.dropout) fwd+bwd {lin}", False,
         lambda: grad(F.linear(F.dropout(xl, P), w, b), [xl, w, b], gl)),
    ], x


# ------------------------------------------------------------------------------------ 1. enqueue
class GcMeter:
    """Collections per generation, and seconds spent in them, while installed (gc.callbacks: the
    collector calls it at the start and stop of every collection, on whichever thread ran it)."""

    def __init__(self):
        self.reset()
        self._start = None
        gc.callbacks.append(self._callback)

    def reset(self):
        self.count, self.seconds = [0, 0, 0], 0.0

    def _callback(self, phase, info):
        if phase == "start":
            self._start = time.perf_counter()
        elif self._start is not None:
            self.seconds += time.perf_counter() - self._start
            self.count[info["generation"]] += 1
            self._start = None

    def close(self):
        gc.callbacks.remove(self._callback)


def enqueue(fn, sync, calls, rounds, meter):
    """(median host s/call, min host s/call, median total s/call, gc counts, gc s/call)."""
    hosts, totals = [], []
    meter.reset()
    for _ in range(rounds):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        t1 = time.perf_counter()  # everything enqueued; the GPU may still be draining the queue
        sync()
        t2 = time.perf_counter()
        hosts.append((t1 - t0) / calls)
        totals.append((t2 - t0) / calls)
    return (statistics.median(hosts), min(hosts), statistics.median(totals), meter.count[:],
            meter.seconds / (calls * rounds))


def numba_dispatch(fn):
    """fn with fastdrop's direct launcher off (kernels/direct_launch.py): the launches go
    through numba's `kernel[grid, block, stream](*args)`, as before the first GPU run's fixes."""
    from fastdrop.kernels import direct_launch as D

    def run():
        before = D._state["on"]
        D._state["on"] = False
        try:
            return fn()
        finally:
            D._state["on"] = before
    return run


def us(s):
    return f"{s * 1e6:8.1f}"


def section_enqueue(cases, sync, cfg):
    emit(f"## 1. host enqueue: {cfg['calls']} back-to-back calls x {cfg['rounds']} windows, one sync "
         f"after each window (us per call)")
    emit(f"{'case':48s} {'host med':>8s} {'host min':>8s} {'total':>8s}  gc n0/n1/n2  gc us/call")
    meter = GcMeter()
    try:
        rows = [(name, fn) for name, _, fn in cases]
        # the collector's share: the first case again with gc off (its objects freed by refcount)
        rows.insert(1, (cases[0][0] + " (gc off)", None))
        # A/B of the launch route: each fastdrop case again through numba's dispatch
        for name, is_fastdrop, fn in cases:
            if is_fastdrop:
                rows.append((name + " [numba dispatch]", numba_dispatch(fn)))
        for name, fn in rows:
            if fn is None:
                gc.collect()
                gc.disable()
                try:
                    res = enqueue(cases[0][2], sync, cfg["calls"], cfg["rounds"], meter)
                finally:
                    gc.enable()
            else:
                res = enqueue(fn, sync, cfg["calls"], cfg["rounds"], meter)
            host, host_min, total, counts, gc_s = res
            emit(f"{name:48s} {us(host)} {us(host_min)} {us(total)}  {'/'.join(map(str, counts)):>11s}"
                 f"  {us(gc_s)}")
    finally:
        meter.close()
    emit("(host ~ total: the GPU waited on the host; total >> host: the GPU was the bottleneck)")
    emit()


def kernel_compiles():
    """Overloads, disk-cache loads and compiles of the dropout kernels so far: more than one
    overload of a kernel per dtype would mean re-specialization on the hot path."""
    try:
        from fastdrop.kernels import dropout_cuda as K
        parts = []
        for name in ("dropout_flat", "keep_mask", "apply_group_mask"):
            d = getattr(K, name)
            parts.append(f"{name} {len(d.overloads)}/{sum(d._cache_hits.values())}/"
                         f"{sum(d._cache_misses.values())}")
        emit("kernels (overloads/disk-cache loads/compiles): " + ", ".join(parts))
    except Exception as e:
        emit(f"kernels: failed to read the dispatchers: {type(e).__name__}: {e}"[:150])
    emit()


# --------------------------------------------------------------------------------- 2. sync probe
def section_sync_probe(torch, cases, device, sync):
    emit("## 2. sync probe: host time of one call enqueued behind a busy GPU stream")
    busy, busy_s = (lambda: None), 0.0
    if device == "cuda":
        # torch.cuda._sleep spins for a number of GPU clock cycles: calibrate cycles per second
        cycles = 10_000_000
        e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        sync()
        e0.record()
        torch.cuda._sleep(cycles)
        e1.record()
        e1.synchronize()
        per_s = cycles / max(e0.elapsed_time(e1) * 1e-3, 1e-6)
        busy_s = 0.02
        busy_cycles = int(per_s * busy_s)
        busy = lambda: torch.cuda._sleep(busy_cycles)  # noqa: E731
        emit(f"(GPU busy for {busy_s * 1e3:.0f} ms before each call: {per_s / 1e9:.2f} G sleep-cycles/s)")
    for name, is_fastdrop, fn in cases:
        if not is_fastdrop:
            continue
        sync()
        busy()
        t0 = time.perf_counter()
        fn()
        host = time.perf_counter() - t0
        sync()
        verdict = ("WAITS FOR THE GPU (a synchronize on the host path)" if busy_s and host > 0.5 * busy_s
                   else "no wait" if busy_s else "(no GPU: nothing to wait for)")
        emit(f"{name:40s} host {us(host)} us  {verdict}")
    emit()


# -------------------------------------------------------------------------------------- 3. steps
def per_call(fn, iters, sync, repeat=3):
    """Seconds per call of fn: min over `repeat` runs of the mean of `iters` calls (the min drops
    the runs a garbage collection landed in); the queue is drained before and after."""
    best = math.inf
    for _ in range(repeat):
        sync()
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        best = min(best, (time.perf_counter() - t0) / iters)
    sync()
    return best


def _step_runner(iters, sync):
    def step(label, fn):
        try:
            emit(f"{label:66s} {us(per_call(fn, iters, sync))}")
        except Exception as e:  # one broken probe must not take the rest down
            emit(f"{label:66s}   failed: {type(e).__name__}: {str(e)[:80]}")
    return step


def _configure_cache():
    """numba-cuda's `kernel[grid, block, stream]` cache (functools.lru_cache on
    CUDADispatcher.configure, keyed by the Stream object among others), or None."""
    try:
        from numba.cuda.dispatcher import CUDADispatcher
        configure = CUDADispatcher.configure
    except Exception:
        return None
    # (an lru_cache only on some numba-cuda versions: without cache_info the section is skipped)
    return configure if callable(getattr(configure, "cache_info", None)) else None


def gpu_steps(torch, x, step, iters):
    """The steps of fastdrop._cuda.apply_tensor for elementwise float32 dropout, each alone."""
    import numpy as np
    from numba import cuda
    from numba.cuda.cudadrv import devices
    from numba.cuda.typing.typeof import Purpose, typeof
    import fastdrop
    from fastdrop import _cuda
    from fastdrop.kernels import dropout_cuda as K
    from fastdrop.kernels.config import launch_shape
    from fastdrop.kernels.philox import kernel_rng_args
    F = torch.nn.functional
    dev, idx, n = x.device, x.device.index, x.numel()
    y = torch.empty_like(x)
    handle = torch.cuda.current_stream(dev).cuda_stream
    blocks, threads = launch_shape(-(-n // K.TILE) * K.CUDA_THREADS)  # as dropout_flat_into
    scalars = (*kernel_rng_args(SEED, 0, P), np.float32(1.0 / (1.0 - P)))
    pool_size = 3 * iters + 8  # per_call's repeats x iterations: a fresh object for every call

    step("torch.empty_like(x)", lambda: torch.empty_like(x))
    step("cuda.is_available()  (_cuda.require_gpu, every launcher call)", cuda.is_available)
    step("torch.cuda.is_current_stream_capturing()", torch.cuda.is_current_stream_capturing)
    step("torch.cuda.current_stream(dev).cuda_stream", lambda: torch.cuda.current_stream(dev).cuda_stream)
    raw = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    if raw is not None:
        step("torch._C._cuda_getCurrentRawStream(idx)  (alternative)", lambda: raw(idx))

    def gpus_scope():
        with cuda.gpus[idx]:
            pass
    step("with cuda.gpus[idx]: pass  (context push + pop)", gpus_scope)
    step("devices.get_context()  (what every _Kernel.launch asks)", devices.get_context)
    with cuda.gpus[idx]:  # the scope apply_tensor runs its numba steps in
        step("cuda.external_stream(handle)", lambda: cuda.external_stream(handle))
        step("x.__cuda_array_interface__  (torch's Python property)", lambda: x.__cuda_array_interface__)
        step("cuda.as_cuda_array(x, sync=False)", lambda: cuda.as_cuda_array(x, sync=False))
        xd, od = cuda.as_cuda_array(x, sync=False), cuda.as_cuda_array(y, sync=False)
        step("DeviceNDArray.reshape(size)  (_cuda._flat, twice a launch)", lambda: xd.reshape(xd.size))
        fresh = iter([xd.reshape(xd.size) for _ in range(pool_size)])
        step("typeof(fresh DeviceNDArray)  (dispatch types each new array)",
             lambda: typeof(next(fresh), Purpose.argument))
        streams = iter([cuda.external_stream(handle) for _ in range(pool_size)])
        step("kernel[grid, block, new Stream]  (configure: cache miss)",
             lambda: K.dropout_flat[blocks, threads, next(streams)])
        stream = cuda.external_stream(handle)
        step("kernel[grid, block, same Stream]  (configure: cache hit)",
             lambda: K.dropout_flat[blocks, threads, stream])
        launch = K.dropout_flat[blocks, threads, stream]
        xf, of = xd.reshape(xd.size), od.reshape(od.size)
        seeds = _cuda.no_seeds()  # the kernels' empty seed array: the seed is the host's
        step("configured launch, same arrays", lambda: launch(xf, of, seeds, *scalars))
        pairs = iter([(xd.reshape(xd.size), od.reshape(od.size)) for _ in range(pool_size)])
        step("configured launch, fresh arrays (as every fastdrop call)",
             lambda: launch(*next(pairs), seeds, *scalars))
        args = (xf, of, seeds, *scalars)
        try:
            kernel = K.dropout_flat.overloads[tuple(typeof(a, Purpose.argument) for a in args)]
        except KeyError:
            kernel = next(iter(K.dropout_flat.overloads.values()))
        step("_Kernel.launch alone  (no configure, no dispatch)",
             lambda: kernel.launch(args, launch.griddim, launch.blockdim, launch.stream, 0))
        try:
            from cuda.core import LaunchConfig, launch as core_launch
            kargs, retr = [], []
            for ty, v in zip(kernel.argument_types, args):
                kernel._prepare_args(ty, v, launch.stream, retr, kargs)
            config = LaunchConfig(grid=launch.griddim, block=launch.blockdim, shmem_size=0)
            cu_kernel = kernel._codelibrary.get_cufunc().kernel
            step("cuda.core launch, arguments prepared  (the floor)",
                 lambda: core_launch(launch.stream, config, cu_kernel, *kargs))
        except Exception as e:
            emit(f"{'cuda.core launch, arguments prepared  (the floor)':66s}   failed: {type(e).__name__}: {e}"[:150])
    from fastdrop.kernels import direct_launch as D
    step("direct_launch.torch_stream(torch, dev)  (context query, cached stream)",
         lambda: D.torch_stream(torch, dev))
    direct = D.torch_stream(torch, dev)
    if direct is not None:
        fx, fo, fs = D.Flat(x), D.Flat(y), D.Flat(torch.empty(0, dtype=torch.int64, device=dev))
        step("D.Flat(x)", lambda: D.Flat(x))
        step("direct launch of dropout_flat, Flats made  (the route's launch)",
             lambda: direct.launch(K.dropout_flat, blocks, threads, (fx, fo, fs, *scalars)))
    else:
        emit(f"(the direct launcher is off: {D.why_off() or 'this thread has not the device context'})")
    step("_cuda.apply_tensor(x, ...)  (the whole launcher, fixed seed)",
         lambda: _cuda.apply_tensor(x, P, SEED, 0, 1.0 / (1.0 - P), 0))
    step("_cuda.apply_tensor(x, ...)  [numba dispatch]",
         numba_dispatch(lambda: _cuda.apply_tensor(x, P, SEED, 0, 1.0 / (1.0 - P), 0)))
    step("fastdrop.dropout(x, P)  (the whole call)", lambda: fastdrop.dropout(x, P))
    step("F.dropout(x, P)", lambda: F.dropout(x, P))
    emit(f"direct launcher: {'on' if D.enabled() else 'off: ' + str(D.why_off())}")


def cpu_steps(torch, x, step):
    """--dry-run: the torch-level steps on a CPU tensor (the numba-cuda steps need a GPU)."""
    import fastdrop
    F = torch.nn.functional
    step("torch.empty_like(x)", lambda: torch.empty_like(x))
    step("fastdrop.dropout(x, P)  (the whole call)", lambda: fastdrop.dropout(x, P))
    step("F.dropout(x, P)", lambda: F.dropout(x, P))
    emit("(no GPU: the numba-cuda steps - gpus[] scope, external stream, as_cuda_array, configure,")
    emit(" dispatch, _Kernel.launch, cuda.core launch - run on a GPU only)")


def section_steps(torch, x, device, sync, cfg):
    emit(f"## 3. the steps of one launch, alone (us per call, min of 3 x {cfg['step_iters']} calls)")
    step = _step_runner(cfg["step_iters"], sync)
    if device == "cuda":
        try:
            gpu_steps(torch, x, step, cfg["step_iters"])
        except Exception as e:  # the profile (section 4) still runs
            emit(f"steps stopped: {type(e).__name__}: {e}"[:150])
    else:
        cpu_steps(torch, x, step)
    emit()


# ------------------------------------------------------------------------------------ 4. cProfile
def _where(file, line, func):
    """A short name for a profiled function: the path below site-packages, else its last two parts."""
    if file == "~":  # a builtin: func is its description
        return func
    path = file.replace("\\", "/")
    for marker in ("site-packages/", "dist-packages/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = "/".join(path.split("/")[-2:])
    return f"{path}:{line}({func})"


def _table(rows, key, top, calls):
    emit(f"  {'calls':>6s} {'own us':>8s} {'cum us':>8s}  function        (per fastdrop call; top {top} by {key})")
    col = 2 if key == "tottime" else 3
    for where, nc, tt, ct in sorted(rows, key=lambda r: r[col], reverse=True)[:top]:
        emit(f"  {nc / calls:6.1f} {tt / calls * 1e6:8.1f} {ct / calls * 1e6:8.1f}  {where}"[:132])


def section_profile(cases, sync, cfg, top, budget_s):
    calls = cfg["prof_calls"]
    threads = "every thread, the autograd thread's backward included" if sys.version_info >= (3, 12) \
        else "the calling thread only: a CUDA backward, on torch's autograd thread, is missing"
    emit(f"## 4. cProfile, {calls} calls per case (Python {platform.python_version()}: {threads})")
    for name, is_fastdrop, fn in cases:
        if not is_fastdrop:
            continue
        if elapsed() > budget_s:
            emit(f"### {name}: skipped, the time budget ({budget_s:.0f} s) is spent")
            continue
        gc.collect()
        prof = cProfile.Profile()
        sync()
        t0 = time.perf_counter()
        prof.enable()
        for _ in range(calls):
            fn()
        prof.disable()
        host = (time.perf_counter() - t0) / calls
        sync()
        stats = pstats.Stats(prof)
        rows = [(_where(*func), nc, tt, ct) for func, (cc, nc, tt, ct, _) in stats.stats.items()]
        emit(f"### {name}: {host * 1e6:.1f} us per call under the profiler")
        _table(rows, "cumtime", top, calls)
        _table(rows, "tottime", top, calls)
    emit()


# ------------------------------------------------------------------------------------------ main
def header(torch, device, mode):
    import fastdrop
    emit(f"# fastdrop host-path profile ({'dry run: CPU tensors, tiny shapes' if mode == 'dry' else 'GPU'})")
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none"
    emit(f"GPU {gpu}; Python {platform.python_version()}, torch {torch.__version__}, numba "
         f"{_version('numba')}, numba-cuda {_version('numba-cuda')}, cuda-core {_version('cuda-core')}, "
         f"cuda-bindings {_version('cuda-bindings')}, numpy {_version('numpy')}")
    emit(f"fastdrop {fastdrop.__version__} from {os.path.dirname(fastdrop.__file__)}; "
         f"NUMBA_CACHE_DIR={os.environ.get('NUMBA_CACHE_DIR', '-')}; gc thresholds {gc.get_threshold()}; "
         f"gc-tracked objects {len(gc.get_objects())}; CPU {platform.processor() or platform.machine()}, "
         f"{os.cpu_count()} cores")
    emit()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true", help="no GPU: the same code on tiny CPU tensors")
    ap.add_argument("--out", metavar="DIR", help="also write the output to DIR/gpu_host_profile.txt")
    ap.add_argument("--top", type=int, default=25, help="functions per cProfile table (default 25)")
    ap.add_argument("--budget-s", type=float, default=50.0,
                    help="profile sections not started after this many seconds are skipped")
    args = ap.parse_args(argv)
    mode = "dry" if args.dry_run else "gpu"
    device = "cpu" if args.dry_run else "cuda"
    cfg = MODES[mode]
    try:
        import torch
        if device == "cuda" and not torch.cuda.is_available():
            emit("gpu_host_profile: torch.cuda.is_available() is False: nothing to profile on this "
                 "machine (use --dry-run to check the script on CPU tensors)")
            return 0
        import fastdrop  # after torch: its ops register for torch.compile at import
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        header(torch, device, mode)
        cases, x = build_cases(torch, fastdrop, device, cfg)
        # warm-up: NVVM compile (or the disk cache), cuBLAS handles, the caching allocator
        t_warm = time.perf_counter()
        for _, _, fn in cases:
            for _ in range(cfg["warmup"]):
                fn()
        sync()
        emit(f"(warm-up {time.perf_counter() - t_warm:.1f} s)")
        cache = _configure_cache()
        before = cache.cache_info() if cache is not None else None
        section_enqueue(cases, sync, cfg)
        if cache is not None:
            after = cache.cache_info()
            emit(f"numba-cuda kernel[grid, block, stream] cache over section 1: "
                 f"{after.hits - before.hits} hits, {after.misses - before.misses} misses "
                 f"(misses ~ launches: every call builds its launch configuration anew)")
            emit()
        if device == "cuda":
            kernel_compiles()
        section_sync_probe(torch, cases, device, sync)
        section_steps(torch, x, device, sync, cfg)
        section_profile(cases, sync, cfg, args.top, args.budget_s)
        emit(f"done in {elapsed():.1f} s")
    finally:
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            with open(os.path.join(args.out, "gpu_host_profile.txt"), "w") as f:
                f.write("\n".join(LINES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
