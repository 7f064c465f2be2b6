"""What one call costs inside a training step, where it runs cold.

Micro-benchmarks repeat a call in a tight loop, so its code paths stay in the caches; inside a
model every fastdrop call comes after convolutions and GEMMs that evicted them. This probe puts a
module in the drop-path slots of bench/models.py's ResNet-like model that times the pieces of a
call (perf_counter) on every training step, each piece twice in a row: the first timing is the
cold one a real call pays, the second the warm one a micro-benchmark sees.

    .venv/bin/python bench/cold_calls.py            # resnet, batch 8, 100 steps
    .venv/bin/python bench/cold_calls.py convnext 32
"""
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models  # noqa: E402


def probes(x):
    """(label, thunk) pieces of a DropPath call on x, in the order a call runs them."""
    import fastdrop
    from fastdrop._seeds import draw_torch_seed
    from fastdrop.kernels import dropout_cpu
    from fastdrop.kernels.philox import kernel_rng_args
    xd = x.detach()
    xn = xd.contiguous().numpy().reshape(-1)
    out = xn.copy()
    args = kernel_rng_args(1, 0, 0.1)
    scale = xn.dtype.type(1 / 0.9)
    return [
        ("seed draw (torch generator)", draw_torch_seed),
        ("torch.empty_like", lambda: torch.empty_like(xd)),
        ("numpy view of a tensor (a copy if permuted)", xd.numpy if xd.is_contiguous() else xd.contiguous),
        ("Numba launch, serial grouped kernel", lambda: dropout_cpu.dropout_groups_flat_serial(
            xn, out, xn.size // x.shape[0], x.shape[0], *args, scale)),
        ("fastdrop.drop_path (no grad)", lambda: fastdrop.drop_path(xd, 0.1)),
        ("torch x * 1.0", lambda: xd * 1.0),
    ]


class ProbeDropPath(torch.nn.Module):
    timings = {}

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if self.training and self.p > 0:
            for label, thunk in probes(x):
                for i in (0, 1):
                    t = time.perf_counter()
                    thunk()
                    ProbeDropPath.timings.setdefault((label, i), []).append(time.perf_counter() - t)
        return x


def main(name="resnet", batch=8, steps=100):
    model = models.build(name, "none")
    for mod in list(model.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, torch.nn.Identity) and "drop_path" in child_name:
                setattr(mod, child_name, ProbeDropPath(0.1))
    step = models.train_step(model, *models.example_batch(name, batch))
    for _ in range(10):
        step()
    ProbeDropPath.timings.clear()
    for _ in range(steps):
        step()
    print(f"{name}, batch {batch}: medians over {steps} steps x every drop-path slot")
    print("| piece | first call (cold) | right again (warm) |\n|---|---|---|")
    labels = dict.fromkeys(label for label, _ in ProbeDropPath.timings)
    for label in labels:
        cold, warm = (statistics.median(ProbeDropPath.timings[(label, i)]) * 1e6 for i in (0, 1))
        print(f"| {label} | {cold:.1f} us | {warm:.1f} us |")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["resnet"]), *(int(a) for a in sys.argv[2:3]))
