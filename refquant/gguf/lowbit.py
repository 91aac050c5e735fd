"""Ternary (TQ1_0, TQ2_0), microscaled 4-bit floats (MXFP4, NVFP4) and the 1-/2-bit Q1_0, Q2_0.

Six small formats that all pick their scale in one pass (no search) and then code every weight
against it. None of them uses an importance matrix: ggml_quantize_chunk runs the *_ref encoder
with or without one (quantize_tq1_0 … quantize_q2_0 in ggml-quants.c), so the bytes are the same.

| type  | QK  | bytes | bits/w | scale stored                   | codes                 | ŵ                      |
|-------|----:|------:|-------:|--------------------------------|-----------------------|------------------------|
| TQ1_0 | 256 |  54   | 1.6875 | d = max|x| (f16, at the end)   | trits, 5 (or 4)/byte  | d · (t − 1), t ∈ {0,1,2}|
| TQ2_0 | 256 |  66   | 2.0625 | d = max|x| (f16, at the end)   | 2-bit trits           | d · (t − 1)            |
| MXFP4 |  32 |  17   | 4.25   | E8M0 byte e                    | E2M1 nibbles          | 2^(e−128) · K[q]       |
| NVFP4 |  64 |  36   | 4.5    | a UE4M3 byte per 16            | E2M1 nibbles          | ue4m3(d_s)/2 · K[q]    |
| Q1_0  | 128 |  18   | 1.125  | d = mean|x| (f16)              | sign bits             | ±d                     |
| Q2_0  |  64 |  18   | 2.25   | d = max|x| (f16)               | 2-bit q ∈ {0,1,2,3}   | d · (q − 1)            |

K = kvalues_mxfp4 = (0, 1, 2, 3, 4, 6, 8, 12, 0, −1, −2, −3, −4, −6, −8, −12): the E2M1 values
doubled, so the stored scales are halved (GGML_E8M0_TO_FP32_HALF, ggml_ue4m3_to_fp32's · 0.5).

Glossary (ggml's names): d the block scale, e the E8M0 exponent byte, qs the packed codes, qh
TQ1_0's last 16 trits (4 per byte); t a trit 0/1/2 standing for −1/0/+1.

The choices each encoder makes, ggml's order of float32 operations kept:

* TQ1_0 / TQ2_0 (quantize_row_tq1_0_ref, _tq2_0_ref): d = max|x|, t = lroundf(x · (1/d)) + 1
  (ties away from zero). TQ2_0 packs four trits per byte as 2-bit planes; TQ1_0 packs five trits
  per byte as a base-3 number q = Σ t_n 3^(4−n) scaled into a byte by ceil(q · 256 / 243), so the
  decoder reads trit n as the top base-3 digit of (byte · 3^n mod 256), ⌊· 3 / 256⌋.
* MXFP4 (quantize_row_mxfp4_ref): e = (uint8)(floorf(log2f(amax)) − 2 + 127) (0 for amax = 0),
  the elements then the nearest K[q] · 2^(e−128), error ties to the lower code (best_index_mxfp4).
  ggml's rule is the floor rule of the OCP spec evaluated with float32 log2f (an amax an ulp below
  2^k rounds up to k), and below amax = 2^−125 the negative byte wraps modulo 256. Implementations
  disagree on the shared exponent: torchao offers FLOOR (the spec's, its default), RCEIL (NVIDIA's
  cvt.rp.ue8m0: ceil(log2(amax / 6))), CEIL (ceil(log2 amax) − 2: never clips) and EVEN (amax
  rounded to E2M1's mantissa first); refquant.mx computes all of them (``scale_exponent``, whose
  "ggml" mode this module calls).
* NVFP4 (quantize_row_nvfp4_ref): single level (no tensor scale); per 16 weights the UE4M3 byte
  of amax / 6 (ggml_fp32_to_ue4m3: half-up rounding, a capped subnormal range, [256, 448] → 448;
  refquant.mx.nvfp4_block_scale's "ggml" mode), the elements as in MXFP4 against its value / 2.
* Q1_0 (quantize_row_q1_0_ref): d = (Σ|x|) / 128 summed left to right, bit j = (x_j ≥ 0) — so −0.0
  is +d.
* Q2_0 (quantize_row_q2_0_ref): d = max|x|, q = clamp((int)roundf(x · (1/d)) + 1, 0, 3). Since
  |x/d| ≤ 1 the code 3 (+2d) is never written, though the decoder reads it.

Where 1/d overflows (d a float32 below 2^−128), x · (1/d) is ±inf or NaN and C's conversions give
x86-64's "integer indefinite" (see ``c_round_plus_one``): TQ codes become 1 (zero), Q2_0 codes 0.

Q1_0 and Q2_0 (type ids 41, 42) are 2026 additions; ggml-org/ggml's ggml-quants.c of August 2026
(d99724f) holds their encoders, and the tests check the installed libggml 0.20.2 byte for byte.

Every encoder computes scales and codes in the input's array namespace and packs bytes at the
NumPy edge; every decoder runs on any namespace.

Ref: ggml/src/ggml-quants.c (quantize_row_{tq1_0,tq2_0,mxfp4,nvfp4,q1_0,q2_0}_ref, best_index_mxfp4,
dequantize_row_*), ggml/src/ggml-common.h (block_tq1_0 … block_q2_0, kvalues_fp4),
ggml/src/ggml-impl.h (ggml_e8m0_to_fp32_half, ggml_fp32_to_ue4m3, ggml_ue4m3_to_fp32);
gguf-py quants.py (TQ1_0, TQ2_0, MXFP4, NVFP4); OCP Microscaling Formats v1.0.

Example: a TQ2_0 block of 256 copies of 0.5 has d = 0.5 and every trit lroundf(1.0) + 1 = 2, so
each byte is 2 | 2 << 2 | 2 << 4 | 2 << 6 = 0xAA:

>>> raw = quantize_tq2_0(np.full((1, 256), 0.5, np.float32))
>>> raw[0, :2].tolist(), raw[0, 64:].tolist(), float(dequantize_tq2_0(raw)[0, 0])
([170, 170], [0, 56], 0.5)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import device, from_numpy, namespace, to_numpy
from .._rounding import round_half_away
from ..fp8 import E4M3, encode
from ..mx import E8M0_BIAS, nvfp4_block_scale, scale_exponent
from ._bytes import (QK_K, Layout, check_blocks, fp16_bytes, fp16_field, pack_low_high, pack_planes, sequential_sum,
                     unpack_planes)

__all__ = ["CODECS", "QK_TQ", "QK_MXFP4", "QK_NVFP4", "QK_NVFP4_SUB", "QK1_0", "QK2_0", "KVALUES_FP4",
           "TQ1_0_BLOCK", "TQ2_0_BLOCK", "MXFP4_BLOCK", "NVFP4_BLOCK", "Q1_0_BLOCK", "Q2_0_BLOCK",
           "c_round_plus_one", "best_index_fp4", "e8m0_half", "ue4m3_half",
           "quantize_tq1_0", "dequantize_tq1_0", "quantize_tq2_0", "dequantize_tq2_0",
           "quantize_mxfp4", "dequantize_mxfp4", "quantize_nvfp4", "dequantize_nvfp4",
           "quantize_q1_0", "dequantize_q1_0", "quantize_q2_0", "dequantize_q2_0"]

QK_TQ = QK_K        # TQ1_0 / TQ2_0: 256 weights per block (ggml-common.h)
QK_MXFP4 = 32       # ggml-common.h QK_MXFP4
QK_NVFP4 = 64       # ggml-common.h QK_NVFP4: four sub-blocks ...
QK_NVFP4_SUB = 16   # ... of QK_NVFP4_SUB weights, one UE4M3 scale each
QK1_0 = 128         # ggml-common.h QK1_0
QK2_0 = 64          # ggml-common.h QK2_0

# kvalues_fp4 (ggml-common.h): the E2M1 values times 2, indexed by the 4-bit code (bit 3 = sign)
KVALUES_FP4 = (0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12)
FP4_SIGN = 8        # code of −K[q] is q + 8
FP4_LEVELS = KVALUES_FP4[:FP4_SIGN]   # the eight magnitudes, in code order


# ---------------------------------------------------------------------------------------
# Shared pieces: C's rounding of a non-finite product, the FP4 element search, scale tables
# ---------------------------------------------------------------------------------------

C_INDEFINITE_PLUS_ONE_LONG = 1.0          # (int)(lroundf(±inf/NaN) + 1): LONG_MIN + 1, low 32 bits = 1
C_INDEFINITE_PLUS_ONE_INT = -2147483647.0  # (int)roundf(±inf/NaN) + 1: INT_MIN + 1


def c_round_plus_one(v: Any, via_long: bool) -> Any:
    """C's ``lroundf(v) + 1`` stored in an int (``via_long``) or ``(int)roundf(v) + 1``, as float32.

    Finite v: round half away from zero, plus one. For ±inf and NaN (v = x · (1/d) when 1/d has
    overflowed) x86-64 converts to the "integer indefinite": lroundf returns LONG_MIN
    (cvttss2si, 64-bit), whose + 1 truncated to int is 1 — TQ1_0/TQ2_0's trit 1, a zero; (int)roundf
    gives INT_MIN, + 1 = −2³¹ + 1, which Q2_0's clamp takes to 0.

    >>> c_round_plus_one(np.float32([0.5, -0.5, np.inf, np.nan]), via_long=True).tolist()
    [2.0, 0.0, 1.0, 1.0]
    """
    xp = namespace(v)
    finite = xp.isfinite(v)
    safe = xp.where(finite, v, xp.zeros_like(v))
    indefinite = C_INDEFINITE_PLUS_ONE_LONG if via_long else C_INDEFINITE_PLUS_ONE_INT
    return xp.where(finite, round_half_away(safe) + 1.0, xp.full_like(v, indefinite))


def best_index_fp4(x: Any, d: Any) -> Any:
    """best_index_mxfp4: the first code q minimizing fabsf(K[q]·d − x) in float32. (n, m), (n, 1) -> (n, m).

    The C loop runs over all 16 codes with a strict ``<``. A negative level never beats code 0
    for x ≥ 0 (its error |K·d| + x is ≥ x), a positive one never for x < 0, and code 8 (−0) never
    beats code 0; so it is the same loop over the eight magnitudes against |x|, the sign added
    after (a −0.0 or a zero result keeps code 0). The errors are float32 as in C: when x is far
    above 12·d (NVFP4's capped scale), several errors round to the same float and the first
    (smallest) level wins, which a midpoint rule would miss.

    Example (d = 0.5, codes as float32): 0.25 and 0.75 are ties and go down; 7 and 100 saturate.

    >>> best_index_fp4(np.float32([[0.25, 0.75, -1.0, -0.0, 7.0, 100.0]]), np.float32([[0.5]])).tolist()
    [[0.0, 1.0, 10.0, 0.0, 7.0, 7.0]]
    """
    xp = namespace(x)
    a = xp.abs(x)
    best_err = a                                                   # code 0: fabsf(0·d − x)
    best = xp.zeros_like(a)
    for q in range(1, FP4_SIGN):
        err = xp.abs(FP4_LEVELS[q] * d - a)
        better = err < best_err
        best_err = xp.where(better, err, best_err)
        best = xp.where(better, xp.full_like(best, float(q)), best)
    negative = (x < 0) & (best > 0)
    return xp.where(negative, best + float(FP4_SIGN), best)


def _fp4_values(codes: Any) -> Any:
    """4-bit codes (any integer dtype) -> K[q] as float32, in the codes' namespace."""
    xp = namespace(codes)
    table = from_numpy(np.float32(KVALUES_FP4), like=codes)
    return xp.reshape(xp.take(table, xp.reshape(xp.astype(codes, xp.int64), (-1,))), codes.shape)


def _e8m0_half_table() -> np.ndarray:
    """ggml_e8m0_to_fp32_half for every byte: 2^(e − 128); e = 0, 1 are float32 subnormals, no NaN."""
    return np.ldexp(np.float32(1.0), np.arange(256) - (E8M0_BIAS + 1)).astype(np.float32)


def _ue4m3_half_table() -> np.ndarray:
    """ggml_ue4m3_to_fp32 for every byte: the unsigned E4M3 value times 0.5.

    Bit 7 is ignored (exp = (x >> 3) & 15), 0 and 0x7F read as 0, and 0xFF as 240 (not NaN)."""
    x = np.arange(256)
    exp, man = (x >> 3) & 0xF, (x & 7).astype(np.float32)
    raw = np.where(exp == 0, np.ldexp(man, -9), np.ldexp(1.0 + man / 8.0, exp - 7)).astype(np.float32)
    return np.where((x == 0) | (x == 0x7F), np.float32(0.0), raw * np.float32(0.5)).astype(np.float32)


E8M0_HALF = _e8m0_half_table()
UE4M3_HALF = _ue4m3_half_table()


def _lookup(table: np.ndarray, field: Any) -> Any:
    """table[field] for a uint8 field of any shape, in the field's namespace."""
    xp = namespace(field)
    t = from_numpy(table, like=field)
    return xp.reshape(xp.take(t, xp.reshape(xp.astype(field, xp.int64), (-1,))), field.shape)


def e8m0_half(e: Any) -> Any:
    """GGML_E8M0_TO_FP32_HALF of E8M0 bytes: 2^(e − 128), exactly.

    >>> e8m0_half(np.uint8([0, 127, 128, 255])).tolist()
    [2.938735877055719e-39, 0.5, 1.0, 1.7014118346046923e+38]
    """
    return _lookup(E8M0_HALF, e)


def ue4m3_half(b: Any) -> Any:
    """ggml_ue4m3_to_fp32 of UE4M3 bytes: half the unsigned E4M3 value (0x7F and 0 read as 0).

    >>> ue4m3_half(np.uint8([0x38, 0x7E, 0x01, 0x7F, 0xB8])).tolist()
    [0.5, 224.0, 0.0009765625, 0.0, 0.5]
    """
    return _lookup(UE4M3_HALF, b)


def _reciprocal(d: Any) -> Any:
    """id = d ? 1.0f/d : 0.0f (inf for d below 2^-128, as in C)."""
    xp = namespace(d)
    with np.errstate(divide="ignore", over="ignore"):
        inv = 1.0 / xp.where(d == 0, xp.ones_like(d), d)
    return xp.where(d == 0, xp.zeros_like(d), inv)


def _block_amax(x: Any) -> Any:
    """max_j |x_j| over the last axis, (n, m) -> (n, 1): ggml's running MAX / ``if (a > amax)`` from 0.0f."""
    xp = namespace(x)
    return xp.max(xp.abs(x), axis=-1, keepdims=True)


def _u8(q: Any) -> np.ndarray:
    """Codes held as float in any namespace -> NumPy uint8 (the byte edge)."""
    return np.asarray(to_numpy(q)).astype(np.uint8)


# ---------------------------------------------------------------------------------------
# TQ2_0 — 2.0625 bits per weight (BitNet b1.58 / TriLM ternary)
#
#   byte  0                                     64     66
#         +-------------------------------------+------+
#         | qs[64]: 4 trits per byte            |  d   |
#         +-------------------------------------+------+
#   half h (0, 1) of the block, byte m of qs[32h : 32h+32], plane n (bits 2n, 2n+1):
#   weight 128h + 32n + m;   ŵ = d · (t − 1)
# ---------------------------------------------------------------------------------------

TQ2_0_BLOCK = Layout("TQ2_0", qs=64, d=2)
TQ2_PLANES = 4        # 2-bit trits per byte
TQ2_GROUP = 32        # bytes per group of 4 planes (the C loop's j += 32)


def _ternary(x: Any) -> tuple[Any, Any]:
    """TQ's scale and trits: d = max|x| (n, 1), t = lroundf(x · (1/d)) + 1 (n, QK) in 0 … 2."""
    d = _block_amax(x)                                          # (n, 1)
    with np.errstate(invalid="ignore"):                         # 0 · inf for d below 2^-128, as in C
        t = c_round_plus_one(x * _reciprocal(d), via_long=True)  # (n, 256)
    return d, t


def quantize_tq2_0(x: Any, qw: Any | None = None) -> Any:  # (n, 256), qw ignored -> (n, 66) uint8
    """quantize_row_tq2_0_ref: d = max|x|, trits as 2-bit planes (qw is ignored, as in libggml)."""
    x = check_blocks(x, qw, "TQ2_0", QK_TQ)
    d, t = _ternary(x)
    planes = _u8(t).reshape(-1, QK_TQ // (TQ2_PLANES * TQ2_GROUP), TQ2_PLANES, TQ2_GROUP)  # (n, 2, 4, 32)
    qs = pack_planes(planes, 2).reshape(-1, TQ2_0_BLOCK.widths["qs"])                      # (n, 64)
    return from_numpy(TQ2_0_BLOCK.join(qs=qs, d=fp16_bytes(d)), like=x)


def dequantize_tq2_0(raw: Any) -> Any:  # (n, 66) uint8 -> (n, 256) float32
    """ŵ = (t − 1) · d, t the 2-bit planes of qs."""
    b = TQ2_0_BLOCK.split(raw)
    xp = namespace(raw)
    groups = xp.reshape(b.qs, (-1, QK_TQ // (TQ2_PLANES * TQ2_GROUP), TQ2_GROUP))   # (n, 2, 32)
    t = xp.reshape(unpack_planes(groups, 2), (-1, QK_TQ))                           # (n, 2, 4, 32) -> (n, 256)
    return (xp.astype(t, xp.float32) - 1.0) * fp16_field(b.d)


# ---------------------------------------------------------------------------------------
# TQ1_0 — 1.6875 bits per weight
#
#   byte  0                     32            48     52     54
#         +---------------------+-------------+------+------+
#         | qs[0:32]  5 trits   | qs[32:48]   | qh[4]|  d   |
#         +---------------------+-------------+------+------+
#   qs[m], m < 32:       trits of weights m + 32n,        n = 0 … 4 (weights 0 … 159)
#   qs[32 + m], m < 16:  trits of weights 160 + m + 16n,  n = 0 … 4 (weights 160 … 239)
#   qh[j], j < 4:        trits of weights 240 + j + 4n,   n = 0 … 3, then a 0 trit (weights 240 … 255)
#   byte = ceil(Σ_n t_n 3^(4−n) · 256 / 243);  trit n = ⌊((byte · 3^n) mod 256) · 3 / 256⌋
# ---------------------------------------------------------------------------------------

TQ1_0_BLOCK = Layout("TQ1_0", qs=48, qh=4, d=2)
TRITS_PER_BYTE = 5                    # 3^5 = 243 ≤ 256
POW3 = (1, 3, 9, 27, 81)              # pow3 in dequantize_row_tq1_0
TRIT_BYTE_SCALE = 243                 # 3^5: q ∈ 0 … 242 is spread over 0 … 255 by ceil(q · 256 / 243)
# (first weight, bytes) of the three parts: 5 trits per byte in 32 bytes, in 16 bytes, then 4 per qh byte
TQ1_PARTS = ((0, 32), (160, 16), (240, 4))


def _trit_byte(t: np.ndarray) -> np.ndarray:
    """(..., 5, m) trits, most significant first -> (..., m) bytes ceil(Σ t_n 3^(4−n) · 256 / 243)."""
    q = np.zeros(t.shape[:-2] + t.shape[-1:], np.int32)
    for n in range(TRITS_PER_BYTE):
        q = q * 3 + t[..., n, :]                                # uint8 q in C: at most 242, no wrap
    return ((q * 256 + (TRIT_BYTE_SCALE - 1)) // TRIT_BYTE_SCALE).astype(np.uint8)


def quantize_tq1_0(x: Any, qw: Any | None = None) -> Any:  # (n, 256), qw ignored -> (n, 54) uint8
    """quantize_row_tq1_0_ref: d = max|x|, trits in base 3, five to a byte (qw is ignored)."""
    x = check_blocks(x, qw, "TQ1_0", QK_TQ)
    d, t = _ternary(x)
    t = _u8(t).astype(np.int32)                                                  # (n, 256)
    parts = []
    for (lo, m), n_trits in zip(TQ1_PARTS, (5, 5, 4)):
        part = t[:, lo : lo + n_trits * m].reshape(-1, n_trits, m)               # (n, trits, m)
        if n_trits == 4:                                                          # qh: "shift the first value
            part = np.concatenate([part, np.zeros_like(part[:, :1])], axis=1)     #  to the most significant trit"
        parts.append(_trit_byte(part))                                            # (n, m)
    qs = np.concatenate(parts[:2], axis=1)                                        # (n, 48)
    return from_numpy(TQ1_0_BLOCK.join(qs=qs, qh=parts[2], d=fp16_bytes(d)), like=x)


def _trits_of(field: Any, n_trits: int) -> Any:
    """(n, m) bytes -> (n, n_trits · m) trits: trit k of byte j at k·m + j (the decoder's loop order)."""
    xp = namespace(field)
    q = xp.astype(field, xp.int32)
    pow3 = from_numpy(np.int32(POW3[:n_trits]).reshape(n_trits, 1), like=field)  # (k, 1)
    shifted = (q[:, None, :] * pow3) & 0xFF                                       # (n, k, m): uint8 q · 3^k
    return xp.reshape((shifted * 3) >> 8, (field.shape[0], n_trits * field.shape[1]))


def dequantize_tq1_0(raw: Any) -> Any:  # (n, 54) uint8 -> (n, 256) float32
    """ŵ = (t − 1) · d, the trits read back from the base-3 bytes."""
    b = TQ1_0_BLOCK.split(raw)
    xp = namespace(raw)
    (_, m0), (_, m1), _ = TQ1_PARTS
    t = xp.concat([_trits_of(b.qs[:, :m0], 5), _trits_of(b.qs[:, m0 : m0 + m1], 5), _trits_of(b.qh, 4)], axis=-1)
    return (xp.astype(t, xp.float32) - 1.0) * fp16_field(b.d)


# ---------------------------------------------------------------------------------------
# MXFP4 — 4.25 bits per weight (OCP MX: E8M0 scale, 32 E2M1 elements)
#
#   byte  0    1                      17
#         +----+----------------------+
#         | e  | qs[16] nibbles       |      byte j = q_j | q_{j+16} << 4
#         +----+----------------------+
#   ŵ_j = K[q_j] · 2^(e − 128)    (= E2M1(q_j) · 2^(e − 127))
# ---------------------------------------------------------------------------------------

MXFP4_BLOCK = Layout("MXFP4", e=1, qs=16)


def quantize_mxfp4(x: Any, qw: Any | None = None) -> Any:  # (n, 32), qw ignored -> (n, 17) uint8
    """quantize_row_mxfp4_ref: e = floorf(log2f(amax)) − 2 + 127 (mx's "ggml" scale), nearest elements."""
    x = check_blocks(x, qw, "MXFP4", QK_MXFP4)
    xp = namespace(x)
    amax = _block_amax(x)                                        # (n, 1)
    X = scale_exponent(amax, "fp4_e2m1", "ggml")                 # (n, 1) unbiased, the byte's wrap included
    e = xp.astype(X + float(E8M0_BIAS), xp.uint8)                # (n, 1) the E8M0 byte
    q = best_index_fp4(x, e8m0_half(e))                          # (n, 32) codes 0 … 15
    return from_numpy(MXFP4_BLOCK.join(e=_u8(e), qs=pack_low_high(_u8(q))), like=x)


def dequantize_mxfp4(raw: Any) -> Any:  # (n, 17) uint8 -> (n, 32) float32
    """ŵ = K[q] · 2^(e − 128); 12 · 2^127 overflows to inf, as in C (e = 255 is not NaN here)."""
    b = MXFP4_BLOCK.split(raw)
    xp = namespace(raw)
    q = xp.concat([b.qs & 0x0F, b.qs >> 4], axis=-1)            # (n, 32)
    with np.errstate(over="ignore"):
        return _fp4_values(q) * e8m0_half(b.e)


# ---------------------------------------------------------------------------------------
# NVFP4 — 4.5 bits per weight (ggml's single-level NVFP4: UE4M3 scale per 16, no tensor scale)
#
#   byte  0                4                                        36
#         +----------------+----------------------------------------+
#         | d[4] UE4M3     | qs[32]: 8 nibble bytes per sub-block   |
#         +----------------+----------------------------------------+
#   sub-block s: qs[8s + j] = q_{16s+j} | q_{16s+8+j} << 4;   ŵ = K[q] · ue4m3(d[s]) / 2
# ---------------------------------------------------------------------------------------

NVFP4_BLOCK = Layout("NVFP4", d=4, qs=32)
E2M1_MAX = 6.0        # amax / 6.0f: the largest E2M1 value lands on amax


def quantize_nvfp4(x: Any, qw: Any | None = None) -> Any:  # (n, 64), qw ignored -> (n, 36) uint8
    """quantize_row_nvfp4_ref: d[s] = ggml_fp32_to_ue4m3(amax_s / 6) (mx's "ggml" block scale), nearest elements."""
    x = check_blocks(x, qw, "NVFP4", QK_NVFP4)
    xp = namespace(x)
    n_sub = QK_NVFP4 // QK_NVFP4_SUB
    xs = xp.reshape(x, (-1, QK_NVFP4_SUB))                      # (n·4, 16) sub-blocks
    scale = nvfp4_block_scale(_block_amax(xs) / E2M1_MAX, "ggml")  # (n·4, 1) UE4M3 values
    ue = encode(np.asarray(to_numpy(scale)), E4M3)              # (n·4, 1) bytes (NumPy edge)
    q = best_index_fp4(xs, ue4m3_half(from_numpy(ue, like=x)))  # (n·4, 16); d = 0 keeps every code 0
    qs = pack_low_high(_u8(q)).reshape(-1, NVFP4_BLOCK.widths["qs"])  # (n·4, 8) -> (n, 32)
    return from_numpy(NVFP4_BLOCK.join(d=ue.reshape(-1, n_sub), qs=qs), like=x)


def dequantize_nvfp4(raw: Any) -> Any:  # (n, 36) uint8 -> (n, 64) float32
    """ŵ = K[q] · ue4m3(d[s]) / 2 per sub-block of 16."""
    b = NVFP4_BLOCK.split(raw)
    xp = namespace(raw)
    n_sub = QK_NVFP4 // QK_NVFP4_SUB
    qs = xp.reshape(b.qs, (-1, QK_NVFP4_SUB // 2))              # (n·4, 8)
    q = xp.concat([qs & 0x0F, qs >> 4], axis=-1)                # (n·4, 16)
    d = xp.reshape(ue4m3_half(b.d), (-1, 1))                    # (n·4, 1)
    return xp.reshape(_fp4_values(q) * d, (-1, n_sub * QK_NVFP4_SUB))


# ---------------------------------------------------------------------------------------
# Q1_0 — 1.125 bits per weight
#
#   byte  0      2                    18
#         +------+--------------------+
#         |  d   | qs[16] sign bits   |      bit j % 8 of byte j / 8 = (x_j ≥ 0)
#         +------+--------------------+
#   ŵ_j = +d if the bit is set, else −d;   d = (Σ_j |x_j|) / 128
# ---------------------------------------------------------------------------------------

Q1_0_BLOCK = Layout("Q1_0", d=2, qs=16)


def quantize_q1_0(x: Any, qw: Any | None = None) -> Any:  # (n, 128), qw ignored -> (n, 18) uint8
    """quantize_row_q1_0_ref: d = mean |x| (a left-to-right float32 sum), one sign bit per weight."""
    x = check_blocks(x, qw, "Q1_0", QK1_0)
    xp = namespace(x)
    d = sequential_sum(xp.abs(x)) / float(QK1_0)                 # (n, 1): C's sum_abs / qk
    bits = _u8(xp.astype(x >= 0.0, xp.float32))                  # (n, 128); −0.0 >= 0.0f is true
    qs = pack_planes(np.swapaxes(bits.reshape(-1, QK1_0 // 8, 8), 1, 2), 1)  # (n, 8, 16) -> (n, 16)
    return from_numpy(Q1_0_BLOCK.join(d=fp16_bytes(d), qs=qs), like=x)


def dequantize_q1_0(raw: Any) -> Any:  # (n, 18) uint8 -> (n, 128) float32
    """ŵ = bit ? d : −d."""
    b = Q1_0_BLOCK.split(raw)
    xp = namespace(raw)
    bits = xp.reshape(xp.permute_dims(unpack_planes(b.qs, 1), (0, 2, 1)), (-1, QK1_0))  # (n, 8, 16) -> (n, 128)
    # libggml's float16 widening (F16C vcvtph2ps, or its table) quiets a signaling NaN; NumPy's cast keeps
    # it signaling, and this decoder does no arithmetic that would quiet it: one multiplication by 1 does
    d = fp16_field(b.d) * 1.0                                    # (n, 1)
    return xp.where(bits == 1, d, -d)


# ---------------------------------------------------------------------------------------
# Q2_0 — 2.25 bits per weight
#
#   byte  0      2                    18
#         +------+--------------------+
#         |  d   | qs[16] 2-bit codes |      bits 2(j % 4) … of byte j / 4 = q_j
#         +------+--------------------+
#   ŵ_j = d · (q_j − 1):  00 → −d, 01 → 0, 10 → +d, 11 → +2d;   d = max|x|
# ---------------------------------------------------------------------------------------

Q2_0_BLOCK = Layout("Q2_0", d=2, qs=16)
Q2_0_QMAX = 3.0       # the clamp of q to [0, 3]


def quantize_q2_0(x: Any, qw: Any | None = None) -> Any:  # (n, 64), qw ignored -> (n, 18) uint8
    """quantize_row_q2_0_ref: d = max|x|, q = clamp((int)roundf(x/d) + 1, 0, 3)."""
    x = check_blocks(x, qw, "Q2_0", QK2_0)
    xp = namespace(x)
    d = _block_amax(x)                                           # (n, 1)
    with np.errstate(invalid="ignore"):                          # 0 · inf for d below 2^-128, as in C
        q = xp.clip(c_round_plus_one(x * _reciprocal(d), via_long=False), 0.0, Q2_0_QMAX)  # (n, 64)
    qs = pack_planes(np.swapaxes(_u8(q).reshape(-1, QK2_0 // 4, 4), 1, 2), 2)  # (n, 4, 16) -> (n, 16)
    return from_numpy(Q2_0_BLOCK.join(d=fp16_bytes(d), qs=qs), like=x)


def dequantize_q2_0(raw: Any) -> Any:  # (n, 18) uint8 -> (n, 64) float32
    """ŵ = (q − 1) · d."""
    b = Q2_0_BLOCK.split(raw)
    xp = namespace(raw)
    q = xp.reshape(xp.permute_dims(unpack_planes(b.qs, 2), (0, 2, 1)), (-1, QK2_0))  # (n, 4, 16) -> (n, 64)
    return (xp.astype(q, xp.float32) - 1.0) * fp16_field(b.d)


# {type name: (quantize_<t>, dequantize_<t>, imatrix use)}: registered in refquant.gguf.CODECS.
# "ignored": ggml_quantize_chunk runs the *_ref encoders whatever the importance matrix.
CODECS: dict = {
    "TQ1_0": (quantize_tq1_0, dequantize_tq1_0, "ignored"),
    "TQ2_0": (quantize_tq2_0, dequantize_tq2_0, "ignored"),
    "MXFP4": (quantize_mxfp4, dequantize_mxfp4, "ignored"),
    "NVFP4": (quantize_nvfp4, dequantize_nvfp4, "ignored"),
    "Q1_0": (quantize_q1_0, dequantize_q1_0, "ignored"),
    "Q2_0": (quantize_q2_0, dequantize_q2_0, "ignored"),
}
