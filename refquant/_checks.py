"""Input validation shared by every format: one wording, naming the argument.

Errors are ``ValueError`` (bad value/shape) or ``TypeError`` (bad dtype/kind); every
message names the argument and states what was expected, e.g.

    ValueError: x: last dimension 100 is not a multiple of the group size G=64
"""

from __future__ import annotations

import math
import numbers
from typing import Any

from ._backend import namespace

__all__ = ["check_float", "check_finite", "check_bits", "check_divisible", "check_nonempty", "check_number"]


def check_float(x: Any, name: str = "x") -> None:
    """``x`` must be a real floating-point array (float16/bfloat16/float32/float64)."""
    xp = namespace(x)
    if not hasattr(x, "dtype") or not xp.isdtype(x.dtype, "real floating"):
        raise TypeError(f"{name}: expected a real floating-point array, got dtype {getattr(x, 'dtype', type(x).__name__)}")


def check_nonempty(x: Any, name: str = "x") -> None:
    if x.ndim == 0 or any(int(n) == 0 for n in x.shape):
        raise ValueError(f"{name}: expected a non-empty array with at least one dimension, got shape {tuple(x.shape)}")


def check_finite(x: Any, name: str = "x") -> None:
    """``x`` must hold no NaN or ±Inf."""
    xp = namespace(x)
    if not bool(xp.all(xp.isfinite(x))):
        raise ValueError(f"{name}: contains NaN or Inf; quantization needs finite values")


def check_bits(bits: int, lo: int = 2, hi: int = 8, name: str = "bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or not lo <= bits <= hi:
        raise ValueError(f"{name}: expected an integer in {lo}..{hi}, got {bits!r}")
    return bits


def check_divisible(n: int, block: int, name: str, what: str = "group size") -> None:
    if block <= 0:
        raise ValueError(f"{name}: {what} must be positive, got {block}")
    if n % block:
        raise ValueError(f"{name}: length {n} is not a multiple of the {what} {block}")


def check_float_input(x: Any, name: str = "x") -> None:
    """The usual trio for a tensor to be quantized: floating, non-empty, finite."""
    check_float(x, name)
    check_nonempty(x, name)
    check_finite(x, name)


def check_number(value: Any, name: str, lo: float | None = None, hi: float | None = None, *,
                 integer: bool = False, lo_open: bool = False) -> Any:
    """A scalar argument (a grid size, a damping fraction): a finite int/float in [lo, hi].

    ``lo_open``: lo itself is excluded, (lo, hi]. ``integer``: an integral number (not a bool;
    NumPy scalars count). Returns the value; raises ValueError naming the argument, e.g.
    ``percdamp: expected a finite number > 0, got inf``.
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
