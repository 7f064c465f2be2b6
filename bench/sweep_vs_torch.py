"""A perf-cliff sweep: fastdrop's modules against torch's (or timm's, or the composite a user
would write) over small and mid shapes, dtypes and layouts, forward alone and forward + backward,
to find where fastdrop is slower than torch (the report times a few fixed rows; this looks
around them). Every case is timed in one process, fastdrop's and torch's calls alternating
round by round; printed: medians of the rounds' medians, the speedup (torch / fastdrop), and
`<-- slower` where fastdrop is more than 2% slower.

    .venv/bin/python bench/sweep_vs_torch.py            # ~4 min on the 2-core VM
    .venv/bin/python bench/sweep_vs_torch.py --tiny     # two cases, one round (the smoke test)

The machine must be quiet (a second busy core makes the parallel kernels 10-30x slower).
"""
import statistics
import sys
import time

import torch
import torch.nn.functional as F

import fastdrop.nn as fnn


class TimmDropPath(torch.nn.Module):
    """timm's drop_path in torch ops (row mode, scale_by_keep)."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        keep = 1 - self.p
        r = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * r.div_(keep)


class DropConnectComposite(torch.nn.Module):
    """What DropConnect is in torch: F.linear with a dropped-out copy of the weight."""

    def __init__(self, linear, p):
        super().__init__()
        self.linear, self.p = linear, p

    def forward(self, x):
        return F.linear(x, F.dropout(self.linear.weight, self.p), self.linear.bias)


def median_us(f, rounds, target_s):
    """Median over `rounds` of the mean time of n calls (n so that a round takes ~target_s)."""
    f()
    f()
    t = time.perf_counter()
    f()
    n = max(1, int(target_s / max(time.perf_counter() - t, 1e-7)))
    samples = []
    for _ in range(rounds):
        t = time.perf_counter()
        for _ in range(n):
            f()
        samples.append((time.perf_counter() - t) / n * 1e6)
    return statistics.median(samples)


def _case(name, ours, theirs, shape, dtype=torch.float32, layout=None, grad=True):
    x = torch.randn(*shape).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d)
    x.requires_grad_(grad)
    g = torch.randn_like(ours(x).detach())  # (both give x's shape, or the layer's output shape)

    def run(module):
        if not grad:
            return lambda: module(x)
        # x's gradient and the layer's weights' (a training step's backward: torch's C++ nodes skip
        # a gradient nobody asks for, a Python Function computes what its inputs require)
        wrt = [x] + [w for w in module.parameters() if w.requires_grad]
        return lambda: torch.autograd.grad(module(x), wrt, g)
    label = f"{name} {tuple(shape)} {str(dtype)[6:]}{' ' + layout if layout else ''} {'fwd+bwd' if grad else 'fwd'}"
    return label, run(ours), run(theirs)


def cases(tiny):
    if tiny:
        return [_case("Dropout", fnn.Dropout(0.5), torch.nn.Dropout(0.5), (4, 8)),
                _case("Dropout2d", fnn.Dropout2d(0.5), torch.nn.Dropout2d(0.5), (2, 3, 4, 4), grad=False)]
    out = []
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        for shape in ((64, 512), (512, 1024), (8, 16, 32, 32)):
            for grad in (False, True):
                out.append(_case("Dropout", fnn.Dropout(0.5), torch.nn.Dropout(0.5), shape, dtype, grad=grad))
        out.append(_case("Dropout", fnn.Dropout(0.5), torch.nn.Dropout(0.5), (8, 16, 32, 32), dtype, "channels_last"))
        for layout in (None, "channels_last"):
            out.append(_case("Dropout2d", fnn.Dropout2d(0.5), torch.nn.Dropout2d(0.5), (8, 16, 32, 32), dtype, layout))
    out.append(_case("Dropout1d", fnn.Dropout1d(0.5), torch.nn.Dropout1d(0.5), (8, 64, 100)))
    out.append(_case("Dropout1d", fnn.Dropout1d(0.5), torch.nn.Dropout1d(0.5), (32, 128, 50), grad=False))
    for layout in (None, "channels_last"):
        out.append(_case("Dropout3d", fnn.Dropout3d(0.5), torch.nn.Dropout3d(0.5), (2, 16, 8, 16, 16), layout=layout))
    for shape in ((8, 197, 384), (32, 64, 28, 28), (2, 64, 8, 8)):
        for dtype in (torch.float32, torch.bfloat16):
            out.append(_case("DropPath p=0.1", fnn.DropPath(0.1), TimmDropPath(0.1), shape, dtype))
    out.append(_case("DropPath p=0.1", fnn.DropPath(0.1), TimmDropPath(0.1), (32, 64, 28, 28), layout="channels_last"))
    linear = torch.nn.Linear(512, 512)
    dropout_linear = fnn.DropoutLinear(512, 512, p=0.3)
    dropout_linear.load_state_dict(linear.state_dict())
    drop_connect = fnn.DropConnectLinear(512, 512, p=0.3)
    drop_connect.load_state_dict(linear.state_dict())
    for rows in (64, 8):
        out.append(_case("DropoutLinear 512->512", dropout_linear,
                         torch.nn.Sequential(torch.nn.Dropout(0.3), linear), (rows, 512)))
        out.append(_case("DropConnectLinear 512->512", drop_connect, DropConnectComposite(linear, 0.3), (rows, 512)))
    return out


def main(argv):
    tiny = "--tiny" in argv
    rounds, repeats, target_s = (1, 1, 0.001) if tiny else (9, 3, 0.02)
    torch.manual_seed(0)
    todo = cases(tiny)
    times = {label: ([], []) for label, _, _ in todo}
    for _ in range(repeats):  # fastdrop's and torch's calls alternate, case by case
        for label, ours, theirs in todo:
            times[label][0].append(median_us(ours, rounds, target_s))
            times[label][1].append(median_us(theirs, rounds, target_s))
    print("| case | fastdrop | torch | speedup |")
    print("|---|---|---|---|")
    for label, (ours, theirs) in times.items():
        a, b = statistics.median(ours), statistics.median(theirs)
        flag = " <-- slower" if a > 1.02 * b else ""
        print(f"| {label} | {a:.1f} us | {b:.1f} us | {b / a:.2f}x{flag} |")


if __name__ == "__main__":
    main(sys.argv[1:])
