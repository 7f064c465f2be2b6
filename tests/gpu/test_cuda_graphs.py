"""CUDA graphs and fastdrop's masks (issue 10, item 3).

The rule: a graph replay never silently repeats one mask. During capture a seed=None call draws
its seed on the stream with torch's CUDA generator (whose Philox state torch advances for every
replay) into a device tensor the kernels read (`_core._torch_call`, `dropout_cuda.philox_key`);
the backward reads the same tensor. So every replay draws a new mask, it is the documented mask
of the replay's seed (the eager call with seed=that seed gives the same result), and a captured
backward uses its forward's mask. An explicit seed names one mask: replays repeat it. A compiled
graph (whose seed is a host tensor) captured by hand, and mc_predict with seed=None, are refused
at capture. Every op of tests/op_table.py is checked.
"""
import pytest
import torch

import fastdrop
from fastdrop import _seeds
from fastdrop.functional import DROPOUT
from op_table import CASES, operands

DEV = "cuda"
REPLAYS = 6
ALL_CASES = sorted(CASES)


def on_gpu(ops, requires_grad=False):
    return tuple(t.detach().to(DEV).requires_grad_(requires_grad) for t in ops)


def _exact(name):
    return CASES[name].op is DROPOUT


def assert_matches(got, ref, name):
    """Elementwise ops bit for bit; the GEMM ops to float32 rounding (a replayed cuBLAS call and an
    eager one may pick different algorithms)."""
    if _exact(name):
        assert torch.equal(got, ref), name
    else:
        torch.testing.assert_close(got, ref, rtol=2e-5, atol=2e-5 * max(1.0, float(ref.abs().max())))


@pytest.fixture
def drawn_seeds(monkeypatch):
    """The seed tensors capture-time calls draw (read after a replay: that replay's seed)."""
    seeds = []
    draw = _seeds.device_seed_tensor

    def recording(torch_, device):
        t = draw(torch_, device)
        seeds.append(t)
        return t
    monkeypatch.setattr(_seeds, "device_seed_tensor", recording)
    return seeds


def capture(fn, *args, before_capture=None):
    """fn(*args) captured into a CUDA graph after an eager warm-up on a side stream (torch's
    recipe; before_capture() runs between the two); returns (graph, fn's result as captured)."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(2):
            fn(*args)
    torch.cuda.current_stream().wait_stream(s)
    torch.cuda.synchronize()
    if before_capture is not None:
        before_capture()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn(*args)
    torch.cuda.synchronize()
    return graph, out


def _replay(graph):
    graph.replay()
    torch.cuda.synchronize()


@pytest.mark.parametrize("name", ALL_CASES)
def test_every_replay_draws_the_documented_mask_of_a_new_seed(name, drawn_seeds):
    case = CASES[name]
    ops = on_gpu(operands(case, torch.float32))
    graph, out = capture(lambda *o: case.call(*o), *ops)
    assert len(drawn_seeds) == 1, f"{name}: {len(drawn_seeds)} device seed draws during capture"
    seen = set()
    for _ in range(REPLAYS):
        _replay(graph)
        seed = int(drawn_seeds[0].item())
        assert 0 <= seed < 2**63 - 1
        seen.add(seed)
        # the replay's output is the documented mask of its seed (so distinct seeds: new masks; a
        # comparison of outputs alone would be flaky for drop_path's batch mode, one draw in all)
        assert_matches(out, case.call(*ops, seed=seed), name)
    assert len(seen) == REPLAYS, f"{name}: replays drew {len(seen)} distinct seeds in {REPLAYS}"


@pytest.mark.parametrize("name", ALL_CASES)
def test_a_captured_backward_uses_its_forwards_mask(name, drawn_seeds):
    """A whole training step captured (forward and backward): each replay's gradients are the
    eager gradients of the mask that replay drew."""
    case = CASES[name]
    ops = on_gpu(operands(case, torch.float32), requires_grad=True)
    gy = None

    def step(*o):
        nonlocal gy
        y = case.call(*o)
        if gy is None:
            gy = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(DEV)
        y.backward(gy)
        return y
    step(*ops)  # gy, outside the capture

    def no_grads():  # torch's recipe: the captured backward allocates (and then rewrites) .grad
        for t in ops:
            t.grad = None
    graph, out = capture(step, *ops, before_capture=no_grads)
    grads = None
    for _ in range(3):
        _replay(graph)
        seed = int(drawn_seeds[0].item())
        ref_ops = tuple(t.detach().clone().requires_grad_(True) for t in ops)
        ref = case.call(*ref_ops, seed=seed)
        ref.backward(gy)
        assert_matches(out, ref.detach(), name)
        # the captured backward's outputs are the tensors its .grad fields were given at capture
        if grads is None:
            grads = [t.grad for t in ops]
        for g, r in zip(grads, ref_ops):
            if r.grad is not None:
                assert g is not None, name
                assert_matches(g, r.grad, name)


@pytest.mark.parametrize("name", ALL_CASES)
def test_explicit_seed_replays_repeat_its_mask(name):
    """An explicit seed names one mask: replays give the eager result for the static inputs'
    current values."""
    case = CASES[name]
    ops = on_gpu(operands(case, torch.float32))
    graph, out = capture(lambda *o: case.call(*o, seed=5, offset=2**33), *ops)
    for t in ops:
        t.mul_(2.0)  # the replay reads the static inputs' new values
    _replay(graph)
    assert_matches(out, case.call(*ops, seed=5, offset=2**33), name)


def test_a_compiled_call_captured_by_hand_is_refused():
    """Inside a torch.compile'd function the seed is a host tensor (fastdrop::draw_seed): captured
    by hand, it would be baked in, so the op refuses at capture (mode='reduce-overhead' keeps the
    ops out of its graphs instead: they are tagged cudagraph_unsafe)."""
    f = torch.compile(lambda x: fastdrop.dropout(x, 0.5), backend="aot_eager", fullgraph=True)
    x = torch.randn(4096, device=DEV)
    with pytest.raises(Exception) as info:
        capture(f, x)
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__context__ or e.__cause__
    assert any("captured into a CUDA graph" in m for m in chain), chain
    torch.cuda.synchronize()


def test_mc_predict_with_a_drawn_seed_is_refused_at_capture():
    model = torch.nn.Sequential(torch.nn.Linear(16, 16), fastdrop.nn.Dropout(0.5)).to(DEV).eval()
    x = torch.randn(4, 16, device=DEV)
    graph = torch.cuda.CUDAGraph()
    with pytest.raises(Exception) as info:
        with torch.cuda.graph(graph):
            fastdrop.nn.mc_predict(model, x, samples=2)
    chain, e = [], info.value
    while e is not None:
        chain.append(str(e))
        e = e.__context__ or e.__cause__
    assert any("mc_predict with seed=None" in m for m in chain), chain


def test_custom_ops_keep_the_cudagraph_unsafe_tag():
    """Compiled graphs draw the seed on the host, so torch.compile(mode='reduce-overhead') must
    keep fastdrop's ops out of its CUDA graphs."""
    if not hasattr(torch.Tag, "cudagraph_unsafe"):
        pytest.skip("this torch has no torch.Tag.cudagraph_unsafe")
    fastdrop.register_torch_ops()
    assert torch.Tag.cudagraph_unsafe in torch.ops.fastdrop.dropout.default.tags


def test_make_graphed_callables_gives_a_new_mask_and_its_gradient_each_call():
    """torch.cuda.make_graphed_callables captures the forward and the backward as two graphs
    (one memory pool): the backward graph reads the seed the forward graph drew."""
    model = torch.nn.Sequential(fastdrop.nn.Dropout(0.5)).to(DEV)
    x = (torch.rand(4096, device=DEV) + 1.0).requires_grad_(True)  # nonzero: kept <=> y != 0
    graphed = torch.cuda.make_graphed_callables(model, (x,))
    gy = torch.randn(4096, device=DEV)
    masks = []
    for _ in range(4):
        x.grad = None
        y = graphed(x)
        y.backward(gy)
        torch.cuda.synchronize()
        kept = y != 0
        torch.testing.assert_close(y, torch.where(kept, x.detach() * 2.0, 0.0), rtol=0, atol=0)
        torch.testing.assert_close(x.grad, torch.where(kept, gy * 2.0, 0.0), rtol=0, atol=0)
        masks.append(kept)
    assert all(not torch.equal(masks[0], m) for m in masks[1:]), "a graphed call repeated a mask"
