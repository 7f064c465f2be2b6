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

    .venv/bin/python bench/grouped_routes.py                 # every model, 150 rounds
    .venv/bin/python bench/grouped_routes.py 60 resnet 8
"""
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402
from fastdrop import _core  # noqa: E402

VARIANTS = {"torch": ("torch", None), "none": ("none", None), "function": ("fastdrop", "function"),
            "native": ("fastdrop", "native"), "lane": ("fastdrop", "lane")}
_LANE, _MAX = _core.grouped_lane, _core.NATIVE_GROUPED_MAX_BYTES


def route(variant):
    """Set the module switches for a fastdrop variant (before each of its steps)."""
    _core.NATIVE_GROUPED_MAX_BYTES = 0 if variant == "function" else _MAX
    _core.grouped_lane = _LANE if variant == "lane" else (lambda *a, **k: None)


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


def main(argv):
    rounds = int(argv[0]) if argv else 150
    names = [argv[1]] if len(argv) > 1 else list(models.MODELS)
    batches = [int(argv[2])] if len(argv) > 2 else [8, 32]
    torch.set_num_threads(2)
    for name in names:
        for batch in batches:
            run(name, batch, rounds)


if __name__ == "__main__":
    main(sys.argv[1:])
