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

from ._backend import device, namespace, to_numpy
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
            q_range: tuple[int, int] | None = None, eps: float = 0.0, zero_scale: float = 1.0) -> tuple[Any, Any]:
    """Scale and zero-point from an observed range, elementwise.

        x_min <- min(x_min, 0),  x_max <- max(x_max, 0)       (0.0 exactly representable)
        symmetric:   s = max(-x_min, x_max) / ((q_max - q_min) / 2)
                     z = 0 (signed)  or  (q_min + q_max) // 2 (unsigned)
        asymmetric:  s = (x_max - x_min) / (q_max - q_min)
                     z = clamp(q_min - round(x_min / s), q_min, q_max)
        s <- max(s, eps) if eps > 0;  else s <- zero_scale where s == 0 (an all-zero block)

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
        z = xp.full(s.shape, float(z_code), dtype=s.dtype, device=device(s))
    else:
        s = (x_max - x_min) / float(q_max - q_min)
        s = _floor_scale(xp, s, eps, zero_scale)
        z = q_min - round_half_even(x_min / s)
        z = xp.clip(z, float(q_min), float(q_max))
    return s, z


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
    Not mirrored: that helper's *float* zero-point branch (``per_channel_affine_float_qparams``)
    rounds after adding z, ``lrintf(z + x * inv_s)``. Parity is established for float32 x.
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


def range_search(x: Any, reduce_axes: tuple[int, ...], bits: int, symmetric: bool, signed: bool = True, *,
                 norm: float = SEARCH_NORM, grid: int = SEARCH_GRID, max_shrink: float = SEARCH_MAX_SHRINK,
                 q_range: tuple[int, int] | None = None, eps: float = 0.0, convention: str = "refquant") -> tuple[Any, Any]:
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
    if not (isinstance(grid, int) and grid >= 1):
        raise ValueError(f"grid: expected a positive integer, got {grid!r}")
    if not 0 < max_shrink <= 1:
        raise ValueError(f"max_shrink: expected 0 < max_shrink <= 1, got {max_shrink!r}")
    if not norm > 0:
        raise ValueError(f"norm: expected a positive exponent, got {norm!r}")
    q_min, q_max = q_range if q_range is not None else code_range(bits, symmetric, signed)
    x_min, x_max = _min_max(xp, x, reduce_axes)
    s_best = z_best = err_best = None
    for i in range(max(1, int(max_shrink * grid))):
        p = 1.0 - i / grid
        s, z = qparams(p * x_min, p * x_max, bits, symmetric, signed, q_range=(q_min, q_max), eps=eps)
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
    return xp.min(x, axis=axes, keepdims=True), xp.max(x, axis=axes, keepdims=True)


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
    """
    check_float_input(x, "x")
    b = check_bits(bits)
    _check_choice(granularity, GRANULARITIES, "granularity")
    _check_choice(convention, CONVENTIONS, "convention")
    xp = namespace(x)
    if not xp.isdtype(x.dtype, (xp.float32, xp.float64)):
        x = xp.astype(x, xp.float32)
    if convention == "torch":
        q_range, eps = torch_code_range(b, signed), TORCH_EPS
    else:
        q_range, eps = code_range(b, symmetric, signed), 0.0
    blocks, reduce_axes, ax = _blocks(xp, x, granularity, axis, group_size)
    if search is None:
        x_min, x_max = _min_max(xp, blocks, reduce_axes)
        s, z = qparams(x_min, x_max, b, symmetric, signed, q_range=q_range, eps=eps)
    else:
        norm = _search_norm(search)
        s, z = range_search(blocks, reduce_axes, b, symmetric, signed, norm=norm, q_range=q_range, eps=eps,
                            convention=convention)
    codes = quantize_codes_torch if convention == "torch" else quantize_codes
    q = codes(blocks, s, z, *q_range)
    return UniformQuantized(q=q, s=s, z=z, bits=b, q_min=q_range[0], q_max=q_range[1], symmetric=bool(symmetric),
                            signed=bool(signed), granularity=granularity, axis=ax,
                            group_size=group_size if granularity == "group" else None,
                            shape=tuple(int(n) for n in x.shape), convention=convention)


def dequantize(qt: UniformQuantized) -> Any:
    """x̂ = s (q - z), back in x's shape (a grouped tensor is un-split and its axis moved back)."""
    xp = namespace(qt.q)
    x_hat = dequantize_codes(qt.q, qt.s, qt.z)
    if qt.granularity == "group":
        moved = list(qt.shape)
        moved.append(moved.pop(qt.axis))             # x's shape with the grouped axis last
        x_hat = xp.reshape(x_hat, tuple(moved))       # (..., n)
        x_hat = xp.moveaxis(x_hat, -1, qt.axis)       # x's shape
    return x_hat


def fake_quantize(x: Any, bits: int = 8, symmetric: bool = True, granularity: str = "tensor", axis: int | None = None,
                  group_size: int | None = None, *, signed: bool = True, search: str | float | None = None,
                  convention: str = "refquant") -> Any:
    """x̂ = D(Q(x)) in x's shape and dtype: ``dequantize(quantize(x, ...))``.

    With ``convention="torch"`` this is torch's observer + fake-quant pair: per tensor it equals
    ``torch.fake_quantize_per_tensor_affine(x, *MinMaxObserver(...).calculate_qparams(), ...)``,
    per channel the ``PerChannelMinMaxObserver`` + ``fake_quantize_per_channel_affine`` pair.
    """
    qt = quantize(x, bits, symmetric, granularity, axis, group_size, signed=signed, search=search,
                  convention=convention)
    xp = namespace(x)
    return xp.astype(dequantize(qt), x.dtype)


def _search_norm(search: str | float) -> float:
    if search == "mse":
        return 2.0
    if isinstance(search, (int, float)) and not isinstance(search, bool) and search > 0:
        return float(search)
    raise ValueError(f"search: expected None, 'mse' or a positive p-norm exponent, got {search!r}")


def _blocks(xp: Any, x: Any, granularity: str, axis: int | None, group_size: int | None):
    """(array to reduce, axes one (s, z) covers, normalised axis) for a granularity."""
    ndim = x.ndim
    if granularity == "tensor":
        if group_size is not None:
            raise ValueError("group_size: only meaningful with granularity='group'")
        return x, tuple(range(ndim)), None
    default = 0 if granularity == "channel" else -1
    ax = default if axis is None else axis
    if isinstance(ax, bool) or not isinstance(ax, int) or not -ndim <= ax < ndim:
        raise ValueError(f"axis: expected an integer in {-ndim}..{ndim - 1} for a {ndim}-d x, got {axis!r}")
    ax %= ndim
    if granularity == "channel":
        if group_size is not None:
            raise ValueError("group_size: only meaningful with granularity='group'")
        return x, tuple(i for i in range(ndim) if i != ax), ax
    if isinstance(group_size, bool) or not isinstance(group_size, int):
        raise ValueError(f"group_size: expected a positive integer G with granularity='group', got {group_size!r}")
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
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not 1 <= bits <= 32:
        raise ValueError(f"bits: expected an integer in 1..32, got {bits!r}")
    for name, v in (("scale_bits", scale_bits), ("zero_bits", zero_bits)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}: expected a non-negative integer, got {v!r}")
    if group_size is None:
        return float(bits)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"group_size: expected a positive integer or None, got {group_size!r}")
    return bits + (scale_bits + zero_bits) / group_size


def model_size_bytes(n_params: float, bits: int, group_size: int | None = None, scale_bits: int = 16,
                     zero_bits: int = 0) -> float:
    """Bytes to store ``n_params`` weights:  n_params * bits_per_weight(...) / 8.

    The tutorial's first exercise, a 13B model: FP16 -> 13e9 * 16 / 8 = 26 GB; INT4 with
    G = 128 and an fp16 scale -> 13e9 * 4.125 / 8 = 6.703 GB (3.88x smaller, not 4x).
    """
    if not n_params > 0:
        raise ValueError(f"n_params: expected a positive count, got {n_params!r}")
    return n_params * bits_per_weight(bits, group_size, scale_bits, zero_bits) / 8


def _check_choice(value: Any, choices: tuple, name: str) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")
