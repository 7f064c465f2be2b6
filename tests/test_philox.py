"""Philox4x32-10 against Random123's known-answer vectors, and the mask contract from README."""
import numpy as np
import pytest

import fastdrop
from contract import mask as reference_mask

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
    (dict(counter=[0, 0, 0, 0], key=[0, 0], rounds=2**70), ValueError),
    (dict(counter=[0, 0, 0, 0], key=[0, 0], rounds=10.0), TypeError),
])
def test_bad_arguments(bad, exc):
    with pytest.raises(exc):
        fastdrop.philox4x32(**bad)


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 5), (2, 3, 1023), (0, 4), ()])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("seed, offset", [(0, 0), (42, 7), (2**64 - 1, 2**64 - 1), (2**40 + 3, 2**33)])
def test_mask_matches_contract(shape, p, seed, offset):
    np.testing.assert_array_equal(fastdrop.dropout_mask(shape, p, seed, offset),
                                  reference_mask(shape, p, seed, offset))


def test_threshold_resolution():
    assert fastdrop.keep_threshold(0.0) == 2**16
    assert fastdrop.keep_threshold(1.0) == 0
    assert fastdrop.keep_threshold(0.5) == 2**15
    for p in (0.1, 0.3, 0.9, 1e-3):
        assert 0 <= (1 - p) - fastdrop.keep_threshold(p) / 2**16 < 2**-16
    # the floor rounds the keep probability down: any p > 0 drops at least 2^-16 of the elements,
    # and a p within 2^-16 of 1 drops everything
    assert fastdrop.keep_threshold(1e-12) == 2**16 - 1
    assert fastdrop.keep_threshold(1 - 2**-16) == 1
    assert fastdrop.keep_threshold(1 - 1e-12) == 0


def test_mask_is_prefix_stable():
    """The mask of element i depends on i only, not on the total size."""
    big = fastdrop.dropout_mask(1001, 0.5, 9)
    assert (fastdrop.dropout_mask(37, 0.5, 9) == big[:37]).all()
    assert (fastdrop.dropout_mask((10, 100), 0.5, 9).reshape(-1) == big[:1000]).all()


# Frozen masks of contract version 2: 64 elements each, packed little-endian (element 0 = bit 0 of
# byte 0). Any change to the mask layout, the threshold or the Philox source changes them. The
# first one by hand: block 0 of (seed 0, offset 0) is Random123's first vector above, whose halves
# E8D5 6627 C58D E169 AC4C BC57 DBD8 9B00 keep only element 1 at T(0.5) = 0x8000: byte 0x02.
KNOWN_MASKS = [
    ((0.5, 0, 0), "029cfedc109ac18d"),
    ((0.1, 42, 7), "ffeef67feff7ffff"),
    ((0.9, 2**64 - 1, 2**64 - 1), "00108000a2001800"),
    ((0.3, 2**40 + 3, 2**33), "3fffbddc719dfe9d"),
]


@pytest.mark.parametrize("args, packed", KNOWN_MASKS)
def test_known_mask_vectors(args, packed):
    p, seed, offset = args
    expected = np.unpackbits(np.frombuffer(bytes.fromhex(packed), np.uint8), bitorder="little").astype(bool)
    np.testing.assert_array_equal(fastdrop.dropout_mask((64,), p, seed, offset), expected)
    np.testing.assert_array_equal(reference_mask((64,), p, seed, offset), expected)


def test_readme_recipe_runs_and_matches():
    """The numpy recipe in README's "The mask" section, executed as written (its own assert
    included), agrees with the kernels and with tests/contract.py."""
    import pathlib
    import re
    readme = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("Reproduce a mask with numpy alone"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope = {}
    exec(compile(code, "README recipe", "exec"), scope)
    for args in [((7, 9), 0.1, 2**64 - 1, 5), ((64,), 0.5, 0, 0), ((3, 1025), 0.9, 42, 2**40)]:
        np.testing.assert_array_equal(scope["mask"](*args), fastdrop.dropout_mask(*args))
        np.testing.assert_array_equal(scope["mask"](*args), reference_mask(*args))
