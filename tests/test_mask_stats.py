"""Randomness of the masks, tested with statistics (seeds are fixed, so every test is deterministic;
the significance level only says how surprising a failure would be for a good generator)."""
import numpy as np
import pytest
from scipy import stats

import fastdrop

ALPHA = 1e-4
N = 1 << 22  # 4M elements


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_fraction_binomial(p):
    m = fastdrop.dropout_mask(N, p, seed=1234)
    res = stats.binomtest(int(m.sum()), N, fastdrop.keep_threshold(p) / 2**16)
    assert res.pvalue > ALPHA, (p, m.mean())


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_keep_fraction_per_lane(p):
    """Each of the eight 16-bit mask words of a Philox block keeps at the same rate (chi-square on lanes)."""
    m = fastdrop.dropout_mask(N, p, seed=77).reshape(-1, 8)
    kept = m.sum(0)
    table = np.stack([kept, m.shape[0] - kept])
    assert stats.chi2_contingency(table).pvalue > ALPHA


def _independent(a, b):
    """Chi-square test of independence of two bool arrays (2x2 contingency)."""
    table = np.array([[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]])
    return stats.chi2_contingency(table).pvalue


@pytest.mark.parametrize("lag", [1, 2, 3, 4, 7, 8, 9, 16])
def test_neighbours_independent(lag):
    """Lags 1-7 pair mask words of one Philox block, 8+ mostly different blocks."""
    m = fastdrop.dropout_mask(N, 0.5, seed=5)
    assert _independent(m[:-lag], m[lag:]) > ALPHA


@pytest.mark.parametrize("p", [0.1, 0.5])
def test_halves_of_one_word_independent(p):
    """Elements 2k and 2k + 1 take the low and high halves of one 32-bit Philox word."""
    m = fastdrop.dropout_mask(N, p, seed=19)
    assert _independent(m[0::2], m[1::2]) > ALPHA


def test_rows_independent():
    m = fastdrop.dropout_mask((2048, 2048), 0.3, seed=11)
    assert _independent(m[:-1].ravel(), m[1:].ravel()) > ALPHA


@pytest.mark.parametrize("seed", [0, 1, 2**32 - 1, 2**32, 123456789])
def test_consecutive_seeds_independent(seed):
    a = fastdrop.dropout_mask(N, 0.5, seed)
    b = fastdrop.dropout_mask(N, 0.5, seed + 1)
    assert _independent(a, b) > ALPHA
    r, pval = stats.pearsonr(a.astype(np.float64), b.astype(np.float64))
    assert pval > ALPHA and abs(r) < 5 / np.sqrt(N)


@pytest.mark.parametrize("offset", [0, 1, 2**32 - 1, 2**32])
def test_consecutive_offsets_independent(offset):
    a = fastdrop.dropout_mask(N, 0.5, 3, offset)
    b = fastdrop.dropout_mask(N, 0.5, 3, offset + 1)
    assert not np.array_equal(a, b)
    assert _independent(a, b) > ALPHA


def test_run_lengths_geometric():
    """Runs of kept elements follow the geometric law of an i.i.d. Bernoulli sequence."""
    p = 0.5
    m = fastdrop.dropout_mask(1 << 20, p, seed=99).astype(np.int8)
    edges = np.flatnonzero(np.diff(np.concatenate([[0], m, [0]])))
    runs = edges[1::2] - edges[::2]
    counts = np.bincount(runs, minlength=12)[1:12]
    k = np.arange(1, 12)
    expected = len(runs) * p * (1 - p) ** (k - 1)  # P(run = k) = (1-q) q^(k-1), q = keep prob
    counts = np.append(counts, len(runs) - counts.sum())
    expected = np.append(expected, len(runs) - expected.sum())
    assert stats.chisquare(counts, expected).pvalue > ALPHA
