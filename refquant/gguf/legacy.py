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

from .._backend import from_numpy, is_numpy, namespace, to_numpy
from .._rounding import bf16_bits_to_f32, round_half_away, to_bf16_bits
from . import _search
from ._search import QKX3_GRID
from ._bytes import (QK, Layout, as_f32, check_blocks, first_zero_sign, fp16_bytes, fp16_field, inverse_or_zero,
                     low_high_nibbles, pack_low_high, pack_u32_bits, sequential_sum, u32_bits)

__all__ = [
    "QK", "Q4_0_BLOCK", "Q4_1_BLOCK", "Q5_0_BLOCK", "Q5_1_BLOCK", "Q8_0_BLOCK", "Q8_1_BLOCK",
    "quantize_q4_0", "dequantize_q4_0", "quantize_q4_1", "dequantize_q4_1",
    "quantize_q5_0", "dequantize_q5_0", "quantize_q5_1", "dequantize_q5_1",
    "quantize_q8_0", "dequantize_q8_0", "quantize_q8_1", "dequantize_q8_1",
    "quantize_f32", "dequantize_f32", "quantize_f16", "dequantize_f16", "quantize_bf16", "dequantize_bf16",
    "row_mean_square", "block_max", "block_min", "block_signed_absmax", "c_block_min", "c_block_max", "c_int8",
]


# ---------------------------------------------------------------------------------------
# C semantics of the reference encoders: running extremes, float -> int8
# ---------------------------------------------------------------------------------------

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


def c_block_min(v: Any) -> Any:
    """C's ``min = FLT_MAX; for (j...) if (v[j] < min) min = v[j];`` over the last axis: (n, m) -> (n, 1).

    The minimum (by halving), and for a zero minimum the sign of the first zero (first_zero_sign).

    >>> np.signbit(c_block_min(np.float32([[-0.0, 0.0, 1.0], [0.0, -0.0, 1.0]]))).tolist()
    [[True], [False]]
    """
    return first_zero_sign(v, block_min(v))


def c_block_max(v: Any) -> Any:
    """C's ``max = -FLT_MAX; for (j...) if (v[j] > max) max = v[j];`` over the last axis: (n, m) -> (n, 1)."""
    return first_zero_sign(v, block_max(v))


def _extremes(v: Any) -> tuple[Any, Any]:
    """block_max and block_min together: (n, m) -> (n, 1), (n, 1). Exact (no rounding in a max).

    NumPy: one transposed copy, then two reductions over its slow axis, each adding up whole
    rows of n lanes — about 4x faster than halving rows of 32, or reducing them one by one.
    """
    if is_numpy(v) and v.ndim == 2:
        vt = np.ascontiguousarray(v.T)                              # (m, n)
        return vt.max(axis=0)[:, None], vt.min(axis=0)[:, None]
    return block_max(v), block_min(v)


def block_signed_absmax(v: Any) -> Any:
    """signed_absmax(v).signed over the last axis, from the row extremes: (n, m) -> (n, 1).

    >>> block_signed_absmax(np.float32([[2, -3, 1, 0], [-0.0, 0, 0, 0], [1, -2, 2, 0]])).tolist()
    [[-3.0], [0.0], [-2.0]]
    """
    hi, lo = _extremes(v)                                           # (n, 1), (n, 1)
    return _search.signed_absmax_of(v, hi, lo, axis=-1).signed


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

    Example:
        >>> c_int8(np.float32([3.7, -1.2, 200.0, np.inf, np.nan])).tolist()
        [3.0, -1.0, -56.0, 0.0, 0.0]
    """
    xp = namespace(v)
    t = xp.trunc(v)
    # every code in range (False for NaN, ±inf): wrap8(t) = t, the usual case; it skips the
    # float remainder (~90% of the time). Two reductions, no |t| temporary.
    if 0 not in tuple(t.shape) and float(xp.max(t)) < 128.0 and float(xp.min(t)) > -128.0:
        return t + 0.0
    ok = xp.abs(t) < _TWO_31                                        # False for NaN and ±inf
    t = xp.where(ok, t, xp.full_like(t, float(INT_INDEFINITE_LOW_BYTE)))
    low = xp.remainder(t, 256.0)                                    # 0 … 255, exact (fmod of a float32 integer)
    return xp.where(low >= 128.0, low - 256.0, low) + 0.0           # two's complement; + 0.0 makes −0 into +0


def row_mean_square(x: Any) -> Any:
    """σ² = (Σ_j x_j²) / n of each row, summed left to right in float32 as the C loop does.

    x: (rows, n) -> (rows, 1). This is the ``sigma2`` of quantize_row_q4_0_impl ...
    quantize_row_q5_1_impl.

    >>> row_mean_square(np.float32([[1.0, 2.0, 2.0, 1.0]])).tolist()
    [[2.5]]
    """
    x = as_f32(x)
    return sequential_sum(x * x) / float(x.shape[-1])


def _importance(x: Any, qw: Any, sigma2: Any | None) -> Any:
    """w_j = qw_j · sqrt(σ² + x_j²), σ² the row's mean square (the block's own if not given)."""
    xp = namespace(x)
    if sigma2 is None:
        sigma2 = row_mean_square(x)
    return as_f32(qw) * xp.sqrt(sigma2 + x * x)


def _codes(b: Any) -> Any:
    """The 32 codes of split 4- or 5-bit blocks: the nibbles of qs, plus bit j of qh as 16 (Q5_0, Q5_1)."""
    q = low_high_nibbles(b.qs)                                      # (n, 32)
    return q | (u32_bits(b.qh) << 4) if hasattr(b, "qh") else q


def _store_u8(q: Any) -> np.ndarray:
    """C's ``uint8_t`` store of an int code in −128 … 255: its low byte, as a NumPy uint8 array.

    q: integer-valued float32 in any namespace. Integer casts wrap modulo 256, so going
    through int16 is exact and costs a fraction of a float remainder (np.remainder on
    float32 was ~60% of the plain Q4_0 … Q5_1 encoders' time).

    >>> _store_u8(np.float32([-128.0, -1.0, 0.0, 15.0])).tolist()
    [128, 255, 0, 15]
    """
    return to_numpy(q).astype(np.int16).astype(np.uint8)


def _code_fields(q: np.ndarray, layout: Layout) -> dict[str, np.ndarray]:
    """(n, 32) codes -> the qs (and qh) fields. Q4_0/Q4_1 keep the C store's unmasked low nibble."""
    if "qh" in layout.widths:
        return {"qh": pack_u32_bits((q >> 4) & 1), "qs": pack_low_high(q)}
    return {"qs": pack_low_high(q, mask=False)}


# ---------------------------------------------------------------------------------------
# Q4_0 — 4.5 bits per weight                 Q5_0 — 5.5 bits per weight
#
#   byte  0      2                      18     0      2            6                   22
#         +------+----------------------+      +------+------------+-------------------+
#         |  d   | qs[16]               |      |  d   | qh (u32)   | qs[16] low 4 bits |
#         +------+----------------------+      +------+------------+-------------------+
#   ŵ_j = d · (q_j − 8)                        q_j = nibble j | (bit j of qh) << 4,  ŵ_j = d · (q_j − 16)
# ---------------------------------------------------------------------------------------

Q4_0_BLOCK = Layout("Q4_0", d=2, qs=16)
Q5_0_BLOCK = Layout("Q5_0", d=2, qh=4, qs=16)


def _codes_q4_0(x: Any, bits: int) -> tuple[Any, Any]:
    """quantize_row_q4_0_ref / q5_0_ref in xp: (d (n, 1) float32, q (n, QK) int codes −128 … 2^bits − 1).

    q is C's int before the ``uint8_t`` store (a negative one only where id overflowed); see _store_u8.
    """
    xp = namespace(x)
    half = float(1 << (bits - 1))                     # 8 for Q4_0, 16 for Q5_0
    max_ = block_signed_absmax(x)                     # (n, 1) the first element of largest |x|
    d = max_ / -half                                  # the extreme element maps to code 0
    inv = inverse_or_zero(d)                          # inf when d is a float32 subnormal below 2^-128
    q = c_int8(x * inv + (half + 0.5))                # (int8_t)(x*id + 8.5f): truncation; NaN/inf -> 0
    q = _search.clamp(q, None, float((1 << bits) - 1))  # MIN(15, ...) on the int (a negative int8 stays negative)
    return d, q                                       # −128 … 15: the uint8_t store is _store_u8's


def _encode_0(x: Any, qw: Any | None, sigma2: Any | None, layout: Layout, bits: int) -> Any:
    """Q4_0 / Q5_0: the ref path, or make_qx_quants(nmax = 2^(bits−1), rmse_type=1) with an imatrix."""
    x = check_blocks(x, qw, layout.qtype)
    if qw is None:
        d, q = _codes_q4_0(x, bits)
    else:
        d, q = _search.make_qx_quants(x, 1 << (bits - 1), 1, _importance(x, qw, sigma2))
        d = namespace(x).reshape(d, (-1, 1))
    q = _store_u8(q)
    return from_numpy(layout.join(d=fp16_bytes(d), **_code_fields(q, layout)), like=x)


def _decode_0(raw: Any, layout: Layout, offset: float) -> Any:
    """ŵ = d · (q − offset): (n_blocks, type_size) uint8 -> (n_blocks, 32) float32."""
    b = layout.split(raw)
    xp = namespace(raw)
    return (xp.astype(_codes(b), xp.float32) - offset) * fp16_field(b.d)


def quantize_q4_0(x: Any, qw: Any | None = None, *, sigma2: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 18) uint8 Q4_0 blocks.

    qw (optional, same shape): the importance matrix broadcast to the blocks; then
    d comes from make_qx_quants(32, nmax=8, rmse_type=1) weighted by
    qw·sqrt(σ² + x²), σ² = ``sigma2`` (n_blocks, 1), the mean square of each block's row.

    Example: a block of 32 copies of −1.0 -> d = −1/−8 = 0.125 (fp16 0x3000),
    q = trunc(−8 + 8.5) = 0, and it decodes to 0.125 · (0 − 8) = −1.0.

        >>> raw = quantize_q4_0(np.full((1, 32), -1.0, np.float32))
        >>> raw[0, :4].tolist(), dequantize_q4_0(raw)[0, :2].tolist()
        ([0, 48, 0, 0], [-1.0, -1.0])
    """
    return _encode_0(x, qw, sigma2, Q4_0_BLOCK, bits=4)


def dequantize_q4_0(raw: Any) -> Any:
    """(n_blocks, 18) uint8 -> (n_blocks, 32) float32: ŵ = d · (q − 8)."""
    return _decode_0(raw, Q4_0_BLOCK, 8.0)


def quantize_q5_0(x: Any, qw: Any | None = None, *, sigma2: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 22) uint8 Q5_0 blocks.

    Without qw: d = max / −16 (max the signed largest-magnitude element),
    q = min(31, trunc(x/d + 16.5)). With qw: make_qx_quants(32, nmax=16, rmse_type=1).
    """
    return _encode_0(x, qw, sigma2, Q5_0_BLOCK, bits=5)


def dequantize_q5_0(raw: Any) -> Any:
    """(n_blocks, 22) uint8 -> (n_blocks, 32) float32: ŵ = d · (q − 16)."""
    return _decode_0(raw, Q5_0_BLOCK, 16.0)


# ---------------------------------------------------------------------------------------
# Q4_1 — 5 bits per weight                   Q5_1 — 6 bits per weight
#
#   byte  0      2      4               20     0      2      4           8                 24
#         +------+------+---------------+      +------+------+-----------+-----------------+
#         |  d   |  m   | qs[16]        |      |  d   |  m   | qh (u32)  | qs[16] low bits |
#         +------+------+---------------+      +------+------+-----------+-----------------+
#   ŵ_j = d · q_j + m                          q_j as in Q5_0,  ŵ_j = d · q_j + m
# ---------------------------------------------------------------------------------------

Q4_1_BLOCK = Layout("Q4_1", d=2, m=2, qs=16)
Q5_1_BLOCK = Layout("Q5_1", d=2, m=2, qh=4, qs=16)


def _codes_q4_1(x: Any, bits: int) -> tuple[Any, Any, Any]:
    """quantize_row_q4_1_ref / q5_1_ref in xp: (d, m, q int codes −128 … 127 before the uint8_t store)."""
    xp = namespace(x)
    n_levels = float((1 << bits) - 1)                 # 15 for Q4_1, 31 for Q5_1
    hi, lo = _extremes(x)                             # (n, 1), (n, 1)
    min_ = first_zero_sign(x, lo)                     # c_block_min: the first of ±0 wins, as in C
    max_ = first_zero_sign(x, hi)                     # c_block_max
    d = (max_ - min_) / n_levels                      # −0.0 for a block [−0, +0, ...]: (−0) − (+0)
    inv = inverse_or_zero(d)                          # inf when d is a subnormal below 2^-128
    q = c_int8((x - min_) * inv + 0.5)                # Q4_1: (int8_t)(x0 + 0.5f); Q5_1: (uint8_t)(...), same low byte
    if bits == 4:
        q = _search.clamp(q, None, n_levels)          # Q4_1: MIN(15, ...); Q5_1 has no clamp
    return d, min_, q                                 # −128 … 127: the uint8_t store is _store_u8's


def _encode_1(x: Any, qw: Any | None, sigma2: Any | None, layout: Layout, bits: int) -> Any:
    """Q4_1 / Q5_1: the ref path, or make_qkx3_quants(nmax = 2^bits − 1, QKX3_GRID) with an imatrix."""
    x = check_blocks(x, qw, layout.qtype)
    xp = namespace(x)
    if qw is None:
        d, m, q = _codes_q4_1(x, bits)
    else:
        d, neg_min, q = _search.make_qkx3_quants(x, (1 << bits) - 1, _importance(x, qw, sigma2), *QKX3_GRID, False)
        d, m = xp.reshape(d, (-1, 1)), -xp.reshape(neg_min, (-1, 1))
    q = _store_u8(q)
    return from_numpy(layout.join(d=fp16_bytes(d), m=fp16_bytes(m), **_code_fields(q, layout)), like=x)


def _decode_1(raw: Any, layout: Layout) -> Any:
    """ŵ = d · q + m (two float32 roundings, no FMA): (n_blocks, type_size) uint8 -> (n_blocks, 32) float32."""
    b = layout.split(raw)
    xp = namespace(raw)
    return xp.astype(_codes(b), xp.float32) * fp16_field(b.d) + fp16_field(b.m)


def quantize_q4_1(x: Any, qw: Any | None = None, *, sigma2: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 20) uint8 Q4_1 blocks.

    Without qw: d = (max − min)/15, m = min, q = trunc((x − min)/d + 0.5) ≤ 15.
    With qw: d, m from make_qkx3_quants(32, 15, weights, rmin=−0.9, rdelta=0.05, nstep=36).

    Example: the block 0, 1, 2, ..., 15, 15, ..., 15 -> d = 1 (fp16 0x3C00), m = 0, q = x: exact.

        >>> x = np.minimum(np.arange(32, dtype=np.float32), 15)[None, :]
        >>> raw = quantize_q4_1(x)
        >>> raw[0, :4].tolist(), bool((dequantize_q4_1(raw) == x).all())
        ([0, 60, 0, 0], True)
    """
    return _encode_1(x, qw, sigma2, Q4_1_BLOCK, bits=4)


def dequantize_q4_1(raw: Any) -> Any:
    """(n_blocks, 20) uint8 -> (n_blocks, 32) float32: ŵ = d · q + m (two float32 roundings, no FMA)."""
    return _decode_1(raw, Q4_1_BLOCK)


def quantize_q5_1(x: Any, qw: Any | None = None, *, sigma2: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 24) uint8 Q5_1 blocks.

    Without qw: d = (max − min)/31, m = min, q = trunc((x − min)/d + 0.5) (the C code has
    no clamp here: (max − min)/d rounds to at most 31.00001, so q ≤ 31).
    With qw: make_qkx3_quants(32, 31, weights, −0.9, 0.05, 36).
    """
    return _encode_1(x, qw, sigma2, Q5_1_BLOCK, bits=5)


def dequantize_q5_1(raw: Any) -> Any:
    """(n_blocks, 24) uint8 -> (n_blocks, 32) float32: ŵ = d · q + m."""
    return _decode_1(raw, Q5_1_BLOCK)


# ---------------------------------------------------------------------------------------
# Q8_0 — 8.5 bits per weight            Q8_1 — 9 bits per weight
#
#   0      2                  34         0      2      4                  36
#   +------+------------------+          +------+------+------------------+
#   |  d   | qs[32] int8      |          |  d   |  s   | qs[32] int8      |
#   +------+------------------+          +------+------+------------------+
#   ŵ_j = d · q_j                        ŵ_j = d · q_j,  s = d · Σ_j q_j
# ---------------------------------------------------------------------------------------

Q8_0_BLOCK = Layout("Q8_0", d=2, qs=32)
Q8_1_BLOCK = Layout("Q8_1", d=2, s=2, qs=32)


def _codes_q8(x: Any) -> tuple[Any, Any]:
    """quantize_row_q8_0_ref in xp: d = max|x|/127, q = roundf(x/d) (half away from zero)."""
    xp = namespace(x)
    hi, lo = _extremes(x)                              # (n, 1), (n, 1)
    amax = xp.maximum(hi, -lo) + 0.0                   # max |x| = max(max x, −min x); + 0.0: C's amax = 0 start
    d = amax / 127.0
    q = c_int8(round_half_away(x * inverse_or_zero(d)))  # qs[j] = roundf(x0): NaN/inf (1/d = inf) -> 0
    return d, q


def _int8_bytes(q: Any) -> np.ndarray:
    """int8-valued codes (any namespace) -> their two's-complement bytes (NumPy)."""
    return to_numpy(q).astype(np.int8).view(np.uint8)


def _int8_codes(qs: Any) -> Any:
    """A field of int8 two's complement bytes, as float32 values: (n, 32) -> (n, 32).

    Flipping the sign bit (u ^ 0x80) maps the int8 value v to the unsigned v + 128, so
    v = (u ^ 0x80) − 128, exactly, without a bit-cast.
    """
    xp = namespace(qs)
    return xp.astype(qs ^ 0x80, xp.float32) - 128.0


def quantize_q8_0(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 34) uint8 Q8_0 blocks. ``qw`` is ignored, as in ggml.

    Example: a block holding 254.0 and 31 zeros -> d = 2 (fp16 0x4000), q = [127, 0, ...];
    it decodes exactly.

        >>> x = np.zeros((1, 32), np.float32); x[0, 0] = 254.0
        >>> raw = quantize_q8_0(x)
        >>> raw[0, :4].tolist(), dequantize_q8_0(raw)[0, :2].tolist()
        ([0, 64, 127, 0], [254.0, 0.0])
    """
    x = check_blocks(x, qw, "Q8_0")
    d, q = _codes_q8(x)
    return from_numpy(Q8_0_BLOCK.join(d=fp16_bytes(d), qs=_int8_bytes(q)), like=x)


def dequantize_q8_0(raw: Any) -> Any:
    """(n_blocks, 34) uint8 -> (n_blocks, 32) float32: ŵ = d · q."""
    b = Q8_0_BLOCK.split(raw)
    return _int8_codes(b.qs) * fp16_field(b.d)


def quantize_q8_1(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 36) uint8 Q8_1 blocks (quantize_row_q8_1_ref).

    As Q8_0, plus s = fp16((float)Σ_j q_j · d) with the float32 d (not the stored one).
    """
    x = check_blocks(x, qw, "Q8_1")
    xp = namespace(x)
    d, q = _codes_q8(x)
    code_sum = xp.sum(q, axis=-1, keepdims=True)  # C's int sum of the stored int8 codes: exact in any order, +0 if 0
    s = code_sum * d
    return from_numpy(Q8_1_BLOCK.join(d=fp16_bytes(d), s=fp16_bytes(s), qs=_int8_bytes(q)), like=x)


def dequantize_q8_1(raw: Any) -> Any:
    """(n_blocks, 36) uint8 -> (n_blocks, 32) float32: ŵ = d · q (s is not needed to decode)."""
    b = Q8_1_BLOCK.split(raw)
    return _int8_codes(b.qs) * fp16_field(b.d)


# ---------------------------------------------------------------------------------------
# F32 / F16 / BF16 — plain floats, one "block" per weight
#
# F16: round to nearest even, overflow to ±inf (GGML_FP32_TO_FP16); BF16: the top 16
# bits of the float32, rounded to nearest even, NaN kept quiet (GGML_FP32_TO_BF16);
# F32: copied. These types *are* bit patterns, so both directions live at the NumPy edge
# (a bit-cast, which also keeps NaN payloads as libggml does) and the result is moved
# to the caller's namespace.
# ---------------------------------------------------------------------------------------

F32_BLOCK = Layout("F32", value=4)
F16_BLOCK = Layout("F16", value=2)
BF16_BLOCK = Layout("BF16", value=2)


def _bytes_of(raw: Any, layout: Layout) -> np.ndarray:
    """The single field of a plain-float block, checked, as contiguous NumPy bytes (n, type_size)."""
    return np.ascontiguousarray(to_numpy(layout.split(raw).value), dtype=np.uint8)


def quantize_f32(x: Any, qw: Any | None = None) -> Any:
    """x: (n, 1) float -> (n, 4) uint8: the float32 bytes."""
    a = np.ascontiguousarray(to_numpy(x), dtype=np.float32)
    return from_numpy(a.view(np.uint8).reshape(a.shape[0], 4), like=x)


def dequantize_f32(raw: Any) -> Any:
    """(n, 4) uint8 -> (n, 1) float32."""
    return from_numpy(_bytes_of(raw, F32_BLOCK).view(np.float32), like=raw)


def quantize_f16(x: Any, qw: Any | None = None) -> Any:
    """x: (n, 1) float -> (n, 2) uint8: the nearest float16 (ties to even, overflow to ±inf)."""
    return from_numpy(fp16_bytes(as_f32(x)), like=x)


def dequantize_f16(raw: Any) -> Any:
    """(n, 2) uint8 -> (n, 1) float32 (exact)."""
    return from_numpy(_bytes_of(raw, F16_BLOCK).view(np.float16).astype(np.float32), like=raw)


def quantize_bf16(x: Any, qw: Any | None = None) -> Any:
    """x: (n, 1) float -> (n, 2) uint8: bfloat16, round to nearest even (GGML_FP32_TO_BF16)."""
    bits = to_bf16_bits(to_numpy(as_f32(x)).reshape(-1))
    return from_numpy(bits.view(np.uint8).reshape(-1, 2), like=x)


def dequantize_bf16(raw: Any) -> Any:
    """(n, 2) uint8 -> (n, 1) float32 (exact: bfloat16 is the top half of a float32)."""
    bits = _bytes_of(raw, BF16_BLOCK).view(np.uint16)
    return from_numpy(bf16_bits_to_f32(bits), like=raw)
