"""Input validation shared by every format: one wording, naming the argument.

Errors are ``ValueError`` (bad value/shape) or ``TypeError`` (bad dtype/kind); every
message names the argument and states what was expected, e.g.

    ValueError: x: last dimension 100 is not a multiple of the group size G=64
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._backend import namespace

__all__ = ["check_weight_matrix", "check_float", "check_finite", "check_bits", "check_int", "check_float32_range", "check_divisible",
           "check_nonempty", "check_number"]


def check_float(x: Any, name: str = "x") -> None:
    """``x`` must be a real floating-point array (float16/bfloat16/float32/float64)."""
    xp = namespace(x)
    if not hasattr(x, "dtype") or not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name}: expected a real floating-point array, got dtype {getattr(x, 'dtype', type(x).__name__)}")


def check_nonempty(x: Any, name: str = "x") -> None:
    if x.ndim == 0 or any(int(n) == 0 for n in x.shape):
        raise ValueError(f"{name}: expected a non-empty array with at least one dimension, got shape {tuple(x.shape)}")


def check_finite(x: Any, name: str = "x") -> None:
    """``x`` must hold no NaN or ±Inf.

    >>> check_finite(np.float32([1.0, np.nan]), "W")
    Traceback (most recent call last):
    ValueError: W: contains NaN or Inf; quantization needs finite values
    """
    xp = namespace(x)
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name}: contains NaN or Inf; quantization needs finite values")


def check_float32_range(x: Any, name: str = "x", what: str = "this format") -> None:
    """Finite ``x`` whose magnitudes fit float32 (|x| <= 3.4028235e38), for code that computes in float32.

    A float64 1e300 is finite but becomes inf when cast; say so instead of "NaN or Inf".
    """
    xp = namespace(x)
    if xp.isdtype(x.dtype, "real floating") and x.dtype == getattr(xp, "float64", None):
        peak = float(xp.max(xp.abs(x)))
        if peak > FLOAT32_MAX:
            raise ValueError(f"{name}: values up to {peak:.3g} are outside float32's range (±{FLOAT32_MAX:.4g}); "
                             f"{what} computes in float32")


#: the largest finite float32, np.finfo(np.float32).max
FLOAT32_MAX = 3.4028234663852886e38


def check_bits(bits: Any, lo: int = 2, hi: int = 8, name: str = "bits") -> int:
    """An integral bit width in lo..hi (Python or NumPy integer, not a bool) -> int."""
    return check_int(bits, name, lo, hi)


def check_int(value: Any, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """An integral argument (Python ``int`` or a NumPy integer such as ``np.int64``; not a bool) in
    [lo, hi] -> a Python int. The message names the argument, the range and, for a wrong type, the type.

    >>> check_int(np.int64(4), "bits", 2, 8)
    4
    >>> check_int(True, "bits", 2, 8)
    Traceback (most recent call last):
    ValueError: bits: expected an integer in 2..8, got True of type bool
    """
    ok_type = isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))
    if ok_type and (lo is None or value >= lo) and (hi is None or value <= hi):
        return int(value)
    if lo is not None and hi is not None:
        want = f"an integer in {lo}..{hi}"
    elif lo is not None:
        want = f"an integer >= {lo}"
    else:
        want = "an integer" if hi is None else f"an integer <= {hi}"
    got = f"{value!r}" if ok_type else f"{value!r} of type {type(value).__name__}"
    raise ValueError(f"{name}: expected {want}, got {got}")


def check_divisible(n: int, block: int, name: str, what: str = "group size") -> None:
    """``n`` must be a whole number of positive ``block``s.

    >>> check_divisible(100, 64, "x")
    Traceback (most recent call last):
    ValueError: x: length 100 is not a multiple of the group size 64
    """
    if block <= 0:
        raise ValueError(f"{name}: {what} must be positive, got {block}")
    if n % block:
        raise ValueError(f"{name}: length {n} is not a multiple of the {what} {block}")


def check_float_input(x: Any, name: str = "x") -> None:
    """The usual trio for a tensor to be quantized: floating, non-empty, finite."""
    check_float(x, name)
    check_nonempty(x, name)
    check_finite(x, name)


def check_weight_matrix(W: Any, name: str = "W") -> None:
    """A weight to quantize: a floating (out, in) matrix, non-empty, finite."""
    check_float(W, name)
    check_nonempty(W, name)
    if W.ndim != 2:
        raise ValueError(f"{name}: expected a matrix (out, in), got shape {tuple(W.shape)}")
    check_finite(W, name)


def check_number(value: Any, name: str, lo: float | None = None, hi: float | None = None, *,
                 integer: bool = False, lo_open: bool = False) -> Any:
    """A scalar argument (a grid size, a damping fraction): a finite int/float in [lo, hi].

    ``lo_open``: lo itself is excluded, (lo, hi]. ``integer``: an integral number (not a bool;
    NumPy scalars count). Returns the value; raises ValueError naming the argument, e.g.
    ``percdamp: expected a finite number > 0, got inf``.

    >>> check_number(0.01, "percdamp", 0, 1, lo_open=True)
    0.01
    >>> check_number(float("inf"), "percdamp", 0, lo_open=True)
    Traceback (most recent call last):
    ValueError: percdamp: expected a finite number > 0, got inf
    """
    kind = "an integer" if integer else "a finite number"
    if lo is not None and hi is not None:
        want = f"{kind} in {'(' if lo_open else '['}{lo:g}, {hi:g}]"
    elif lo is not None:
        want = f"{kind} {'>' if lo_open else '>='} {lo:g}"
    else:
        want = kind if hi is None else f"{kind} <= {hi:g}"
    types = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, types) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo)) and (hi is None or value <= hi)
    if not ok:
        raise ValueError(f"{name}: expected {want}, got {value!r}")
    return value
