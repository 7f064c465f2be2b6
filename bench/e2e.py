"""End-to-end row: a 64 -> 512 -> 512 -> 10 MLP with dropout (0.2 on the input, 0.5 after each hidden
layer) trained on scikit-learn's digits (bundled with sklearn, no download) for a fixed number of
epochs, with torch.nn.Dropout, fastdrop.nn.Dropout, or no dropout at all ("none", the floor).

Same initial weights (torch.manual_seed(seed) before building the model) and the same batch order
(a separate generator) for every provider and seed; only the masks differ. Providers are
interleaved epoch by epoch (A B C, then C B A, ...). Reported: median epoch time with its spread, and the
final test accuracy per seed, compared with Welch's t-test and a 95% CI of the mean difference.

Why "none": the dropout cost inside the loop is epoch(provider) - epoch(none); the micro-benchmark
predicts it as steps_per_epoch x (fwd+bwd time of the three dropout calls at the loop's shapes),
measured here in the same process. If fastdrop's in-loop cost is far above its prediction, dropout
is slowing the ops around it (thread pools, caches), and the report says so.
"""
import os
import time

import numpy as np

BATCH = 64
P_IN, P_HIDDEN = 0.2, 0.5
KINDS = ("torch", "fastdrop", "none")


def digits_split(limit=None):
    """Digits scaled to [0, 1], a fixed 75/25 train/test split (seed 0)."""
    import torch
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    if limit:
        x, y = x[:limit], y[:limit]
    x = torch.tensor(x / 16.0, dtype=torch.float32)
    y = torch.tensor(y, dtype=torch.int64)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    cut = (3 * len(x)) // 4
    return x[perm[:cut]], y[perm[:cut]], x[perm[cut:]], y[perm[cut:]]


def make_mlp(kind, seed):
    import torch
    import fastdrop
    nn = torch.nn
    drop = {"torch": nn.Dropout, "fastdrop": fastdrop.nn.Dropout,
            "none": lambda p: nn.Identity()}[kind]
    torch.manual_seed(seed)
    return nn.Sequential(drop(P_IN), nn.Linear(64, 512), nn.ReLU(), drop(P_HIDDEN),
                         nn.Linear(512, 512), nn.ReLU(), drop(P_HIDDEN), nn.Linear(512, 10))


class Trainer:
    """One model, optimizer and batch order; `epoch()` trains one epoch and returns its seconds."""

    def __init__(self, kind, seed, data):
        import torch
        self.data = data
        self.model = make_mlp(kind, seed)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.05, momentum=0.9)
        self.order = torch.Generator().manual_seed(1000 + seed)
        self.loss_fn = torch.nn.CrossEntropyLoss()

    def epoch(self):
        import torch
        xtr, ytr = self.data[0], self.data[1]
        self.model.train()
        perm = torch.randperm(len(xtr), generator=self.order)
        t0 = time.perf_counter()
        for i in range(0, len(xtr), BATCH):
            idx = perm[i:i + BATCH]
            self.opt.zero_grad(set_to_none=True)
            self.loss_fn(self.model(xtr[idx]), ytr[idx]).backward()
            self.opt.step()
        return time.perf_counter() - t0

    def accuracy(self):
        import torch
        self.model.eval()
        with torch.no_grad():
            return (self.model(self.data[2]).argmax(1) == self.data[3]).float().mean().item()


def _dropout_step_cost(kind, reps):
    """Median seconds of the fwd+bwd of the loop's three dropout calls at the loop's shapes."""
    import torch
    import fastdrop
    cls = torch.nn.Dropout if kind == "torch" else fastdrop.nn.Dropout
    layers = [(cls(P_IN), torch.randn(BATCH, 64, requires_grad=True)),
              (cls(P_HIDDEN), torch.randn(BATCH, 512, requires_grad=True)),
              (cls(P_HIDDEN), torch.randn(BATCH, 512, requires_grad=True))]
    grads = [torch.randn_like(x) for _, x in layers]

    def step():
        for (layer, x), g in zip(layers, grads):
            torch.autograd.grad(layer(x), x, g)
    for _ in range(5):
        step()
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(20):
            step()
        samples.append((time.perf_counter() - t0) / 20)
    return float(np.median(samples))


def run(seeds=(0, 1, 2, 3, 4), epochs=20, limit=None, progress=None, micro_reps=9):
    """The e2e comparison; returns a JSON-able dict."""
    from scipy import stats
    data = digits_split(limit)
    steps = -(-len(data[0]) // BATCH)
    # Warm-up outside the timing: JIT load, thread pools, allocator.
    for kind in KINDS:
        Trainer(kind, 12345, data).epoch()
    epoch_times = {k: [] for k in KINDS}
    accs = {k: [] for k in KINDS}
    for seed in seeds:
        # The three providers train side by side, epoch by epoch (A B C, C B A, ...), so a burst
        # of load from other processes hits all of them alike.
        trainers = {k: Trainer(k, seed, data) for k in KINDS}
        for e in range(epochs):
            for kind in (KINDS if e % 2 == 0 else KINDS[::-1]):
                epoch_times[kind].append(trainers[kind].epoch())
        for kind in KINDS:
            accs[kind].append(trainers[kind].accuracy())
        if progress:
            progress(f"seed {seed}: " + ", ".join(f"{k} acc {accs[k][-1]:.3f}" for k in KINDS))
    micro = {}
    for kind in ("torch", "fastdrop", "torch", "fastdrop"):  # interleaved, keep the second pair
        micro[kind] = _dropout_step_cost(kind, micro_reps)
    out = {"model": "64-512-512-10 MLP, ReLU, dropout 0.2 (input) / 0.5 (hidden), SGD(0.05, m=0.9)",
           "batch": BATCH, "epochs": epochs, "seeds": list(seeds), "steps_per_epoch": steps,
           "train_size": len(data[0]), "test_size": len(data[2]), "providers": {}}
    none_med = float(np.median(epoch_times["none"]))
    for kind in KINDS:
        t = np.array(epoch_times[kind])
        row = {"epoch_median_s": float(np.median(t)),
               "epoch_q1_s": float(np.percentile(t, 25)), "epoch_q3_s": float(np.percentile(t, 75)),
               "test_acc": accs[kind], "test_acc_mean": float(np.mean(accs[kind])),
               "test_acc_std": float(np.std(accs[kind], ddof=1)) if len(accs[kind]) > 1 else 0.0}
        if kind != "none":
            row["dropout_cost_in_loop_s"] = row["epoch_median_s"] - none_med
            row["dropout_cost_predicted_s"] = steps * micro[kind]
            row["micro_dropout_step_s"] = micro[kind]
        out["providers"][kind] = row
    a, b = np.array(accs["fastdrop"]), np.array(accs["torch"])
    if len(a) > 1:
        test = stats.ttest_ind(a, b, equal_var=False)
        ci = test.confidence_interval(0.95)  # Welch-Satterthwaite t interval
        out["accuracy_test"] = {"welch_t": float(test.statistic), "p_value": float(test.pvalue),
                                "mean_diff": float(a.mean() - b.mean()),
                                "ci95": [float(ci.low), float(ci.high)]}
    out["speedup_epoch"] = (out["providers"]["torch"]["epoch_median_s"]
                            / out["providers"]["fastdrop"]["epoch_median_s"])
    return out


PROBES = {  # name -> environment for a probe subprocess (thread pools of numba and torch)
    "as configured": {},
    "NUMBA_NUM_THREADS=1": {"NUMBA_NUM_THREADS": "1"},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "torch.set_num_threads(1)": {"FASTDROP_E2E_TORCH_THREADS": "1"},
    # The first setting again: if it differs from the first run, the machine's load drifted.
    "as configured (repeat)": {},
}


def thread_probes(seeds=(0, 1), epochs=5, limit=None, names=tuple(PROBES)):
    """Why e2e may fall short of the micro-benchmarks: the same comparison in fresh subprocesses
    with numba's pool serial, libgomp threads sleeping instead of spinning, or torch serial."""
    import json
    import os
    import subprocess
    import sys
    out = {}
    for name in names:
        env = PROBES[name]
        args = [sys.executable, os.path.abspath(__file__), json.dumps(
            {"seeds": list(seeds), "epochs": epochs, "limit": limit,
             "micro_reps": 3 if limit else 9})]
        res = subprocess.run(args, env=dict(os.environ, **env), capture_output=True, text=True,
                             timeout=600)
        if res.returncode != 0:
            out[name] = {"error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
            continue
        out[name] = json.loads(
            [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")][-1][7:])
    return out


if __name__ == "__main__":
    import json
    import sys
    kw = json.loads(sys.argv[1])
    if os.environ.get("FASTDROP_E2E_TORCH_THREADS"):
        import torch
        torch.set_num_threads(int(os.environ["FASTDROP_E2E_TORCH_THREADS"]))
    kw["seeds"] = tuple(kw["seeds"])
    print("RESULT " + json.dumps(run(**kw)))
