"""fastdrop's dropout-family ops against the torch composite a user would otherwise write (CPU).

Interleaved runs after a warm-up (JIT compiled and cached first): providers alternate in blocks of 4
calls, the first call of each block dropped (see `interleaved`), medians reported.
Run:  .venv/bin/python examples/bench_variants.py [--quick]
"""
import statistics
import sys
import time

import torch

import fastdrop


def interleaved(fns, reps, block=4):
    """Median seconds of each callable. Providers alternate in blocks of `block` calls and the
    first call of each block is dropped: on this machine Numba's OpenMP pool and torch's are two
    runtimes, and the first op after a switch waits for the other pool's spinning threads
    (docs/threads.md). That cost is real in a mixed loop but belongs to neither op alone."""
    for f in fns.values():
        f()
        f()
    times = {k: [] for k in fns}
    for _ in range(max(1, reps // (block - 1))):
        for k, f in fns.items():
            for i in range(block):
                t0 = time.perf_counter()
                f()
                if i:
                    times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def report(name, med, base):
    line = "  ".join(f"{k} {1e3 * v:8.2f} ms" for k, v in med.items())
    others = [k for k in med if k != base]
    ratio = "  ".join(f"{k}: {med[base] / med[k]:.2f}x" for k in others)
    print(f"{name:42s} {line}   speed-up vs {base}: {ratio}", flush=True)


# --------------------------------------------------------------------------- composites
def timm_drop_path(x, p):
    keep = 1 - p
    rnd = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * rnd.div_(keep)


def torch_max_norm_(w, c, eps=1e-7):
    with torch.no_grad():
        norms = w.norm(2, dim=1, keepdim=True)
        w.mul_(torch.clamp(c / (norms + eps), max=1.0))


def torch_mc(model, x, T):
    model.train()  # the usual MC-dropout recipe: torch's dropout on (and everything else with it)
    with torch.no_grad():
        ys = torch.stack([model(x) for _ in range(T)])
    return ys.mean(0), ys.var(0)


def mlp(dropout, d_in=784, hidden=1024, out=10, depth=2, p=0.5):
    layers, d = [], d_in
    for _ in range(depth):
        layers += [torch.nn.Linear(d, hidden), torch.nn.ReLU(), dropout(p)]
        d = hidden
    layers.append(torch.nn.Linear(d, out))
    return torch.nn.Sequential(*layers)


def main(quick=False):
    reps = 5 if quick else 11
    print(f"torch {torch.__version__}, {torch.get_num_threads()} torch threads; shared machine, "
          f"medians over blocks of 4 interleaved calls (first of each block dropped)")
    # DropPath: ViT-B/16-like block output (N, tokens, dim).
    for shape in [(64, 197, 768), (256, 197, 384)] if not quick else [(16, 197, 384)]:
        x = torch.randn(shape)
        med = interleaved({"torch": lambda: timm_drop_path(x, 0.1),
                           "fastdrop": lambda: fastdrop.drop_path(x, 0.1)}, reps)
        report(f"drop_path fwd {shape}", med, "torch")
        xg = x.clone().requires_grad_()
        med = interleaved({"torch": lambda: timm_drop_path(xg, 0.1).sum().backward(),
                           "fastdrop": lambda: fastdrop.drop_path(xg, 0.1).sum().backward()}, reps)
        report(f"drop_path fwd+bwd {shape}", med, "torch")
    # max-norm on a Linear weight (out, in), after a step (about half the rows outside the ball).
    for shape in [(4096, 4096), (1024, 16384)] if not quick else [(512, 512)]:
        w = torch.randn(shape)
        c = float(w.norm(dim=1).median())
        w1, w2, w3 = w.clone(), w.clone(), w.clone()
        # Half the rows outside the ball: every call starts from a fresh copy of w, so the copy
        # is timed as a third provider in the same interleaving and subtracted.
        med = interleaved({"torch": lambda: (w1.copy_(w), torch_max_norm_(w1, c)),
                           "fastdrop": lambda: (w2.copy_(w), fastdrop.max_norm_(w2, c)),
                           "copy": lambda: w3.copy_(w)}, reps)
        cp = med.pop("copy")
        med = {k: v - cp for k, v in med.items()}
        report(f"max_norm_ {shape} half outside (copy subtracted)", med, "torch")
        med = interleaved({"torch": lambda: torch_max_norm_(w1, c),
                           "fastdrop": lambda: fastdrop.max_norm_(w2, c)}, reps)
        report(f"max_norm_ {shape} all rows inside", med, "torch")
    # MC dropout, T = 32: fastdrop.mc_predict vs 32 torch forward passes.
    T = 32
    for n, depth in [(64, 2), (256, 2), (256, 1)] if not quick else [(16, 1)]:
        torch.manual_seed(0)
        m_torch = mlp(torch.nn.Dropout, depth=depth)
        m_fd = mlp(fastdrop.nn.Dropout, depth=depth)
        m_fd.load_state_dict(m_torch.state_dict())
        m_fd.eval()
        x = torch.randn(n, 784)
        med = interleaved({"torch": lambda: torch_mc(m_torch, x, T),
                           "fastdrop": lambda: fastdrop.mc_predict(m_fd, x, samples=T)}, reps)
        report(f"mc_predict T=32 batch {n} MLP depth {depth}", med, "torch")
    # dropout_matmul: attention probabilities (B, H, L, L) @ V (B, H, L, d).
    for B, H, L, d in [(8, 12, 256, 64)] if not quick else [(2, 2, 32, 16)]:
        a = torch.softmax(torch.randn(B, H, L, L), -1)
        v = torch.randn(B, H, L, d)
        med = interleaved({"torch": lambda: torch.nn.functional.dropout(a, 0.1) @ v,
                           "fastdrop": lambda: fastdrop.dropout_matmul(a, v, 0.1)}, reps)
        report(f"dropout_matmul fwd {(B, H, L, d)}", med, "torch")
        ag, vg = a.clone().requires_grad_(), v.clone().requires_grad_()
        med = interleaved({"torch": lambda: (torch.nn.functional.dropout(ag, 0.1) @ vg).sum().backward(),
                           "fastdrop": lambda: fastdrop.dropout_matmul(ag, vg, 0.1).sum().backward()}, reps)
        report(f"dropout_matmul fwd+bwd {(B, H, L, d)}", med, "torch")


if __name__ == "__main__":
    main(quick="--quick" in sys.argv)
