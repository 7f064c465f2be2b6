"""Dropout on the digits MLP (scikit-learn's 8x8 digits): the train/test gap, max-norm, classic vs
inverted scaling, per-layer rates, and MC-dropout uncertainty on clean vs corrupted inputs.

A small training set (300 images) makes a 64-256-256-10 MLP overfit without dropout. The runs:
  plain              no dropout
  dropout            p = 0.2 on the input, 0.5 on the hidden layers (Srivastava et al.'s milder
                     input rate), inverted scaling
  dropout classic    the same with classic scaling (unscaled in training, times 1-p at eval)
  dropout+max-norm   the same as "dropout" with every layer's incoming weights kept in an L2 ball
                     of radius 3 (fastdrop.max_norm_hook), same learning rate
Then fastdrop.mc_predict (T = 64) on the test images, clean and corrupted (noise + occlusion).

Run:  .venv/bin/python examples/digits_dropout.py   (writes examples/digits_dropout.png, ~15 s)
"""
from pathlib import Path

import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

import fastdrop  # noqa: E402
from fastdrop.nn import Dropout  # noqa: E402

HERE = Path(__file__).parent
HIDDEN, EPOCHS, BATCH = 256, 250, 50


def data():
    X, y = load_digits(return_X_y=True)
    X = (X / 16.0).astype(np.float32)
    Xtr, Xte, ytr, yte = train_test_split(X, y, train_size=300, random_state=0, stratify=y)
    return (torch.tensor(Xtr), torch.tensor(ytr)), (torch.tensor(Xte), torch.tensor(yte))


def make_mlp(p_in, p_hidden, mode="inverted"):
    """Per-layer rates: a milder rate on the input layer than on the hidden layers."""
    layers = []
    if p_in:
        layers.append(Dropout(p_in, mode=mode))
    layers += [torch.nn.Linear(64, HIDDEN), torch.nn.ReLU()]
    if p_hidden:
        layers.append(Dropout(p_hidden, mode=mode))
    layers += [torch.nn.Linear(HIDDEN, HIDDEN), torch.nn.ReLU()]
    if p_hidden:
        layers.append(Dropout(p_hidden, mode=mode))
    layers.append(torch.nn.Linear(HIDDEN, 10))
    return torch.nn.Sequential(*layers)


def evaluate(model, X, y):
    """(accuracy, mean cross-entropy) of the deterministic (eval) network."""
    model.eval()
    with torch.no_grad():
        z = model(X)
        return float((z.argmax(1) == y).float().mean()), float(torch.nn.functional.cross_entropy(z, y))


def train(model, train_set, lr, max_norm=None):
    Xtr, ytr = train_set
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    if max_norm:
        linears = [m for m in model if isinstance(m, torch.nn.Linear)]
        fastdrop.max_norm_hook(opt, linears, max_value=max_norm)
    g = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        model.train()
        for idx in torch.randperm(len(Xtr), generator=g).split(BATCH):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(Xtr[idx]), ytr[idx]).backward()
            opt.step()
    return model


def corrupt(X, seed=0):
    """Gaussian pixel noise plus a random 4x4 occluding block per image."""
    g = torch.Generator().manual_seed(seed)
    Xc = (X + 0.5 * torch.randn(X.shape, generator=g)).clamp(0, 1).reshape(-1, 8, 8).clone()
    r, c = torch.randint(0, 5, (2, len(X)), generator=g)
    for i in range(len(X)):
        Xc[i, r[i]:r[i] + 4, c[i]:c[i] + 4] = 1.0
    return Xc.reshape(-1, 64)


def main():
    torch.manual_seed(0)
    train_set, test_set = data()
    runs = {
        "plain": (make_mlp(0.0, 0.0), 0.05, None),
        "dropout": (make_mlp(0.2, 0.5), 0.05, None),
        "dropout classic": (make_mlp(0.2, 0.5, mode="classic"), 0.05, None),
        "dropout+max-norm": (make_mlp(0.2, 0.5), 0.05, 3.0),
    }
    results = {}
    for name, (model, lr, c) in runs.items():
        torch.manual_seed(1)
        for m in model:  # the same initial weights for every run
            if isinstance(m, torch.nn.Linear):
                m.reset_parameters()
        train(model, train_set, lr, c)
        (tr, tr_loss), (te, te_loss) = evaluate(model, *train_set), evaluate(model, *test_set)
        results[name] = (tr, te, tr_loss, te_loss)
        norm = max(float(m.weight.detach().norm(dim=1).max()) for m in model if isinstance(m, torch.nn.Linear))
        print(f"{name:18s} accuracy train {tr:.4f} test {te:.4f} gap {tr - te:+.4f} | cross-entropy "
              f"train {tr_loss:.4f} test {te_loss:.4f} gap {te_loss - tr_loss:+.4f} | "
              f"largest incoming-weight norm {norm:.2f}")

    model = runs["dropout"][0].eval()
    Xte, yte = test_set
    Xc = corrupt(Xte)
    clean = fastdrop.mc_predict(model, Xte, samples=64, seed=0, logits=True)
    noisy = fastdrop.mc_predict(model, Xc, samples=64, seed=0, logits=True)
    for name, r, X in (("clean", clean, Xte), ("corrupted", noisy, Xc)):
        acc = float((r.mean.argmax(1) == yte).float().mean())
        print(f"MC dropout (T=64) {name:9s}: accuracy {acc:.4f}  mean predictive entropy "
              f"{float(r.entropy.mean()):.4f}  mean mutual information {float(r.mutual_info.mean()):.4f}")
    print(f"mean mutual information corrupted / clean: "
          f"{float(noisy.mutual_info.mean() / clean.mutual_info.mean()):.2f}x; "
          f"mean entropy corrupted / clean: {float(noisy.entropy.mean() / clean.entropy.mean()):.2f}x")

    fig, axes = plt.subplots(1, 4, figsize=(19, 4.2))
    names = list(results)
    xs = np.arange(len(names))
    for ax, (i, j), label in ((axes[0], (0, 1), "accuracy"), (axes[1], (2, 3), "cross-entropy")):
        ax.bar(xs - 0.2, [results[n][i] for n in names], 0.4, label="train")
        ax.bar(xs + 0.2, [results[n][j] for n in names], 0.4, label="test")
        ax.set_xticks(xs, names, rotation=15)
        ax.set_ylabel(label)
        ax.set_title(f"digits MLP, 300 training images: {label}")
        ax.legend()
    axes[0].set_ylim(0.8, 1.005)
    axes = axes[1:]
    bins = np.linspace(0, float(max(clean.entropy.max(), noisy.entropy.max())), 40)
    axes[1].hist(clean.entropy.numpy(), bins, alpha=0.6, label="clean")
    axes[1].hist(noisy.entropy.numpy(), bins, alpha=0.6, label="corrupted")
    axes[1].set_xlabel("predictive entropy (nats)")
    axes[1].set_title("MC dropout, T = 64")
    axes[1].legend()
    bins = np.linspace(0, float(max(clean.mutual_info.max(), noisy.mutual_info.max())), 40)
    axes[2].hist(clean.mutual_info.numpy(), bins, alpha=0.6, label="clean")
    axes[2].hist(noisy.mutual_info.numpy(), bins, alpha=0.6, label="corrupted")
    axes[2].set_xlabel("mutual information (nats)")
    axes[2].set_title("epistemic uncertainty (BALD)")
    axes[2].legend()
    fig.tight_layout()
    out = HERE / "digits_dropout.png"
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
