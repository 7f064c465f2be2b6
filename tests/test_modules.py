"""fastdrop.nn modules as drop-in replacements for torch's dropout modules."""
import numpy as np
import pytest
import torch

import fastdrop
import fastdrop.nn as fnn

PAIRS = [(fnn.Dropout, torch.nn.Dropout, (8, 16)), (fnn.Dropout1d, torch.nn.Dropout1d, (4, 6, 9)),
         (fnn.Dropout2d, torch.nn.Dropout2d, (4, 6, 5, 3)), (fnn.Dropout3d, torch.nn.Dropout3d, (2, 3, 4, 5, 2))]


@pytest.mark.parametrize("ours, theirs, shape", PAIRS)
def test_constructor_and_repr_match_torch(ours, theirs, shape):
    assert repr(ours(0.3)) == repr(theirs(0.3))
    assert repr(ours(0.3, inplace=True)) == repr(theirs(0.3, inplace=True))
    assert "mode=classic" in repr(ours(0.3, mode="classic"))
    for bad in (-0.5, 1.5):
        with pytest.raises(ValueError, match="between 0 and 1"):
            theirs(bad)
        with pytest.raises(ValueError, match="between 0 and 1"):
            ours(bad)
    with pytest.raises(ValueError, match="mode"):
        ours(0.5, mode="gaussian")
    assert ours(0.5).state_dict() == {}


@pytest.mark.parametrize("ours, theirs, shape", PAIRS)
def test_train_eval_behaviour(ours, theirs, shape):
    x = torch.randn(shape)
    m = ours(0.5)
    y = m(x)
    zero_units = (y == 0)
    assert torch.equal(y[~zero_units], x[~zero_units] * 2)
    m.eval()
    assert m(x) is x
    c = ours(0.25, mode="classic").eval()
    assert torch.allclose(c(x), x * 0.75)


@pytest.mark.parametrize("ours, theirs, shape", PAIRS)
def test_empty_and_half(ours, theirs, shape):
    empty = torch.empty((0,) + shape[1:])
    assert ours(0.5)(empty).shape == empty.shape
    for dtype in (torch.float16, torch.bfloat16):
        x = torch.randn(shape, dtype=dtype)
        assert ours(0.5)(x).dtype == dtype


def test_reproducible_with_manual_seed_and_keep_rate_matches_torch():
    x = torch.ones(512, 512)
    torch.manual_seed(3)
    a = fnn.Dropout(0.3)(x)
    torch.manual_seed(3)
    assert torch.equal(fnn.Dropout(0.3)(x), a)
    # Same distribution as torch's: keep fraction within binomial noise of 0.7, same scale.
    ours, theirs = (a != 0).double().mean().item(), (torch.nn.Dropout(0.3)(x) != 0).double().mean().item()
    sd = np.sqrt(0.21 / x.numel())
    assert abs(ours - 0.7) < 6 * sd and abs(theirs - 0.7) < 6 * sd
    assert torch.allclose(a[a != 0], torch.tensor(1 / 0.7))


def test_in_a_model_trains():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), fnn.Dropout(0.2),
                                torch.nn.Linear(64, 1))
    x = torch.randn(256, 20)
    y = x[:, :1] * 2 - x[:, 1:2]
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(x), y)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


def test_inplace_module_writes_the_same_result():
    x = torch.randn(10, 10)
    h = x.clone()
    torch.manual_seed(5)
    y = fnn.Dropout(0.5, inplace=True)(h)
    assert y is h
    torch.manual_seed(5)
    assert torch.equal(fnn.Dropout(0.5)(x), h)
    assert not torch.equal(h, x)


# ----------------------------------------------------------------------------- torch subclasses
@pytest.mark.parametrize("ours, theirs, shape", PAIRS)
def test_modules_are_torch_dropout_subclasses(ours, theirs, shape):
    m = ours(0.3)
    assert isinstance(m, theirs) and isinstance(m, torch.nn.modules.dropout._DropoutNd)
    assert repr(ours(1)) == repr(theirs(1))  # p kept as given, like torch
    assert repr(ours(0.3, mode="classic")) == f"{ours.__name__}(p=0.3, inplace=False, mode=classic)"
    assert m.state_dict() == theirs(0.3).state_dict()
    m.load_state_dict(theirs(0.3).state_dict())


@pytest.mark.parametrize("ours, theirs, shape", PAIRS)
def test_forward_takes_torchs_argument_name(ours, theirs, shape):
    """`mod(input=t)` (and torch.export with kwargs) works as on torch's modules: forward's
    argument is torch's `input` (DropPath keeps timm's `x`)."""
    import inspect
    x = torch.randn(shape)
    torch.manual_seed(3)
    y = ours(0.3)(input=x)
    torch.manual_seed(3)
    assert torch.equal(y, ours(0.3)(x))
    assert list(inspect.signature(ours.forward).parameters) == list(inspect.signature(theirs.forward).parameters)
    for layer in (fnn.DropoutLinear(6, 4, p=0.3), fnn.DropConnectLinear(6, 4, p=0.3)):
        assert layer(input=torch.randn(2, 6)).shape == (2, 4)
        assert list(inspect.signature(type(layer).forward).parameters) == ["self", "input"]
    assert list(inspect.signature(fnn.DropPath.forward).parameters) == ["self", "x"]  # timm's


@pytest.mark.parametrize("ours, theirs, shape", PAIRS)
def test_bad_p_gets_torchs_message(ours, theirs, shape):
    for bad in (-0.5, 1.5, 2):
        with pytest.raises(ValueError) as t:
            theirs(bad)
        with pytest.raises(ValueError) as o:
            ours(bad)
        assert str(o.value) == str(t.value)
    with pytest.raises(ValueError, match="between 0 and 1"):
        ours(float("nan"))  # torch accepts NaN (every comparison is False)
    for bad in ("0.5", True, None):
        with pytest.raises(TypeError, match="p must be a real number"):
            ours(bad)


def test_mc_dropout_recipe_reaches_fastdrop_layers():
    """The usual MC-dropout recipe: eval everything, then train() every nn.Dropout."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), fnn.Dropout(0.5),
                                torch.nn.Linear(32, 2)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.train()
    assert model[2].training
    x = torch.randn(4, 8)
    assert not torch.equal(model(x), model(x))


# ----------------------------------------------------------------------------- DropPath's names
def test_drop_path_accepts_timm_and_torchvision_names():
    for m in (fnn.DropPath(0.1), fnn.DropPath(drop_prob=0.1), fnn.DropPath(p=0.1)):
        assert m.p == 0.1 and m.drop_prob == 0.1
    assert fnn.DropPath().p == 0.0
    assert fnn.DropPath(p=0.2, mode="batch").mode == "batch"
    with pytest.raises(TypeError, match="both drop_prob"):
        fnn.DropPath(0.1, p=0.1)
    with pytest.raises(TypeError, match="both drop_prob"):
        fnn.DropPath(drop_prob=0.1, p=0.2)
    # torchvision's positional StochasticDepth(p, mode) must not silently become row mode
    with pytest.raises(TypeError, match="mode=mode"):
        fnn.DropPath(0.2, "batch")
    with pytest.raises(ValueError, match="between 0 and 1"):
        fnn.DropPath(drop_prob=1.5)


def test_drop_path_function_takes_timms_keyword():
    """timm's functional is called `drop_path(x, drop_prob=..., training=...)` by keyword too;
    fastdrop's function takes timm's name beside p (it raised an unexpected-keyword TypeError)."""
    x = torch.randn(6, 5)
    want = fastdrop.drop_path(x, 0.4, seed=3)
    assert torch.equal(fastdrop.drop_path(x, drop_prob=0.4, training=True, seed=3), want)
    assert torch.equal(fastdrop.drop_path(x, drop_prob=0.4, training=False), x)
    torch.manual_seed(0)
    drawn = fastdrop.drop_path(x, drop_prob=0.4)
    torch.manual_seed(0)
    assert torch.equal(drawn, fastdrop.drop_path(x, 0.4))
    with pytest.raises(TypeError, match="both p=0.2 and drop_prob=0.4"):
        fastdrop.drop_path(x, 0.2, drop_prob=0.4)


def test_dropconnect_per_sample_must_be_a_bool():
    """A truthy string from a config ("False") must not switch per-sample masks on."""
    with pytest.raises(TypeError, match="per_sample must be a bool"):
        fnn.DropConnectLinear(4, 2, per_sample="False")
    assert fnn.DropConnectLinear(4, 2, per_sample=np.bool_(True)).per_sample is True


def test_drop_prob_assignment_changes_forward_and_is_validated():
    m = fnn.DropPath(drop_prob=0.0)
    x = torch.randn(64, 5)
    assert torch.equal(m(x), x)
    m.drop_prob = 1.0  # what drop-path-rate schedules do
    assert m.p == 1.0 and torch.equal(m(x), torch.zeros_like(x))
    m.p = 0.0
    assert m.drop_prob == 0.0 and torch.equal(m(x), x)
    for bad in (1.5, -0.1):
        with pytest.raises(ValueError, match="drop_prob"):
            m.drop_prob = bad
        with pytest.raises(ValueError, match="between 0 and 1"):
            m.p = bad
    with pytest.raises(TypeError):
        m.drop_prob = "0.1"
    assert m.p == 0.0  # a refused assignment leaves the value
    assert m.state_dict() == {} and "drop_prob" not in repr(m)


def test_drop_path_rate_schedule_over_a_model():
    blocks = torch.nn.ModuleList([fnn.DropPath(0.0) for _ in range(4)])
    for i, m in enumerate(blocks.modules()):
        if isinstance(m, fnn.DropPath):
            m.drop_prob = 0.1 * i
    assert [b.p for b in blocks] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    x = torch.ones(2000, 3)
    torch.manual_seed(0)
    kept = (blocks[3](x)[:, 0] != 0).double().mean().item()
    assert abs(kept - 0.6) < 6 * np.sqrt(0.24 / 2000)


_FX_MODULES = {  # every fastdrop module, with an input shape it takes
    "Dropout": (lambda: fnn.Dropout(0.3), (4, 8)),
    "Dropout1d": (lambda: fnn.Dropout1d(0.4), (2, 4, 8)),
    "Dropout2d": (lambda: fnn.Dropout2d(0.4), (2, 4, 2, 8)),
    "Dropout3d": (lambda: fnn.Dropout3d(0.4), (2, 4, 2, 2, 8)),
    "DropPath": (lambda: fnn.DropPath(0.4), (6, 8)),
    "DropoutLinear": (lambda: fnn.DropoutLinear(8, 5, p=0.3), (4, 8)),
    "DropConnectLinear": (lambda: fnn.DropConnectLinear(8, 5, p=0.3, per_sample=True), (4, 8)),
}


def _fx_equal(model, traced, x):
    """traced(x) equals model(x) in both modes, with torch's generator at the same state."""
    for mode in ("train", "eval"):
        getattr(model, mode)(), getattr(traced, mode)()
        torch.manual_seed(5)
        expected = model(x)
        torch.manual_seed(5)
        assert torch.equal(traced(x), expected), mode


@pytest.mark.parametrize("scope", ["module", "global"])
@pytest.mark.parametrize("name", list(_FX_MODULES))
def test_fx_symbolic_trace_runs_hooks_at_run_time_as_torch_does(name, scope):
    """fx's tracer traced through non-torch.nn modules, running their forward hooks on Proxies:
    the graph then ran tensor-valued hooks twice (outputs of 204 where eager gave 102), and hooks
    with side effects or backward hooks at trace time only. fastdrop's modules are leaves now, as
    torch's: the graph calls them, and their hooks, at run time, once per call, including hooks
    registered after the trace; the traced graph still scripts."""
    from torch.nn.modules import module as module_hooks
    import torch.fx
    make, shape = _FX_MODULES[name]
    model = torch.nn.Sequential(torch.nn.Identity(), make())
    seen = []
    if scope == "module":
        handles = [model[1].register_forward_pre_hook(lambda m, a: (a[0] * 2,)),
                   model[1].register_forward_hook(lambda m, a, o: seen.append("fwd") or o + 100),
                   model[1].register_full_backward_hook(lambda m, gi, go: seen.append("bwd"))]
    else:
        def pre(m, a):
            return (a[0] * 2,) if m is model[1] else None

        def post(m, a, o):
            if m is model[1]:
                seen.append("fwd")
                return o + 100

        handles = [module_hooks.register_module_forward_pre_hook(pre),
                   module_hooks.register_module_forward_hook(post)]
    try:
        traced = torch.fx.symbolic_trace(model)
        assert [n.target for n in traced.graph.nodes if n.op == "call_module"] == ["0", "1"]
        assert seen == []  # tracing ran no hook
        x = (torch.randn(shape) + 0.5).requires_grad_()
        _fx_equal(model, traced, x)
        seen.clear()
        traced.train()(x).sum().backward()
        assert seen == (["fwd", "bwd"] if scope == "module" else ["fwd"])
    finally:
        for h in handles:
            h.remove()
    model[1].register_forward_hook(lambda m, a, o: o * 3)  # after the trace: runs, as torch's would
    traced.eval(), model.eval()
    assert torch.equal(traced(x), model(x))
    model[1]._forward_hooks.clear()
    scripted = torch.jit.script(traced)  # a graph of call_module nodes scripts, as torch's does
    assert torch.equal(scripted(x), model(x))


@pytest.mark.parametrize("name", list(_FX_MODULES))
def test_compiling_a_module_alone_equals_eager(name):
    """torch.compile(module, fullgraph=True) of each fastdrop module: the module's own __call__ is
    the compiled frame (it was marked to run as plain Python: "found no compiled frames")."""
    make, shape = _FX_MODULES[name]
    m = make()
    torch._dynamo.reset()  # the modules share forward code objects: other tests' entries count to its limit
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    x = (torch.randn(shape) + 0.5).requires_grad_()
    for mode in ("train", "eval"):
        getattr(m, mode)()
        torch.manual_seed(5)
        y = compiled(x)
        g, = torch.autograd.grad(y.sum(), x)
        torch.manual_seed(5)
        y_e = m(x)
        g_e, = torch.autograd.grad(y_e.sum(), x)
        assert torch.equal(y, y_e) and torch.equal(g, g_e), mode


def test_fx_tracer_subclasses_see_every_module_call():
    """A tracer that overrides call_module (torchvision's feature extraction names nodes there;
    quantization tracers keep scopes) sees fastdrop's module calls, as it sees torch's leaves."""
    import torch.fx

    class Recording(torch.fx.Tracer):
        def __init__(self):
            super().__init__()
            self.seen = []

        def call_module(self, m, forward, args, kwargs):
            self.seen.append(self.path_of_module(m))
            return super().call_module(m, forward, args, kwargs)

    model = torch.nn.Sequential(*(make() for make, _ in [_FX_MODULES["DropoutLinear"], _FX_MODULES["Dropout"],
                                                           _FX_MODULES["DropPath"]]), torch.nn.Dropout(0.2))
    tracer = Recording()
    graph = tracer.trace(model)
    assert tracer.seen == ["0", "1", "2", "3"]
    assert [n.target for n in graph.nodes if n.op == "call_module"] == ["0", "1", "2", "3"]


class _Doubled(fnn.Dropout):
    def __call__(self, *args, **kwargs):  # a subclass wrapping the module call
        return super().__call__(*args, **kwargs) * 2


class _Biased(fnn.Dropout):
    def forward(self, input, bias):  # an extra argument, passed by keyword after it
        return super().forward(input + bias)


def test_fx_traces_subclasses_that_wrap_the_call_or_take_more_arguments():
    """A subclass overriding __call__ had the override applied twice by the traced graph (recorded,
    then run again by the call_module node); a call passing the Proxy as a later keyword was not
    seen as traced, and the graph dropped the other argument. Both equal eager, in both modes,
    also after a pickle round trip (which traces the graph's code again)."""
    import pickle
    import torch.fx

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.doubled, self.biased = torch.nn.Linear(4, 4), _Doubled(0.3), _Biased(0.3)

        def forward(self, x):
            return self.biased(bias=1.0, input=self.doubled(self.lin(x)))

    model = Model()
    traced = torch.fx.symbolic_trace(model)
    x = torch.randn(3, 4)
    _fx_equal(model, traced, x)
    _fx_equal(model, pickle.loads(pickle.dumps(traced)), x)


@pytest.mark.parametrize("name", list(_FX_MODULES))
def test_fx_symbolic_trace_of_a_module_alone(name):
    """A fastdrop module traced as the root (there is no attribute path for a call_module node:
    the graph failed to build) traces to its functional call with the mode of the trace, as fx
    traces torch's root modules; the call is marked wrapped, so the graph pickles, saves and
    traces again (each of which retraces its code)."""
    import io
    import pickle
    import torch.fx
    make, shape = _FX_MODULES[name]
    x = torch.randn(shape) + 0.5
    for mode in ("train", "eval"):
        model = getattr(make(), mode)()
        traced = torch.fx.symbolic_trace(model)
        assert not [n for n in traced.graph.nodes if n.op == "call_module"]
        buf = io.BytesIO()
        torch.save(traced, buf)
        buf.seek(0)
        copies = [pickle.loads(pickle.dumps(traced)), torch.load(buf, weights_only=False),
                  torch.fx.symbolic_trace(traced)]
        torch.manual_seed(5)
        expected = model(x)
        for g in [traced] + copies:
            torch.manual_seed(5)
            assert torch.equal(g(x), expected), mode


def test_fx_symbolic_trace_keeps_every_module_a_leaf():
    """torch.fx.symbolic_trace (torchvision's feature extraction, FX quantization) records
    fastdrop's modules as call_module nodes, as it records torch's nn.Dropout: the traced graph
    calls them at run time, so it follows .train() / .eval() and draws from torch's generator as
    the model does. A functional call on a Proxy is refused with a TypeError that says so."""
    import torch.fx

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = fnn.DropoutLinear(8, 16, p=0.2)
            self.dc = fnn.DropConnectLinear(16, 16, p=0.2, per_sample=True)
            self.d, self.d1 = fnn.Dropout(0.3), fnn.Dropout1d(0.2)
            self.d2, self.d3 = fnn.Dropout2d(0.2), fnn.Dropout3d(0.2)
            self.dp = fnn.DropPath(0.4)

        def forward(self, x):
            y = self.d(self.dc(self.lin(x)))
            y = self.d1(y.view(2, 8, 8))
            y = self.d3(self.d2(y.view(2, 4, 2, 8)).view(2, 4, 2, 2, 4))
            return self.dp(y)

    model = Model()
    traced = torch.fx.symbolic_trace(model)
    calls = [n.target for n in traced.graph.nodes if n.op == "call_module"]
    assert calls == ["lin", "dc", "d", "d1", "d2", "d3", "dp"]
    x = torch.randn(8, 8)
    for mode in ("train", "eval"):
        getattr(model, mode)(), getattr(traced, mode)()
        torch.manual_seed(1)
        expected = model(x)
        torch.manual_seed(1)
        assert torch.equal(traced(x), expected)
    assert torch.equal(traced(x), traced(x))  # eval: no mask
    state = torch.get_rng_state()
    with pytest.raises(TypeError, match="torch.fx Proxy"):
        torch.fx.symbolic_trace(lambda t: fastdrop.dropout(t, 0.5))
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("name", list(_FX_MODULES))
def test_modules_refuse_tensors_without_memory(name):
    """FSDP frees a parameter's unsharded storage (resize_ to 0 bytes) between its uses: a module
    called on such an input, or holding such a weight, raises ValueError in training (with and
    without grad) where the kernels would read past the memory (torch's dropout segfaults)."""
    make, shape = _FX_MODULES[name]
    for freed in ("input", "weight"):
        m = make()
        if freed == "weight" and not hasattr(m, "weight"):
            continue
        x = torch.randn(shape)
        victim = x if freed == "input" else m.weight
        victim.data.untyped_storage().resize_(0)
        for grad in (False, True):
            with torch.set_grad_enabled(grad), pytest.raises(ValueError, match="no memory for its elements"):
                m(x)


@pytest.mark.parametrize("name", ["Dropout", "Dropout2d", "DropPath"])
def test_inplace_assigned_after_construction_follows_the_constructor(name):
    """torch's modules read inplace's truth; fastdrop's constructor takes 0 / 1 as bools and refuses
    anything else: an `m.inplace = 1` made later (as a torch recipe would) writes in place, as
    inplace=1 at construction does, and a string is refused, naming the value."""
    make, shape = _FX_MODULES[name]
    m = make()
    m.inplace = 1
    x = torch.randn(shape) + 2.0
    torch.manual_seed(3)
    y = m(x)
    assert y is x and bool((x == 0).any())
    m.inplace = "False"
    with pytest.raises(TypeError, match="inplace must be a bool, got str 'False'"):
        m(torch.randn(shape))


def test_drop_path_scaling_errors_name_scaling():
    """A bad DropPath `scaling` was reported as a bad `mode` (DropPath has both)."""
    with pytest.raises(ValueError, match="^scaling must be one of"):
        fnn.DropPath(0.1, mode="row", scaling="Classic")
    with pytest.raises(ValueError, match="^scaling must be one of"):
        fastdrop.drop_path(torch.ones(4, 3), 0.1, mode="row", scaling="Classic")
    m = fnn.DropPath(0.1)
    m.scaling = "Classic"
    with pytest.raises(ValueError, match="^scaling must be one of"):
        m(torch.ones(4, 3))


def test_droppath_subclass_overriding_p_is_honoured_in_training():
    """A DropPath subclass whose `p` property computes the rate (a schedule) runs with that rate on
    every route: the training lane's call from forward read the stored `_p` (a review caught it:
    0.1 instead of 0.9 for float32, 0.9 for float16, which the lane does not take)."""
    class Scheduled(fastdrop.nn.DropPath):
        @property
        def p(self):
            return min(1.0, self._p * 9)

        @p.setter
        def p(self, value):
            fastdrop.nn.DropPath.p.fset(self, value)

    m = Scheduled(0.1)
    for dtype in (torch.float32, torch.float16):
        x = torch.ones(64, 3, dtype=dtype, requires_grad=True)
        torch.manual_seed(4)
        y = m(x)
        torch.manual_seed(4)
        assert torch.equal(y, fastdrop.drop_path(x, m.p)), dtype


def test_dropout_matmul_module():
    """fastdrop.nn.DropoutMatmul(p, mode): in training the functional dropout_matmul with a seed
    from torch's generator (the same after the same manual_seed, gradients included), at eval
    a @ b (times 1 - p under classic scaling); no parameters or state; recorded by torch.fx as a
    leaf call with both inputs; torch.compile(fullgraph=True) gives eager's outputs and grads."""
    m = fnn.DropoutMatmul(0.3)
    assert repr(m) == "DropoutMatmul(p=0.3)" and repr(fnn.DropoutMatmul(0.2, "classic")) == \
        "DropoutMatmul(p=0.2, mode=classic)"
    assert not list(m.parameters()) and m.state_dict() == {}
    a = torch.softmax(torch.randn(2, 3, 5, 5), -1).requires_grad_()
    b = torch.randn(2, 3, 5, 4, requires_grad=True)
    torch.manual_seed(7)
    y = m(a, b)
    ga, gb = torch.autograd.grad(y.square().sum(), (a, b))
    torch.manual_seed(7)
    y_ref = fastdrop.dropout_matmul(a, b, 0.3)
    ga_ref, gb_ref = torch.autograd.grad(y_ref.square().sum(), (a, b))
    assert torch.equal(y, y_ref) and torch.equal(ga, ga_ref) and torch.equal(gb, gb_ref)
    m.eval()
    assert torch.equal(m(a, b), a @ b)
    torch.testing.assert_close(fnn.DropoutMatmul(0.2, "classic").eval()(a, b), (a @ b) * 0.8)
    with pytest.raises(ValueError, match="dropout probability"):
        fnn.DropoutMatmul(1.5)
    with pytest.raises(ValueError, match="mode"):
        fnn.DropoutMatmul(0.1, mode="inverse")

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = fnn.DropoutMatmul(0.3)

        def forward(self, a, b):
            return self.drop(a, b) + 1
    block = Block()
    graph = torch.fx.symbolic_trace(block)
    calls = [n for n in graph.graph.nodes if n.op == "call_module"]
    assert [(n.target, len(n.args)) for n in calls] == [("drop", 2)]
    torch.manual_seed(3)
    want = block(a, b)
    torch.manual_seed(3)
    assert torch.equal(graph(a, b), want)
    compiled = torch.compile(block, backend="aot_eager", fullgraph=True)
    for fn in (block, compiled):
        torch.manual_seed(5)
        out = fn(a, b)
        grads = torch.autograd.grad(out.sum(), (a, b))
        if fn is block:
            ref = (out, grads)
    assert torch.equal(out, ref[0]) and all(torch.equal(g, r) for g, r in zip(grads, ref[1]))


@pytest.mark.parametrize("ours, theirs, shape", PAIRS)
def test_modules_run_on_meta_tensors_as_torchs(ours, theirs, shape):
    """A model on the meta device (run for its output shapes, or a FLOP count) ran torch's dropout
    modules and refused fastdrop's (ValueError, train and eval; a review). Same shapes and strides
    as torch's module gives, channels_last included, no seed drawn; a converted model built on
    meta runs forward and backward; max_norm_ leaves a meta weight as it is, as renorm_ does."""
    state = torch.get_rng_state()
    x = torch.empty(shape, device="meta", requires_grad=True)
    layouts = [x] + ([x.detach().to(memory_format=torch.channels_last).requires_grad_()] if len(shape) == 4 else [])
    for t in layouts:
        for training in (True, False):
            got, want = ours(0.3).train(training)(t), theirs(0.3).train(training)(t)
            assert got.is_meta and got.shape == want.shape and got.stride() == want.stride()
            if got.requires_grad:
                got.sum().backward()
    with torch.device("meta"):
        model = fnn.convert(torch.nn.Sequential(torch.nn.Linear(shape[-1], 4), theirs(0.3), fnn.DropPath(0.2),
                                                fnn.DropoutLinear(4, 3, p=0.1)))
        w = model[0].weight
        assert fastdrop.max_norm_(w, 1.0) is w
    y = model(torch.empty(shape, device="meta"))
    assert y.is_meta and y.shape == shape[:-1] + (3,)
    y.sum().backward()
    assert model[0].weight.grad.is_meta
    assert torch.equal(torch.get_rng_state(), state)


def test_meta_edges_traces_transforms_flops_and_moment_matching():
    """A review of the meta route: (1) a trace made on meta tensors (make_fx, torch.jit.trace)
    records the seed draw as a trace on CPU tensors does, not the constant 0 the meta route uses,
    so its replays on CPU draw new masks; (2) torch.func.grad and forward-mode AD on meta are
    refused with a RuntimeError (the custom op has no formula for them: a silent None tangent);
    (3) FlopCounterMode counts the dense ops' GEMMs on meta as on CPU (0 before: no formula);
    (4) moment-matching DropConnect gives its output's shape on meta (a torch.Generator on meta
    raised), with or without a seed."""
    from torch.fx.experimental.proxy_tensor import make_fx
    from torch.utils.flop_counter import FlopCounterMode
    import torch.autograd.forward_ad as fwAD
    meta = torch.empty(64, device="meta")
    graph = make_fx(lambda t: fastdrop.dropout(t, 0.5))(meta)
    x = torch.ones(64)
    assert not torch.equal(graph(x), graph(x))
    with pytest.raises(RuntimeError, match="on meta tensors under forward-mode AD or torch.func.grad"):
        torch.func.grad(lambda t: fastdrop.dropout(t, 0.3).sum())(meta)
    with fwAD.dual_level(), pytest.raises(RuntimeError, match="on meta tensors"):
        fastdrop.dropout(fwAD.make_dual(meta, meta), 0.3)

    def flops(device, fn):
        with FlopCounterMode(display=False) as counter:
            fn(device)
        return counter.get_total_flops()
    calls = [lambda d: fastdrop.dropout_linear(torch.ones(8, 4, device=d), torch.ones(16, 4, device=d), None, 0.3),
             lambda d: fastdrop.dropconnect_linear(torch.ones(8, 4, device=d), torch.ones(16, 4, device=d), None, 0.3),
             lambda d: fastdrop.dropout_matmul(torch.ones(2, 3, 4, device=d), torch.ones(2, 4, 5, device=d), 0.3)]
    for call in calls:
        assert flops("meta", call) == flops("cpu", call) > 0
    per_sample = lambda d: fastdrop.dropconnect_linear(torch.ones(8, 4, device=d), torch.ones(16, 4, device=d),
                                                       None, 0.3, per_sample=True)
    assert flops("meta", per_sample) == flops("cpu", calls[0])
    for seed in (None, 3):
        y = fastdrop.dropconnect_linear(torch.empty(5, 4, device="meta"), torch.empty(3, 4, device="meta"), None,
                                        0.3, training=False, activation=torch.relu, seed=seed)
        assert y.is_meta and y.shape == (5, 3)
