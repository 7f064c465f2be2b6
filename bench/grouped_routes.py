"""Training steps with each route a grouped op under autograd can take (docs/cpu_kernels.md,
"Grouped ops under autograd"): the models of bench/models.py at batch 8 and 32 with

- torch: torch's `nn.Dropout2d` / timm's drop_path in torch ops;
- none: no drop layers (the rest of the step);
- function: fastdrop, every grouped call through the Python autograd.Function around the
  one-pass kernel (the route before the native one; forced by NATIVE_GROUPED_MAX_BYTES = 0);
- native: fastdrop through the general pipeline into torch's multiply (the fast lane off);
- lane: fastdrop as shipped (the fast lane, then the native route).

Each round runs every variant once, in random order; printed: median step time, speed relative
to torch (torch / variant) and the median of the per-round differences from torch.
`--micro`: the same routes on warm Dropout2d forward + backward calls (100 per sample, medians of
20 rounds), where the Function's Python costs least.

    .venv/bin/python bench/grouped_routes.py                 # every model, 150 rounds
    .venv/bin/python bench/grouped_routes.py 60 resnet 8
    .venv/bin/python bench/grouped_routes.py --micro
"""
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
from fastdrop import _core, _grouped  # noqa: E402

VARIANTS = {"torch": ("torch", None), "none": ("none", None), "function": ("fastdrop", "function"),
            "native": ("fastdrop", "native"), "lane": ("fastdrop", "lane")}
_LANE, _MAX = _core.training_lane, _grouped.NATIVE_GROUPED_MAX_BYTES


def route(variant):
    """Set the module switches for a fastdrop variant (before each of its steps)."""
    _grouped.NATIVE_GROUPED_MAX_BYTES = 0 if variant == "function" else _MAX
    _core.training_lane = _LANE if variant == "lane" else (lambda *a, **k: None)


def run(name, batch, rounds):
    steps = {}
    for variant, (kind, switch) in VARIANTS.items():
        step = models.train_step(models.build(name, kind), *models.example_batch(name, batch))

        def timed(step=step, switch=switch):
            if switch:
                route(switch)
            step()
        for _ in range(5):
            timed()
        steps[variant] = timed
    times = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        order = list(VARIANTS)
        random.shuffle(order)
        for v in order:
            t = time.perf_counter()
            steps[v]()
            times[v].append(time.perf_counter() - t)
    route("lane")
    med = {v: statistics.median(t) for v, t in times.items()}
    line = f"{name:13s} batch {batch:2d}: torch {med['torch'] * 1e3:6.2f} ms |"
    for v in ("none", "function", "native", "lane"):
        diff = statistics.median(a - b for a, b in zip(times[v], times["torch"]))
        line += f" {v} {med['torch'] / med[v]:.3f}x ({diff * 1e3:+.2f} ms)"
    print(line, flush=True)


def micro():
    import bench_cases
    for shape in ((8, 16, 32, 32), (32, 16, 32, 32), (32, 32, 32, 32)):
        for p in (0.1, 0.5):
            fns = bench_cases.dropout_case(shape, p, "float32", True, spatial=True).build("cpu")
            runs = {"torch": fns["torch"]}
            for v in ("function", "lane"):
                runs[v] = lambda v=v: (route(v), fns["fastdrop"]())
            times = {k: [] for k in runs}
            for k in runs:
                for _ in range(3):
                    runs[k]()
            for _ in range(20):
                order = list(runs)
                random.shuffle(order)
                for k in order:
                    t = time.perf_counter()
                    for _ in range(100):
                        runs[k]()
                    times[k].append((time.perf_counter() - t) / 100)
            route("lane")
            med = {k: statistics.median(v) for k, v in times.items()}
            print(f"Dropout2d fwd+bwd {'x'.join(map(str, shape))} p={p}: " + " ".join(
                f"{k} {med[k] * 1e6:.0f} us ({med['torch'] / med[k]:.2f}x)" for k in runs), flush=True)


def main(argv):
    torch.set_num_threads(2)
    if argv[:1] == ["--micro"]:
        return micro()
    rounds = int(argv[0]) if argv else 150
    names = [argv[1]] if len(argv) > 1 else list(models.MODELS)
    batches = [int(argv[2])] if len(argv) > 2 else [8, 32]
    for name in names:
        for batch in batches:
            run(name, batch, rounds)


if __name__ == "__main__":
    main(sys.argv[1:])
