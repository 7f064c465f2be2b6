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
    """Dropout saves scalars; Dropout2d's native route (_grouped.native_grouped) its 4 x 16
    per-channel factors, never anything of x's 512 elements."""
    saved = []
    x = torch.randn(64, 8, requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        y = fastdrop.nn.Dropout(0.5)(x) + fastdrop.nn.Dropout2d(0.5)(x.view(4, 16, 2, 4)).view(64, 8)
    y.sum().backward()
    assert all(n <= 1 or n == 4 * 16 for n in saved), saved


DEFAULT_DEVICE_SCRIPT = """
import torch, fastdrop
import numpy as np
def calls():
    cpu = dict(device="cpu")
    x = torch.randn(4, 8, **cpu)
    w, b = torch.randn(5, 8, **cpu), torch.randn(5, **cpu)
    out = [fastdrop.dropout(x.to(dt), 0.5, seed=3) for dt in (torch.float32, torch.float64, torch.float16,
                                                              torch.bfloat16)]
    out.append(fastdrop.dropconnect_linear(x, w, b, 0.4, per_sample=True, seed=5))
    out.append(fastdrop.dropout_linear(x, w, b, 0.4, seed=6))
    out.append(torch.compile(lambda t: fastdrop.dropout(t, 0.5, seed=7), fullgraph=True, backend="aot_eager")(x))
    torch.manual_seed(1)
    out.append(torch.compile(lambda t: fastdrop.dropout(t, 0.5), fullgraph=True, backend="aot_eager")(x))
    out.append(torch.jit.trace(lambda t: fastdrop.dropout(t, 0.5, seed=8), (x,), check_trace=False)(x))
    return out
torch.manual_seed(0)
torch.set_default_device("meta")
got = calls()
torch.set_default_device("cpu")
torch.manual_seed(0)
expected = calls()
assert all(g.device.type == "cpu" and torch.equal(g, e) for g, e in zip(got, expected)), "differ"
print("ok")
"""


def test_a_default_device_leaves_cpu_calls_on_the_cpu():
    """torch.set_default_device (to meta here; to a GPU on a GPU machine) does not move fastdrop's
    own helper tensors off the CPU: dtype probes, per-sample DropConnect's host buffers, the seed
    tensors of compiled and traced graphs. A fresh process: the helpers are made on first use."""
    import subprocess
    import sys
    res = subprocess.run([sys.executable, "-c", DEFAULT_DEVICE_SCRIPT], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr[-3000:]
