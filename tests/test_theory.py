"""The theory behind dropout, checked on fastdrop's own kernels.

1. Geometric mean (Hinton et al. 2012; Srivastava et al. 2014, sec. 7; Baldi & Sadowski 2013): for
   one dropout layer feeding an affine map and a softmax, the deterministic scaled network computes
   exactly the normalized weighted geometric mean of the 2^n thinned networks' distributions:
       log G_k(x) = sum_m P(m) log softmax_k(W(m*x)+b) = W_k E[m]*x + b_k - const,
   so NGM = softmax(W((1-p)x) + b) (classic scaling at eval; the inverted net computes the same
   thing with the 1/(1-p) moved to training). Checked by enumerating all masks for n <= 12 to
   float64 precision, and shown to fail once a nonlinearity follows the dropped units.
2. Adaptive L2 (Wager et al. 2013; Srivastava et al. 2014, sec. 9.1): for linear regression with
   inverted dropout on the inputs, E||y - (M*X/(1-p)) w||^2 = ||y - Xw||^2 + p/(1-p) sum_j w_j^2 sum_i X_ij^2.
   Checked by Monte Carlo over fastdrop's masks with a z-test on the mean.
3. Expectations: E[inverted dropout(x)] = x; the classic eval output (1-p)x equals the classic
   training expectation.
"""
import itertools

import numpy as np
import pytest
import scipy.stats
import torch

import fastdrop

ALPHA = 1e-4  # false-alarm rate of each statistical test


def all_masks(n):
    return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def normalized_geometric_mean(x, p, net):
    """log NGM over all 2^n masks of x, each weighted by its probability under keep prob 1-p."""
    masks = all_masks(x.size)
    kept = masks.sum(1)
    logw = kept * np.log1p(-p) + (x.size - kept) * np.log(p)
    w = np.exp(logw)
    assert abs(w.sum() - 1) < 1e-12
    log_g = (w[:, None] * log_softmax(net(masks * x))).sum(0)
    return log_g - np.log(np.exp(log_g).sum())


@pytest.mark.parametrize("n, p", [(4, 0.5), (9, 0.2), (12, 0.5), (12, 0.7)])
@pytest.mark.parametrize("mode", ["classic", "inverted"])
def test_scaled_network_is_the_geometric_mean(n, p, mode):
    rng = np.random.default_rng(n)
    x = rng.normal(size=n)
    W = rng.normal(size=(5, n))
    b = rng.normal(size=5)
    # Thinned networks as `mode` trains them: classic keeps m*x, inverted m*x/(1-p).
    train_scale = 1.0 if mode == "classic" else 1.0 / (1.0 - p)
    ngm = normalized_geometric_mean(x * train_scale, p, lambda h: h @ W.T + b)
    # The deterministic network through fastdrop's eval path of the same mode.
    det = log_softmax(fastdrop.dropout(x, p, training=False, mode=mode) @ W.T + b)
    np.testing.assert_allclose(det, ngm, rtol=0, atol=1e-12)
    # The same through the torch module in eval.
    layer = fastdrop.nn.Dropout(p, mode=mode).eval()
    det_t = torch.log_softmax(layer(torch.as_tensor(x)) @ torch.as_tensor(W).T + torch.as_tensor(b), -1)
    np.testing.assert_allclose(det_t.numpy(), ngm, rtol=0, atol=1e-12)


@pytest.mark.parametrize("nonlinearity", [np.tanh, lambda h: np.maximum(h, 0.0)])
def test_geometric_mean_fails_after_a_nonlinearity(nonlinearity):
    n, p = 10, 0.5
    rng = np.random.default_rng(1)
    x = rng.normal(size=n) * 2
    V = rng.normal(size=(8, n))
    c = rng.normal(size=8)
    W = rng.normal(size=(4, 8))
    b = rng.normal(size=4)
    # The dropped units feed a hidden layer with a nonlinearity before the softmax layer. (A bare
    # relu(m*x) would not do: relu(m*x) = m*relu(x) for m in {0, 1}, still linear in the mask.)
    net = lambda h: nonlinearity(h @ V.T + c) @ W.T + b
    ngm = normalized_geometric_mean(x, p, net)
    det = log_softmax(net(fastdrop.dropout(x, p, training=False, mode="classic")))
    assert np.abs(det - ngm).max() > 1e-2


def test_adaptive_l2_identity_by_monte_carlo():
    rng = np.random.default_rng(0)
    N, d, p, R = 40, 6, 0.3, 4000
    X = rng.normal(size=(N, d))
    w = rng.normal(size=d)
    y = X @ w + rng.normal(size=N)
    # R independent inverted-dropout draws of X, all from one fastdrop call (one mask stream).
    Xd = fastdrop.dropout(np.broadcast_to(X, (R, N, d)).copy(), p, seed=123)
    losses = ((y - Xd @ w) ** 2).sum(1)
    plain = ((y - X @ w) ** 2).sum()
    penalty = p / (1 - p) * (w ** 2 * (X ** 2).sum(0)).sum()
    expected = plain + penalty
    se = losses.std(ddof=1) / np.sqrt(R)
    z = (losses.mean() - expected) / se
    assert scipy.stats.norm.sf(abs(z)) * 2 > ALPHA, (losses.mean(), expected, se)
    # The test has power: the penalty without the 1/(1-p) factor is rejected.
    wrong = plain + p * (w ** 2 * (X ** 2).sum(0)).sum()
    assert abs(losses.mean() - wrong) / se > 10


def test_adaptive_l2_gradient_matches_in_expectation():
    """The gradients agree too: E[grad of the dropout loss] = grad of the penalized loss."""
    rng = np.random.default_rng(3)
    N, d, p, R = 30, 4, 0.5, 4000
    X = rng.normal(size=(N, d))
    w = rng.normal(size=d)
    y = rng.normal(size=N)
    Xd = fastdrop.dropout(np.broadcast_to(X, (R, N, d)).copy(), p, seed=7)
    grads = -2 * np.einsum("rnd,rn->rd", Xd, y - Xd @ w)
    expected = -2 * X.T @ (y - X @ w) + 2 * p / (1 - p) * w * (X ** 2).sum(0)
    z = (grads.mean(0) - expected) / (grads.std(0, ddof=1) / np.sqrt(R))
    assert scipy.stats.chi2.sf((z ** 2).sum(), d) > ALPHA


def _chi2_mean_test(samples, expected):
    """Joint z-test that the per-element means of `samples` (R, n) equal `expected` (n,)."""
    R = samples.shape[0]
    z = (samples.mean(0) - expected) / (samples.std(0, ddof=1) / np.sqrt(R))
    return scipy.stats.chi2.sf((z ** 2).sum(), z.size)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.8])
def test_inverted_dropout_preserves_the_expectation(p):
    x = np.random.default_rng(0).normal(size=16)
    R = 4000
    y = fastdrop.dropout(np.broadcast_to(x, (R, 16)).copy(), p, seed=99)
    assert _chi2_mean_test(y, x) > ALPHA
    # DropPath over whole samples has the same expectation.
    z = fastdrop.drop_path(np.broadcast_to(x, (R, 16)).copy(), p, seed=98)
    assert _chi2_mean_test(z[:, :1], x[:1]) > ALPHA


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_classic_eval_equals_training_expectation(p):
    x = np.random.default_rng(1).normal(size=16)
    R = 4000
    train = fastdrop.dropout(np.broadcast_to(x, (R, 16)).copy(), p, seed=5, mode="classic")
    evaluated = fastdrop.dropout(x, p, training=False, mode="classic")
    np.testing.assert_array_equal(evaluated, x * (1 - p))
    assert _chi2_mean_test(train, evaluated) > ALPHA
    # ... and the inverted eval output (x) is the classic one divided by the keep probability.
    np.testing.assert_allclose(fastdrop.dropout(x, p, training=False) * (1 - p), evaluated, rtol=1e-15)


def test_dropout_matmul_is_unbiased():
    """E[dropout(a) @ b] = a @ b: averaged over offsets, one call per offset."""
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 5)), rng.normal(size=(5, 2))
    R = 2000
    outs = np.stack([fastdrop.dropout_matmul(a, b, 0.4, seed=1, offset=r) for r in range(R)])
    assert _chi2_mean_test(outs.reshape(R, -1), (a @ b).ravel()) > ALPHA
