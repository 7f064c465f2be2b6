"""The benchmarks must never rot: run every pytest-benchmark suite on tiny shapes with
--benchmark-disable (each benchmark called once), and the report in its tiny mode, in subprocesses
(the suites and the report set up their own processes, threads and caches). One after the other:
run side by side on 2 cores, their thread pools contend and both get slower. Also: the report's
--only mode, and the timm-style models of the training-step rows (bench/models.py)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def _start(args):
    env = dict(os.environ, FASTDROP_BENCH_TINY="1")
    return subprocess.Popen([sys.executable] + args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc):
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, f"{proc.args} failed:\n{out[-3000:]}\n{err[-3000:]}"
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench-report")
    procs = []
    try:
        procs.append(_start(["-m", "pytest", "bench", "-q", "--benchmark-disable",
                             "-p", "no:cacheprovider"]))
        suites = _finish(procs[-1])
        procs.append(_start(["bench/report.py", "--tiny", "--out", str(out), "--machine", "smoke"]))
        yield {"suites": suites, "report": _finish(procs[-1]), "out": out}
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


def test_bench_suites_run(runs):
    assert "passed" in runs["suites"]


def test_report_tiny(runs):
    out = runs["out"]
    stem = out / next(p.stem for p in out.glob("smoke-*.json"))
    res = json.loads(stem.with_suffix(".json").read_text())
    assert stem.with_suffix(".png").stat().st_size > 0
    md = stem.with_suffix(".md").read_text()
    assert "| dropout_fwd | 8x16 |" in md
    errors = [r["id"] + ": " + r["error"] for r in res["micro"] + res["memory"] if "error" in r]
    assert not errors, errors
    timed = [r for r in res["micro"] if "timings" in r]
    assert timed and all(r["speedup"] > 0 for r in timed)
    assert res["machine"]["numba_threading_layer"]
    assert res["compile"]["cold"]["dropout numpy f32: first call"] > 0
    assert res["e2e"]["providers"]["fastdrop"]["test_acc"]
    assert all("error" not in r for r in res["e2e_probes"].values())
    # The small-call row: every provider of the breakdown timed, none dropped with an error.
    sc = res["small_calls"]
    assert "error" not in sc and not sc["errors"], sc.get("error") or sc["errors"]
    assert {k.split("|")[0] for k in sc["timings"]} == {
        "fastdrop", "torch_mul", "torch_dropout", "bare_function", "kernel", "seed"}
    assert all(v["median_s"] > 0 for v in sc["timings"].values())
    assert "## Small calls: 8x16 float32" in md and "bare `autograd.Function`" in md
    # The training-step rows: every model, four providers each (torch, fastdrop, the bare-Function
    # floor, none).
    steps = res["train_step"]
    assert [r["model"] for r in steps] == ["resnet", "convnext", "cnn_dropout2d"]
    assert all("error" not in r and r["speedup"] > 0 for r in steps), steps
    assert all(set(r["timings"]) == {"torch", "fastdrop", "bare", "none"} for r in steps)
    assert "## Training step: timm-style models" in md and "| convnext | 2 |" in md
    # the tiny mode shrinks the models: their step rows get no verdict on the target
    step_targets = [line for line in md.splitlines() if "training step, batch" in line]
    assert len(step_targets) == 3 and all(line.endswith("| - |") for line in step_targets), step_targets


def test_saved_bytes_counts_views_of_the_layers_own_tensors_as_theirs():
    """The memory table's "extra": torch's Linear saves W.t(), a view of the parameter, which is
    the layer's own memory (it was counted as extra); its dropout's mask and dropped x are extra."""
    import torch
    sys.path.insert(0, BENCH)
    try:
        import report
    finally:
        sys.path.remove(BENCH)
    lin = torch.nn.Linear(32, 16)
    x = torch.randn(8, 32, requires_grad=True)
    total, extra = report.saved_bytes(lambda: lin(x).sum().backward())
    assert total > 0 and extra == 0
    total, extra = report.saved_bytes(lambda: lin(torch.nn.functional.dropout(x, 0.5)).sum().backward())
    assert extra == 2 * 8 * 32 * 4  # the dropped x and the mask (both float32)


def test_report_only_sections(tmp_path):
    """--only runs the named sections alone and writes them under their own file names."""
    proc = _start(["bench/report.py", "--tiny", "--only", "small_calls", "--out", str(tmp_path),
                   "--machine", "only"])
    _finish(proc)
    (js,) = tmp_path.glob("only-*.json")
    assert js.name.endswith("-tiny-only-small_calls.json")
    res = json.loads(js.read_text())
    assert "small_calls" in res and not {"micro", "memory", "compile", "e2e", "train_step"} & set(res)
    md = js.with_suffix(".md").read_text()
    assert "## Small calls" in md and "## Micro-benchmarks" not in md
    assert not list(tmp_path.glob("*.png"))


@pytest.fixture
def models():
    sys.path.insert(0, BENCH)
    try:
        import models
        yield models
    finally:
        sys.path.remove(BENCH)


@pytest.mark.parametrize("name", ["resnet", "convnext", "cnn_dropout2d"])
def test_models_differ_only_in_drop_layers(models, name):
    """One seed, one architecture: same weights for every kind, equal eval outputs, and the drop
    layers of each kind where the model has them."""
    import torch
    import fastdrop
    x, _ = models.example_batch(name, 3, image_size=16)
    built = {k: models.build(name, k, width=4).eval() for k in models.KINDS}
    sd = built["torch"].state_dict()
    for k, m in built.items():
        assert m.state_dict().keys() == sd.keys()
        assert all(torch.equal(v, sd[n]) for n, v in m.state_dict().items())
    with torch.no_grad():
        outs = {k: m(x) for k, m in built.items()}
    assert torch.equal(outs["torch"], outs["fastdrop"]) and torch.equal(outs["torch"], outs["none"])
    want = {"torch": (models.TorchDropPath, torch.nn.Dropout2d),
            "fastdrop": (fastdrop.nn.DropPath, fastdrop.nn.Dropout2d)}
    for k, classes in want.items():
        found = [m for m in built[k].modules() if isinstance(m, classes)]
        assert found, f"{name} built with {k!r} has no drop layer"
    assert not [m for m in built["none"].modules()
                if isinstance(m, want["torch"] + want["fastdrop"])]


def test_torch_drop_path_is_timms(models):
    """Whole samples dropped (0) or kept and scaled by 1/keep; identity at eval and at p=0."""
    import torch
    torch.manual_seed(0)
    x = torch.ones(400, 3, 2, 2)
    layer = models.TorchDropPath(0.25)
    y = layer(x)
    per_sample = y.flatten(1)
    assert torch.equal(per_sample.min(1).values, per_sample.max(1).values)  # one draw per sample
    assert set(per_sample[:, 0].tolist()) == {0.0, torch.tensor(1 / 0.75).item()}  # float32
    assert 0.15 < (per_sample[:, 0] == 0).float().mean().item() < 0.35
    assert layer.eval()(x) is x and models.TorchDropPath(0.0)(x) is x


def test_train_step_updates_weights(models):
    import torch
    x, y = models.example_batch("cnn_dropout2d", 4, image_size=8)
    model = models.build("cnn_dropout2d", "torch", width=4)
    before = [p.detach().clone() for p in model.parameters()]
    models.train_step(model, x, y)()
    assert model.training
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="kind"):
        models.build("resnet", "timm")
    with pytest.raises(ValueError, match="model"):
        models.build("vit", "torch")


def test_bare_layers_equal_fastdrop_and_cold_call_probe_runs():
    """The report's bare-Function floor computes what fastdrop's modules compute (same seed, same
    kernel), forward and backward, on contiguous and permuted input; the cold-call probe runs."""
    proc = _start([os.path.join(BENCH, "cold_calls.py"), "resnet", "2"])
    torch = pytest.importorskip("torch")
    sys.path.insert(0, BENCH)
    try:
        import models
        import fastdrop
        for make, bare, fd in [
                (lambda: torch.randn(4, 3, 5, 6), models.BareDropout2d(0.4), fastdrop.nn.Dropout2d(0.4)),
                (lambda: torch.randn(4, 5, 6, 3).permute(0, 3, 1, 2), models.BareDropPath(0.4),
                 fastdrop.nn.DropPath(0.4))]:
            x1 = make().requires_grad_()
            x2 = x1.detach().clone().requires_grad_()
            torch.manual_seed(5)
            y1 = bare(x1)
            torch.manual_seed(5)
            y2 = fd(x2)
            assert torch.equal(y1, y2)
            g = torch.randn(y1.shape)
            assert torch.equal(torch.autograd.grad(y1, x1, g)[0], torch.autograd.grad(y2, x2, g)[0])
    finally:
        sys.path.remove(BENCH)
    out = _finish(proc)
    assert "| seed draw (torch generator) |" in out and "| torch x * 1.0 |" in out


def test_overlap_probe_runs_and_its_kernels_compute_the_library_op():
    """bench/overlap.py runs at a tiny size, and its no-prefetch kernel (`plain`) gives the
    library kernel's output, so the comparison it prints is between equal computations."""
    proc = _start([os.path.join(BENCH, "overlap.py"), "--n", "5000", "--rounds", "2"])
    sys.path.insert(0, BENCH)
    try:
        import overlap
        from fastdrop.kernels.dropout_cpu import dropout_flat
        from fastdrop.kernels.philox import kernel_rng_args
        x = np.random.default_rng(0).standard_normal(5003).astype(np.float32)
        a, b = np.empty_like(x), np.empty_like(x)
        args = kernel_rng_args(17, 3, 0.4)
        overlap.plain_fill(x, a, *args, np.float32(1.5))
        dropout_flat(x, b, *args, np.float32(1.5))
        np.testing.assert_array_equal(a, b)
    finally:
        sys.path.remove(BENCH)
    out = _finish(proc)
    assert out.count("\n| 1 |") == 1 and out.count("\n| 2 |") == 1


def test_gpu_bench_dry_run_covers_every_section(tmp_path):
    """bench/gpu_bench.py --dry-run (tiny shapes on CPU tensors, no GPU): every section builds its
    providers, measures and lands in the markdown, so the GPU run cannot fail on its own code."""
    proc = subprocess.run([sys.executable, "bench/gpu_bench.py", "--dry-run", "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " 0 row errors" in proc.stdout + proc.stderr
    (md,) = tmp_path.glob("*.md")
    text = md.read_text()
    for heading in ("## Dropout", "## Dense layers", "## Per-sample DropConnect", "## dropout_matmul",
                    "## channels_last"):
        assert heading in text, heading
    (js,) = tmp_path.glob("*.json")
    rows = json.loads(js.read_text())["rows"]
    assert {r["section"] for r in rows} == {"dropout", "dense", "per_sample", "matmul", "layouts"}
    assert not [r["id"] for r in rows if "error" in r]
    # per-sample DropConnect is timed on both CUDA kernels (default and kernels/sample_cuda.py)
    assert all("registers" in r["timings"] for r in rows if r["section"] == "per_sample")


def test_gpu_host_profile_dry_run_runs_every_section(tmp_path):
    """bench/gpu_host_profile.py --dry-run (the same code on tiny CPU tensors): every section runs
    and the text lands in --out, so the GPU check's host_profile step cannot fail on its own code."""
    proc = subprocess.run([sys.executable, "bench/gpu_host_profile.py", "--dry-run", "--out", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (tmp_path / "gpu_host_profile.txt").read_text()
    for heading in ("## 1. host enqueue", "## 2. sync probe", "## 3. the steps", "## 4. cProfile"):
        assert heading in text, heading
    assert "Traceback" not in text


def test_grouped_routes_probe_runs_every_route():
    """bench/grouped_routes.py (docs/cpu_kernels.md, "Grouped ops under autograd") runs at two
    rounds of a batch-2 CNN step and prints every route."""
    out = _finish(_start([os.path.join(BENCH, "grouped_routes.py"), "2", "cnn_dropout2d", "2"]))
    line = next(l for l in out.splitlines() if l.startswith("cnn_dropout2d"))
    for variant in ("torch", "none", "function", "native", "lane"):
        assert f" {variant} " in line, line


def test_sweep_vs_torch_tiny_prints_its_table():
    """bench/sweep_vs_torch.py --tiny: two cases, one round each, in its markdown table."""
    out = _finish(_start([os.path.join(BENCH, "sweep_vs_torch.py"), "--tiny"]))
    rows = [line for line in out.splitlines() if line.startswith("| Dropout")]
    assert len(rows) == 2 and all(" us | " in row and row.rstrip().endswith("|") for row in rows), out
