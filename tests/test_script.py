"""torch.jit.script of models with fastdrop's modules: every module scripts (through
`__prepare_scriptable__`) as its eval rule, bit for bit the eager module's eval output, with the
layer's own parameters and state_dict, through torch.jit.save / load; a training-mode call with
p > 0 is refused with fastdrop's message (TorchScript cannot run the kernels), p = 0 is x."""
import io
import warnings

import pytest
import torch

import fastdrop.nn as fnn

# (module factory, input shape); one row per module kind and eval rule
MODULES = {
    "Dropout": (lambda p: fnn.Dropout(p), (4, 8)),
    "Dropout_classic": (lambda p: fnn.Dropout(p, mode="classic"), (4, 8)),
    "Dropout_classic_inplace": (lambda p: fnn.Dropout(p, inplace=True, mode="classic"), (4, 8)),
    "Dropout1d": (lambda p: fnn.Dropout1d(p), (2, 3, 8)),
    "Dropout2d_classic": (lambda p: fnn.Dropout2d(p, mode="classic"), (2, 3, 4, 8)),
    "Dropout3d": (lambda p: fnn.Dropout3d(p), (2, 3, 2, 2, 8)),
    "DropPath": (lambda p: fnn.DropPath(p), (4, 3, 8)),
    "DropPath_classic_batch": (lambda p: fnn.DropPath(p, mode="batch", scaling="classic"), (4, 3, 8)),
    "DropoutLinear": (lambda p: fnn.DropoutLinear(8, 5, p=p), (4, 8)),
    "DropoutLinear_classic": (lambda p: fnn.DropoutLinear(8, 5, p=p, mode="classic"), (4, 8)),
    "DropConnectLinear": (lambda p: fnn.DropConnectLinear(8, 5, p=p), (4, 8)),
    "DropConnectLinear_nobias": (lambda p: fnn.DropConnectLinear(8, 5, bias=False, p=p), (4, 8)),
    "DropConnectLinear_per_sample": (lambda p: fnn.DropConnectLinear(8, 5, p=p, per_sample=True), (4, 8)),
}


def _script(module):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.13 deprecates torch.jit.script
        return torch.jit.script(module)


def test_every_module_class_has_a_row():
    classes = {getattr(fnn, name) for name in fnn.__all__
               if isinstance(getattr(fnn, name), type) and issubclass(getattr(fnn, name), torch.nn.Module)}
    covered = {type(factory(0.3)) for factory, _ in MODULES.values()}
    assert classes == covered


@pytest.mark.parametrize("name", MODULES)
def test_scripted_eval_equals_eager_eval(name):
    factory, shape = MODULES[name]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Identity(), factory(0.3)).eval()
    scripted = _script(model)
    assert scripted.state_dict().keys() == model.state_dict().keys()
    for key, value in model.state_dict().items():
        assert scripted.state_dict()[key] is not None and torch.equal(scripted.state_dict()[key], value)
    # the layer's own parameters (an optimizer over either model trains both)
    assert [p.data_ptr() for p in scripted.parameters()] == [p.data_ptr() for p in model.parameters()]
    x = torch.randn(shape)
    expected = model(x.clone())
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    for run in (scripted, loaded):
        given = x.clone()
        y = run(given)
        assert torch.equal(y, expected)
        if "inplace" in name:
            assert y.data_ptr() == given.data_ptr()


@pytest.mark.parametrize("name", MODULES)
def test_scripted_training_call_is_refused_and_p0_is_x(name):
    factory, shape = MODULES[name]
    scripted = _script(torch.nn.Sequential(factory(0.3)).train())
    x = torch.randn(shape)
    with pytest.raises(Exception, match="runs in eval mode only"):
        scripted(x)
    layer = factory(0.0).train()
    expected = layer(x)
    assert torch.equal(_script(layer)(x), expected)
    with pytest.raises(Exception, match="floating point dtype"):
        _script(factory(0.3).eval())(torch.ones(shape, dtype=torch.int64))


def test_scripted_model_follows_train_and_eval():
    """A ScriptModule keeps the training flag: .eval() after scripting a training model works."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), fnn.Dropout(0.5), fnn.DropoutLinear(8, 3, p=0.2))
    scripted = _script(model)
    x = torch.randn(2, 8)
    with pytest.raises(Exception, match="fastdrop.nn.Dropout runs in eval mode only"):
        scripted(x)
    scripted.eval()
    assert torch.equal(scripted(x), model.eval()(x))
