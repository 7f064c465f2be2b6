"""Launch every CUDA kernel of fastdrop once (small, odd shapes), for compute-sanitizer.

    compute-sanitizer --tool memcheck  python3 tests/gpu/launch_all_kernels.py
    compute-sanitizer --tool racecheck python3 tests/gpu/launch_all_kernels.py --shared-only
    compute-sanitizer --tool synccheck python3 tests/gpu/launch_all_kernels.py --shared-only

(scripts/gpu_check.sh runs these.) Not a test module (no test_ prefix): a script. Every kernel is
reached through the launchers the library uses (fastdrop/_cuda.py, the max-norm
launcher) on Numba device arrays of float32 / float64 / float16, and, unless --no-torch or
--shared-only, through the torch-CUDA route (torch tensors: float32, float16, bfloat16,
channels_last, a side stream, forward and backward). Shapes are not multiples of the tile or block
sizes, so every tail and bounds check is exercised.

At the end the script lists the kernels it launched, and fails (exit 2) if a kernel defined in a
kernels/*_cuda.py module was never launched (a new kernel must be added here).
--shared-only: only the kernels that use shared memory (masked_gemm, sample_gemm, max_norm_rows),
for racecheck / synccheck. Runs in Numba's CUDA simulator too (NUMBA_ENABLE_CUDASIM=1, torch part
skipped), which is how it is checked without a GPU.
"""
import argparse
import importlib
import os
import pkgutil
import sys
import time

import numpy as np

# the kernels that use shared memory and barriers: racecheck and synccheck run these
SHARED = {"linear_cuda.masked_gemm", "linear_cuda.sample_gemm", "variants_cuda.max_norm_rows",
          "dropout_cuda.dropout_flat", "dropout_cuda.dropout_flat_bf16", "dropout_cuda.dropout_transposed"}
LAUNCHED = {}


def _is_kernel(obj):
    try:
        from numba.cuda.dispatcher import CUDADispatcher
    except ImportError:  # pragma: no cover - numba-cuda layout
        CUDADispatcher = ()
    if CUDADispatcher and isinstance(obj, CUDADispatcher):
        return not obj.targetoptions.get("device")
    if type(obj).__name__ == "FakeCUDAKernel":  # the simulator
        return not getattr(obj, "_device", False)
    return False


class _Recorder:
    """Stands in for a kernel in its module: records each launch configuration, then launches."""

    def __init__(self, name, kernel):
        self._name, self._kernel = name, kernel

    def __getitem__(self, config):
        launch = self._kernel[config]

        def run(*args):
            LAUNCHED[self._name] = LAUNCHED.get(self._name, 0) + 1
            return launch(*args)
        return run

    def __getattr__(self, attr):
        return getattr(self._kernel, attr)


def instrument():
    """Wrap every kernel of every fastdrop.kernels.*_cuda module; returns their names."""
    import fastdrop.kernels
    names = []
    for info in sorted(pkgutil.iter_modules(fastdrop.kernels.__path__), key=lambda i: i.name):
        if not info.name.endswith("_cuda"):
            continue
        mod = importlib.import_module("fastdrop.kernels." + info.name)
        for attr, obj in list(vars(mod).items()):
            if _is_kernel(obj) and getattr(getattr(obj, "py_func", None), "__module__", mod.__name__) == mod.__name__:
                name = f"{info.name}.{attr}"
                setattr(mod, attr, _Recorder(name, obj))
                names.append(name)
    # the torch route launches through fastdrop's direct launcher, not kernel[config](...)
    from fastdrop.kernels import direct_launch as D
    direct = D.TorchStream.launch

    def launch(self, kernel, grid, block, args):
        if isinstance(kernel, _Recorder):
            LAUNCHED[kernel._name] = LAUNCHED.get(kernel._name, 0) + 1
            kernel = kernel._kernel
        return direct(self, kernel, grid, block, args)
    D.TorchStream.launch = launch
    return names


def log(msg):
    print(f"[launch_all_kernels {time.perf_counter() - T0:6.1f}s] {msg}", flush=True)


def device_arrays(shared_only):
    """Every launcher on Numba device arrays."""
    from numba import cuda
    import fastdrop
    from fastdrop import _cuda, mask
    from fastdrop.kernels import variants_cuda as V
    rng = np.random.default_rng(0)
    seed, offset, p = 2**40 + 17, 2**33 + 1, 0.4
    for dtype in (np.float32, np.float64, np.float16):
        if not shared_only:
            x = rng.standard_normal(1027).astype(dtype)
            fastdrop.dropout(cuda.to_device(x), p, seed=seed, offset=offset)             # dropout_flat
            fastdrop.dropout(cuda.to_device(x), p, seed=seed, inplace=True)               # in place
            fastdrop.dropout(cuda.to_device(x), p, training=False, mode="classic")        # scale
            x4 = rng.standard_normal((3, 5, 7, 3)).astype(dtype)
            fastdrop.dropout2d(cuda.to_device(x4), p, seed=seed)             # keep_mask + apply_group_mask
            fastdrop.drop_path(cuda.to_device(x4), p, seed=seed, mode="batch")
            fastdrop.dropout(cuda.to_device(x4)[:, ::2], p, seed=seed)       # strided: numba's copy first
        if dtype == np.float16:
            continue  # the dense kernels and max-norm run float32 / float64
        # Dense products: every mask position (A, B, C), per-sample products, bias / no bias, and
        # the bias gradient; shapes not multiples of the 16-wide tiles.
        n, fin, fout = 37, 29, 23
        xd = cuda.to_device(rng.standard_normal((n, fin)).astype(dtype))
        wd = cuda.to_device(rng.standard_normal((fout, fin)).astype(dtype))
        bd = cuda.to_device(rng.standard_normal(fout).astype(dtype))
        gd = cuda.to_device(rng.standard_normal((n, fout)).astype(dtype))
        _cuda.dropout_linear_forward(xd, wd, bd, p, seed, offset, 1 / (1 - p))
        _cuda.dropout_linear_backward(gd, xd, wd, p, seed, offset, 1 / (1 - p))
        for per_sample in (False, True):
            _cuda.dropconnect_forward(xd, wd, None, p, seed, offset, 1 / (1 - p), per_sample)
            _cuda.dropconnect_forward(xd, wd, bd, p, seed, offset, 1 / (1 - p), per_sample)
            _cuda.dropconnect_backward(gd, xd, wd, p, seed, offset, 1 / (1 - p), per_sample)
        if not shared_only:
            fastdrop.dropconnect_linear(xd, wd, bd, p, seed=seed, per_sample=True)
            # per-sample DropConnect's other kernels (kernels/sample_cuda.py: no shared memory), in
            # one pass and with forced split-K (partial sums, then sum_splits)
            knobs = {"SAMPLE_KERNEL": "registers", "CUDA_FILL_THREADS": 1 << 30, "SPLIT_MIN_REDUCTION": 8}
            saved = {k: getattr(_cuda, k) for k in knobs}
            try:
                for split in (False, True):
                    for k, v in knobs.items():
                        setattr(_cuda, k, v if split or k == "SAMPLE_KERNEL" else saved[k])
                    _cuda.dropconnect_forward(xd, wd, bd, p, seed, offset, 1 / (1 - p), True)
                    _cuda.dropconnect_backward(gd, xd, wd, p, seed, offset, 1 / (1 - p), True)
            finally:
                for k, v in saved.items():
                    setattr(_cuda, k, v)
            fastdrop.dropout_linear(xd, wd, bd, p, seed=seed)
        # max-norm: contiguous and strided 2-D views, rows below and above the block width
        w = (rng.standard_normal((50, 300)) * 3).astype(dtype)
        V.max_norm_device(cuda.to_device(w), 1.0, 1e-7)
        V.max_norm_device(cuda.to_device(w)[:, ::3], 1.0, 1e-7)
        if not shared_only:
            fastdrop.max_norm_(cuda.to_device(w.reshape(50, 3, 100)), 1.0, dim=(1, 2))
    if not shared_only:
        mask.dropout_mask_device((5, 7), p, seed, offset)
        # bfloat16 bits (int16), as the torch route passes bfloat16 tensors: launched here too, so
        # the device-array pass (--no-torch, the simulator) reaches the _bf16 kernels
        bits = (rng.standard_normal(1027).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).view(np.int16)
        _cuda.dropout_flat_into(cuda.to_device(bits), cuda.device_array(bits.shape, np.int16), p, seed,
                                offset, 1 / (1 - p), bf16=True)
        b3 = bits[:105].reshape(3, 5, 7)
        _cuda.grouped_dropout_into(cuda.to_device(b3), cuda.device_array(b3.shape, np.int16), p, seed,
                                   offset, 1 / (1 - p), 2, bf16=True)
        # the seed read from device memory (CUDA-graph capture's route): every Philox kernel once
        seeds = cuda.to_device(np.array([seed], dtype=np.int64))
        xs = rng.standard_normal(1027).astype(np.float32)
        _cuda.dropout_flat_into(cuda.to_device(xs), cuda.device_array(xs.shape, np.float32), p, 0, offset,
                                1 / (1 - p), seeds=seeds)
        _cuda.grouped_dropout_into(cuda.to_device(xs[:105].reshape(3, 5, 7)), cuda.device_array((3, 5, 7), np.float32),
                                   p, 0, offset, 1 / (1 - p), 2, seeds=seeds)
        _cuda.dropout_transposed_into(cuda.to_device(xs[:1001]), cuda.device_array(1001, np.float32),
                                      (1, 7, 143), p, 0, offset, 1 / (1 - p), seeds=seeds)
        xd = cuda.to_device(xs[:31 * 29].reshape(31, 29))
        wd = cuda.to_device(xs[:23 * 29].reshape(23, 29))
        _cuda.dropout_linear_forward(xd, wd, None, p, 0, offset, 1 / (1 - p), seeds=seeds)
        _cuda.dropconnect_forward(xd, wd, None, p, 0, offset, 1 / (1 - p), True, seeds=seeds)
        # the batched-transpose kernel (channels_last / transposed torch tensors): a (3, 37, 29)
        # array stored (3, 29, 37), tiles cut on both axes
        xt = rng.standard_normal(3 * 37 * 29).astype(np.float32)
        _cuda.dropout_transposed_into(cuda.to_device(xt), cuda.device_array(xt.shape, np.float32),
                                      (3, 37, 29), p, seed, offset, 1 / (1 - p))
    else:
        # the elementwise kernels stage each tile's Philox words in shared memory behind a barrier:
        # racecheck and synccheck see them too (1027 elements: a partial last tile)
        xs = rng.standard_normal(1027).astype(np.float32)
        _cuda.dropout_flat_into(cuda.to_device(xs), cuda.device_array(xs.shape, np.float32), p, seed, offset,
                                1 / (1 - p))
        bits = (xs.view(np.uint32) >> 16).astype(np.uint16).view(np.int16)
        _cuda.dropout_flat_into(cuda.to_device(bits), cuda.device_array(bits.shape, np.int16), p, seed,
                                offset, 1 / (1 - p), bf16=True)
        xt = rng.standard_normal(3 * 37 * 29).astype(np.float32)
        _cuda.dropout_transposed_into(cuda.to_device(xt), cuda.device_array(xt.shape, np.float32),
                                      (3, 37, 29), p, seed, offset, 1 / (1 - p))
    cuda.synchronize()


def torch_tensors():
    """The torch-CUDA route: launches on torch's current stream into torch's memory."""
    import torch
    import fastdrop
    seed = 2**40 + 17
    s = torch.cuda.Stream()
    for stream in (torch.cuda.current_stream(), s):
        with torch.cuda.stream(stream):
            for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
                x = torch.randn(3, 5, 7, 9, device="cuda", dtype=dtype, requires_grad=True)
                xcl = x.detach().to(memory_format=torch.channels_last).requires_grad_(True)
                for xx in (x, xcl):
                    for f in (fastdrop.dropout, fastdrop.dropout2d, fastdrop.drop_path):
                        y = f(xx, 0.3, seed=seed)
                        torch.autograd.grad(y.sum(), xx)
                a = torch.randn(2, 3, 17, 19, device="cuda", dtype=dtype, requires_grad=True)
                b = torch.randn(2, 3, 19, 5, device="cuda", dtype=dtype, requires_grad=True)
                torch.autograd.grad(fastdrop.dropout_matmul(a, b, 0.3, seed=seed).sum(), (a, b))
                xi = torch.randn(37, 29, device="cuda", dtype=dtype, requires_grad=True)
                w = torch.randn(23, 29, device="cuda", dtype=dtype, requires_grad=True)
                bias = torch.randn(23, device="cuda", dtype=dtype, requires_grad=True)
                for y in (fastdrop.dropout_linear(xi, w, bias, 0.3, seed=seed),
                          fastdrop.dropconnect_linear(xi, w, bias, 0.3, seed=seed),
                          fastdrop.dropconnect_linear(xi, w, bias, 0.3, seed=seed, per_sample=True)):
                    torch.autograd.grad(y.sum(), (xi, w, bias))
                out = torch.empty_like(x)
                fastdrop.dropout(x.detach(), 0.3, seed=seed, out=out)
                fastdrop.max_norm_(w.detach().clone(), 1.0, dim=1)
                fastdrop.max_norm_(w.detach().clone(), 1.0, dim=0)
    torch.cuda.synchronize()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shared-only", action="store_true", help="only the shared-memory kernels")
    ap.add_argument("--no-torch", action="store_true", help="skip the torch-CUDA route")
    args = ap.parse_args(argv)
    from numba import cuda
    simulator = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
    if not cuda.is_available():
        print("no CUDA GPU for numba.cuda (and no simulator): nothing to launch", file=sys.stderr)
        return 3
    names = instrument()
    log(f"{len(names)} kernels in kernels/*_cuda.py: {' '.join(names)}")
    if not names:  # (another numba-cuda's dispatcher class: nothing recognised, nothing checked)
        log("FAIL: no kernel recognised in kernels/*_cuda.py (numba-cuda's dispatcher layout?): "
            "the sanitizer pass would check nothing")
        return 2
    device_arrays(args.shared_only)
    log("device arrays done")
    if not (args.shared_only or args.no_torch or simulator):
        import torch
        if torch.cuda.is_available():
            torch_tensors()
            log("torch tensors done")
        else:
            log("torch sees no CUDA device: torch route skipped")
    expected = [n for n in names if n in SHARED] if args.shared_only else names
    missing = [n for n in expected if n not in LAUNCHED]
    for name in names:
        log(f"  {name:36s} launches: {LAUNCHED.get(name, 0)}")
    if missing:
        log(f"FAIL: never launched: {' '.join(missing)} (add them to tests/gpu/launch_all_kernels.py)")
        return 2
    log("every kernel launched")
    return 0


T0 = time.perf_counter()
if __name__ == "__main__":
    sys.exit(main())
