"""Rounding modes, named once and used everywhere.

Quantizers differ most in *how* they round, and bit-exact parity hinges on it:

| name              | rule                                   | who uses it                          |
|-------------------|----------------------------------------|--------------------------------------|
| round_half_even   | ties to the even integer (IEEE default)| torch.round, numpy.round, ggml's     |
|                   |                                        | ``nearest_int`` (float magic-number) |
| round_half_away   | ties away from zero                    | C ``roundf``/``lroundf`` (ggml's     |
|                   |                                        | legacy quantizers use ``roundf``)    |
| trunc             | toward zero                            | a C cast ``(int)x``, ``(int8_t)x``   |
| to_fp16 / to_bf16 | nearest-even into half / bfloat16      | a scale stored as ``ggml_half``,     |
|                   |                                        | ``GGML_FP32_TO_BF16``                |

All take and return arrays of the caller's namespace (``xp``); ``to_fp16`` returns the
float32 value of the nearest float16 — the value the decoder will see.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import from_numpy, namespace, to_numpy

__all__ = ["round_half_even", "round_half_away", "trunc", "to_fp16", "to_bf16_bits", "bf16_bits_to_f32"]


def round_half_even(x: Any) -> Any:
    """Nearest integer, ties to even: 0.5 -> 0, 1.5 -> 2, -2.5 -> -2 (array-API ``round``).

    >>> round_half_even(np.float32([0.5, 1.5, -2.5, 2.6])).tolist()
    [0.0, 2.0, -2.0, 3.0]
    """
    xp = namespace(x)
    return xp.round(x)


def round_half_away(x: Any) -> Any:
    """Nearest integer, ties away from zero, as C's ``roundf``: 0.5 -> 1, -2.5 -> -3.

    sign(x) * floor(|x| + 0.5) would be wrong for 0.49999997 (|x| + 0.5 rounds up to 1.0
    in float32), so we use trunc(x) and compare the discarded fraction with one half.

    >>> round_half_away(np.float32([0.5, 1.5, -2.5, 2.6, 0.49999997])).tolist()
    [1.0, 2.0, -3.0, 3.0, 0.0]
    """
    xp = namespace(x)
    t = xp.trunc(x)
    frac = x - t  # exact in binary floating point, same sign as x
    # one step away from zero where the discarded fraction is at least a half; a 0/1 mask
    # times sign(x) rather than xp.where, which is many times slower on NumPy
    return t + xp.astype(xp.abs(frac) >= 0.5, x.dtype) * xp.sign(x)


def trunc(x: Any) -> Any:
    """Toward zero, as a C cast ``(int)x``.

    >>> trunc(np.float32([2.7, -2.7, -0.5])).tolist()
    [2.0, -2.0, -0.0]
    """
    xp = namespace(x)
    return xp.trunc(x)


def to_fp16(x: Any) -> Any:
    """float32 -> nearest float16 (ties to even) -> back to x's dtype.

    This is ``GGML_FP32_TO_FP16`` (F16C ``vcvtps2ph`` with round-to-nearest-even, and the
    portable fallback agrees) and torch's ``.half()``. Values beyond 65504 become ±inf.
    Namespaces without a float16 dtype (array-api-strict) round through NumPy.

    Example: 0.1 is 1638.4 steps of 2^-14 (its binade's float16 spacing), so 1638 · 2^-14;
    2049 lies halfway between 2048 and 2050 and goes to the even mantissa, 2048.

    >>> to_fp16(np.float32([0.1, 2049.0, 65504.0])).tolist()
    [0.0999755859375, 2048.0, 65504.0]
    """
    xp = namespace(x)
    if hasattr(xp, "float16"):
        return xp.astype(xp.astype(x, xp.float16), x.dtype)
    with np.errstate(over="ignore"):
        h = np.asarray(to_numpy(x)).astype(np.float16)
    return xp.astype(from_numpy(h.astype(np.float32), like=x), x.dtype)


def to_bf16_bits(x32: Any) -> Any:
    """float32 NumPy array -> uint16 bfloat16 bit patterns, round to nearest even (NaN kept quiet).

    ggml's ``GGML_FP32_TO_BF16``: u + 0x7fff + ((u >> 16) & 1), then keep the top 16 bits.
    NumPy-only (it needs a bit-cast).

    Example: 1 + 2^-8 is halfway between bfloat16's 1.0 (0x3f80) and 1 + 2^-7 (0x3f81): the
    even one wins; 1 + 3·2^-8 is halfway between 0x3f81 and 0x3f82: 0x3f82.

    >>> [hex(b) for b in to_bf16_bits(np.float32([1.0, 1 + 2**-8, 1 + 3 * 2**-8, -2.0])).tolist()]
    ['0x3f80', '0x3f80', '0x3f82', '0xc000']
    """
    u = np.ascontiguousarray(x32, dtype=np.float32).view(np.uint32)
    # uint32 arithmetic: u + 0x7fff + 1 wraps only for NaN patterns (u > 0xffff7fff), replaced below
    rounded = ((u + (0x7FFF + ((u >> 16) & 1))) >> 16).astype(np.uint16)
    is_nan = (u & 0x7FFFFFFF) > 0x7F800000
    if is_nan.any():  # np.where is slow; most tensors hold no NaN
        rounded = np.where(is_nan, ((u >> 16) | 64).astype(np.uint16), rounded)
    return rounded


def bf16_bits_to_f32(b: Any) -> Any:
    """uint16 bfloat16 bit patterns -> float32 (exact). NumPy-only.

    >>> bf16_bits_to_f32(np.uint16([0x3F80, 0x4040, 0xC000])).tolist()
    [1.0, 3.0, -2.0]
    """
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)
