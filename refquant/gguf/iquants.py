"""llama.cpp's non-linear 4-bit formats IQ4_NL and IQ4_XS.

Instead of evenly spaced levels, a 4-bit code indexes a fixed table of 16 levels that
are denser near zero, where most weights of a trained network lie (kvalues_iq4nl):

    K = [−127, −104, −83, −65, −49, −35, −22, −10, 1, 13, 25, 38, 53, 69, 89, 113]

    IQ4_NL (block of 32):             ŵ_j = d · K[q_j]
    IQ4_XS (super-block of 256 = 8 × 32):  ŵ_j = d · (ls_b − 32) · K[q_j],  ls_b ∈ 0 … 63

| type   | QK  | bytes | bits/weight | stored                                         |
|--------|----:|------:|------------:|------------------------------------------------|
| IQ4_NL |  32 |  18   | 4.5         | d (f16), qs[16] nibbles                        |
| IQ4_XS | 256 | 136   | 4.25        | d (f16), scales_h (u16), scales_l[4], qs[128]  |

Layouts (nibble order as in the legacy types: byte j of each 16-byte group holds code j
low and code j + 16 high)::

    IQ4_NL   0      2                       18
             +------+-----------------------+
             |  d   | qs[16]                |
             +------+-----------------------+

    IQ4_XS   0      2          4             8                                   136
             +------+----------+-------------+-----------------------------------+
             |  d   | scales_h | scales_l[4] | qs[128] = 8 sub-blocks × 16 bytes |
             +------+----------+-------------+-----------------------------------+
    the 6-bit scale of sub-block b: ls_b = (low nibble of scales_l[b/2], high nibble
    for odd b) | ((scales_h >> 2b) & 3) << 4

The search (quantize_row_iq4_nl_impl, run by libggml for both types, with or without an
importance matrix — there is no separate "reference" path):

1. Importance of each weight: w_j = x_j² without an imatrix, else
   w_j = imatrix_j · sqrt(σ² + x_j²), σ² = 2 Σ x² / (super-block size).
2. For each block of 32 (max = its signed largest-magnitude value): start from
   d = max/127, which sends max to +127, past the top level 113; give every weight the
   level K[q] nearest to x/d and refit the scale by weighted least squares,
   d = Σ w q x / Σ w q².
3. Try 15 more starting points, 1/d = (t − 127)/max for t = −7 … 7, which send max near
   the bottom level −127, and keep the fit that is best (largest (Σ w q x)² / Σ w q²,
   i.e. smallest weighted squared error).
4. IQ4_NL stores that d; IQ4_XS stores one super-block scale d = −max_b(d_b)/32 and
   rounds each block's d_b to a 6-bit multiple of it, ls_b − 32 = round(d_b/d).
5. Finally each weight gets the level nearest to x / (stored block scale in float32).

"Nearest level" is ggml's best_index_int8: the index of the level closest to x, a tie
going to the upper level. Equivalently, the number of midpoints (K_i + K_{i+1})/2 that x
reaches (≥); that is how we compute it.

All arithmetic is float32 in the C order: the running sums Σ w q x and Σ w q² are
accumulated left to right over the 32 weights, vectorized across blocks.

Ref: ggml/src/ggml-quants.c (quantize_row_iq4_nl_impl, quantize_iq4_nl, quantize_iq4_xs,
best_index_int8, dequantize_row_iq4_nl, dequantize_row_iq4_xs); ggml-common.h
(kvalues_iq4nl, block_iq4_nl, block_iq4_xs); gguf-py quants.py (IQ4_NL, IQ4_XS).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import device, from_numpy, namespace, to_numpy
from ._bytes import (GROUP_MAX_EPS, QK, QK_K, Layout, as_f32, check_blocks, fp16_bytes, fp16_field, inverse_or_zero,
                     low_high_nibbles, pack_low_high, sequential_sum, signed_absmax, uint_le)
from ._search import clamp, nearest_int

__all__ = ["KVALUES", "best_index", "IQ4_NL_BLOCK", "IQ4_XS_BLOCK",
           "quantize_iq4_nl", "dequantize_iq4_nl", "quantize_iq4_xs", "dequantize_iq4_xs"]

KVALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], dtype=np.int8)
_MIDPOINTS = ((KVALUES[:-1].astype(np.float32) + KVALUES[1:].astype(np.float32)) / 2).astype(np.float32)  # exact halves
NTRY = 7                           # quantize_row_iq4_nl_impl's ntry: 2·7 + 1 extra starting scales
NAN_INDEX = 15                     # best_index_int8(NaN): no comparison holds, the bisection ends on the top level
SUB = QK                           # weights per block (sub-block of IQ4_XS): QK4_NL = 32


def best_index(v: Any) -> Any:
    """Index of the level of KVALUES nearest to v, ties to the upper level (best_index_int8).

    The C code bisects and compares v − K[i] < K[i+1] − v in float32; counting the
    midpoints that v reaches is the same rule, and the float32 differences are exact near a
    midpoint (both are multiples of v's ulp, of magnitude ≈ half a gap), so the two agree.
    v: any shape float32 -> same shape uint8 in 0 … 15; NaN -> 15, as the C code (see below).
    (15 comparisons, each one fast pass, beat a searchsorted over 16 levels by an order of
    magnitude.)
    """
    xp = namespace(v)
    idx = xp.zeros(v.shape, dtype=xp.uint8, device=device(v))
    for m in _MIDPOINTS.tolist():  # exact halves: float32 comparisons against Python floats
        idx = idx + xp.astype(v >= m, xp.uint8)
    # NaN (x·id when the weighted sums of a huge block overflowed): every comparison of the
    # C bisection is false, so it walks up to the last pair and returns the upper level, 15
    return xp.where(xp.isnan(v), xp.full_like(idx, NAN_INDEX), idx)


def _levels(idx: Any) -> Any:
    """K[idx] as float32, same shape as idx."""
    xp = namespace(idx)
    table = from_numpy(KVALUES.astype(np.float32), like=idx)
    return xp.reshape(xp.take(table, xp.reshape(xp.astype(idx, xp.int64), (-1,))), idx.shape)


def _fit(x: Any, w: Any, inv_scale: Any) -> tuple[Any, Any]:
    """Nearest levels for x·inv_scale, then Σ w q x and Σ w q² (left to right, as C): (n, 1) each."""
    q = _levels(best_index(inv_scale * x))
    wq = w * q
    return sequential_sum(wq * x), sequential_sum(wq * q)


def _block_scales(x: Any, w: Any) -> Any:
    """Steps 2-3 of the module docstring for blocks x, importances w: (n, 32) -> d (n, 1).

    Blocks with max |x| < GROUP_MAX_EPS get d = 0.
    """
    xp = namespace(x)
    amax, max_ = signed_absmax(x)                                       # (n, 1)
    empty = amax < GROUP_MAX_EPS
    max_ = xp.where(empty, xp.ones_like(max_), max_)                    # keep empty blocks finite
    d = -max_ / float(KVALUES[0])                                       # ntry > 0: d = −max / K[0]
    sumqx, sumq2 = _fit(x, w, 1.0 / d)
    zero = xp.zeros_like(d)
    d = xp.where(sumq2 > 0, sumqx / xp.where(sumq2 > 0, sumq2, xp.ones_like(sumq2)), zero)
    best = d * sumqx
    for itry in range(-NTRY, NTRY + 1):
        inv_scale = float(itry + int(KVALUES[0])) / max_               # id = (itry + K[0]) / max
        sumqx, sumq2 = _fit(x, w, inv_scale)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)
        d = xp.where(better, sumqx / xp.where(sumq2 > 0, sumq2, xp.ones_like(sumq2)), d)
        best = xp.where(better, d * sumqx, best)
    return xp.where(empty, zero, d)


def _importance(x: Any, qw: Any | None, super_size: int) -> Any:
    """Step 1: x² without an imatrix, else qw·sqrt(σ² + x²) with σ² = 2·Σx²/super_size (C order)."""
    xp = namespace(x)
    if qw is None:
        return x * x
    n_super = x.shape[0] * SUB // super_size
    xs = xp.reshape(x, (n_super, super_size))                            # (n_super, super_size)
    sigma2 = sequential_sum(xs * xs) * (2.0 / super_size)                # sigma2 *= 2.f/super_block_size
    sigma2 = xp.reshape(xp.broadcast_to(sigma2, (n_super, super_size // SUB)), (-1, 1))  # (n_blocks, 1)
    return as_f32(qw) * xp.sqrt(sigma2 + x * x)


# ---------------------------------------------------------------------------------------
# IQ4_NL — 4.5 bits per weight
# ---------------------------------------------------------------------------------------

IQ4_NL_BLOCK = Layout("IQ4_NL", d=2, qs=16)


def quantize_iq4_nl(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 32) float32 -> (n_blocks, 18) uint8 IQ4_NL blocks (quantize_iq4_nl).

    Example: x = 0.5·[K, K] (each level twice). The trial t = 0 has 1/d = −127/max = 2,
    where every x/d is exactly a level: a perfect fit, d = 0.5 (fp16 0x3800), and the
    block decodes to x.

        >>> x = 0.5 * np.tile(KVALUES.astype(np.float32), 2)[None, :]
        >>> raw = quantize_iq4_nl(x)
        >>> raw[0, :2].tolist(), bool((dequantize_iq4_nl(raw) == x).all())
        ([0, 56], True)
    """
    x = check_blocks(x, qw, "IQ4_NL", SUB)
    qw = None if qw is None else as_f32(qw)
    d = _block_scales(x, _importance(x, qw, SUB))                       # (n, 1)
    q = best_index(inverse_or_zero(d) * x)                               # (n, 32)
    return from_numpy(IQ4_NL_BLOCK.join(d=fp16_bytes(d), qs=pack_low_high(to_numpy(q).astype(np.uint8))), like=x)


def dequantize_iq4_nl(raw: Any) -> Any:
    """(n_blocks, 18) uint8 -> (n_blocks, 32) float32: ŵ = d · K[q]."""
    b = IQ4_NL_BLOCK.split(raw)
    return fp16_field(b.d) * _levels(low_high_nibbles(b.qs))


# ---------------------------------------------------------------------------------------
# IQ4_XS — 4.25 bits per weight
# ---------------------------------------------------------------------------------------

IQ4_XS_BLOCK = Layout("IQ4_XS", d=2, scales_h=2, scales_l=4, qs=128)
N_SUB = QK_K // SUB  # 8 blocks of 32 in a super-block


def quantize_iq4_xs(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 256) float32 -> (n_blocks, 136) uint8 IQ4_XS super-blocks (quantize_iq4_xs).

    Each 32-weight block gets its scale as in IQ4_NL; then d = −(the signed largest of
    them)/32 is stored in float16 and block b keeps ls_b = clamp(round_half_even(d_b/d),
    −32, 31) + 32 in 6 bits; the codes are refit to the rounded scale d·(ls_b − 32).
    """
    x = check_blocks(x, qw, "IQ4_XS", QK_K)
    xp = namespace(x)
    n = x.shape[0]
    xb = xp.reshape(x, (n * N_SUB, SUB))                                 # (n*8, 32)
    qwb = None if qw is None else xp.reshape(as_f32(qw), (n * N_SUB, SUB))
    d_b = xp.reshape(_block_scales(xb, _importance(xb, qwb, QK_K)), (n, N_SUB))  # (n, 8)
    d = -signed_absmax(d_b).signed / 32.0                                # (n, 1)
    # C: l = nearest_int(id*scales[ib]); MAX(-32, MIN(31, l)). A block scale that overflowed
    # to NaN or ±inf (|x| ~ 1e20, or an imatrix ~ 1e38) goes through nearest_int's bit trick:
    # NaN -> 0, ±inf -> −2^22 (then −32), not round()'s NaN
    ls = clamp(nearest_int(inverse_or_zero(d) * d_b), -32, 31)
    dl = xp.reshape(d * ls, (n * N_SUB, 1))                              # (n*8, 1)
    q = best_index(inverse_or_zero(dl) * xb)                             # (n*8, 32)
    # --- bytes (NumPy edge) ---
    ls_u = to_numpy(ls).astype(np.int64) + 32                             # (n, 8) in 0..63
    scales_l = (ls_u[:, 0::2] & 0xF) | ((ls_u[:, 1::2] & 0xF) << 4)     # (n, 4)
    scales_h = ((ls_u >> 4) << (2 * np.arange(N_SUB))).sum(axis=1)      # (n,) bits 2b, 2b+1
    qs = pack_low_high(to_numpy(q).astype(np.uint8)).reshape(n, N_SUB * 16)  # (n, 128)
    out = IQ4_XS_BLOCK.join(d=fp16_bytes(d), scales_h=scales_h.astype("<u2").view(np.uint8).reshape(n, 2),
                            scales_l=scales_l.astype(np.uint8), qs=qs)
    return from_numpy(out, like=x)


def dequantize_iq4_xs(raw: Any) -> Any:
    """(n_blocks, 136) uint8 -> (n_blocks, 256) float32: ŵ = (d · (ls_b − 32)) · K[q]."""
    f = IQ4_XS_BLOCK.split(raw)
    xp = namespace(raw)
    n = raw.shape[0]
    scales_h = uint_le(f.scales_h)                                       # (n, 1)
    scales_l = xp.astype(f.scales_l, xp.int64)                           # (n, 4)
    b = from_numpy(np.arange(N_SUB, dtype=np.int64), like=raw)           # (8,)
    low = (xp.repeat(scales_l, 2, axis=1) >> (4 * (b % 2))) & 0xF        # (n, 8)
    high = (scales_h >> (2 * b)) & 3                                      # (n, 8)
    dl = fp16_field(f.d) * xp.astype((low | (high << 4)) - 32, xp.float32)  # (n, 8)
    qs = xp.reshape(f.qs, (n * N_SUB, 16))                               # (n*8, 16)
    levels = xp.reshape(_levels(low_high_nibbles(qs)), (n, N_SUB, SUB))  # (n, 8, 32)
    return xp.reshape(xp.reshape(dl, (n, N_SUB, 1)) * levels, (n, QK_K))
