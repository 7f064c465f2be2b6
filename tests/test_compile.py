"""torch.compile and the torch.library custom ops (fastdrop/_core.py) of the dropout op.

A compiled model built from fastdrop modules has no graph break (fullgraph=True) and gives the
same outputs and gradients as eager after the same torch.manual_seed, because a seed=None draw is
the opaque `fastdrop::draw_seed` op, which consumes torch's generator exactly as eager does.
Compiling is slow on the 2-core machine, so each test compiles once.
"""
import numpy as np
import pytest
import torch

import fastdrop
from fastdrop._core import _to_i64
from op_table import CASES, operands

torch._dynamo.config.cache_size_limit = 64


def seed_tensor(seed):
    return torch.tensor(_to_i64(seed), dtype=torch.int64)


class Net(torch.nn.Module):
    def __init__(self, inplace=False):
        super().__init__()
        self.l1 = torch.nn.Linear(8, 16)
        self.d1 = fastdrop.nn.Dropout(0.3, inplace=inplace)
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.d2 = fastdrop.nn.Dropout2d(0.5)
        self.d3 = fastdrop.nn.Dropout(0.2)
        self.l2 = torch.nn.Linear(64, 3)

    def forward(self, x):
        h = torch.relu(self.d1(self.l1(x)))  # linear saves no output: inplace is legal here
        h = self.d2(self.conv(h.view(-1, 1, 4, 4)))
        # the same module twice: two independent draws
        return self.l2(self.d3(h.flatten(1))) + self.l2(self.d3(h.flatten(1)))


def run(model, x, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    y = model(x)
    y.square().sum().backward()
    return y.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("inplace", [False, True])
def test_compiled_model_matches_eager(inplace):
    torch.manual_seed(0)
    model = Net(inplace)
    x = torch.randn(5, 8)
    explain = torch._dynamo.explain(model)(x)
    assert explain.graph_break_count == 0 and explain.graph_count == 1
    compiled = torch.compile(model, fullgraph=True)
    for seed in (1, 2):
        y_e, g_e = run(model, x, seed)
        y_c, g_c = run(compiled, x, seed)
        torch.testing.assert_close(y_c, y_e, rtol=1e-5, atol=1e-6)
        for a, b in zip(g_c, g_e):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # without re-seeding, successive compiled calls draw new masks, in eager's order
    torch.manual_seed(3)
    eager = [model(x).detach() for _ in range(2)]
    torch.manual_seed(3)
    comp = [compiled(x).detach() for _ in range(2)]
    assert not torch.equal(comp[0], comp[1])
    for a, b in zip(comp, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_functional_explicit_seed_and_eval():
    def f(x, training):
        a = fastdrop.dropout(x, 0.4, seed=2**64 - 1, offset=2**63 + 5, training=training)
        b = fastdrop.dropout3d(x.view(2, 3, 2, 2, 2), 0.5, seed=7, training=training)
        return a + b.view_as(x) + fastdrop.dropout(x, 0.0)
    x = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    compiled = torch.compile(f, fullgraph=True)
    for training in (True, False):
        torch.testing.assert_close(compiled(x, training), f(x, training), rtol=0, atol=0)
    keep = fastdrop.dropout_mask(x.shape, 0.4, 2**64 - 1, 2**63 + 5)
    y = compiled(x, True) - fastdrop.dropout3d(x.view(2, 3, 2, 2, 2), 0.5, seed=7).view_as(x) - x
    torch.testing.assert_close(y, x.detach() * torch.from_numpy(keep) / 0.6)


def test_compiled_dynamic_shapes_no_recompile():
    torch._dynamo.reset()
    f = torch.compile(lambda x: fastdrop.dropout(x, 0.5, seed=3) * 2, fullgraph=True, dynamic=True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n in (5, 17, 33):
            x = torch.randn(n)
            torch.testing.assert_close(f(x), fastdrop.dropout(x, 0.5, seed=3) * 2)


def test_opcheck_dropout_op():
    # schema, fake (meta) implementation, autograd registration, and AOT dispatch
    seed = seed_tensor(2**64 - 3)
    for x, group_ndim in ((torch.randn(3, 5, requires_grad=True), 0),
                          (torch.randn(2, 3, 4, dtype=torch.float64, requires_grad=True), 2),
                          (torch.randn(4, 6)[:, ::2].requires_grad_(), 0)):
        torch.library.opcheck(torch.ops.fastdrop.dropout, (x, seed, 0.3, -5, 1 / 0.7, [group_ndim]))


def test_op_matches_mask_contract_and_backward():
    x = torch.randn(4, 7, dtype=torch.float64, requires_grad=True)
    seed, offset = 2**64 - 2, 2**64 - 9
    y = torch.ops.fastdrop.dropout(x, seed_tensor(seed), 0.25, _to_i64(offset), 4 / 3, [0])
    keep = torch.from_numpy(fastdrop.dropout_mask(x.shape, 0.25, seed, offset))
    torch.testing.assert_close(y, torch.where(keep, x * (4 / 3), 0))
    torch.testing.assert_close(y, fastdrop.dropout(x, 0.25, seed=seed, offset=offset))
    g = torch.randn_like(x)
    (gx,) = torch.autograd.grad(y, x, g, create_graph=True)
    torch.testing.assert_close(gx, torch.where(keep, g * (4 / 3), 0))
    # double backward: d/dg <gx, h> = dropout(h)
    h = torch.randn_like(x)
    g.requires_grad_()
    (gx,) = torch.autograd.grad(torch.ops.fastdrop.dropout(x, seed_tensor(seed), 0.25,
                                                          _to_i64(offset), 4 / 3, [0]), x, g,
                                create_graph=True)
    (gg,) = torch.autograd.grad(gx, g, h)
    torch.testing.assert_close(gg, torch.where(keep, h * (4 / 3), 0))


def test_op_saves_no_mask():
    saved = []

    def pack(t):
        saved.append(tuple(t.shape))
        return t

    x = torch.randn(64, 32, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = torch.ops.fastdrop.dropout(x, seed_tensor(1), 0.5, 0, 2.0, [0])
        z = fastdrop.nn.Dropout(0.5)(x)
    (y + z).sum().backward()
    assert all(np.prod(s) <= 1 for s in saved), saved


def test_seed_encoding_roundtrip():
    for v in (0, 1, 2**63 - 1, 2**63, 2**64 - 1):
        assert int(seed_tensor(v)) & (2**64 - 1) == v
        assert _to_i64(v) & (2**64 - 1) == v


def test_compiled_inplace_on_graph_input_and_half_types():
    f = torch.compile(lambda x: fastdrop.dropout(x, 0.5, seed=1, inplace=True), fullgraph=True)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(10, dtype=dtype)
        expected = fastdrop.dropout(x.clone(), 0.5, seed=1)
        y = f(x)
        assert y is x and torch.equal(x, expected)


def test_compiled_graph_saves_only_seeds():
    f = torch.compile(lambda x: fastdrop.dropout2d(fastdrop.dropout(x, 0.5) * 3, 0.5), fullgraph=True)
    x = torch.randn(4, 8, 3, 3, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(tuple(t.shape)) or t,
                                                  lambda t: t):
        y = f(x)
    y.sum().backward()
    assert saved == [(), ()]  # the two 0-d seeds, no mask and no activation
    assert x.grad is not None


def test_compiled_permuted_layouts_and_out_match_eager():
    """The fake (shape) function keeps the real op's layout (torch.empty_like: channels_last stays
    channels_last), so Inductor's stride checks pass on permuted inputs; out= traces too. One
    compile covers dropout, dropout2d and drop_path on channels_last, a transposed matrix and out=."""
    def f(x, m, o):
        a = fastdrop.dropout(x * 2, 0.5)
        b = fastdrop.dropout2d(x, 0.5)
        c = fastdrop.drop_path(x, 0.5)
        d = fastdrop.dropout(m.mT, 0.3)
        fastdrop.dropout(m, 0.2, seed=5, out=o)
        return a, b, c, d, o

    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last)
    m = torch.randn(5, 7)
    compiled = torch.compile(f, fullgraph=True)
    torch.manual_seed(3)
    got = compiled(x, m, torch.empty(5, 7))
    torch.manual_seed(3)
    want = f(x, m, torch.empty(5, 7))
    for g, w in zip(got, want):
        assert g.stride() == w.stride()
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("call, shape", [
    (lambda x: fastdrop.nn.Dropout2d(0.3)(x), (3, 4, 5)),      # (N, C, L): torch's 1-d reading, warned
    (lambda x: fastdrop.dropout2d(x, 0.3), (2, 3, 4, 5, 2)),   # 5-D: warned
    (lambda x: fastdrop.dropout2d(x, 0.3), (3, 4)),            # 2-D: torch's deprecated rank
    (lambda x: fastdrop.nn.Dropout3d(0.3)(x), (3, 4, 5)),      # 3-D: unbatched, deprecated
])
def test_deprecated_spatial_ranks_compile_fullgraph(call, shape):
    """Ranks torch still takes with a warning compile with fullgraph=True, as torch's own
    Dropout2d/3d do: Dynamo cannot trace warnings.warn, so the warning is skipped while compiling
    (it broke the graph; fullgraph=True failed). Eager calls still warn."""
    x = torch.randn(shape)
    with pytest.warns(UserWarning):
        torch.manual_seed(0)
        want = call(x)
    torch._dynamo.reset()
    torch.manual_seed(0)
    assert torch.equal(torch.compile(call, backend="aot_eager", fullgraph=True)(x), want)


@pytest.mark.parametrize("name", ["dropout", "dropout2d", "drop_path_batch", "dropout_linear", "dropconnect",
                                  "dropconnect_sample", "dropout_matmul"])
def test_symbolic_seeds_of_any_size_under_inductor(name):
    """A seed= that changes between calls becomes a symbolic int (Dynamo's automatic dynamic), and
    Inductor compiled `torch.tensor(seed - 2**64)` into a C++ scalar kernel that could not hold the
    constant: every seed >= 2**63 failed with an OverflowError (helper review, 2026-12-05). The
    seed tensor comes from the `fastdrop::seed_tensor` op now: equal to eager for every seed."""
    case = CASES[name]
    ops = operands(case, dtype=torch.float32)
    torch._dynamo.reset()
    f = torch.compile(lambda s, *a: case.call(*a, seed=s), fullgraph=True)
    for seed in (5, 2**63 + 11, 7, 2**64 - 1, 2**63):
        torch.testing.assert_close(f(seed, *ops), case.call(*ops, seed=seed), rtol=1e-6, atol=1e-6, msg=str(seed))


def test_symbolic_seeds_of_any_size_under_compiled_autograd():
    """Compiled autograd traces the eager Function's backward, whose seed becomes symbolic once it
    changes between steps: the same Inductor overflow for seeds >= 2**63 (`_traced_rng`)."""
    from torch._dynamo import compiled_autograd
    torch._dynamo.reset()
    x0 = torch.randn(8, 16)
    compiled = torch.compile()
    for seed in (5, 7, 2**63 + 11, 9, 2**64 - 1, 2**63):
        x = x0.clone().requires_grad_()
        y = fastdrop.dropout(x, 0.5, seed=seed)
        with compiled_autograd._enable(compiled):
            (y * y).sum().backward()
        x2 = x0.clone().requires_grad_()
        (fastdrop.dropout(x2, 0.5, seed=seed) ** 2).sum().backward()
        assert torch.equal(x.grad, x2.grad), seed


def test_varying_offsets_stay_symbolic_under_compile():
    """offset= is an int argument of the custom op: it was specialized per value (a guard
    `offset == k`), so the 9th distinct offset hit the recompile limit and fullgraph=True failed.
    It is a SymInt now, as the seed is a tensor: any number of offsets, up to 2**64 - 1, equal to
    eager, seed given or drawn."""
    torch._dynamo.reset()
    x = torch.ones(64)
    fixed = torch.compile(lambda x, o: fastdrop.dropout(x, 0.5, seed=0, offset=o), backend="aot_eager",
                          fullgraph=True, dynamic=True)
    drawn = torch.compile(lambda x, o: fastdrop.dropout(x, 0.5, offset=o), backend="aot_eager", fullgraph=True)
    for o in list(range(12)) + [2**63 - 1, 2**63, 2**64 - 1]:
        assert torch.equal(fixed(x, o), fastdrop.dropout(x, 0.5, seed=0, offset=o)), o
        torch.manual_seed(o % 97)
        got = drawn(x, o)
        torch.manual_seed(o % 97)
        assert torch.equal(got, fastdrop.dropout(x, 0.5, offset=o)), o


def test_moment_matching_runs_eagerly_under_compile():
    """DropConnect's moment matching draws from a torch.Generator of its own, which Dynamo cannot
    trace: it runs eagerly (a graph break, eager's values), and fullgraph=True says why instead of
    failing inside torch's tracing ("torch.* op returned non-Tensor")."""
    x, w, b = torch.randn(4, 6), torch.randn(3, 6), torch.randn(3)

    def f(x, w, b):
        return fastdrop.dropconnect_linear(x, w, b, 0.3, training=False, activation=torch.relu, samples=4) * 2

    torch._dynamo.reset()
    torch.manual_seed(1)
    want = f(x, w, b)
    torch.manual_seed(1)
    assert torch.equal(torch.compile(f, backend="aot_eager")(x, w, b), want)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="moment-matching inference"):
        torch.compile(f, backend="aot_eager", fullgraph=True)(x, w, b)


@pytest.mark.parametrize("call", [lambda v: fastdrop.dropout(v, 0.5, seed=3, inplace=True),
                                  lambda v: fastdrop.dropout2d(v, 0.5, seed=3, inplace=True)],
                         ids=["dropout", "dropout2d"])
def test_compiled_inplace_on_a_view_made_before_a_graph_break(call):
    """In-place dropout on a view of a non-leaf made before a graph break (so the view is an input
    of the compiled graph): Dynamo recorded the eager checks' x._base as a graph getattr, and the
    compiled graph failed with "'NoneType' object has no attribute 'is_leaf'". Traced calls leave
    those checks to torch's in-place ops; values and gradients are eager's."""
    def f(a):
        b = a * 1
        v = b.narrow(0, 1, 2)
        torch._dynamo.graph_break()
        call(v)
        return (b * b).sum()
    a = torch.randn(4, 3, 2, 2, requires_grad=True)
    torch._dynamo.reset()
    loss = torch.compile(f, backend="aot_eager")(a)
    loss.backward()
    ga, a.grad = a.grad, None
    eager = f(a)
    eager.backward()
    torch.testing.assert_close(loss, eager, rtol=0, atol=0)
    torch.testing.assert_close(ga, a.grad, rtol=0, atol=0)


@pytest.mark.parametrize("view", ["sequence_first", "channels_last_mlp"])
def test_compiled_dropout_linear_on_a_permuted_input_equals_eager(view):
    """DropoutLinear on a permuted 3-D/4-D input (a sequence-first transformer's (L, N, D)
    transposed, ConvNeXt's NHWC MLP): torch's F.linear on such an input picks its GEMM route from
    the calling context, and the compiled op's output was an ulp off eager's (masks equal). The
    masked input goes to the GEMM as 2-D rows: outputs and gradients are eager's bits."""
    torch.manual_seed(0)
    m = fastdrop.nn.DropoutLinear(8, 8, p=0.3)
    base = torch.randn(4, 8, 3, 3)
    make = {"sequence_first": lambda b: b.reshape(4, 8, 9).permute(2, 0, 1),
            "channels_last_mlp": lambda b: b.permute(0, 2, 3, 1)}[view]

    def f(b):
        return m(make(b))
    torch._dynamo.reset()
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    results = []
    for fn in (f, compiled):
        m.zero_grad()
        b = base.clone().requires_grad_()
        torch.manual_seed(1)
        y = fn(b)
        (y * torch.linspace(-1, 1, y.shape[-1])).sum().backward()
        results.append((y.detach(), m.weight.grad.clone(), m.bias.grad.clone(), b.grad.clone()))
    for eager, comp in zip(*results):
        assert torch.equal(eager, comp)


def test_exported_program_called_twice_in_a_compiled_function_draws_twice():
    """An exported program's seed draws are `fastdrop::draw_seed` nodes with their arguments baked
    in; called twice inside a compiled function (a reused block, an MC-dropout loop), the two
    copies were argument-equal and AOTAutograd's CSE merged them: one mask for both calls, zero
    MC variance (helper hunt, 2026-12-06). The draw is on CSE's list of random ops now: each call
    draws, and the compiled function gives eager's masks after the same torch.manual_seed."""
    torch._dynamo.reset()
    m = torch.nn.Sequential(torch.nn.Linear(8, 8), fastdrop.nn.Dropout(0.5))
    gm = torch.export.export(m, (torch.randn(4, 8),)).module()
    x = torch.randn(4, 8, requires_grad=True)

    def f(t):
        return torch.stack([gm(t) for _ in range(3)])

    torch.manual_seed(1)
    want = f(x)
    torch.manual_seed(1)
    got = torch.compile(f, backend="aot_eager")(x)
    assert not torch.equal(got[0], got[1]) and not torch.equal(got[1], got[2])
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_numpy_scalars_for_p_compile_and_numpy_seeds_get_a_clear_error():
    """A numpy p (a closure's constant, a schedule's np.linspace value, a module built with one)
    compiles with fullgraph=True to eager's result: Dynamo sees a numpy scalar as a 0-d array,
    which failed the Real check and then its repr (an untraceable repr() error naming no
    argument). A numpy seed or offset, whose value Dynamo does not give as a number, gets a
    TypeError saying what to pass; eager takes both, and a 0-d array as a scalar."""
    x = torch.randn(4, 6)
    calls = [lambda v: fastdrop.dropout(v, np.float64(0.3)),
             lambda v: fastdrop.dropout2d(v[None, None], np.float32(0.5), seed=3),
             lambda v: fastdrop.drop_path(v, np.float16(0.5)),
             fastdrop.nn.Dropout(np.float64(0.3)), fastdrop.nn.Dropout1d(np.float32(0.4)),
             fastdrop.nn.DropPath(np.float64(0.2))]
    for call in calls:
        torch.manual_seed(0)
        want = call(x)
        torch.manual_seed(0)
        assert torch.equal(torch.compile(call, backend="aot_eager", fullgraph=True)(x), want)
    for p in (np.float32(0.25), np.array(0.25)):  # (a 0-d array too, as torch's nn.Dropout takes it)
        for module in (fastdrop.nn.Dropout, fastdrop.nn.Dropout2d, fastdrop.nn.DropPath, fastdrop.nn.DropoutMatmul):
            assert type(module(p).p) is float and module(p).p == 0.25
    for kw in ({"seed": np.int64(3)}, {"seed": 3, "offset": np.uint32(5)}):
        with pytest.raises(Exception, match="cannot be read under torch.compile; pass int"):
            torch.compile(lambda v: fastdrop.dropout(v, 0.3, **kw), backend="aot_eager", fullgraph=True)(x)
        eager = {k: int(v) for k, v in kw.items()}
        assert torch.equal(fastdrop.dropout(x, 0.3, **kw), fastdrop.dropout(x, 0.3, **eager))
    assert torch.equal(fastdrop.dropout(x, np.array(0.25), seed=np.array(7)), fastdrop.dropout(x, 0.25, seed=7))
    for bad in (np.array([0.3]), np.complex128(0.3)):
        with pytest.raises(TypeError, match="p must be a real number"):
            fastdrop.dropout(x, bad)
    with pytest.raises(TypeError, match="seed must be an int"):
        fastdrop.dropout(x, 0.3, seed=np.float64(3.0))


def test_draw_seed_op_refuses_a_device_other_than_the_cpu():
    """fastdrop::draw_seed always draws from the CPU generator (its device keyword is what
    checkpointing reads to save that generator's state): another device, named in a direct call,
    is refused before the draw (it drew from the CPU's silently), real and fake."""
    state = torch.get_rng_state()
    for device in ("cuda", "junk"):
        with pytest.raises(ValueError, match="device must be 'cpu'"):
            torch.ops.fastdrop.draw_seed(0, device=device)
        with torch._subclasses.fake_tensor.FakeTensorMode(), pytest.raises(ValueError, match="device must be 'cpu'"):
            torch.ops.fastdrop.draw_seed(0, device=device)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.ops.fastdrop.draw_seed(0, device="cpu").dtype == torch.int64


def test_compiled_tensor_p_is_refused_with_the_reason():
    """A tensor p under fullgraph: the refusal's reason reaches the user (its message read the
    tensor's repr, which Dynamo cannot trace: only "repr() on tensor" came out, a review)."""
    torch._dynamo.reset()
    f = torch.compile(lambda x, p: fastdrop.dropout(x, p), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"p must be a real number in \[0, 1\], got a tensor"):
        f(torch.randn(4), torch.tensor(0.3))


@pytest.mark.parametrize("name, call, value, reason", [
    ("seed", lambda x, v: fastdrop.dropout(x, 0.3, seed=v), torch.tensor(3), r"seed must be an int"),
    ("offset", lambda x, v: fastdrop.dropout(x, 0.3, seed=1, offset=v), torch.tensor(3), r"offset must be an int"),
    ("training", lambda x, v: fastdrop.dropout(x, 0.3, training=v), torch.tensor(True), r"training must be a bool"),
    ("scale_by_keep", lambda x, v: fastdrop.drop_path(x, 0.3, scale_by_keep=v), torch.tensor(True),
     r"scale_by_keep must be a bool"),
    ("scaling", lambda x, v: fastdrop.drop_path(x, 0.3, scaling=v), torch.tensor(1), r"scaling must be one of"),
    ("eps", lambda x, v: fastdrop.max_norm_(x, 1.0, eps=v), torch.tensor(1e-7), r"eps must be a non-negative"),
])
def test_compiled_tensor_arguments_are_refused_with_the_reason(name, call, value, reason):
    """The same for every scalar argument: the messages of seed, offset, the flags, scaling and
    max_norm_'s eps read the tensor's repr too (a review); they say what to pass instead."""
    torch._dynamo.reset()
    f = torch.compile(call, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=reason + r".*a tensor; pass a Python number"), torch.no_grad():
        f(torch.randn(4, 6), value)


def test_inductor_with_torch_random_ops_matches_eager_under_fallback_random():
    """README: a graph that also holds torch's own random ops matches eager under Inductor with
    `fallback_random = True`, which keeps eager's order of draws from the generator (without it,
    Inductor draws torch's ops' seeds at the graph's start). (torch's config patch, not pytest's
    monkeypatch: undoing a setattr deleted the option from torch's config module, and every later
    compile in the process failed.)"""
    import torch._inductor.config as inductor_config

    def fn(x):
        return fastdrop.dropout(torch.nn.functional.dropout(x, 0.3) + torch.rand_like(x), 0.5)
    x = torch.randn(4, 8)
    torch.manual_seed(3)
    want = fn(x)
    torch._dynamo.reset()
    with inductor_config.patch(fallback_random=True):
        compiled = torch.compile(fn, fullgraph=True, backend="inductor")
        torch.manual_seed(3)
        assert torch.equal(compiled(x), want)
    torch._dynamo.reset()
