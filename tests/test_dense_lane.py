"""The dense layers' training lane (fastdrop/linear.py, `dense_lane`): a training step's default call of
dropout_linear or DropConnect with one mask per call (plain CPU float32/float64 tensors, seed=None
at offset 0, inverted scaling) runs the op's declared forward and backward in a light
autograd.Function, skipping the general pipeline. Checked against the pipeline itself (the lane
switched off): outputs and every gradient bit for bit, the same draw from torch's generator, the
same saved tensors, the same refusals before the draw, and which calls the lane takes.
"""
import inspect

import pytest
import torch

import fastdrop
from fastdrop import _seeds
from fastdrop import linear as L

F = fastdrop


def bits(t):
    return t.detach().view(torch.int64 if t.dtype == torch.float64 else torch.int32)


def counting_lane(monkeypatch):
    """Wrap the lane (as the functionals and modules look it up) to record the calls it took."""
    taken, original = [], L.dense_lane

    def lane(op, *a):
        y = original(op, *a)
        if y is not None:
            taken.append(op.name)
        return y
    monkeypatch.setattr(L, "dense_lane", lane)
    return taken


def without_lane(monkeypatch, fn):
    with monkeypatch.context() as m:
        m.setattr(L, "dense_lane", lambda *a: None)
        return fn()


def hostile(shape, dtype, seed=0):
    """Values of both signs with an inf, a -inf, a NaN and a -0.0."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    flat = x.view(-1)
    flat[:4] = torch.tensor([float("inf"), float("-inf"), float("nan"), -0.0], dtype=dtype)
    return x


OPS = {
    "dropout_linear": lambda x, w, b, p, **kw: F.dropout_linear(x, w, b, p, **kw),
    "dropconnect": lambda x, w, b, p, **kw: F.dropconnect_linear(x, w, b, p, **kw),
}
MODULES = {
    "dropout_linear": lambda i, o, p, bias: fastdrop.nn.DropoutLinear(i, o, bias=bias, p=p),
    "dropconnect": lambda i, o, p, bias: fastdrop.nn.DropConnectLinear(i, o, bias=bias, p=p),
}
# which operands need grad: a hidden layer's (all), a first layer's (the weights only), x alone
NEEDS = {"all": (True, True, True), "weights": (False, True, True), "x": (True, False, False)}


def _step(call, x, w, b, g, needs, seed=7):
    """A forward and backward after manual_seed: (y, the gradients asked for, torch's RNG state,
    the autograd node's name)."""
    ops = [t.clone().requires_grad_(n) if t is not None else None for t, n in zip((x, w, b), needs)]
    torch.manual_seed(seed)
    y = call(*ops)
    wanted = [t for t in ops if t is not None and t.requires_grad]
    grads = torch.autograd.grad(y, wanted, g)
    return y, grads, torch.get_rng_state(), type(y.grad_fn).__name__


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("needs", list(NEEDS), ids=str)
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
@pytest.mark.parametrize("xshape", [(8, 48), (3, 5, 48), (48,)], ids=str)
@pytest.mark.parametrize("op", list(OPS))
def test_lane_equals_the_pipeline_bit_for_bit(monkeypatch, op, xshape, bias, needs, dtype):
    taken = counting_lane(monkeypatch)
    x = hostile(xshape, dtype)
    w = torch.randn(24, 48, dtype=dtype)
    b = torch.randn(24, dtype=dtype) if bias else None
    g = torch.randn(*xshape[:-1], 24, dtype=dtype)
    call = lambda x, w, b: OPS[op](x, w, b, 0.3)  # noqa: E731
    y, grads, state, node = _step(call, x, w, b, g, NEEDS[needs])
    assert taken == [op]
    y0, grads0, state0, node0 = without_lane(monkeypatch, lambda: _step(call, x, w, b, g, NEEDS[needs]))
    assert taken == [op]
    assert (node, node0) == ("LaneDenseBackward", "EagerFunctionBackward")
    assert torch.equal(bits(y), bits(y0)) and y.stride() == y0.stride()  # NaN, inf, signed zeros
    assert len(grads) == len(grads0)
    for a, a0 in zip(grads, grads0):
        assert torch.equal(bits(a), bits(a0)) and a.stride() == a0.stride()
    assert torch.equal(state, state0)  # the same draw from torch's generator


@pytest.mark.parametrize("op", list(OPS))
def test_lane_with_a_transposed_weight_and_a_big_x(monkeypatch, op):
    """A weight in another layout (a tied, transposed embedding) and a mask on the parallel
    kernel (DENSE_PARALLEL_MIN elements): the lane runs the same routes as the pipeline."""
    taken = counting_lane(monkeypatch)
    w = torch.randn(40, 24).t()  # (24, 40) with strides (1, 24)
    x = hostile(((1 << 21) // 40 + 3, 40) if op == "dropout_linear" else (5, 40), torch.float32)
    g = torch.randn(x.shape[0], 24)
    call = lambda x, w, b: OPS[op](x, w, b, 0.6)  # noqa: E731
    y, grads, state, _ = _step(call, x, w, None, g, (True, True, False))
    y0, grads0, state0, _ = without_lane(monkeypatch, lambda: _step(call, x, w, None, g, (True, True, False)))
    assert taken == [op]
    assert torch.equal(bits(y), bits(y0)) and torch.equal(state, state0)
    assert all(torch.equal(bits(a), bits(a0)) for a, a0 in zip(grads, grads0))


@pytest.mark.parametrize("op", list(OPS))
def test_modules_take_the_lane_with_the_functionals_bits(monkeypatch, op):
    """A training step of a model with the layer: one lane call, and every parameter's gradient
    equal to the pipeline's after the same manual_seed; at eval the lane is not asked."""
    taken = counting_lane(monkeypatch)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), MODULES[op](32, 16, 0.25, True),
                                torch.nn.Linear(16, 3))
    x = torch.randn(6, 10)

    def run():
        model.zero_grad()
        torch.manual_seed(3)
        y = model(x)
        y.square().sum().backward()
        return y.detach(), [p.grad.clone() for p in model.parameters()]
    y, grads = run()
    assert taken == [op]
    y0, grads0 = without_lane(monkeypatch, run)
    assert torch.equal(y, y0) and all(torch.equal(a, a0) for a, a0 in zip(grads, grads0))
    model.eval()
    model(x)
    assert taken == [op]


@pytest.mark.parametrize("op", list(OPS))
def test_the_lane_only_takes_default_calls(monkeypatch, op):
    """Calls with other arguments, dtypes, layouts or modes reach the pipeline and its checks;
    a call with nothing to record runs the op's forward on the lane."""
    taken = counting_lane(monkeypatch)
    x, w, b = torch.randn(6, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True), torch.randn(4)
    fn = OPS[op]
    fn(x, w, b, 0.2)
    assert len(taken) == 1
    others = [lambda: fn(x, w, b, 0.2, seed=1), lambda: fn(x, w, b, 0.2, offset=1),
              lambda: fn(x, w, b, 0.2, training=False), lambda: fn(x, w, b, 1),
              lambda: fn(x, w, b, 0.0), lambda: fn(x, w, b, 1.0),
              lambda: fn(x.half(), w.half(), b.half(), 0.2),
              lambda: fn(x.bfloat16(), w.bfloat16(), b.bfloat16(), 0.2),
              lambda: fn(x.t().contiguous().t(), w, b, 0.2),  # a transposed x
              lambda: fn(x.detach().numpy(), w.detach().numpy(), b.numpy(), 0.2),
              lambda: fn(torch.randn(0, 8), w, b, 0.2)]
    if op == "dropout_linear":
        others.append(lambda: fn(x, w, b, 0.2, mode="classic"))
    else:
        others += [lambda: fn(x, w, b, 0.2, per_sample=True), lambda: fn(x, w, b, 0.2, activation=torch.relu)]
    for call in others:
        call()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fn(x, w, b, 0.2)
    assert len(taken) == 1
    fn(x.detach(), w.detach(), b, 0.2)  # nothing to record: the op's forward on the lane
    with torch.no_grad():
        fn(x, w, b, 0.2)
    assert len(taken) == 3


@pytest.mark.parametrize("op", list(OPS))
def test_refusals_before_the_draw(monkeypatch, op):
    """Bad operands are refused with the pipeline's errors and torch's generator untouched: the
    lane steps aside (or raises the same error) before drawing."""
    counting_lane(monkeypatch)
    fn = OPS[op]
    x, w, b = torch.randn(6, 8), torch.randn(4, 8, requires_grad=True), torch.randn(4)
    freed = torch.randn(4, 8, requires_grad=True)
    freed.untyped_storage().resize_(0)  # as FSDP frees an unsharded weight
    cases = [((x, torch.randn(4, 7), b), ValueError, "weight must be"),
             ((x, w, torch.randn(5)), ValueError, "bias has shape"),
             ((x, w.double(), b), TypeError, "same dtype"),
             ((x, freed, b), ValueError, "no memory"),
             ((torch.randn(6, 8, dtype=torch.complex64), w, b), TypeError, "floating point dtype")]
    for operands, error, match in cases:
        state = torch.get_rng_state()
        with pytest.raises(error, match=match):
            fn(*operands, 0.3)
        assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("op", list(OPS))
def test_a_weight_freed_after_the_forward_is_refused_in_backward(monkeypatch, op):
    taken = counting_lane(monkeypatch)
    w = torch.randn(4, 8, requires_grad=True)
    y = OPS[op](torch.randn(6, 8), w, None, 0.3)
    assert taken == [op]
    w.untyped_storage().resize_(0)
    with pytest.raises(ValueError, match="a saved operand has no memory"):
        y.sum().backward()


@pytest.mark.parametrize("op", list(OPS))
def test_the_lane_runs_at_the_rank_stream(monkeypatch, op):
    """seed=None calls of rank r run at offset r * 2**48, through the lane as through `call`."""
    taken = counting_lane(monkeypatch)
    monkeypatch.setattr(_seeds, "_rank", lambda: 3)
    x, w = torch.randn(16, 5, requires_grad=True), torch.randn(7, 5)
    torch.manual_seed(8)
    y = OPS[op](x, w, None, 0.5)
    assert taken == [op]
    torch.manual_seed(8)
    seed = int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64))
    assert torch.equal(y.detach(), OPS[op](x.detach(), w, None, 0.5, seed=seed, offset=3 << _seeds.RANK_SHIFT))


@pytest.mark.parametrize("op", list(OPS))
def test_saves_what_the_pipeline_saves(monkeypatch, op):
    """x and the weight, never a mask: the same tensors the eager Function saves."""
    taken = counting_lane(monkeypatch)
    x, w, b = torch.randn(32, 16, requires_grad=True), torch.randn(8, 16, requires_grad=True), torch.randn(8)

    def saved():
        packed = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: packed.append(t) or t, lambda t: t):
            OPS[op](x, w, b, 0.5).sum().backward()
        return packed
    lane = saved()
    assert taken == [op]
    pipeline = without_lane(monkeypatch, saved)
    assert [t.shape for t in lane] == [t.shape for t in pipeline] == [x.shape, w.shape]
    assert lane[0] is x and lane[1] is w


@pytest.mark.parametrize("op", list(OPS))
def test_double_backward_and_gradcheck_on_the_lane(monkeypatch, op):
    """create_graph: the lane's backward runs the op's backward on the autograd backend, so
    gradients of gradients equal the pipeline's; float64 gradcheck and gradgradcheck."""
    x, w, b = (torch.randn(5, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64),
               torch.randn(4, dtype=torch.float64))
    v = torch.randn(5, 4, dtype=torch.float64)

    def step():
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        torch.manual_seed(4)
        y = OPS[op](xs, ws, bs, 0.4)
        gx, gw = torch.autograd.grad(y, (xs, ws), v, create_graph=True)
        return y, gx, gw, torch.autograd.grad((gx * gx).sum() + (gw * gw).sum(), (xs, ws))
    taken = counting_lane(monkeypatch)
    got = step()
    assert len(taken) == 1
    want = without_lane(monkeypatch, step)
    for a, a0 in zip([*got[:3], *got[3]], [*want[:3], *want[3]]):
        assert torch.equal(bits(a), bits(a0))

    def fn(*ops):  # one seed for every evaluation, drawn by the lane from torch's generator
        torch.manual_seed(2)
        return OPS[op](*ops, 0.4)
    ops = [t.clone().requires_grad_() for t in (x, w, b)]
    assert torch.autograd.gradcheck(fn, ops) and torch.autograd.gradgradcheck(fn, ops)
    assert len(taken) > 1


@pytest.mark.parametrize("op", list(OPS))
def test_forward_ad_functorch_and_compile_skip_the_lane(monkeypatch, op):
    import torch.autograd.forward_ad as fwAD
    taken = counting_lane(monkeypatch)
    x, w = torch.randn(4, 6, requires_grad=True), torch.randn(3, 6)
    with fwAD.dual_level():
        OPS[op](fwAD.make_dual(x, torch.ones_like(x)), w, None, 0.5)
    torch.func.grad(lambda t: OPS[op](t, w, None, 0.5).sum())(x.detach())
    compiled = torch.compile(lambda t: OPS[op](t, w, None, 0.5), backend="aot_eager", fullgraph=True)
    torch.manual_seed(5)
    yc = compiled(x)
    assert taken == []
    torch.manual_seed(5)
    assert torch.equal(yc, OPS[op](x, w, None, 0.5)) and len(taken) == 1


def test_an_inference_tensor_goes_to_the_pipeline(monkeypatch):
    """The pipeline saves a copy of an inference-mode x (`_core._savable`); the lane steps aside."""
    taken = counting_lane(monkeypatch)
    with torch.inference_mode():
        x = torch.randn(4, 6)
    w = torch.randn(3, 6, requires_grad=True)
    F.dropout_linear(x, w, None, 0.5).sum().backward()
    assert taken == [] and w.grad is not None


def test_every_argument_of_the_lane_functions_is_checked_by_the_lane():
    """The functionals decide from their arguments that a call is a default one; a parameter
    added to them must be added to that decision too (it would otherwise be ignored on the lane).
    This fails until it is."""
    assert set(inspect.signature(F.dropout_linear).parameters) == {
        "x", "weight", "bias", "p", "training", "seed", "offset", "mode"}
    assert set(inspect.signature(F.dropconnect_linear).parameters) == {
        "x", "weight", "bias", "p", "training", "seed", "offset", "per_sample", "activation", "samples"}


@pytest.mark.parametrize("call", ["lane", "non-contiguous x", "bfloat16", "autocast", "compiled"])
@pytest.mark.parametrize("op", list(OPS))
def test_a_parametrized_weight_runs_once_per_forward(monkeypatch, op, call):
    """The modules read weight and bias once and hand them to the lane and, where it declines,
    to the pipeline: a parametrization (spectral_norm's power iteration, a weight-noise draw)
    runs once per forward, as in nn.Linear."""
    import torch.nn.utils.parametrize as P
    taken = counting_lane(monkeypatch)
    runs = []

    class Counting(torch.nn.Module):
        def forward(self, w):
            runs.append(1)
            return w * 1.0
    layer = MODULES[op](8, 6, 0.3, True)
    P.register_parametrization(layer, "weight", Counting())
    x = torch.randn(4, 8, requires_grad=True)
    if call == "non-contiguous x":
        x = torch.randn(8, 4).t().requires_grad_()
    elif call == "bfloat16":
        layer, x = layer.bfloat16(), x.detach().bfloat16().requires_grad_()
    runs.clear()
    if call == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            layer(x)
    elif call == "compiled":
        torch.compile(layer, backend="eager", fullgraph=True)(x)
        runs.clear()  # (Dynamo's trace ran it too: count the compiled call alone)
        torch.compile(layer, backend="eager", fullgraph=True)(x)
    else:
        layer(x)
    assert len(runs) == 1
    assert len(taken) == (1 if call == "lane" else 0)


@pytest.mark.parametrize("operand", ["weight", "bias"])
@pytest.mark.parametrize("op", list(OPS))
def test_a_nested_operand_gets_the_pipelines_error(monkeypatch, op, operand):
    counting_lane(monkeypatch)
    x, w, b = torch.randn(4, 5), torch.randn(3, 5), torch.randn(3)
    if operand == "weight":
        w = torch.nested.nested_tensor([torch.randn(5)] * 3)
    else:
        b = torch.nested.nested_tensor([torch.randn(3)])
    state = torch.get_rng_state()
    with pytest.raises(TypeError, match="nested"):
        OPS[op](x, w, b, 0.5)
    assert torch.equal(state, torch.get_rng_state())
