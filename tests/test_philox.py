"""Philox4x32-10 against Random123's known-answer vectors, and the mask contract from README."""
import numpy as np
import pytest

import fastdrop

KAT = [  # (counter, key, expected) from Random123's kat_vectors
    ([0, 0, 0, 0], [0, 0], [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]),
    ([0xFFFFFFFF] * 4, [0xFFFFFFFF] * 2, [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]),
    ([0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344], [0xA4093822, 0x299F31D0],
     [0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1]),
]


@pytest.mark.parametrize("counter, key, expected", KAT)
def test_known_answers(counter, key, expected):
    out = fastdrop.philox4x32(counter, key)
    assert out.dtype == np.uint32 and out.shape == (4,)
    assert out.tolist() == expected


def test_vectorized_over_counters():
    counters = np.array([k[0] for k in KAT], dtype=np.uint64)
    out = fastdrop.philox4x32(counters.reshape(3, 1, 4), KAT[0][1])
    assert out.shape == (3, 1, 4)
    assert out[0, 0].tolist() == KAT[0][2]


def test_rounds_change_output():
    assert fastdrop.philox4x32([0, 0, 0, 0], [0, 0], rounds=7).tolist() != KAT[0][2]


@pytest.mark.parametrize("bad, exc", [
    (dict(counter=[0, 0, 0], key=[0, 0]), ValueError),
    (dict(counter=[0, 0, 0, 0], key=[0]), ValueError),
    (dict(counter=[0, 0, 0, 2**32], key=[0, 0]), ValueError),
    (dict(counter=[0, 0, 0, -1], key=[0, 0]), ValueError),
    (dict(counter=[0.5, 0, 0, 0], key=[0, 0]), TypeError),
    (dict(counter=[0, 0, 0, 0], key=[0, 0], rounds=-1), ValueError),
])
def test_bad_arguments(bad, exc):
    with pytest.raises(exc):
        fastdrop.philox4x32(**bad)


def reference_mask(shape, p, seed, offset=0):
    """README's numpy recipe, kept verbatim: the mask contract written independently of the kernels."""
    n = int(np.prod(shape))
    b = np.arange((n + 3) // 4, dtype=np.uint64)
    ctr = np.stack([b & 0xFFFFFFFF, b >> 32,
                    np.full_like(b, offset & 0xFFFFFFFF), np.full_like(b, offset >> 32)], -1)
    words = fastdrop.philox4x32(ctr, [seed & 0xFFFFFFFF, seed >> 32]).reshape(-1)[:n]
    return (words.astype(np.uint64) < int(np.floor((1 - p) * 2**32))).reshape(shape)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 1023), (0, 4), ()])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed, offset", [(0, 0), (42, 7), (2**64 - 1, 2**64 - 1), (2**40 + 3, 2**33)])
def test_mask_matches_contract(shape, p, seed, offset):
    np.testing.assert_array_equal(fastdrop.dropout_mask(shape, p, seed, offset),
                                  reference_mask(shape, p, seed, offset))


def test_threshold_resolution():
    assert fastdrop.keep_threshold(0.0) == 2**32
    assert fastdrop.keep_threshold(1.0) == 0
    assert fastdrop.keep_threshold(0.5) == 2**31
    for p in (0.1, 0.3, 0.9):
        assert abs(fastdrop.keep_threshold(p) / 2**32 - (1 - p)) <= 2**-32


def test_mask_is_prefix_stable():
    """The mask of element i depends on i only, not on the total size."""
    big = fastdrop.dropout_mask(1001, 0.5, 9)
    assert (fastdrop.dropout_mask(37, 0.5, 9) == big[:37]).all()
    assert (fastdrop.dropout_mask((10, 100), 0.5, 9).reshape(-1) == big[:1000]).all()
