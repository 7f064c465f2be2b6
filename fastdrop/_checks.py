"""Argument validation shared by every public entry point: fail before any work or allocation."""
import math
import numbers

import numpy as np

MAX_U64 = (1 << 64) - 1
FLOAT_DTYPES = (np.float16, np.float32, np.float64)
MODES = ("inverted", "classic")


def check_p(p, name="p"):
    """p must be a real number in [0, 1]; returns it as a Python float."""
    if isinstance(p, (bool, np.bool_)) or not isinstance(p, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(p).__name__} {p!r}")
    p = float(p)
    if math.isnan(p) or not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {name}={p}")
    return p


def check_u64(value, name):
    """Seeds and offsets are integers in [0, 2**64)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int in [0, 2**64), got {type(value).__name__} {value!r}")
    value = int(value)
    if not 0 <= value <= MAX_U64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value}")
    return value


def check_mode(mode):
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    return mode


def check_float_dtype(dtype, what="x"):
    """Dropout is defined for real floating point data only."""
    if np.dtype(dtype).type not in FLOAT_DTYPES:
        raise TypeError(f"{what} must have a floating point dtype (float16, float32, float64), got {dtype}")


def check_shape(shape):
    """A shape: a sequence of non-negative ints (or a single int)."""
    if isinstance(shape, numbers.Integral):
        shape = (shape,)
    try:
        shape = tuple(shape)
    except TypeError:
        raise TypeError(f"shape must be a sequence of ints, got {shape!r}") from None
    for s in shape:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, numbers.Integral) or s < 0:
            raise ValueError(f"shape must be a sequence of non-negative ints, got {shape!r}")
    return tuple(int(s) for s in shape)
