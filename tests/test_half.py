"""float16 / bfloat16 dropout without float32 copies (issue 11, item 3).

The CPU kernels read and write the 16-bit data directly, widening each element to float32 in a
register and rounding once (kernels/dropout_cpu.py). Contract checked here: the result is bit for
bit the old route's, `dropout(x.float()).to(dtype)` (numpy: `astype`), with the same mask, on every
16-bit pattern; and the extra resident memory of a call is the output alone (0 in place).
NaN: numpy's float16 result is compared bit for bit too; torch's casts do not keep NaN payloads
consistently (its bfloat16 cast and its <8-element float16 cast write one fixed NaN pattern), so
against torch a NaN must stay NaN with its sign, payload kept and quiet bit set (checked directly).
"""
import json
import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest

import fastdrop
import fastdrop.nn as fnn
from fastdrop import _cpu
from fastdrop.kernels import dropout_cpu
from fastdrop.kernels.config import CPU_PARALLEL_MIN

torch = pytest.importorskip("torch")

ALL16 = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)


# ---- the scalar conversions, over every 16-bit pattern ------------------------------------------

def _elementwise(fn):
    """A compiled loop applying scalar function fn (njit function or intrinsic) to an array."""
    @numba.njit
    def run(a, out):
        for i in range(a.size):
            out[i] = fn(a[i])
    return run


def _widen_all(fn, h):
    out = np.empty(h.size, np.float32)
    _elementwise(fn)(h, out)
    return out.view(np.uint32)


def _narrow_all(fn, f, dtype):
    out = np.empty(f.size, dtype)
    _elementwise(fn)(f, out)
    return out.view(np.uint16)


def _f32_probes(values16):
    """float32 inputs that exercise a 16-bit rounding: every 16-bit value (as float32), its float32
    neighbours, the exact midpoints to the next value and their neighbours, and random bits."""
    v = values16.astype(np.float32)
    finite = v[np.isfinite(v)].astype(np.float64)
    nxt = np.sort(np.unique(finite))
    mids = ((nxt[:-1] + nxt[1:]) / 2).astype(np.float32)  # exact: 12 or 9 significant bits
    rnd = np.random.default_rng(0).integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32)
    parts = [v, mids, -mids]
    with np.errstate(invalid="ignore"):  # NaN neighbours are NaN
        for a in (v, mids, -mids):
            parts += [np.nextafter(a, np.float32(np.inf)), np.nextafter(a, np.float32(-np.inf))]
    bits = np.concatenate([p.view(np.uint32) for p in parts] + [rnd])
    return bits.view(np.float32)


def test_f16_to_f32_exhaustive():
    ref = ALL16.view(np.float16).astype(np.float32).view(np.uint32)
    # the bit code is exact on every pattern, NaN payloads (signalling ones too) included
    assert np.array_equal(_widen_all(dropout_cpu.f16_to_f32_bits, ALL16), ref)
    # also on a thread with denormals-are-zero on: float16 subnormals went through float32
    # subnormals there, read as 0 (a review, 2026-12-06); the serial loop runs on this thread
    if torch.set_flush_denormal(True):
        try:
            assert np.array_equal(_widen_all(dropout_cpu.f16_to_f32_bits, ALL16), ref)
        finally:
            torch.set_flush_denormal(False)
    if dropout_cpu.NATIVE_F16:
        # vcvtph2ps quiets a signalling NaN; the product with the scale would anyway
        got = _widen_all(dropout_cpu.f16_to_f32_hw, ALL16)
        nan = np.isnan(ALL16.view(np.float16))
        assert np.array_equal(got[~nan], ref[~nan])
        assert np.array_equal(got[nan], ref[nan] | np.uint32(0x400000))


def test_bf16_to_f32_exhaustive():
    ref = torch.from_numpy(ALL16.view(np.int16)).view(torch.bfloat16).float().numpy().view(np.uint32)
    assert np.array_equal(_widen_all(dropout_cpu.bf16_to_f32, ALL16.view(np.int16)), ref)


def test_f32_to_f16_rounds_like_numpy_and_torch():
    f = _f32_probes(ALL16.view(np.float16))
    nan = np.isnan(f)
    with np.errstate(over="ignore"):
        ref = f.astype(np.float16).view(np.uint16)
    ref_t = torch.from_numpy(f).to(torch.float16).view(torch.int16).numpy().view(np.uint16)
    u = f.view(np.uint32)  # NaN: sign and top payload bits kept, quiet bit set (as vcvtps2ph)
    quiet = (((u >> 16) & 0x8000) | 0x7E00 | ((u >> 13) & 0x3FF)).astype(np.uint16)
    fns = [dropout_cpu.f32_to_f16_bits] + ([dropout_cpu.f32_to_f16_hw] if dropout_cpu.NATIVE_F16 else [])
    for fn in fns:
        got = _narrow_all(fn, f, np.uint16)
        assert np.array_equal(got[~nan], ref[~nan]), fn
        assert np.array_equal(got[~nan], ref_t[~nan]), fn
        assert np.array_equal(got[nan], quiet[nan]), fn


def test_f32_to_bf16_rounds_like_torch():
    f = _f32_probes(torch.from_numpy(ALL16.view(np.int16)).view(torch.bfloat16).float().numpy())
    nan = np.isnan(f)
    ref = torch.from_numpy(f).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    got = _narrow_all(dropout_cpu.f32_to_bf16, f, np.int16)
    assert np.array_equal(got[~nan], ref[~nan])
    assert np.array_equal(got[nan], (f[nan].view(np.uint32) >> 16).astype(np.uint16) | np.uint16(0x40))


# ---- the ops: bit for bit the old float32-then-round route --------------------------------------

SMALL = (3, 7, 256)                          # below CPU_PARALLEL_MIN: the serial flat kernel
BIG = (CPU_PARALLEL_MIN // 1024 + 3, 1031)   # above it: the parallel flat kernel
assert np.prod(SMALL) < CPU_PARALLEL_MIN <= np.prod(BIG)


def _all_patterns(shape, seed=0):
    """Every 16-bit pattern (NaN, Inf, subnormals, -0.0, the largest values...) tiled, shuffled."""
    n = int(np.prod(shape))
    return np.random.default_rng(seed).permutation(np.resize(ALL16, n)).reshape(shape)


def _torch_half(bits, dtype):
    return torch.from_numpy(bits.view(np.int16).copy()).view(dtype)


def _assert_same_torch(got, ref):
    """Bit equality except for NaN bit patterns, which torch's own casts do not keep (module doc)."""
    assert got.dtype == ref.dtype and got.shape == ref.shape and got.stride() == ref.stride()
    g = got.view(torch.int16).numpy().view(np.uint16)
    r = ref.view(torch.int16).numpy().view(np.uint16)
    gn, rn = torch.isnan(got.float()).numpy(), torch.isnan(ref.float()).numpy()
    assert np.array_equal(gn, rn)
    assert np.array_equal(g[~rn], r[~rn])


HALF = [torch.float16, torch.bfloat16]
CALLS = [  # (p, mode): scales 1/(1-p) (overflow to Inf, subnormal results) and 1 (classic)
    (0.5, "inverted"), (0.3, "inverted"), (0.4, "classic")]


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape", [SMALL, BIG], ids=["serial", "parallel"])
@pytest.mark.parametrize("p,mode", CALLS)
def test_torch_elementwise_matches_float32_route(dtype, shape, p, mode):
    x = _torch_half(_all_patterns(shape), dtype)
    kw = dict(seed=123, offset=7, mode=mode)
    for xi in (x, x.transpose(-1, -2)):  # contiguous (flat kernel) and transposed (strided kernel)
        ref = fastdrop.dropout(xi.float(), p, **kw).to(dtype)
        _assert_same_torch(fastdrop.dropout(xi, p, **kw), ref)
        y = xi.clone()
        assert fastdrop.dropout(y, p, inplace=True, **kw) is y
        _assert_same_torch(y, ref)


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_torch_spatial_matches_float32_route(dtype):
    x = _torch_half(_all_patterns((8, 16, 12, 11)), dtype)
    for xi in (x, x.contiguous(memory_format=torch.channels_last)):
        ref = fastdrop.dropout2d(xi.float(), 0.4, seed=5).to(dtype)
        got = fastdrop.dropout2d(xi, 0.4, seed=5)
        _assert_same_torch(got, ref)
        y = xi.clone()
        fastdrop.dropout2d(y, 0.4, seed=5, inplace=True)
        _assert_same_torch(y, ref)


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape", [(4, 6, 5, 7), (16, 64, 9, 9)], ids=["serial", "parallel"])
def test_torch_grouped_half_by_address_keeps_every_bit(monkeypatch, dtype, shape):
    """A float16/bfloat16 tensor's grouped call with nothing to record takes the grouped kernel on
    its memory by address (it took numpy views: a no-grad bfloat16 DropPath of (8, 64, 16, 16)
    cost 37.6 us against 17.3 for float32), and gives the numpy-view route's bits, NaN payloads
    included: every 16-bit pattern, both grouped ops, the serial and the parallel kernel."""
    bits = _all_patterns(shape)
    x = _torch_half(bits, dtype)
    calls = []
    kernel = dropout_cpu.dropout_groups_flat_at

    class Spy:
        def __getattr__(self, name):
            return getattr(kernel, name)

        def __call__(self, *args):
            calls.append(args[-1])
            return kernel(*args)
    monkeypatch.setattr(dropout_cpu, "dropout_groups_flat_at", Spy())
    monkeypatch.setattr(dropout_cpu, "dropout_groups_flat_at_serial", Spy())
    for call, g in ((lambda t: fastdrop.dropout2d(t, 0.3, seed=7), 2),
                    (lambda t: fastdrop.drop_path(t, 0.3, seed=7), 1)):
        calls.clear()
        got = call(x).view(torch.int16).numpy().view(np.uint16)
        assert calls and type(calls[0]) is (np.uint16 if dtype == torch.float16 else np.int16)
        bf16 = dtype == torch.bfloat16
        src = bits.view(np.uint16 if bf16 else np.float16)
        want = np.empty_like(src)
        _cpu.grouped_dropout_into(src, want, 0.3, 7, 0, 1 / 0.7, g, bf16=bf16)
        assert np.array_equal(got, want.view(np.uint16))


@pytest.mark.parametrize("dtype", HALF, ids=str)
def test_torch_small_elementwise_half_by_address_keeps_every_bit(monkeypatch, dtype):
    """A small contiguous float16/bfloat16 tensor's elementwise call takes the serial kernel on
    its memory by address, as float32 does (it took numpy views: 41 vs 18 us for a no-grad
    bfloat16 64x512 dropout), fresh, out= and in place, and the training step's call under
    autograd its lane Function, forward and backward; every result has the numpy-view route's
    bits, NaN payloads included, over every 16-bit pattern."""
    bits = _all_patterns(SMALL)
    x = _torch_half(bits, dtype)
    bf16 = dtype == torch.bfloat16
    calls = []
    for name in ("dropout_flat_serial_at", "dropout_flat_inplace_serial_at"):
        kernel = getattr(dropout_cpu, name)
        monkeypatch.setattr(dropout_cpu, name, lambda *a, _k=kernel: (calls.append(a[-1]), _k(*a))[1])

    def want(src_bits, seed, offset, p=0.3):
        src = src_bits.view(np.uint16 if bf16 else np.float16)
        out = np.empty_like(src)
        _cpu.dropout_into(src, out, p, seed, offset, 1 / (1 - p), bf16=bf16)
        return out.view(np.uint16)

    def bits_of(t):
        return t.detach().view(torch.int16).numpy().view(np.uint16)
    out = torch.empty_like(x)
    inplace = x.clone()
    results = (fastdrop.dropout(x, 0.3, seed=7, offset=2), fastdrop.dropout(x, 0.3, seed=7, offset=2, out=out),
               fastdrop.dropout(inplace, 0.3, seed=7, offset=2, inplace=True))
    assert results[1] is out and results[2] is inplace
    assert len(calls) == 3 and all(type(c) is (np.int16 if bf16 else np.uint16) for c in calls)
    for y in results:
        assert np.array_equal(bits_of(y), want(bits, 7, 2))
    calls.clear()
    leaf = x.clone().requires_grad_(True)
    grad = _torch_half(_all_patterns(SMALL, seed=1), dtype)
    torch.manual_seed(11)
    y = torch.nn.functional.dropout(torch.zeros(1), 0.5)  # (a draw, as the layer's would be)
    state = torch.get_rng_state()
    y = fnn.Dropout(0.3)(leaf)
    assert type(y.grad_fn).__name__ == "LaneDropoutBackward"
    torch.set_rng_state(state)
    seed = fastdrop._seeds.draw_torch_seed_eager(torch)
    y.backward(grad)
    assert len(calls) == 2
    assert np.array_equal(bits_of(y), want(bits, seed, 0))
    assert np.array_equal(bits_of(leaf.grad), want(_all_patterns(SMALL, seed=1), seed, 0))


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("shape", [(2, 6, 5, 7), (8, 16, 32, 32), (3, 100, 6, 7), (4, 130, 16, 16)],
                         ids=["serial", "parallel", "serial-many-channels", "parallel-many-channels"])
def test_torch_channels_last_half_by_address_keeps_every_bit(monkeypatch, dtype, shape):
    """A channels_last float16/bfloat16 tensor with few channels takes the inner-group kernel on
    its memory by address, as float32 does (it took numpy views: bfloat16 8x16x32x32 Dropout2d
    fwd+bwd 251 us against float32's 90, the sweep of 2026-12-06), with nothing to record and
    under autograd, forward and backward; the numpy-view route's bits over every 16-bit pattern,
    NaN payloads included, serial and parallel kernel."""
    bits = _all_patterns(shape)
    x = _torch_half(bits, dtype).contiguous(memory_format=torch.channels_last)
    bf16 = dtype == torch.bfloat16
    calls = []
    for name in ("dropout_groups_inner_at", "dropout_groups_inner_at_serial"):
        kernel = getattr(dropout_cpu, name)
        monkeypatch.setattr(dropout_cpu, name, lambda *a, _k=kernel: (calls.append(a[-1]), _k(*a))[1])

    def want(t):  # the numpy-view route on t's memory in channels_last order
        src = t.permute(0, 2, 3, 1).contiguous().view(torch.int16).numpy().view(np.uint16 if bf16 else np.float16)
        out = np.empty_like(src)
        _cpu.grouped_dropout_into(src.transpose(0, 3, 1, 2), out.transpose(0, 3, 1, 2), 0.3, 7, 0, 1 / 0.7, 2,
                                  bf16=bf16)
        return out.view(np.uint16)

    def bits_of(t):
        assert t.is_contiguous(memory_format=torch.channels_last)
        return t.detach().permute(0, 2, 3, 1).contiguous().view(torch.int16).numpy().view(np.uint16)
    got = fastdrop.dropout2d(x, 0.3, seed=7)
    assert calls and type(calls[-1]) is (np.int16 if bf16 else np.uint16)
    assert np.array_equal(bits_of(got), want(x))
    calls.clear()
    leaf = x.clone().requires_grad_(True)
    y = fastdrop.dropout2d(leaf, 0.3, seed=7)
    grad = _torch_half(_all_patterns(shape, seed=1), dtype).contiguous(memory_format=torch.channels_last)
    y.backward(grad)
    assert np.array_equal(bits_of(y), want(x))
    assert np.array_equal(bits_of(leaf.grad), want(grad))
    # (below 256 KiB the native route: torch's multiply by float32 factors, no kernel launch)
    assert len(calls) == (0 if x.numel() * 2 < 256 << 10 else 2)


def test_torch_backward_half():
    x = _torch_half(_all_patterns(SMALL), torch.float16)
    x = torch.where(torch.isfinite(x), x, torch.zeros_like(x)).requires_grad_(True)
    g = torch.randn(SMALL).half()
    fastdrop.dropout(x, 0.3, seed=9).backward(g)
    _assert_same_torch(x.grad, fastdrop.dropout(g.float(), 0.3, seed=9).half())


@pytest.mark.parametrize("shape", [SMALL, BIG], ids=["serial", "parallel"])
@pytest.mark.parametrize("p,mode", CALLS)
def test_numpy_float16_bit_identical(shape, p, mode):
    """numpy: bit for bit, NaN payloads included (astype keeps them)."""
    x = _all_patterns(shape).view(np.float16)
    kw = dict(seed=2**64 - 1, offset=2**40, mode=mode)
    for xi in (x, x.swapaxes(-1, -2), x[..., ::-2]):  # contiguous, transposed, negative strides
        with np.errstate(over="ignore", invalid="ignore"):
            ref = fastdrop.dropout(xi.astype(np.float32), p, **kw).astype(np.float16)
        got = fastdrop.dropout(xi, p, **kw)
        assert got.dtype == np.float16
        assert np.array_equal(got.view(np.uint16), ref.view(np.uint16))
        y = xi.copy()
        assert fastdrop.dropout(y, p, inplace=True, **kw) is y
        assert np.array_equal(y.view(np.uint16), ref.view(np.uint16))


def test_numpy_float16_spatial_bit_identical():
    x = _all_patterns((6, 10, 7, 9)).view(np.float16)
    with np.errstate(over="ignore", invalid="ignore"):
        ref = fastdrop.dropout2d(x.astype(np.float32), 0.6, seed=1).astype(np.float16)
    assert np.array_equal(fastdrop.dropout2d(x, 0.6, seed=1).view(np.uint16), ref.view(np.uint16))
    y = x.copy()
    fastdrop.dropout2d(y, 0.6, seed=1, inplace=True)
    assert np.array_equal(y.view(np.uint16), ref.view(np.uint16))


def test_nan_stays_quiet_nan_with_payload():
    """A kept NaN keeps its sign and payload and gets the quiet bit, in both formats."""
    f16 = np.array([0x7C01, 0xFE00, 0x7D55, 0xFC01] * 4, np.uint16)
    bf16 = np.array([0x7F81, 0xFFC0, 0x7FD5, 0xFF81] * 4, np.uint16)
    for bits, kw, quiet in ((f16, {}, 0x200), (bf16, {"bf16": True}, 0x40)):
        x = bits.view(np.float16) if not kw else bits
        out = np.empty_like(x)
        _cpu.dropout_into(x, out, 0.0, 0, 0, 2.0, **kw)  # p = 0 keeps every element
        assert np.array_equal(out.view(np.uint16), bits | np.uint16(quiet))


_FALLBACK_CHILD = textwrap.dedent("""
    import numpy as np
    import fastdrop
    from fastdrop.kernels import dropout_cpu
    assert not dropout_cpu.NATIVE_F16
    x = np.random.default_rng(0).permutation(np.resize(np.arange(1 << 16).astype(np.uint16),
                                                         4 * 6 * 9 * 11)).view(np.float16)
    x = x.reshape(4, 6, 9, 11)
    with np.errstate(over="ignore", invalid="ignore"):
        for xi in (x, x.swapaxes(-1, -2)):
            ref = fastdrop.dropout(xi.astype(np.float32), 0.5, seed=4).astype(np.float16)
            assert np.array_equal(fastdrop.dropout(xi, 0.5, seed=4).view(np.uint16), ref.view(np.uint16))
        ref = fastdrop.dropout2d(x.astype(np.float32), 0.5, seed=4).astype(np.float16)
        assert np.array_equal(fastdrop.dropout2d(x, 0.5, seed=4).view(np.uint16), ref.view(np.uint16))
    print("OK")
""")


def test_bit_code_fallback_in_the_kernels():
    """Where Numba does not compile for an F16C host (here: NUMBA_CPU_NAME=generic), the kernels
    convert float16 with the bit code; same bits (its own disk-cache entries, keyed by CPU name)."""
    env = dict(os.environ, NUMBA_CPU_NAME="generic")
    res = subprocess.run([sys.executable, "-c", _FALLBACK_CHILD], capture_output=True, text=True,
                         timeout=300, env=env)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]


# ---- the launcher interface -----------------------------------------------------------------

def test_cpu_launchers_take_half_views():
    x = _all_patterns((40, 33))
    t = _torch_half(x, torch.bfloat16)
    ref = fastdrop.dropout(t.float(), 0.25, seed=3).to(torch.bfloat16)
    out = np.empty_like(x)
    assert _cpu.dropout_into(x, out, 0.25, 3, 0, 1 / 0.75, bf16=True) is out
    _assert_same_torch(_torch_half(out, torch.bfloat16), ref)
    ref2 = fastdrop.dropout1d(t.float()[None], 0.25, seed=3).to(torch.bfloat16)[0]
    out2 = np.empty_like(x)
    assert _cpu.grouped_dropout_into(x, out2, 0.25, 3, 0, 1 / 0.75, 1, bf16=True) is out2
    _assert_same_torch(_torch_half(out2, torch.bfloat16), ref2)


def test_cpu_launchers_refuse_mismatched_half():
    x16 = np.zeros((4, 5), np.float16)
    with pytest.raises(TypeError, match="bf16=True"):
        _cpu.dropout_into(np.zeros(4, np.float32), np.zeros(4, np.float32), 0.5, 0, 0, 2.0, bf16=True)
    with pytest.raises(TypeError, match="float16"):
        _cpu.dropout_into(x16, np.zeros((4, 5), np.float32), 0.5, 0, 0, 2.0)
    with pytest.raises(TypeError, match="bf16=True"):
        _cpu.grouped_dropout_into(x16.view(np.uint16), x16.view(np.uint16), 0.5, 0, 0, 2.0, 1)


# ---- peak memory, on resident memory in a fresh process -----------------------------------------

MIB = 1 << 20
N_BIG = 64 << 20  # float16 elements: 128 MiB
SLACK = 8 * MIB

_CHILD = textwrap.dedent("""
    import gc, json, sys
    import numpy as np, torch
    import fastdrop

    def kib(field):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])

    def peak_extra(fn):
        gc.collect()
        before = kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # VmHWM := VmRSS
        y = fn()
        extra = (kib("VmHWM") - before) * 1024
        del y
        gc.collect()
        return extra

    n = int(sys.argv[1])
    shape = (64, 64, n // (64 * 64 * 128), 128)
    t16 = torch.ones(shape, dtype=torch.float16)
    tb16 = torch.ones(shape, dtype=torch.bfloat16)
    n16 = np.ones(shape, np.float16)
    cases = {
        "torch f16": lambda x, **k: fastdrop.dropout(x, 0.5, seed=1, **k),
        "torch bf16": lambda x, **k: fastdrop.dropout(x, 0.5, seed=1, **k),
        "numpy f16": lambda x, **k: fastdrop.dropout(x, 0.5, seed=1, **k),
        "torch f16 dropout2d": lambda x, **k: fastdrop.dropout2d(x, 0.5, seed=1, **k),
    }
    data = {"torch f16": t16, "torch bf16": tb16, "numpy f16": n16, "torch f16 dropout2d": t16}
    res = {}
    for name, fn in cases.items():
        x = data[name]
        small = x[:1, :8]  # 2^17 elements, the parallel kernels: compile / cache load, thread pool
        fn(small.copy() if isinstance(small, np.ndarray) else small.clone())
        fn(small.copy() if isinstance(small, np.ndarray) else small.clone(), inplace=True)
        res[name] = peak_extra(lambda: fn(x))
        res[name + " inplace"] = peak_extra(lambda: fn(x, inplace=True))
    print("RESULT " + json.dumps(res))
""")


def peak_extra_bytes(n=N_BIG, env=None):
    """{case: peak resident bytes added by one call} from a fresh interpreter."""
    res = subprocess.run([sys.executable, "-c", _CHILD, str(n)], capture_output=True, text=True,
                         timeout=120, env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_half_peak_memory_is_the_output_alone():
    out_bytes = N_BIG * 2
    res = peak_extra_bytes()
    for name, extra in res.items():
        if name.endswith("inplace"):
            assert extra <= SLACK, (name, extra / MIB)
        else:  # the output's pages, all touched; nothing else of its size
            assert out_bytes - SLACK <= extra <= out_bytes + SLACK, (name, extra / MIB)


def test_float16_eval_paths_round_once_like_training_and_like_torch():
    """Classic-mode eval scaling and the dense layers at eval / p = 0 compute float16 in float32 and
    round once on numpy too (the factor is not rounded to float16 first, no float16 partial sums),
    so numpy, torch and the float32 reference agree bit for bit."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal(10000).astype(np.float16)
    want = (x.astype(np.float32) * np.float32(0.7)).astype(np.float16)
    got_np = fastdrop.dropout(x, 0.3, training=False, mode="classic")
    got_t = fastdrop.dropout(torch.from_numpy(x), 0.3, training=False, mode="classic").numpy()
    assert np.array_equal(got_np.view(np.uint16), want.view(np.uint16))
    assert np.array_equal(got_t.view(np.uint16), want.view(np.uint16))
    xi = x[:10000 // 2].copy()
    fastdrop.dropout(xi, 0.3, training=False, mode="classic", inplace=True)
    assert np.array_equal(xi.view(np.uint16), want[:5000].view(np.uint16))

    xs = rng.standard_normal((16, 64)).astype(np.float16)
    w = rng.standard_normal((32, 64)).astype(np.float16)
    b = rng.standard_normal(32).astype(np.float16)
    ref = (xs.astype(np.float32) @ w.astype(np.float32).T + b.astype(np.float32)).astype(np.float16)
    for kw in (dict(training=False), dict(p=0.0)):
        kw = {"p": 0.3, **kw}
        got = fastdrop.dropout_linear(xs, w, b, **kw)
        assert got.dtype == np.float16
        np.testing.assert_allclose(got.astype(np.float32), ref.astype(np.float32), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_classic_eval_of_the_gemm_ops_rounds_once_on_torch_too(dtype):
    """A classic eval's x * (1 - p) (dropout_linear) or product * (1 - p) (dropout_matmul) on
    half torch tensors is computed in float32 and rounded once, as in training and on numpy: not
    x * (1 - p) rounded to the half type before torch's half GEMM (a second rounding, an ulp
    apart from numpy's result; found by a review on 2026-12-06). The gradient likewise."""
    torch.manual_seed(0)
    x, w, b = torch.randn(17, 33).to(dtype), torch.randn(7, 33).to(dtype), torch.randn(7).to(dtype)
    want = torch.nn.functional.linear(x.float() * 0.7, w.float(), b.float()).to(dtype)
    xr = x.clone().requires_grad_()
    y = fastdrop.dropout_linear(xr, w, b, 0.3, False, mode="classic")
    assert torch.equal(y, want)
    g = torch.randn(17, 7).to(dtype)
    (gx,) = torch.autograd.grad(y, xr, g)
    assert torch.equal(gx, ((g.float() @ w.float()) * 0.7).to(dtype))
    if dtype == torch.float16:  # (numpy has no bfloat16)
        got_np = fastdrop.dropout_linear(x.numpy(), w.numpy(), b.numpy(), 0.3, False, mode="classic")
        assert np.array_equal(got_np.view(np.uint16), want.numpy().view(np.uint16))
    a, v = torch.rand(4, 9, 33).to(dtype), torch.randn(33, 5).to(dtype)
    want = ((a.float() @ v.float()) * 0.7).to(dtype)
    assert torch.equal(fastdrop.dropout_matmul(a, v, 0.3, False, mode="classic"), want)
    # inverted scaling at eval is torch's own half GEMM, nn.Linear's bits
    assert torch.equal(fastdrop.dropout_linear(x, w, b, 0.3, False), torch.nn.functional.linear(x, w, b))
