"""The native route of the grouped ops under autograd (fastdrop/_grouped.py, `native_grouped`;
fastdrop/_core.py, `training_lane`): spatial dropout and DropPath rows of a CPU float32/float64
tensor that needs grad are recorded as torch's own multiply by per-group factors. Checked here
against the kernel route (the same call on a tensor that needs no grad): outputs bit for bit,
gradients, the draw from torch's generator, what is saved, and which route each input takes.
"""
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import fastdrop
from fastdrop import _core, _grouped

F = fastdrop
# (name, call, shape, groups): the grouped ops at the ranks the fast lane takes, and drop_path at
# ranks 1 and 3
GROUPED = [
    ("dropout1d", lambda x, p, **kw: F.dropout1d(x, p, **kw), (4, 6, 9), 24),
    ("dropout2d", lambda x, p, **kw: F.dropout2d(x, p, **kw), (3, 5, 4, 6), 15),
    ("dropout3d", lambda x, p, **kw: F.dropout3d(x, p, **kw), (2, 3, 2, 3, 5), 6),
    ("drop_path", lambda x, p, **kw: F.drop_path(x, p, **kw), (7, 3, 10), 7),
    ("drop_path_1d", lambda x, p, **kw: F.drop_path(x, p, **kw), (33,), 33),
]


def hostile(shape, dtype, seed=0):
    """Values of both signs, and an inf, a -inf and a NaN in every sample (x[n])."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    flat = x.view(-1)
    run = max(1, flat.numel() // shape[0])
    for start in range(0, flat.numel(), run):
        flat[start:start + 3][:1] = float("inf")
        flat[start + 1:start + 3][:1] = float("-inf")
        flat[start + 2:start + 3] = float("nan")
    return x


def bits(t):
    return t.detach().view({8: torch.int64, 4: torch.int32, 2: torch.int16}[t.element_size()])


def route(y):
    return type(y.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("seed", [None, 12])
@pytest.mark.parametrize("name,call,shape,groups", GROUPED)
def test_native_route_equals_the_kernel_bit_for_bit(name, call, shape, groups, seed, p, dtype):
    """Half types too (small ones: NATIVE_HALF_MAX_BYTES), through a float32 product rounded
    once, as the kernel rounds it (they took the Function route, 3x torch's time small)."""
    x = hostile(shape, dtype)
    torch.manual_seed(4)
    expected = call(x, p, seed=seed)  # no grad: the kernel
    state = torch.get_rng_state()
    xg = x.clone().requires_grad_()
    torch.manual_seed(4)
    y = call(xg, p, seed=seed)
    # one element per group (a 1-D batch): the elementwise kernels' Function (test_group_runs.py)
    native = "ToCopyBackward0" if x.element_size() == 2 else "MulBackward0"
    assert route(y) == ("EagerFunctionBackward" if name == "drop_path_1d" else native)
    if x.element_size() == 2:
        # torch's float32 -> half conversions write a NaN's bits their own way (bfloat16's
        # vectorized one 0xFFFF, the scalar one for the elements past the last vector 0x7FFF for
        # float16), the kernel keeps sign and payload: a NaN's bits aside, the kernel's
        nan = y.detach().isnan()
        assert torch.equal(nan, expected.isnan())
        y_bits, expected_bits = bits(y)[~nan], bits(expected)[~nan]
    else:
        y_bits, expected_bits = bits(y), bits(expected)
    assert torch.equal(y_bits, expected_bits)  # NaN, inf and the sign of zeros included
    assert torch.equal(torch.get_rng_state(), state)  # the same draws from torch's generator
    grad = torch.randn(shape, dtype=dtype)
    y.backward(grad)
    torch.manual_seed(4)
    assert torch.equal(xg.grad, call(grad, p, seed=seed))  # the kernel on the gradient


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_native_route_nan_in_the_last_elements(dtype):
    """NaNs where torch's conversion takes its scalar path (the elements past the last vector, all
    of a short tensor) stay NaN, and every other element keeps the kernel's bits (a review: the
    bit-for-bit test's NaNs never sat there, and float16's NaN bits differ there)."""
    for n in (2, 5, 13, 40):
        x = torch.randn(2, n, dtype=dtype)
        x[:, -3:] = float("nan")
        x[1, -1] = -float("nan")
        torch.manual_seed(0)
        expected = F.drop_path(x, 1e-9)  # (no grad: the kernel)
        torch.manual_seed(0)
        y = F.drop_path(x.clone().requires_grad_(), 1e-9)
        assert route(y) == "ToCopyBackward0"
        nan = expected.isnan()
        assert torch.equal(y.detach().isnan(), nan)
        assert torch.equal(bits(y)[~nan], bits(expected)[~nan])


def test_permuted_drop_path_keeps_the_layout_and_values():
    """timm's ConvNeXt branch: x.permute(0, 3, 1, 2) of a channels-last buffer."""
    x = hostile((4, 5, 6, 3), torch.float32).permute(0, 3, 1, 2)
    y = F.drop_path(x.clone().requires_grad_(), 0.5, seed=3)
    assert route(y) == "MulBackward0" and y.stride() == x.stride()
    assert torch.equal(bits(y), bits(F.drop_path(x, 0.5, seed=3)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.3, 0.9])
@pytest.mark.parametrize("shape", [(7, 4, 16), (50, 8, 96)])  # serial; parallel zero pass
def test_sequence_first_drop_path_runs_where_it_lies(shape, p, dtype):
    """A sequence-first (L, N, D) activation seen batch-first, x.transpose(0, 1): each sample is
    L runs of D. Under autograd the native route multiplies and zeroes the dropped samples' runs
    in place (kernels/layout.py, `group_runs`), with the kernel's bits and x's strides; before,
    the kernel route copied x and the output (4.8-9.6x torch's time at 32x197x384)."""
    x = hostile(shape, dtype).transpose(0, 1)
    torch.manual_seed(4)
    expected = F.drop_path(x.contiguous(), p)
    torch.manual_seed(4)
    y_nograd = F.drop_path(x, p)  # the flat grouped kernel on x's memory
    assert y_nograd.stride() == x.stride() and torch.equal(bits(y_nograd), bits(expected))
    xg = x.detach().clone().requires_grad_()
    assert xg.stride() == x.stride()
    torch.manual_seed(4)
    y = F.drop_path(xg, p)
    assert y.stride() == x.stride()
    assert torch.equal(bits(y), bits(expected))
    if p == 0.3:
        assert route(y) == "MulBackward0"
    grad = torch.randn(x.shape, dtype=dtype)
    y.backward(grad)
    torch.manual_seed(4)
    assert torch.equal(xg.grad, F.drop_path(grad, p))


def _channels_innermost(shape, dtype):
    """hostile values in memory order (N, *spatial, C), viewed as (N, C, *spatial)."""
    nd = len(shape)
    perm = (0,) + tuple(range(2, nd)) + (1,)
    x = hostile(tuple(shape[d] for d in perm), dtype)
    return x.permute(0, nd - 1, *range(1, nd - 1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [0.2, 0.5])
@pytest.mark.parametrize("call,shape", [
    (F.dropout2d, (3, 5, 4, 6)),        # channels_last, serial zero pass
    (F.dropout2d, (8, 16, 32, 32)),     # the parallel zero pass (torch's multiply on its threads)
    (F.dropout2d, (2, 300, 3, 2)),      # more channels than one pattern row
    (F.dropout3d, (2, 3, 2, 3, 5)),     # channels_last_3d
    (F.dropout1d, (4, 6, 9)),           # (N, L, C) memory
], ids=str)
def test_channels_innermost_native_route(call, shape, p, dtype):
    """Spatial dropout with the channels innermost in memory (channels_last) under autograd: torch's
    multiply keeps the layout, then every dropped channel's elements are zeroed in one pass over
    the rows (`zero_dropped_inner_at`). The kernel's bits and x's strides; gradients as the kernel's."""
    x = _channels_innermost(shape, dtype)
    torch.manual_seed(4)
    expected = call(x, p)
    xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    assert xg.stride() == x.stride()
    torch.manual_seed(4)
    y = call(xg, p)
    assert route(y) == "MulBackward0" and y.stride() == x.stride()
    assert torch.equal(bits(y), bits(expected))
    grad = torch.randn(shape, dtype=dtype)
    y.backward(grad)
    torch.manual_seed(4)
    assert torch.equal(xg.grad, call(grad, p))


class _TwinSpy:
    """Stands in for a CpuKernel: records which twin ran (the call: the parallel dispatcher)."""

    def __init__(self, kernel, ran):
        self.kernel, self.ran = kernel, ran

    def __call__(self, *args):
        self.ran.append("parallel")
        return self.kernel.parallel(*args)

    def serial(self, *args):
        self.ran.append("serial")
        return self.kernel.serial(*args)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("few_zeros", [False, True])
@pytest.mark.parametrize("kernel,make", [
    ("zero_dropped_runs_at", lambda dtype: hostile((16, 4, 1024), dtype)),
    ("zero_dropped_inner_at", lambda dtype: _channels_innermost((8, 16, 32, 32), dtype)),
])
def test_zero_pass_twins_give_the_kernel_bits(monkeypatch, kernel, make, few_zeros, dtype):
    """The zero pass runs serially below ZERO_PARALLEL_MIN_BYTES zeroed bytes (groups in runs;
    with the channels innermost every element is written, so the parallel twin always), on
    torch's threads above: both twins, both dtypes, the kernel's bits."""
    from fastdrop.kernels import dropout_cpu
    ran = []
    monkeypatch.setattr(dropout_cpu, kernel, _TwinSpy(getattr(dropout_cpu, kernel), ran))
    monkeypatch.setattr(_grouped, "ZERO_PARALLEL_MIN_BYTES", 1 << 40 if few_zeros else 0)
    x = make(dtype)
    call = F.drop_path if x.dim() == 3 else F.dropout2d
    torch.manual_seed(4)
    expected = call(x, 0.5)
    xg = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
    torch.manual_seed(4)
    y = call(xg, 0.5)
    assert route(y) == "MulBackward0" and torch.equal(bits(y), bits(expected))
    parallel = torch.get_num_threads() > 1 and (kernel == "zero_dropped_inner_at" or not few_zeros)
    assert ran == ["parallel" if parallel else "serial"]


def test_saves_one_factor_per_group_only():
    x = torch.randn(8, 16, 5, 5, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = F.dropout2d(x, 0.3)
    assert route(y) == "MulBackward0"
    assert [tuple(t.shape) for t in saved] == [(8, 16, 1, 1)]
    scale = np.float32(1 / 0.7)
    assert set(saved[0].unique().tolist()) <= {0.0, float(scale)}


@pytest.mark.parametrize("case", ["channels_last", "float16", "many_dropped", "drawn_many_dropped",
                                  "large", "subclass", "batch_mode"])
def test_other_inputs_keep_the_function_route(case):
    """Where the native route does not apply: groups neither in runs of memory nor with their
    channels innermost, half types of NATIVE_HALF_MAX_BYTES,
    dropped groups spanning more than NATIVE_ZERO_MAX_BYTES (zeroing them would cost more than
    the Function's backward), outputs of NATIVE_GROUPED_MAX_BYTES, tensor subclasses, DropPath's
    batch mode. Same values either way."""
    call, p = F.dropout2d, 0.5
    x = torch.randn(2, 8, 3, 3)
    if case == "channels_last":  # with gaps (W sliced): neither runs nor channels innermost
        x = torch.randn(2, 8, 3, 6).contiguous(memory_format=torch.channels_last)[..., ::2]
    elif case == "float16":
        x = torch.randn(8, 64, 16, 16).half()
        assert x.numel() * 2 == _grouped.NATIVE_HALF_MAX_BYTES
    elif case == "many_dropped":  # ~90% of 64 x 64 channels of 4 KiB expected dropped: ~15 MiB
        x, p = torch.randn(64, 64, 32, 32), 0.9
    elif case == "drawn_many_dropped":  # expected 922 KiB passes the first check; the draw does not
        x, p = torch.randn(16, 16, 32, 32), 0.9
        assert _core._native_groups(x, 2, p) == (256, (16, 16, 1, 1), 1024, 0)  # so the draw decides
    elif case == "large":
        x = torch.randn(32 << 20 >> 2 >> 10, 1024)
        call = F.drop_path
    elif case == "subclass":
        x = torch.nn.Parameter(x).as_subclass(type("Sub", (torch.Tensor,), {}))
    elif case == "batch_mode":
        call = lambda t, p, **kw: F.drop_path(t, p, mode="batch", **kw)  # noqa: E731
    xg = x.detach().clone().requires_grad_()
    if case == "channels_last":  # (clone would make it dense)
        xg = x._base.clone(memory_format=torch.channels_last).requires_grad_()[..., ::2]
        assert xg.stride() == x.stride()
    for seed in (None, 5):
        torch.manual_seed(0)
        y = call(xg, p, seed=seed)
        state = torch.get_rng_state()
        assert route(y) != "MulBackward0", case
        torch.manual_seed(0)
        assert torch.equal(y.detach(), call(x.detach(), p, seed=seed))
        assert torch.equal(torch.get_rng_state(), state)  # one draw either way


def test_parameter_input_takes_the_native_route():
    w = torch.nn.Parameter(torch.randn(6, 4, 3))
    y = F.drop_path(w, 0.5, seed=2)
    assert route(y) == "MulBackward0"
    assert torch.equal(y.detach(), F.drop_path(w.detach(), 0.5, seed=2))


def test_gradient_of_a_dropped_group_is_zero_for_finite_and_nan_for_nonfinite_incoming():
    """The documented difference from the Function route: grad * 0 (torch's own dropout gives
    the same), so a NaN or inf incoming gradient in a dropped group gives NaN there."""
    x = torch.randn(6, 4, requires_grad=True)
    y = F.drop_path(x, 0.5, seed=1)
    keep = torch.from_numpy(F.dropout_mask((6,), 0.5, 1))
    assert route(y) == "MulBackward0" and 0 < keep.sum() < 6
    grad = torch.ones(6, 4)
    grad[:, 0] = float("nan")
    y.backward(grad)
    dropped = x.grad[~keep]
    assert torch.equal(dropped[:, 1:], torch.zeros_like(dropped[:, 1:]))
    assert dropped[:, 0].isnan().all()


def test_gradcheck_and_double_backward_on_the_native_route():
    for call, shape in ((F.dropout2d, (3, 4, 2, 2)), (F.drop_path, (5, 3))):
        x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
        fn = lambda t: call(t, 0.4, seed=9)  # noqa: E731
        assert route(fn(x)) == "MulBackward0"
        assert torch.autograd.gradcheck(fn, (x,))
        assert torch.autograd.gradgradcheck(fn, (x,))


def test_the_lane_only_takes_default_calls(monkeypatch):
    """training_lane sees only calls whose arguments it can take (seed=None, offset 0, inverted
    scaling, no out=, training); others reach the pipeline and its checks. (In place it takes
    too: tests/test_training_lane.py, test_inplace_lane_*.)"""
    taken = []
    original = _core.training_lane
    monkeypatch.setattr(_core, "training_lane", lambda *a, **k: taken.append(a[1:]) or original(*a, **k))
    x = torch.randn(4, 6, 3, 3, requires_grad=True)
    F.dropout2d(x, 0.2)
    F.drop_path(x, 0.2)
    assert len(taken) == 2
    for call in (lambda: F.dropout2d(x, 0.2, seed=1), lambda: F.dropout2d(x, 0.2, offset=1),
                 lambda: F.dropout2d(x, 0.2, mode="classic"), lambda: F.dropout2d(x, 0.2, training=False),
                 lambda: F.drop_path(x, 0.2, scale_by_keep=False), lambda: F.drop_path(x, 0.2, mode="batch"),
                 lambda: F.dropout2d(x, 1)):
        call()
    assert len(taken) == 2
    with pytest.raises(ValueError):
        F.dropout2d(x, 1.5)
    with pytest.raises(TypeError):
        F.drop_path(x, 0.2, training="yes")


def test_the_lane_runs_at_the_rank_stream(monkeypatch):
    """seed=None calls of rank r run at offset r * 2**48, through the lane as through `call`."""
    from fastdrop import _seeds
    monkeypatch.setattr(_seeds, "_rank", lambda: 3)
    x = torch.randn(16, 5, 2, requires_grad=True)
    torch.manual_seed(8)
    y = F.drop_path(x, 0.5)
    torch.manual_seed(8)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    assert route(y) == "MulBackward0"
    assert torch.equal(y.detach(), F.drop_path(x.detach(), 0.5, seed=seed, offset=3 << _seeds.RANK_SHIFT))


@pytest.mark.parametrize("needs_grad", [False, True])
def test_forward_mode_ad_keeps_the_function_route(needs_grad):
    """Under forward-mode AD the tangent is the op applied to the tangent (exact zeros in dropped
    groups, as the kernel), which torch's multiply would not give for an inf tangent: such calls
    keep the Function route, through the lane (x needs grad) or the pipeline."""
    import torch.autograd.forward_ad as fwAD
    x = torch.randn(4, 6, 3, 3, requires_grad=needs_grad)
    t = torch.full_like(x, float("inf"))
    t[:, :, 1] = -1.0
    with fwAD.dual_level():
        torch.manual_seed(0)
        y = F.dropout2d(fwAD.make_dual(x, t), 0.5)
        tangent = fwAD.unpack_dual(y).tangent
    assert route(y) != "MulBackward0"
    torch.manual_seed(0)
    assert torch.equal(bits(tangent), bits(F.dropout2d(t, 0.5)))


def test_output_in_another_layout_is_zeroed_through_torch(monkeypatch):
    """`native_grouped` zeroes the dropped groups through flat memory when torch's multiply keeps
    x's layout (always, for the dense layouts the route takes); for an output in any other layout
    it falls back to torch's masked_fill_. Forced here (the layout check answers no for the
    output): the same bits as the kernel, the same gradient."""
    x = hostile((4, 5, 6, 3), torch.float32).permute(0, 3, 1, 2)  # groups outermost, not contiguous
    checks = []

    def refused(torch, y, x, g, run, dtype):
        checks.append(y)
        return False
    monkeypatch.setattr(_grouped, "_zeroable_in_place", refused)
    xg = x.clone().requires_grad_()
    y = F.drop_path(xg, 0.5, seed=3)
    assert len(checks) == 1 and route(y) == "MulBackward0"
    assert torch.equal(bits(y), bits(F.drop_path(x, 0.5, seed=3)))
    grad = torch.randn(x.shape)
    y.backward(grad)
    assert torch.equal(xg.grad, F.drop_path(grad, 0.5, seed=3))


def test_grouped_layout_is_asked_per_shape_and_strides():
    """`_grouped.grouped_layout` caches its answer per (shape, strides, g): tensors of one shape in
    other layouts get their own answer, and the cache stays bounded."""
    _grouped.GROUPED_LAYOUTS.clear()
    base = torch.randn(4, 6, 5, 3)
    permuted = base.permute(0, 3, 1, 2)                       # timm's ConvNeXt branch: rows outermost
    contiguous = torch.randn(4, 3, 6, 5)
    channels_last = contiguous.contiguous(memory_format=torch.channels_last)
    sequence_first = torch.randn(7, 4, 16).transpose(0, 1)
    for _ in range(2):  # asked, then answered from the cache: the same answers
        assert _grouped.grouped_layout(contiguous, 2) == (12, (4, 3, 1, 1), 30, 0)
        assert _grouped.grouped_layout(permuted, 1) == (4, (4, 1, 1, 1), 90, 0)
        assert _grouped.grouped_layout(permuted, 2) is None          # channels interleaved in a row
        assert _grouped.grouped_layout(channels_last, 2) is None
        assert _grouped._channels_layout(channels_last, 2) == (12, (4, 3, 1, 1), 0, 3)
        assert _grouped._channels_layout(contiguous, 2) is None
        assert _grouped.grouped_layout(channels_last, 1) == (4, (4, 1, 1, 1), 90, 0)
        assert _grouped.grouped_layout(sequence_first, 1) == (4, (4, 1, 1), 16, 0)  # 7 runs per sample
    for n in range(1, 400):
        _grouped.grouped_layout(torch.empty(n, 2), 1)
    assert len(_grouped.GROUPED_LAYOUTS) <= 256


def test_fake_output_of_a_dispatch_mode_is_not_written_through_its_address():
    """Under FakeTensorMode(allow_non_fake_inputs=True) a real tensor that needs grad reaches the
    native route, whose multiply returns a fake tensor (data_ptr() 0): writing the zeros there
    crashed the process (SIGSEGV). Now the fake output takes torch's masked_fill_ and the call
    returns a fake tensor of x's shape, as any torch op in that mode does. In a subprocess: a
    regression kills the interpreter."""
    script = textwrap.dedent("""
        import torch, fastdrop
        from torch._subclasses.fake_tensor import FakeTensorMode
        x = torch.randn(6, 3, 4, requires_grad=True)
        x4 = torch.randn(2, 3, 3, 4, requires_grad=True)
        for seed in range(8):  # most of these draws drop a group
            with FakeTensorMode(allow_non_fake_inputs=True):
                y = fastdrop.drop_path(x, 0.5, seed=seed)
                z = fastdrop.dropout2d(x4, 0.5, seed=seed)
            assert type(y).__name__ == "FakeTensor" and y.shape == x.shape, (type(y), y.shape)
            assert type(z).__name__ == "FakeTensor" and z.shape == (2, 3, 3, 4)
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stdout, res.stderr[-2000:])


def test_factors_are_made_past_modes_that_change_new_empty():
    """The factors are written through their address, so under a dispatch or torch-function mode
    they are made with the modes off: a mode that wraps every output in a wrapper subclass (no
    memory, data_ptr() 0) crashed the process (SIGSEGV), one that makes new buffers float32
    corrupted the heap for float64 x. Both now give the kernel's values, the modes seeing the
    multiply as before. In a subprocess: a regression kills the interpreter."""
    script = textwrap.dedent("""
        import torch, fastdrop
        from torch.overrides import TorchFunctionMode
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_map

        class Wrapped(torch.Tensor):
            @staticmethod
            def __new__(cls, elem):
                r = torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(), dtype=elem.dtype,
                                                        device=elem.device, requires_grad=elem.requires_grad)
                r.elem = elem
                return r

            @classmethod
            def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
                unwrap = lambda t: t.elem if isinstance(t, Wrapped) else t
                return tree_map(lambda t: Wrapped(t) if isinstance(t, torch.Tensor) else t,
                                func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {})))

        class WrapOutputs(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                unwrap = lambda t: t.elem if isinstance(t, Wrapped) else t
                out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs or {}))
                return tree_map(lambda t: Wrapped(t) if isinstance(t, torch.Tensor) else t, out)

        class NewEmptyFloat32(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                kwargs = kwargs or {}
                if func is torch.Tensor.new_empty:
                    kwargs = {**kwargs, "dtype": torch.float32}
                return func(*args, **kwargs)

        for call, shape in ((fastdrop.dropout2d, (8, 3, 4, 4)), (fastdrop.drop_path, (8, 5, 6))):
            for seed in range(4):
                x = torch.randn(shape, requires_grad=True)
                torch.manual_seed(seed)
                expected = call(x.detach(), 0.5)
                with WrapOutputs():
                    torch.manual_seed(seed)
                    y = call(x, 0.5)
                assert type(y).__name__ == "Wrapped" and torch.equal(y.elem, expected)
                x64 = x.detach().double().requires_grad_()
                torch.manual_seed(seed)
                expected = call(x64.detach(), 0.5)
                with NewEmptyFloat32():
                    torch.manual_seed(seed)
                    y = call(x64, 0.5)
                assert y.dtype == torch.float64 and type(y.grad_fn).__name__ == "MulBackward0"
                assert torch.equal(y.detach(), expected)
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.strip() == "ok", (res.returncode, res.stdout, res.stderr[-2000:])
