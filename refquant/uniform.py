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
import numbers
from typing import Any, NamedTuple

import numpy as np

from ._backend import clamp_, device, min_max, namespace, rint_, to_numpy
from ._checks import check_bits, check_divisible, check_finite, check_float, check_int
from ._checks import check_nonempty
from ._packing import pack_bits, unpack_bits
from ._rounding import round_half_even

__all__ = [
    "code_range", "torch_code_range", "qparams", "quantize_codes", "dequantize_codes",
    "quantize_codes_torch", "fake_quantize_codes", "range_search", "torch_observer_qparams",
    "UniformQuantized", "quantize", "dequantize", "fake_quantize",
    "pack_codes", "unpack_codes",
    "bits_per_weight", "model_size_bytes", "stored_bytes", "TORCH_EPS", "TORCH_QUINT8_SYMMETRIC_ZERO", "GRANULARITIES",
    "CONVENTIONS",
]

GRANULARITIES = ("tensor", "channel", "group")
CONVENTIONS = ("refquant", "torch")
TORCH_EPS = 2.0**-23  # torch.finfo(torch.float32).eps: the observers' smallest scale
#: zero-point of a *default-configured* quint8 symmetric torch observer (observer.py
#: ``_calculate_qparams``: 128; with a customized quant_min/quant_max it is (q_min + q_max) // 2)
TORCH_QUINT8_SYMMETRIC_ZERO = 128

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

    Example:

    >>> code_range(4, True), code_range(4, False), code_range(4, False, signed=False)
    ((-7, 7), (-8, 7), (0, 15))
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
            q_range: tuple[int, int] | None = None, eps: float = 0.0, zero_scale: float = 1.0,
            z_unsigned_symmetric: int | None = None) -> tuple[Any, Any]:
    """Scale and zero-point from an observed range, elementwise.

        x_min <- min(x_min, 0),  x_max <- max(x_max, 0)       (0.0 exactly representable)
        symmetric:   s = max(-x_min, x_max) / ((q_max - q_min) / 2)
                     z = 0 (signed)  or  (q_min + q_max) // 2 (unsigned)
        asymmetric:  s = (x_max - x_min) / (q_max - q_min)
                     z = clamp(q_min - round(x_min / s), q_min, q_max)
        s <- max(s, eps) if eps > 0;  else s <- zero_scale where s == 0 (an all-zero block)

    ``z_unsigned_symmetric`` overrides the unsigned symmetric zero-point (torch's default quint8
    observer uses ``TORCH_QUINT8_SYMMETRIC_ZERO`` = 128, see ``torch_observer_qparams``).
    A range the dtype cannot span raises ValueError naming it: x_max - x_min overflowing to inf
    (float32: a range wider than ±3.4e38), or a grid end s (q_min - z), s (q_max - z) that
    overflows (a range touching float32's largest value, widened by the zero-point's rounding).

    x_min, x_max: arrays of one shape (e.g. (rows, 1) from a keepdims reduction) -> s, z of
    that shape and dtype (z holds integers, stored as floats so that ``s * (q - z)`` stays in
    one dtype). [q_min, q_max] is ``code_range(bits, symmetric, signed)`` unless ``q_range``
    is given (torch: ``torch_code_range``, ``eps=TORCH_EPS``).

    The arithmetic is torch's observer's, op for op in the input dtype (float32 for torch):
    a division by the Python float (q_max - q_min) or its half, round half to even.
    Other libraries in these terms: llm-compressor / compressed-tensors divide the same way over
    ``torch_code_range`` (symmetric INT4: s = absmax / 7.5) and replace a zero scale by the
    dtype's eps (``zero_scale=2**-23``); an all-zero block reconstructs to 0 whatever s is.

    Example (asymmetric 2-bit unsigned, range [-1, 2]): s = 3/3 = 1, z = 0 - round(-1/1) = 1;
    codes 0..3 stand for -1, 0, 1, 2.

    >>> s, z = qparams(np.float32([-1.0]), np.float32([2.0]), bits=2, symmetric=False, signed=False)
    >>> print(s.tolist(), z.tolist())
    [1.0] [1.0]
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
        s = _floor_scale(xp, s, eps, zero_scale)
        z_code = 0 if signed else (q_min + q_max) // 2
        if not signed and z_unsigned_symmetric is not None:
            z_code = check_int(z_unsigned_symmetric, "z_unsigned_symmetric", q_min, q_max)
        z = xp.full(s.shape, float(z_code), dtype=s.dtype, device=device(s))
    else:
        with np.errstate(over="ignore"):  # an overflow is reported below, naming the range
            s = (x_max - x_min) / float(q_max - q_min)
        s = _floor_scale(xp, s, eps, zero_scale)
        _check_range_fits(xp, s, x_min, x_max, q_min, q_max, "the scale (x_max - x_min) / (q_max - q_min)")
        z = q_min - round_half_even(x_min / s)
        z = xp.clip(z, float(q_min), float(q_max))
    _check_range_fits(xp, s * (float(q_min) - z), x_min, x_max, q_min, q_max, "the grid end s (q_min - z)")
    _check_range_fits(xp, s * (float(q_max) - z), x_min, x_max, q_min, q_max, "the grid end s (q_max - z)")
    return s, z


def _check_range_fits(xp: Any, value: Any, x_min: Any, x_max: Any, q_min: int, q_max: int, what: str) -> None:
    """ValueError naming the observed range when ``value`` (a scale or a grid end) overflowed to ±inf."""
    if bool(xp.all(xp.isfinite(value))):
        return
    lo, hi = float(xp.min(x_min)), float(xp.max(x_max))
    raise ValueError(f"x: the range [{lo:.4g}, {hi:.4g}] does not fit {value.dtype}: {what} overflows to inf "
                     f"with codes {q_min}..{q_max}; rescale x (e.g. by a power of two) or quantize in float64")


def torch_observer_qparams(x_min: Any, x_max: Any, q_range: tuple[int, int], *, symmetric: bool, signed: bool,
                           customized_range: bool = True, float_qparams: bool = False,
                           eps: float = TORCH_EPS) -> tuple[Any, Any]:
    """(s, z) exactly as torch's MinMaxObserver / PerChannelMinMaxObserver ``calculate_qparams``.

    ``q_range`` is the observer's (quant_min, quant_max); ``signed``: qint8 (else quint8);
    ``customized_range``: the observer was given quant_min/quant_max (torch's
    ``has_customized_qrange``). Only the unsigned symmetric zero-point depends on it:

        symmetric, quint8:  z = 128 (default range)  or  (q_min + q_max) // 2 (customized)
        float_qparams (per_channel_affine_float_qparams):
                            s = (x_max - x_min) / (q_max - q_min), 1 where s <= eps;  z = -x_min / s (a float)
        otherwise:          ``qparams(..., q_range, eps)``

    Ref: torch/ao/quantization/observer.py ``UniformQuantizationObserverBase._calculate_qparams``.
    """
    q_min, q_max = (check_int(q, "q_range") for q in q_range)
    xp = namespace(x_min, x_max)
    if float_qparams:
        s = (x_max - x_min) / float(q_max - q_min)
        s = xp.where(s > eps, s, xp.ones_like(s))
        return s, (-1 * x_min) / s                                     # torch: -1 * min_val / scale
    z_sym = None if customized_range else TORCH_QUINT8_SYMMETRIC_ZERO
    return qparams(x_min, x_max, 8, symmetric, signed, q_range=(q_min, q_max), eps=eps, z_unsigned_symmetric=z_sym)


def _floor_scale(xp: Any, s: Any, eps: float, zero_scale: float) -> Any:
    if eps > 0:
        return xp.maximum(s, xp.full(s.shape, eps, dtype=s.dtype, device=device(s)))  # torch.max(scale, eps)
    if not zero_scale > 0:
        raise ValueError(f"zero_scale: expected a positive scale for all-zero blocks, got {zero_scale!r}")
    # all-zero block: every code is z and x̂ = 0 exactly, whatever the (positive) scale
    return xp.where(s == 0, xp.full(s.shape, zero_scale, dtype=s.dtype, device=device(s)), s)


def quantize_codes(x: Any, s: Any, z: Any, q_min: int, q_max: int) -> Any:
    """Integer codes by true division (the tutorial's, and the GPTQ reference's, formula).

        q = clamp(round_half_even(x / s) + z, q_min, q_max)

    x: float array; s, z: broadcastable to x (z integral-valued) -> q: int32, x's shape.
    The clamp is done in floating point first, so huge |x / s| (even ±inf) cannot overflow
    the integer cast.
    """
    xp = namespace(x)
    q = x / s
    if _fits_exactly(q_min, q_max) and getattr(z, "dtype", None) == q.dtype:
        q = _round_shift_clamp(q, z, q_min, q_max)          # the same values, in place
    else:
        q = xp.clip(round_half_even(q) + z, float(q_min), float(q_max))
    return xp.astype(q, xp.int32)


def _round_shift_clamp(t: Any, z: Any, q_min: int, q_max: int) -> Any:
    """clamp(round(t) + z, q_min, q_max), written over t where z broadcasts into t's shape."""
    t = rint_(t)                                       # round half to even
    t = _shift(t, z, 1)
    return clamp_(t, float(q_min), float(q_max))


def _shift(t: Any, z: Any, sign: int) -> Any:
    """t + sign·z, in place unless z's shape would grow t's (then a new array, same values)."""
    if not _broadcasts_into(z, t):
        return t + z if sign > 0 else t - z
    if sign > 0:
        t += z
    else:
        t -= z
    return t


def _broadcasts_into(z: Any, t: Any) -> bool:
    """z broadcasts to t's shape without growing it (so t can take the result in place)."""
    z_shape, t_shape = tuple(z.shape), tuple(t.shape)
    return len(z_shape) <= len(t_shape) and all(n in (1, m) for n, m in zip(z_shape[::-1], t_shape[::-1]))


def quantize_codes_torch(x: Any, s: Any, z: Any, q_min: int, q_max: int, *,
                         float_zero_point: bool | None = None) -> Any:
    """Integer codes as torch's CPU fake-quant kernels compute them: multiply by 1/s.

        inv_s = fl32(1.0f / fl32(s))                  (float ``inv_scale`` in the C++ kernel)
        integer z:  q = clamp(nearbyint(x * inv_s) + z, q_min, q_max)
        float z:    q = clamp(lrintf(z + x * inv_s), q_min, q_max)     (rounds *after* adding z)

    ``std::nearbyint`` / ``lrintf`` round half to even (default FP environment). The product
    is taken in float32 for float16 / bfloat16 / float32 x (torch's Half and BFloat16 promote
    to float against the float inv_s), in float64 for a double x; the float-z sum is rounded
    to float before ``lrintf``. Which branch: torch picks it by the zero-point tensor's dtype;
    here ``float_zero_point`` says it, and by default (None) an integral z takes the integer
    branch and a non-integral z the float one. An integer z outside [q_min, q_max] is an error,
    as in torch; a float z may lie anywhere.
    Ref: QuantizedOpKernels.cpp ``_fake_quantize_tensor_helper`` (per-tensor, integer z) and
    ``_fake_quant_per_channel_cachemask_cpu_helper`` (per-channel, both branches).
    x: float array; s, z broadcastable -> q: int32.
    """
    xp = namespace(x)
    float_z = _check_zero_point(xp, z, q_min, q_max, float_zero_point)
    xc = x if x.dtype == xp.float64 else xp.astype(x, xp.float32)           # the kernels' arithmetic type
    inv_s = xp.astype(1.0 / xp.astype(s, xp.float32), xc.dtype)           # reciprocal rounded to float32, as in C++
    if not float_z and _fits_exactly(q_min, q_max):
        q = _round_shift_clamp(xc * inv_s, xp.astype(z, xc.dtype), q_min, q_max)   # in place, same values
        return xp.astype(q, xp.int32)
    if float_z:
        t = xp.astype(z, xc.dtype) + xc * inv_s                             # zero_point + self * inv_scale
        q = round_half_even(xp.astype(t, xp.float32))                       # lrintf takes a float
    else:
        q = round_half_even(xc * inv_s) + xp.astype(z, xc.dtype)
    q = xp.clip(q, float(q_min), float(q_max))
    return xp.astype(q, xp.int32)


def _check_zero_point(xp: Any, z: Any, q_min: int, q_max: int, float_zero_point: bool | None) -> bool:
    """Which of torch's branches z takes (True: float z); an integer z must lie in [q_min, q_max]."""
    q_min, q_max = check_int(q_min, "q_min"), check_int(q_max, "q_max")
    if not q_min <= q_max:
        raise ValueError(f"q_min, q_max: expected q_min <= q_max, got {(q_min, q_max)}")
    z_float = xp.astype(z, xp.float64)
    if not bool(xp.all(xp.isfinite(z_float))):
        raise ValueError("z: zero-points must be finite")
    integral = bool(xp.all(z_float == xp.round(z_float)))
    if float_zero_point is None:
        float_zero_point = not integral
    if float_zero_point:
        return True
    if not integral:
        raise ValueError("z: float_zero_point=False needs integral zero-points; torch's float zero-point "
                         "branch (float_zero_point=True) rounds after adding them")
    if bool(xp.any(z_float < q_min)) or bool(xp.any(z_float > q_max)):
        lo, hi = float(xp.min(z_float)), float(xp.max(z_float))
        raise ValueError(f"z: an integer zero-point must be between q_min and q_max ({q_min}..{q_max}), "
                         f"got values in {lo:g}..{hi:g}")
    return False


def dequantize_codes(q: Any, s: Any, z: Any) -> Any:
    """x̂ = s (q - z), in s's dtype.

    q: integer (or integral float) codes; s, z broadcastable -> x̂ of the broadcast shape.
    (q - z) is a small integer, exact in float; the product is rounded once — the same value
    torch's ``(q - z) * scale`` gives.
    """
    xp = namespace(q, s)
    return s * (xp.astype(q, s.dtype) - xp.astype(z, s.dtype))


#: integers up to 2^24 in magnitude are exact in float32 (and float64): codes, zero-points and q - z
_EXACT_INT = 2**24


def _fits_exactly(q_min: int, q_max: int) -> bool:
    """Codes, an integer z in the range and every q - z are exact in float32."""
    return -_EXACT_INT <= q_min <= q_max <= _EXACT_INT and q_max - q_min <= _EXACT_INT


def _fused_fake_quant(x: Any, s: Any, z: Any, q_min: int, q_max: int, *, inv_s: Any = None) -> Any:
    """x̂ = s (clamp(round(x / s) + z, q_min, q_max) - z)  (x · inv_s instead of x / s if given).

    The values of ``dequantize_codes(quantize_codes(x, s, z, ...), s, z)`` (``quantize_codes_torch``
    with ``inv_s``) for s and an integral z in x's dtype, in one temporary written over five
    times instead of an int32 code array and three float ones: with |codes|, |z| and
    |q - z| <= 2^24 (``_fits_exactly``) the sum, the clamp and the difference are exact in
    x's dtype, so only the division (or product) and s·(q - z) round, as in the two-step form.
    NaN stays NaN (the two-step form casts it to an int32 code first).
    x: (...); s, z, inv_s broadcastable to x -> x̂ of x's shape and dtype.
    """
    t = x / s if inv_s is None else x * inv_s          # the only array of x's size
    if _broadcasts_into(z, t):
        # clamp(r + z, q_min, q_max) - z = clamp(r, q_min - z, q_max - z): both sides exact for an
        # integer r = round(t), so one clamp against per-block bounds replaces add, clamp, subtract;
        # adding +0.0 then turns the -0.0 that rounds t in (-0.5, 0] into the +0.0 of r + z - z
        t = clamp_(rint_(t), float(q_min) - z, float(q_max) - z)
        t += 0.0
    else:
        t = _round_shift_clamp(t, z, q_min, q_max) - z
    t *= s                                             # s broadcasts into t: t = x / s has its shape
    return t


def fake_quantize_codes(x: Any, s: Any, z: Any, q_min: int, q_max: int, convention: str = "refquant", *,
                        float_zero_point: bool | None = None) -> Any:
    """x̂ = D(Q(x)) for given s, z — the drop-in for ``torch.fake_quantize_per_*_affine``.

    "refquant": x̂ = s (q - z) with codes by division, in x's dtype.
    "torch": bit-identical to ``torch.fake_quantize_per_tensor_affine(x, s, z, q_min, q_max)``
    (s of size 1) and ``torch.fake_quantize_per_channel_affine`` (one s per channel), for
    float16 / bfloat16 / float32 / float64 x. The kernels form (q - z)·s as float
    (per-channel: as double) and store it in x's dtype, so a float16 x is rounded once, from
    float32 — not computed in float16. Codes: ``quantize_codes_torch`` (``float_zero_point``
    chooses the branch). Values beyond x's range (float16: ±65504) become ±inf, as in torch.
    """
    _check_choice(convention, CONVENTIONS, "convention")
    xp = namespace(x)
    if convention == "refquant":
        z_x = xp.astype(z, x.dtype)
        if x.dtype in (xp.float32, xp.float64) and s.dtype == x.dtype and _fits_exactly(q_min, q_max) \
                and bool(xp.all((z_x == xp.round(z_x)) & (z_x >= q_min) & (z_x <= q_max))):
            # (a fractional z truncates with the codes; one outside the range breaks exactness)
            return _fused_fake_quant(x, s, z_x, q_min, q_max)
        return dequantize_codes(quantize_codes(x, s, z, q_min, q_max), xp.astype(s, x.dtype), z)
    s32 = xp.astype(s, xp.float32)
    if x.dtype != xp.float64 and _fits_exactly(q_min, q_max) \
            and not _check_zero_point(xp, z, q_min, q_max, float_zero_point):
        # integer z, float32 arithmetic: (q - z) is an exact small integer, so the float32
        # product s·(q - z) is the correctly rounded one the kernels store (see below)
        xc = xp.astype(x, xp.float32, copy=False)
        inv_s = xp.astype(1.0 / s32, xp.float32)                            # fl32(1.0f / s), as in C++
        x_hat = _fused_fake_quant(xc, s32, xp.astype(z, xp.float32), q_min, q_max, inv_s=inv_s)
        return xp.astype(x_hat, x.dtype, copy=False)
    q = quantize_codes_torch(x, s32, z, q_min, q_max, float_zero_point=float_zero_point)
    # (q - z) * s in double is exact for an integer z and, rounded to float, equals the float
    # product of the per-tensor kernel; for a float z it is the per-channel kernel's double product
    x_hat = xp.astype(s32, xp.float64) * (xp.astype(q, xp.float64) - xp.astype(z, xp.float64))
    per_channel = math.prod(int(n) for n in s32.shape) > 1
    if not (per_channel and x.dtype == xp.float64):                        # double x per channel: kept in double
        x_hat = xp.astype(x_hat, xp.float32)
    return xp.astype(x_hat, x.dtype)


def range_search(x: Any, reduce_axes: tuple[int, ...], bits: int, symmetric: bool, signed: bool = True, *,
                 norm: float = SEARCH_NORM, grid: int = SEARCH_GRID, max_shrink: float = SEARCH_MAX_SHRINK,
                 q_range: tuple[int, int] | None = None, eps: float = 0.0, convention: str = "refquant",
                 z_unsigned_symmetric: int | None = None) -> tuple[Any, Any]:
    """Shrink the range on a grid and keep, per block, the (s, z) with the least L^p error.

        for i = 0 .. floor(max_shrink * grid) - 1:
            p_i = 1 - i / grid
            (s_i, z_i) = qparams(p_i x_min, p_i x_max)
            err_i = sum_j |x_j - D(Q(x_j; s_i, z_i))|^norm          (over the block)
        keep (s_i, z_i) of the first i with the smallest err_i       (i = 0 is the plain min/max)

    Clipping a few outliers buys a finer step for everything else. This is the loop of the
    GPTQ reference quantizer (quant.py ``Quantizer.find_params`` with ``mse=True``: grid 100,
    maxshrink 0.8, norm 2.4), where a later grid point wins only if strictly better.
    x: float array; reduce_axes: the axes one (s, z) covers -> s, z with those axes kept as 1.
    """
    xp = namespace(x)
    grid = check_int(grid, "grid", 1)
    if not 0 < max_shrink <= 1:
        raise ValueError(f"max_shrink: expected 0 < max_shrink <= 1, got {max_shrink!r}")
    if not norm > 0:
        raise ValueError(f"norm: expected a positive exponent, got {norm!r}")
    q_min, q_max = q_range if q_range is not None else code_range(bits, symmetric, signed)
    x_min, x_max = _min_max(xp, x, reduce_axes)
    s_best = z_best = err_best = None
    for i in range(max(1, int(max_shrink * grid))):
        p = 1.0 - i / grid
        s, z = qparams(p * x_min, p * x_max, bits, symmetric, signed, q_range=(q_min, q_max), eps=eps,
                       z_unsigned_symmetric=z_unsigned_symmetric)
        x_hat = fake_quantize_codes(x, s, z, q_min, q_max, convention=convention)
        err = _sum(xp, xp.abs(x_hat - x) ** norm, reduce_axes)
        if err_best is None:
            s_best, z_best, err_best = s, z, err
            continue
        better = err < err_best
        s_best = xp.where(better, s, s_best)
        z_best = xp.where(better, z, z_best)
        err_best = xp.where(better, err, err_best)
    return s_best, z_best


def _min_max(xp: Any, x: Any, axes: tuple[int, ...]) -> tuple[Any, Any]:
    if not axes:  # every element its own block (per-channel on a 1-D array)
        return x, x
    return min_max(x, axes)


def _sum(xp: Any, x: Any, axes: tuple[int, ...]) -> Any:
    return xp.sum(x, axis=axes, keepdims=True) if axes else x


# --------------------------------------------------------------------------- quantize a tensor


@dataclasses.dataclass(frozen=True)
class UniformQuantized:
    """Codes and parameters of one uniformly quantized tensor.

    q: int32 codes. "tensor"/"channel": x's shape. "group": (..., n/G, G) — x with the grouped
       axis moved last and split into n/G groups of G.
    s, z: scales and zero-points (floats, z integral), broadcastable to q: (1, ..., 1) per
       tensor; size 1 except along ``axis`` per channel; (..., n/G, 1) per group.
    """

    q: Any
    s: Any
    z: Any
    bits: int
    q_min: int
    q_max: int
    symmetric: bool
    signed: bool
    granularity: str
    axis: int | None
    group_size: int | None
    shape: tuple[int, ...]
    convention: str = "refquant"

    @property
    def n_params(self) -> int:
        """Number of (s, z) pairs."""
        return math.prod(int(n) for n in self.s.shape)


def quantize(x: Any, bits: int = 8, symmetric: bool = True, granularity: str = "tensor", axis: int | None = None,
             group_size: int | None = None, *, signed: bool = True, search: str | float | None = None,
             convention: str = "refquant") -> UniformQuantized:
    """Uniform quantization of a tensor, per tensor, per channel or per group.

        per tensor:   one (s, z) from min(x), max(x)
        per channel:  one (s, z) per index c of ``axis`` (default 0: a Linear weight's output
                      rows), from the min/max over all other axes
        per group:    split ``axis`` (default -1: the reduction axis, a Linear weight's inputs)
                      into n/G groups of G consecutive values; for group g of row r
                          s_rg, z_rg = qparams(min_j w_r,gG+j, max_j w_r,gG+j)
                          q_r,gG+j = clamp(round(w_r,gG+j / s_rg) + z_rg, q_min, q_max)
                      ⇒ |w - ŵ| <= s_rg / 2 inside each group's range; smaller G, finer s,
                      more parameters (see ``bits_per_weight``)

    x: float array (float16/bfloat16 are widened to float32) of any namespace ->
    ``UniformQuantized`` (q, s, z in x's namespace). ``search``: None (min/max), "mse" (L²)
    or a float p (L^p, GPTQ uses 2.4) — see ``range_search``. ``convention``: "refquant"
    (division, restricted symmetric range) or "torch" (torch's observers and fake-quant
    kernels, bit-exact; see the module docstring).

    Example: quantize(np.float32([-1, 0, 0.5, 2]), bits=2, symmetric=False, signed=False)
    has s = 3/3 = 1, z = 0 - round(-1/1) = 1 and q = [0, 1, 1, 3]: 0.5/1 = 0.5 is a tie and
    rounds to the even 0, so 0.5 dequantizes to 0.0.

    >>> qt = quantize(np.float32([-1, 0, 0.5, 2]), bits=2, symmetric=False, signed=False)
    >>> print(qt.s.tolist(), qt.z.tolist(), qt.q.tolist(), dequantize(qt).tolist())
    [1.0] [1.0] [0, 1, 1, 3] [-1.0, 0.0, 0.0, 2.0]
    """
    obs = _observe(x, bits, symmetric, granularity, axis, group_size, signed, search, convention)
    if convention == "torch":
        q = quantize_codes_torch(obs.blocks, obs.s, obs.z, *obs.q_range, float_zero_point=False)
    else:
        q = quantize_codes(obs.blocks, obs.s, obs.z, *obs.q_range)
    return UniformQuantized(q=q, s=obs.s, z=obs.z, bits=obs.bits, q_min=obs.q_range[0], q_max=obs.q_range[1],
                            symmetric=bool(symmetric), signed=bool(signed), granularity=granularity, axis=obs.axis,
                            group_size=int(group_size) if granularity == "group" else None,
                            shape=tuple(int(n) for n in x.shape), convention=convention)


class _Observed(NamedTuple):
    """What ``quantize`` reads off x before the codes: the blocks and their (s, z)."""

    blocks: Any                # x (float32/float64), grouped to (..., n/G, G) per group
    s: Any                     # scales, broadcastable to blocks
    z: Any                     # zero-points (integral floats), broadcastable to blocks
    bits: int
    q_range: tuple[int, int]
    axis: int | None


def _observe(x: Any, bits: int, symmetric: bool, granularity: str, axis: int | None, group_size: int | None,
             signed: bool, search: str | float | None, convention: str) -> _Observed:
    """Arguments checked, x widened and split into blocks, (s, z) from the blocks' min/max or search.

    The finiteness check rides on the min/max pass: NaN propagates into a block's min and max
    and ±inf is one of them, so x is finite iff every block's extremes are — no pass of its own.
    """
    check_float(x, "x")
    check_nonempty(x, "x")
    b = check_bits(bits)
    _check_choice(granularity, GRANULARITIES, "granularity")
    _check_choice(convention, CONVENTIONS, "convention")
    xp = namespace(x)
    if search is not None:
        check_finite(x, "x")
    if not xp.isdtype(x.dtype, (xp.float32, xp.float64)):
        x = xp.astype(x, xp.float32)
    z_sym = None
    if convention == "torch":
        q_range, eps = torch_code_range(b, signed), TORCH_EPS
        # 8 bits is torch's default quint8/qint8 observer (z = 128 for unsigned symmetric);
        # other widths need quant_min/quant_max, a customized range: z = (q_min + q_max) // 2
        z_sym = TORCH_QUINT8_SYMMETRIC_ZERO if b == 8 else None
    else:
        q_range, eps = code_range(b, symmetric, signed), 0.0
    blocks, reduce_axes, ax = _blocks(xp, x, granularity, axis, group_size)
    if search is None:
        x_min, x_max = _min_max(xp, blocks, reduce_axes)
        check_finite(x_min, "x")
        check_finite(x_max, "x")
        s, z = qparams(x_min, x_max, b, symmetric, signed, q_range=q_range, eps=eps, z_unsigned_symmetric=z_sym)
    else:
        norm = _search_norm(search)
        s, z = range_search(blocks, reduce_axes, b, symmetric, signed, norm=norm, q_range=q_range, eps=eps,
                            convention=convention, z_unsigned_symmetric=z_sym)
    return _Observed(blocks, s, z, b, q_range, ax)


def dequantize(qt: UniformQuantized) -> Any:
    """x̂ = s (q - z), back in x's shape (a grouped tensor is un-split and its axis moved back).

    The state is checked first (``_check_state``): q, s and z must have the shapes its
    ``shape`` / ``granularity`` / ``axis`` / ``group_size`` imply, q must lie in [q_min, q_max],
    s must be finite and positive, z finite — a mismatch is a ValueError, never a wrong tensor.
    """
    _check_state(qt)
    x_hat = dequantize_codes(qt.q, qt.s, qt.z)
    return _unblock(x_hat, qt.granularity, qt.shape, qt.axis)


def _unblock(x_hat: Any, granularity: str, shape: tuple, axis: int | None) -> Any:
    """Blocks back to x's shape: a grouped (..., n/G, G) tensor is un-split and its axis moved back."""
    if granularity != "group":
        return x_hat
    xp = namespace(x_hat)
    moved = list(shape)
    moved.append(moved.pop(axis))                 # x's shape with the grouped axis last
    x_hat = xp.reshape(x_hat, tuple(moved))       # (..., n)
    return xp.moveaxis(x_hat, -1, axis)           # x's shape


def fake_quantize(x: Any, bits: int = 8, symmetric: bool = True, granularity: str = "tensor", axis: int | None = None,
                  group_size: int | None = None, *, signed: bool = True, search: str | float | None = None,
                  convention: str = "refquant") -> Any:
    """x̂ = D(Q(x)) in x's shape and dtype: ``dequantize(quantize(x, ...))``.

    With ``convention="torch"`` this is torch's observer + fake-quant pair: per tensor it equals
    ``torch.fake_quantize_per_tensor_affine(x, *MinMaxObserver(...).calculate_qparams(), ...)``,
    per channel the ``PerChannelMinMaxObserver`` + ``fake_quantize_per_channel_affine`` pair.
    """
    obs = _observe(x, bits, symmetric, granularity, axis, group_size, signed, search, convention)
    xp = namespace(x)
    blocks = obs.blocks                                         # float32 (or float64)
    # the values of dequantize(quantize(x)) in one fused pass (b <= 8 bits: _fits_exactly holds),
    # codes formed as quantize forms them: x · fl32(1/s) in torch's convention, x / s in refquant's
    inv_s = None
    if convention == "torch":
        inv_s = xp.astype(1.0 / xp.astype(obs.s, xp.float32), blocks.dtype)   # as quantize_codes_torch
    x_hat = _fused_fake_quant(blocks, obs.s, obs.z, *obs.q_range, inv_s=inv_s)
    x_hat = _unblock(x_hat, granularity, tuple(int(n) for n in x.shape), obs.axis)
    out = xp.astype(x_hat, x.dtype, copy=False)                # one rounding, e.g. to float16
    if x.dtype != x_hat.dtype and not bool(xp.all(xp.isfinite(out))):
        # the grid may reach s/2 beyond the data range (the zero-point is rounded); at float16's
        # edge that lands past ±65504, which float16 cannot hold
        peak = float(xp.max(xp.abs(x_hat)))
        raise ValueError(f"x: the dequantized grid reaches ±{peak:.6g}, outside {x.dtype}'s range; "
                         f"fake-quantize a float32 copy of x, or use quantize/dequantize (float32 results)")
    return out


def _check_state(qt: Any) -> None:
    """A ``UniformQuantized`` whose arrays fit its description (see ``dequantize``)."""
    if not isinstance(qt, UniformQuantized):
        raise TypeError(f"qt: expected a UniformQuantized from quantize, got {type(qt).__name__}")
    _check_choice(qt.granularity, GRANULARITIES, "qt.granularity")
    check_bits(qt.bits, name="qt.bits")
    if not (isinstance(qt.q_min, numbers.Integral) and isinstance(qt.q_max, numbers.Integral) and qt.q_min < qt.q_max):
        raise ValueError(f"qt.q_min, qt.q_max: expected integers with q_min < q_max, got {(qt.q_min, qt.q_max)}")
    shape = tuple(int(n) for n in qt.shape)
    ndim = len(shape)
    if qt.granularity == "tensor":
        if qt.axis is not None:
            raise ValueError(f"qt.axis: expected None for granularity='tensor', got {qt.axis!r}")
        q_shape, s_shape = shape, (1,) * ndim
    else:
        if not (isinstance(qt.axis, numbers.Integral) and 0 <= qt.axis < ndim):
            raise ValueError(f"qt.axis: expected an axis in 0..{ndim - 1} of qt.shape {shape}, got {qt.axis!r}")
        if qt.granularity == "channel":
            q_shape = shape
            s_shape = tuple(n if i == qt.axis else 1 for i, n in enumerate(shape))
            if ndim == 1:
                s_shape = shape                                  # every element its own channel
        else:
            G = qt.group_size
            if not (isinstance(G, numbers.Integral) and G > 0 and shape[qt.axis] % G == 0):
                raise ValueError(f"qt.group_size: expected a positive divisor of {shape[qt.axis]} "
                                 f"(qt.shape[{qt.axis}]), got {G!r}")
            rest = shape[:qt.axis] + shape[qt.axis + 1:]
            q_shape = (*rest, shape[qt.axis] // G, G)            # (..., n/G, G)
            s_shape = (*rest, shape[qt.axis] // G, 1)            # (..., n/G, 1)
    for name, a, want in (("qt.q", qt.q, q_shape), ("qt.s", qt.s, s_shape), ("qt.z", qt.z, s_shape)):
        if tuple(int(n) for n in a.shape) != want:
            raise ValueError(f"{name}: shape {tuple(a.shape)} does not fit qt.shape {shape} with granularity "
                             f"{qt.granularity!r} (expected {want})")
    xp = namespace(qt.q)
    if bool(xp.any(qt.q < qt.q_min)) or bool(xp.any(qt.q > qt.q_max)):
        raise ValueError(f"qt.q: codes outside [q_min, q_max] = [{qt.q_min}, {qt.q_max}]")
    s = xp.astype(qt.s, xp.float64)
    if not bool(xp.all(xp.isfinite(s) & (s > 0))):
        raise ValueError("qt.s: expected finite positive scales")
    if not bool(xp.all(xp.isfinite(xp.astype(qt.z, xp.float64)))):
        raise ValueError("qt.z: expected finite zero-points")


def _search_norm(search: str | float) -> float:
    if isinstance(search, str) and search == "mse":
        return 2.0
    if isinstance(search, numbers.Real) and not isinstance(search, (bool, np.bool_)) and math.isfinite(search) \
            and search > 0:
        return float(search)
    raise ValueError(f"search: expected None, 'mse' or a positive p-norm exponent, got {search!r}")


def _blocks(xp: Any, x: Any, granularity: str, axis: int | None, group_size: int | None):
    """(array to reduce, axes one (s, z) covers, normalised axis) for a granularity."""
    ndim = x.ndim
    if granularity == "tensor":
        if group_size is not None:
            raise ValueError("group_size: only meaningful with granularity='group'")
        if axis is not None:  # one (s, z) covers every axis: an axis would be silently ignored
            raise ValueError(f"axis: only meaningful with granularity='channel' or 'group' (per tensor one "
                             f"(s, z) covers all axes), got axis={axis!r}")
        return x, tuple(range(ndim)), None
    default = 0 if granularity == "channel" else -1
    ax = check_int(default if axis is None else axis, "axis", -ndim, ndim - 1)
    ax %= ndim
    if granularity == "channel":
        if group_size is not None:
            raise ValueError("group_size: only meaningful with granularity='group'")
        return x, tuple(i for i in range(ndim) if i != ax), ax
    if group_size is None:
        raise ValueError("group_size: expected a positive integer G with granularity='group', got None")
    group_size = check_int(group_size, "group_size", 1)
    n = int(x.shape[ax])
    check_divisible(n, group_size, f"x (axis {ax})", what="group size G")
    moved = xp.moveaxis(x, ax, -1)                                         # (..., n)
    grouped = xp.reshape(moved, (*moved.shape[:-1], n // group_size, group_size))  # (..., n/G, G)
    return grouped, (-1,), ax


# --------------------------------------------------------------------------- bytes (NumPy edge)


def pack_codes(q: Any, bits: int, signed: bool = True) -> np.ndarray:
    """b-bit codes -> bytes, LSB-first along the last axis (``refquant._packing.pack_bits``).

    Signed codes are stored in offset binary, u = q + 2^(b-1) (so -2^(b-1) -> 0); unsigned
    codes as they are. Within a byte, the first code takes the lowest bits: for 4 bits,
    [q0, q1] -> q0 | q1 << 4; for 2 bits, [q0, q1, q2, q3] -> q0 | q1 << 2 | q2 << 4 | q3 << 6;
    3-bit codes run as one continuous LSB-first bit stream (8 codes -> 3 bytes).
    q: (..., n) -> (..., ceil(n b / 8)) uint8.

    Example: signed 4-bit [-8, 7, 0, 1] are u = [0, 15, 8, 9]: bytes 0 | 15 << 4 = 240, 8 | 9 << 4 = 152.

    >>> pack_codes(np.array([-8, 7, 0, 1]), bits=4).tolist()
    [240, 152]
    >>> unpack_codes(np.uint8([240, 152]), bits=4, n=4).tolist()
    [-8, 7, 0, 1]
    """
    b = check_bits(bits)
    u = to_numpy(q).astype(np.int64)
    if signed:
        u = u + (1 << (b - 1))
    if u.size and (u.min() < 0 or u.max() >= 1 << b):
        kind = "signed" if signed else "unsigned"
        raise ValueError(f"q: {kind} {b}-bit codes out of range (offset codes span {u.min()}..{u.max()})")
    return pack_bits(u, b)


def unpack_codes(packed: np.ndarray, bits: int, n: int, signed: bool = True) -> np.ndarray:
    """Inverse of ``pack_codes``: (..., bytes) uint8 -> (..., n) int32 codes (NumPy)."""
    b = check_bits(bits)
    u = unpack_bits(packed, b, n).astype(np.int32)
    return u - (1 << (b - 1)) if signed else u


# --------------------------------------------------------------------------- memory accounting


def bits_per_weight(bits: int, group_size: int | None = None, scale_bits: int = 16, zero_bits: int = 0) -> float:
    """Storage per weight, parameters included:  b + (scale_bits + zero_bits) / G.

    ``group_size=None`` counts codes only (per-tensor parameters are negligible); for a
    per-channel layout pass the row length as G. Example: INT4, G = 128, fp16 scale,
    4-bit zero -> 4 + (16 + 4)/128 = 4.15625 bits.

    >>> bits_per_weight(4, 128, zero_bits=4), bits_per_weight(8)
    (4.15625, 8.0)
    """
    bits = check_int(bits, "bits", 1, 32)
    scale_bits, zero_bits = check_int(scale_bits, "scale_bits", 0), check_int(zero_bits, "zero_bits", 0)
    if group_size is None:
        return float(bits)
    return bits + (scale_bits + zero_bits) / check_int(group_size, "group_size", 1)


def stored_bytes(qt: UniformQuantized, scale_bits: int = 16) -> int:
    """Bytes a checkpoint holds for ``qt``, counted on what would be written:

        codes        pack_codes(q): ceil(n · b / 8) bytes per row of q's last axis (per group of G)
        scales       scale_bits per (s, z) pair (float16: 16), rounded up to whole bytes
        zero-points  asymmetric only: every z as one stream of b-bit codes (a symmetric z is
                     fixed by the format and not stored)

    Example: INT4 asymmetric, 2 rows of 256 in groups of 128: 2·256·4/8 = 256 code bytes,
    4 float16 scales = 8 bytes, 4 zero-points of 4 bits = 2 bytes, 266 in all; 8 · 266 / 512
    = 4.15625 = bits_per_weight(4, 128, zero_bits=4).

    >>> qt = quantize(np.linspace(-1, 1, 512, dtype=np.float32).reshape(2, 256), bits=4, symmetric=False,
    ...               granularity="group", group_size=128, signed=False)
    >>> print(stored_bytes(qt), 8 * stored_bytes(qt) / 512 == bits_per_weight(4, 128, zero_bits=4))
    266 True
    """
    scale_bits = check_int(scale_bits, "scale_bits", 1)
    codes = pack_codes(qt.q, qt.bits, qt.signed).nbytes
    scales = (qt.n_params * scale_bits + 7) // 8
    zeros = 0 if qt.symmetric else pack_codes(to_numpy(qt.z).reshape(-1), qt.bits, qt.signed).nbytes
    return int(codes + scales + zeros)


def model_size_bytes(n_params: float, bits: int, group_size: int | None = None, scale_bits: int = 16,
                     zero_bits: int = 0) -> float:
    """Bytes to store ``n_params`` weights:  n_params * bits_per_weight(...) / 8.

    The tutorial's first exercise, a 13B model: FP16 -> 13e9 * 16 / 8 = 26 GB; INT4 with
    G = 128 and an fp16 scale -> 13e9 * 4.125 / 8 = 6.703 GB (3.88x smaller, not 4x).

    >>> model_size_bytes(13e9, 16) / 1e9, model_size_bytes(13e9, 4, group_size=128) / 1e9
    (26.0, 6.703125)
    """
    if not n_params > 0:
        raise ValueError(f"n_params: expected a positive count, got {n_params!r}")
    return n_params * bits_per_weight(bits, group_size, scale_bits, zero_bits) / 8


def _check_choice(value: Any, choices: tuple, name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
