"""fastdrop.nn.mc.mc_predict: every fast path against the one-sample-at-a-time path and the contract
(sample t, k-th stochastic call: seed, offset + t * 2**32 + k), the DropConnect per-sample masks,
and the refusals of models whose dropout fastdrop does not drive."""
import copy
import warnings

import numpy as np
import pytest
import scipy.stats
import torch

import fastdrop
import fastdrop.nn as fnn
from fastdrop import _seeds
from fastdrop.nn.mc import mc_predict

SEED, OFFSET, T = 11, 5, 7  # T = 7 with chunk=3: two full chunks and a remainder


class Record(torch.nn.Module):
    """Identity that keeps what passes through it: the stochastic module's output, per chunk."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x):
        self.seen.append(x.clone())
        return x

    def per_sample(self, samples):
        y = torch.cat(self.seen)
        return y.reshape(samples, y.shape[0] // samples, *y.shape[1:])


def conv(d):
    return {1: torch.nn.Conv1d, 2: torch.nn.Conv2d, 3: torch.nn.Conv3d}[d](2, 4, 3)


# kind -> (prefix layers, stochastic module, suffix layers, input shape, ops done elementwise)
CASES = {
    "Dropout": (lambda: [torch.nn.Linear(6, 16), torch.nn.ReLU()], lambda: fnn.Dropout(0.4),
                lambda: [torch.nn.Linear(16, 3)], (5, 6), True),
    "Dropout classic": (lambda: [torch.nn.Linear(6, 16), torch.nn.ReLU()],
                        lambda: fnn.Dropout(0.4, mode="classic"), lambda: [torch.nn.Linear(16, 3)], (5, 6), True),
    "Dropout1d": (lambda: [conv(1)], lambda: fnn.Dropout1d(0.5),
                  lambda: [torch.nn.Flatten(), torch.nn.Linear(4 * 6, 3)], (5, 2, 8), True),
    "Dropout2d": (lambda: [conv(2)], lambda: fnn.Dropout2d(0.5),
                  lambda: [torch.nn.Flatten(), torch.nn.Linear(4 * 3 * 4, 3)], (5, 2, 5, 6), True),
    "Dropout3d": (lambda: [conv(3)], lambda: fnn.Dropout3d(0.5),
                  lambda: [torch.nn.Flatten(), torch.nn.Linear(4 * 2 * 2 * 3, 3)], (5, 2, 4, 4, 5), True),
    "DropPath row": (lambda: [torch.nn.Linear(6, 16)], lambda: fnn.DropPath(0.5),
                     lambda: [torch.nn.Linear(16, 3)], (9, 6), True),
    "DropPath batch": (lambda: [torch.nn.Linear(6, 16)], lambda: fnn.DropPath(0.5, mode="batch"),
                       lambda: [torch.nn.Linear(16, 3)], (9, 6), True),
    "DropoutLinear": (lambda: [torch.nn.Linear(6, 16), torch.nn.ReLU()], lambda: fnn.DropoutLinear(16, 8, p=0.3),
                      lambda: [torch.nn.ReLU(), torch.nn.Linear(8, 3)], (5, 6), False),
    "DropConnectLinear": (lambda: [torch.nn.Linear(6, 16), torch.nn.ReLU()],
                          lambda: fnn.DropConnectLinear(16, 8, p=0.5),
                          lambda: [torch.nn.ReLU(), torch.nn.Linear(8, 3)], (5, 6), False),
    "DropConnectLinear per_sample": (lambda: [torch.nn.Linear(6, 16), torch.nn.ReLU()],
                                     lambda: fnn.DropConnectLinear(16, 8, p=0.5, per_sample=True),
                                     lambda: [torch.nn.ReLU(), torch.nn.Linear(8, 3)], (5, 6), True),
}


def build(kind, dtype=torch.float64):
    pre, drop, post, shape, elementwise = CASES[kind]
    torch.manual_seed(0)
    pre, drop, post = pre(), drop(), post()
    rec = Record()
    model = torch.nn.Sequential(*pre, drop, rec, *post).to(dtype).eval()
    return model, torch.nn.Sequential(*pre), drop, rec, torch.randn(shape, dtype=dtype), elementwise


def contract_output(drop, h, t, k=0):
    """The stochastic module's output in sample t by the documented contract: its public op on one
    sample's input with (SEED, OFFSET + t * 2**32 + k)."""
    off = OFFSET + t * 2 ** 32 + k
    if isinstance(drop, fnn.DropoutLinear):
        return fastdrop.dropout_linear(h, drop.weight, drop.bias, drop.p, seed=SEED, offset=off, mode=drop.mode)
    if isinstance(drop, fnn.DropConnectLinear):
        return fastdrop.dropconnect_linear(h, drop.weight, drop.bias, drop.p, seed=SEED, offset=off,
                                           per_sample=drop.per_sample)
    if isinstance(drop, fnn.DropPath):
        return fastdrop.drop_path(h, drop.p, seed=SEED, offset=off, mode=drop.mode)
    return drop._fn(h, drop.p, seed=SEED, offset=off, mode=drop.mode)


def run(model, rec, x, chunk, fused):
    rec.seen.clear()
    r = mc_predict(model, x, samples=T, seed=SEED, offset=OFFSET, chunk=chunk, fused=fused)
    return r, rec.per_sample(T)


@pytest.mark.parametrize("kind", list(CASES))
def test_one_sample_path_follows_the_contract(kind):
    model, pre, drop, rec, x, _ = build(kind)
    _, ys = run(model, rec, x, chunk=1, fused=False)
    with torch.no_grad():
        h = pre(x)
        for t in range(T):
            assert torch.equal(ys[t], contract_output(drop, h, t))
    assert any(not torch.equal(ys[0], ys[t]) for t in range(1, T))  # samples draw different masks


@pytest.mark.parametrize("kind", list(CASES))
@pytest.mark.parametrize("chunk", [3, None])
def test_batched_chunks_equal_one_sample_at_a_time(kind, chunk):
    model, _, _, rec, x, elementwise = build(kind)
    ref, ys_ref = run(model, rec, x, chunk=1, fused=False)
    r, ys = run(model, rec, x, chunk=chunk, fused=True)
    if elementwise:  # the same masks applied by the same elementwise arithmetic: bit for bit
        assert torch.equal(ys, ys_ref)
    else:  # the same masks; the GEMM over n stacked samples may round differently
        torch.testing.assert_close(ys, ys_ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(r, ref, rtol=1e-10, atol=1e-12)
    assert (r.var > 0).any()


@pytest.mark.parametrize("kind", ["Dropout", "DropPath row", "DropoutLinear", "DropConnectLinear"])
def test_half_inputs_take_the_sliced_path_with_the_same_masks(kind):
    model, _, _, rec, x, _ = build(kind, torch.bfloat16)
    _, ys_ref = run(model, rec, x, chunk=1, fused=False)
    _, ys = run(model, rec, x, chunk=3, fused=False)
    assert torch.equal(ys, ys_ref)


@pytest.mark.parametrize("tail", ["Dropout+Linear", "DropoutLinear"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fused_head_equals_one_sample_at_a_time(tail, dtype, tol):
    torch.manual_seed(0)
    head = [fnn.Dropout(0.3), torch.nn.Linear(40, 5)] if tail == "Dropout+Linear" else [fnn.DropoutLinear(40, 5, p=0.3)]
    model = torch.nn.Sequential(torch.nn.Linear(6, 40), torch.nn.Tanh(), *head).to(dtype).eval()
    x = torch.randn(37, 6, dtype=dtype)
    for logits in (True, False):
        a = mc_predict(model, x, samples=T, seed=SEED, offset=OFFSET, fused=True, logits=logits)
        b = mc_predict(model, x, samples=T, seed=SEED, offset=OFFSET, fused=False, chunk=1, logits=logits)
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)
    # and against the contract written out
    with torch.no_grad():
        h = model[1](model[0](x))
        lin = model[-1]
        ys = torch.stack([torch.nn.functional.linear(
            fastdrop.dropout(h, 0.3, seed=SEED, offset=OFFSET + t * 2 ** 32), lin.weight, lin.bias)
            for t in range(T)])
    torch.testing.assert_close(b.mean, ys.mean(0), rtol=tol, atol=tol)
    torch.testing.assert_close(b.var, ys.var(0), rtol=tol, atol=tol)


def test_second_call_of_a_module_is_k_1():
    class TwoCalls(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2 = torch.nn.Linear(6, 9), torch.nn.Linear(9, 9)
            self.drop, self.rec = fnn.DropConnectLinear(9, 9, p=0.5), Record()

        def forward(self, x):
            return self.rec(self.drop(self.l2(self.drop(torch.relu(self.l1(x))))))

    model = TwoCalls().double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    for chunk in (1, 4):
        model.rec.seen.clear()
        mc_predict(model, x, samples=T, seed=SEED, offset=OFFSET, chunk=chunk)
        ys = model.rec.per_sample(T)
        with torch.no_grad():
            for t in range(T):
                h = contract_output(model.drop, torch.relu(model.l1(x)), t, k=0)
                torch.testing.assert_close(ys[t], contract_output(model.drop, model.l2(h), t, k=1),
                                           rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("per_sample", [False, True])
@pytest.mark.parametrize("chunk", [None, 1])
def test_dropconnect_variance_matches_theory(per_sample, chunk):
    """The bug this fixes: with the default chunk every sample of a chunk shared one weight mask,
    and the predicted variance was 0. For one input row, output o is sum_i x_i W_oi m_oi / (1-p),
    so Var = p/(1-p) sum_i (x_i W_oi)^2; outputs use disjoint mask rows, hence the ratios
    (sample variance / Var) are independent with mean exactly 1: a one-sample t-test."""
    p, samples = 0.5, 64
    torch.manual_seed(1)
    model = fnn.DropConnectLinear(64, 256, p=p, per_sample=per_sample).double().eval()
    x = torch.randn(1, 64, dtype=torch.float64)
    r = mc_predict(model, x, samples=samples, seed=SEED, chunk=chunk)
    theory = p / (1 - p) * ((x * model.weight.detach()) ** 2).sum(1)
    ratio = (r.var[0] / theory).numpy()
    assert scipy.stats.ttest_1samp(ratio, 1.0).pvalue > 1e-3
    assert 0.8 < ratio.mean() < 1.2
    with torch.no_grad():
        torch.testing.assert_close(r.mean[0], model(x)[0], atol=6 * (theory / samples).sqrt().max().item(), rtol=0)


def test_dropconnect_default_chunk_equals_chunk_1():
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), fnn.DropConnectLinear(32, 4)).double().eval()
    x = torch.randn(16, 8, dtype=torch.float64)
    a = mc_predict(model, x, samples=40, seed=3)
    b = mc_predict(model, x, samples=40, seed=3, chunk=1, fused=False)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert a.var.mean() > 0.01


def test_large_dropconnect_weight_runs_by_sample_slices(monkeypatch):
    import fastdrop.nn.mc as mc
    model, _, _, rec, x, _ = build("DropConnectLinear")
    _, ys_ref = run(model, rec, x, chunk=3, fused=False)
    monkeypatch.setattr(mc, "_DROPCONNECT_BATCH_MAX", 1)
    _, ys = run(model, rec, x, chunk=3, fused=False)
    torch.testing.assert_close(ys, ys_ref, rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- refusals
class DropPath(torch.nn.Module):  # a stand-in for timm's class (timm is not installed)
    def __init__(self, drop_prob=0.0, scale_by_keep=True):
        super().__init__()
        self.drop_prob, self.scale_by_keep = drop_prob, scale_by_keep

    def forward(self, x):
        return x


DropPath.__module__ = "timm.layers.drop"


def test_torch_dropout_only_is_refused_with_names_and_convert_hint():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Dropout1d(0.1),
                                torch.nn.Dropout(0.5), torch.nn.Linear(8, 2), DropPath(0.1)).eval()
    x = torch.randn(3, 6)
    state = torch.get_rng_state()
    with pytest.raises(ValueError) as e:
        mc_predict(model, x)
    msg = str(e.value)
    assert "model.2 (torch.nn.Dropout1d)" in msg and "model.3 (torch.nn.Dropout)" in msg
    assert "model.5 (timm.layers.drop.DropPath)" in msg and "fastdrop.nn.convert" in msg
    assert torch.equal(torch.get_rng_state(), state)  # refused before the seed draw
    r = mc_predict(fnn.convert(model), x, samples=8, seed=0)  # what the message says works
    assert (r.var > 0).any()


def test_model_without_any_dropout_is_refused():
    with pytest.raises(ValueError, match="no stochastic module"):
        mc_predict(torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.ReLU()), torch.randn(2, 3))


def test_exported_program_is_refused_with_what_to_do():
    """An exported program's module calls fastdrop's ops without its modules, so mc_predict cannot
    drive it; the refusal said the model had no stochastic module and every sample would be the
    same forward, which is false (each call draws its own masks; helper hunt, 2026-12-06)."""
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), fnn.Dropout(0.5), torch.nn.Linear(8, 2))
    program = torch.export.export(model, (torch.randn(3, 6),)).module()
    x = torch.randn(3, 6)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="traced graph .* pass the model before export"):
        mc_predict(program, x)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(program(torch.ones(3, 6)), program(torch.ones(3, 6)))  # what the message says
    # a fastdrop module traced as torch.fx's root records its functional call (a review found the
    # check saw only fastdrop's torch ops)
    traced = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.fx.symbolic_trace(fnn.Dropout(0.5)))
    with pytest.raises(ValueError, match="traced graph"):
        mc_predict(traced, x)


@pytest.mark.parametrize("seed", [None, 3])
def test_tracing_modes_are_refused_before_the_seed_draw(seed):
    """mc_predict samples eagerly: under FakeTensorMode / make_fx it refuses with a message that
    says so (it used to fail on its first int() with torch's DataDependentOutputException), and
    torch's generator is untouched."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.proxy_tensor import make_fx
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), fnn.Dropout(0.5)).eval()
    x = torch.randn(4, 8)
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="mc_predict cannot run under make_fx, FakeTensorMode"):
        with FakeTensorMode(allow_non_fake_inputs=True):
            mc_predict(model, x, samples=4, seed=seed)
    with pytest.raises(RuntimeError, match="mc_predict cannot run under make_fx, FakeTensorMode"):
        make_fx(lambda t: mc_predict(model, t, samples=4, seed=seed).mean)(x)
    assert torch.equal(torch.get_rng_state(), state)


def test_fastdrop_modules_are_not_reported_as_torch_dropout():
    # fastdrop's Dropout* are torch.nn.Dropout* subclasses: they must not count as foreign
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), fnn.Dropout(0.5), fnn.Dropout1d(0.2)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = mc_predict(model, torch.randn(3, 2, 6), samples=4, seed=0)
    assert (r.var > 0).any()


def test_mixed_model_warns_about_the_layers_left_out():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Dropout(0.5), fnn.Dropout(0.5),
                                torch.nn.AlphaDropout(0.2)).eval()
    with pytest.warns(UserWarning, match=r"model\.1 \(torch\.nn\.Dropout\), model\.3 \(torch\.nn\.AlphaDropout\)"):
        mc_predict(model, torch.randn(3, 6), samples=4, seed=0)


def test_argument_errors():
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), fnn.Dropout(0.5)).eval()
    x = torch.randn(2, 6)
    with pytest.raises(TypeError, match="nn.Module"):
        mc_predict(lambda t: t, x)
    with pytest.raises(TypeError, match="tensor"):
        mc_predict(model, x.numpy())
    with pytest.raises(ValueError, match="samples"):
        mc_predict(model, x, samples=0)
    with pytest.raises(ValueError, match="chunk"):
        mc_predict(model, x, chunk=0)
    with pytest.raises(ValueError, match="offset"):
        mc_predict(model, x, samples=4, offset=2 ** 64 - 10)
    # flags must be bools: the string "False" is truthy, and logits="False" returned softmax
    # statistics (helper hunt, 2026-12-06)
    state = torch.get_rng_state()
    for flag in ("logits", "fused"):
        with pytest.raises(TypeError, match=flag):
            mc_predict(model, x, samples=4, **{flag: "False"})
    assert torch.equal(torch.get_rng_state(), state)


# ----------------------------------------------------------------------------- seeds and ranks
def test_seed_none_draws_one_seed_from_torch():
    model, _, _, rec, x, _ = build("DropConnectLinear")
    torch.manual_seed(9)
    a = mc_predict(model, x, samples=T, offset=OFFSET)
    torch.manual_seed(9)
    seed = _seeds.draw_torch_seed()
    b = mc_predict(model, x, samples=T, seed=seed, offset=OFFSET)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_seed_none_follows_the_rank_stream_rule(monkeypatch):
    model, _, _, rec, x, _ = build("Dropout")
    monkeypatch.setattr(_seeds, "_rank", lambda: 3)
    torch.manual_seed(9)
    a = mc_predict(model, x, samples=T, offset=OFFSET)
    torch.manual_seed(9)
    seed = _seeds.draw_torch_seed()
    torch.testing.assert_close(a, mc_predict(model, x, samples=T, seed=seed, offset=OFFSET + 3 * 2 ** 48),
                               rtol=0, atol=0)
    # an explicit seed names one set of masks on every rank
    explicit = mc_predict(model, x, samples=T, seed=seed, offset=OFFSET)
    monkeypatch.setattr(_seeds, "_rank", lambda: 0)
    torch.testing.assert_close(explicit, mc_predict(model, x, samples=T, seed=seed, offset=OFFSET), rtol=0, atol=0)
    assert not torch.equal(a.var, explicit.var)


def test_model_is_left_unchanged():
    model, _, drop, rec, x, _ = build("DropPath row")
    model.train()
    drop.eval()
    mc_predict(model, x, samples=3, seed=0)  # chunk 1: other modules are in training mode
    assert drop.training is False and model[0].training is True
    assert "forward" not in drop.__dict__
    # a forward set on the instance (accelerate's hooks do this) is used and kept
    model.eval()
    inner = drop.forward
    drop.forward = lambda h: inner(h) + 1.0
    with torch.no_grad():
        shifted = model(x)
    r = mc_predict(model, x, samples=3, seed=0, chunk=1, fused=False)
    assert (r.mean != 0).all()
    assert "forward" in drop.__dict__
    with torch.no_grad():
        assert torch.equal(model(x), shifted)


def test_threads_share_one_model():
    """mc_predict changes nothing in the model: calls from several threads, with their own seeds,
    give the single-threaded results, and eval forwards in another thread stay deterministic."""
    import threading
    model, _, _, _, x, _ = build("Dropout")
    model[3] = torch.nn.Identity().eval()  # no Record: threads would interleave its list
    expected = {s: mc_predict(model, x, samples=8, seed=s, chunk=3) for s in range(4)}
    with torch.no_grad():
        eval_out = model(x)
    errors = []

    def mc(seed):
        try:
            for _ in range(15):
                r = mc_predict(model, x, samples=8, seed=seed, chunk=3)
                if not (torch.equal(r.mean, expected[seed].mean) and torch.equal(r.var, expected[seed].var)):
                    errors.append(f"seed {seed}: another call's masks")
        except Exception as e:  # pragma: no cover - reported below
            errors.append(repr(e))

    def plain():
        with torch.no_grad():
            for _ in range(100):
                if not torch.equal(model(x), eval_out):
                    errors.append("an eval forward sampled")

    threads = [threading.Thread(target=mc, args=(s,)) for s in range(4)] + [threading.Thread(target=plain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:5]
    assert not any(m.training for m in model.modules())


def test_hooks_are_honoured():
    """The prefix split and the fused tail call layers, not the model: not where a hook would be
    bypassed (the model's own, a tail layer's, a global one)."""
    for make in (lambda: build("Dropout"), lambda: build("DropoutLinear")):
        model, _, _, _, x, _ = make()
        handle = model.register_forward_hook(lambda mod, inp, out: torch.full_like(out, 7.0))
        r = mc_predict(model, x, samples=T, seed=SEED)
        assert torch.equal(r.mean, torch.full_like(r.mean, 7.0)) and not r.var.any()
        handle.remove()
        handle = model.register_forward_pre_hook(lambda mod, inp: (torch.zeros_like(inp[0]),))
        zero = mc_predict(model, x, samples=T, seed=SEED)
        ref = mc_predict(model, torch.zeros_like(x), samples=T, seed=SEED, chunk=1, fused=False)
        handle.remove()
        torch.testing.assert_close(zero, ref, rtol=1e-12, atol=1e-12)
    # the fused tail [Dropout, Linear]: a hook on its Linear
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), fnn.Dropout(0.4), torch.nn.Linear(16, 3)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    model[2].register_forward_hook(lambda mod, inp, out: torch.full_like(out, 7.0))
    r = mc_predict(model, x, samples=T, seed=SEED)
    assert torch.equal(r.mean, torch.full_like(r.mean, 7.0))
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda mod, inp, out: torch.full_like(out, 3.0) if mod is model else None)
    try:
        r = mc_predict(model, x, samples=T, seed=SEED)
    finally:
        handle.remove()
    assert torch.equal(r.mean, torch.full_like(r.mean, 3.0))


class _SequenceFirst(torch.nn.Module):
    """Batch-first outside, (L, N, E) inside, as a sequence-first transformer block: the dropout
    input's dim 0 is not the batch."""

    def __init__(self, drop):
        super().__init__()
        self.lin, self.drop = torch.nn.Linear(2, 2).double(), drop

    def forward(self, x):
        return self.drop(self.lin(x).transpose(0, 1)).transpose(0, 1)


@pytest.mark.parametrize("make", [lambda: fnn.Dropout(0.5), lambda: fnn.Dropout1d(0.5),
                                  lambda: fnn.DropPath(0.5), lambda: fnn.DropPath(0.5, mode="batch")])
def test_models_that_move_the_batch_dim_run_one_sample_at_a_time(make):
    torch.manual_seed(0)
    model = _SequenceFirst(make()).eval()
    x = torch.randn(3, 4, 2, dtype=torch.float64)  # N = 3, L = 4: a chunk of 2 or 4 divides L
    ref = mc_predict(model, x, samples=8, seed=SEED, chunk=1)
    auto = mc_predict(model, x, samples=8, seed=SEED)
    torch.testing.assert_close(auto, ref, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="one at a time"):
        given = mc_predict(model, x, samples=8, seed=SEED, chunk=4)
    torch.testing.assert_close(given, ref, rtol=0, atol=0)


class _SetLevel(torch.nn.Module):
    """A set-level prediction: the examples' outputs pooled into one row (1, D), or into (D,)."""

    def __init__(self, width, keepdim):
        super().__init__()
        self.drop, self.keepdim = fnn.DropConnectLinear(4, width).double(), keepdim

    def forward(self, x):
        return self.drop(x).mean(0, keepdim=self.keepdim)


@pytest.mark.parametrize("width, keepdim", [(4, True), (5, False), (12, False), (24, False)])
def test_outputs_that_pool_the_batch_run_one_sample_at_a_time(width, keepdim):
    """Stacked samples pooled over the batch cannot be split back per sample: a batched output
    must have sample 0's shape with its dim 0 times the samples, else that chunk and the rest run
    one at a time. It failed with torch's reshape error from mc_predict's own code where the size
    did not divide, and where it did (a (D,) output, D a multiple of the chunk) the pooled rows
    were split as samples: other statistics, silently."""
    torch.manual_seed(0)
    model, x = _SetLevel(width, keepdim).eval(), torch.randn(8, 4, dtype=torch.float64)
    ref = mc_predict(model, x, samples=6, seed=SEED, chunk=1)
    torch.testing.assert_close(mc_predict(model, x, samples=6, seed=SEED), ref, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="one at a time"):
        torch.testing.assert_close(mc_predict(model, x, samples=6, seed=SEED, chunk=3), ref, rtol=0, atol=0)


def test_a_nan_in_the_input_keeps_the_samples_batched():
    """The check that a batched forward's first dropout input is the input repeated compared NaN
    with NaN as unequal: one NaN in the input made every chunk fall back to one sample at a time
    (with a warning blaming the model); the statistics are those of chunk=1 either way."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(fnn.Dropout(0.5), torch.nn.Linear(6, 3), torch.nn.ReLU(),
                                fnn.Dropout(0.3)).double().eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    x[2, 3] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = mc_predict(model, x, samples=8, seed=SEED, chunk=4)
    ref = mc_predict(model, x, samples=8, seed=SEED, chunk=1)  # (merged per chunk: rounding differs)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12, equal_nan=True)


class _Unbatched(torch.nn.Module):
    """An unbatched image into a Conv2d (C, H, W), as torch's Conv2d accepts: the samples cannot
    stack along dim 0 (the channels); the dropout module's input alone would stack."""

    def __init__(self):
        super().__init__()
        self.conv, self.drop = torch.nn.Conv2d(3, 4, 3).double(), fnn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.conv(x))


@pytest.mark.parametrize("build, shape", [
    (lambda: torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), fnn.DropConnectLinear(8, 3, p=0.3)), (6,)),
    (lambda: torch.nn.Sequential(fnn.Dropout(0.3), torch.nn.Linear(6, 8), torch.nn.ReLU(),
                                 torch.nn.Linear(8, 3)), (6,)),
    (lambda: torch.nn.Sequential(fnn.Dropout(0.3), torch.nn.Softmax(-1)), (6,)),
    (_Unbatched, (3, 5, 5)),
])
def test_unbatched_inputs_run_one_sample_at_a_time(build, shape):
    """An input without a batch dim (a 1-d vector into a Linear, an unbatched image into a Conv2d)
    cannot stack the samples along its dim 0: with the default chunk that failed inside (a reshape
    error, a Linear's shape error), or, for a model that only mixes the features (a softmax),
    would have mixed the samples silently. The samples run one at a time: chunk=1's statistics,
    a warning where chunk was asked for, and the fused tail still takes its own batched path."""
    torch.manual_seed(0)
    model = build().double().eval()
    x = torch.randn(shape, dtype=torch.float64)
    ref = mc_predict(model, x, samples=5, seed=SEED, chunk=1, fused=False)
    assert ref.mean.shape == model(x).shape
    torch.testing.assert_close(mc_predict(model, x, samples=5, seed=SEED), ref, rtol=1e-12, atol=1e-12)
    with pytest.warns(UserWarning, match="one at a time"):
        given = mc_predict(model, x, samples=5, seed=SEED, chunk=3, fused=False)
    torch.testing.assert_close(given, ref, rtol=0, atol=0)


def test_fused_tail_refuses_what_the_model_refuses():
    """The fused [Dropout, Linear] tail cast the Linear's weight to the input's dtype, so a model
    whose own forward fails on a float64 input (float32 weights) returned statistics on the fused
    path and raised on the others; it raises on every path now."""
    model = torch.nn.Sequential(fnn.Dropout(0.3), torch.nn.Linear(6, 2)).eval()
    x = torch.randn(5, 6, dtype=torch.float64)
    for fused in (True, False):
        with pytest.raises(RuntimeError, match="dtype"):
            mc_predict(model, x, samples=4, seed=0, fused=fused)


def _dropout_linear_head(change):
    m = torch.nn.Sequential(torch.nn.Linear(4, 6), fnn.DropoutLinear(6, 3)).eval()
    change(m[1])
    return m


def _set(name, value):
    return lambda layer: setattr(layer, name, value)


@pytest.mark.parametrize("make, error", [
    (lambda: _dropout_linear_head(_set("bias", torch.nn.Parameter(torch.randn(1)))), ValueError),
    (lambda: _dropout_linear_head(_set("weight", torch.nn.Parameter(torch.randn(3, 5)))), ValueError),
    (lambda: _dropout_linear_head(_set("weight", torch.nn.Parameter(torch.randn(3, 6, device="meta")))),
     ValueError),
    (lambda: _dropout_linear_head(_set("mode", "clasic")), ValueError),
    (lambda: _dropout_linear_head(_set("p", "0.5")), TypeError),
    (lambda: torch.nn.Sequential(fnn.Dropout(0.5), torch.nn.Linear(4, 3)).eval().apply(
        lambda m: setattr(m, "p", True) if isinstance(m, fnn.Dropout) else None), TypeError),
])
def test_fused_head_refuses_what_the_layers_refuse(make, error):
    """The fused head reads the layers' p, mode, weight and bias; it makes the checks their own
    forwards make (a bias of the wrong shape was broadcast, a weight left on the meta device gave
    statistics of uninitialized memory, p=True ran as 1, a misspelt mode as inverted): the same
    error as fused=False, and torch's generator as it was (seed=None)."""
    x = torch.randn(8, 4)
    for fused in (True, False):
        model = make()
        state = torch.get_rng_state()
        with pytest.raises(error):
            mc_predict(model, x, samples=4, fused=fused)
        assert torch.equal(torch.get_rng_state(), state)


def test_model_returning_a_tuple_is_refused():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), fnn.Dropout(0.5))
    with pytest.raises(TypeError, match="one tensor"):
        mc_predict(_Tupled(model), torch.randn(2, 4), samples=4, seed=1)


class _Summed(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = fnn.Dropout(0.5)

    def forward(self, x):
        return self.drop(x).sum()


@pytest.mark.parametrize("chunk, fused", [(None, True), (1, False), (4, False)])
def test_model_returning_a_scalar_is_refused_clearly(chunk, fused):
    """A 0-d output (a reduced loss) cannot be stacked per sample: a ValueError that says so (it
    was an IndexError from inside), on every path."""
    with pytest.raises(ValueError, match="0-d tensor"):
        mc_predict(_Summed().eval(), torch.randn(5, 4), samples=4, seed=1, chunk=chunk, fused=fused)


def test_numpy_integers_for_samples_and_chunk():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), fnn.Dropout(0.5)).eval()
    x = torch.randn(2, 4)
    ref = mc_predict(model, x, samples=6, seed=3, chunk=2)
    got = mc_predict(model, x, samples=np.int64(6), seed=3, chunk=np.int32(2))
    torch.testing.assert_close(got, ref, rtol=0, atol=0)
    for bad in (np.bool_(True), np.int64(0), 2.0):
        with pytest.raises(ValueError, match="samples must be a positive int"):
            mc_predict(model, x, samples=bad, seed=3)


def test_offset_room_is_exact():
    """Sample t's offsets run from offset + t * 2**32 to offset + (t + 1) * 2**32 - 1: the last
    sample may end exactly at 2**64 - 1, one more offset does not fit."""
    model = torch.nn.Sequential(fnn.Dropout(0.5)).eval()
    x = torch.randn(3, 4)
    mc_predict(model, x, samples=2, seed=1, offset=2**64 - 2**33)
    with pytest.raises(ValueError, match="leaves no room for 2 samples"):
        mc_predict(model, x, samples=2, seed=1, offset=2**64 - 2**33 + 1)


class _Tupled(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x), x


@pytest.mark.parametrize("kind", ["Dropout", "DropoutLinear", "DropConnectLinear", "Dropout2d"])
def test_empty_batch_and_input_that_requires_grad(kind):
    model, _, _, rec, x, _ = build(kind)
    empty = x[:0]
    for chunk in (1, 3):
        r = mc_predict(model, empty, samples=T, seed=SEED, chunk=chunk)
        assert r.mean.shape == (0, 3) and r.var.shape == (0, 3)
    model = torch.nn.Sequential(*list(model)[2:]).eval() if kind == "Dropout" else model  # Dropout first: x itself
    x = torch.randn(5, 16, dtype=torch.float64) if kind == "Dropout" else x
    x.requires_grad_()
    a = mc_predict(model, x, samples=T, seed=SEED, chunk=3)
    b = mc_predict(model, x.detach(), samples=T, seed=SEED, chunk=1, fused=False)
    torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_compiled_models_and_submodules():
    """A torch.compile'd model samples through its original module; a compiled submodule hands its
    fastdrop modules' inputs to the sampler eagerly. Both equal the eager model's statistics."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 16), fnn.Dropout(0.4), torch.nn.ReLU(), fnn.DropPath(0.3),
                            torch.nn.Linear(16, 3)).eval()
    x = torch.randn(5, 6)
    ref = mc_predict(m, x, samples=8, seed=3, chunk=1, fused=False)
    whole = torch.compile(m, backend="aot_eager")
    part = torch.nn.Sequential(m[0], torch.compile(torch.nn.Sequential(m[1], m[2]), backend="aot_eager"),
                               m[3], m[4]).eval()
    for model in (whole, part):
        with torch.no_grad():
            assert torch.equal(model(x), m(x))  # compiled in eval mode first
        torch.testing.assert_close(mc_predict(model, x, samples=8, seed=3), ref, rtol=1e-6, atol=1e-6)


def test_hooks_on_a_compiled_wrapper_run():
    """Hooks registered on the torch.compile wrapper itself run in every sample, as its own call
    runs them (mc_predict unwrapped it to the original module and lost them; a review,
    2026-12-07); the masks are the eager hooked model's."""
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(4, 8), fnn.Dropout(0.3), torch.nn.Linear(8, 2)).eval()
    x = torch.randn(3, 4)
    compiled = torch.compile(m, backend="eager")
    compiled.register_forward_pre_hook(lambda mod, args: (args[0] * 0.5 + 1,))
    eager = copy.deepcopy(m)
    eager.register_forward_pre_hook(lambda mod, args: (args[0] * 0.5 + 1,))
    want = mc_predict(eager, x, samples=6, seed=4)
    got = mc_predict(compiled, x, samples=6, seed=4)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert not torch.allclose(got.mean, mc_predict(m, x, samples=6, seed=4).mean)  # the hook ran


class _InPlaceCompiled(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.d, self.b = torch.nn.Linear(6, 6), fnn.Dropout(0.3), torch.nn.Linear(6, 3)

    def forward(self, x):
        return self.b(self.d(torch.relu(self.a(x))))


def test_fullgraph_compiled_parts_and_in_place_compile_sample_eagerly():
    """A model compiled in place (nn.Module.compile, torch's recommended form) or holding a block
    compiled with fullgraph=True: the block's fastdrop module reached the sampler through a graph
    break, which fullgraph refuses (Dynamo's "Unsupported" from inside the forward; a review).
    Compiled parts run eagerly while mc_predict samples: the eager model's statistics, and the
    compiled code runs as before after the call."""
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    plain = _InPlaceCompiled().eval()
    ref = mc_predict(plain, x, samples=6, seed=3)
    in_place = copy.deepcopy(plain)
    in_place.compile(backend="aot_eager", fullgraph=True)
    block = torch.nn.Sequential(torch.nn.Identity(), torch.compile(copy.deepcopy(plain), backend="aot_eager",
                                                                   fullgraph=True)).eval()
    for model in (in_place, block):
        with torch.no_grad():
            assert torch.equal(model(x), plain(x))
        torch.testing.assert_close(mc_predict(model, x, samples=6, seed=3), ref, rtol=1e-6, atol=1e-6)
        with torch.compiler.set_stance("fail_on_recompile"), torch.no_grad():
            assert torch.equal(model(x), plain(x))  # its graph, compiled before


def test_overlapping_calls_share_the_eager_stance_and_put_it_back():
    """torch's stance is one process-wide value that each set_stance saves and puts back: two
    mc_predict calls on models with compiled parts, overlapping on two threads, put it back out
    of order, so the second sampled its fullgraph block compiled (Dynamo's Unsupported) and the
    process stayed in force_eager, compiling nothing more (a review). The first to enter sets it,
    the last to leave puts back the stance found."""
    import threading
    import torch._dynamo.eval_frame as eval_frame
    torch._dynamo.reset()
    b_inside, a_done = threading.Event(), threading.Event()

    class Gate(torch.nn.Module):
        def __init__(self, wait, announce):
            super().__init__()
            self.wait, self.announce = wait, announce

        def forward(self, h):
            if self.announce is not None:
                self.announce.set()
            if self.wait is not None:
                assert self.wait.wait(60)
            return h

    def model(wait, announce):
        torch.manual_seed(0)
        block = torch.nn.Sequential(torch.nn.Linear(4, 4), fnn.Dropout(0.5))
        block.compile(backend="aot_eager", fullgraph=True)
        return torch.nn.Sequential(Gate(wait, announce), block).eval()
    x = torch.randn(3, 4)
    ref = mc_predict(model(None, None), x, samples=2, seed=5, chunk=1)  # alone
    got = {}

    def run(key, m, after=None):
        try:
            got[key] = mc_predict(m, x, samples=2, seed=5, chunk=1)
        except Exception as e:  # (reported below)
            got[key] = e
        if after is not None:
            after.set()
    a = threading.Thread(target=run, args=("a", model(b_inside, None), a_done))
    b = threading.Thread(target=run, args=("b", model(a_done, b_inside)))
    a.start()
    b.start()
    a.join(60)
    b.join(60)
    assert eval_frame._stance.stance == "default"
    for key in "ab":
        assert not isinstance(got[key], Exception), got[key]
        torch.testing.assert_close(got[key], ref, rtol=0, atol=0)


def test_compiled_functions_inside_the_forward_are_named_and_calls_from_compiled_code_run_eagerly():
    """A function compiled with fullgraph=True inside the forward (a decorated forward, a compiled
    method set as an attribute) cannot hand a fastdrop module's input to the sampler, and
    mc_predict sees modules, not functions: refused with a message saying what to compile
    instead, the draw given back (it was Dynamo's bare Unsupported). mc_predict called from a
    compiled function runs eagerly (it failed at torch's set_stance inside the trace)."""
    class Decorated(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.drop = torch.nn.Linear(4, 4), fnn.Dropout(0.5)

        @torch.compile(backend="eager", fullgraph=True)
        def forward(self, h):
            return self.drop(self.lin(h))
    x, decorated = torch.randn(3, 4), Decorated().eval()
    state = torch.get_rng_state()
    with pytest.raises(RuntimeError, match="compile the module instead"):
        mc_predict(decorated, x, samples=2)
    assert torch.equal(state, torch.get_rng_state())
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(4, 4), fnn.Dropout(0.5))
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), copy.deepcopy(block)).eval()
    model[1].compile(backend="aot_eager", fullgraph=True)
    want = mc_predict(torch.nn.Sequential(model[0], block).eval(), x, samples=3, seed=2).var
    got = torch.compile(lambda t: mc_predict(model, t, samples=3, seed=2).var, backend="aot_eager")(x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_another_threads_mc_predict_leaves_compiled_models_alone():
    """Every fastdrop module's forward asks whether its thread is inside mc_predict. It read a
    process-wide count of running calls, which Dynamo guarded on: a compiled model recompiled
    whenever another thread started or ended an mc_predict call (fullgraph=True then failed at the
    recompile limit; `fail_on_recompile` at the first), and a count changed during a trace left a
    graph that skipped the sampler (helper hunt, 2026-12-06). The question is thread-local now:
    while another thread samples (held inside its forward), this thread's compiled model runs its
    graph without recompiling, and the sampling thread's statistics equal a run alone."""
    import threading
    torch._dynamo.reset()
    inside, release = threading.Event(), threading.Event()

    class Hold(torch.nn.Module):
        def forward(self, h):
            inside.set()
            assert release.wait(60)
            return h

    sampled = torch.nn.Sequential(torch.nn.Linear(6, 8), fnn.Dropout(0.5), Hold(), torch.nn.Linear(8, 2)).eval()
    x = torch.randn(3, 6)
    ref = mc_predict(torch.nn.Sequential(*[m for m in sampled if not isinstance(m, Hold)]), x, samples=4, seed=2)
    inside.clear()
    compiled = torch.compile(torch.nn.Sequential(torch.nn.Linear(6, 8), fnn.Dropout(0.5), fnn.DropPath(0.2)),
                             fullgraph=True, backend="aot_eager")
    x2 = torch.randn(4, 6)
    compiled(x2)
    got = {}
    worker = threading.Thread(target=lambda: got.setdefault("r", mc_predict(sampled, x, samples=4, seed=2)))
    worker.start()
    try:
        assert inside.wait(60)
        with torch.compiler.set_stance("fail_on_recompile"):
            for _ in range(3):
                compiled(x2)
    finally:
        release.set()
        worker.join(60)
    torch.testing.assert_close(got["r"], ref, rtol=0, atol=0)


def test_a_compiled_block_first_run_in_eval_samples_under_mc_predict():
    """A compiled block (Linear + Dropout) first run by a plain eval forward, then sampled: its
    graph for "no sampler on this thread" must not be reused inside mc_predict (a version of the
    thread-local question whose guard Dynamo read through the class attribute did reuse it:
    variance 0.016 against 0.17). Equal to the same modules uncompiled."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Linear(8, 8), fnn.Dropout(0.5))
    model = torch.nn.Sequential(torch.compile(block, backend="aot_eager"), fnn.Dropout(0.1),
                                torch.nn.Linear(8, 2)).eval()
    plain = torch.nn.Sequential(block, model[1], model[2]).eval()
    x = torch.randn(16, 8)
    with torch.no_grad():
        model(x)
    got = mc_predict(model, x, samples=16, seed=1, chunk=1)
    want = mc_predict(plain, x, samples=16, seed=1, chunk=1)
    assert torch.equal(got.mean, want.mean) and torch.equal(got.var, want.var)


class _Unused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin, self.drop = torch.nn.Linear(4, 3), fnn.Dropout(0.5)

    def forward(self, x):  # the dropout module is never called
        return self.lin(x)


def test_fastdrop_modules_that_never_run_are_refused_not_zero_variance():
    """A model whose fastdrop modules exist but do not run in its forward would give every sample
    the same output (variance 0): refused."""
    with pytest.raises(ValueError, match="none of the model's fastdrop stochastic modules ran"):
        mc_predict(_Unused().eval(), torch.randn(2, 4), samples=4, seed=1)


@pytest.mark.parametrize("others", [False, True])
def test_fused_attention_path_is_off_while_sampling(others):
    """torch's TransformerEncoderLayer(batch_first=True) takes a fused path in eval mode without
    autograd that skips its (converted) dropout modules: alone, every sample was the same (refused);
    with another fastdrop layer in the model, the layer's dropouts were silently left out (a
    variance 11% low). mc_predict keeps the calling thread off that path while it samples (a
    torch-function mode that changes nothing), without torch's process-wide switch, which other
    threads' forwards read (it stays on during the call): the statistics equal those with the
    switch off."""
    class Switch(torch.nn.Module):
        def forward(self, h):
            seen.append(torch.backends.mha.get_fastpath_enabled())
            return h

    seen = []
    torch.manual_seed(0)
    layers = [torch.nn.Linear(4, 16), torch.nn.Dropout(0.2)] if others else [torch.nn.Linear(4, 16)]
    model = fnn.convert(torch.nn.Sequential(
        *layers, torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.3, batch_first=True), Switch(),
        torch.nn.Linear(16, 3))).eval()
    x = torch.randn(3, 5, 4)
    enabled = torch.backends.mha.get_fastpath_enabled()
    assert enabled  # (torch's default: the case that skipped the dropouts)
    got = mc_predict(model, x, samples=8, seed=1)
    assert seen and all(seen)
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        ref = mc_predict(model, x, samples=8, seed=1, chunk=1, fused=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(enabled)
    torch.testing.assert_close(got, ref)
    assert ref.var.max() > 0


class _Wrap(torch.nn.Module):
    """The model behind a module that is not an nn.Sequential: mc_predict runs its forward whole."""

    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, x):
        return self.m(x)


class _Residual(torch.nn.Sequential):
    def forward(self, x):
        return x + super().forward(x)


class _MLPBlock(torch.nn.Sequential):  # its own __init__, as torchvision.ops.MLP
    def __init__(self, d, p):
        super().__init__(torch.nn.Linear(d, d), torch.nn.ReLU(), fnn.Dropout(p), torch.nn.Linear(d, d))


class _ReluDropoutLinear(fnn.DropoutLinear):
    def forward(self, x):
        return torch.relu(super().forward(x))


def _fast_path_models():
    torch.manual_seed(0)
    return {
        # the prefix is reused across samples: an in-place first layer of the rest wrote into it
        "inplace-after-prefix": torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Sequential(
            torch.nn.ELU(inplace=True), fnn.Dropout(0.5), torch.nn.Linear(8, 3))),
        # a Sequential subclass's own forward was skipped by the prefix split / fused head
        "residual-sequential": _Residual(torch.nn.Linear(4, 4), torch.nn.ReLU(), fnn.Dropout(0.3),
                                         torch.nn.Linear(4, 4)),
        # slicing a Sequential subclass called its __init__ (TypeError)
        "sequential-subclass-init": _MLPBlock(4, 0.3),
        # no prefix: a first layer writing its input in place changed x for every later sample
        "inplace-first-layer": torch.nn.Sequential(torch.nn.Sequential(torch.nn.ELU(inplace=True), fnn.Dropout(0.5)),
                                                   torch.nn.Linear(4, 3)),
        # the prefix ran on x itself: its in-place first layer wrote the caller's tensor (a review)
        "inplace-prefix": torch.nn.Sequential(torch.nn.ReLU(inplace=True), torch.nn.Linear(4, 8), fnn.Dropout(0.5),
                                              torch.nn.Linear(8, 3)),
        # the fused head stood in for a DropoutLinear subclass's forward
        "dropout-linear-subclass-tail": torch.nn.Sequential(torch.nn.Linear(4, 8), _ReluDropoutLinear(8, 3, p=0.3)),
        "dropout-linear-subclass": _ReluDropoutLinear(4, 3, p=0.3),
    }


@pytest.mark.parametrize("name", list(_fast_path_models()))
def test_fast_paths_equal_the_models_own_forward(name):
    """The prefix split and the fused head stand in for the model's forward only where they are
    the same computation: every fast-path combination equals the model run whole, one sample at a
    time (behind a wrapper that is no Sequential), with the same masks."""
    model = _fast_path_models()[name].eval()
    x = torch.randn(5, 4)
    x0 = x.clone()
    # the reference: T forwards of the model, each on the input as given
    torch.manual_seed(0)
    ref = mc_predict(_Wrap(model), x, samples=6, seed=3, chunk=1, fused=False)
    assert torch.equal(x, x0), "mc_predict changed its input"
    for kw in ({}, {"chunk": 1}, {"fused": False}, {"chunk": 1, "fused": False}):
        r = mc_predict(model, x, samples=6, seed=3, **kw)
        assert torch.equal(x, x0), f"mc_predict changed its input ({kw})"
        torch.testing.assert_close(r.mean, ref.mean, rtol=1e-6, atol=1e-6, msg=f"{name} {kw}")
        torch.testing.assert_close(r.var, ref.var, rtol=1e-5, atol=1e-6, msg=f"{name} {kw}")


def test_input_the_model_unwraps_is_not_refused():
    """x need not be what a fastdrop layer sees: a jagged NestedTensor padded by the model's first
    module is a valid input (a pre-check on x's type refused it)."""
    class Pad(torch.nn.Module):
        def forward(self, x):
            return x.to_padded_tensor(0.0)
    torch.manual_seed(0)
    model = torch.nn.Sequential(Pad(), torch.nn.Linear(4, 3), fnn.Dropout(0.3), torch.nn.Linear(3, 2)).eval()
    x = torch.nested.nested_tensor([torch.randn(3, 4), torch.randn(2, 4)], layout=torch.jagged)
    r = mc_predict(model, x, samples=4, seed=1)
    assert r.mean.shape == (2, 3, 2) and (r.var > 0).any()


def test_a_failed_call_gives_its_draw_back_only_if_nothing_drew_since():
    """mc_predict with seed=None gives its draw back when the model fails, but a draw another
    thread made from torch's generator meanwhile stays drawn (the whole generator went back: that
    thread's draw came out again at the next call)."""
    import threading
    drew, go = threading.Event(), threading.Event()

    class Failing(torch.nn.Module):
        def forward(self, h):
            drew.set()
            go.wait(10)
            raise RuntimeError("boom")
    model = torch.nn.Sequential(fnn.Dropout(0.5), Failing()).eval()

    def failing_call():
        with pytest.raises(RuntimeError, match="boom"):
            mc_predict(model, torch.randn(2, 8), samples=2, chunk=1)
    torch.manual_seed(3)
    t = threading.Thread(target=failing_call)
    t.start()
    assert drew.wait(10)
    meanwhile = fastdrop.dropout(torch.ones(64), 0.5)  # another seed=None draw
    go.set()
    t.join()
    assert not any(torch.equal(fastdrop.dropout(torch.ones(64), 0.5), meanwhile) for _ in range(3))
    x = torch.randn(2, 8)
    state = torch.get_rng_state()  # alone, a failed call leaves the generator as it found it
    with pytest.raises(RuntimeError, match="boom"):
        mc_predict(model, x, samples=2, chunk=1)
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("batch_first", [False, True])
def test_sequence_first_attention_runs_one_sample_at_a_time(batch_first):
    """torch's transformer layers default to (L, N, E): stacking the samples along dim 0 made one
    longer sequence of them, which attention mixed silently (a converted nn.TransformerEncoder's
    mean and variance were 0.04 / 0.10 off chunk=1's). A sequence-first MultiheadAttention in the
    model runs the samples one at a time (a warning where chunk was asked for); batch-first
    models keep batching, with chunk=1's statistics."""
    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.2, batch_first=batch_first)
    model = fnn.convert(torch.nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)).double().eval()
    x = torch.randn(4, 5, 16, dtype=torch.float64)
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # (its eval fast path skips the dropout modules)
    try:
        ref = mc_predict(model, x, samples=6, seed=SEED, chunk=1, fused=False)
        torch.testing.assert_close(mc_predict(model, x, samples=6, seed=SEED), ref, rtol=1e-10, atol=1e-10)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            given = mc_predict(model, x, samples=6, seed=SEED, chunk=3, fused=False)
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    assert any("sequence-first" in str(w.message) for w in caught) == (not batch_first)
    torch.testing.assert_close(given, ref, rtol=1e-10, atol=1e-10)


class _Recurrent(torch.nn.Module):
    """Dropout before an LSTM, its output at every step: shapes that stack along dim 0 either way,
    and a recurrence that carries across dim 0 when that is the sequence."""

    def __init__(self, batch_first):
        super().__init__()
        self.drop, self.rnn = fnn.Dropout(0.3), torch.nn.LSTM(6, 5, batch_first=batch_first)

    def forward(self, x):
        return self.rnn(self.drop(x))[0]


@pytest.mark.parametrize("batch_first", [False, True])
def test_sequence_first_recurrence_runs_one_sample_at_a_time(batch_first):
    """An LSTM with torch's default (L, N, H) layout carried its state from one stacked sample to
    the next (every shape check passed: the outputs stack along dim 0). The RNN rule runs the
    samples one at a time, with chunk=1's statistics; a batch-first LSTM keeps batching."""
    torch.manual_seed(0)
    model = _Recurrent(batch_first).double().eval()
    x = torch.randn(4, 3, 6, dtype=torch.float64)
    ref = mc_predict(model, x, samples=5, seed=SEED, chunk=1, fused=False)
    torch.testing.assert_close(mc_predict(model, x, samples=5, seed=SEED), ref, rtol=1e-10, atol=1e-10)


def test_fused_head_refuses_an_input_without_memory():
    """[Dropout, Linear] runs all samples in one kernel call over the input's memory: an input
    whose storage was cut short gets check_storage's ValueError (it read past the storage:
    garbage in the mean), one freed to 0 bytes that error instead of numpy's."""
    model = torch.nn.Sequential(fnn.Dropout(0.3), torch.nn.Linear(6, 3))
    for nbytes in (16, 0):
        x = torch.randn(5000, 6)
        x.untyped_storage().resize_(nbytes)
        with pytest.raises(ValueError, match="no memory for its elements"):
            mc_predict(model, x, samples=4, seed=1)


class _UnbatchedSequence(torch.nn.Module):
    """Dropout, then batch-first attention or an LSTM: torch's layers take a 2-d input (L, E) as
    one unbatched sequence, whatever batch_first."""

    def __init__(self, kind, embed=False):
        super().__init__()
        self.embed = torch.nn.Embedding(20, 8) if embed else None
        self.drop = fnn.Dropout(0.5)
        self.kind = kind
        self.layer = torch.nn.MultiheadAttention(8, 2, batch_first=True) if kind == "attention" else \
            torch.nn.LSTM(8, 8, batch_first=True)

    def forward(self, x):
        h = self.drop(self.embed(x) if self.embed is not None else x)
        return self.layer(h, h, h, need_weights=False)[0] if self.kind == "attention" else self.layer(h)[0]


@pytest.mark.parametrize("kind", ["attention", "lstm"])
def test_an_unbatched_sequence_runs_one_sample_at_a_time(kind):
    """A 2-d float input (L, E) of a model with attention or a recurrence may be one unbatched
    sequence: stacked along dim 0 the samples made one longer sequence, which attention mixed and
    the LSTM carried from sample to sample (means 0.16 / 0.11 off chunk=1's, silently). Such input
    runs one sample at a time (a warning where chunk was asked for); batched input, (N, L, E) or
    token ids (N, L), keeps batching, with chunk=1's statistics."""
    torch.manual_seed(0)
    model = _UnbatchedSequence(kind).double().eval()
    x = torch.randn(6, 8, dtype=torch.float64)
    ref = mc_predict(model, x, samples=6, seed=SEED, chunk=1)
    torch.testing.assert_close(mc_predict(model, x, samples=6, seed=SEED), ref, rtol=1e-10, atol=1e-10)
    with pytest.warns(UserWarning, match="may be one unbatched sequence"):
        torch.testing.assert_close(mc_predict(model, x, samples=6, seed=SEED, chunk=3), ref, rtol=1e-10, atol=1e-10)
    batched = torch.randn(3, 6, 8, dtype=torch.float64)
    tokens = torch.randint(0, 20, (3, 6))
    for m, inp in ((model, batched), (_UnbatchedSequence(kind, embed=True).double().eval(), tokens)):
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # batched: no fallback, no warning
            got = mc_predict(m, inp, samples=6, seed=SEED, chunk=3)
        torch.testing.assert_close(got, mc_predict(m, inp, samples=6, seed=SEED, chunk=1), rtol=1e-10, atol=1e-10)


class _Counted(torch.nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.layer, self.calls = layer, 0

    def forward(self, h):
        self.calls += 1
        return self.layer(h)


def test_batched_two_d_inputs_of_sequence_models_keep_batching():
    """Only a 2-d float input as wide as the embedding of an attention / recurrent layer is taken
    for one unbatched sequence: a batch of series (N, L) unsqueezed for an LSTM(input_size=1), or
    a batch of feature rows (N, F) embedded for attention, keep batching (two forwards for 8
    samples: sample 0 alone, then the rest), with chunk=1's statistics."""
    class Series(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop, self.rnn = fnn.Dropout(0.3), torch.nn.LSTM(1, 4, batch_first=True)

        def forward(self, x):
            return self.rnn(self.drop(x).unsqueeze(-1))[0][:, -1]

    class Tabular(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.drop = torch.nn.Linear(1, 8), fnn.Dropout(0.3)
            self.attn = torch.nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            h = self.embed(self.drop(x).unsqueeze(-1))
            return self.attn(h, h, h, need_weights=False)[0].mean(1)

    torch.manual_seed(0)
    for inner, x in ((Series(), torch.randn(5, 7)), (Tabular(), torch.randn(5, 6))):
        model = _Counted(inner.double()).eval()
        ref = mc_predict(model, x.double(), samples=8, seed=SEED, chunk=1)
        model.calls = 0
        torch.testing.assert_close(mc_predict(model, x.double(), samples=8, seed=SEED), ref, rtol=1e-10, atol=1e-10)
        assert model.calls == 2, type(inner).__name__


def test_a_compiled_encoder_layer_samples_its_dropouts():
    """Dynamo traces torch's fused-path condition of a compiled TransformerEncoderLayer as it finds
    it, so the sampling thread's torch-function mode could not keep that layer off the fused path,
    which skips its dropout modules (the samples lacked them, silently; then refused, naming the
    layer and torch's switch). Compiled parts now run eagerly while mc_predict samples: the layer
    samples as the uncompiled one, with torch's switch on, and its compiled graph runs after."""
    torch.manual_seed(0)
    enc = fnn.convert(torch.nn.TransformerEncoderLayer(16, 2, 32, dropout=0.3, batch_first=True))
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), fnn.Dropout(0.2), enc, torch.nn.Linear(16, 3)).eval()
    x = torch.randn(3, 5, 4)
    ref = mc_predict(model, x, samples=6, seed=SEED, chunk=1, fused=False)
    assert torch.backends.mha.get_fastpath_enabled()
    model[2] = torch.compile(enc, backend="eager")
    with torch.no_grad():
        eval_out = model(x)  # (compiled in eval mode first: the fused path's graph)
    torch.testing.assert_close(mc_predict(model, x, samples=6, seed=SEED), ref, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model(x), eval_out)


class _TwoEncoders(torch.nn.Module):
    """Two encoder layers, the second never called (a spare head, an early exit)."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.b = torch.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)

    def forward(self, x):
        return self.a(x).mean(1)


def test_an_encoder_layer_the_model_never_calls_is_not_refused():
    """A layer the model never calls, eager or compiled, is not refused (a check for compiled
    encoder layers that skipped their dropouts refused the compiled one, whatever the switch
    said): the warning names its modules, and the samples equal the eager model's."""
    torch.manual_seed(0)
    model = fnn.convert(_TwoEncoders()).eval()
    x = torch.randn(3, 5, 8)
    with pytest.warns(UserWarning, match="did not run"):
        ref = mc_predict(model, x, samples=4, seed=SEED)
    assert ref.var.max() > 0
    model.b = torch.compile(model.b, backend="eager")
    with pytest.warns(UserWarning, match="did not run"):
        torch.testing.assert_close(mc_predict(model, x, samples=4, seed=SEED), ref)


class _DropsInPlace(torch.nn.Module):
    """A forward that relies on the in-place write, its result unused (torch's
    Dropout(inplace=True) allows it)."""

    def __init__(self, drop):
        super().__init__()
        self.lin, self.drop, self.out = torch.nn.Linear(6, 8), drop, torch.nn.Linear(8, 2)

    def forward(self, x):
        h = torch.relu(self.lin(x))
        self.drop(h)
        return self.out(h)


@pytest.mark.parametrize("make", [
    lambda inplace: fnn.Dropout(0.5, inplace=inplace), lambda inplace: fnn.Dropout1d(0.5, inplace=inplace),
    lambda inplace: fnn.DropPath(0.5, inplace=inplace), lambda inplace: fnn.DropPath(0.5, mode="batch", inplace=inplace)])
@pytest.mark.parametrize("chunk", [None, 1])
def test_inplace_modules_write_their_input_under_mc_predict(make, chunk):
    """An inplace module samples in place under mc_predict as in a forward: the model that only
    uses the write gets the same predictions as the same model using the result (before
    2026-12-06 the sample was a new tensor, the write never happened, and the variance was 0)."""
    torch.manual_seed(0)
    writes = _DropsInPlace(make(True)).eval()
    torch.manual_seed(0)
    reference = _DropsInPlace(make(False)).eval()
    reference.forward = lambda x: reference.out(reference.drop(torch.relu(reference.lin(x))))
    x = torch.randn(4, 6)
    got = mc_predict(writes, x, samples=16, seed=3, chunk=chunk)
    want = mc_predict(reference, x, samples=16, seed=3, chunk=chunk)
    assert torch.equal(got.mean, want.mean) and torch.equal(got.var, want.var)
    assert got.var.max() > 0


class _AlwaysOnDropout(torch.nn.Dropout):
    """The common MC-dropout recipe: a torch dropout subclass that stays on in eval."""

    def forward(self, x):
        return torch.nn.functional.dropout(x, self.p, True)


class _InputNoise(torch.nn.Module):
    def forward(self, x):
        return x + torch.randn_like(x)


@pytest.mark.parametrize("prefix_layer", ["always-on dropout subclass", "noise layer"])
def test_a_random_prefix_is_not_run_once(prefix_layer):
    """The layers before the first fastdrop module ran once for all samples, freezing any
    randomness there (a review, 2026-12-06: variance 0.019 against a loop's 0.038). A detected
    foreign dropout layer in the prefix, or chunk=1 asked for, now runs the whole forward per
    sample: mc_predict's statistics are those of the model's own forwards."""
    torch.manual_seed(0)
    random = _AlwaysOnDropout(0.5) if prefix_layer == "always-on dropout subclass" else _InputNoise()
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), random, torch.nn.Linear(16, 16),
                                fnn.Dropout(0.1), torch.nn.Linear(16, 2)).eval()
    x = torch.randn(3, 6)
    kw = {} if prefix_layer == "always-on dropout subclass" else dict(chunk=1, fused=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (the foreign-dropout warning)
        r = mc_predict(model, x, 600, seed=1, **kw)
    model[3].train()  # the loop's forwards with fastdrop's dropout on, as mc_predict samples it
    with torch.no_grad():
        loop = torch.stack([model(x) for _ in range(600)])
    # the prefix's randomness dominates: a frozen prefix has about half the loop's variance
    ratio = (r.var.mean() / loop.var(0).mean()).item()
    assert 0.8 < ratio < 1.25, ratio


@pytest.mark.parametrize("shape", ["(N,)", "(N, 1)"])
def test_logits_without_a_class_dim_is_refused(shape):
    """logits=True on one logit per example took the softmax over the batch (an (N,) output) or
    over one class: refused with a ValueError (a review, 2026-12-06), and the draw given back."""
    layers = [torch.nn.Linear(4, 8), fnn.Dropout(0.5), torch.nn.Linear(8, 1)]
    if shape == "(N,)":
        layers.append(torch.nn.Flatten(0))
    model = torch.nn.Sequential(*layers).eval()
    x = torch.randn(6, 4)
    state = torch.get_rng_state()
    with pytest.raises(ValueError, match="class dim"):
        mc_predict(model, x, 8, logits=True)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("kind", ["vector", "image"])
def test_logits_of_an_unbatched_input_are_its_classes(kind):
    """An unbatched input (a 1-d vector, a (C, H, W) image) gives a (K,) output: its classes, not
    a batch, so logits=True takes it (a review found the first class-dim check refused it)."""
    torch.manual_seed(0)
    if kind == "vector":
        model, x = torch.nn.Sequential(torch.nn.Linear(8, 16), fnn.Dropout(0.3), torch.nn.Linear(16, 4)), \
            torch.randn(8)
    else:
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Flatten(0), fnn.Dropout(0.3),
                                    torch.nn.Linear(4 * 6 * 6, 5))
        x = torch.randn(3, 8, 8)
    r = mc_predict(model.eval(), x, 6, seed=1, logits=True)
    assert r.mean.shape == (model[-1].out_features,) and r.entropy.shape == ()
    assert torch.allclose(r.mean.sum(), torch.tensor(1.0, dtype=r.mean.dtype))


class _FusedAttention(torch.nn.Module):
    """timm's Attention with fused_attn=True: attn_drop's p goes to scaled_dot_product_attention,
    the module itself is never called."""

    def __init__(self, fused=True):
        super().__init__()
        self.fused = fused
        self.qkv, self.proj = torch.nn.Linear(16, 48), torch.nn.Linear(16, 16)
        self.attn_drop, self.proj_drop = fnn.Dropout(0.5), fnn.Dropout(0.1)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, 4, 4).permute(2, 0, 3, 1, 4).unbind(0)
        if self.fused:
            o = torch.nn.functional.scaled_dot_product_attention(
                q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        else:
            o = self.attn_drop((q @ k.mT * 0.5).softmax(-1)) @ v
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(B, N, C)))


def test_modules_the_forward_never_calls_and_attention_floats_are_named():
    """Attention dropout that mc_predict cannot sample is named in a warning, not left out
    silently (a review, 2026-12-06): a fastdrop module the forward never calls (timm's fused
    attention passes attn_drop.p to scaled_dot_product_attention: zero variance from it), and
    nn.MultiheadAttention's dropout, a float inside the layer (nn.TransformerEncoderLayer after
    convert). A model whose modules all run warns of neither."""
    x = torch.randn(3, 5, 16)
    with pytest.warns(UserWarning, match=r"did not run .*model\.attn_drop \(Dropout\)"):
        mc_predict(_FusedAttention().eval(), x, samples=4, seed=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert mc_predict(_FusedAttention(fused=False).eval(), x, samples=4, seed=SEED).var.max() > 0
    enc = fnn.convert(torch.nn.TransformerEncoderLayer(16, 4, 32, dropout=0.2, batch_first=True)).eval()
    with pytest.warns(UserWarning, match=r"MultiheadAttention .*model\.self_attn \(dropout=0\.2\)"):
        mc_predict(enc, x, samples=4, seed=SEED)


class _StackedLSTM(torch.nn.Module):
    def __init__(self, layers, dropout):
        super().__init__()
        self.rnn = torch.nn.LSTM(16, 8, layers, dropout=dropout, batch_first=True)
        self.drop, self.head = fnn.Dropout(0.3), torch.nn.Linear(8, 2)

    def forward(self, x):
        return self.head(self.drop(self.rnn(x)[0][:, -1]))


def test_a_stacked_recurrent_layers_dropout_float_is_named():
    """nn.LSTM / GRU / RNN's dropout between stacked layers is a float inside the layer, as
    MultiheadAttention's: named in a warning, not left out of the variance silently (a review).
    One layer (torch ignores the float there) or dropout 0 warns of nothing."""
    x = torch.randn(3, 5, 16)
    with pytest.warns(UserWarning, match=r"recurrent layers .*model\.rnn \(dropout=0\.25\)"):
        mc_predict(_StackedLSTM(2, 0.25).eval(), x, samples=4, seed=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in (_StackedLSTM(2, 0.0), _StackedLSTM(1, 0.0)):
            assert mc_predict(model.eval(), x, samples=4, seed=SEED).var.max() > 0


class _Attention(torch.nn.Module):
    """A ViT-style attention block whose attention dropout is fastdrop.nn.DropoutMatmul; values
    from the input (stacked with the scores) or a shared parameter (broadcast over the batch)."""

    def __init__(self, shared_values=False, d=8, heads=2, length=5):
        super().__init__()
        self.heads, self.shared = heads, shared_values
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, 3)
        self.values = torch.nn.Parameter(torch.randn(heads, length, d // heads))
        self.drop, self.rec = fnn.DropoutMatmul(0.3), Record()
        self.seen = []  # (scores, values) handed to the dropout, per forward

    def forward(self, x):
        n, length, d = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax(q @ k.mT / (d // self.heads) ** 0.5, -1)
        v = self.values if self.shared else v
        self.seen.append((attn, v))
        out = self.rec(self.drop(attn, v))
        return self.proj(out.transpose(1, 2).reshape(n, length, d)).mean(1)


@pytest.mark.parametrize("shared_values", [False, True])
def test_attention_dropout_module_is_sampled_by_the_contract(shared_values):
    """fastdrop.nn.DropoutMatmul (attention's dropout(attn) @ v) is sampled as the other modules:
    sample t's output is the public op on that sample's scores with (seed, offset + t * 2**32),
    batched chunks equal one sample at a time, and the samples differ. A functional
    dropout_matmul call in a forward follows the eval flag (mc_predict cannot sample it), and
    torch's MultiheadAttention warning named that call as the way out (session 42)."""
    torch.manual_seed(0)
    model = _Attention(shared_values).double().eval()
    x = torch.randn(4, 5, 8, dtype=torch.float64)
    ref, ys_ref = run(model, model.rec, x, chunk=1, fused=False)
    scores = model.seen[0]
    for t in range(T):
        want = fastdrop.dropout_matmul(*scores, 0.3, seed=SEED, offset=OFFSET + t * 2 ** 32)
        assert torch.equal(ys_ref[t], want.detach())
    assert any(not torch.equal(ys_ref[0], ys_ref[t]) for t in range(1, T))
    for chunk in (3, None):
        model.seen.clear()
        r, ys = run(model, model.rec, x, chunk=chunk, fused=True)
        assert len(model.seen) <= 3  # sample 0, then the other six stacked in chunks (not one by one)
        torch.testing.assert_close(ys, ys_ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(r, ref, rtol=1e-10, atol=1e-12)
    assert (ref.var > 0).any()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.proj(torch.matmul(*model.seen[-1]).transpose(1, 2)
                                                        .reshape(4, 5, 8)).mean(1))  # eval: attn @ v


def test_multihead_attention_warning_names_the_module_that_is_sampled():
    model = torch.nn.Sequential(fnn.Dropout(0.2), torch.nn.MultiheadAttention(8, 2, dropout=0.1, batch_first=True))

    class Self(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = model

        def forward(self, x):
            h = self.inner[0](x)
            return self.inner[1](h, h, h, need_weights=False)[0]
    with pytest.warns(UserWarning, match="fastdrop.nn.DropoutMatmul"):
        mc_predict(Self().eval(), torch.randn(2, 3, 8), samples=2, seed=1)


def test_attention_dropout_module_with_a_matrix_operand_batches():
    """DropoutMatmul(h, W) with a 2-D W (no batch dims: a matrix every sample shares) runs the
    samples stacked, as chunk=1's masks, without the 'does not stack' warning (it ran them one at
    a time and blamed the model; a review, 2026-12-07)."""
    class Head(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w, self.drop = torch.nn.Parameter(torch.randn(16, 5)), fnn.DropoutMatmul(0.3)
            self.calls = 0

        def forward(self, h):
            self.calls += 1
            return self.drop(h, self.w)
    torch.manual_seed(0)
    model, x = Head().double().eval(), torch.randn(8, 16, dtype=torch.float64)
    ref = mc_predict(model, x, samples=8, seed=SEED, chunk=1)
    model.calls = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = mc_predict(model, x, samples=8, seed=SEED, chunk=4)
    assert model.calls == 3  # sample 0, then two chunks of four
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


class _PlainMLP(torch.nn.Module):
    """Not a Sequential: its first fastdrop layer's input comes out of a GEMM on the stacked
    copies, whose rows BLAS may round differently by position."""

    def __init__(self, fin=64, hidden=512):
        super().__init__()
        self.fc1, self.drop, self.fc2 = torch.nn.Linear(fin, hidden), fnn.Dropout(0.5), torch.nn.Linear(hidden, 10)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.fc2(self.drop(torch.relu(self.fc1(x))))


@pytest.mark.parametrize("dtype, n, chunk", [(torch.float64, 1, None), (torch.float64, 3, None),
                                             (torch.float32, 1, 8), (torch.float32, 3, None)])
def test_a_gemm_before_the_first_layer_still_batches(dtype, n, chunk):
    """Copies of one row out of a GEMM differ in their last bits by position (28 of 31 float64 rows
    of `lin(h.repeat(31, 1))` equal to row 0 here): the stacking check takes them for copies, so
    the samples run batched (sample 0 alone, then one forward for the rest), without a warning,
    and give the one-at-a-time statistics."""
    torch.manual_seed(0)
    m = _PlainMLP().to(dtype).eval()
    x = torch.randn(n, 64, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = mc_predict(m, x, samples=32, seed=2, chunk=chunk)
    assert m.calls == (2 if chunk is None else 1 + -(-31 // chunk))
    ref = mc_predict(m, x, samples=32, seed=2, chunk=1)
    tol = 1e-10 if dtype == torch.float64 else 1e-4
    torch.testing.assert_close(r, ref, rtol=tol, atol=tol)


def test_rows_reordered_across_examples_are_still_caught():
    """What the check is for survives its tolerance: a sequence-first flatten ((N, L, D) seen as
    (L * N, D)) before the first fastdrop layer puts rows of other positions into a sample's
    slice, whose values differ by far more than rounding: the samples run one at a time (with the
    warning, chunk having been asked for) and give the one-at-a-time statistics."""
    class SequenceFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.drop = torch.nn.Linear(8, 8), fnn.Dropout(0.5)

        def forward(self, x):
            h = self.fc(x)  # (N, L, D)
            flat = h.transpose(0, 1).reshape(-1, h.shape[-1])  # (L * N, D), position-major
            return self.drop(flat).reshape(h.shape[1], h.shape[0], -1).transpose(0, 1)

    torch.manual_seed(0)
    m = SequenceFirst().eval()
    x = torch.randn(3, 4, 8)
    with pytest.warns(UserWarning, match="stack the samples"):
        r = mc_predict(m, x, samples=5, seed=1, chunk=5)
    torch.testing.assert_close(r, mc_predict(m, x, samples=5, seed=1, chunk=1))


def test_one_large_feature_does_not_hide_a_reorder():
    """The stacking check's rounding allowance is each element's own (plus the probe's median
    magnitude), not the probe's largest: with one feature at 1e6, a sequence-first flatten of the
    other features (differences of order 1) is still caught (a review: 2**10 ulps of 1e6 let
    them through, and the samples ran batched with other masks than chunk=1's)."""
    class SequenceFirst(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.drop = fnn.Dropout(0.5)

        def forward(self, x):
            flat = (x * 1.0).transpose(0, 1).reshape(-1, x.shape[-1])  # (L * N, D), position-major
            return self.drop(flat).reshape(x.shape[1], x.shape[0], -1).transpose(0, 1)

    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    x[..., 0] = 1e6
    m = SequenceFirst().eval()
    with pytest.warns(UserWarning, match="stack the samples"):
        r = mc_predict(m, x, samples=5, seed=1, chunk=5)
    torch.testing.assert_close(r, mc_predict(m, x, samples=5, seed=1, chunk=1))


def test_a_compiled_model_without_hooks_keeps_the_prefix_split():
    """A torch.compile wrapper without hooks of its own samples through its original module with
    the fast paths: the deterministic prefix of a Sequential runs once (torch sets every wrapper's
    `forward` on the instance, which the hook check took for a hook: the prefix ran for every
    batch of samples; a review). With a hook on the wrapper the samples go through it."""
    seen = []
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), fnn.Dropout(0.5), torch.nn.Linear(16, 3)).eval()
    m[0].register_forward_hook(lambda mod, args, out: seen.append(args[0].shape[0]))
    x = torch.randn(4, 8)
    want = mc_predict(m, x, samples=8, seed=1)
    assert seen == [4]
    seen.clear()
    got = mc_predict(torch.compile(m, backend="eager"), x, samples=8, seed=1)
    assert seen == [4]
    torch.testing.assert_close(got, want)


class _Upcast(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return x.to(self.dtype)


@pytest.mark.parametrize("chunk", [1, None])
def test_statistics_come_in_the_models_output_dtype(chunk):
    """The statistics come in the wider of x's and the model output's float dtypes (a review: a
    float64 model fed token ids gave float32, a model that casts a float16 input up gave float16,
    rounding small variances away); an integer output's in x's dtype or torch's default."""
    torch.manual_seed(0)
    ids = torch.randint(0, 10, (4, 3))
    emb = torch.nn.Sequential(torch.nn.Embedding(10, 6).double(), fnn.Dropout(0.3), torch.nn.Linear(6, 5).double()).eval()
    r = mc_predict(emb, ids, samples=4, seed=1, chunk=chunk, logits=True)
    assert {t.dtype for t in r} == {torch.float64}
    up = torch.nn.Sequential(_Upcast(torch.float32), torch.nn.Linear(6, 5), fnn.Dropout(0.3)).eval()
    x = torch.randn(4, 6).half()
    r = mc_predict(up, x, samples=4, seed=1, chunk=chunk)
    assert r.mean.dtype == r.var.dtype == torch.float32
    ref = mc_predict(up, x.float(), samples=4, seed=1, chunk=chunk)
    assert torch.equal(r.var, ref.var)
    argmax = torch.nn.Sequential(torch.nn.Linear(6, 5), fnn.Dropout(0.3), _Argmax()).eval()
    assert mc_predict(argmax, torch.randn(4, 6), samples=4, seed=1, chunk=chunk).mean.dtype == torch.get_default_dtype()
    # a float32 model under half autocast: float32 statistics, not the half output's (a review:
    # every small variance came back 0 in float16)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), fnn.Dropout(0.3), torch.nn.Linear(8, 5)).eval()
    with torch.autocast("cpu", dtype=torch.float16):
        r = mc_predict(model, torch.randn(4, 6) * 1e-3, samples=4, seed=1, chunk=chunk)
    assert r.mean.dtype == r.var.dtype == torch.float32 and (r.var > 0).all()


class _Argmax(torch.nn.Module):
    def forward(self, x):
        return x.argmax(-1)


class _LastStep(torch.nn.Module):
    """Takes an nn.LSTM's (output, (h, c)) and drops and classifies the last step's output."""

    def __init__(self, batch_first):
        super().__init__()
        self.batch_first, self.drop, self.fc = batch_first, fnn.Dropout(0.3), torch.nn.Linear(8, 3)

    def forward(self, out_and_state):
        out, _ = out_and_state
        return self.fc(self.drop(out[:, -1] if self.batch_first else out[-1]))


@pytest.mark.parametrize("batch_first", [True, False])
def test_a_prefix_that_returns_a_tuple_runs_with_the_rest(batch_first):
    """The layers before the first stochastic module of a Sequential run once, and their output
    went to the rest as a tensor: an nn.LSTM's (output, (h, c)) there raised AttributeError
    ('tuple' object has no attribute 'dim' / 'clone'; a review). The whole model now runs per
    sample, with chunk=1's statistics, and the seed draw stays one."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.LSTM(4, 8, batch_first=batch_first), _LastStep(batch_first))
    model = model.double().eval()
    x = torch.randn(5, 6, 4, dtype=torch.float64)
    ref = mc_predict(model, x, samples=8, seed=SEED, chunk=1, fused=False)
    # (batched, the LSTM's GEMMs may round otherwise)
    torch.testing.assert_close(mc_predict(model, x, samples=8, seed=SEED), ref, rtol=0, atol=1e-12)
    state = torch.get_rng_state()
    drawn = mc_predict(model, x, samples=8)
    after = torch.get_rng_state()
    torch.set_rng_state(state)
    seed = _seeds.draw_torch_seed()
    assert torch.equal(torch.get_rng_state(), after)  # one draw, as every seed=None call
    torch.testing.assert_close(drawn, mc_predict(model, x, samples=8, seed=seed, chunk=1), rtol=0, atol=1e-12)


@pytest.mark.parametrize("norm", [lambda: torch.nn.BatchNorm1d(16, track_running_stats=False),
                                  lambda: torch.nn.BatchNorm1d(16, affine=False, track_running_stats=False)])
def test_batchnorm_without_running_statistics_runs_one_sample_at_a_time(norm):
    """A BatchNorm with track_running_stats=False normalizes by its batch's statistics in eval
    mode too: stacked samples shared them, and the default chunk gave other statistics than
    chunk=1, silently (mean off by 0.13 in a review's model). The samples run one at a time; a
    given chunk warns."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 16), fnn.Dropout(0.5), norm(), torch.nn.Linear(16, 3))
    model = model.double().eval()
    x = torch.randn(4, 6, dtype=torch.float64)
    ref = mc_predict(model, x, samples=16, seed=SEED, chunk=1, fused=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(mc_predict(model, x, samples=16, seed=SEED), ref, rtol=0, atol=0)
    with pytest.warns(UserWarning, match="track_running_stats=False"):
        given = mc_predict(model, x, samples=16, seed=SEED, chunk=4)
    torch.testing.assert_close(given, ref, rtol=0, atol=0)
    # by the contract: sample t's Dropout at offset t * 2**32, the rest of the model as it is
    with torch.no_grad():
        ys = torch.stack([model[3](model[2](fastdrop.dropout(model[0](x), 0.5, seed=SEED, offset=t << 32)))
                          for t in range(16)])
    torch.testing.assert_close(ref.mean, ys.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(ref.var, ys.var(0), rtol=0, atol=1e-12)


class _Spectrum(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = fnn.Dropout(0.5)

    def forward(self, x):
        return torch.fft.rfft(self.drop(x), dim=-1)


@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_complex_outputs_keep_their_imaginary_part(chunk):
    """A complex output (an FFT of the dropped signal) went through .double(): its imaginary part
    was dropped (torch warned, nothing else did; a review). The mean is complex, the variance
    real, E|y - mean|^2 as torch.var gives it, in the output's precision; logits=True refuses a
    complex output with a TypeError."""
    x = torch.randn(3, 8, dtype=torch.float64)
    r = mc_predict(_Spectrum().eval(), x, samples=7, seed=SEED, chunk=chunk)
    ys = torch.stack([torch.fft.rfft(fastdrop.dropout(x, 0.5, seed=SEED, offset=t << 32), dim=-1) for t in range(7)])
    assert r.mean.dtype == torch.complex128 and r.var.dtype == torch.float64
    torch.testing.assert_close(r.mean, ys.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(r.var, ys.var(0), rtol=0, atol=1e-12)
    r32 = mc_predict(_Spectrum().eval(), x.float(), samples=2, seed=SEED, chunk=chunk)
    assert r32.mean.dtype == torch.complex64 and r32.var.dtype == torch.float32
    state = torch.get_rng_state()
    with pytest.raises(TypeError, match="real logits"):
        mc_predict(_Spectrum().eval(), x, samples=2, logits=True, chunk=chunk)
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("fail", ["no class dim", "the model raises"])
def test_a_failed_call_gives_back_the_buffers_training_modules_wrote(fail):
    """A model left in training mode updates its BatchNorm's running statistics in every sample's
    forward; a call refused after the first sample (logits=True on one logit per example) kept
    that update (a review). A failed call now gives them back, as it gives back its seed draw."""
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 1 if fail == "no class dim" else 3)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.BatchNorm1d(8), fnn.Dropout(0.3), head)
    if fail == "the model raises":
        calls = []

        def third_sample_fails(module, args):
            calls.append(1)
            if len(calls) == 3:
                raise RuntimeError("the model's own error")
        head.register_forward_pre_hook(third_sample_fails)
    x = torch.randn(5, 6)
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    with pytest.raises(ValueError if fail == "no class dim" else RuntimeError):
        mc_predict(model, x, samples=8, logits=True)
    assert torch.equal(rng, torch.get_rng_state())
    for k, v in model.state_dict().items():
        assert torch.equal(v, buffers[k]), k
    r = mc_predict(model.eval(), x, samples=2, seed=SEED, logits=fail != "no class dim")  # usable after
    assert torch.isfinite(r.mean).all()
