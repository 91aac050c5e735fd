"""llama.cpp's legacy block formats: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1 (+ F32/F16/BF16).

A row of weights is cut into blocks of QK = 32. Each block stores one or two float16
numbers and 32 small integer codes q:

    "_0" types (symmetric):   ŵ_j = d · (q_j − 2^(b−1))      q_j ∈ 0 … 2^b − 1
    "_1" types (asymmetric):  ŵ_j = d · q_j + m              m is the block minimum
    Q8_0 / Q8_1:              ŵ_j = d · q_j                  q_j ∈ −127 … 127 (int8)

| type | bytes | bits/weight | stored                                    | bound |w − ŵ| (no imatrix)   |
|------|------:|------------:|-------------------------------------------|------------------------------|
| Q4_0 |  18   | 4.5         | d (f16), 16 bytes of nibbles               | |d|/2, +|d| at the far end   |
| Q4_1 |  20   | 5.0         | d, m (f16), 16 bytes of nibbles            | d/2                          |
| Q5_0 |  22   | 5.5         | d, qh (4 bytes, 5th bits), 16 nibble bytes | |d|/2, +|d| at the far end   |
| Q5_1 |  24   | 6.0         | d, m, qh, 16 nibble bytes                  | d/2                          |
| Q8_0 |  34   | 8.5         | d, 32 int8                                 | d/2                          |
| Q8_1 |  36   | 9.0         | d, s = d·Σq (f16), 32 int8                 | d/2                          |

(bounds in exact arithmetic on the float32 d; the stored d is d rounded to float16.)

Glossary (ggml's names): d the block scale ("delta"), m the block minimum, qs the packed
low 4 bits of the codes, qh the packed 5th bits, s the scaled code sum that Q8_1 keeps
for the dot-product kernels.

Nibble order, the same in every 4- and 5-bit type: byte j (0 ≤ j < 16) of qs holds code
j in its low nibble and code j + 16 in its high nibble — the first half of the block in
the low nibbles, the second half in the high ones::

    qs byte:   [ q16 | q0 ] [ q17 | q1 ] ... [ q31 | q15 ]      (high | low)
    qh (u32):  bit j = bit 4 of q_j, j = 0 … 31 (little-endian)

How the encoder picks d, without an importance matrix (ggml-quants.c, quantize_row_*_ref):

* Q4_0 / Q5_0: take the element of largest magnitude, *with its sign*, call it max, and
  set d = max / −8 (Q5_0: max / −16). So the extreme element lands exactly on code 0
  (the most negative level −8·d) and the opposite side gets one level less (+7·d); the
  code is q = min(15, trunc(x/d + 8.5)) — a C cast, i.e. floor for these positive values,
  so ties round up.
* Q4_1 / Q5_1: d = (max − min) / (2^b − 1), m = min, q = trunc((x − min)/d + 0.5).
* Q8_0 / Q8_1: d = max|x| / 127, q = roundf(x/d) (ties away from zero).

With an importance matrix (quantize_row_q4_0_impl ... in ggml-quants.c), each weight
gets an importance  w_j = imatrix_j · sqrt(σ² + x_j²)  where σ² is the mean square of the
whole row, and d (and m) come from a weighted least-squares search over a few candidate
scales (make_qx_quants for Q4_0/Q5_0, make_qkx3_quants for Q4_1/Q5_1; see
refquant.gguf._search). Q8_0 ignores the importance matrix; libggml does not offer Q8_1
through ggml_quantize_chunk at all (it is an activation format: the CPU kernels quantize
activations to Q8_1 on the fly), so its reference is ggml's quantize_row_q8_1_ref.

Every quantizer keeps the C code's float32 operations in their order, so the bytes are
identical to libggml's; every decoder runs on any array-API namespace (NumPy, CuPy,
torch, array-api-strict). The fields of a block are read arithmetically (float16 bits
-> value with powers of two from a table) because the array API has no bit-cast.

Ref: ggml/src/ggml-quants.c (quantize_row_q4_0_ref … quantize_row_q8_1_ref,
quantize_row_q4_0_impl … quantize_row_q5_1_impl, dequantize_row_q4_0 …),
ggml/src/ggml-common.h (block_q4_0 … block_q8_1); gguf-py quants.py (Q4_0 … Q8_0).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import device, from_numpy, is_numpy, namespace, to_numpy
from .._packing import pack_nibbles
from .._rounding import bf16_bits_to_f32, round_half_away, to_bf16_bits

__all__ = [
    "QK", "half_at", "uint_at", "float_from_bits", "fp16_bytes", "low_high_nibbles",
    "quantize_q4_0", "dequantize_q4_0", "quantize_q4_1", "dequantize_q4_1",
    "quantize_q5_0", "dequantize_q5_0", "quantize_q5_1", "dequantize_q5_1",
    "quantize_q8_0", "dequantize_q8_0", "quantize_q8_1", "dequantize_q8_1",
    "quantize_f32", "dequantize_f32", "quantize_f16", "dequantize_f16", "quantize_bf16", "dequantize_bf16",
    "row_mean_square", "sequential_sum", "block_max", "block_min", "c_block_min", "c_block_max",
    "first_zero_sign", "c_int8",
]

QK = 32  # weights per block (QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK8_1)


# ---------------------------------------------------------------------------------------
# Reading block fields in any namespace (the array API has no bit-cast)
# ---------------------------------------------------------------------------------------

def uint_at(raw: Any, offset: int, nbytes: int) -> Any:
    """Little-endian unsigned integer of ``nbytes`` bytes at byte ``offset`` of every block.

    raw: (n_blocks, type_size) uint8 -> (n_blocks, 1) int64 (keeps the block axis for broadcasting).
    """
    xp = namespace(raw)
    value = xp.zeros((raw.shape[0], 1), dtype=xp.int64, device=device(raw))
    for k in range(nbytes):
        byte = xp.astype(raw[:, offset + k : offset + k + 1], xp.int64)  # (n_blocks, 1)
        value = value | (byte << (8 * k))
    return value


def float_from_bits(bits: Any, exp_bits: int, mant_bits: int) -> Any:
    """IEEE binary float bit patterns (held in an int64 array) -> float32 values, exactly.

        normal (0 < e < e_max):  (−1)^s · (2^mant_bits + m) · 2^(e − bias − mant_bits)
        subnormal (e = 0):       (−1)^s · m · 2^(1 − bias − mant_bits)
        e = e_max:               ±inf (m = 0) or NaN

    float16 is (5, 10), bfloat16 (8, 7), float32 (8, 23). Every product is exact in float32
    (the significand has at most 24 bits, the other factor is a power of two from a table).
    """
    xp = namespace(bits)
    e_max = (1 << exp_bits) - 1
    bias = (1 << (exp_bits - 1)) - 1
    sign = (bits >> (exp_bits + mant_bits)) & 1
    e = (bits >> mant_bits) & e_max
    m = bits & ((1 << mant_bits) - 1)
    # 2^(max(e, 1) − bias − mant_bits) for e = 0 … e_max, computed exactly by NumPy's ldexp
    pow2 = np.ldexp(np.float32(1.0), np.maximum(np.arange(e_max + 1), 1) - bias - mant_bits).astype(np.float32)
    pow2 = from_numpy(pow2, like=bits)
    significand = xp.astype(xp.where(e == 0, m, m + (1 << mant_bits)), xp.float32)
    scale = xp.reshape(xp.take(pow2, xp.reshape(e, (-1,))), e.shape)
    with np.errstate(over="ignore"):  # e = e_max overflows here; replaced by inf/NaN just below
        magnitude = significand * scale
    special = xp.where(m == 0, xp.asarray(float("inf"), dtype=xp.float32), xp.asarray(float("nan"), dtype=xp.float32))
    magnitude = xp.where(e == e_max, special, magnitude)
    return xp.where(sign == 1, -magnitude, magnitude)


def half_at(raw: Any, offset: int) -> Any:
    """The float16 field at byte ``offset`` of every block, as float32: (n_blocks, 1).

    On NumPy the two bytes are bit-cast (``view``), the byte edge; on any other namespace
    they are decoded arithmetically by float_from_bits — the tests check the two agree
    on all 65536 patterns.
    """
    if is_numpy(raw):
        return np.ascontiguousarray(raw[:, offset : offset + 2]).view("<f2").astype(np.float32)
    return float_from_bits(uint_at(raw, offset, 2), 5, 10)


def low_high_nibbles(qs: Any) -> Any:
    """(n, 16) packed bytes -> (n, 32) uint8 codes: low nibbles are codes 0..15, high nibbles 16..31."""
    xp = namespace(qs)
    return xp.concat([qs & 0x0F, qs >> 4], axis=-1)  # (n, 32)


def _fifth_bits(raw: Any, offset: int) -> Any:
    """The 32 bits of the little-endian uint32 ``qh`` at ``offset``, as 0/16 per code: (n, 32) uint8.

    Bit j of qh is bit (j mod 8) of byte j // 8, so the 4 bytes shifted by 0..7 give the
    32 bits in code order.
    """
    xp = namespace(raw)
    qh = raw[:, offset : offset + 4]                                             # (n, 4)
    b = from_numpy(np.arange(8, dtype=np.uint8), like=raw)                       # (8,)
    bits = (qh[:, :, None] >> b) & 1                                             # (n, 4, 8)
    return xp.reshape(bits, (raw.shape[0], QK)) << 4                             # (n, 32)


# ---------------------------------------------------------------------------------------
# Writing block fields (NumPy edge)
# ---------------------------------------------------------------------------------------

def fp16_bytes(v: Any) -> np.ndarray:
    """float32 values (n, 1) -> their float16 encodings as (n, 2) little-endian bytes.

    Round to nearest even, overflow to ±inf: GGML_FP32_TO_FP16.
    """
    with np.errstate(over="ignore"):  # |v| > 65504 becomes ±inf, as in ggml
        h = np.ascontiguousarray(to_numpy(v), dtype=np.float32).astype(np.float16)
    return h.view(np.uint8).reshape(h.shape[0], 2)


def _u32_bytes(bits: np.ndarray) -> np.ndarray:
    """(n, 32) 0/1 bits -> (n, 4) bytes of the little-endian uint32 with bit j = bits[:, j]."""
    return np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little")


def _pack_4bit(q: np.ndarray) -> np.ndarray:
    """(n, 32) codes 0..15 (or the low 4 bits of 5-bit codes) -> (n, 16) bytes, ggml's nibble order."""
    return pack_nibbles(q[:, : QK // 2] & 0x0F, q[:, QK // 2 :] & 0x0F)


def _pack_4bit_unmasked(q: np.ndarray) -> np.ndarray:
    """quantize_row_q4_0_ref / q4_1_ref's store ``qs[j] = xi0; qs[j] |= xi1 << 4``: (n, 32) uint8 -> (n, 16).

    Unlike _pack_4bit, the low code is not masked: a code that is not in 0..15 (an int8
    wrapped by c_int8, possible only when 1/d is inexact for a subnormal d) spills into
    the high nibble exactly as the C store does. For codes in 0..15 it equals _pack_4bit.
    """
    q = q.astype(np.uint8)
    return q[:, : QK // 2] | (q[:, QK // 2 :] << 4)


def _as_f32(x: Any) -> Any:
    xp = namespace(x)
    return xp.astype(x, xp.float32, copy=False)


def _halving(v: Any, pairwise: Any, reduce: Any) -> Any:
    if v.shape[-1] & (v.shape[-1] - 1):
        return reduce(v, axis=-1, keepdims=True)
    while v.shape[-1] > 1:
        half = v.shape[-1] // 2
        v = pairwise(v[:, :half], v[:, half:])
    return v


def block_max(v: Any) -> Any:
    """max over the last axis, (n, m) -> (n, 1), by halving: max(v[:, :m/2], v[:, m/2:]) ...

    Exact (max involves no rounding) and about twice as fast on NumPy as a reduction over
    32 elements per row; m not a power of two falls back to xp.max.
    """
    xp = namespace(v)
    return _halving(v, xp.maximum, xp.max)


def block_min(v: Any) -> Any:
    """min over the last axis, (n, m) -> (n, 1), by halving (see block_max)."""
    xp = namespace(v)
    return _halving(v, xp.minimum, xp.min)


def first_zero_sign(v: Any, extreme: Any, axis: int = -1) -> Any:
    """Give a zero ``extreme`` (a min or max of ``v`` along ``axis``) the sign of the first zero of v.

    C's running extremes ``if (v < min) min = v;`` / ``if (v > max) max = v;`` (started from
    ±FLT_MAX or from v[0]) keep the *first* of equal values, because −0.0 < +0.0 is false:
    a block [−0, +0, 1] has min −0.0, [+0, −0, 1] has +0.0. NumPy's min/max reductions and
    a halving ``minimum`` return either zero (the order of their SIMD lanes), and the sign
    shows in a stored fp16 field (Q4_1's m = 0x8000 or 0x0000). Only a zero extreme can
    differ (finite inputs: equal non-zero floats are identical). v: (..., n, ...);
    extreme: v's shape with ``axis`` of length 1 -> the same.
    """
    xp = namespace(v, extreme)
    zero = extreme == 0
    if not bool(xp.any(zero)):
        return extreme
    first = xp.argmax(xp.astype(v == 0, xp.int8), axis=axis, keepdims=True)   # the first zero lane
    return xp.where(zero, xp.take_along_axis(v, first, axis=axis), extreme)


def c_block_min(v: Any) -> Any:
    """C's ``min = FLT_MAX; for (j...) if (v[j] < min) min = v[j];`` over the last axis: (n, m) -> (n, 1).

    The minimum (by halving), and for a zero minimum the sign of the first zero (first_zero_sign).
    """
    return first_zero_sign(v, block_min(v))


def c_block_max(v: Any) -> Any:
    """C's ``max = -FLT_MAX; for (j...) if (v[j] > max) max = v[j];`` over the last axis: (n, m) -> (n, 1)."""
    return first_zero_sign(v, block_max(v))


INT_INDEFINITE_LOW_BYTE = 0  # x86-64: cvttss2si returns 0x80000000 for NaN/±inf/out of range; its low byte is 0
_TWO_31 = 2147483648.0       # 2^31: |trunc(v)| must be below this for cvttss2si to return trunc(v)


def c_int8(v: Any) -> Any:
    """C's ``(int8_t)v`` (and the low byte of ``(uint8_t)v``) of a float32, as libggml's x86-64 build does it.

    C leaves a float -> int8 conversion of an out-of-range value undefined; gcc/clang compile
    it as cvttss2si (truncate to int32) followed by keeping the low 8 bits. cvttss2si gives
    the "integer indefinite" 0x80000000 for NaN, ±inf and |v| ≥ 2^31, whose low byte is 0:

        c_int8(v) = wrap8(trunc(v))  if |trunc(v)| < 2^31  else 0,   wrap8(t) = ((t + 128) mod 256) − 128

    This is what the legacy encoders see when d = max/−8 is a float32 subnormal and
    id = 1/d overflows to inf: x·id is ±inf (NaN for x = 0), and libggml stores code 0
    where a saturating rounding (``trunc`` then ``min(15, ·)``) would store 15. (A
    saturating ARM build would store 255 & 15 for +inf: the oracle is x86-64.)
    v: float32, any shape -> float32 integers in −128 … 127 (never −0.0).
    Example: c_int8([3.7, -1.2, 200.0, inf, nan]) -> [3, -1, -56, 0, 0]
    """
    xp = namespace(v)
    t = xp.trunc(v)
    ok = xp.abs(t) < _TWO_31                                        # False for NaN and ±inf
    t = xp.where(ok, t, xp.full_like(t, float(INT_INDEFINITE_LOW_BYTE)))
    low = xp.remainder(t, 256.0)                                    # 0 … 255, exact (fmod of a float32 integer)
    return xp.where(low >= 128.0, low - 256.0, low) + 0.0           # two's complement; + 0.0 makes −0 into +0


def _first_absmax(x: Any) -> tuple[Any, Any]:
    """(amax, max): the largest |x| of each block and that element *with its sign*.

    The C loop ``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`` keeps the first
    element that reaches the maximum (argmax's rule: it matters when a block holds both
    +amax and −amax), and leaves max = +0.0 when the block is all zeros (even for −0.0
    entries). A NaN never compares greater, so it never wins (IQ4_XS runs this over block
    scales that overflowed to NaN). x: (n, m) -> (n, 1), (n, 1).
    """
    xp = namespace(x)
    ax = xp.abs(x)
    ax = xp.where(ax > 0, ax, xp.zeros_like(ax))                       # NaN never wins a C '<' (IQ4_XS's scales)
    first = xp.argmax(ax, axis=-1, keepdims=True)                     # (n, 1)
    amax = xp.take_along_axis(ax, first, axis=-1)                      # (n, 1)
    signed = xp.take_along_axis(x, first, axis=-1)                     # (n, 1)
    return amax, xp.where(amax == 0, xp.zeros_like(signed), signed)


def _inverse_or_zero(d: Any) -> Any:
    """id = d ? 1.0f/d : 0.0f — the encoder's reciprocal scale, 0 for an empty block."""
    xp = namespace(d)
    safe = xp.where(d == 0, xp.ones_like(d), d)
    return xp.where(d == 0, xp.zeros_like(d), 1.0 / safe)


def sequential_sum(v: Any) -> Any:
    """Σ_j v_j along the last axis, left to right from +0.0 in float32: the C loop
    ``float s = 0; for (j...) s += v[j];``. (..., n) -> (..., 1).

    np.sum adds pairwise and would round differently; starting from +0.0 also fixes the
    sign of an all-zero sum as C does (0.0f + -0.0f = +0.0f).
    """
    xp = namespace(v)
    total = xp.zeros((*v.shape[:-1], 1), dtype=v.dtype, device=device(v))
    for j in range(v.shape[-1]):
        total = total + v[..., j : j + 1]
    return total


def row_mean_square(x: Any) -> Any:
    """σ² = (Σ_j x_j²) / n of each row, summed left to right in float32 as the C loop does.

    x: (rows, n) -> (rows, 1). This is the ``sigma2`` of quantize_row_q4_0_impl ...
    quantize_row_q5_1_impl.
    """
    x = _as_f32(x)
    return sequential_sum(x * x) / float(x.shape[-1])


def _importance(x: Any, qw: Any, sigma2: Any | None) -> Any:
    """w_j = qw_j · sqrt(σ² + x_j²), σ² the row's mean square (the block's own if not given)."""
    xp = namespace(x)
    if sigma2 is None:
        sigma2 = row_mean_square(x)
    return _as_f32(qw) * xp.sqrt(sigma2 + x * x)


def _check_blocks(x: Any, qw: Any | None) -> Any:
    if x.ndim != 2 or x.shape[-1] != QK:
        raise ValueError(f"x: expected blocks of shape (n_blocks, {QK}), got {tuple(x.shape)}")
    if qw is not None and tuple(qw.shape) != tuple(x.shape):
        raise ValueError(f"qw: expected the shape of x {tuple(x.shape)}, got {tuple(qw.shape)}")
    return _as_f32(x)


def _check_raw(raw: Any, type_size: int, name: str) -> None:
    if raw.ndim != 2 or raw.shape[-1] != type_size:
        raise ValueError(f"raw: expected {name} blocks of shape (n_blocks, {type_size}), got {tuple(raw.shape)}")


def _search():
    """The shared scale searches (make_qx_quants, make_qkx3_quants) of refquant.gguf._search."""
    from . import _search

    return _search


# ---------------------------------------------------------------------------------------
# Q4_0 — 4.5 bits per weight
#
#   byte  0      2                               18
#         +------+-------------------------------+
#         |  d   | qs[16]: q_j | q_{j+16} << 4    |
#         +------+-------------------------------+
#   ŵ_j = d · (q_j − 8)
# ---------------------------------------------------------------------------------------

def _codes_q4_0(x: Any, bits: int) -> tuple[Any, Any]:
    """quantize_row_q4_0_ref / q5_0_ref in xp: (d (n, 1) float32, q (n, QK) codes 0 … 2^bits − 1)."""
    xp = namespace(x)
    half = float(1 << (bits - 1))                     # 8 for Q4_0, 16 for Q5_0
    _, max_ = _first_absmax(x)
    d = max_ / -half                                  # the extreme element maps to code 0
    inv = _inverse_or_zero(d)                         # inf when d is a float32 subnormal below 2^-128
    q = c_int8(x * inv + (half + 0.5))                # (int8_t)(x*id + 8.5f): truncation; NaN/inf -> 0
    q = xp.clip(q, max=float((1 << bits) - 1))        # MIN(15, ...) on the int (a negative int8 stays negative)
    return d, xp.remainder(q, 256.0)                  # the uint8_t store


def quantize_q4_0(x: Any, qw: Any | None = None, *, sigma2: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 18) uint8 Q4_0 blocks.

    qw (optional, same shape): the importance matrix broadcast to the blocks; then
    d comes from make_qx_quants(32, nmax=8, rmse_type=1) weighted by
    qw·sqrt(σ² + x²), σ² = ``sigma2`` (n_blocks, 1), the mean square of each block's row.

    Example: a block of 32 copies of −1.0 -> d = −1/−8 = 0.125, q = trunc(−8 + 8.5) = 0,
    and it decodes to 0.125 · (0 − 8) = −1.0.
    """
    x = _check_blocks(x, qw)
    if qw is None:
        d, q = _codes_q4_0(x, bits=4)
    else:
        d, q = _search().make_qx_quants(x, 8, 1, _importance(x, qw, sigma2))
        d = namespace(x).reshape(d, (-1, 1))
    q = to_numpy(q).astype(np.uint8)
    out = np.concatenate([fp16_bytes(d), _pack_4bit_unmasked(q)], axis=1)
    return from_numpy(out, like=x)


def dequantize_q4_0(raw: Any) -> Any:
    """(n_blocks, 18) uint8 -> (n_blocks, 32) float32: ŵ = d · (q − 8)."""
    _check_raw(raw, 18, "Q4_0")
    xp = namespace(raw)
    d = half_at(raw, 0)                                      # (n, 1)
    q = low_high_nibbles(raw[:, 2:18])                       # (n, 32)
    return (xp.astype(q, xp.float32) - 8.0) * d


# ---------------------------------------------------------------------------------------
# Q4_1 — 5 bits per weight
#
#   byte  0      2      4                          20
#         +------+------+--------------------------+
#         |  d   |  m   | qs[16]                   |
#         +------+------+--------------------------+
#   ŵ_j = d · q_j + m
# ---------------------------------------------------------------------------------------

def _codes_q4_1(x: Any, bits: int) -> tuple[Any, Any, Any]:
    """quantize_row_q4_1_ref / q5_1_ref in xp: (d, m, q)."""
    xp = namespace(x)
    n_levels = float((1 << bits) - 1)                 # 15 for Q4_1, 31 for Q5_1
    min_ = c_block_min(x)                             # (n, 1) the first of ±0 wins, as in C
    max_ = c_block_max(x)                             # (n, 1)
    d = (max_ - min_) / n_levels                      # −0.0 for a block [−0, +0, ...]: (−0) − (+0)
    inv = _inverse_or_zero(d)                         # inf when d is a subnormal below 2^-128
    q = c_int8((x - min_) * inv + 0.5)                # Q4_1: (int8_t)(x0 + 0.5f); Q5_1: (uint8_t)(...), same low byte
    if bits == 4:
        q = xp.clip(q, max=n_levels)                  # Q4_1: MIN(15, ...); Q5_1 has no clamp
    return d, min_, xp.remainder(q, 256.0)            # the uint8_t store


def _min_search(x: Any, qw: Any, sigma2: Any | None, nmax: int) -> tuple[Any, Any, Any]:
    """The importance-matrix path of Q4_1/Q5_1: make_qkx3_quants(nmax, rmin=−0.9, rdelta=0.05, nstep=36)."""
    xp = namespace(x)
    d, neg_min, q = _search().make_qkx3_quants(x, nmax, _importance(x, qw, sigma2), -0.9, 0.05, 36, False)
    return xp.reshape(d, (-1, 1)), -xp.reshape(neg_min, (-1, 1)), q


def quantize_q4_1(x: Any, qw: Any | None = None, *, sigma2: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 20) uint8 Q4_1 blocks.

    Without qw: d = (max − min)/15, m = min, q = trunc((x − min)/d + 0.5) ≤ 15.
    With qw: d, m from make_qkx3_quants(32, 15, weights, rmin=−0.9, rdelta=0.05, nstep=36).

    Example: the block 0, 1, 2, ..., 15, 15, ..., 15 -> d = 1, m = 0, q = x: exact.
    """
    x = _check_blocks(x, qw)
    if qw is None:
        d, m, q = _codes_q4_1(x, bits=4)
    else:
        d, m, q = _min_search(x, qw, sigma2, 15)
    q = to_numpy(q).astype(np.uint8)
    out = np.concatenate([fp16_bytes(d), fp16_bytes(m), _pack_4bit_unmasked(q)], axis=1)
    return from_numpy(out, like=x)


def dequantize_q4_1(raw: Any) -> Any:
    """(n_blocks, 20) uint8 -> (n_blocks, 32) float32: ŵ = d · q + m (two float32 roundings, no FMA)."""
    _check_raw(raw, 20, "Q4_1")
    xp = namespace(raw)
    d = half_at(raw, 0)
    m = half_at(raw, 2)
    q = low_high_nibbles(raw[:, 4:20])
    return xp.astype(q, xp.float32) * d + m


# ---------------------------------------------------------------------------------------
# Q5_0 — 5.5 bits per weight
#
#   byte  0      2                6                          22
#         +------+----------------+--------------------------+
#         |  d   | qh (u32 LE)    | qs[16] low 4 bits        |
#         +------+----------------+--------------------------+
#   q_j = (low nibble j) | (bit j of qh) << 4,    ŵ_j = d · (q_j − 16)
# ---------------------------------------------------------------------------------------

def _pack_5bit(q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(n, 32) codes 0..31 -> (qh (n, 4), qs (n, 16)) bytes."""
    return _u32_bytes((q >> 4) & 1), _pack_4bit(q)


def quantize_q5_0(x: Any, qw: Any | None = None, *, sigma2: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 22) uint8 Q5_0 blocks.

    Without qw: d = max / −16 (max the signed largest-magnitude element),
    q = min(31, trunc(x/d + 16.5)). With qw: make_qx_quants(32, nmax=16, rmse_type=1).
    """
    x = _check_blocks(x, qw)
    if qw is None:
        d, q = _codes_q4_0(x, bits=5)
    else:
        d, q = _search().make_qx_quants(x, 16, 1, _importance(x, qw, sigma2))
        d = namespace(x).reshape(d, (-1, 1))
    qh, qs = _pack_5bit(to_numpy(q).astype(np.uint8))
    out = np.concatenate([fp16_bytes(d), qh, qs], axis=1)
    return from_numpy(out, like=x)


def dequantize_q5_0(raw: Any) -> Any:
    """(n_blocks, 22) uint8 -> (n_blocks, 32) float32: ŵ = d · (q − 16)."""
    _check_raw(raw, 22, "Q5_0")
    xp = namespace(raw)
    d = half_at(raw, 0)
    q = low_high_nibbles(raw[:, 6:22]) | _fifth_bits(raw, 2)
    return (xp.astype(q, xp.float32) - 16.0) * d


# ---------------------------------------------------------------------------------------
# Q5_1 — 6 bits per weight
#
#   byte  0      2      4                8                          24
#         +------+------+----------------+--------------------------+
#         |  d   |  m   | qh (u32 LE)    | qs[16] low 4 bits        |
#         +------+------+----------------+--------------------------+
#   ŵ_j = d · q_j + m
# ---------------------------------------------------------------------------------------

def quantize_q5_1(x: Any, qw: Any | None = None, *, sigma2: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 24) uint8 Q5_1 blocks.

    Without qw: d = (max − min)/31, m = min, q = trunc((x − min)/d + 0.5) (the C code has
    no clamp here: (max − min)/d rounds to at most 31.00001, so q ≤ 31).
    With qw: make_qkx3_quants(32, 31, weights, −0.9, 0.05, 36).
    """
    x = _check_blocks(x, qw)
    if qw is None:
        d, m, q = _codes_q4_1(x, bits=5)
    else:
        d, m, q = _min_search(x, qw, sigma2, 31)
    qh, qs = _pack_5bit(to_numpy(q).astype(np.uint8))
    out = np.concatenate([fp16_bytes(d), fp16_bytes(m), qh, qs], axis=1)
    return from_numpy(out, like=x)


def dequantize_q5_1(raw: Any) -> Any:
    """(n_blocks, 24) uint8 -> (n_blocks, 32) float32: ŵ = d · q + m."""
    _check_raw(raw, 24, "Q5_1")
    xp = namespace(raw)
    d = half_at(raw, 0)
    m = half_at(raw, 2)
    q = low_high_nibbles(raw[:, 8:24]) | _fifth_bits(raw, 4)
    return xp.astype(q, xp.float32) * d + m


# ---------------------------------------------------------------------------------------
# Q8_0 — 8.5 bits per weight            Q8_1 — 9 bits per weight
#
#   0      2                  34         0      2      4                  36
#   +------+------------------+          +------+------+------------------+
#   |  d   | qs[32] int8      |          |  d   |  s   | qs[32] int8      |
#   +------+------------------+          +------+------+------------------+
#   ŵ_j = d · q_j                        ŵ_j = d · q_j,  s = d · Σ_j q_j
# ---------------------------------------------------------------------------------------

def _codes_q8(x: Any) -> tuple[Any, Any]:
    """quantize_row_q8_0_ref in xp: d = max|x|/127, q = roundf(x/d) (half away from zero)."""
    xp = namespace(x)
    amax = block_max(xp.abs(x))                        # (n, 1) |x|: no sign-of-zero question
    d = amax / 127.0
    q = c_int8(round_half_away(x * _inverse_or_zero(d)))  # qs[j] = roundf(x0): NaN/inf (1/d = inf) -> 0
    return d, q


def quantize_q8_0(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 34) uint8 Q8_0 blocks. ``qw`` is ignored, as in ggml.

    Example: a block holding 254.0 and 31 zeros -> d = 2, q = [127, 0, ...]; decodes exactly.
    """
    x = _check_blocks(x, qw)
    d, q = _codes_q8(x)
    out = np.concatenate([fp16_bytes(d), to_numpy(q).astype(np.int8).view(np.uint8)], axis=1)
    return from_numpy(out, like=x)


def _int8_codes(raw: Any, start: int) -> Any:
    """Bytes [start, start + 32) read as int8 two's complement, as float32 values: (n, 32).

    Flipping the sign bit (u ^ 0x80) maps the int8 value v to the unsigned v + 128, so
    v = (u ^ 0x80) − 128, exactly, without a bit-cast.
    """
    xp = namespace(raw)
    return xp.astype(raw[:, start : start + QK] ^ 0x80, xp.float32) - 128.0


def dequantize_q8_0(raw: Any) -> Any:
    """(n_blocks, 34) uint8 -> (n_blocks, 32) float32: ŵ = d · q."""
    _check_raw(raw, 34, "Q8_0")
    xp = namespace(raw)
    return _int8_codes(raw, 2) * half_at(raw, 0)


def quantize_q8_1(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 36) uint8 Q8_1 blocks (quantize_row_q8_1_ref).

    As Q8_0, plus s = fp16((float)Σ_j q_j · d) with the float32 d (not the stored one).
    """
    x = _check_blocks(x, qw)
    xp = namespace(x)
    d, q = _codes_q8(x)
    code_sum = xp.sum(q, axis=-1, keepdims=True)  # C's int sum of the stored int8 codes: exact in any order, +0 if 0
    s = code_sum * d
    out = np.concatenate([fp16_bytes(d), fp16_bytes(s), to_numpy(q).astype(np.int8).view(np.uint8)], axis=1)
    return from_numpy(out, like=x)


def dequantize_q8_1(raw: Any) -> Any:
    """(n_blocks, 36) uint8 -> (n_blocks, 32) float32: ŵ = d · q (s is not needed to decode)."""
    _check_raw(raw, 36, "Q8_1")
    xp = namespace(raw)
    return _int8_codes(raw, 4) * half_at(raw, 0)


# ---------------------------------------------------------------------------------------
# F32 / F16 / BF16 — plain floats, one "block" per weight
#
# F16: round to nearest even, overflow to ±inf (GGML_FP32_TO_FP16); BF16: the top 16
# bits of the float32, rounded to nearest even, NaN kept quiet (GGML_FP32_TO_BF16);
# F32: copied. These types *are* bit patterns, so both directions live at the NumPy edge
# (a bit-cast, which also keeps NaN payloads as libggml does) and the result is moved
# to the caller's namespace.
# ---------------------------------------------------------------------------------------

def _bytes_of(raw: Any, type_size: int, name: str) -> np.ndarray:
    _check_raw(raw, type_size, name)
    return np.ascontiguousarray(to_numpy(raw), dtype=np.uint8)


def quantize_f32(x: Any, qw: Any | None = None) -> Any:
    """x: (n, 1) float -> (n, 4) uint8: the float32 bytes."""
    a = np.ascontiguousarray(to_numpy(x), dtype=np.float32)
    return from_numpy(a.view(np.uint8).reshape(a.shape[0], 4), like=x)


def dequantize_f32(raw: Any) -> Any:
    """(n, 4) uint8 -> (n, 1) float32."""
    return from_numpy(_bytes_of(raw, 4, "F32").view(np.float32), like=raw)


def quantize_f16(x: Any, qw: Any | None = None) -> Any:
    """x: (n, 1) float -> (n, 2) uint8: the nearest float16 (ties to even, overflow to ±inf)."""
    return from_numpy(fp16_bytes(_as_f32(x)), like=x)


def dequantize_f16(raw: Any) -> Any:
    """(n, 2) uint8 -> (n, 1) float32 (exact)."""
    return from_numpy(_bytes_of(raw, 2, "F16").view(np.float16).astype(np.float32), like=raw)


def quantize_bf16(x: Any, qw: Any | None = None) -> Any:
    """x: (n, 1) float -> (n, 2) uint8: bfloat16, round to nearest even (GGML_FP32_TO_BF16)."""
    bits = to_bf16_bits(to_numpy(_as_f32(x)).reshape(-1))
    return from_numpy(bits.view(np.uint8).reshape(-1, 2), like=x)


def dequantize_bf16(raw: Any) -> Any:
    """(n, 2) uint8 -> (n, 1) float32 (exact: bfloat16 is the top half of a float32)."""
    bits = _bytes_of(raw, 2, "BF16").view(np.uint16)
    return from_numpy(bf16_bits_to_f32(bits), like=raw)
