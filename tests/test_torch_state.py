"""fastdrop modules in ordinary torch workflows: torch.save / torch.load (modules and optimizer
state), copy.deepcopy, module.to(dtype), and the no_grad / inference_mode paths, which store
nothing for backward."""
import copy
import io

import pytest
import torch

import fastdrop


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), fastdrop.nn.Dropout(0.3),
                               torch.nn.Unflatten(1, (3, 4)), fastdrop.nn.Dropout1d(0.5, mode="classic"),
                               torch.nn.Flatten(), torch.nn.Linear(12, 2))


def forward(model, x, seed):
    torch.manual_seed(seed)
    return model(x)


def roundtrip(obj, weights_only):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=weights_only)


def test_save_load_whole_module_and_state_dict():
    model = make_model()
    x = torch.randn(5, 6)
    loaded = roundtrip(model, weights_only=False)
    assert repr(loaded) == repr(model)
    assert loaded[3].mode == "classic" and loaded[1].p == 0.3
    torch.testing.assert_close(forward(loaded, x, 1), forward(model, x, 1), rtol=0, atol=0)
    fresh = make_model()
    torch.nn.init.zeros_(fresh[0].weight)
    fresh.load_state_dict(roundtrip(model.state_dict(), weights_only=True))
    torch.testing.assert_close(forward(fresh, x, 2), forward(model, x, 2), rtol=0, atol=0)


def test_optimizer_state_roundtrip_resumes_training_exactly():
    x, y = torch.randn(8, 6), torch.randn(8, 2)

    def step(model, opt, seed):
        opt.zero_grad()
        torch.nn.functional.mse_loss(forward(model, x, seed), y).backward()
        opt.step()

    model = make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    step(model, opt, 0)
    saved = roundtrip({"model": model.state_dict(), "opt": opt.state_dict()}, weights_only=True)
    step(model, opt, 1)

    resumed = make_model()
    opt2 = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    resumed.load_state_dict(saved["model"])
    opt2.load_state_dict(saved["opt"])
    step(resumed, opt2, 1)
    for a, b in zip(resumed.parameters(), model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_deepcopy_keeps_configuration_and_masks():
    model = make_model().eval()
    twin = copy.deepcopy(model)
    assert not twin.training and repr(twin) == repr(model)
    twin.train()
    model.train()
    x = torch.randn(4, 6)
    torch.testing.assert_close(forward(twin, x, 3), forward(model, x, 3), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_module_to_dtype(dtype):
    model = make_model().to(dtype)
    x = torch.randn(4, 6, dtype=dtype)
    y = forward(model, x, 4)
    assert y.dtype == dtype
    drop = fastdrop.nn.Dropout(0.5).to(dtype)
    out = drop_with_seed(drop, torch.ones(3, 5, dtype=dtype))
    assert out.dtype == dtype and set(out.unique().tolist()) <= {0.0, 2.0}


def drop_with_seed(module, x):
    torch.manual_seed(5)
    return module(x)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("inplace", [False, True])
def test_no_grad_and_inference_mode_store_nothing(context, inplace):
    saved = []
    x = torch.randn(64, 8, requires_grad=not inplace)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        with context():
            work = x.clone() if inplace else x
            for module in (fastdrop.nn.Dropout(0.5, inplace=inplace),
                           fastdrop.nn.Dropout2d(0.5, inplace=inplace)):
                y = module(work.view(4, 16, 2, 4))
                assert y.grad_fn is None and not y.requires_grad
    assert saved == []


def test_training_stores_only_scalars_and_group_factors():
    """Dropout saves scalars; Dropout2d's native route (_core._native_grouped) its 4 x 16
    per-channel factors, never anything of x's 512 elements."""
    saved = []
    x = torch.randn(64, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = fastdrop.nn.Dropout(0.5)(x) + fastdrop.nn.Dropout2d(0.5)(x.view(4, 16, 2, 4)).view(64, 8)
    y.sum().backward()
    assert all(n <= 1 or n == 4 * 16 for n in saved), saved
