"""Guarantees the README states for every op, checked for every row of tests/op_table.py:
torch.compile (Inductor and aot_eager) equals eager, nothing but the operands and scalars saved for
backward, gradcheck and gradgradcheck, torch.func.grad / jvp / vmap, half types, backward under
autocast, numpy-torch parity, rank streams, bad input refused before the seed draw, in-place on overlapping memory refused,
torch.jit.trace and torch.export in training mode, activation checkpointing, and under torch.compile: dynamic
shapes, vmap, jvp (refused), autocast.
"""
import contextlib
import tempfile
import warnings

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import fastdrop
from fastdrop import _core, _seeds
from fastdrop.functional import DROPOUT
from fastdrop.linear import DROPCONNECT, DROPCONNECT_SAMPLE, DROPOUT_LINEAR, SAMPLE_GRAD_W, SAMPLE_GRAD_X
from fastdrop.matmul import DROPOUT_MATMUL
from op_table import CASES, numpy_operands, operands

NAMES = list(CASES)
INPLACE = [n for n in NAMES if CASES[n].inplace]
torch._dynamo.config.cache_size_limit = 64


def test_table_covers_every_declared_op():
    assert {id(c.op) for c in CASES.values()} == {id(op) for op in _core.OPS}


@pytest.mark.skipif(not hasattr(torch.Tag, "cudagraph_unsafe"), reason="this torch has no cudagraph_unsafe tag")
def test_every_custom_op_is_tagged_cudagraph_unsafe():
    """Inside a compiled graph the seed is a host tensor (fastdrop::draw_seed) baked into the
    launch: a CUDA-graph replay would repeat one mask, so every op (and the seed draw) keeps
    torch.compile's CUDA graphs away from itself (eager calls capture safely: README "CUDA")."""
    fastdrop.register_torch_ops()
    for name in [op.name for op in _core.OPS] + ["draw_seed", "max_norm_"]:
        assert torch.Tag.cudagraph_unsafe in getattr(torch.ops.fastdrop, name).default.tags, name


def _run(fn, ops, seed):
    """fn's outputs (seed=None and an explicit seed) and the gradients of both."""
    ops = tuple(o.detach().requires_grad_() for o in ops)
    torch.manual_seed(seed)
    y = fn(*ops)
    g = torch.autograd.grad(sum((t * (i + 1)).sum() for i, t in enumerate(y)), ops)
    return [t.detach() for t in y], g


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("name", NAMES)
def test_compile_matches_eager(name, backend):
    case = CASES[name]

    def fn(*ops):
        return case.call(*ops), case.call(*ops, seed=2**64 - 5, offset=2**63 + 1)

    compiled = torch.compile(fn, fullgraph=True, backend=backend)
    ops = operands(case, torch.float32)
    for seed in (1, 2):
        y_e, g_e = _run(fn, ops, seed)
        y_c, g_c = _run(compiled, ops, seed)
        for a, b in zip(y_c + list(g_c), y_e + list(g_e)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # seed=None follows torch's generator under compile too. Some ops draw very few mask bits
    # (drop_path's batch mode: one), so two seeds may agree by chance: some seed among 16 must differ.
    first = _run(compiled, ops, 1)[0][0]
    assert any(not torch.equal(first, _run(compiled, ops, s)[0][0]) for s in range(2, 18))


def _every_op(*ops):
    """Every case of the table in one program, seed=None and an explicit seed; ops: its cases'
    operands in table order (`_every_op_operands`)."""
    outs, i = [], 0
    for case in CASES.values():
        args = ops[i:i + len(case.shapes)]
        i += len(case.shapes)
        outs += [case.call(*args), case.call(*args, seed=2**64 - 5, offset=2**63 + 1)]
    return tuple(outs)


def _every_op_operands():
    return tuple(o for case in CASES.values() for o in operands(case, torch.float32))


def test_inductor_cpp_wrapper_runs_every_op():
    """Inductor's C++ wrapper (`torch._inductor.config.cpp_wrapper`, also AOTInductor's codegen)
    calls custom ops through the stable dispatcher, which could not pass a Device argument in
    torch 2.13 (`from(device_type, index)` did not compile): the seed op names its generator's
    device as a string. Every op in one graph (one C++ build), seed=None and explicit seeds,
    forward and backward equal to eager."""
    import torch._inductor.config as inductor_config
    ops = _every_op_operands()
    with inductor_config.patch(cpp_wrapper=True):
        compiled = torch.compile(_every_op, fullgraph=True, backend="inductor")
        y_c, g_c = _run(compiled, ops, 1)
    y_e, g_e = _run(_every_op, ops, 1)
    for a, b in zip(y_c + list(g_c), y_e + list(g_e)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_inductor_keeps_eagers_half_bits_with_emulated_casts(dtype):
    """float16/bfloat16 operands: the dense ops compute in float32 and round outputs and
    gradients once; Inductor fused away the float32 -> half -> float32 round trips of the graph
    around them, so a gradient flowing on through other ops (a ReLU after each op here) differed
    by an ulp from eager's (a review; README, "to within rounding").
    `torch._inductor.config.emulate_precision_casts` keeps the round trips: every op in one graph,
    outputs and gradients equal eager's bit for bit, and so under autocast with float32 operands."""
    import torch._inductor.config as inductor_config

    def chained(*ops):
        return tuple(torch.relu(y) * 1.5 for y in _every_op(*ops))
    def under_autocast(*ops):  # float32 operands, autocast's dtype (a float32 bias's gradient)
        with torch.autocast("cpu", dtype=dtype):
            return chained(*ops)
    for fn, ops in ((chained, tuple(o.to(dtype) for o in _every_op_operands())),
                    (under_autocast, _every_op_operands())):
        torch._dynamo.reset()
        with inductor_config.patch(emulate_precision_casts=True):
            y_c, g_c = _run(torch.compile(fn, fullgraph=True, backend="inductor"), ops, 1)
        y_e, g_e = _run(fn, ops, 1)
        for a, b in zip(y_c + list(g_c), y_e + list(g_e)):
            bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
            assert a.dtype == b.dtype and torch.equal(a.view(bits), b.view(bits))


def test_aot_inductor_package_runs_every_op(tmp_path):
    """An exported program with every op (seed=None and explicit seeds) compiled by AOTInductor,
    packaged, loaded and run (MC-dropout inference shipped as a .pt2): outputs equal eager's with
    torch's generator at the same state. Its runtime passed the ops' empty int[] params as None,
    which their schema refused (dropout_linear, DropConnect, dropout_matmul)."""

    class AllOps(torch.nn.Module):
        def forward(self, *ops):
            return _every_op(*ops)

    ops = _every_op_operands()
    path = torch._inductor.aoti_compile_and_package(torch.export.export(AllOps(), ops),
                                                    package_path=str(tmp_path / "ops.pt2"))
    loaded = torch._inductor.aoti_load_package(path)
    for seed in (3, 4):
        torch.manual_seed(seed)
        got = loaded(*ops)
        torch.manual_seed(seed)
        expected = AllOps()(*ops)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].op.upcast_half])
def test_compiled_half_ops_save_the_operands(name, dtype):
    """Under torch.compile a half GEMM op computes in float32 inside its custom op (forward and
    backward), as the eager Function does: the graph saves the half operands, not float32 copies
    of twice their size (the upcast ran around the op before), and outputs and gradients are the
    eager ones bit for bit."""
    case = CASES[name]

    def fn(*ops):
        return case.call(*ops, seed=7)

    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
    results = []
    for f in (fn, compiled):
        ops = tuple(None if o is None else o.to(dtype).requires_grad_() for o in operands(case))
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = f(*ops)
        grads = torch.autograd.grad((y.float() * 1.5).sum(), [o for o in ops if o is not None])
        big = [(tuple(t.shape), t.dtype) for t in saved if t.numel() > 1 and t.dtype != dtype]
        assert not big, (name, "compiled" if f is compiled else "eager", big)
        results.append((y, *grads))
    for a, b in zip(*results):
        assert a.dtype == dtype and torch.equal(a, b), name


@pytest.mark.parametrize("name", NAMES)
def test_compiled_func_grad_matches_eager(name):
    """torch.compile around torch.func.grad: Dynamo traced the op's custom op, whose autograd
    formula torch.func refuses (a RuntimeError about an autograd.Function the caller never
    wrote). The op now runs eagerly inside the transform (a graph break), so the compiled
    function's gradients are the eager ones, for an explicit seed and for seed=None after the
    same torch.manual_seed."""
    case = CASES[name]
    ops = operands(case, torch.float32)
    argnums = tuple(range(len(ops)))
    for kw in ({"seed": 5, "offset": 3}, {}):
        fn = torch.func.grad(lambda *a: case.call(*a, **kw).square().sum(), argnums=argnums)
        torch.manual_seed(4)
        ref = fn(*ops)
        torch.manual_seed(4)
        got = torch.compile(fn, backend="aot_eager")(*ops)
        for a, b in zip(got, ref):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].op is DROPOUT])
def test_compiled_grad_of_a_vmap_matches_eager(name):
    """torch.compile around grad(vmap(f)) (training an ensemble over stacked parameters, or a loss
    summed over a vmapped batch): Dynamo traced the op's custom op, whose vmap rule then ran its
    autograd under the grad transform outside the vmap, which torch.func refuses (a RuntimeError
    about an autograd.Function the caller never wrote, with fullgraph=False too). A vmap inside
    another transform now runs the op eagerly (a graph break): the compiled gradients are eager's."""
    case = CASES[name]
    (x,) = operands(case, torch.float32)
    xb = torch.stack([x, x * 2, x - 1])
    for kw in ({"seed": 5}, {}):
        fn = torch.func.grad(lambda b: torch.func.vmap(lambda t: case.call(t, **kw).sin(),
                                                       randomness="different")(b).sum())
        torch.manual_seed(4)
        ref = fn(xb)
        torch.manual_seed(4)
        assert torch.equal(torch.compile(fn, backend="aot_eager")(xb), ref)


def test_later_compiled_vmaps_compile_after_a_nested_transform_broke():
    """The README says which frames a graph break inside a transform marks for good (the function
    given to grad and fastdrop's public function): later compiled torch.func.vmaps are not among
    them, also after grad(vmap(f)) and vmap(vmap(f)) (it said they ran eagerly until
    torch._dynamo.reset(); an audit found them compiling with torch 2.13)."""
    torch._dynamo.reset()
    w, xs = torch.randn(4), torch.randn(3, 4)
    inner = lambda r: fastdrop.dropout(r * w, 0.5)  # noqa: E731
    torch.compile(torch.func.grad(lambda w_, b: torch.func.vmap(
        lambda r: fastdrop.dropout(r * w_, 0.5), randomness="different")(b).sum()), backend="aot_eager")(w, xs)
    torch.compile(torch.func.vmap(torch.func.vmap(inner, randomness="different"), randomness="different"),
                  backend="aot_eager")(xs.reshape(3, 2, 2).repeat(1, 1, 2))
    cos = torch.compile(lambda z: torch.func.vmap(torch.cos)(z), fullgraph=True, backend="aot_eager")
    assert torch.equal(cos(xs), torch.cos(xs))
    torch._dynamo.reset()


def test_fullgraph_refusal_of_an_eager_transform_names_the_reason():
    """Where the op must run eagerly under a transform (here a vmap whose input the batch shares),
    fullgraph=True refuses the graph break naming fastdrop's reason, not Dynamo's refusal to trace
    torch._dynamo.disable itself (the eager fallback was made while tracing)."""
    torch._dynamo.reset()  # (a graph break inside a transform marks frames for good: README "torch.func")
    f = torch.func.vmap(lambda w, x: fastdrop.dropout(x, 0.5) @ w, in_dims=(0, None), randomness="different")
    with pytest.raises(Exception, match="fastdrop op under a torch.func transform"):
        torch.compile(f, fullgraph=True, backend="aot_eager")(torch.randn(3, 4, 2), torch.randn(5, 4))


def test_compiled_per_sample_gradients_match_eager():
    """vmap(grad(f)), torch.func's per-example gradients, compiled: the eager gradients; and vmap
    alone still compiles into one graph with the custom op."""
    w = torch.randn(5, 6)
    xs = torch.randn(4, 6)

    def loss(w, x):
        return (fastdrop.dropout(x, 0.3, seed=9) @ w.T).square().sum()
    fn = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0), randomness="same")
    torch.testing.assert_close(torch.compile(fn, backend="aot_eager")(w, xs), fn(w, xs))
    graphs = []

    def backend(gm, inputs):
        graphs.append([str(n.target) for n in gm.graph.nodes if n.op == "call_function"])
        return gm.forward
    vm = torch.func.vmap(lambda x: fastdrop.dropout(x, 0.5, seed=1), randomness="same")
    torch._dynamo.reset()
    assert torch.equal(torch.compile(vm, backend=backend)(xs), vm(xs))
    assert len(graphs) == 1 and "fastdrop.dropout.default" in graphs[0], graphs


@pytest.mark.parametrize("name", NAMES)
def test_make_fx_of_func_grad_is_refused(name):
    """make_fx records the custom ops, which torch.func.grad cannot differentiate: a clear
    RuntimeError before the seed draw, not torch's message about setup_context."""
    from torch.fx.experimental.proxy_tensor import make_fx
    case = CASES[name]
    ops = operands(case)
    fn = torch.func.grad(lambda *a: case.call(*a).sum(), argnums=tuple(range(len(ops))))
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="inside torch.func.grad / vjp / jacrev is not supported"):
        make_fx(fn)(*ops)
    assert torch.equal(torch.get_rng_state(), state)


# Run in a fresh process, fastdrop imported before torch (the import hook registers the ops):
# every op's compiled call, first calls of the process included, compiles once.
_FIRST_CALLS = """
import sys
import fastdrop
import torch
from op_table import CASES, operands
torch._dynamo.config.error_on_recompile = True
for name, case in CASES.items():
    torch._dynamo.reset()
    compiled = torch.compile(case.call, backend="aot_eager", fullgraph=True)
    ops = [t.requires_grad_() for t in operands(case, torch.float32) if t is not None]
    for _ in range(2):
        compiled(*ops).sum().backward()
print("compiled once:", len(CASES))
"""


def test_first_calls_in_a_process_compile_once():
    """A global the checks fill lazily, filled inside Dynamo's trace, fails its guard on the next
    call and recompiles (it did: the checks' dtype table, the distributed-build query)."""
    import os
    import subprocess
    import sys
    env = {**os.environ, "PYTHONPATH": os.path.dirname(__file__)}
    run = subprocess.run([sys.executable, "-c", _FIRST_CALLS], capture_output=True, text=True, env=env,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"compiled once: {len(CASES)}" in run.stdout


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", [None, 3])
@pytest.mark.parametrize("name", NAMES)
def test_saves_only_operands_and_scalars(name, seed, dtype):
    """Nothing the size of a mask of x is saved: the operands, scalars, and for the grouped ops
    on CPU (native route, _grouped.native_grouped) their per-group factors, one value per group
    (float32 for a half x). Half types too: the dense ops compute them in float32 inside their Function, which saves the
    half operands themselves (it saved float32 copies, twice their bytes, when the upcast ran
    around it), so an in-place change of a saved operand is caught at backward, as torch's."""
    case = CASES[name]
    ops = tuple(o.to(dtype).requires_grad_() for o in operands(case))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = case.call(*ops, seed=seed)
    y.sum().backward()
    ptrs = {o.data_ptr() for o in ops if o is not None}
    for t in saved:
        factors = case.groups and t.numel() == case.groups and t.dtype in (ops[0].dtype, torch.float32)
        assert t.numel() <= 1 or t.data_ptr() in ptrs or factors, (name, tuple(t.shape))
    if case.op.saves:
        leaf = ops[case.op.saves[0]]
        x = leaf * 1  # a non-leaf operand, changed in place after the forward
        args = tuple(x if o is leaf else o for o in ops)
        y = case.call(*args, seed=seed)
        with torch.no_grad():
            x.add_(1)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            y.sum().backward()


@pytest.mark.parametrize("name", NAMES)
def test_inference_tensor_operands_work_under_autograd(name):
    """Each operand in turn made under torch.inference_mode (a frozen backbone's features, a
    frozen weight), the others needing grad: torch cannot save an inference tensor for backward,
    and the ops that save their operands raised its error after the seed draw, where torch's own
    composites work for an inference x (they save the dropout's output; helper hunt, 2026-12-06;
    torch's F.linear refuses an inference weight). The operand is saved as a copy: outputs and
    gradients equal those of the same call on normal tensors."""
    case = CASES[name]
    for i in range(len(case.shapes)):
        if case.shapes[i] is None or len(case.shapes) == 1:
            continue  # (a one-operand op with an inference x has nothing that needs grad)
        base = operands(case)
        with torch.inference_mode():
            frozen = base[i].clone()
        ops = [o.clone().requires_grad_() if j != i else frozen for j, o in enumerate(base)]
        ref = [o.clone().requires_grad_() if j != i else base[i].clone() for j, o in enumerate(base)]
        y, y_ref = case.call(*ops, seed=3), case.call(*ref, seed=3)
        grads = torch.autograd.grad(y.sum(), [o for j, o in enumerate(ops) if j != i])
        grads_ref = torch.autograd.grad(y_ref.sum(), [o for j, o in enumerate(ref) if j != i])
        assert torch.equal(y, y_ref), (name, i)
        assert all(torch.equal(a, b) for a, b in zip(grads, grads_ref)), (name, i)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_and_gradgradcheck(name):
    case = CASES[name]
    ops = tuple(o.requires_grad_() for o in operands(case))
    fn = lambda *a: case.call(*a, seed=11, offset=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, ops)
    assert torch.autograd.gradgradcheck(fn, ops)


def _forward_over_reverse(f, ops, create_graph):
    """The tangent of d(sum f(ops)^2)/d ops[0] along a fixed direction of ops[0]: a backward of
    dual tensors (a Hessian-vector product by forward-over-reverse AD)."""
    import torch.autograd.forward_ad as fwAD
    x = ops[0].detach().clone().requires_grad_()
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=x.dtype)
    with fwAD.dual_level():
        loss = (f(fwAD.make_dual(x, v), *ops[1:]) ** 2).sum()
        (g,) = torch.autograd.grad(loss, x, create_graph=create_graph)
        return fwAD.unpack_dual(g).tangent


def _modules_in_training():
    nn = fastdrop.nn
    return {"Dropout": (nn.Dropout(0.4), (4, 6)), "Dropout2d": (nn.Dropout2d(0.4), (2, 3, 4, 4)),
            "DropPath": (nn.DropPath(0.4), (4, 3, 5)), "DropoutLinear": (nn.DropoutLinear(6, 5, p=0.4), (4, 6)),
            "DropConnectLinear": (nn.DropConnectLinear(6, 5, p=0.4), (4, 6))}


@pytest.mark.parametrize("name", NAMES + [f"module:{m}" for m in _modules_in_training()])
def test_forward_over_reverse_keeps_the_tangent(name):
    """A backward that receives a dual gradient without create_graph (forward-over-reverse AD: a
    Hessian-vector product as torch.autograd.grad inside forward_ad.dual_level) gives its tangent,
    the same as with create_graph; the raw-kernel backward, the small-dropout lane's and the dense
    layers' lane returned the gradient without it (None), silently. Every op and the modules'
    training lanes."""
    if name.startswith("module:"):
        module, shape = _modules_in_training()[name[7:]]
        module = module.double()
        ops = (torch.randn(shape, dtype=torch.float64),)

        def f(x):
            torch.manual_seed(4)
            return module(x)
    else:
        case = CASES[name]
        ops = operands(case)
        f = lambda *a: case.call(*a, seed=11, offset=3)  # noqa: E731
    got = _forward_over_reverse(f, ops, create_graph=False)
    want = _forward_over_reverse(f, ops, create_graph=True)
    assert got is not None and want is not None, name
    assert torch.allclose(got, want, rtol=1e-12, atol=1e-12), name


@pytest.mark.parametrize("name", NAMES)
def test_compiled_autograd(name):
    """Compiled autograd traces the eager Function's backward with Dynamo: its masks go through
    the custom ops (Dynamo cannot trace the Numba kernels); gradients equal eager's."""
    compiled_autograd = pytest.importorskip("torch._dynamo.compiled_autograd")
    case = CASES[name]
    ops = operands(case)
    torch._dynamo.reset()
    for seed in (None, 2**64 - 3):
        grads = []
        for compiled in (True, False):
            xs = tuple(o.clone().requires_grad_() for o in ops)
            torch.manual_seed(6)
            y = case.call(*xs, seed=seed)
            if compiled:
                with compiled_autograd._enable(torch.compile(backend="aot_eager", fullgraph=True)):
                    (y * y).sum().backward()
            else:
                (y * y).sum().backward()
            grads.append([x.grad for x in xs])
        for a, b in zip(*grads):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


PER_SAMPLE = (DROPCONNECT_SAMPLE, SAMPLE_GRAD_X, SAMPLE_GRAD_W)


@pytest.mark.parametrize("seed", [None, 9])
@pytest.mark.parametrize("name", NAMES)
def test_batched_gradients(name, seed):
    """torch.autograd.grad(..., is_grads_batched=True) (torch's legacy vmap over the backward;
    jacobian / hessian with vectorize=True use it): every gradient of the batch through the op's
    one mask, equal to the gradients taken one at a time."""
    case = CASES[name]
    ops = tuple(o.requires_grad_() for o in operands(case))
    torch.manual_seed(1)
    y = case.call(*ops, seed=seed)
    v = torch.randn(3, *y.shape, dtype=y.dtype)
    if case.op in PER_SAMPLE:  # its fused kernels need memory: a clear error instead
        with pytest.raises(RuntimeError, match="per-sample DropConnect does not support batched"):
            torch.autograd.grad(y, ops, v, is_grads_batched=True)
        return
    batched = torch.autograd.grad(y, ops, v, is_grads_batched=True, retain_graph=True)
    for i in range(3):
        one = torch.autograd.grad(y, ops, v[i], retain_graph=True)
        for b, o in zip(batched, one):
            torch.testing.assert_close(b[i], o, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].inplace])
def test_inplace_under_legacy_vmap_writes_x(name):
    """A legacy-vmap tensor (a user Function's backward under is_grads_batched) masked in place
    is written, as on plain tensors: every slice gets the op's one mask."""
    from torch._vmap_internals import vmap as legacy_vmap
    case = CASES[name]
    x = torch.randn(3, *case.shapes[0], dtype=torch.float64)

    def body(r):
        r = r.clone()
        case.call(r, seed=1, inplace=True)
        return r
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # legacy vmap is deprecated, still used by torch
        y = legacy_vmap(body)(x)
    for i in range(3):
        assert torch.equal(y[i], case.call(x[i].clone(), seed=1))


def test_vectorized_jacobian():
    """What a user calls: jacobian / hessian with vectorize=True equal the looped ones."""
    x = torch.randn(4, 5, dtype=torch.float64)

    def f(t):
        torch.manual_seed(3)  # the same mask on every evaluation
        return fastdrop.dropout(t, 0.5)
    looped = torch.autograd.functional.jacobian(f, x)
    assert torch.equal(torch.autograd.functional.jacobian(f, x, vectorize=True), looped)
    assert torch.equal(looped.reshape(20, 20), torch.diag(f(torch.ones(4, 5, dtype=torch.float64)).reshape(-1)))
    w = torch.randn(3, 5, dtype=torch.float64)

    def loss(t):  # hessian(vectorize=True): batched gradients through a double backward
        torch.manual_seed(4)
        return (fastdrop.dropout_linear(t, w, None, 0.5) ** 2).sum()
    torch.testing.assert_close(torch.autograd.functional.hessian(loss, x, vectorize=True),
                               torch.autograd.functional.hessian(loss, x))


@pytest.mark.parametrize("name", NAMES)
def test_jacrev_and_vmap_of_a_vjp(name):
    """torch.func.jacrev batches the backward of one forward (a vmap over its vjp): every cotangent
    gets the forward's one mask, whatever the vmap's randomness, as torch's saved mask does. The
    Jacobian equals the looped one after the same seed."""
    case = CASES[name]
    ops = operands(case)
    rest = ops[1:]

    def f(x):
        torch.manual_seed(6)
        return case.call(x, *rest)
    looped = torch.autograd.functional.jacobian(f, ops[0])
    assert looped.count_nonzero() > 0
    if case.op in (DROPCONNECT_SAMPLE, SAMPLE_GRAD_X, SAMPLE_GRAD_W):
        # their backward is an op of their own, with no vmap rule: refused, not wrong
        with pytest.raises(RuntimeError, match="vmap"):
            torch.func.jacrev(f)(ops[0])
        return
    torch.testing.assert_close(torch.func.jacrev(f)(ops[0]), looped)
    for randomness in ("different", "same"):
        y, vjp_fn = torch.func.vjp(f, ops[0])
        basis = torch.eye(y.numel(), dtype=y.dtype).reshape(y.numel(), *y.shape)
        (rows,) = torch.func.vmap(vjp_fn, randomness=randomness)(basis)
        torch.testing.assert_close(rows.reshape(looped.shape), looped)


@pytest.mark.parametrize("name", NAMES)
def test_jacfwd_and_hessian_refusals_name_the_route_that_works(name):
    """torch.func.jacfwd and hessian vmap forward-mode tangents, whatever randomness they are
    given: an op without a vmap rule (the dense ops) refuses them, and the message named
    randomness='same', which fails again (a review). It names the route that works: jacrev (and
    jacrev of jacrev for the Hessian), which the test then takes; per-sample DropConnect, whose
    backward has no vmap rule either, says to take the gradients one at a time."""
    case = CASES[name]
    if case.op.vmap is not None:
        return  # the dropout family: jacfwd works (test_func_grad_jvp_and_vmap)
    ops = operands(case)
    rest = ops[1:]
    f = lambda x: case.call(x, *rest, seed=3)  # noqa: E731
    per_sample = case.op in (DROPCONNECT_SAMPLE, SAMPLE_GRAD_X, SAMPLE_GRAD_W)
    hint = "one output at a time" if per_sample else r"takes torch.func.jacrev, its Hessian jacrev\(jacrev"
    for refused in (lambda: torch.func.jacfwd(f)(ops[0]), lambda: torch.func.jacfwd(f, randomness="same")(ops[0]),
                    lambda: torch.func.hessian(lambda x: (f(x) ** 3).sum())(ops[0])):
        with pytest.raises(RuntimeError, match=hint):
            refused()
    if not per_sample:
        torch.testing.assert_close(torch.func.jacrev(f)(ops[0]), torch.autograd.functional.jacobian(f, ops[0]))
        loss = lambda x: (f(x) ** 3).sum()  # noqa: E731
        torch.testing.assert_close(torch.func.jacrev(torch.func.jacrev(loss))(ops[0]),
                                   torch.autograd.functional.hessian(loss, ops[0]))


def test_hessian_and_vmapped_jacrev():
    """A backward batched by a new vmap over a forward that itself ran under vmap: with
    randomness="same" (one mask for all, as jacfwd(jacrev(f), randomness="same"), the Hessian,
    runs it) the one mask is replayed; with "different" it would need a mask per example of one
    vmap and one mask for all of the other: refused with a clear error."""
    x = torch.randn(4, 5, dtype=torch.float64)

    def loss(t):  # the dropout family (the dense ops have no vmap rule for their forward)
        torch.manual_seed(4)
        return (fastdrop.drop_path(t, 0.5) ** 2).sum() + (fastdrop.dropout(t, 0.3) ** 3).sum()
    h = torch.func.jacfwd(torch.func.jacrev(loss), randomness="same")(x)
    torch.testing.assert_close(h, torch.autograd.functional.hessian(loss, x))
    f = torch.func.vmap(torch.func.jacrev(lambda t: fastdrop.dropout(t, 0.5, seed=1)), randomness="different")
    with pytest.raises(RuntimeError, match="randomness='different'"):
        f(torch.randn(3, 4, 5, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
@pytest.mark.parametrize("name", INPLACE)
def test_forward_ad_of_inplace_calls(name, dtype):
    """An in-place call under forward-mode AD (torch.func.jvp, forward_ad's dual tensors,
    gradcheck's forward check) writes x's tangent in place and returns it, as torch's in-place
    ops do: the tangent is the op on the tangent, with the forward's mask. (The jvp returned a new
    tensor, which torch refuses for a Function that marked its input dirty.)"""
    import torch.autograd.forward_ad as fwAD
    case = CASES[name]
    x, = operands(case, dtype)
    t = torch.randn_like(x)
    y, jt = torch.func.jvp(lambda x: case.call(x * 1, seed=5, inplace=True), (x,), (t,))
    assert torch.equal(y, case.call(x, seed=5)) and torch.equal(jt, case.call(t, seed=5))
    for training in (True, False):  # (eval: classic mode's in-place x * (1 - p))
        with fwAD.dual_level():
            dual = fwAD.make_dual(x, t) * 1
            tangent = fwAD.unpack_dual(dual).tangent
            out = fwAD.unpack_dual(case.call(dual, seed=5, inplace=True, training=training))
            assert out.tangent is tangent or torch.equal(out.tangent, tangent)
        assert torch.equal(out.primal, case.call(x, seed=5, training=training))
        assert torch.equal(out.tangent, case.call(t, seed=5, training=training))
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(lambda x: case.call(x * 1, seed=5, inplace=True),
                                        (x.clone().requires_grad_(),), check_forward_ad=True)


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_on_a_view_torch_cannot_rebase_is_refused_before_the_draw(name):
    """inplace=True on a view returned with others by one function (chunk, split, unbind), which
    requires grad under grad mode: torch refuses to modify such a view in place. torch raised it
    from the Function's mark_dirty, after the kernel had written the view; now refused first, the
    view and torch's generator untouched. Without grad mode, or on a plain view, the call runs."""
    case = CASES[name]
    x, = operands(case)
    base = torch.cat([x, x], dim=0).requires_grad_() * 1
    for view in (base.chunk(2, 0)[0], base.split(x.shape[0], 0)[1], base.unbind(0)[0].unsqueeze(0)):
        before, state = view.detach().clone(), torch.get_rng_state()
        with pytest.raises(RuntimeError, match="several views one function returned"):
            case.call(view, inplace=True)
        assert torch.equal(view.detach(), before) and torch.equal(state, torch.get_rng_state())
    with torch.no_grad():
        view = base.chunk(2, 0)[0]
        assert case.call(view, seed=3, inplace=True) is view
    view = base[:x.shape[0]]
    case.call(view, seed=3, inplace=True).sum().backward()


def _grad_through_a_saved_then_written_tensor(write, allow_mutation):
    """d/da of sum(h * h) + sum(write(h)) with h = a * 1.5 saved by h * h, written by `write`
    (on h itself under torch's allow_mutation_on_saved_tensors, on a clone without it)."""
    a = torch.linspace(-2, 2, 60, dtype=torch.float64).reshape(6, 10).requires_grad_()
    context = torch.autograd.graph.allow_mutation_on_saved_tensors() if allow_mutation \
        else contextlib.nullcontext()
    with context:
        h = a * 1.5
        loss = (h * h).sum()
        written = write(h if allow_mutation else h.clone())
        if written is not None and written.requires_grad:
            loss = loss + written.sum()
        loss.backward()
    return a.grad


@pytest.mark.parametrize("write", [f"inplace:{n}" for n in INPLACE] + ["out=", "max_norm_"])
def test_writes_are_seen_by_allow_mutation_on_saved_tensors(write):
    """Under torch.autograd.graph.allow_mutation_on_saved_tensors a tensor saved for backward may
    be written in place: torch's dispatch mode clones it first. fastdrop's kernels write memory
    behind torch's back, so every write (inplace=True, out=, max_norm_) shows itself to the modes
    as torch's own in-place op first; the backward read the written values before, silently."""
    if write == "out=":
        def fn(h):
            fastdrop.dropout(h.detach() + 1, 0.5, seed=5, out=h.detach())
    elif write == "max_norm_":
        def fn(h):
            fastdrop.max_norm_(h.detach(), 1.0)
    else:
        case = CASES[write.split(":")[1]]
        for training in (True, False):
            def fn(h):
                return case.call(h, seed=5, inplace=True, training=training)
            torch.testing.assert_close(_grad_through_a_saved_then_written_tensor(fn, True),
                                       _grad_through_a_saved_then_written_tensor(fn, False), rtol=0, atol=0)
        return
    torch.testing.assert_close(_grad_through_a_saved_then_written_tensor(fn, True),
                               _grad_through_a_saved_then_written_tensor(fn, False), rtol=0, atol=0)


def test_inference_tensors_are_written_under_allow_mutation_on_saved_tensors():
    """An inference tensor, which no graph saves, is written as without the context (showing its
    write to the modes raised torch's "Inference tensors do not track version counter", after the
    seed draw)."""
    with torch.autograd.graph.allow_mutation_on_saved_tensors(), torch.inference_mode():
        x = torch.randn(4, 5)
        expected = fastdrop.dropout(x, 0.5, seed=2)
        assert fastdrop.dropout(x, 0.5, seed=2, inplace=True) is x and torch.equal(x, expected)
        w = torch.randn(3, 4) * 5
        fastdrop.max_norm_(w, 1.0)
        torch.testing.assert_close(w.norm(dim=1), torch.ones(3))


@pytest.mark.parametrize("name", NAMES)
def test_func_grad_jvp_and_vmap(name):
    case = CASES[name]
    ops = operands(case)
    rest = ops[1:]
    f = lambda x: case.call(x, *rest, seed=5)  # noqa: E731
    gx = torch.func.grad(lambda x: (f(x) * 3).sum())(ops[0])
    x = ops[0].clone().requires_grad_()
    torch.testing.assert_close(gx, torch.autograd.grad((f(x) * 3).sum(), x)[0])
    t = torch.randn_like(ops[0])
    y, jt = torch.func.jvp(f, (ops[0],), (t,))
    torch.testing.assert_close(y, f(ops[0]))
    torch.testing.assert_close(jt, f(ops[0] + t) - f(ops[0]))  # every op is affine in its first operand
    xb = torch.stack([ops[0], ops[0] * 2, ops[0] - 1])
    g = lambda x: case.call(x, *rest)  # noqa: E731
    refused = ["error"] if case.op is fastdrop.functional.DROPOUT else ["error", "same", "different"]
    for randomness in refused:  # refused before the seed draw: torch's generator untouched
        state = torch.get_rng_state()
        with pytest.raises(RuntimeError, match="vmap"):
            torch.func.vmap(g, randomness=randomness)(xb)
        with pytest.raises(RuntimeError, match="vmap"):  # also inside a grad transform
            torch.func.vmap(torch.func.grad(lambda x: g(x).sum()), randomness=randomness)(xb)
        assert torch.equal(state, torch.get_rng_state())
    if case.op is not fastdrop.functional.DROPOUT:
        with pytest.raises(RuntimeError, match="vmap"):
            torch.func.vmap(f, randomness="different")(xb)
        return
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(f)(xb)
    same = torch.func.vmap(f, randomness="same")(xb)
    for i in range(3):
        torch.testing.assert_close(same[i], f(xb[i]))
    diff = torch.func.vmap(f, randomness="different")(xb)
    assert diff.shape == xb.shape
    kept = [(diff[i] != 0) for i in range(3)]
    assert not (torch.equal(kept[0], kept[1]) and torch.equal(kept[1], kept[2]))
    # seed=None: one seed drawn outside the transform, reproducible by torch.manual_seed; the rule
    # still refuses randomness="error"
    with pytest.raises(RuntimeError, match="randomness"):
        torch.func.vmap(g)(xb)
    runs = []
    for _ in range(2):
        torch.manual_seed(11)
        runs.append((torch.func.vmap(g, randomness="different")(xb), torch.func.vmap(g, randomness="same")(xb)))
    torch.testing.assert_close(runs[0][0], runs[1][0])
    torch.testing.assert_close(runs[0][1], runs[1][1])
    assert runs[0][0].shape == xb.shape


@pytest.mark.parametrize("name", NAMES)
def test_nested_jvp(name):
    """jvp of jvp with one operand perturbed gives the exact second derivative for every op (the
    dropout ops are linear in x; a bilinear op's lost tangents multiply nothing). An op with
    several operands perturbed at the two levels, whose jvp rule reads saved operands that torch's
    autograd.Function hands back without their outer tangents (the second derivative came out 0,
    silently; reviews on 2026-12-06), is refused before the seed draw, and grad of jvp still gives
    the exact value there."""
    case = CASES[name]
    ops = [o.double() for o in operands(case)]
    one = torch.tensor(1.0, dtype=torch.float64)
    f = lambda *a: case.call(*a, seed=5)  # noqa: E731
    d2 = lambda fn: torch.func.jvp(lambda u: torch.func.jvp(fn, (u,), (one,))[1], (one,), (one,))[1]  # noqa: E731

    def g(s):  # second derivative in s: 2 * sum(f(x) - f(0)) for every op affine in x (fixed mask)
        return (f(s * ops[0], *ops[1:]) * s).sum()
    exact = 2 * (f(*ops) - f(0 * ops[0], *ops[1:])).sum()
    torch.testing.assert_close(d2(g), exact)
    if len(case.op.operands) < 2:
        return

    def both(s):  # x and the second operand scaled: f(s x, s w) = s^2 (f(x, w) - f(0, w)) + f(0, 0)
        return f(s * ops[0], s * ops[1], *ops[2:]).sum()
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="nested torch.func.jvp"):
        d2(both)
    assert torch.equal(state, torch.get_rng_state())
    torch.testing.assert_close(torch.func.grad(lambda u: torch.func.jvp(both, (u,), (one,))[1])(one),
                               2 * (f(*ops) - f(0 * ops[0], *ops[1:])).sum())
    b = case.op.bias
    if b is None or b >= len(ops):
        return

    def x_and_bias(s, t):  # x perturbed at the inner jvp, the bias at the outer: an affine operand,
        shifted = [o + t * o if i == b else o for i, o in enumerate(ops)]  # not refused
        return torch.tanh(f(s * ops[0], *shifted[1:])).sum()
    inner = lambda t: torch.func.jvp(lambda s: x_and_bias(s, t), (one,), (one,))[1]  # noqa: E731
    torch.testing.assert_close(torch.func.jvp(inner, (one,), (one,))[1], torch.func.grad(inner)(one))


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].inplace])
def test_in_place_under_jvp(name):
    """In place on torch.func.jvp's own input: torch's in-place dropout works there; fastdrop's
    in-place Function wrote the tangent in place, which functorch refuses for the transform's
    input, after the kernel wrote x (a review on 2026-12-06). x and its tangent now equal the
    out-of-place op's."""
    case = CASES[name]
    x, t = operands(case)[0], torch.randn_like(operands(case)[0])
    y_ref, t_ref = torch.func.jvp(lambda i: case.call(i, seed=5), (x,), (t,))

    def inplace(i):
        r = case.call(i, seed=5, inplace=True)
        assert r is i
        return r
    # (tangents cloned: an in-place op on jvp's input writes the tangent given, as torch's do)
    y, ty = torch.func.jvp(inplace, (x.clone(),), (t.clone(),))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(ty, t_ref, rtol=0, atol=0)
    _, ty = torch.func.jvp(lambda i: case.call(i[1:], seed=5, inplace=True) * 1, (x.clone(),), (t.clone(),))
    _, t_ref = torch.func.jvp(lambda i: case.call(i[1:], seed=5), (x,), (t.clone(),))  # a view of the input
    torch.testing.assert_close(ty, t_ref, rtol=0, atol=0)
    # a tensor captured from outside the transform (no tangent) is written in place, as before
    c = x.clone()
    y, ty = torch.func.jvp(lambda s: case.call(c, seed=5, inplace=True) * s, (torch.tensor(2.0),),
                           (torch.tensor(1.0),))
    torch.testing.assert_close(c, y_ref, rtol=0, atol=0)
    torch.testing.assert_close(ty, y_ref, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_operands_the_batch_shares(name):
    """Operands not batched at a vmap level (a closure variable, in_dims=None: the input of an
    ensemble vmapped over stacked weights) make the op a random op on a shared value, as torch's
    random ops see it: randomness="error" refuses it (before the draw), "same" gives the batch one
    mask, "different" a mask per example (the dropout family: the input expanded over the batch,
    the same masks as for that expanded input batched; the other ops refuse). It used to give one
    mask under every randomness."""
    case = CASES[name]
    ops = operands(case)
    scale = torch.tensor([1.0, 2.0, 3.0])  # the batched argument: the op's own operands are shared
    call = lambda si, seed=None: case.call(*ops, seed=seed) * si  # noqa: E731
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="randomness") as refused:
        torch.func.vmap(call)(scale)
    assert torch.equal(state, torch.get_rng_state())
    # the way out it names is one the op takes (the ops without a mask per example: 'same' only)
    assert ("'different'" in str(refused.value).split("pass")[1].split(";")[0]) == (
        case.op is fastdrop.functional.DROPOUT)
    if case.op is not fastdrop.functional.DROPOUT:  # the randomness given, not 'different' (a review)
        assert "(randomness='error')" in str(refused.value)
    same = torch.func.vmap(lambda si: call(si, 7), randomness="same")(scale)
    for i in range(3):
        torch.testing.assert_close(same[i], case.call(*ops, seed=7) * scale[i])
    if case.op is not fastdrop.functional.DROPOUT:
        with pytest.raises(RuntimeError, match="does not support torch.func.vmap"):
            torch.func.vmap(call, randomness="different")(scale)
        assert torch.equal(state, torch.get_rng_state())
        return
    diff = torch.func.vmap(lambda si: call(si, 7), randomness="different")(scale)
    batched = torch.func.vmap(lambda x: case.call(x, seed=7), randomness="different")(
        ops[0].expand(3, *ops[0].shape))
    for i in range(3):
        torch.testing.assert_close(diff[i], batched[i] * scale[i])
    kept = [diff[i] != 0 for i in range(3)]
    assert not (torch.equal(kept[0], kept[1]) and torch.equal(kept[1], kept[2]))
    torch.manual_seed(3)  # seed=None: drawn once, outside the transform
    a = torch.func.vmap(call, randomness="different")(scale)
    torch.manual_seed(3)
    torch.testing.assert_close(a, torch.func.vmap(call, randomness="different")(scale))


@pytest.mark.parametrize("dtype, atol", [(torch.float16, 2e-2), (torch.bfloat16, 1e-1)])
@pytest.mark.parametrize("name", NAMES)
def test_half_types(name, dtype, atol):
    case = CASES[name]
    ops = operands(case, torch.float32)
    y = case.call(*(o.to(dtype) for o in ops), seed=4)
    assert y.dtype == dtype
    ref = case.call(*(o.to(dtype).float() for o in ops), seed=4)
    torch.testing.assert_close(y.float(), ref, rtol=atol, atol=atol)


@pytest.mark.parametrize("name", NAMES)
def test_backward_under_autocast(name):
    """A forward under torch.autocast (bfloat16 on the CPU) has a backward that runs: the ops' GEMMs
    re-enter the forward's autocast region (torch.amp.custom_bwd's rule), and every gradient comes
    back in its operand's dtype. (Before, the dense ops' backward met a bfloat16 gradient with a
    float32 saved weight.)"""
    case = CASES[name]
    ops = tuple(o.detach().requires_grad_() for o in operands(case, torch.float32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = case.call(*ops, seed=6)
    grads = torch.autograd.grad(y.float().sum(), ops)
    assert [g.dtype for g in grads] == [o.dtype for o in ops]
    assert all(torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", NAMES)
def test_numpy_matches_torch(name):
    case = CASES[name]
    y_np = case.call(*numpy_operands(case), seed=9, offset=2**40)
    y_t = case.call(*operands(case), seed=9, offset=2**40)
    assert isinstance(y_np, np.ndarray)
    np.testing.assert_allclose(y_np, y_t.numpy(), rtol=1e-12, atol=1e-12)
    # tensors with torch's negative bit (lazy negations: no memory .numpy() can read) are resolved
    negs = tuple(torch._neg_view(-t) for t in operands(case))
    assert all(t.is_neg() for t in negs)
    torch.testing.assert_close(case.call(*negs, seed=9, offset=2**40), y_t, rtol=1e-12, atol=1e-12)
    # big-endian and np.matrix inputs are converted, same answer
    big = tuple(a.astype(a.dtype.newbyteorder(">")) for a in numpy_operands(case))
    np.testing.assert_allclose(case.call(*big, seed=9, offset=2**40), y_np, rtol=1e-12, atol=1e-12)
    if len(case.shapes[0]) == 2:
        mats = (np.asmatrix(numpy_operands(case)[0]),) + numpy_operands(case)[1:]
        y_m = case.call(*mats, seed=9, offset=2**40)
        assert type(y_m) is np.ndarray
        np.testing.assert_allclose(y_m, y_np, rtol=1e-12, atol=1e-12)
    # fields of packed structured arrays (strides not whole elements) are converted too
    packed = tuple(_packed_field(a) for a in numpy_operands(case))
    assert packed[0].strides[-1] % packed[0].itemsize != 0
    np.testing.assert_allclose(case.call(*packed, seed=9, offset=2**40), y_np, rtol=1e-12, atol=1e-12)


def _packed_field(a):
    """a's values as the float64 field of a packed (f4, f8) record array: strides of 12 bytes."""
    rec = np.zeros(a.shape, dtype=[("pad", "f4"), ("v", "f8")])
    rec["pad"] = 1.0
    rec["v"] = a
    return rec["v"]


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_and_out_on_a_packed_field_are_refused(name):
    """The kernels write memory in whole elements: a packed record's field as the target would
    have the neighbouring field overwritten. Refused (TypeError) before any write."""
    case = CASES[name]
    x = _packed_field(numpy_operands(case)[0])
    before = x.base.copy()
    with pytest.raises(TypeError, match="strides in whole elements"):
        case.call(x, seed=1, inplace=True)
    if not name.startswith("drop_path"):  # (drop_path takes no out=)
        with pytest.raises(TypeError, match="whole multiples of its itemsize"):
            case.call(numpy_operands(case)[0], seed=1, out=x)
    assert np.array_equal(x.base, before)


@pytest.mark.parametrize("name", NAMES)
def test_rank_streams(name, monkeypatch):
    case = CASES[name]
    ops = operands(case)
    differ = []
    for torch_seed in range(3, 19):  # few-bit masks (drop_path batch: one bit) may agree by chance
        outs = {}
        for rank in (0, 1):
            monkeypatch.setattr(_seeds, "_rank", lambda r=rank: r)
            torch.manual_seed(torch_seed)
            outs[rank] = (case.call(*ops), case.call(*ops, seed=5))
        differ.append(not torch.equal(outs[0][0], outs[1][0]))
        assert torch.equal(outs[0][1], outs[1][1])
    assert any(differ)


@pytest.mark.parametrize("name", NAMES)
def test_recorded_graphs_take_the_rank_stream_of_the_process_running_them(name, monkeypatch):
    """A make_fx graph, a torch.jit.trace and a torch.export program made on rank 1 and run on
    rank 0 give rank 0's seed=None masks (and gradients), as rank 0's eager call does: the custom
    op adds the rank stream offset when it runs, not when it is recorded (a graph made on one rank
    repeated that rank's masks on every rank). An explicit seed stays the same on every rank."""
    from torch.fx.experimental.proxy_tensor import make_fx
    case = CASES[name]
    ops = operands(case)

    class Call(torch.nn.Module):
        def forward(self, *a):
            return case.call(*a)

    monkeypatch.setattr(_seeds, "_rank", lambda: 1)
    graph = make_fx(lambda *a: case.call(*a))(*ops)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(lambda *a: case.call(*a), ops, check_trace=False)
    exported = torch.export.export(Call().train(), ops).module()
    fixed = make_fx(lambda *a: case.call(*a, seed=5))(*ops)
    for rank in (0, 1):
        monkeypatch.setattr(_seeds, "_rank", lambda r=rank: r)
        for torch_seed in (3, 4):
            leaves = tuple(o.detach().requires_grad_() for o in ops)
            torch.manual_seed(torch_seed)
            want = case.call(*leaves)
            want_grads = torch.autograd.grad(want.sum(), leaves)
            for run in (graph, traced, exported):
                torch.manual_seed(torch_seed)
                assert torch.equal(run(*ops), want), (rank, run)
            torch.manual_seed(torch_seed)
            got = graph(*leaves)
            assert all(torch.equal(g, w) for g, w in zip(torch.autograd.grad(got.sum(), leaves), want_grads))
        assert torch.equal(fixed(*ops), case.call(*ops, seed=5))


@pytest.mark.parametrize("name", NAMES)
def test_compiled_backward_takes_the_rank_stream_of_the_process_running_it(name, monkeypatch):
    """A compiled graph traced on rank 1 and run on rank 0 (DDP ranks sharing Inductor's on-disk
    caches), or run after set_rank_streams(False): outputs and gradients equal the eager call's
    in the process running it. The backward graph kept the tracing rank's offset (AOTAutograd runs
    the op's setup_context while tracing), so gradients flowed through another mask than the
    forward's. Also the compiled vmap rule."""
    case = CASES[name]
    ops = operands(case)
    compiled = torch.compile(lambda *a: case.call(*a), backend="aot_eager", fullgraph=True)

    def run(fn, seed):
        leaves = tuple(o.detach().requires_grad_() for o in ops)
        torch.manual_seed(seed)
        y = fn(*leaves)
        return [y.detach(), *torch.autograd.grad((y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(
            y.shape)).sum(), leaves)]

    monkeypatch.setattr(_seeds, "_rank", lambda: 1)
    run(compiled, 3)  # traced (forward and backward) on rank 1
    for rank, streams in ((0, True), (2, True), (1, False)):
        monkeypatch.setattr(_seeds, "_rank", lambda r=rank: r)
        previous = fastdrop.set_rank_streams(streams)
        try:
            for seed in (3, 4):
                for a, b in zip(run(compiled, seed), run(case.call, seed)):
                    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"rank {rank}")
        finally:
            fastdrop.set_rank_streams(previous)
    if case.op is DROPOUT:
        vmapped = torch.func.vmap(lambda t: case.call(t), randomness="different")
        compiled_vmap = torch.compile(vmapped, backend="aot_eager", fullgraph=True)
        x = ops[0].expand(3, *ops[0].shape).contiguous()
        monkeypatch.setattr(_seeds, "_rank", lambda: 1)
        compiled_vmap(x)
        monkeypatch.setattr(_seeds, "_rank", lambda: 0)
        torch.manual_seed(5)
        got = compiled_vmap(x)
        torch.manual_seed(5)
        assert torch.equal(got, vmapped(x))


def _bad_inputs(case):
    """(label, operands, exception) variants of a good call that must be refused."""
    ops = operands(case)
    x, rest = ops[0], ops[1:]
    yield "int", (x.long(),) + rest, TypeError
    yield "sparse", (x.to_sparse(),) + rest, TypeError
    yield "nested", (torch.nested.nested_tensor([x[0], x[-1]]),) + rest, TypeError
    yield "list", (x.tolist(),) + rest, TypeError
    yield "freed", (_freed(x),) + rest, ValueError  # FSDP's free of an unsharded parameter
    yield "short", (_freed(x, x.nbytes - 8),) + rest, ValueError
    yield "short-view", (_freed(x.clone().mT, x.nbytes - 8),) + rest, ValueError  # gaps: the exact rule
    # x-sized arrays (the output, a masked copy) larger than physical memory from an expanded
    # (tiny) x: the rows (dim -2 of dropout_matmul's a, which b's batch cannot stretch) grown to
    # 2**40 elements; the per-sample grad W op's grad and x share that dim, so both grow
    dim = x.dim() - 2 if case.op is DROPOUT_MATMUL else 0
    rows = 2**40 // max(1, x.numel() // x.shape[dim])

    def huge(a):
        return a.narrow(dim, 0, 1).expand(a.shape[:dim] + (rows,) + a.shape[dim + 1:])
    grown = tuple(huge(a) for a in ops[:2 if case.op is SAMPLE_GRAD_W else 1])
    big = grown + ops[len(grown):]
    yield "too-big", big, MemoryError
    yield "too-big-numpy", tuple(None if a is None else np.broadcast_to(a.numpy(), a.shape) for a in big), \
        MemoryError
    if rest:
        yield "dtype-mismatch", (x.float(),) + rest, TypeError
        yield "meta-operand", (x, rest[0].to("meta")) + rest[1:], ValueError
        yield "kind-mismatch", (x, rest[0].numpy()) + rest[1:], TypeError
        yield "freed-operand", (x, _freed(rest[0])) + rest[1:], ValueError
        rows = case.op in (DROPOUT_MATMUL, SAMPLE_GRAD_X, SAMPLE_GRAD_W)  # their shared dim is -2
        cut = rest[0][..., :-1, :] if rows else rest[0][..., :-1]
        yield "shape", (x, cut) + rest[1:], ValueError


def _freed(t, nbytes=0):
    """A copy of t whose storage is cut to nbytes: a tensor with no memory for its elements."""
    t = t.clone() if t.is_contiguous() or t.dim() < 2 else t
    t.untyped_storage().resize_(nbytes)
    return t


@pytest.mark.parametrize("name", NAMES)
def test_tensors_without_memory_are_refused_in_every_route(name):
    """A tensor whose storage was freed (FSDP resizes an unsharded parameter's storage to 0
    bytes between its uses) or cut short: ValueError, where the kernels would read and write
    past its memory (a segfault; torch's own dropout segfaults there). In training (with and
    without grad: the training lane and the general route), at eval where the op reads its
    operands, as out=, in the custom op a replayed graph or a direct call runs, and as a saved
    operand freed before the backward."""
    case = CASES[name]
    ops = operands(case, torch.float32)
    for i in range(len(ops)):
        for grad in (False, True):
            bad = tuple(_freed(a) if j == i else a.clone().requires_grad_(grad) for j, a in enumerate(ops))
            for training in (True, False):
                if not training and len(ops) == 1 and "classic" not in name:
                    continue  # eval returns x untouched, as torch's dropout does
                # the error names the operand by the op's own name for it (x, weight, bias; a, b)
                with pytest.raises(ValueError, match=f"^{case.op.operands[i]} has no memory for its elements"):
                    case.call(*bad, training=training)
    lib = getattr(torch.ops.fastdrop, case.op.name)
    bad = (_freed(ops[0]),) + ops[1:]
    with pytest.raises(ValueError, match="no memory for its elements"):
        lib(*bad, *[None] * (len(case.op.operands) - len(bad)), torch.tensor(3), 0.3, 0, 1 / 0.7, [])
    with warnings.catch_warnings():  # torch.jit.trace: refused before the trace's seed draw
        warnings.simplefilter("ignore")
        state = torch.get_rng_state()
        with pytest.raises(ValueError, match="no memory for its elements"):
            torch.jit.trace(lambda *a: case.call(*a), (_freed(ops[0]),) + ops[1:], check_trace=False)
        assert torch.equal(torch.get_rng_state(), state)
    if case.op.saves:  # an operand freed between the forward and its backward
        leaves = tuple(a.clone().requires_grad_(True) for a in ops)
        y = case.call(*leaves)
        for i in case.op.saves:
            if leaves[i] is not None:
                leaves[i].data.untyped_storage().resize_(0)
        with pytest.raises(ValueError, match="a saved operand has no memory"):
            y.sum().backward()
    if case.op is DROPOUT and not name.startswith("drop_path"):  # (the ops with out=)
        with pytest.raises(ValueError, match="out has no memory"):
            case.call(*ops, out=_freed(torch.empty_like(ops[0])))


def assert_bits_equal(a, b):
    """float64 tensors equal bit for bit (signed zeros and NaN payloads included)."""
    assert a.shape == b.shape and a.dtype == b.dtype == torch.float64
    assert torch.equal(a.contiguous().view(torch.int64), b.contiguous().view(torch.int64))


@pytest.mark.parametrize("name", NAMES)
def test_p_one_draws_no_seed(name):
    """At p = 1 every mask element is dropped whatever the seed: seed=None draws none (torch's
    dropout draws none there either), for torch and numpy operands, and the result is the
    all-dropped one of any explicit seed, bit for bit, gradients included."""
    case = CASES[name]
    for ops in (operands(case), numpy_operands(case)):
        torch_state, np_state = torch.get_rng_state(), _seeds._numpy_source.bit_generator.state
        y = case.call(*ops, p=1.0)
        assert torch.equal(torch.get_rng_state(), torch_state)
        assert _seeds._numpy_source.bit_generator.state == np_state
        ref = case.call(*ops, p=1.0, seed=12345, offset=7)
        assert_bits_equal(torch.as_tensor(y), torch.as_tensor(ref))
    leaves = tuple(t.requires_grad_(True) for t in operands(case))
    grads = torch.autograd.grad(case.call(*leaves, p=1.0).sum(), leaves)
    grads_ref = torch.autograd.grad(case.call(*leaves, p=1.0, seed=3).sum(), leaves)
    for g, r in zip(grads, grads_ref):
        assert_bits_equal(g, r)


@pytest.mark.parametrize("name", NAMES)
def test_empty_operands_draw_no_seed(name):
    """With an empty operand the mask or the output is empty, so the result does not depend on
    the mask: seed=None draws none (torch's dropout draws none for an empty x), for torch operands
    with and without autograd and for numpy operands, and the result is an explicit seed's."""
    case = CASES[name]
    empty = [None if s is None else (0,) * len(s) for s in case.shapes]
    g = torch.Generator().manual_seed(0)
    for kind in ("torch", "grad", "numpy"):
        ops = tuple(torch.randn(s, generator=g, dtype=torch.float64) for s in empty)
        if kind == "grad":
            ops = tuple(t.requires_grad_(True) for t in ops)
        elif kind == "numpy":
            ops = tuple(t.numpy() for t in ops)
        torch_state, np_state = torch.get_rng_state(), _seeds._numpy_source.bit_generator.state
        y = case.call(*ops)
        assert torch.equal(torch.get_rng_state(), torch_state), kind
        assert _seeds._numpy_source.bit_generator.state == np_state, kind
        assert_bits_equal(torch.as_tensor(y), torch.as_tensor(case.call(*ops, seed=5)))


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_refused_before_the_seed_draw(name):
    case = CASES[name]
    for label, ops, exc in _bad_inputs(case):
        state = torch.get_rng_state()
        np_state = _seeds._numpy_source.bit_generator.state
        with pytest.raises(exc):
            case.call(*ops)
        assert torch.equal(torch.get_rng_state(), state), label
        assert _seeds._numpy_source.bit_generator.state == np_state, label


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_meta_tensors_give_shapes_as_torchs_ops_do(name, layout):
    """Every op on meta operands (a model run on the meta device for its output shapes, FLOP
    counting) gives a meta output of the real call's shape, dtype and strides, training and eval,
    and its backward meta gradients of the operands' shapes, drawing no seed, as torch's dropout
    and linear do there; they were refused (ValueError), so fastdrop's modules broke forwards on
    meta that torch's run (a review). In place and out= give x / out back. A meta operand among
    real ones stays refused (test_bad_input_refused_before_the_seed_draw: "meta-operand")."""
    case = CASES[name]
    real = operands(case)
    if layout == "transposed":
        real = tuple(a.mT.contiguous().mT if a.dim() > 1 else a for a in real)
    meta = tuple(a.to("meta").requires_grad_(True) for a in real)
    state, np_state = torch.get_rng_state(), _seeds._numpy_source.bit_generator.state
    internal = case.op in (SAMPLE_GRAD_X, SAMPLE_GRAD_W)  # (called in training only)
    for training in (True,) if internal else (True, False):
        want, got = case.call(*real, seed=3, training=training), case.call(*meta, training=training)
        assert got.is_meta and got.shape == want.shape and got.dtype == want.dtype, training
        assert got.stride() == want.stride(), (training, got.stride(), want.stride())
        if got.requires_grad:
            grads = torch.autograd.grad(got.sum(), meta, allow_unused=True)
            for g, a in zip(grads, meta):
                assert g is None or (g.is_meta and g.shape == a.shape), training
    if case.inplace:
        x = real[0].to("meta")
        assert case.call(x, inplace=True) is x
    if case.inplace and not name.startswith("drop_path"):  # the ops that take out=
        out = torch.empty_like(want, device="meta")
        assert case.call(real[0].to("meta"), out=out) is out
    assert torch.equal(torch.get_rng_state(), state)
    assert _seeds._numpy_source.bit_generator.state == np_state


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", ["table", "3d", "1d"])
def test_outputs_take_inplace_ops_under_autograd(name, shape):
    """`h = layer(x); h += r` (a residual added in place, common in transformer code) works on
    every op's output under autograd, as on nn.Linear's: the dense ops returned a reshape of their
    2-d GEMM result from the eager Function for inputs of rank other than 2 (and per-sample
    DropConnect for any), a view made inside a custom Function, which autograd refuses to change
    in place. The gradient is the op's own."""
    case = CASES[name]
    ops = operands(case)
    if shape != "table":  # the dense layers on x of other ranks (their GEMM takes 2-d rows)
        if case.op not in (DROPOUT_LINEAR, DROPCONNECT, DROPCONNECT_SAMPLE) or \
                case.op is DROPCONNECT_SAMPLE and shape == "1d":
            pytest.skip("the dense layers' rank variants (per-sample DropConnect needs a batch dim)")
        x = ops[0].reshape(-1, ops[0].shape[-1])
        ops = (x.unsqueeze(0) if shape == "3d" else x[0],) + ops[1:]
    leaves = tuple(a.clone().requires_grad_(True) for a in ops)
    y = case.call(*leaves, seed=7)
    h = y.clone()
    y += 1.0
    y.sum().backward()
    expected = torch.autograd.grad(case.call(*leaves, seed=7).sum(), leaves)
    for got, want in zip((a.grad for a in leaves), expected):
        torch.testing.assert_close(got, want)
    torch.testing.assert_close(y.detach(), h.detach() + 1.0)


@pytest.mark.parametrize("name", NAMES)
def test_eval_outputs_larger_than_memory_are_memory_errors(name):
    """At eval an op that makes an output (a GEMM, classic scaling) from operands larger than
    physical memory (expanded: small memory) gets the training call's MemoryError, not torch's
    allocator error or numpy's (or the OOM killer, where the OS would overcommit); an op that
    returns x untouched returns it."""
    case = CASES[name]
    for label, ops, _ in _bad_inputs(case):
        if not label.startswith("too-big"):
            continue
        if len(ops) == 1 and "classic" not in name:
            assert case.call(*ops, training=False) is ops[0]
        else:
            with pytest.raises(MemoryError, match="physical memory"):
                case.call(*ops, training=False)


@pytest.mark.parametrize("name", NAMES)
def test_eval_calls_under_transforms_and_symbolic_traces(name):
    """The eval checks of an op that reads its operands (a GEMM, classic scaling: their memory,
    the output's size) take torch.func's wrappers off and stay out of traces: eval under
    torch.func.grad / vmap equals eager autograd, and make_fx(symbolic) traces the eval call, a
    data-dependent size included, and a training backward, without guards on the sizes."""
    from torch.fx.experimental.proxy_tensor import make_fx
    case = CASES[name]
    ops = operands(case)
    x, rest = ops[0], ops[1:]
    leaves = tuple(a.clone().requires_grad_(True) for a in ops)
    make_fx(lambda *a: torch.autograd.grad(case.call(*a, seed=1).sum(), a), tracing_mode="symbolic")(*leaves)
    if case.op in (SAMPLE_GRAD_X, SAMPLE_GRAD_W):
        return  # (internal ops of a training backward: no eval call)
    leaf = x.clone().requires_grad_(True)
    expected, = torch.autograd.grad(case.call(leaf, *rest, training=False).sum(), leaf)
    got = torch.func.grad(lambda t: case.call(t, *rest, training=False).sum())(x)
    torch.testing.assert_close(got, expected)
    batched = torch.func.vmap(lambda t: case.call(t, *rest, training=False), randomness="different")(
        torch.stack([x, x + 1]))
    torch.testing.assert_close(batched[1], case.call(x + 1, *rest, training=False))
    traced = make_fx(lambda *a: case.call(*a, training=False), tracing_mode="symbolic")(*ops)
    assert not traced.shape_env.guards
    if len(ops) == 1:  # x's batch size known only at run time
        make_fx(lambda t: case.call(t[t.reshape(len(t), -1)[:, 0] > -100], training=False),
                tracing_mode="symbolic")(x)


def test_dropout_mask_of_an_empty_shape_too_large_for_numpy_names_the_shape():
    with pytest.raises(ValueError, match="dropout_mask: shape .* is too large for a numpy array"):
        fastdrop.dropout_mask((2**62, 0, 4), 0.5, 1)


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_that_writes_nothing_takes_any_x(name):
    """At p = 0, and at eval where the rule is x itself (inverted scaling), an in-place call writes
    nothing and returns x, as torch's dropout does, whatever x is: a leaf that requires grad, an
    expanded view, an inference tensor, a read-only array (the refusals are for writes). Where
    the call does write (classic scaling at eval), the refusal stays."""
    case = CASES[name]
    shape = case.shapes[0]
    with torch.inference_mode():
        inference = torch.randn(shape, dtype=torch.float64)
    read_only = np.ones(shape)
    read_only.flags.writeable = False
    xs = {"leaf": torch.randn(shape, dtype=torch.float64, requires_grad=True),
          "expanded": torch.randn(shape[-1], dtype=torch.float64).expand(*shape),
          "inference": inference, "read-only": read_only}
    classic = case.call(np.ones(shape), training=False)[(0,) * len(shape)] != 1.0
    for what, x in xs.items():
        before = torch.as_tensor(x).clone()
        for kw in ({"p": 0.0}, {"training": False}):
            if "training" in kw and classic:
                with pytest.raises((ValueError, RuntimeError)):
                    case.call(x, inplace=True, **kw)
            else:
                assert case.call(x, inplace=True, **kw) is x, (what, kw)
            assert torch.equal(torch.as_tensor(x), before), (what, kw)


@pytest.mark.parametrize("name", INPLACE)
def test_flags_must_be_bools(name):
    """inplace="False" (a string from a config file) is truthy: refused like training="False",
    before anything is written or drawn."""
    case = CASES[name]
    x = operands(case)[0]
    before, state = x.clone(), torch.get_rng_state()
    for flag in ("inplace", "training"):
        with pytest.raises(TypeError, match=f"{flag} must be a bool"):
            case.call(x, **{flag: "False"})
    assert torch.equal(x, before) and torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_on_overlapping_memory_refused(name):
    case = CASES[name]
    shape = case.shapes[0]
    base = torch.randn(shape[-1], dtype=torch.float64)
    x = base.expand(*shape)  # every row is the same memory
    before = base.clone()
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="single memory location"):
        case.call(x, inplace=True)
    assert torch.equal(base, before) and torch.equal(torch.get_rng_state(), state)
    nb = np.arange(float(shape[-1]) + 2)
    xv = np.lib.stride_tricks.as_strided(nb, shape=(len(nb) - 1, 2), strides=(8, 8))  # rows overlap
    if len(shape) == 2:
        with pytest.raises(RuntimeError, match="single memory location"):
            case.call(xv, inplace=True)
        assert np.array_equal(nb, np.arange(float(shape[-1]) + 2))


@pytest.mark.parametrize("name", INPLACE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_compiled_inplace_on_overlapping_memory_refused(name, dtype):
    """Under torch.compile too: the float in-place write of a traced call (fill_ + add_) is not
    refused by torch's traced ops, so an expanded x came back with the sum of its aliases (a
    review); the static strides are checked as eager checks them, x untouched."""
    case = CASES[name]
    shape = case.shapes[0]
    base = torch.randn(shape[-1], dtype=dtype)
    before = base.clone()
    torch._dynamo.reset()
    fn = torch.compile(lambda b: case.call(b.expand(*shape), inplace=True), backend="aot_eager")
    with pytest.raises(RuntimeError, match="single memory location"):
        fn(base)
    assert torch.equal(base, before)


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_returns_the_same_object(name):
    case = CASES[name]
    x = operands(case)[0]
    with torch.no_grad():
        assert case.call(x, seed=1, inplace=True) is x
    leaf = operands(case)[0].requires_grad_()
    with torch.no_grad():
        assert case.call(leaf, seed=1, inplace=True) is leaf
    xn = numpy_operands(case)[0]
    assert case.call(xn, seed=1, inplace=True) is xn
    # numpy subclasses viewed as plain arrays (np.memmap, np.matrix): written, and returned as given
    mapped = np.memmap(tempfile.TemporaryFile(), dtype=xn.dtype, mode="w+", shape=xn.shape)
    mapped[...] = numpy_operands(case)[0]
    assert case.call(mapped, seed=1, inplace=True) is mapped
    assert np.array_equal(np.asarray(mapped), case.call(numpy_operands(case)[0], seed=1))
    assert case.call(mapped, inplace=True, training=False) is mapped
    if xn.ndim == 2:
        m = np.asmatrix(numpy_operands(case)[0])
        assert case.call(m, seed=1, inplace=True) is m


@pytest.mark.parametrize("name", NAMES)
def test_masked_arrays_are_refused(name):
    """A numpy masked array's mask would be dropped and its masked values used: refused, with
    nothing written and no seed drawn."""
    case = CASES[name]
    ops = list(numpy_operands(case))
    for i in range(len(ops)):
        bad = list(ops)
        bad[i] = np.ma.masked_array(ops[i], mask=np.zeros(ops[i].shape, bool))
        state = fastdrop._seeds._numpy_source.bit_generator.state
        with pytest.raises(TypeError, match="masked array"):
            case.call(*bad)
        assert fastdrop._seeds._numpy_source.bit_generator.state == state


@pytest.mark.parametrize("name", NAMES)
def test_trace_in_training_mode(name):
    """torch.jit.trace records only torch's ops: every op is recorded as its custom op, its seed=None
    draw as aten's randint. A traced call then equals the eager call after the same
    torch.manual_seed (outputs and gradients), each call draws a new mask, and torch.jit.trace's
    default check (two traces compared) passes, as for torch's own dropout."""
    case = CASES[name]
    ops = operands(case)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*(does not match|nondeterministic|deprecated).*")
        traced = torch.jit.trace(lambda *a: case.call(*a), ops)
    kinds = [n.kind() for n in traced.graph.nodes()]
    assert any(k.startswith("fastdrop::") for k in kinds) and "aten::randint" in kinds
    new = tuple(o.detach().requires_grad_() for o in operands(case, seed=1))
    eager = tuple(o.detach().requires_grad_() for o in operands(case, seed=1))
    torch.manual_seed(7)
    y = traced(*new)
    torch.manual_seed(7)
    expected = case.call(*eager)
    assert torch.equal(y, expected)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    for a, b in zip(new, eager):
        torch.testing.assert_close(a.grad, b.grad)
    torch.manual_seed(11)  # (a one-bit mask, drop_path's batch mode, repeats half the time)
    assert any(not torch.equal(traced(*ops), traced(*ops)) for _ in range(24))  # a new mask per call
    torch.manual_seed(7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fixed = torch.jit.trace(lambda *a: case.call(*a, seed=3), ops, check_trace=False)
    assert torch.equal(fixed(*ops), case.call(*ops, seed=3))  # an explicit seed: a constant


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("name", NAMES)
def test_trace_raises_no_tracer_warning(name, training):
    """torch.jit.trace of every op, in training mode and in eval mode (a model being exported):
    fastdrop's shape checks read the traced sizes, and each comparison was a TracerWarning
    ("Converting a tensor to a Python boolean"), two per DropoutLinear even in eval mode."""
    case = CASES[name]
    if not training and case.op in (SAMPLE_GRAD_X, SAMPLE_GRAD_W):
        pytest.skip("an internal op of per-sample DropConnect's backward: training mode only")
    ops = operands(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # (torch.jit.trace itself is deprecated)
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.jit.trace(lambda *a: case.call(*a, training=training), ops, check_trace=False)


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("make", [lambda: fastdrop.nn.Dropout(0.3), lambda: fastdrop.nn.Dropout2d(0.3),
                                  lambda: fastdrop.nn.DropPath(0.3), lambda: fastdrop.nn.DropoutLinear(6, 5, p=0.3),
                                  lambda: fastdrop.nn.DropConnectLinear(6, 5, p=0.3),
                                  lambda: fastdrop.nn.DropConnectLinear(6, 5, p=0.3, per_sample=True)],
                         ids=["Dropout", "Dropout2d", "DropPath", "DropoutLinear", "DropConnectLinear",
                              "DropConnectLinear-per-sample"])
def test_module_trace_raises_no_tracer_warning(make, training):
    module = make().train(training)
    x = torch.randn(2, 3, 4, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("error", torch.jit.TracerWarning)
        torch.jit.trace(module, x if not isinstance(module, torch.nn.Linear) else x[:, 0, 0], check_trace=False)


@pytest.mark.parametrize("name", NAMES)
def test_replayed_graphs_and_direct_op_calls_check_their_operands(name):
    """A torch.jit.trace or make_fx graph replays the custom op on whatever it is given, without the
    public call's checks, and so does a direct torch.ops.fastdrop.<name> call: the op's body runs
    the same checks, so integer and sparse tensors (and, for the dense ops, companions of the wrong
    kind) get fastdrop's TypeError, not a Numba typing error or numpy's conversion error."""
    from torch.fx.experimental.proxy_tensor import make_fx
    case = CASES[name]
    ops = operands(case)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(lambda *a: case.call(*a), ops, check_trace=False)
    graph = make_fx(lambda *a: case.call(*a))(*ops)
    lib = getattr(torch.ops.fastdrop, case.op.name)
    bad_inputs = [("int", tuple(o.round().to(torch.int64) for o in ops), "floating point dtype"),
                  ("sparse", (ops[0].to_sparse(), *ops[1:]), "dense")]
    if len(ops) > 1:
        bad_inputs.append(("companion", (ops[0], ops[1].to(torch.int32), *ops[2:]), "floating point dtype"))
    for what, bad, message in bad_inputs:
        for run in (traced, graph):
            with pytest.raises(Exception) as info:  # TorchScript wraps the op's error in a RuntimeError
                run(*bad)
            text = str(info.value)
            assert message in text and "TypingError" not in text and "numpy" not in text, (what, text[-400:])
        with pytest.raises(TypeError, match=message):
            lib(*bad, *[None] * (len(case.op.operands) - len(bad)), torch.tensor(3), 0.3, 0, 1 / 0.7, [])


@pytest.mark.parametrize("name", NAMES)
def test_direct_op_calls_take_or_refuse_0d_operands(name):
    """A direct torch.ops.fastdrop.<name> call with one operand 0-d (the public functions never
    pass one where the op needs a dim) runs or gets fastdrop's ValueError / TypeError; per-sample
    DropConnect's weight gradient read x.shape[-1] of a 0-d x (an IndexError)."""
    case = CASES[name]
    ops = operands(case)
    lib = getattr(torch.ops.fastdrop, case.op.name)
    full = (*ops, *[None] * (len(case.op.operands) - len(ops)))
    params = [] if case.op.params_rule is None else [0]
    for i, a in enumerate(full):
        if a is None:
            continue
        for others in (lambda b: b, lambda b: b[(0,) * (b.dim() - 1)]):  # as given, or 1-d
            bad = tuple(torch.tensor(1.5, dtype=a.dtype) if j == i else b if b is None else others(b)
                        for j, b in enumerate(full))
            try:
                lib(*bad, torch.tensor(3), 0.3, 0, 1 / 0.7, params)
            except (ValueError, TypeError):
                pass


def _recorded_library_call(case):
    """(the custom op, the case's operands, the operands padded with None to the op's count, the
    scalar arguments (seed, p, offset, scale, params)) of the case's call as make_fx records it."""
    from torch.fx.experimental.proxy_tensor import make_fx
    ops = operands(case)
    graph = make_fx(lambda *a: case.call(*a, seed=3, offset=5))(*ops)
    node = next(n for n in graph.graph.nodes if str(n.target).startswith("fastdrop."))
    n = len(case.op.operands)
    return getattr(torch.ops.fastdrop, case.op.name), ops, (*ops, *[None] * (n - len(ops))), node.args[n:]


@pytest.mark.parametrize("name", NAMES)
def test_direct_op_calls_refuse_a_meta_tensor_among_real_ones(name):
    """One meta tensor (an operand or the seed) among real ones sends a direct
    torch.ops.fastdrop.<name> call to the op's Meta kernel, its fake function: refused with the
    public call's ValueError for mixed devices (it returned a real tensor of uninitialized memory,
    the body and its checks never run); all operands on meta still give a meta output of the
    real call's shape (the seed a real host tensor, as in compiled graphs)."""
    case = CASES[name]
    lib, ops, full, (_, p, offset, scale, params) = _recorded_library_call(case)
    want = lib(*full, torch.tensor(3), p, offset, scale, params)
    state = torch.get_rng_state()
    for i in [*(range(len(ops)) if len(ops) > 1 else ()), "seed"]:  # (one operand on meta: all are)
        mixed = tuple(a.to("meta") if j == i else a for j, a in enumerate(full))
        seed = torch.tensor(3, device="meta" if i == "seed" else "cpu")
        with pytest.raises(ValueError, match="on meta"):
            lib(*mixed, seed, p, offset, scale, params)
    assert torch.equal(torch.get_rng_state(), state)
    on_meta = lib(*(None if a is None else a.to("meta") for a in full), torch.tensor(3), p, offset, scale, params)
    assert on_meta.is_meta and on_meta.shape == want.shape and on_meta.dtype == want.dtype


@pytest.mark.parametrize("name", NAMES)
def test_direct_op_calls_check_their_scalars(name):
    """The custom op's scalar arguments, which the public call makes, are checked in its body too:
    a direct torch.ops.fastdrop.<name> call with a float or 1-d seed, p outside [0, 1], a scale that
    is not finite, or params the op does not take gets a TypeError / ValueError naming the
    argument, not a truncated seed, a misread mask rule or inf written into the output."""
    case = CASES[name]
    lib, ops, full, (_, p, offset, scale, params) = _recorded_library_call(case)
    seed = torch.tensor(3)
    assert torch.equal(lib(*full, seed, p, offset, scale, params), case.call(*ops, seed=3, offset=5))
    bad = [(TypeError, "seed", (seed.double(), p, offset, scale, params)),
           (TypeError, "seed", (seed.int(), p, offset, scale, params)),
           (ValueError, "seed", (torch.tensor([3, 4]), p, offset, scale, params)),
           (ValueError, "p=1.5", (seed, 1.5, offset, scale, params)),
           (ValueError, "scale", (seed, p, offset, float("inf"), params)),
           (ValueError, "scale", (seed, p, offset, float("nan"), params)),
           (ValueError, "params", (seed, p, offset, scale, [*params, 0, 0])),
           # autocast's dtype: a half type (the fake announced any dtype, the body gave another)
           (ValueError, "autocast", (seed, p, offset, scale, params, False, torch.float64)),
           (ValueError, "autocast", (seed, p, offset, scale, params, False, torch.float32)),
           (ValueError, "autocast", (seed, p, offset, scale, params, False, torch.int32))]
    if params:  # the mask rule g: -1 <= g <= x.dim()
        bad += [(ValueError, "params", (seed, p, offset, scale, [ops[0].dim() + 1])),
                (ValueError, "params", (seed, p, offset, scale, [-2])),
                (ValueError, "params", (seed, p, offset, scale, []))]
    for error, what, args in bad:
        with pytest.raises(error, match=what):
            lib(*full, *args)


@pytest.mark.parametrize("name", NAMES)
def test_graph_made_outside_autocast_runs_inside_it(name):
    """A custom op called without its autocast argument under torch.autocast (a program exported
    or traced outside autocast and run or compiled inside it, a graph made before the argument, a
    direct call) runs under the autocast in effect, as the eager call does: the same output and
    gradients, bit for bit, and a fake of that dtype. Its backward ran without autocast, and a dense op's half gradient met
    its float32 weight in a GEMM (RuntimeError; a review). Per-sample DropConnect's products are
    its own kernel's: autocast's cast of its operands is the public call's, in the graph, so a
    graph made without it computes as outside autocast."""
    case = CASES[name]
    n = len(case.op.operands)

    def run(fn, autocast=True):
        ops = tuple(o.detach().requires_grad_() for o in operands(case, torch.float32, seed=4))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            y = fn(*ops)
        return (y, *torch.autograd.grad(y, ops, torch.ones_like(y)))

    from torch.fx.experimental.proxy_tensor import make_fx
    graph = make_fx(lambda *a: case.call(*a, seed=3, offset=5))(*operands(case))
    node = next(nd for nd in graph.graph.nodes if str(nd.target).startswith("fastdrop."))
    seed, p, offset, scale, params = node.args[n:n + 5]  # (the old form: no rank_stream, no autocast)
    params = list(params)  # (fx's immutable list, which Dynamo cannot pass on)
    lib = getattr(torch.ops.fastdrop, case.op.name)
    direct = lambda *ops: lib(*ops, *[None] * (n - len(ops)), torch.tensor(3), p, offset, scale, params)  # noqa: E731
    eager = run(lambda *ops: case.call(*ops, seed=3, offset=5), autocast=not case.op.own_products)
    torch._dynamo.reset()
    # compiled inside autocast too, and its fake: the op's autocast kernel fills the argument in
    # before tracing sees the call (the body read torch's autocast state, which a compiled graph
    # and the fake see off: float32 where the eager call gave bfloat16; a review)
    for fn in (direct, torch.compile(direct, backend="aot_eager", fullgraph=True)):
        for got, want in zip(run(fn), eager):
            assert got.dtype == want.dtype
            torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    from torch._subclasses.fake_tensor import FakeTensorMode
    ops = operands(case, torch.float32, seed=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        real = direct(*ops)
        with FakeTensorMode() as mode:
            fake = direct(*(mode.from_tensor(o) for o in ops))
    assert fake.dtype == real.dtype and fake.shape == real.shape


@pytest.mark.parametrize("tracing_mode", ["real", "fake", "pre_dispatch"])
@pytest.mark.parametrize("name", NAMES)
def test_make_fx_records_the_custom_op(name, tracing_mode):
    """make_fx records torch's ops only: the kernels' writes through numpy views were lost from
    its graph (a replay returned torch.empty_like's uninitialized memory). Every op is recorded as
    its custom op and a seed=None draw as aten's randint, so a replay equals the eager call after
    the same torch.manual_seed and draws a new mask from the generator; an explicit seed is a
    constant of the graph."""
    from torch.fx.experimental.proxy_tensor import make_fx as torch_make_fx
    case = CASES[name]
    ops = operands(case)

    def make_fx(f, tracing_mode):  # pre_dispatch: real tracing, its proxy mode on another stack
        if tracing_mode == "pre_dispatch":
            return torch_make_fx(f, tracing_mode="real", pre_dispatch=True)
        return torch_make_fx(f, tracing_mode=tracing_mode)
    for kw in ({}, {"seed": 3, "offset": 5}):
        graph = make_fx(lambda *a: case.call(*a, **kw), tracing_mode=tracing_mode)(*ops)
        targets = [str(n.target) for n in graph.graph.nodes if n.op == "call_function"]
        assert any(t.startswith("fastdrop.") for t in targets), targets
        assert ("aten.randint.low" in targets) == (not kw), targets
        new = operands(case, seed=1)
        torch.manual_seed(7)
        y = graph(*new)
        torch.manual_seed(7)
        assert torch.equal(y, case.call(*new, **kw))
    torch.manual_seed(11)  # (a one-bit mask, drop_path's batch mode, repeats half the time)
    graph = make_fx(lambda *a: case.call(*a), tracing_mode=tracing_mode)(*ops)
    assert any(not torch.equal(graph(*ops), graph(*ops)) for _ in range(24))  # a new mask per call


@pytest.mark.parametrize("name", NAMES)
def test_fake_tensor_mode_propagates_shapes_of_real_inputs(name):
    """Under FakeTensorMode(allow_non_fake_inputs=True) (shape propagation, FLOP counting) every
    op on real tensors, with gradients recorded or not, returns a fake tensor of the eager
    output's shape and dtype through its custom op's fake function, touching neither the inputs
    nor torch's generator (the kernel route failed in `.numpy()`, and the grouped ops' native
    route wrote to address 0)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    case = CASES[name]
    for requires_grad in (False, True):
        ops = tuple(o.requires_grad_(requires_grad) for o in operands(case))
        before = [o.detach().clone() for o in ops]
        expected = case.call(*ops, seed=3)
        state = torch.get_rng_state()
        for kw in ({}, {"seed": 3}):
            with FakeTensorMode(allow_non_fake_inputs=True):
                y = case.call(*ops, **kw)
            assert isinstance(y, FakeTensor) and y.shape == expected.shape and y.dtype == expected.dtype
        assert torch.equal(torch.get_rng_state(), state)
        assert all(torch.equal(a, b) for a, b in zip(ops, before))


def test_traced_dropout_refuses_forward_ad_and_takes_out_and_vmap():
    """Under make_fx / FakeTensorMode: forward-mode AD is refused (the custom op has no forward
    formula: a traced jvp gave a zero tangent, silently), out= gives a fake result under a
    FakeTensorMode (its checks called .numpy() on fake tensors), and vmap(randomness="different")
    draws its one seed outside the transform, as eager does (inside it the draw was batched)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    x, t = torch.randn(4, 10), torch.randn(4, 10)
    for mode in ("real", "fake"):
        with pytest.raises(RuntimeError, match="does not support forward-mode AD"):
            make_fx(lambda x, t: torch.func.jvp(lambda r: fastdrop.dropout(r, 0.5), (x,), (t,)), tracing_mode=mode)(x, t)
    with FakeTensorMode(allow_non_fake_inputs=True):
        y = fastdrop.dropout(x, 0.5, seed=3, out=torch.empty(4, 10))
    assert isinstance(y, FakeTensor) and y.shape == x.shape
    out = torch.empty(4, 10)
    graph = make_fx(lambda x, o: fastdrop.dropout(x, 0.5, seed=3, out=o), tracing_mode="fake")(x, out)
    assert torch.equal(graph(x, out), fastdrop.dropout(x, 0.5, seed=3))

    def per_example(x):
        return torch.func.vmap(lambda r: fastdrop.dropout(r, 0.5), randomness="different")(x)
    graph = make_fx(per_example)(x)
    torch.manual_seed(5)
    y = graph(x)
    torch.manual_seed(5)
    assert torch.equal(y, per_example(x))
    assert any(not torch.equal((y[i] == 0), (y[0] == 0)) for i in range(1, 4))  # a mask per example


class _Call(torch.nn.Module):
    def __init__(self, call, **kw):
        super().__init__()
        self.call, self.kw = call, kw

    def forward(self, *ops):
        return self.call(*ops, **self.kw)


@pytest.mark.parametrize("name", NAMES)
def test_export_matches_eager(name):
    """torch.export records every op as its custom op and a seed=None draw as fastdrop's seed op:
    the exported program, also after torch.export.save / load, equals the eager call after the same
    torch.manual_seed (outputs and gradients) and draws a new mask per call; an explicit seed stays
    a constant of the program."""
    import io
    case = CASES[name]
    ops = operands(case, torch.float32)
    programs = {}
    for key, kw in (("drawn", {}), ("fixed", {"seed": 3, "offset": 2**64 - 2})):
        exported = torch.export.export(_Call(case.call, **kw), ops)
        targets = [str(n.target) for n in exported.graph.nodes if n.op == "call_function"]
        assert any(t.startswith("fastdrop.") and "draw_seed" not in t for t in targets), targets
        assert any("draw_seed" in t for t in targets) == (key == "drawn"), targets
        buf = io.BytesIO()
        torch.export.save(exported, buf)
        buf.seek(0)
        programs[key] = (torch.export.load(buf).module(), kw)
    for key, (program, kw) in programs.items():
        new = tuple(o.detach().requires_grad_() for o in operands(case, torch.float32, seed=1))
        eager = tuple(o.detach().requires_grad_() for o in operands(case, torch.float32, seed=1))
        torch.manual_seed(7)
        y = program(*new)
        torch.manual_seed(7)
        expected = case.call(*eager, **kw)
        assert torch.equal(y, expected), key
        g = torch.randn_like(y)
        y.backward(g)
        expected.backward(g)
        for a, b in zip(new, eager):
            torch.testing.assert_close(a.grad, b.grad)
    drawn, fixed = programs["drawn"][0], programs["fixed"][0]
    torch.manual_seed(11)  # (a one-bit mask, drop_path's batch mode, repeats half the time)
    assert any(not torch.equal(drawn(*ops), drawn(*ops)) for _ in range(24))  # a new mask per call
    assert torch.equal(fixed(*ops), fixed(*ops))


def _save_products(ctx, op, *args, **kwargs):
    """Selective checkpointing's usual policy: keep the GEMMs' outputs, recompute the rest."""
    from torch.utils.checkpoint import CheckpointPolicy
    products = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default)
    return CheckpointPolicy.MUST_SAVE if op in products else CheckpointPolicy.PREFER_RECOMPUTE


@pytest.mark.parametrize("how", ["reentrant", "non-reentrant", "compiled", "selective"])
@pytest.mark.parametrize("name", NAMES)
def test_activation_checkpointing_regenerates_the_masks(name, how):
    """torch.utils.checkpoint reruns the forward in backward with torch's generator state restored:
    a seed=None op draws the same seed again, so outputs and gradients equal the plain call's. Inside
    a compiled graph AOTAutograd saves and restores the RNG state of the device the seed op names
    (the CPU's, its generator) around the draw. Eager selective checkpointing runs the forward and
    its recomputation under a TorchDispatchMode that saves the ops its policy names (a mode is
    active then: the kernels still take the plain tensors, `_checks.is_subclass_like`)."""
    import functools
    from torch.utils.checkpoint import checkpoint, create_selective_checkpoint_contexts
    case = CASES[name]
    kwargs = {"use_reentrant": how == "reentrant"}
    if how == "selective":  # (a policy saving every op fails for torch's own dropout too: the
        # outputs it caches, a mask's empty tensor, are then written in place)
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, _save_products)

    def run(f):
        ops = tuple(o.detach().requires_grad_() for o in operands(case, seed=2))
        torch.manual_seed(13)
        y = f(*ops)
        (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).reshape(y.shape)).sum().backward()
        return [y.detach()] + [o.grad for o in ops]

    expected = run(case.call)
    checkpointed = lambda *ops: checkpoint(case.call, *ops, **kwargs)  # noqa: E731
    if how == "compiled":
        checkpointed = torch.compile(checkpointed, fullgraph=True, backend="aot_eager")
    for a, b in zip(run(checkpointed), expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


class _PassThrough(TorchDispatchMode):
    """A dispatch mode that runs every op as it is (a memory tracker's or a debugger's shape)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("mode", ["pass-through", "flop-counter"])
@pytest.mark.parametrize("name", NAMES)
def test_dispatch_modes_leave_results_unchanged(name, mode):
    """Under a TorchDispatchMode on the thread (FlopCounterMode, memory trackers, debug modes) torch
    asks its modes about every tensor as if it were a subclass; fastdrop's kernels still take plain
    tensors (they were refused, after the seed draw), with the outputs and gradients, and the draws
    from torch's generator, of the same call without the mode."""
    from torch.utils.flop_counter import FlopCounterMode
    case = CASES[name]

    def run(context):
        ops = tuple(o.detach().requires_grad_() for o in operands(case, seed=4))
        torch.manual_seed(21)
        with context():
            ys = (case.call(*ops), case.call(*ops, seed=9))
            sum((y * (i + 1)).sum() for i, y in enumerate(ys)).backward()
        return [y.detach() for y in ys] + [o.grad for o in ops] + [torch.get_rng_state()]

    expected = run(contextlib.nullcontext)
    got = run(_PassThrough if mode == "pass-through" else lambda: FlopCounterMode(display=False))
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


class _InplaceAfterLinear(torch.nn.Module):
    """An in-place op on an intermediate (not on a program input), as `nn.Dropout(inplace=True)`
    after a layer is used."""

    def __init__(self, call, width):
        super().__init__()
        self.call, self.lin = call, torch.nn.Linear(width, width)

    def forward(self, x):
        return self.call(self.lin(x), inplace=True) * 1.5


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize("name", INPLACE)
def test_decomposed_export_of_inplace_ops_trains(name, strict):
    """An exported train-mode program after run_decompositions: the in-place op's write into x
    was a copy_, which decomposes to aten.copy, an op without a derivative (its backward failed);
    now fill(-0.0) + add, which has one and keeps every bit. Outputs and gradients equal eager's."""
    case = CASES[name]
    (x,) = operands(case, torch.float32)
    torch.manual_seed(0)
    model = _InplaceAfterLinear(case.call, x.shape[-1])
    program = torch.export.export(model, (x,), strict=strict).run_decompositions().module()
    results = []
    for run in (program, model):
        model.zero_grad()
        xg = x.detach().requires_grad_()
        torch.manual_seed(5)
        y = run(xg)
        y.backward(torch.linspace(-1, 1, y.numel()).reshape(y.shape))
        results.append([y.detach(), xg.grad] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
             torch.bfloat16: torch.int16}


def _special_values(dtype):
    """randn values with +-0, quiet and signaling NaNs with payloads of both signs, +-inf and
    subnormals written over some of them (as their bits)."""
    t = torch.randn(8, 16).to(dtype)
    width = torch.finfo(dtype).bits
    exp_bits = {64: 11, 32: 8, 16: 5 if dtype == torch.float16 else 8}[width]
    mant = width - 1 - exp_bits
    inf = ((1 << exp_bits) - 1) << mant
    sign = 1 << (width - 1)
    patterns = [sign, 0, inf | (1 << (mant - 1)), sign | inf | (1 << (mant - 1)) | 5, inf | 3, sign | inf | 1,
                inf, sign | inf, 1, sign | 1]
    ints = t.view(_INT_VIEW[dtype])
    for i, bits in enumerate(patterns * 4):
        ints.view(-1)[i * 3] = bits - (1 << width) if bits >= 1 << (width - 1) else bits
    return t


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_traced_inplace_writes_keep_every_bit(dtype):
    """The traced routes write an in-place result into x with torch ops (fill(-0.0) + add, so that
    a decomposed export can differentiate it; copy_ for bfloat16, whose add rewrites NaN payloads):
    make_fx, torch.jit.trace and torch.compile give eager's bits, -0.0 and NaN payloads included."""
    from torch.fx.experimental.proxy_tensor import make_fx
    x = _special_values(dtype)

    def f(t):
        h = t.clone()
        return fastdrop.dropout(h, 0.5, inplace=True, seed=7)

    expected = f(x).view(_INT_VIEW[dtype])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        routes = {"make_fx": make_fx(f)(x), "jit.trace": torch.jit.trace(f, (x,), check_trace=False),
                  "aot_eager": torch.compile(f, backend="aot_eager"), "inductor": torch.compile(f)}
    for route, g in routes.items():
        assert torch.equal(g(x).view(_INT_VIEW[dtype]), expected), route


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].op is DROPOUT])
def test_export_with_a_dynamic_batch_dim(name):
    """No guard on the batch size (the host-memory check of eager calls is not made while tracing)."""
    case = CASES[name]
    ops = operands(case, torch.float32)
    batch = torch.export.Dim("batch")
    exported = torch.export.export(_Call(case.call), ops, dynamic_shapes=(({0: batch},),))
    bigger = torch.cat([ops[0]] * 3)
    torch.manual_seed(3)
    y = exported.module()(bigger)
    torch.manual_seed(3)
    assert torch.equal(y, case.call(bigger))


@pytest.mark.parametrize("name", INPLACE)
def test_inplace_compiles_fullgraph_with_dynamic_shapes(name):
    """In place, as models write nn.Dropout(inplace=True) after a ReLU: one graph under dynamic
    shapes (the in-place checks make no guard on symbolic strides), equal to eager."""
    case = CASES[name]
    fn = lambda x: case.call(torch.relu(x), inplace=True)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True, dynamic=True, backend="aot_eager")
    for rows in (1, 3):
        x = torch.cat([operands(case, torch.float32)[0]] * rows)
        torch.manual_seed(5)
        y = compiled(x)
        torch.manual_seed(5)
        assert torch.equal(y, fn(x))


@pytest.mark.parametrize("name", NAMES)
def test_compiled_vmap_and_jvp(name):
    """Inside torch.compile, vmap uses the custom op's batching rule (the eager rule: a mask per
    example for randomness="different", one for "same"; refused where eager refuses), equal to
    eager after the same manual_seed; forward-mode AD, which a custom op cannot carry (torch would
    give a zero tangent), is refused with a clear error."""
    # (a graph break inside a transform marks frames for good, README "torch.func": after
    # test_compiled_grad_of_a_vmap_matches_eager, without the reset this test's vmap was refused
    # whenever no test in between reset Dynamo, as under `-k vmap`)
    torch._dynamo.reset()
    case = CASES[name]
    ops = operands(case, torch.float32)
    rest = ops[1:]
    xb = torch.stack([ops[0], ops[0] * 2, ops[0] - 1])
    g = lambda x: case.call(x, *rest)  # noqa: E731
    for randomness in ("different", "same"):
        compiled = torch.compile(torch.func.vmap(g, randomness=randomness), fullgraph=True, backend="aot_eager")
        if case.op is not DROPOUT:
            with pytest.raises(Exception, match="does not support torch.func.vmap"):
                compiled(xb)
            continue
        torch.manual_seed(4)
        expected = torch.func.vmap(g, randomness=randomness)(xb)
        torch.manual_seed(4)
        assert torch.equal(compiled(xb), expected), randomness
    jvp = torch.compile(lambda x, t: torch.func.jvp(g, (x,), (t,)), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match="forward-mode AD"):
        jvp(ops[0], torch.ones_like(ops[0]))


@pytest.mark.parametrize("name", NAMES)
def test_compile_falls_back_to_eager_cleanly(name):
    """Where Dynamo gives up on a frame, it runs that frame eagerly and would compile fastdrop's
    internals frame by frame (an InternalTorchDynamoError on their numpy scalars and Numba calls,
    before _dynamo_skip.keep_dynamo_out). Without fullgraph, a jvp (refused while tracing) and a call on
    numpy arrays give eager's results; with fullgraph the numpy call says why it is refused. Still
    so after torch._dynamo.reset()."""
    case = CASES[name]
    ops = operands(case, torch.float32)
    rest = ops[1:]
    g = lambda x: case.call(x, *rest)  # noqa: E731
    t = torch.randn_like(ops[0])
    for reset in (False, True):
        if reset:
            torch._dynamo.reset()
        _falls_back_to_eager(case, g, ops[0], t)
    # Dynamo remembers the frames it ran eagerly (case.call's among them) and would not compile
    # them again: forget, for the tests that follow
    torch._dynamo.reset()


def _falls_back_to_eager(case, g, x, t):
    """One round of the test above: a compiled jvp and compiled numpy calls give eager's results."""
    jvp = torch.compile(lambda x, t: torch.func.jvp(g, (x,), (t,)), backend="aot_eager")
    torch.manual_seed(6)
    y, jt = jvp(x, t)
    torch.manual_seed(6)
    y_eager, jt_eager = torch.func.jvp(g, (x,), (t,))
    assert torch.equal(y, y_eager) and torch.equal(jt, jt_eager)
    arrays = numpy_operands(case, np.float32)
    fn = lambda *a: case.call(*a, seed=3)  # noqa: E731
    y = torch.compile(fn, backend="aot_eager")(*arrays)
    assert isinstance(y, np.ndarray) and np.array_equal(y, fn(*arrays))
    with pytest.raises(Exception, match=r"take torch tensors, got numpy\.ndarray"):
        # (a lambda of its own: Dynamo remembers that the frame of fn runs eagerly)
        torch.compile(lambda *a: case.call(*a, seed=3), fullgraph=True, backend="aot_eager")(*arrays)


def test_public_functions_and_modules_compile_as_the_top_frame():
    """keep_dynamo_out marks internals only: a public function or module compiled directly (its
    own frame the one Dynamo starts from) is still one graph, equal to eager."""
    x = torch.randn(4, 6)
    counters = torch._dynamo.utils.counters
    counters.clear()
    for fn in (fastdrop.dropout, fastdrop.dropout2d, fastdrop.nn.Dropout(0.3), fastdrop.nn.DropPath(0.3)):
        compiled = torch.compile(fn, fullgraph=True, backend="aot_eager")
        arg = x.reshape(2, 2, 2, 3) if fn is fastdrop.dropout2d else x
        torch.manual_seed(2)
        y = compiled(arg)
        torch.manual_seed(2)
        assert torch.equal(y, fn(arg)), fn
    assert not counters["graph_break"], dict(counters["graph_break"])


@pytest.mark.parametrize("name", NAMES)
def test_compiled_under_autocast_matches_eager(name):
    """Under torch.autocast a compiled call (aot_eager) returns eager's output and gradients bit
    for bit, in their dtypes. A GEMM op's custom-op body runs where autocast is off: the graph
    passes the operands as they are with autocast's dtype, and the body and its backward re-enter
    autocast (`_autocast.library_arg`). (Every float32 operand was cast first: the masked product
    was rounded twice, values differed from eager's by bfloat16 rounding, and a float16 gradient
    scaled past 65504 was inf where eager's is finite.)"""
    case = CASES[name]

    def run(fn):
        ops = tuple(o.detach().requires_grad_() for o in operands(case, torch.float32, seed=4))
        torch.manual_seed(8)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = fn(*ops)
        y.float().sum().backward()
        return y, [o.grad for o in ops]

    y_e, g_e = run(case.call)
    y_c, g_c = run(torch.compile(case.call, fullgraph=True, backend="aot_eager"))
    assert y_c.dtype == y_e.dtype
    torch.testing.assert_close(y_c, y_e, rtol=0, atol=0)
    for a, b in zip(g_c, g_e):
        assert a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def _assert_resizable(tensors, label):
    for i, t in enumerate(tensors):
        if t is not None:
            t = t.detach()
            n = t.numel()
            t.resize_(n + 4096)  # growing needs a resizable storage (torch's own allocation)
            t.resize_(n)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("name", NAMES)
def test_touched_tensors_stay_resizable(name, dtype):
    """A CPU tensor fastdrop reads or writes (operands, out=, outputs, gradients) can still be
    resize_d afterwards, as after torch's own ops: the kernels reach tensor memory without
    `Tensor.numpy()` / `torch.from_numpy`, which make a storage non-resizable for good."""
    case = CASES[name]
    # the small routes and, with 64x the rows of the first operand, the parallel ones (ops whose
    # other operands do not share that dim)
    scales = (1,) if case.op in (SAMPLE_GRAD_W, DROPOUT_MATMUL) else (1, 64)
    for shape_scale in scales:
        first = case.shapes[0]
        case_big = case._replace(shapes=((first[0] * shape_scale,) + tuple(first[1:]),) + case.shapes[1:])
        ops = operands(case_big, dtype=dtype)
        y = case.call(*ops, seed=3)
        _assert_resizable((*ops, y), f"{name} no grad")
        ops = tuple(None if t is None else t.detach().requires_grad_(True) for t in operands(case_big, dtype=dtype))
        y = case.call(*ops)  # seed=None under autograd: the training lane where it applies
        y.backward(torch.ones_like(y))
        _assert_resizable((*ops, y, *(None if t is None else t.grad for t in ops)), f"{name} grad")
        if case.inplace:
            x = operands(case_big, dtype=dtype)[0]
            case.call(x, inplace=True, seed=3)
            _assert_resizable((x,), f"{name} inplace")
        if case.op is DROPOUT:
            x = operands(case_big, dtype=dtype)[0]
            xt = x.transpose(0, -1)  # a strided route
            y = case.call(xt, seed=3)
            _assert_resizable((xt, y), f"{name} transposed")
        if case.op is DROPOUT and not name.startswith("drop_path"):  # drop_path takes no out=
            x = operands(case_big, dtype=dtype)[0]
            out = torch.empty_like(x)
            case.call(x, out=out, seed=3)
            _assert_resizable((x, out), f"{name} out=")


def test_max_norm_and_mc_predict_leave_tensors_resizable():
    w = torch.randn(64, 512)
    fastdrop.max_norm_(w, 1.0)
    _assert_resizable((w,), "max_norm_")
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), fastdrop.nn.Dropout(0.5), torch.nn.Linear(16, 4),
                                fastdrop.nn.DropConnectLinear(4, 3, p=0.3))
    x = torch.randn(5, 8)
    mean, var = fastdrop.nn.mc_predict(model, x, samples=4)[:2]
    _assert_resizable((x, mean, var, *model.parameters()), "mc_predict")


@pytest.mark.parametrize("name", NAMES)
def test_tensor_subclasses_without_memory_are_refused(name):
    """A __torch_dispatch__ wrapper subclass (its data_ptr() is 0) or a fake tensor outside its
    mode, as any operand: a TypeError before the seed draw, with or without autograd; the kernels
    took its address and wrote there (a segfault). A plain subclass (nn.Parameter) still runs."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.two_tensor import TwoTensor
    case = CASES[name]
    fake_mode = FakeTensorMode()
    for i, shape in enumerate(case.shapes):
        if shape is None:
            continue
        for wrap in (lambda t: TwoTensor(t, t.clone()), fake_mode.from_tensor):
            for grad in (False, True):
                ops = [None if o is None else o.float() for o in operands(case)]
                ops[i] = wrap(ops[i].requires_grad_(grad))
                for kw in ({}, {"seed": 3}):
                    state = torch.get_rng_state()
                    with pytest.raises(TypeError, match="tensor subclass"):
                        case.call(*ops, **kw)
                    assert torch.equal(torch.get_rng_state(), state), (name, i, kw)
        ops = [None if o is None else o.float() for o in operands(case)]
        ops[i] = torch.nn.Parameter(ops[i])
        case.call(*ops, seed=3).sum().backward()


def test_a_wrapper_subclass_out_is_refused_before_the_seed_draw():
    """out= a wrapper subclass or a fake tensor: the TypeError naming out, torch's generator
    untouched (its address 0 made its span look disjoint from x's, and the refusal came later)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.testing._internal.two_tensor import TwoTensor
    x = torch.randn(4, 6)
    for out in (TwoTensor(torch.empty_like(x), torch.empty_like(x)), FakeTensorMode().from_tensor(torch.empty_like(x))):
        for seed in (None, 3):
            state = torch.get_rng_state()
            with pytest.raises(TypeError, match="^out is a"):
                fastdrop.dropout(x, 0.3, seed=seed, out=out)
            assert torch.equal(torch.get_rng_state(), state)


def test_a_wrapper_subclass_gradient_is_refused_in_backward():
    """The training lane's backward takes the incoming gradient's memory only from a plain tensor;
    a wrapper subclass gradient gets the TypeError (it crashed the process)."""
    from torch.testing._internal.two_tensor import TwoTensor
    x = torch.randn(64, 64, requires_grad=True)
    y = fastdrop.nn.Dropout(0.3)(x)
    g = torch.randn(64, 64)
    with pytest.raises(TypeError, match="tensor subclass"):
        y.backward(TwoTensor(g, g.clone()))


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].op not in (SAMPLE_GRAD_X, SAMPLE_GRAD_W)])
@pytest.mark.parametrize("size", ["case", "large"])
def test_a_subclass_incoming_gradient_gives_plain_gradients(name, size):
    """Plain operands and an incoming gradient of a plain subclass (memory of its own): the
    operands' gradients are plain tensors with the plain gradient's values, as torch's C++
    backward formulas give them (the Python backwards made them through the subclass's
    __torch_function__, so of its class). "large": 64 times the rows (dim 0, a matmul's a:
    dim -2), past the small calls' serial kernels."""
    case = CASES[name]
    ops = list(operands(case, torch.float32))
    if size == "large":
        dim = -2 if case.op is DROPOUT_MATMUL else 0
        shape = list(ops[0].shape)
        shape[dim] *= 64
        ops[0] = torch.randn(shape)
    leaves = tuple(a.clone().requires_grad_() for a in ops)
    y = case.call(*leaves, seed=3)
    g = torch.randn(y.shape)
    want = torch.autograd.grad(y, leaves, g, retain_graph=True)
    got = torch.autograd.grad(y, leaves, g.as_subclass(_Tagged))
    for a, b in zip(got, want):
        assert type(a) is torch.Tensor, (name, type(a))
        assert torch.equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_zero_tensors_read_as_zeros(name):
    """torch's efficient zeros (`_efficientzerotensor`: forward-mode AD's zero tangents) have no
    memory (data_ptr() 0; the kernels segfaulted on them): every operand of every op may be one,
    and reads as zeros, as in torch's ops; in place on one is refused as torch refuses it
    ("ZeroTensors are immutable"), before the draw."""
    case = CASES[name]
    ops = operands(case, torch.float32)
    for i in range(len(ops)):
        zero = tuple(torch._efficientzerotensor(a.shape, dtype=a.dtype) if j == i else a for j, a in enumerate(ops))
        dense = tuple(torch.zeros_like(a) if j == i else a for j, a in enumerate(ops))
        for seed in (None, 3):
            torch.manual_seed(1)
            got = case.call(*zero, seed=seed)
            torch.manual_seed(1)
            assert torch.equal(got, case.call(*dense, seed=seed))
    if case.inplace:
        state = torch.get_rng_state()
        with pytest.raises(RuntimeError, match="ZeroTensors are immutable"):
            case.call(torch._efficientzerotensor(ops[0].shape), inplace=True)
        assert torch.equal(state, torch.get_rng_state())
    if len(ops) == 1 and "classic" not in name:  # at eval the op hands back x itself, as torch's
        z = torch._efficientzerotensor(ops[0].shape)
        assert case.call(z, training=False) is z
    # an incoming gradient of efficient zeros (every backward route: the lane's Function, the
    # native route, the general Function, the dense layers): zeros, as torch's ops give
    leaves = tuple(a.clone().requires_grad_() for a in ops)
    y = case.call(*leaves)
    grads = torch.autograd.grad(y, leaves, torch._efficientzerotensor(y.shape), allow_unused=True)
    assert all(g is None or not g.any() for g in grads)


@pytest.mark.parametrize("shape", [(4, 5), (64, 64, 32, 32)])  # the lane's Function; the general one
def test_zero_tensor_gradients_of_the_kernel_routes(shape):
    for call in (lambda x: fastdrop.dropout(x, 0.5), lambda x: fastdrop.drop_path(x, 0.5, mode="batch"),
                 lambda x: fastdrop.dropout2d(x, 0.9) if x.dim() == 4 else fastdrop.dropout(x, 0.9)):
        x = torch.randn(shape, requires_grad=True)
        (g,) = torch.autograd.grad(call(x), x, torch._efficientzerotensor(shape))
        assert not g.any()


def test_zero_tensor_targets_of_writes_are_refused_before_the_draw():
    """out= and max_norm_ write: a ZeroTensor target is refused as torch refuses it."""
    x, x4 = torch.randn(4, 5), torch.randn(2, 3, 4, 5)
    state = torch.get_rng_state()
    for call in (lambda: fastdrop.dropout(x, 0.5, out=torch._efficientzerotensor((4, 5))),
                 lambda: fastdrop.dropout(x, 0.5, seed=1, out=torch._efficientzerotensor((4, 5))),
                 lambda: fastdrop.dropout2d(x4, 0.5, out=torch._efficientzerotensor((2, 3, 4, 5))),
                 lambda: fastdrop.max_norm_(torch._efficientzerotensor((4, 5)), 1.0)):
        with pytest.raises(RuntimeError, match="ZeroTensors are immutable"):
            call()
    z = torch._efficientzerotensor((4, 5))
    with pytest.raises(RuntimeError, match="ZeroTensors are immutable"):
        fastdrop.dropout(z, 0.5, out=z)
    assert torch.equal(state, torch.get_rng_state())


class _Tagged(torch.Tensor):
    """A plain tensor subclass (memory of its own, no __torch_dispatch__), as users tag tensors."""


@pytest.mark.parametrize("name", [n for n in NAMES if CASES[n].op not in (SAMPLE_GRAD_X, SAMPLE_GRAD_W)])
def test_a_subclass_input_keeps_its_class(name):
    """Every op gives a plain subclass input's class back, with the plain tensor's values, under
    autograd or not, as torch's ops give it (per-sample DropConnect returned a plain Tensor, its
    output made by torch.empty: a review). The per-sample DropConnect gradient ops are gradients:
    plain, as torch's C++ backward formulas give them (test_dropconnect.py,
    test_per_sample_classes_follow_torch_linear)."""
    case = CASES[name]
    ops = operands(case, torch.float32)
    for grad in (False, True):
        plain = tuple(a.clone().requires_grad_(grad) for a in ops)
        tagged = (plain[0].detach().as_subclass(_Tagged).requires_grad_(grad),) + plain[1:]
        want = case.call(*plain, seed=7)
        got = case.call(*tagged, seed=7)
        assert type(got) is _Tagged, type(got)
        assert torch.equal(got.as_subclass(torch.Tensor).detach(), want.detach())
