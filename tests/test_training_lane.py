"""The training lane (fastdrop/_core.py, `training_lane`) for elementwise dropout: a training
step's default call (a plain CPU float32/float64 tensor that needs grad, seed=None, offset 0,
inverted scaling, not in place, no out=) goes straight to the eager Function, skipping the general
pipeline. Checked here against the pipeline itself (the lane switched off): outputs and gradients
bit for bit, the same draw from torch's generator, the same autograd node, and which calls the
lane takes. The grouped ops' side of the lane is in test_native_grouped.py.
"""
import pytest
import torch

import fastdrop
from fastdrop import _core, _seeds

F = fastdrop


def bits(t):
    return t.detach().view({torch.float64: torch.int64, torch.float32: torch.int32}.get(t.dtype, torch.int16))


def hostile(shape, dtype, seed=0):
    """Values of both signs with an inf, a -inf and a NaN."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    flat = x.view(-1)
    flat[:3] = torch.tensor([float("inf"), float("-inf"), float("nan")], dtype=dtype)
    return x


def without_lane(monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setattr(_core, "training_lane", lambda *a, **k: None)
        return fn()


def counting_lane(monkeypatch):
    """Replace the lane by a wrapper that records the calls it took (returned a result for)."""
    taken, original = [], _core.training_lane

    def lane(*a, **k):
        y = original(*a, **k)
        if y is not None:
            taken.append(a[1:])
        return y
    monkeypatch.setattr(_core, "training_lane", lane)
    return taken


# shapes: the small serial kernel (64x512), the parallel kernel with the output cache (256x1024),
# a permuted (non-contiguous) view, 0-d and empty
SHAPES = [(64, 512), (256, 1024), "permuted", (), (0, 7)]


def make(shape, dtype):
    if shape == "permuted":
        return hostile((6, 5, 7), dtype).permute(2, 0, 1)
    return hostile(shape, dtype) if shape and 0 not in shape else torch.randn(shape, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lane_equals_the_pipeline_bit_for_bit(monkeypatch, shape, p, dtype):
    taken = counting_lane(monkeypatch)
    x = make(shape, dtype)
    g = torch.randn(x.shape, dtype=dtype)

    def run():
        xg = x.clone().requires_grad_()
        torch.manual_seed(11)
        y = F.dropout(xg, p)
        (gx,) = torch.autograd.grad(y, xg, g) if y.numel() else (torch.zeros_like(xg),)
        return y, gx, torch.get_rng_state(), type(y.grad_fn).__name__

    y, gx, state, node = run()
    small = x.is_contiguous() and 0 < x.numel() < fastdrop._cpu.CPU_PARALLEL_MIN
    # (empty: the lane leaves it to the pipeline, which draws no seed for it; a half x: small ones only)
    lane = x.numel() > 0 and (small or x.element_size() > 2)
    assert len(taken) == lane
    y0, gx0, state0, node0 = without_lane(monkeypatch, run)
    assert len(taken) == lane
    assert node0 == "EagerFunctionBackward"
    assert node == ("LaneDropoutBackward" if small else node0)
    assert torch.equal(bits(y), bits(y0))  # NaN, inf and the sign of zeros included
    assert torch.equal(bits(gx), bits(gx0))
    assert torch.equal(state, state0)  # the same draw from torch's generator
    assert y.stride() == y0.stride()


def test_module_training_step_takes_the_lane(monkeypatch):
    taken = counting_lane(monkeypatch)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), fastdrop.nn.Dropout(0.3), torch.nn.Linear(16, 2))
    x = torch.randn(4, 8)
    torch.manual_seed(3)
    model(x).sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    assert len(taken) == 1
    model.zero_grad()
    torch.manual_seed(3)
    without_lane(monkeypatch, lambda: model(x).sum().backward())
    assert all(torch.equal(a, p.grad) for a, p in zip(grads, model.parameters()))


def test_the_lane_only_takes_default_calls(monkeypatch):
    """Calls with other arguments, inputs or modes reach the pipeline and its checks."""
    taken = counting_lane(monkeypatch)
    x = torch.randn(6, 7, requires_grad=True)
    F.dropout(x, 0.2)
    assert len(taken) == 1
    for call in (lambda: F.dropout(x, 0.2, seed=1), lambda: F.dropout(x, 0.2, offset=1),
                 lambda: F.dropout(x, 0.2, mode="classic"), lambda: F.dropout(x, 0.2, training=False),
                 lambda: F.dropout(x, 1), lambda: F.dropout(x, 0.0), lambda: F.dropout(x, 1.0),
                 # half types: a small contiguous call only (below), not a big or strided one nor in place
                 lambda: F.dropout(torch.randn(fastdrop._cpu.CPU_PARALLEL_MIN, dtype=torch.bfloat16, requires_grad=True), 0.2),
                 lambda: F.dropout(x.half().t(), 0.2), lambda: F.dropout(x.bfloat16(), 0.2, inplace=True),
                 lambda: F.dropout(torch.nn.Parameter(torch.randn(3)), 0.2),
                 lambda: F.dropout(x.detach().numpy(), 0.2)):
        call()
    assert len(taken) == 1
    F.dropout(x.detach(), 0.2)  # nothing to record: the lane runs the kernel
    with torch.no_grad():
        F.dropout(x, 0.2)
    assert len(taken) == 3
    F.dropout(x.half(), 0.2)  # a small contiguous half call: the serial kernel by address
    F.dropout(x.detach().bfloat16(), 0.2)
    assert len(taken) == 5
    with pytest.raises(ValueError):
        F.dropout(x, 1.5)
    with pytest.raises(TypeError):
        F.dropout(x, 0.2, training="yes")
    with pytest.raises(TypeError):
        F.dropout(torch.randn(3, requires_grad=True, dtype=torch.complex64), 0.2)
    with pytest.raises(RuntimeError, match="out="):
        F.dropout(x, 0.2, out=torch.empty(6, 7))
    assert len(taken) == 5


def test_the_lane_runs_at_the_rank_stream(monkeypatch):
    """seed=None calls of rank r run at offset r * 2**48, through the lane as through `call`."""
    taken = counting_lane(monkeypatch)
    monkeypatch.setattr(_seeds, "_rank", lambda: 3)
    x = torch.randn(16, 5, requires_grad=True)
    torch.manual_seed(8)
    y = F.dropout(x, 0.5)
    assert len(taken) == 1
    torch.manual_seed(8)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    assert torch.equal(y.detach(), F.dropout(x.detach(), 0.5, seed=seed, offset=3 << _seeds.RANK_SHIFT))


def test_forward_mode_ad_and_functorch_skip_the_lane(monkeypatch):
    import torch.autograd.forward_ad as fwAD
    taken = counting_lane(monkeypatch)
    x = torch.randn(4, 6, requires_grad=True)
    with fwAD.dual_level():
        F.dropout(fwAD.make_dual(x, torch.ones_like(x)), 0.5)
    torch.func.grad(lambda t: F.dropout(t, 0.5).sum())(x.detach())
    assert taken == []


def test_saves_no_tensor_on_the_lane(monkeypatch):
    taken = counting_lane(monkeypatch)
    x = torch.randn(32, 32, requires_grad=True)
    packed = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
        F.dropout(x, 0.5).sum().backward()
    assert len(taken) == 1 and packed == []


def test_compiled_graph_does_not_take_the_lane(monkeypatch):
    """Under torch.compile(fullgraph=True) the lane reads is_compiling() first and steps aside
    (Dynamo cannot trace its functorch queries); the compiled call equals the eager one after the
    same manual_seed, outputs and gradients."""
    taken = counting_lane(monkeypatch)
    x = torch.randn(8, 16, dtype=torch.float64)
    g = torch.randn(8, 16, dtype=torch.float64)

    def step(fn):
        xg = x.clone().requires_grad_()
        torch.manual_seed(5)
        y = fn(xg)
        return y, torch.autograd.grad(y, xg, g)[0]

    fn = lambda t: F.dropout(t, 0.3) * 2  # noqa: E731
    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    y, gx = step(compiled)
    assert taken == []
    y0, gx0 = step(fn)
    assert len(taken) == 1
    assert torch.equal(y, y0) and torch.equal(gx, gx0)


def lane_and_pipeline(monkeypatch, step):
    """step(xg) -> tensors, run through the lane and without it after the same manual_seed."""
    taken = counting_lane(monkeypatch)
    x = hostile((24, 40), torch.float64)

    def run():
        xg = x.clone().requires_grad_()
        torch.manual_seed(21)
        return step(xg)
    got = run()
    assert len(taken) == 1
    return got, without_lane(monkeypatch, run)


@pytest.mark.parametrize("gradient", ["expanded", "transposed", "negative view"])
def test_lane_backward_of_a_strided_gradient(monkeypatch, gradient):
    """The lane's Function takes the serial kernel only for a dense gradient; an expanded one (of
    a sum), a transposed one or a negative-bit view take the general kernel, with the same bits."""
    def step(xg):
        y = F.dropout(xg, 0.4)
        if gradient == "expanded":
            (gx,) = torch.autograd.grad(y.sum(), xg)
        elif gradient == "transposed":
            (gx,) = torch.autograd.grad(y, xg, torch.randn(40, 24, dtype=y.dtype).t())
        else:
            (gx,) = torch.autograd.grad(y, xg, torch._neg_view(torch.randn(24, 40, dtype=y.dtype)))
        return y, gx
    (y, gx), (y0, gx0) = lane_and_pipeline(monkeypatch, step)
    assert torch.equal(bits(y), bits(y0)) and torch.equal(bits(gx), bits(gx0))


def test_lane_double_backward(monkeypatch):
    """create_graph: the lane's backward is recorded (the dropout op again, the same mask), so a
    gradient of the gradient equals the pipeline's; gradgradcheck on the lane's Function."""
    v = torch.randn(24, 40, dtype=torch.float64)

    def step(xg):
        y = F.dropout(xg, 0.4)
        vg = v.clone().requires_grad_()
        (gx,) = torch.autograd.grad(y, xg, vg, create_graph=True)
        (gv,) = torch.autograd.grad((gx * gx).sum(), vg)  # 2 * dropout(dropout(v)), one mask
        return y, gx, gv
    (y, gx, gv), (y0, gx0, gv0) = lane_and_pipeline(monkeypatch, step)
    assert torch.equal(bits(gx), bits(gx0)) and torch.equal(bits(gv), bits(gv0))
    assert torch.equal(gv, 2 * gx * gx.ne(0) / 0.6)

    taken = counting_lane(monkeypatch)

    def fn(t):  # one seed for every evaluation, drawn by the lane from torch's generator
        torch.manual_seed(2)
        return F.dropout(t, 0.4)
    x = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(fn, (x,)) and torch.autograd.gradgradcheck(fn, (x,))
    assert taken


LANE_OPS = [  # (call, shape): every public function that has a lane, at the ranks it takes
    (lambda x, p, **kw: F.dropout(x, p, **kw), (64, 512)),
    (lambda x, p, **kw: F.dropout(x, p, **kw), (256, 1024)),  # the parallel kernel
    (lambda x, p, **kw: F.dropout1d(x, p, **kw), (4, 6, 9)),
    (lambda x, p, **kw: F.dropout2d(x, p, **kw), (3, 5, 4, 6)),
    (lambda x, p, **kw: F.dropout3d(x, p, **kw), (2, 3, 2, 3, 5)),
    (lambda x, p, **kw: F.drop_path(x, p, **kw), (7, 3, 10)),
]


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed", "inner dims transposed",
                                    "negative view"])
@pytest.mark.parametrize("unrecorded", ["x needs no grad", "no_grad mode"])
@pytest.mark.parametrize("call,shape", LANE_OPS)
def test_lane_without_autograd_equals_the_pipeline(monkeypatch, call, shape, unrecorded, layout):
    """With nothing to record, the lane runs the op's forward on the kernels, as `torch_apply`
    does then: the same bits (NaN, inf, signed zeros), the same draw, a result that needs no grad."""
    taken = counting_lane(monkeypatch)
    x = hostile(shape, torch.float32)
    if layout == "channels_last" and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "transposed":
        x = x.transpose(0, -1).contiguous().transpose(0, -1)
    elif layout == "inner dims transposed":  # the leading (group) dims outermost: timm's ConvNeXt branch
        x = x.transpose(-1, -2).contiguous().transpose(-1, -2)

    def run():
        xg = x.clone(memory_format=torch.preserve_format).requires_grad_(unrecorded == "no_grad mode")
        if layout == "negative view":  # the neg bit: no numpy view of it (the kernels read it resolved)
            xg = torch._neg_view(xg.detach()).requires_grad_(unrecorded == "no_grad mode")
        torch.manual_seed(7)
        with torch.set_grad_enabled(unrecorded != "no_grad mode"):
            y = call(xg, 0.4)
        return y, torch.get_rng_state()

    y, state = run()
    assert len(taken) == 1 and not y.requires_grad
    y0, state0 = without_lane(monkeypatch, run)
    assert torch.equal(bits(y), bits(y0)) and torch.equal(state, state0)
    assert y.stride() == y0.stride()


def test_every_argument_of_the_lane_functions_is_checked_by_the_lane():
    """`functional._lane` decides from the arguments it is given that a call is a default one; a
    parameter added to a function with a lane must be added there too (a non-default value of
    it would otherwise take the lane and be ignored). This fails until it is."""
    import inspect
    lane_args = {"x", "p", "training", "inplace", "seed", "offset", "mode", "out"}
    for fn, extra in ((F.dropout, set()), (F.dropout1d, set()), (F.dropout2d, set()),
                      (F.dropout3d, set()),
                      # (drop_prob, timm's name for p, is folded into p before the lane)
                      (F.drop_path, {"scale_by_keep", "scaling", "drop_prob"})):
        params = set(inspect.signature(fn).parameters)
        if fn is F.drop_path:  # drop_path's mode is the mask mode ("row" takes the lane), scaling
            lane_args_fn = (lane_args - {"out"}) | extra  # is dropout's mode; no out=
        else:
            lane_args_fn = lane_args
        assert params == lane_args_fn, (fn.__name__, params ^ lane_args_fn)


# each module, an input of the rank its training lane takes, and its functional op
MODULE_LANES = [
    (lambda: fastdrop.nn.Dropout(0.3), (4, 6), lambda x: F.dropout(x, 0.3)),
    (lambda: fastdrop.nn.Dropout1d(0.3), (4, 6, 5), lambda x: F.dropout1d(x, 0.3)),
    (lambda: fastdrop.nn.Dropout2d(0.3), (4, 6, 5, 3), lambda x: F.dropout2d(x, 0.3)),
    (lambda: fastdrop.nn.Dropout3d(0.3), (4, 6, 5, 3, 2), lambda x: F.dropout3d(x, 0.3)),
    (lambda: fastdrop.nn.DropPath(0.3), (4, 6, 5), lambda x: F.drop_path(x, 0.3)),
]


@pytest.mark.parametrize("make_module, shape, functional", MODULE_LANES,
                         ids=["Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "DropPath"])
def test_modules_take_the_lane_their_functional_takes(monkeypatch, make_module, shape, functional):
    """Every module's training step takes the lane, with its functional op's arguments, and gives
    the pipeline's output, gradient and draw; a module the lane must not take (eval, in place,
    classic scaling, p = 0) does not. The modules call the lane from their forward, before the
    functional op (which tries it again only where it said no): the same arguments."""
    taken = counting_lane(monkeypatch)
    m = make_module()
    x = hostile(shape, torch.float32).requires_grad_()
    g = torch.randn(shape)
    torch.manual_seed(5)
    y = m(x)
    y.backward(g)
    state = torch.get_rng_state()
    functional(x)
    assert len(taken) == 2 and taken[0] == taken[1]
    gx, x.grad = x.grad, None
    torch.manual_seed(5)
    y0 = without_lane(monkeypatch, lambda: m(x))
    y0.backward(g)
    assert torch.equal(bits(y), bits(y0)) and torch.equal(bits(gx), bits(x.grad))
    torch.manual_seed(5)
    without_lane(monkeypatch, lambda: m(x))
    assert torch.equal(state, torch.get_rng_state())
    taken.clear()
    for change in ({"training": False}, {"p": 0.0}):  # (in place: test_inplace_lane_*)
        m = make_module()
        for name, value in change.items():
            setattr(m, name, value)
        m(x.detach().clone())
    if hasattr(m, "mode") and isinstance(m, torch.nn.Dropout):  # (dropout's scaling mode)
        m = make_module()
        m.mode = "classic"
        m(x)
    assert taken == []


# (call, shape, grouped): the lane's in-place calls. Without autograd it takes a small contiguous
# elementwise x and grouped ops on groups in runs of memory; under autograd, on an activation (not
# a leaf, not a view), the grouped ops (torch's own mul_, then the zeros in place) and contiguous
# elementwise dropout (the in-place Function)
INPLACE_OPS = [
    (lambda x, p, **kw: F.dropout(x, p, **kw), (64, 512), False),
    (lambda x, p, **kw: F.dropout(x, p, **kw), (256, 1024), False),  # large: the pipeline
    (lambda x, p, **kw: F.dropout2d(x, p, **kw), (3, 5, 4, 6), True),
    (lambda x, p, **kw: F.dropout2d(x, p, **kw), (16, 32, 16, 16), True),  # parallel kernel, zero pass
    (lambda x, p, **kw: F.drop_path(x, p, **kw), (7, 3, 10), True),
    (lambda x, p, **kw: F.drop_path(x, p, **kw), "sequence first", True),
]


@pytest.mark.parametrize("recorded", [False, True], ids=["no grad", "activation under autograd"])
@pytest.mark.parametrize("call,shape,grouped", INPLACE_OPS, ids=str)
def test_inplace_lane_equals_the_pipeline(monkeypatch, call, shape, grouped, recorded):
    """In place through the lane: x itself back, its version bumped, the pipeline's bits, draw and
    (under autograd) gradient values; only the calls the lane is for take it."""
    taken = counting_lane(monkeypatch)
    if shape == "sequence first":
        base = hostile((6, 4, 40), torch.float32).transpose(0, 1)
    else:
        base = hostile(shape, torch.float32)
    g = torch.randn(base.shape)

    def run():
        leaf = base.clone(memory_format=torch.preserve_format).requires_grad_(recorded)
        a = leaf * 1.0 if recorded else leaf  # an activation, or a tensor that needs no grad
        version = a._version
        torch.manual_seed(7)
        y = call(a, 0.4, inplace=True)
        assert y is a and a._version > version and a.stride() == base.stride()
        gx = torch.autograd.grad(y, leaf, g)[0] if recorded else None
        return y.detach().clone(), gx, torch.get_rng_state()

    y, gx, state = run()
    small = base.numel() < fastdrop._cpu.CPU_PARALLEL_MIN
    assert len(taken) == (1 if grouped or recorded or small else 0)
    y0, gx0, state0 = without_lane(monkeypatch, run)
    assert torch.equal(bits(y), bits(y0)) and torch.equal(state, state0)
    if recorded:
        # bits: the same route records the same op (the pipeline took the in-place Function where
        # the lane took the native route's mul_, whose dropped groups' gradients are grad * 0:
        # -0.0 for a negative incoming gradient; a review)
        assert torch.equal(bits(gx), bits(gx0))


@pytest.mark.parametrize("module", [lambda: fastdrop.nn.DropPath(0.5, inplace=True),
                                    lambda: fastdrop.nn.Dropout2d(0.5, inplace=True)])
@pytest.mark.parametrize("fill", [-1.0, float("inf")])
def test_inplace_grouped_activation_records_one_op_on_both_routes(monkeypatch, module, fill):
    """In place on an activation under autograd, the lane and the pipeline record the same op
    (the native route's x.mul_(factors)): the same grad_fn and the same gradient bits, also for
    an incoming gradient that is negative (a dropped group's -0.0) or inf (its NaN)."""
    def run():
        leaf = torch.randn(4, 3, 5, 2, generator=torch.Generator().manual_seed(1), requires_grad=True)
        a = leaf * 1.0
        torch.manual_seed(0)
        y = module()(a)
        gx = torch.autograd.grad(y, leaf, torch.full_like(y, fill))[0]
        return type(y.grad_fn).__name__, gx
    name, gx = run()
    name0, gx0 = without_lane(monkeypatch, run)
    assert name == name0 == "MulBackward0"
    assert torch.equal(bits(gx), bits(gx0))


@pytest.mark.parametrize("call", [lambda x: fastdrop.nn.Dropout(0.5)(x),
                                  lambda x: fastdrop.nn.Dropout(0.5, inplace=True)(x),
                                  lambda x: fastdrop.nn.Dropout2d(0.5)(x.requires_grad_()),
                                  lambda x: fastdrop.nn.DropPath(0.5)(x),
                                  lambda x: fastdrop.dropout(x, 0.5),
                                  lambda x: fastdrop.dropout_linear(x.reshape(-1, 3), torch.ones(2, 3), None, 0.5),
                                  lambda x: fastdrop.dropconnect_linear(x.reshape(-1, 3), torch.ones(2, 3), None, 0.5)])
def test_a_functionalization_wrapper_is_refused_before_the_draw(call):
    """A C++ functionalization wrapper is of the plain class with data_ptr() 0: the lanes and the
    native route took its address (a segfault, a review); now the TypeError naming it, before
    the seed draw, the tensor untouched."""
    x = torch._to_functional_tensor(torch.randn(4, 6, 5, 3))
    state = torch.get_rng_state()
    with pytest.raises(TypeError, match="functionalization"):
        call(x)
    assert torch.equal(state, torch.get_rng_state())


def test_inplace_lane_leaves_refusals_to_the_pipeline(monkeypatch):
    """In-place calls torch refuses (a leaf or a view of one that needs grad, an inference tensor
    outside inference mode) and views of activations reach the pipeline, which refuses before the
    draw or records the view's rebase."""
    taken = counting_lane(monkeypatch)
    leaf = torch.randn(4, 6, 5, 3, requires_grad=True)
    with torch.inference_mode():
        frozen = torch.randn(4, 6, 5, 3)
    state = torch.get_rng_state()
    for x in (leaf, leaf[1:]):
        with pytest.raises(RuntimeError, match="leaf"):
            F.dropout2d(x, 0.3, inplace=True)
    with pytest.raises(RuntimeError, match="inference"):
        F.dropout2d(frozen, 0.3, inplace=True)
    assert torch.equal(state, torch.get_rng_state()) and taken == []
    a = leaf * 1.0
    view = a[1:]
    y = F.dropout2d(view, 0.3, inplace=True)
    assert y is view and taken == []
    a.sum().backward()  # through the view's rebased history
    assert leaf.grad[0].eq(1).all()  # the rows outside the view pass their gradient unchanged
    assert torch.equal(leaf.grad[1:] == 0, y == 0)
    for m in (fastdrop.nn.Dropout2d(0.3, inplace=True), fastdrop.nn.DropPath(0.3, inplace=True)):
        a = leaf * 1.0
        assert m(a) is a  # a module in place takes the lane, as its functional op does
    assert len(taken) == 2


def test_inplace_lane_fallback_is_seen_by_allow_mutation_on_saved_tensors(monkeypatch):
    """In place under autograd with many groups dropped, the lane's native route gives way to the
    in-place Function, whose kernel writes x behind torch's back: the dispatch modes are told first
    (as `call` tells them), so allow_mutation_on_saved_tensors clones the tensor exp() saved; the
    backward read the written values before (a 10x wrong gradient on kept rows, a reviewer found)."""
    def grad():
        leaf = torch.randn(8, 32768, generator=torch.Generator().manual_seed(0), requires_grad=True)
        with torch.autograd.graph.allow_mutation_on_saved_tensors():
            a = leaf.exp()  # saves a
            torch.manual_seed(3)
            F.drop_path(a, 0.9, inplace=True)
            a.sum().backward()
        return leaf.grad
    taken = counting_lane(monkeypatch)
    got = grad()
    assert len(taken) == 1
    torch.testing.assert_close(got, without_lane(monkeypatch, grad), rtol=0, atol=0)
