"""Uniform (affine) quantization: b-bit integer codes, a scale and a zero-point.

One real number line, cut into 2**b equal steps of width s, shifted so that the code z
stands for 0.0 exactly:

    x_q = clamp(round(x / s) + z, q_min, q_max)              quantize   (round: half to even)
    x̂   = s (x_q - z)                                        dequantize
    |x - x̂| <= s/2            for q_min <= x/s + z <= q_max   (inside the range)

Symbols: x real values, s > 0 scale (step), z zero-point (an integer code, z = code of 0.0),
b bits, [q_min, q_max] the code range, x̂ the dequantized ("fake-quantized") value.

Choosing s and z from the observed range [x_min, x_max] (first widened to contain 0, so
that 0.0 is exactly representable — padding and ReLU zeros stay exact):

    asymmetric:  s = (x_max - x_min) / (q_max - q_min),    z = q_min - round(x_min / s)
                 (unsigned codes, q_min = 0:  s = (max - min)/(2^b - 1),  z = round(-min / s))
    symmetric:   s = max(|x_min|, |x_max|) / ((q_max - q_min) / 2),   z = 0 (signed codes)

Code ranges (``code_range``), refquant's default ("refquant" convention):

    signed,   symmetric   [-(2^(b-1) - 1), 2^(b-1) - 1]   restricted: -q_max..q_max, s = absmax / q_max
    signed,   asymmetric  [-2^(b-1),       2^(b-1) - 1]
    unsigned, asymmetric  [0,              2^b - 1]
    unsigned, symmetric   [1,              2^b - 1]       offset binary: z = 2^(b-1)

Granularity: one (s, z) per tensor, per channel (every index of one axis), or per group
of G consecutive values along the reduction axis (``quantize``'s docstring has the group
formula). An optional range search shrinks [x_min, x_max] on a grid to minimise the
L^p error, as GPTQ's reference quantizer does.

Two conventions, both bit-exact with what they mirror:

* ``"refquant"`` (default; the tutorial's formulas, the GPTQ reference quantizer's
  ``round(x / scale)``): codes from a true division ``x / s``; the restricted symmetric range;
  an all-zero block gets s = 1 (any s reproduces it exactly).
* ``"torch"`` (``torch.ao.quantization`` observers + ``torch.fake_quantize_per_*_affine``):
  full code ranges (``torch_code_range``), so a symmetric scale is absmax / 127.5 for 8 bits;
  s floored at eps = 2^-23 (``torch.finfo(torch.float32).eps``); codes from a multiplication by
  ``inv_scale = 1.0f / s`` computed in float32 — see ``quantize_codes_torch``. x * fl(1/s) and
  x / s differ in the last bit now and then, which moves a value sitting near a rounding
  midpoint to the other code.

Ref: Jacob et al. 2018 (integer-arithmetic-only inference, the affine scheme);
Nagel et al. 2021 ("A White Paper on Neural Network Quantization", symmetric/asymmetric,
per-channel); torch/ao/quantization/observer.py ``_calculate_qparams``;
aten/src/ATen/native/quantized/cpu/kernels/QuantizedOpKernels.cpp
(``_fake_quantize_tensor_helper``, ``_fake_quant_per_channel_cachemask_cpu_helper``);
IST-DASLab/gptq quant.py ``Quantizer.find_params`` (range search).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._backend import namespace, to_numpy, from_numpy
from ._checks import check_bits, check_divisible, check_float_input
from ._packing import pack_bits, unpack_bits
from ._rounding import round_half_even

__all__ = [
    "code_range", "torch_code_range", "qparams", "quantize_codes", "dequantize_codes",
    "quantize_codes_torch", "fake_quantize_codes", "range_search",
    "UniformQuantized", "quantize", "dequantize", "fake_quantize",
    "pack_codes", "unpack_codes",
    "bits_per_weight", "model_size_bytes", "TORCH_EPS", "GRANULARITIES", "CONVENTIONS",
]

GRANULARITIES = ("tensor", "channel", "group")
CONVENTIONS = ("refquant", "torch")
TORCH_EPS = 2.0**-23  # torch.finfo(torch.float32).eps: the observers' smallest scale

# GPTQ reference quantizer's search defaults (quant.py: grid=100, maxshrink=.8, norm=2.4)
SEARCH_GRID = 100
SEARCH_MAX_SHRINK = 0.8
SEARCH_NORM = 2.4


# --------------------------------------------------------------------------- code ranges


def code_range(bits: int, symmetric: bool, signed: bool = True) -> tuple[int, int]:
    """The integer codes [q_min, q_max] of b-bit quantization (refquant's convention).

        signed,   symmetric:  [-(2^(b-1) - 1), 2^(b-1) - 1]   (restricted; -2^(b-1) unused)
        signed,   asymmetric: [-2^(b-1), 2^(b-1) - 1]
        unsigned, asymmetric: [0, 2^b - 1]
        unsigned, symmetric:  [1, 2^b - 1]                     (the signed range + 2^(b-1))

    The restricted symmetric range keeps -x̂ = D(Q(-x)): the grid is mirror-symmetric.

    Example: code_range(4, True) == (-7, 7); code_range(4, False, signed=False) == (0, 15).
    """
    b = check_bits(bits)
    half = 1 << (b - 1)
    if signed:
        return (-(half - 1), half - 1) if symmetric else (-half, half - 1)
    return (1, (1 << b) - 1) if symmetric else (0, (1 << b) - 1)


def torch_code_range(bits: int, signed: bool = True) -> tuple[int, int]:
    """The full b-bit code range that torch's observers are given for b-bit quantization.

        signed: [-2^(b-1), 2^(b-1) - 1]      unsigned: [0, 2^b - 1]

    (``torch.qint8``/``torch.quint8`` with ``quant_min``/``quant_max`` set to these.)
    """
    b = check_bits(bits)
    return (-(1 << (b - 1)), (1 << (b - 1)) - 1) if signed else (0, (1 << b) - 1)


# --------------------------------------------------------------------------- the maths


def qparams(x_min: Any, x_max: Any, bits: int, symmetric: bool, signed: bool = True, *,
            q_range: tuple[int, int] | None = None, eps: float = 0.0) -> tuple[Any, Any]:
    """Scale and zero-point from an observed range, elementwise.

        x_min <- min(x_min, 0),  x_max <- max(x_max, 0)       (0.0 exactly representable)
        symmetric:   s = max(-x_min, x_max) / ((q_max - q_min) / 2)
                     z = 0 (signed)  or  (q_min + q_max) // 2 (unsigned)
        asymmetric:  s = (x_max - x_min) / (q_max - q_min)
                     z = clamp(q_min - round(x_min / s), q_min, q_max)
        s <- max(s, eps) if eps > 0;  else s <- 1 where s == 0 (an all-zero block)

    x_min, x_max: arrays of one shape (e.g. (rows, 1) from a keepdims reduction) -> s, z of
    that shape and dtype (z holds integers, stored as floats so that ``s * (q - z)`` stays in
    one dtype). [q_min, q_max] is ``code_range(bits, symmetric, signed)`` unless ``q_range``
    is given (torch: ``torch_code_range``, ``eps=TORCH_EPS``).

    The arithmetic is torch's observer's, op for op in the input dtype (float32 for torch):
    a division by the Python float (q_max - q_min) or its half, round half to even.

    Example (asymmetric 2-bit unsigned, range [-1, 2]): s = 3/3 = 1, z = 0 - round(-1/1) = 1;
    codes 0..3 stand for -1, 0, 1, 2.
    """
    check_bits(bits)
    q_min, q_max = q_range if q_range is not None else code_range(bits, symmetric, signed)
    if not q_min < q_max:
        raise ValueError(f"q_range: expected q_min < q_max, got {(q_min, q_max)}")
    xp = namespace(x_min, x_max)
    x_min = xp.minimum(x_min, xp.zeros_like(x_min))  # min(x_min, 0)
    x_max = xp.maximum(x_max, xp.zeros_like(x_max))  # max(x_max, 0)
    if symmetric:
        absmax = xp.maximum(-x_min, x_max)
        s = absmax / (float(q_max - q_min) / 2)
        s = _floor_scale(xp, s, eps)
        z_code = 0 if signed else (q_min + q_max) // 2
        z = xp.full(s.shape, float(z_code), dtype=s.dtype, device=_dev(s))
    else:
        s = (x_max - x_min) / float(q_max - q_min)
        s = _floor_scale(xp, s, eps)
        z = q_min - round_half_even(x_min / s)
        z = xp.clip(z, float(q_min), float(q_max))
    return s, z


def _floor_scale(xp: Any, s: Any, eps: float) -> Any:
    if eps > 0:
        return xp.maximum(s, xp.full(s.shape, eps, dtype=s.dtype, device=_dev(s)))  # torch.max(scale, eps)
    return xp.where(s == 0, xp.ones_like(s), s)  # all-zero block: every code is z, x̂ = 0 exactly


def _dev(x: Any) -> Any:
    from ._backend import device

    return device(x)


def quantize_codes(x: Any, s: Any, z: Any, q_min: int, q_max: int) -> Any:
    """Integer codes by true division (the tutorial's, and the GPTQ reference's, formula).

        q = clamp(round_half_even(x / s) + z, q_min, q_max)

    x: float array; s, z: broadcastable to x (z integral-valued) -> q: int32, x's shape.
    The clamp is done in floating point first, so huge |x / s| (even ±inf) cannot overflow
    the integer cast.
    """
    xp = namespace(x)
    q = round_half_even(x / s) + z
    q = xp.clip(q, float(q_min), float(q_max))
    return xp.astype(q, xp.int32)


def quantize_codes_torch(x: Any, s: Any, z: Any, q_min: int, q_max: int) -> Any:
    """Integer codes as torch's CPU fake-quant kernels compute them: multiply by 1/s.

        inv_s = fl32(1.0f / fl32(s))                  (float ``inv_scale`` in the C++ kernel)
        q     = clamp(nearbyint(x * inv_s) + z, q_min, q_max)

    ``std::nearbyint`` rounds half to even (default FP environment). The product is taken in
    x's dtype (float32 for float32 x; a double input meets the float inv_s widened).
    Ref: QuantizedOpKernels.cpp ``_fake_quantize_tensor_helper`` (per-tensor) and
    ``_fake_quant_per_channel_cachemask_cpu_helper`` (per-channel, integer zero-point).
    x: float array; s, z broadcastable -> q: int32.
    """
    xp = namespace(x)
    s32 = xp.astype(s, xp.float32)
    inv_s = xp.astype(1.0 / s32, x.dtype)  # reciprocal rounded to float32, as in C++
    q = round_half_even(x * inv_s) + xp.astype(z, x.dtype)
    q = xp.clip(q, float(q_min), float(q_max))
    return xp.astype(q, xp.int32)


def dequantize_codes(q: Any, s: Any, z: Any) -> Any:
    """x̂ = s (q - z), in s's dtype.

    q: integer (or integral float) codes; s, z broadcastable -> x̂ of the broadcast shape.
    (q - z) is a small integer, exact in float; the product is rounded once — the same value
    torch's ``(q - z) * scale`` gives.
    """
    xp = namespace(q, s)
    return s * (xp.astype(q, s.dtype) - xp.astype(z, s.dtype))


def fake_quantize_codes(x: Any, s: Any, z: Any, q_min: int, q_max: int, convention: str = "refquant") -> Any:
    """x̂ = D(Q(x)) for given s, z — the drop-in for ``torch.fake_quantize_per_*_affine``.

    With ``convention="torch"`` and float32 x, bit-identical to
    ``torch.fake_quantize_per_tensor_affine(x, s, z, q_min, q_max)`` (and the per-channel op).
    """
    _check_choice(convention, CONVENTIONS, "convention")
    codes = quantize_codes_torch if convention == "torch" else quantize_codes
    xp = namespace(x)
    s = xp.astype(s, xp.float32) if convention == "torch" else s
    x_hat = dequantize_codes(codes(x, s, z, q_min, q_max), xp.astype(s, x.dtype), z)
    return x_hat


def _check_choice(value: Any, choices: tuple, name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
