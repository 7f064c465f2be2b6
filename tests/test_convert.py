"""fastdrop.nn.convert: torch's Dropout*, timm's DropPath and torchvision's StochasticDepth swapped
for fastdrop's modules in place (timm and torchvision are not installed: stand-ins with their
class names, modules and attributes)."""
import pytest
import torch

import fastdrop
import fastdrop.nn as fnn


class DropPath(torch.nn.Module):
    """timm.layers.drop.DropPath's interface and semantics."""

    def __init__(self, drop_prob=0.0, scale_by_keep=True):
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x):
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - self.drop_prob)
        return x * keep / (1 - self.drop_prob) if self.scale_by_keep else x * keep


class StochasticDepth(torch.nn.Module):
    """torchvision.ops.StochasticDepth's interface and semantics."""

    def __init__(self, p, mode):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x):
        if not self.training or self.p == 0.0:
            return x
        shape = (x.shape[0],) + (1,) * (x.ndim - 1) if self.mode == "row" else (1,) * x.ndim
        return x * x.new_empty(shape).bernoulli_(1 - self.p) / (1 - self.p)


DropPath.__module__ = "timm.layers.drop"
StochasticDepth.__module__ = "torchvision.ops.stochastic_depth"


class MyDropout(torch.nn.Dropout):
    """A user's subclass: its forward may differ, so convert leaves it."""


class Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 3, 1)
        self.drop2d = torch.nn.Dropout2d(0.2)
        self.path = DropPath(0.1, scale_by_keep=False)
        self.depth = StochasticDepth(0.3, "batch")
        self.heads = torch.nn.ModuleDict({"a": torch.nn.Dropout1d(0.4, inplace=True), "b": torch.nn.Dropout3d(0.6)})
        self.alpha = torch.nn.AlphaDropout(0.2)
        self.falpha = torch.nn.FeatureAlphaDropout(0.2)
        self.mine = MyDropout(0.5)
        self.ours = fnn.Dropout(0.7, mode="classic")

    def forward(self, x):
        h = self.drop2d(self.conv(x))
        h = x + self.path(h) + self.depth(h)
        h = self.heads["b"](self.heads["a"](h.flatten(2)).unsqueeze(-1))
        return self.ours(self.mine(self.falpha(self.alpha(h.flatten(1)))))


def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 3 * 16), torch.nn.Unflatten(1, (3, 4, 4)), Block(),
                               torch.nn.ModuleList([torch.nn.Dropout(0.5)]), torch.nn.Linear(3 * 16, 2))


def run(m, x):
    h = m[1](m[0](x))
    return m[4](m[3][0](m[2](h)))


def test_replaces_each_kind_with_the_same_settings():
    m = model()
    block = m[2]
    block.path.eval()  # a module left in eval keeps its flag
    keep = {name: getattr(block, name) for name in ("alpha", "falpha", "mine", "ours")}
    assert fnn.convert(m) is m
    b = m[2]
    assert type(b.drop2d) is fnn.Dropout2d and b.drop2d.p == 0.2 and not b.drop2d.inplace
    assert type(b.heads["a"]) is fnn.Dropout1d and b.heads["a"].p == 0.4 and b.heads["a"].inplace
    assert type(b.heads["b"]) is fnn.Dropout3d and b.heads["b"].p == 0.6
    assert type(m[3][0]) is fnn.Dropout and m[3][0].p == 0.5
    assert type(b.path) is fnn.DropPath and b.path.drop_prob == 0.1 and b.path.scale_by_keep is False
    assert b.path.mode == "row" and b.path.training is False and b.drop2d.training is True
    assert type(b.depth) is fnn.StochasticDepth and b.depth.p == 0.3 and b.depth.mode == "batch"
    assert all(getattr(b, name) is mod for name, mod in keep.items())  # Alpha*, subclasses, ours: untouched
    assert all(mod.mode == "inverted" for mod in m.modules() if isinstance(mod, fnn.Dropout) and mod is not b.ours)


def test_eval_outputs_and_state_dict_unchanged():
    m = model().eval()
    x = torch.randn(5, 4)
    before, state = run(m, x), m.state_dict()
    fnn.convert(m)
    assert torch.equal(run(m, x), before)
    after = m.state_dict()
    assert list(after) == list(state) and all(torch.equal(after[k], state[k]) for k in state)
    fresh = model()
    fnn.convert(fresh).load_state_dict(state)  # a checkpoint of the torch model loads strictly


def test_training_masks_are_fastdrops():
    m = torch.nn.Sequential(torch.nn.Dropout(0.3), DropPath(0.5))
    fnn.convert(m)
    x = torch.randn(64, 32)
    torch.manual_seed(4)
    y = m(x)
    torch.manual_seed(4)
    ref = fastdrop.drop_path(fastdrop.dropout(x, 0.3), 0.5)
    assert torch.equal(y, ref)


def test_root_module_is_returned_converted():
    new = fnn.convert(torch.nn.Dropout(0.25, inplace=True).eval())
    assert type(new) is fnn.Dropout and new.p == 0.25 and new.inplace and not new.training
    assert repr(new) == repr(torch.nn.Dropout(0.25, inplace=True))
    new = fnn.convert(StochasticDepth(0.2, "row"))
    assert type(new) is fnn.StochasticDepth and new.p == 0.2 and new.mode == "row"
    alpha = torch.nn.AlphaDropout(0.1)
    assert fnn.convert(alpha) is alpha


def test_converted_stochastic_depth_keeps_torchvisions_signatures():
    """torchvision's layer is called as `sd(input=h)` (its forward's name) and built as
    StochasticDepth(p, mode): both still work after convert (a DropPath's forward takes x), under
    TorchScript too, and the repr is torchvision's."""
    new = fnn.convert(StochasticDepth(0.4, "row"))
    assert isinstance(new, fnn.DropPath) and repr(new) == "StochasticDepth(p=0.4, mode=row)"
    x = torch.randn(16, 3, 5)
    torch.manual_seed(2)
    y = new(input=x)
    torch.manual_seed(2)
    assert torch.equal(y, fastdrop.drop_path(x, 0.4, mode="row"))
    assert torch.equal(fnn.StochasticDepth(0.4, "batch").eval()(input=x), x)
    scripted = torch.jit.script(new)  # (scripted: eval only, README "TorchScript")
    assert torch.equal(scripted.eval()(input=x), x)
    with pytest.raises(torch.jit.Error, match="scripted fastdrop.nn.StochasticDepth runs in eval mode only"):
        scripted.train()(x)
    compiled = torch.compile(new.train(), backend="aot_eager", fullgraph=True)
    torch.manual_seed(3)
    y = compiled(input=x)
    torch.manual_seed(3)
    assert torch.equal(y, fastdrop.drop_path(x, 0.4, mode="row"))
    with pytest.raises(ValueError, match="mode"):
        fnn.StochasticDepth(0.4, "rows")


def test_shared_module_stays_shared_and_second_convert_changes_nothing():
    drop = torch.nn.Dropout(0.5)
    m = torch.nn.Sequential(torch.nn.Linear(3, 3), drop, torch.nn.Linear(3, 3), drop)
    fnn.convert(m)
    assert type(m[1]) is fnn.Dropout and m[1] is m[3]
    mods = list(m)
    fnn.convert(m)
    assert all(a is b for a, b in zip(m, mods))


def test_only_torch_and_timm_torchvision_classes_by_module_name():
    class NotTimm(torch.nn.Module):  # right name and attributes, wrong package
        def __init__(self):
            super().__init__()
            self.drop_prob, self.scale_by_keep = 0.1, True
    NotTimm.__name__ = "DropPath"
    m = torch.nn.Sequential(NotTimm())
    fnn.convert(m)
    assert type(m[0]) is NotTimm


def test_rejects_non_modules():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fnn.convert([torch.nn.Dropout()])


def test_converted_model_runs_mc_predict():
    m = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Dropout(0.5),
                            torch.nn.Linear(16, 2)).eval()
    from fastdrop.nn.mc import mc_predict
    with pytest.raises(ValueError, match="convert"):
        mc_predict(m, torch.randn(3, 4))
    r = mc_predict(fnn.convert(m), torch.randn(3, 4), samples=8, seed=0)
    assert (r.var > 0).all()


def test_probabilities_held_as_0d_tensors():
    """A drop-path rate taken from torch.linspace(...)[i], or a Dropout built with a 0-d tensor p
    (torch's and timm's modules accept both): converted with the same float probability."""
    rates = torch.linspace(0, 0.2, 3)
    m = fnn.convert(torch.nn.Sequential(DropPath(rates[1]), torch.nn.Dropout(torch.tensor(0.25)),
                                        StochasticDepth(torch.tensor(0.5), "row")))
    assert [type(c) for c in m] == [fnn.DropPath, fnn.Dropout, fnn.StochasticDepth]
    assert m[0].p == pytest.approx(0.1) and m[1].p == 0.25 and m[2].p == 0.5
    assert all(isinstance(c.p, float) for c in m)


def test_integer_inplace_flags_carry_over():
    """torch's modules take inplace=0 / 1 (they read its truth); fastdrop's ops take bools only,
    so a converted inplace=0 layer refused every forward, eval too (helper review). The
    constructor makes 0 and 1 bools and refuses anything else when the module is built."""
    x = torch.randn(2, 4)
    for flag in (0, 1):
        model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.5, inplace=flag)).eval()
        want = model(x)
        fnn.convert(model)
        assert model[1].inplace is bool(flag)
        assert torch.equal(model(x), want)
        model.train()
        assert model(x).shape == (2, 4)
    assert fnn.Dropout(0.5, inplace=1).inplace is True
    assert fnn.DropPath(0.5, inplace=0).inplace is False  # (DropPath had the same unchecked flag)
    x = torch.randn(4, 3)
    assert torch.equal(fnn.DropPath(0.5, inplace=0).eval()(x), x)
    for bad in ("False", 2, 0.5, None):
        with pytest.raises(TypeError, match="inplace must be a bool"):
            fnn.Dropout2d(0.5, inplace=bad)
        with pytest.raises(TypeError, match="inplace must be a bool"):
            fnn.DropPath(0.5, inplace=bad)


def test_a_layer_compiled_on_its_own_is_refused_before_anything_changes():
    """torch.compile(nn.Dropout(p)) is a wrapper whose compiled forward is bound to torch's layer:
    swapping its `_orig_mod` changed nothing that ran (torch's masks, and mc_predict refusing the
    model; found by a review on 2026-12-06). Refused naming the layer, the model untouched; a
    compiled block containing the layer converts and runs fastdrop's masks."""
    first = torch.nn.Dropout(0.5)
    model = torch.nn.Sequential(first, torch.compile(torch.nn.Dropout(0.5), backend="eager"))
    with pytest.raises(TypeError, match="model.1 is a Dropout compiled on its own"):
        fnn.convert(model)
    assert model[0] is first
    with pytest.raises(TypeError, match="compiled on its own"):
        fnn.convert(torch.compile(torch.nn.Dropout(0.5), backend="eager"))
    block = torch.compile(torch.nn.Sequential(torch.nn.Identity(), torch.nn.Dropout(0.5)), backend="eager")
    fnn.convert(block)
    x = torch.ones(1000)
    torch.manual_seed(0)
    got = block(x)
    torch.manual_seed(0)
    assert torch.equal(got, fastdrop.dropout(x, 0.5))


def test_hooks_on_a_replaced_layer_run_on_its_replacement():
    """Forward, pre-forward and backward hooks registered on torch's layer were dropped by the
    swap (a review): an output-rewriting hook's model gave other eval outputs after convert. They
    run on the replacement, and the handles the user holds still remove them."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Dropout(0.3), torch.nn.Linear(4, 2)).eval()
    seen, grads = [], []
    rewrite = net[1].register_forward_hook(lambda mod, args, out: out * 2)
    clamp = net[1].register_forward_pre_hook(lambda mod, args: (args[0].clamp(-0.1, 0.1),))
    net[1].register_forward_hook(lambda mod, args, out: seen.append(type(mod)))
    net[1].register_full_backward_hook(lambda mod, gin, gout: grads.append(type(mod)))
    x = torch.randn(5, 4, requires_grad=True)
    expected = net(x)
    seen.clear()
    fnn.convert(net)
    assert type(net[1]) is fnn.Dropout
    got = net(x)
    assert torch.equal(got, expected) and seen == [fnn.Dropout]
    got.sum().backward()
    assert grads == [fnn.Dropout]
    rewrite.remove()
    clamp.remove()
    assert len(net[1]._forward_hooks) == 1 and not net[1]._forward_pre_hooks
    assert not torch.equal(net(x), expected)


def test_a_layer_inside_a_scripted_or_traced_module_is_refused_before_anything_changes():
    """A torch.jit.script / trace module runs its compiled code, whatever its Python attributes
    say: convert changed nothing there and said nothing (a review). Refused naming the layer; a
    model scripted after convert, or one with no dropout layer, passes through unchanged."""
    first = torch.nn.Dropout(0.5)
    scripted = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5)))
    with pytest.raises(TypeError, match=r"model\.1 is a dropout layer inside model, a RecursiveScriptModule"):
        fnn.convert(scripted)
    traced = torch.jit.trace(torch.nn.Sequential(torch.nn.Dropout2d(0.5)).eval(), torch.ones(2, 3, 4, 4))
    outer = torch.nn.Sequential(first, traced)
    with pytest.raises(TypeError, match=r"model\.1\.0 is a dropout layer inside model\.1, a TopLevelTracedModule"):
        fnn.convert(outer)
    assert outer[0] is first
    done = torch.jit.script(fnn.convert(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.5))).eval())
    assert fnn.convert(done) is done
    plain = torch.jit.script(torch.nn.Sequential(torch.nn.Linear(3, 3)))
    assert fnn.convert(plain) is plain


def test_carried_hooks_leave_the_old_layer_and_follow_the_new_one():
    """The hooks move (a review of the hook carry): the old layer keeps none, a hook registered
    later on either module fires on that one only, and a load_state_dict pre-hook, which torch
    stores with its module, gets the replacement, also once the old layer is gone ("dead Module")."""
    import gc
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.Dropout(0.2))
    old, seen = net[1], []
    old.register_load_state_dict_pre_hook(lambda mod, *args: seen.append(type(mod)))
    old.register_forward_hook(lambda mod, args, out: seen.append("carried"))
    fnn.convert(net)
    assert not old._forward_hooks and not old._load_state_dict_pre_hooks
    old.register_forward_hook(lambda mod, args, out: seen.append("old"))
    net(torch.ones(1, 3))
    assert seen == ["carried"]
    del old
    gc.collect()
    net.load_state_dict(net.state_dict())
    assert seen == ["carried", fnn.Dropout]
