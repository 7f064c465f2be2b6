"""Determinism and index math.

- The same (seed, offset) gives bit-identical outputs with 1 and 2 Numba threads, in a fresh
  process, and from several Python threads calling at once (the kernels release the GIL).
  Small inputs run the serial kernels (config.CPU_PARALLEL_MIN and the per-module thresholds), so
  `parallel_workload` calls every parallel CPU kernel (every kernel with a prange loop, found in
  the kernel modules, not listed by hand) at a size at or above its threshold, and the tests
  count which dispatchers ran: a kernel the workload no longer reaches fails them.
- Element indices past 2^32: the element -> Philox counter mapping carries the block index's
  high half in counter word 1, so block 2^32 + k is never block k (no wrap into an earlier
  element's bits); checked directly on the compiled block function and scratch fill the kernels
  use, and through offsets >= 2^32.
- The Numba dispatchers compile once per dtype/layout, not once per shape.
"""
import collections
import hashlib
import importlib
import inspect
import pkgutil
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
import pytest
import torch

import fastdrop
import fastdrop.kernels
from fastdrop.kernels import config, dropout_cpu
from fastdrop.kernels.philox import philox_block_cpu

from contract import block_halves, block_words

SEED, OFFSET = 0x0123456789ABCDEF, 2**40 + 7
needs_2_threads = pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 Numba threads")


def workload():
    """Every CPU kernel: flat, strided (transpose, negative strides), grouped, keep_mask, torch."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((37, 129)).astype(np.float32)
    x64 = rng.standard_normal((6, 5, 33)).astype(np.float64)
    outs = [fastdrop.dropout(x, 0.3, seed=SEED, offset=OFFSET),
            fastdrop.dropout(x.T, 0.3, seed=SEED, offset=OFFSET),
            fastdrop.dropout(x[::-2, ::3], 0.7, seed=SEED),
            fastdrop.dropout1d(x64, 0.5, seed=SEED, offset=OFFSET),
            fastdrop.dropout_mask((3001,), 0.25, SEED, OFFSET),
            fastdrop.dropout(torch.from_numpy(x64), 0.4, seed=SEED).numpy()]
    return outs


# ---- every parallel CPU kernel, at a size that runs it in parallel ---------------------------

def _kernel_modules():
    """The CPU kernel modules: every module of fastdrop.kernels but the CUDA ones and config."""
    names = [m.name for m in pkgutil.iter_modules(fastdrop.kernels.__path__)]
    return [importlib.import_module(f"fastdrop.kernels.{n}") for n in sorted(names)
            if not n.endswith("_cuda") and n != "config"]


def parallel_kernels():
    """{"module.name": dispatcher} for every CPU kernel with a prange loop. Found from the source,
    not from the `parallel` flag: the NUMBA_BOUNDSCHECK pass (tests/boundscheck_plugin.py)
    compiles these same kernels with parallel=False."""
    found = {}
    clones = {id(k.serial) for k in config._KERNELS}  # a cpu_kernel's `.serial`, bound to a name
    for mod in _kernel_modules():
        for name, obj in vars(mod).items():
            # a plain njit dispatcher or a cpu_kernel (parallel dispatcher + fork-safe serial clone)
            if (isinstance(obj, (numba.core.registry.CPUDispatcher, config.CpuKernel))
                    and id(obj) not in clones and obj.py_func.__module__ == mod.__name__
                    and "prange(" in inspect.getsource(obj.py_func)):
                found[f"{mod.__name__.rsplit('.', 1)[1]}.{name}"] = obj
    return found


def thresholds():
    """[(module, name)]: every `*PARALLEL*MIN*` int (the size below which a launcher picks the serial
    twin `<kernel>_serial`) held by a kernel module or a loaded fastdrop module."""
    mods = _kernel_modules() + [m for n, m in list(sys.modules.items())
                                if n == "fastdrop" or n.startswith("fastdrop.")]
    return [(m, k) for m in dict.fromkeys(mods) for k, v in vars(m).items()
            if "PARALLEL" in k and k.endswith("MIN") and isinstance(v, int)]


def _ge(n):
    """A size of at least n elements that is no multiple of the 1024-element chunk (a partial
    last chunk on purpose)."""
    return n + 37


# Read once: test_parallel_and_serial_kernels_agree raises the thresholds, not the sizes.
SMALL = _ge(config.CPU_PARALLEL_MIN)  # dropout_flat's threshold in fastdrop._cpu
BIG = _ge(max(getattr(m, k) for m, k in thresholds()))  # dense layers, MC dropout


def parallel_workload():
    """{label: array}: calls every parallel CPU kernel at or above its threshold (numpy and torch
    launchers, forward and backward)."""
    rng = np.random.default_rng(7)
    small, big = SMALL, BIG
    out = {}
    x = rng.standard_normal((small // 128 + 1, 128), np.float32)
    out["dropout_flat"] = fastdrop.dropout(x, 0.3, seed=SEED, offset=OFFSET)
    out["dropout_flat torch"] = fastdrop.dropout(torch.from_numpy(x).double(), 0.3, seed=SEED).numpy()
    out["dropout_tiled"] = fastdrop.dropout(x.T, 0.6, seed=SEED, offset=OFFSET)  # a permuted layout
    out["dropout_tiled_at"] = fastdrop.dropout(torch.from_numpy(x).T, 0.6, seed=SEED, offset=OFFSET).numpy()  # torch's
    out["dropout_flat_inplace"] = fastdrop.dropout(x.copy(), 0.3, seed=SEED, offset=OFFSET, inplace=True)
    out["dropout_strided"] = fastdrop.dropout(x[:, ::2], 0.6, seed=SEED, offset=OFFSET)  # no unit stride
    out["keep_mask"] = fastdrop.dropout_mask((3, small // 3 + 1), 0.25, SEED, OFFSET)
    x4 = rng.standard_normal((8, 33, SMALL // 264 + 1))  # the grouped kernels' threshold is dropout_flat's
    out["dropout_groups_flat"] = fastdrop.dropout2d(x4, 0.5, seed=SEED, offset=OFFSET)
    # torch tensors: the same kernel on the tensors' addresses
    out["dropout_groups_flat_at"] = fastdrop.dropout2d(torch.from_numpy(x4), 0.5, seed=SEED, offset=OFFSET).numpy()
    # short runs: tiles of whole runs, flags per element below TINY_RUN (runs of 3), not (runs of 49)
    x3 = rng.standard_normal((8, SMALL // 24 + 1, 3)).astype(np.float32)
    out["dropout_groups_flat, runs of 3"] = fastdrop.dropout1d(x3, 0.5, seed=SEED, offset=OFFSET)
    x49 = torch.from_numpy(rng.standard_normal((8, SMALL // 392 + 1, 49)).astype(np.float32))
    out["dropout_groups_flat_at, runs of 49"] = fastdrop.dropout1d(x49, 0.5, seed=SEED, offset=OFFSET).numpy()
    # channels_last-like (C innermost): the keep mask, then rows of C with contiguous keep flags
    x4_cl = np.ascontiguousarray(x4.transpose(0, 2, 1)).transpose(0, 2, 1)
    out["keep_mask + apply_group_mask_inner"] = fastdrop.dropout2d(x4_cl, 0.5, seed=SEED, offset=OFFSET)
    # ... with few channels (the long-loop kernel), and with the runs of C a step apart (the last
    # dim sliced; and 33 channels above): the strided inner kernel
    x16 = rng.standard_normal((8, 16, SMALL // 128 + 1))
    x16_cl = np.ascontiguousarray(x16.transpose(0, 2, 1)).transpose(0, 2, 1)
    out["keep_mask + apply_group_mask_inner, C = 16"] = fastdrop.dropout2d(x16_cl, 0.5, seed=SEED, offset=OFFSET)
    # a channels_last torch tensor with few channels: the one-launch kernel on its memory
    x16_t = torch.from_numpy(rng.standard_normal((8, 16, 4, SMALL // 512 + 1))).contiguous(
        memory_format=torch.channels_last)
    out["dropout_groups_inner_at"] = fastdrop.dropout2d(x16_t, 0.5, seed=SEED, offset=OFFSET).numpy()
    x4w = rng.standard_normal((8, 33, 2 * (SMALL // 264 + 1)))
    x4_cls = np.ascontiguousarray(x4w.transpose(0, 2, 1)).transpose(0, 2, 1)[:, :, ::2]
    out["keep_mask + apply_group_mask_inner_strided"] = fastdrop.dropout2d(x4_cls, 0.5, seed=SEED, offset=OFFSET)
    # ... and in place (one array: the in-place twins), many channels (more than INNER_ROWS_MAX_C)
    # and few
    x80 = rng.standard_normal((8, 80, SMALL // 640 + 1))
    out["apply_group_mask_inner_strided_inplace"] = fastdrop.dropout2d(
        np.ascontiguousarray(x80.transpose(0, 2, 1)).transpose(0, 2, 1), 0.5, seed=SEED, offset=OFFSET,
        inplace=True)
    x4_few = np.ascontiguousarray(rng.standard_normal((4, big // 12, 3), np.float32)).transpose(0, 2, 1)
    out["apply_group_mask_inner_inplace"] = fastdrop.dropout2d(x4_few, 0.5, seed=SEED, offset=OFFSET,
                                                              inplace=True)
    # C outermost: the keep mask, then the strided apply
    x4_cn = np.ascontiguousarray(x4.transpose(1, 0, 2)).transpose(1, 0, 2)
    out["keep_mask + apply_group_mask"] = fastdrop.dropout2d(x4_cn, 0.5, seed=SEED, offset=OFFSET)
    # the grouped ops' native route under autograd: torch's multiply, then the zero pass on the
    # threads' shares of the output (from torch's grain size on, with torch on several threads)
    xz = torch.from_numpy(rng.standard_normal((8, 16, 1024), np.float32)).requires_grad_()
    out["zero_dropped_runs_at"] = fastdrop.dropout1d(xz, 0.5, seed=SEED, offset=OFFSET).detach().numpy()
    xzs = torch.from_numpy(rng.standard_normal((8, 4096, 16), np.float32)).requires_grad_()  # short runs: tiles
    out["zero_dropped_runs_at, runs of 16"] = fastdrop.dropout1d(xzs, 0.1, seed=SEED, offset=OFFSET).detach().numpy()
    # ... and with the channels innermost (channels_last): the pass over every row
    xzc = torch.from_numpy(rng.standard_normal((8, 32, 32, 16), np.float32)).permute(0, 3, 1, 2).requires_grad_()
    out["zero_dropped_inner_at"] = fastdrop.dropout2d(xzc, 0.5, seed=SEED, offset=OFFSET).detach().numpy()
    ctr = rng.integers(0, 2**32, (small // 4 + 1, 4), dtype=np.uint64)
    out["philox4x32_array"] = fastdrop.philox4x32(ctr, [SEED & 0xFFFFFFFF, SEED >> 32])
    w = rng.standard_normal((515, 257), np.float32)
    out["max_norm_rows"] = fastdrop.max_norm_(w.copy(), 3.0, dim=1)
    out["max_norm_cols"] = fastdrop.max_norm_(w.copy(), 3.0, dim=0)

    # dropout_matmul's backward masks a and grad_a in one parallel region (dropout_pair)
    a = torch.from_numpy(rng.standard_normal((2, small // 512 + 1, 256))).requires_grad_()
    b = torch.from_numpy(rng.standard_normal((256, 8))).requires_grad_()
    fastdrop.dropout_matmul(a, b, 0.4, seed=SEED).sum().backward()
    out["dropout_pair grad_a"], out["dropout_pair grad_b"] = a.grad.numpy(), b.grad.numpy()

    # torch dense layers above PARALLEL_MASK_MIN: dropout_flat (forward), mask_pair (backward),
    # mask_inplace (DropConnect's weight gradient)
    xb = torch.from_numpy(rng.standard_normal((big // 1024 + 1, 1024), np.float32)).requires_grad_()
    wb = torch.from_numpy(rng.standard_normal((8, 1024), np.float32)).requires_grad_()
    y = fastdrop.dropout_linear(xb, wb, None, 0.3, seed=SEED, offset=OFFSET)
    y.backward(torch.ones_like(y))
    out["dropout_linear y"], out["mask_pair gx"] = y.detach().numpy(), xb.grad.numpy()
    xs = torch.from_numpy(rng.standard_normal((4, 1024), np.float32)).requires_grad_()
    wd = torch.from_numpy(rng.standard_normal((big // 1024 + 1, 1024), np.float32)).requires_grad_()
    y = fastdrop.dropconnect_linear(xs, wd, None, 0.3, seed=SEED)
    y.backward(torch.ones_like(y))
    out["dropconnect y"], out["dropconnect gx"] = y.detach().numpy(), xs.grad.numpy()
    out["mask_inplace gw"] = wd.grad.numpy()

    # per-sample DropConnect: N*O*I mask words, tasks over (n, row block) and threads
    xp = torch.from_numpy(rng.standard_normal((8, 256))).requires_grad_()
    wp = torch.from_numpy(rng.standard_normal((65, 256))).requires_grad_()
    bp = torch.zeros(65, dtype=torch.float64, requires_grad=True)
    y = fastdrop.dropconnect_linear(xp, wp, bp, 0.3, seed=SEED, per_sample=True)
    y.backward(torch.from_numpy(rng.standard_normal(y.shape)))
    out["dropconnect_sample_fwd"] = y.detach().numpy()
    out["dropconnect_sample_bwd gw"], out["dropconnect_sample_bwd gb"] = wp.grad.numpy(), bp.grad.numpy()
    out[SAMPLE_GX] = xp.grad.numpy()

    # MC dropout, fused [Dropout, Linear] tail: all samples' masked copies in one dropout_samples call
    head = torch.nn.Linear(1024, 4).double()
    with torch.no_grad():  # weights from rng, not from torch's generator (its state varies per call)
        head.weight.copy_(torch.from_numpy(rng.standard_normal((4, 1024))))
        head.bias.zero_()
    model = torch.nn.Sequential(fastdrop.nn.Dropout(0.5), head).eval()
    xm = torch.from_numpy(rng.standard_normal((big // (1024 * 8) + 1, 1024)))
    res = fastdrop.mc_predict(model, xm, samples=8, seed=SEED, chunk=8)
    out["dropout_samples mean"], out["dropout_samples var"] = res.mean.numpy(), res.var.numpy()
    return out


# The per-sample DropConnect input gradient sums one partial buffer per Numba thread
# (fastdrop/linear.py: nt = get_num_threads()), so its float rounding depends on the thread count.
SAMPLE_GX = "dropconnect_sample_bwd gx"


def serial_twins():
    """{"module.name_serial": dispatcher}: the serial twin of each parallel kernel that has one."""
    twins = {}
    for name, disp in parallel_kernels().items():
        twin = getattr(sys.modules[disp.py_func.__module__], disp.py_func.__name__ + "_serial", None)
        if twin is not None:
            twins[name + "_serial"] = twin
    return twins


# Found once, at import: _counting replaces the module attributes the scan reads.
PARALLEL, TWINS = parallel_kernels(), serial_twins()


def _counting(monkeypatch):
    """Wrap every parallel kernel and its serial twin wherever a fastdrop module holds it; returns
    {name: [numba.get_num_threads() at each call]}."""
    calls = collections.defaultdict(list)
    for name, disp in {**PARALLEL, **TWINS}.items():
        def counted(*args, _d=disp, _n=name):
            calls[_n].append(numba.get_num_threads())
            return _d(*args)
        for modname, mod in list(sys.modules.items()):
            if modname == "fastdrop" or modname.startswith("fastdrop."):
                for attr, val in list(vars(mod).items()):
                    if val is disp:
                        monkeypatch.setattr(mod, attr, counted)
    return calls


def test_parallel_kernels_found_are_the_parallel_ones():
    found = PARALLEL
    assert found == parallel_kernels()  # no test left a kernel patched
    assert "dropout_cpu.dropout_flat" in found and "dropout_cpu.dropout_flat_serial" not in found
    if not numba.config.BOUNDSCHECK:  # that pass compiles them all serial
        flagged = {n for m in _kernel_modules() for n, d in
                   ((f"{m.__name__.rsplit('.', 1)[1]}.{k}", v) for k, v in vars(m).items())
                   if isinstance(d, (numba.core.registry.CPUDispatcher, config.CpuKernel))
                   and d.targetoptions.get("parallel")}
        assert set(found) == flagged


THREADS = min(2, numba.config.NUMBA_NUM_THREADS)


def _run(threads):
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(threads)
        return parallel_workload()
    finally:
        numba.set_num_threads(previous)


@pytest.fixture(scope="module")
def reference():
    """(outputs, calls) of parallel_workload with THREADS Numba threads, run once for the module
    (the workload takes about a second on the loaded 2-core machine)."""
    with pytest.MonkeyPatch.context() as mp:
        calls = _counting(mp)
        out = _run(THREADS)
    return out, dict(calls)


@needs_2_threads
def test_workload_runs_every_parallel_kernel_with_2_threads(reference):
    # a kernel below its threshold would have run its serial twin instead and be missing here
    _, calls = reference
    missed = [k for k in PARALLEL if not calls.get(k)]
    assert not missed, f"the workload never reached {missed}"
    assert not [k for k in PARALLEL if min(calls[k]) < 2], calls
    # and no launch in it fell below a threshold (dropout_flat alone is also reached by the dense
    # layers, so a too-small elementwise input would go unnoticed above); the per-channel mask of
    # the spatial call is a few hundred elements and is drawn serially by design
    assert not {k: v for k, v in calls.items() if k in TWINS and k != "dropout_cpu.keep_mask_serial"}, calls


@needs_2_threads
def test_bit_identical_with_1_and_2_numba_threads(reference, monkeypatch):
    calls = _counting(monkeypatch)
    one = _run(1)
    assert not [k for k in PARALLEL if not calls[k] or set(calls[k]) != {1}], dict(calls)
    previous = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        small_one = workload()
        numba.set_num_threads(2)
        small_two = workload()
    finally:
        numba.set_num_threads(previous)
    for a, b in zip(small_one, small_two):
        assert a.tobytes() == b.tobytes()
    two, _ = reference
    assert one.keys() == two.keys()
    for label in one:
        assert one[label].tobytes() == two[label].tobytes(), label


@needs_2_threads
def test_per_sample_dropconnect_input_grad_bit_identical_with_1_and_2_threads(reference):
    assert _run(1)[SAMPLE_GX].tobytes() == reference[0][SAMPLE_GX].tobytes()


@needs_2_threads
def test_parallel_and_serial_kernels_agree(reference, monkeypatch):
    """Every threshold raised past the input (the serial twins run): the same bits as the
    parallel kernels with 2 threads."""
    calls = _counting(monkeypatch)
    for mod, name in thresholds():
        monkeypatch.setattr(mod, name, 2**62)
    serial = _run(2)
    # each thresholded kernel gave way to its serial twin (the others have no threshold)
    assert TWINS
    for twin in TWINS:
        assert calls[twin], f"{twin} never ran (is {twin[:-len('_serial')]} dead code?)"
        assert not calls[twin[:-len("_serial")]], (twin, dict(calls))
    parallel, _ = reference
    for label in parallel:
        assert parallel[label].tobytes() == serial[label].tobytes(), label


def digest(arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def test_bit_identical_across_processes(reference):
    # This process compiles (or loads) every kernel first: in the NUMBA_BOUNDSCHECK pass the child
    # inherits that pass's cache dir, and must find the bounds-checked code there, not add its own.
    expected = digest(workload() + list(reference[0].values()))
    code = ("import sys; sys.path.insert(0, %r); import test_determinism as t; "
            "print(t.digest(t.workload() + list(t._run(t.THREADS).values())))"
            % str(__import__("pathlib").Path(__file__).parent))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expected


def test_seed_none_reproducible_across_processes():
    """seed=None after fastdrop.manual_seed / torch.manual_seed: the same masks in a fresh process."""
    code = ("import numpy as np, torch, fastdrop, hashlib; fastdrop.manual_seed(11); torch.manual_seed(11); "
            "a = fastdrop.dropout(np.ones(500), 0.5); b = fastdrop.dropout(torch.ones(500), 0.5).numpy(); "
            "print(hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    fastdrop.manual_seed(11)
    torch.manual_seed(11)
    a = fastdrop.dropout(np.ones(500), 0.5)
    b = fastdrop.dropout(torch.ones(500), 0.5).numpy()
    assert out.stdout.strip() == hashlib.sha256(a.tobytes() + b.tobytes()).hexdigest()


def _skip_on_workqueue():
    # Numba picks its layer at the first parallel launch (threading_layer() raises before that):
    # start it with an input above the serial threshold.
    fastdrop.dropout(np.ones(config.CPU_PARALLEL_MIN, np.float32), 0.5, seed=0)
    if numba.threading_layer() == "workqueue":
        pytest.skip("Numba's workqueue threading layer is not thread-safe (docs/robustness.md)")


def test_concurrent_calls_from_python_threads(monkeypatch):
    _skip_on_workqueue()
    calls = _counting(monkeypatch)
    rng = np.random.default_rng(0)
    # above the serial threshold: several Python threads share Numba's parallel kernel
    xs = [rng.standard_normal((_ge(config.CPU_PARALLEL_MIN) // 129 + 1, 129)).astype(np.float32)
          for _ in range(4)]
    expected = {(i, s): fastdrop.dropout(xs[i], 0.5, seed=s) for i in range(4) for s in range(6)}
    barrier = threading.Barrier(4)

    def job(i):
        barrier.wait()
        res = {}
        for s in range(6):
            res[(i, s)] = fastdrop.dropout(xs[i], 0.5, seed=s)
            t = fastdrop.dropout(torch.from_numpy(xs[i]), 0.5, seed=s).numpy()
            assert np.array_equal(t, res[(i, s)])
        return res

    with ThreadPoolExecutor(4) as pool:
        for res in pool.map(job, range(4)):
            for key, y in res.items():
                assert np.array_equal(y, expected[key])
    assert len(calls["dropout_cpu.dropout_flat"]) == 4 * 6 * 3 and not calls["dropout_cpu.dropout_flat_serial"]


def test_every_parallel_kernel_from_concurrent_python_threads(reference, monkeypatch):
    """Two Python threads run the whole parallel workload at once: the same bits as alone."""
    _skip_on_workqueue()
    calls = _counting(monkeypatch)
    barrier = threading.Barrier(2)

    def job(_):
        barrier.wait()
        return _run(THREADS)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(job, range(2)))
    # each kernel ran in both threads' workloads
    assert PARALLEL and not [k for k in PARALLEL if len(calls[k]) < 2], dict(calls)
    for res in results:
        for label, y in reference[0].items():
            assert y.tobytes() == res[label].tobytes(), label


def test_seed_none_draws_are_thread_safe():
    """Concurrent seed=None draws never hand two calls the same seed (the draw is locked)."""
    x = np.ones(4096, np.float32)
    with ThreadPoolExecutor(4) as pool:
        masks = list(pool.map(lambda _: fastdrop.dropout(x, 0.5) != 0, range(16)))
    assert len({m.tobytes() for m in masks}) == 16


# ---- index math past 2^32 ----------------------------------------------------------------

def kernel_words(block, offset, seed):
    r = philox_block_cpu(np.uint64(block), np.uint64(offset & 0xFFFFFFFF), np.uint64(offset >> 32),
                         np.uint64(seed & 0xFFFFFFFF), np.uint64(seed >> 32))
    return np.array([np.uint32(v) for v in r], np.uint32)


@pytest.mark.parametrize("element", [2**32 - 8, 2**32, 2**32 + 8, 2**34 + 8, 2**36 * 3 + 16,
                                     2**62, 2**64 - 8])
def test_block_mapping_past_2_32_never_wraps(element):
    block = element // 8
    low = block & 0xFFFFFFFF  # the block a 32-bit counter would wrap to
    got = kernel_words(block, OFFSET, SEED)
    np.testing.assert_array_equal(got, block_words(block, OFFSET, SEED))
    if block >= 2**32:
        assert not np.array_equal(got, block_words(low, OFFSET, SEED))


@numba.njit
def _fill(buf, first_block, nblocks, off_lo, off_hi, key_lo, key_hi):
    dropout_cpu.fill_words(buf, first_block, nblocks, off_lo, off_hi, key_lo, key_hi)


def test_scratch_fill_across_the_2_32_block_boundary():
    """fill_words (the scratch generator inside every CPU kernel) over blocks 2^32 - 3 .. 2^32 + 2."""
    first = 2**32 - 3
    buf = np.empty(48, np.uint16)
    _fill(buf, np.uint64(first), 6, np.uint64(OFFSET & 0xFFFFFFFF), np.uint64(OFFSET >> 32),
          np.uint64(SEED & 0xFFFFFFFF), np.uint64(SEED >> 32))
    expected = np.concatenate([block_halves(first + j, OFFSET, SEED) for j in range(6)])
    np.testing.assert_array_equal(buf, expected)


@pytest.mark.parametrize("offset", [2**32 - 1, 2**32, 2**33 + 5, 2**63, 2**64 - 1])
def test_offsets_past_2_32_follow_the_contract(offset):
    n = 4099
    halves = np.concatenate([block_halves(b, offset, SEED) for b in range((n + 7) // 8)])[:n]
    expected = halves < fastdrop.keep_threshold(0.5)
    np.testing.assert_array_equal(fastdrop.dropout_mask((n,), 0.5, SEED, offset), expected)
    # offsets differing only in the high half give different masks
    low = fastdrop.dropout_mask((n,), 0.5, SEED, offset & 0xFFFFFFFF)
    assert offset < 2**32 or not np.array_equal(low, expected)


# ---- Numba dispatcher: one compilation per dtype/layout, not per shape ----------------------

def test_no_recompilation_for_new_shapes():
    kernels = [dropout_cpu.dropout_flat, dropout_cpu.dropout_strided, dropout_cpu.dropout_tiled,
               dropout_cpu.dropout_tiled_serial, dropout_cpu.keep_mask, dropout_cpu.apply_group_mask]

    def run(shape, dtype):
        x = np.ones(shape, dtype)
        fastdrop.dropout(x, 0.5, seed=1)
        fastdrop.dropout(np.swapaxes(x, 0, -1), 0.5, seed=1)
        fastdrop.dropout2d(x, 0.5, seed=1)
        fastdrop.dropout_mask(shape, 0.5, 1)

    for dtype in (np.float32, np.float64):
        run((2, 3, 4, 5), dtype)
    before = [len(k.signatures) for k in kernels]
    for shape in ((7, 1, 9, 2), (1, 1, 1, 1), (3, 8, 2, 129), (5, 2, 4, 3)):
        for dtype in (np.float32, np.float64):
            run(shape, dtype)
    assert [len(k.signatures) for k in kernels] == before
