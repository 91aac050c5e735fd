"""llama.cpp's k-quants Q2_K … Q8_K: super-blocks of 256 weights, byte-exact with libggml.

A k-quant packs QK_K = 256 weights into one *super-block*. The super-block is cut into
sub-blocks (16 of 16 weights, or 8 of 32), each with its own scale (and, for the
"_K with min" types, its own min). Those per-sub-block scales are themselves quantized
to 4, 6 or 8 bits against one or two float16 super-block scales ``d`` and ``dmin``:

    ŵ = d·sc_j · q − dmin·m_j          (Q2_K, Q4_K, Q5_K: codes q ≥ 0, a min per sub-block)
    ŵ = d·sc_j · q                     (Q3_K, Q6_K: signed codes, no min;  Q8_K: one float d)

| type | sub-blocks | code bits | scale (min) bits | bytes | bits/weight |
|------|------------|-----------|------------------|-------|-------------|
| Q2_K | 16 × 16    | 2         | 4 (4)            |  84   | 2.625       |
| Q3_K | 16 × 16    | 3         | 6                | 110   | 3.4375      |
| Q4_K |  8 × 32    | 4         | 6 (6)            | 144   | 4.5         |
| Q5_K |  8 × 32    | 5         | 6 (6)            | 176   | 5.5         |
| Q6_K | 16 × 16    | 6         | 8                | 210   | 6.5625      |
| Q8_K |  1 × 256   | 8         | float32 d        | 292   | 9.125       |

Quantizing is two searches (refquant.gguf._search, explained there):
1. each sub-block finds its own best scale (and min) for its codes;
2. the sub-block scales (and mins) are quantized to a few bits against the super-block
   scale, and every weight is rounded again with the scale the decoder will actually see
   (``d_fp16 · sc_j``) — the "requantize" step that makes the codes fit the stored scales.

Two code paths, as in libggml's ``ggml_quantize_chunk``: without an importance matrix the
``quantize_row_<t>_ref`` functions run; with one, ``quantize_row_<t>_impl`` (weights
qw·sqrt(σ² + x²), least-squares searches for the super-block scales too). Q8_K has no
imatrix path and is not reachable through ggml_quantize_chunk (it is the format the CPU
kernels quantize activations to); we encode it as quantize_row_q8_K_ref does.

Block functions (the dispatcher in refquant.gguf does rows and the imatrix broadcast):

    quantize_q4_k(x (n_blocks, 256) float, qw (n_blocks, 256) | None) -> uint8 (n_blocks, 144)
    dequantize_q4_k(raw uint8 (n_blocks, 144))                        -> float32 (n_blocks, 256)

and likewise q2_k, q3_k, q5_k, q6_k, q8_k. The maths runs in the input's array namespace
(NumPy, CuPy, torch, array-api-strict); byte packing happens at the NumPy edge and the
bytes come back in the input's namespace.

Ref: ggml-org/ggml, src/ggml-quants.c (quantize_row_q*_K_ref, quantize_row_q*_K_impl,
dequantize_row_q*_K, get_scale_min_k4) and src/ggml-common.h (block_q*_K).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._backend import from_numpy, is_numpy, namespace, to_numpy
from .._checks import check_finite, check_float
from .._packing import pack_nibbles
from .._rounding import to_fp16
from . import _search
from ._bytes import (GROUP_MAX_EPS, QK_K, Layout, f32_field, fp16_bytes, fp16_field, pack_planes, sequential_sum,
                     signed_absmax, unpack_planes)
from ._search import QKX2_GRID_Q2_K, QKX2_GRID_Q4_K, QKX2_GRID_Q5_K, QKX3_GRID, QkxGrid, clamp, nearest_int, rdiv, \
    running_max, signed_absmax_of

__all__ = [
    "QK_K", "BLOCK_BYTES",
    "quantize_q2_k", "dequantize_q2_k", "quantize_q3_k", "dequantize_q3_k",
    "quantize_q4_k", "dequantize_q4_k", "quantize_q5_k", "dequantize_q5_k",
    "quantize_q6_k", "dequantize_q6_k", "quantize_q8_k", "dequantize_q8_k",
]

# the fields of each super-block, as ggml-common.h's struct block_q*_K names them
Q2_K_BLOCK = Layout("Q2_K", scales=16, qs=64, d=2, dmin=2)
Q3_K_BLOCK = Layout("Q3_K", hmask=32, qs=64, scales=12, d=2)
Q4_K_BLOCK = Layout("Q4_K", d=2, dmin=2, scales=12, qs=128)
Q5_K_BLOCK = Layout("Q5_K", d=2, dmin=2, scales=12, qh=32, qs=128)
Q6_K_BLOCK = Layout("Q6_K", ql=128, qh=64, scales=16, d=2)
Q8_K_BLOCK = Layout("Q8_K", d=4, qs=256, bsums=32)
BLOCK_BYTES = {b.qtype: b.type_size for b in (Q2_K_BLOCK, Q3_K_BLOCK, Q4_K_BLOCK, Q5_K_BLOCK, Q6_K_BLOCK, Q8_K_BLOCK)}


# ---------------------------------------------------------------------------------------
# Shared pieces: input checks, C-style helpers, field readers and writers
# ---------------------------------------------------------------------------------------

def _check_x(x: Any, qw: Any | None) -> tuple[Any, Any | None]:
    """x: (n_blocks, 256) finite float -> float32; qw: None or the same shape, finite."""
    check_float(x, "x")
    if x.ndim != 2 or int(x.shape[-1]) != QK_K or int(x.shape[0]) == 0:
        raise ValueError(f"x: expected super-blocks of shape (n_blocks, {QK_K}) with n_blocks >= 1, got {tuple(x.shape)}")
    check_finite(x, "x")
    xp = namespace(x)
    x = xp.astype(x, xp.float32)
    if qw is not None:
        check_float(qw, "qw")
        if tuple(qw.shape) != tuple(x.shape):
            raise ValueError(f"qw: expected the shape of x {tuple(x.shape)}, got {tuple(qw.shape)}")
        check_finite(qw, "qw")
        qw = xp.astype(qw, xp.float32)
    return x, qw


def _u8(v: Any) -> np.ndarray:
    """Integer-valued array (any namespace) -> NumPy uint8, wrapping modulo 256 like a C store."""
    return np.remainder(np.asarray(to_numpy(v)), 256).astype(np.uint8)


def _where0(cond: Any, y: Any) -> Any:
    """y where cond holds, else 1: a safe denominator for lanes whose result is discarded."""
    xp = namespace(y)
    return xp.where(cond, y, xp.ones_like(y))


def _requantize(x: Any, d: Any, dm: Any | None, L_search: Any, lo: int, hi: int, offset: int) -> Any:
    """Round every weight again with the scale the decoder sees; keep the search codes where d == 0.

    C: ``if (!d) continue; l = nearest_int((x + dm)/d); L = clamp(l, lo, hi) + offset``.
    x: (B, S, n), d, dm: (B, S, 1), L_search: (B, S, n) -> (B, S, n) float32 codes
    """
    xp = namespace(x)
    live = d != 0
    num = x if dm is None else x + dm
    l = clamp(nearest_int(num / _where0(live, d)), lo, hi) + offset
    if bool(xp.all(live)):                                                # the usual case: no broadcast where
        return l
    return xp.where(live, l, xp.astype(L_search, xp.float32))


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """(B, 256) codes 0..3 -> (B, 64) bytes: byte 32c + l holds L[128c + 32k + l] in bits 2k..2k+1 (plane k)."""
    q = L.astype(np.uint8).reshape(-1, 2, 4, 32)                          # (B, half, k, l)
    return pack_planes(q, 2).reshape(-1, 64)                              # (B, 2, 32) -> (B, 64)


def _unpack_2bit(qs: Any) -> Any:
    """Inverse of _pack_2bit in any namespace: (B, 64) uint8 -> (B, 256) uint8 codes 0..3."""
    xp = namespace(qs)
    planes = unpack_planes(xp.reshape(qs, (-1, 2, 32)), 2)                # (B, half, k, l)
    return xp.reshape(planes, (-1, QK_K))                                 # (B, 256)


def _pack_nibble_pairs(L: np.ndarray) -> np.ndarray:
    """(B, 256) codes -> (B, 128) bytes: byte 32c + l = L[64c + l] & 15 | (L[64c + 32 + l] & 15) << 4."""
    q = L.astype(np.uint8).reshape(-1, 4, 2, 32)                          # (B, chunk, half, l)
    return pack_nibbles(q[:, :, 0] & 0x0F, q[:, :, 1] & 0x0F).reshape(-1, 128)


def _unpack_nibble_pairs(qs: Any) -> Any:
    """Inverse of _pack_nibble_pairs: (B, 128) uint8 -> (B, 256) uint8 codes 0..15."""
    xp = namespace(qs)
    q = xp.reshape(qs, (-1, 4, 1, 32))                                    # (B, chunk, 1, l)
    return xp.reshape(xp.concat([q & 0x0F, q >> 4], axis=2), (-1, QK_K))  # (B, 256)


def _pack_scales_k4(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Eight 6-bit scales and eight 6-bit mins -> the 12 ``scales`` bytes of Q4_K / Q5_K.

        bytes 0-3:  sc_j  | (high 2 bits of sc_{j+4}) << 6      j = 0..3
        bytes 4-7:  m_j   | (high 2 bits of m_{j+4})  << 6
        bytes 8-11: (sc_{j+4} & 15) | (m_{j+4} & 15) << 4
    ls, lm: (B, 8) uint8 (0..63; a larger value spills into its neighbours' bits exactly as the C stores do) -> (B, 12) uint8
    """
    ls = ls.astype(np.uint8)
    lm = lm.astype(np.uint8)
    lo = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    mid = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    hi = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    return np.concatenate([lo, mid, hi], axis=1)


def _unpack_scales_k4(s: Any) -> tuple[Any, Any]:
    """ggml ``get_scale_min_k4`` for j = 0..7 at once: (B, 12) uint8 -> sc, m: (B, 8) int32."""
    xp = namespace(s)
    s = xp.astype(s, xp.int32)
    a, b, c = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = xp.concat([a & 63, (c & 0x0F) | ((a >> 6) << 4)], axis=1)        # (B, 8)
    m = xp.concat([b & 63, (c >> 4) | ((b >> 6) << 4)], axis=1)           # (B, 8)
    return sc, m


def _pack_scales_q3(l: np.ndarray) -> np.ndarray:
    """Sixteen 6-bit values 0..63 -> the 12 ``scales`` bytes of Q3_K.

        bytes 0-7:  (l_j & 15) | (l_{j+8} & 15) << 4                       j = 0..7
        bytes 8-11: byte 8 + (j % 4) holds l_j >> 4 in bits 2·(j // 4)     j = 0..15
    l: (B, 16) -> (B, 12) uint8
    """
    l = l.astype(np.uint8)
    low = pack_nibbles(l[:, :8], l[:, 8:])                                # (B, 8)
    top = (l >> 4).reshape(-1, 4, 4)                                     # (B, j//4, j%4)
    high = pack_planes(top, 2)                                            # (B, 4) plane j//4 of byte j%4
    return np.concatenate([low, high], axis=1)


def _unpack_scales_q3(s: Any) -> Any:
    """Inverse of _pack_scales_q3 in any namespace: (B, 12) uint8 -> (B, 16) int32 in 0..63."""
    xp = namespace(s)
    s = xp.astype(s, xp.int32)
    low = xp.concat([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], axis=1)          # (B, 16)
    high = xp.reshape(unpack_planes(s[:, 8:12], 2), (-1, 16))            # (B, j//4 · 4 + j%4)
    return low | (high << 4)


def _to_backend(block: np.ndarray, like: Any) -> Any:
    return from_numpy(np.ascontiguousarray(block), like=like)


CHUNK = 1024  # super-blocks per pass: the search's working arrays (~1 MiB each) stay in cache


def _encode(encode_chunk, x: Any, qw: Any | None) -> Any:
    """Run ``encode_chunk`` (x, qw) -> NumPy bytes over CHUNK super-blocks at a time.

    Blocks are independent, so chunking changes no result; it only keeps the search's
    temporaries cache-sized. Returns the bytes in x's namespace.
    """
    n = int(x.shape[0])
    parts = [encode_chunk(x[i:min(i + CHUNK, n), :], None if qw is None else qw[i:min(i + CHUNK, n), :])
             for i in range(0, n, CHUNK)]
    return _to_backend(np.concatenate(parts, axis=0), x)


DECODE_CHUNK = 1024  # blocks per decoding pass: 1 MiB of float32 output, cache-sized


def _decode(layout: Layout, decode_fields, raw: Any) -> Any:
    """Split ``raw`` into ``layout``'s fields and run ``decode_fields`` on DECODE_CHUNK blocks at a time.

    (B, type_size) uint8 -> (B, 256) float32. Decoding is a few passes over the output
    (bits -> codes -> float32 -> scale, shift); cache-sized pieces keep those passes out of
    main memory. NumPy fills one output array, other namespaces concatenate.
    """
    layout.split(raw)                                                     # checks dtype and shape
    n = int(raw.shape[0])
    if n <= DECODE_CHUNK:
        return decode_fields(layout.split(raw))
    pieces = [(i, min(i + DECODE_CHUNK, n)) for i in range(0, n, DECODE_CHUNK)]
    if is_numpy(raw):
        out = np.empty((n, QK_K), dtype=np.float32)
        for lo, hi in pieces:
            out[lo:hi] = decode_fields(layout.split(raw[lo:hi]))
        return out
    xp = namespace(raw)
    return xp.concat([decode_fields(layout.split(raw[lo:hi, :])) for lo, hi in pieces], axis=0)


def _scaled(d: Any, sc: Any, q: Any, dmin: Any = None, m: Any = None) -> Any:
    """The k-quant decode ŵ = (d·sc_j)·q − (dmin·m_j) (no min: ŵ = (d·sc_j)·q), float32 in C's order.

    d, dmin: (B, 1); sc, m: (B, S) sub-block scale codes; q: (B, 256) codes -> (B, 256).
    """
    xp = namespace(q)
    d_sub = d * xp.astype(sc, xp.float32)                                 # (B, S)
    S = d_sub.shape[1]
    w = d_sub[:, :, None] * xp.reshape(xp.astype(q, xp.float32), (-1, S, QK_K // S))  # (B, S, 256/S)
    if dmin is not None:
        w = w - (dmin * xp.astype(m, xp.float32))[:, :, None]
    return xp.reshape(w, (-1, QK_K))


def _sum_of_squares(x: Any) -> Any:
    """C's ``sumx2 += x[j]*x[j]`` over the last axis, sequentially: (..., n) -> (...)."""
    return sequential_sum(x * x)[..., 0]


def _importance(x: Any, qw: Any, sigma2: Any, sub: int) -> Any:
    """The *_impl weights qw·sqrt(σ² + x²) of every weight, cut into sub-blocks: (B, 256) -> (B·256/sub, sub).

    σ²: (B,) per super-block (Q2_K: Σx²/256; Q3_K, Q4_K, Q5_K: 2·Σx²/256).
    """
    xp = namespace(x)
    B = x.shape[0]
    xs3 = xp.reshape(x, (B, QK_K // sub, sub))                            # (B, S, sub)
    w = xp.reshape(qw, (B, QK_K // sub, sub)) * xp.sqrt(sigma2[:, None, None] + xs3 * xs3)
    return xp.reshape(w, (B * (QK_K // sub), sub))                        # (B·S, sub)


# =======================================================================================
# Q4_K — 4.5 bits per weight
#
#   byte 0    2      4                16                                          144
#        +----+------+----------------+--------------------------------------------+
#        | d  | dmin | scales[12]     | qs[128]: 4 chunks of 64 weights, 32 bytes   |
#        |f16 | f16  | 8×(6-bit sc,   |   byte 32c+l = q[64c+l] | q[64c+32+l] << 4  |
#        |    |      |    6-bit m)    |                                            |
#        +----+------+----------------+--------------------------------------------+
#   8 sub-blocks j of 32 weights:  ŵ = d·sc_j · q − dmin·m_j,   q in 0..15
#
# The search: each sub-block of 32 runs make_qkx2_quants (nmax 15, weights av_x + |x|
# where av_x is the sub-block's RMS, 21 candidate scales) — the best affine fit
# scale·q + min with min ≤ 0. The 8 scales are then coded as round(63·s_j/max s) with
# d = max s/63 (the mins likewise with dmin), and every weight is rounded again with
# d_fp16·sc_j and dmin_fp16·m_j.
# With an imatrix: weights qw·sqrt(σ² + x²) (σ² = 2·mean x² of the super-block),
# make_qkx3_quants (37 candidates), and the 6-bit codes of scales and mins come from
# make_qp_quants, a weighted least-squares fit rather than plain rounding.
# =======================================================================================

def _k_with_min(x: Any, qw: Any | None, nmax: int, ref_grid: QkxGrid) -> tuple[Any, Any, Any, Any]:
    """The shared quantizer of Q4_K and Q5_K (8 sub-blocks of 32, 6-bit scales and mins).

    Returns d, dmin: (B,) float32 (before fp16), the 12 packed scale bytes (B, 12) NumPy,
    L: (B, 256) codes.
    """
    xp = namespace(x, qw)
    B = x.shape[0]
    xs = xp.reshape(x, (B * 8, 32))                                       # (B·8, 32) sub-blocks
    if qw is None:                                                        # quantize_row_q{4,5}_K_ref
        av_x = xp.sqrt(_sum_of_squares(xs) / 32.0)                        # (B·8,) C: sqrtf(sum_x2/32)
        weights = av_x[:, None] + xp.abs(xs)                              # (B·8, 32)
        scales, mins, L = _search.make_qkx2_quants(xs, nmax, weights, *ref_grid, False)
        scales = xp.reshape(scales, (B, 8))
        mins = xp.reshape(mins, (B, 8))
        zero = xp.zeros((B,), dtype=xp.float32)
        max_scale = running_max(scales, axis=1)                           # C: if (scale > max_scale) from 0
        max_min = running_max(mins, axis=1)
        inv_scale = xp.where(max_scale > 0, rdiv(63.0, _where0(max_scale > 0, max_scale)), zero)
        inv_min = xp.where(max_min > 0, rdiv(63.0, _where0(max_min > 0, max_min)), zero)
        # C: uint8_t ls = nearest_int(inv_scale*scales[j]); ls = MIN(63, ls)  (the store wraps mod 256)
        ls = clamp(xp.remainder(nearest_int(inv_scale[:, None] * scales), 256.0), None, 63)  # (B, 8)
        lm = clamp(xp.remainder(nearest_int(inv_min[:, None] * mins), 256.0), None, 63)
        d = max_scale / 63.0                                              # C: max_scale/63.f
        dmin = max_min / 63.0
    else:                                                                 # quantize_row_q{4,5}_K_impl
        sigma2 = 2.0 * _sum_of_squares(x) / QK_K                          # (B,) C: 2*sum_x2/QK_K
        weights = _importance(x, qw, sigma2, 32)                          # (B·8, 32)
        sw = xp.reshape(sequential_sum(weights), (B, 8))                  # (B, 8) C: sumw += weights[l]
        scales, mins, L = _search.make_qkx3_quants(xs, nmax, weights, *QKX3_GRID, False)
        d, ls = _search.make_qp_quants(xp.reshape(scales, (B, 8)), 63, sw)  # (B,), (B, 8)
        dmin, lm = _search.make_qp_quants(xp.reshape(mins, (B, 8)), 63, sw)
        ls, lm = xp.astype(ls, xp.float32), xp.astype(lm, xp.float32)
        if nmax == 31:                                                    # C (Q5_K only): MIN(63, ls)
            ls, lm = clamp(ls, None, 63), clamp(lm, None, 63)
    # requantize with the scales the decoder will read back (get_scale_min_k4 of the packed bytes)
    scales_bytes = _pack_scales_k4(_u8(ls), _u8(lm))                      # (B, 12) NumPy
    sc, m = _unpack_scales_k4(from_numpy(scales_bytes, like=x))           # (B, 8) 6-bit values
    d_sub = to_fp16(d)[:, None] * xp.astype(sc, xp.float32)                 # (B, 8) C: fp16(d) * sc
    m_sub = to_fp16(dmin)[:, None] * xp.astype(m, xp.float32)
    L = _requantize(xp.reshape(x, (B, 8, 32)), d_sub[:, :, None], m_sub[:, :, None],
                    xp.reshape(L, (B, 8, 32)), 0, nmax, 0)               # (B, 8, 32)
    return d, dmin, scales_bytes, xp.reshape(L, (B, QK_K))


def quantize_q4_k(x: Any, qw: Any | None = None) -> Any:
    """Q4_K super-blocks: x (n_blocks, 256) float, qw None | (n_blocks, 256) -> uint8 (n_blocks, 144).

    ŵ = d·sc_j·q − dmin·m_j with q in 0..15, sc_j, m_j in 0..63 (8 sub-blocks of 32).
    Error: within a sub-block |w − ŵ| ≤ d·sc_j/2 for weights inside [−dmin·m_j, −dmin·m_j + 15·d·sc_j].
    Ref: quantize_row_q4_K_ref (qw None) / quantize_row_q4_K_impl, ggml-quants.c.

    Example: a block of 256 zeros is 144 zero bytes.
        >>> quantize_q4_k(np.zeros((1, 256), np.float32)).tolist() == [[0] * 144]
        True
    """
    x, qw = _check_x(x, qw)
    return _encode(_encode_q4_k, x, qw)


def _encode_q4_k(x: Any, qw: Any | None) -> np.ndarray:
    d, dmin, scales_bytes, L = _k_with_min(x, qw, 15, QKX2_GRID_Q4_K)
    return Q4_K_BLOCK.join(d=fp16_bytes(d), dmin=fp16_bytes(dmin), scales=scales_bytes,
                           qs=_pack_nibble_pairs(to_numpy(L)))               # (B, 144)


def dequantize_q4_k(raw: Any) -> Any:
    """uint8 (n_blocks, 144) -> float32 (n_blocks, 256):  ŵ = (d·sc_j)·q − (dmin·m_j).

    Example: d = 1.0, dmin = 0.5, sub-block 0 with sc = 2, m = 3 (scales bytes 0 and 4) and
    weight 0's code q = 5 (low nibble of qs[0]) decode to 1·2·5 − 0.5·3 = 8.5; weight 1
    (code 0) to −1.5.

        >>> raw = np.zeros((1, 144), np.uint8)
        >>> raw[0, :4] = [0x00, 0x3C, 0x00, 0x38]                       # d = 1.0, dmin = 0.5 (fp16)
        >>> raw[0, Q4_K_BLOCK.offset("scales") + np.array([0, 4])] = [2, 3]
        >>> raw[0, Q4_K_BLOCK.offset("qs")] = 5
        >>> dequantize_q4_k(raw)[0, :2].tolist()
        [8.5, -1.5]

    Ref: dequantize_row_q4_K (the same float32 products, in the same order).
    """
    return _decode(Q4_K_BLOCK, _decode_q4_k, raw)


def _decode_q4_k(b: Any) -> Any:
    sc, m = _unpack_scales_k4(b.scales)                                   # (B, 8)
    q = _unpack_nibble_pairs(b.qs)                                        # (B, 256)
    return _scaled(fp16_field(b.d), sc, q, fp16_field(b.dmin), m)


# =======================================================================================
# Q5_K — 5.5 bits per weight
#
#   byte 0    2      4            16          48                                   176
#        +----+------+------------+-----------+------------------------------------+
#        | d  | dmin | scales[12] | qh[32]    | qs[128]: low 4 bits, as in Q4_K    |
#        +----+------+------------+-----------+------------------------------------+
#   q = low nibble + 16·bit; the fifth bit of weight 64c + l is bit 2c of qh[l], of
#   weight 64c + 32 + l bit 2c + 1.   ŵ = d·sc_j · q − dmin·m_j,   q in 0..31
#
# The search is Q4_K's with nmax = 31 (ref: make_qkx2_quants with 16 candidates,
# rmin = −0.5, rdelta = 0.1; imatrix: make_qkx3_quants and make_qp_quants as in Q4_K).
# =======================================================================================

def quantize_q5_k(x: Any, qw: Any | None = None) -> Any:
    """Q5_K super-blocks: x (n_blocks, 256), qw None | (n_blocks, 256) -> uint8 (n_blocks, 176).

    ŵ = d·sc_j·q − dmin·m_j with q in 0..31, sc_j, m_j in 0..63 (8 sub-blocks of 32).
    Ref: quantize_row_q5_K_ref / quantize_row_q5_K_impl, ggml-quants.c.
    """
    x, qw = _check_x(x, qw)
    return _encode(_encode_q5_k, x, qw)


def _encode_q5_k(x: Any, qw: Any | None) -> np.ndarray:
    d, dmin, scales_bytes, L = _k_with_min(x, qw, 31, QKX2_GRID_Q5_K)
    Ln = to_numpy(L).astype(np.uint8)                                     # (B, 256) 0..31
    high = (Ln >> 4).reshape(-1, 8, 32)                                   # (B, sub-block j, l): plane j of qh[l]
    return Q5_K_BLOCK.join(d=fp16_bytes(d), dmin=fp16_bytes(dmin), scales=scales_bytes, qh=pack_planes(high, 1),
                           qs=_pack_nibble_pairs(Ln & 0x0F))              # (B, 176)


def dequantize_q5_k(raw: Any) -> Any:
    """uint8 (n_blocks, 176) -> float32 (n_blocks, 256):  ŵ = (d·sc_j)·(q_low + 16·h) − dmin·m_j.

    Ref: dequantize_row_q5_K.
    """
    return _decode(Q5_K_BLOCK, _decode_q5_k, raw)


def _decode_q5_k(b: Any) -> Any:
    sc, m = _unpack_scales_k4(b.scales)                                   # (B, 8)
    high = unpack_planes(b.qh, 1)                                         # (B, 8, 32) sub-block j: bit j of qh[l]
    low = namespace(b.qs).reshape(_unpack_nibble_pairs(b.qs), (-1, 8, 32))
    return _scaled(fp16_field(b.d), sc, low | (high << 4), fp16_field(b.dmin), m)  # q = low + 16·h in 0..31


# =======================================================================================
# Q6_K — 6.5625 bits per weight
#
#   byte 0                      128            192             208   210
#        +----------------------+--------------+---------------+-----+
#        | ql[128]: low 4 bits  | qh[64]: top  | scales[16]    |  d  |
#        |                      | 2 bits       | int8          | f16 |
#        +----------------------+--------------+---------------+-----+
#   Each half h (128 weights) uses ql[64h .. 64h+64) and qh[32h .. 32h+32); for l < 32:
#     weight 128h + l      : ql[64h + l]      low nibble,  qh[32h + l] bits 0-1
#     weight 128h + 32 + l : ql[64h + 32 + l] low nibble,  qh[32h + l] bits 2-3
#     weight 128h + 64 + l : ql[64h + l]      high nibble, qh[32h + l] bits 4-5
#     weight 128h + 96 + l : ql[64h + 32 + l] high nibble, qh[32h + l] bits 6-7
#   16 sub-blocks j of 16 weights:  ŵ = d·sc_j · (q − 32),   q in 0..63, sc_j in −128..127
#
# The search: each sub-block runs make_qx_quants (nmax 32, weights x², 19 candidate
# scales) for its signed scale; the scale of largest magnitude sets d = −max/128, every
# scale becomes round(−128·s_j/max) (at most 127), then all weights are rounded again with
# d_fp16·sc_j. With an imatrix the sub-block search weighs by the imatrix itself.
# =======================================================================================

def quantize_q6_k(x: Any, qw: Any | None = None) -> Any:
    """Q6_K super-blocks: x (n_blocks, 256), qw None | (n_blocks, 256) -> uint8 (n_blocks, 210).

    ŵ = d·sc_j·(q − 32), q in 0..63, 16 sub-blocks of 16 with int8 scales.
    Ref: quantize_row_q6_K_ref / quantize_row_q6_K_impl, ggml-quants.c.
    """
    x, qw = _check_x(x, qw)
    return _encode(_encode_q6_k, x, qw)


def _encode_q6_k(x: Any, qw: Any | None) -> np.ndarray:
    xp = namespace(x)
    B = x.shape[0]
    xs = xp.reshape(x, (B * 16, 16))                                      # (B·16, 16)
    scales, L = _search.make_qx_quants(xs, 32, 1, None if qw is None else xp.reshape(qw, (B * 16, 16)))
    scales = xp.reshape(scales, (B, 16))
    max_scale = signed_absmax(scales).signed[:, 0]                    # (B,) signed
    empty = xp.abs(max_scale) < GROUP_MAX_EPS                             # C: the whole block is zeroed
    iscale = rdiv(-128.0, _where0(~empty, max_scale))                    # (B,)
    d = rdiv(1.0, iscale)                                                # C: y.d = fp16(1/iscale)
    sc = clamp(nearest_int(iscale[:, None] * scales), None, 127)        # (B, 16) int8 scales
    sc = xp.remainder(sc + 128.0, 256.0) - 128.0                          # the int8_t store (never wraps here)
    d_sub = to_fp16(d)[:, None] * sc                                        # (B, 16)
    L = _requantize(xp.reshape(x, (B, 16, 16)), d_sub[:, :, None], None,
                    xp.reshape(L, (B, 16, 16)), -32, 31, 32)              # (B, 16, 16) 0..63
    L = xp.where(empty[:, None, None], xp.zeros_like(L), L)
    sc = xp.where(empty[:, None], xp.zeros_like(sc), sc)
    d = xp.where(empty, xp.zeros_like(d), d)
    Ln = to_numpy(xp.reshape(L, (B, QK_K))).astype(np.uint8).reshape(B, 2, 4, 32)  # (B, half, quarter, l)
    ql = np.concatenate([pack_nibbles(Ln[:, :, 0], Ln[:, :, 2]),          # ql[64h + l]
                         pack_nibbles(Ln[:, :, 1], Ln[:, :, 3])], axis=2)  # ql[64h + 32 + l]
    qh = pack_planes(Ln >> 4, 2)                                          # (B, half, l): plane = quarter
    return Q6_K_BLOCK.join(ql=ql.reshape(B, 128), qh=qh.reshape(B, 64), scales=_u8(sc), d=fp16_bytes(d))


def dequantize_q6_k(raw: Any) -> Any:
    """uint8 (n_blocks, 210) -> float32 (n_blocks, 256):  ŵ = (d·sc_j)·(q − 32).

    Ref: dequantize_row_q6_K.
    """
    return _decode(Q6_K_BLOCK, _decode_q6_k, raw)


def _decode_q6_k(b: Any) -> Any:
    xp = namespace(b.ql)
    ql = xp.reshape(b.ql, (-1, 2, 2, 32))                                 # (B, half, lo/hi 32, l)
    low = xp.concat([ql & 0x0F, ql >> 4], axis=2)                         # (B, half, quarter, l)
    high = unpack_planes(xp.reshape(b.qh, (-1, 2, 32)), 2)                # (B, half, quarter, l)
    q = xp.astype(xp.reshape(low | (high << 4), (-1, QK_K)), xp.float32) - 32.0  # (B, 256) 0..63 − 32, exact
    sc = xp.astype(b.scales, xp.int32)
    sc = xp.where(sc > 127, sc - 256, sc)                                 # (B, 16) int8
    return _scaled(fp16_field(b.d), sc, q)


# =======================================================================================
# Q3_K — 3.4375 bits per weight
#
#   byte 0             32                  96           108   110
#        +-------------+-------------------+------------+-----+
#        | hmask[32]   | qs[64]: low 2 bits| scales[12] |  d  |
#        +-------------+-------------------+------------+-----+
#   weight e: low 2 bits in qs (byte 32c + l holds weights 128c + 32k + l, bits 2k..2k+1),
#   high bit = bit e // 32 of hmask[e % 32]; q = low + 4·high in 0..7.
#   16 sub-blocks of 16, 6-bit scales (12 bytes, see _pack_scales_q3):
#   ŵ = d·(sc_j − 32) · (q − 4)
#
# The search: each sub-block runs make_q3_quants (nmax 4, weights x², coordinate descent);
# the scale of largest magnitude sets d = −max/32 and the scales are rounded to
# −32..31; every weight is rounded again with d_fp16·(sc_j − 32). With an imatrix the
# sub-block scales come from make_qx_quants (weights qw·sqrt(σ² + x²)) and the 6-bit
# scale codes from make_qx_quants(nmax 32) over the 16 scales weighted by Σ weights.
# =======================================================================================

def quantize_q3_k(x: Any, qw: Any | None = None) -> Any:
    """Q3_K super-blocks: x (n_blocks, 256), qw None | (n_blocks, 256) -> uint8 (n_blocks, 110).

    ŵ = d·(sc_j − 32)·(q − 4), q in 0..7, sc_j in 0..63, 16 sub-blocks of 16.
    Ref: quantize_row_q3_K_ref / quantize_row_q3_K_impl, ggml-quants.c.
    """
    x, qw = _check_x(x, qw)
    return _encode(_encode_q3_k, x, qw)


def _encode_q3_k(x: Any, qw: Any | None) -> np.ndarray:
    xp = namespace(x)
    B = x.shape[0]
    xs = xp.reshape(x, (B * 16, 16))
    if qw is None:                                                        # quantize_row_q3_K_ref
        scales, L = _search.make_q3_quants(xs, 4, True)
        scales = xp.reshape(scales, (B, 16))
        max_scale = signed_absmax(scales).signed[:, 0]                # (B,) signed
        has = max_scale != 0
        iscale = rdiv(-32.0, _where0(has, max_scale))
        # C: int8_t l = nearest_int(iscale*scales[j]); l = MAX(-32, MIN(31, l)) + 32
        l = nearest_int(iscale[:, None] * scales)
        l = xp.remainder(l + 128.0, 256.0) - 128.0                        # the int8_t store
        ls = clamp(l, -32, 31) + 32                                     # (B, 16) 0..63
        ls = xp.where(has[:, None], ls, xp.zeros_like(ls))                # C: scales bytes stay 0
        d = xp.where(has, rdiv(1.0, iscale), xp.zeros_like(iscale))
    else:                                                                 # quantize_row_q3_K_impl
        sigma2 = 2.0 * _sum_of_squares(x) / QK_K                          # (B,)
        weight = _importance(x, qw, sigma2, 16)                           # (B·16, 16)
        sw = xp.reshape(sequential_sum(weight), (B, 16))
        scales, L = _search.make_qx_quants(xs, 4, 1, weight)
        d, ls = _search.make_qx_quants(xp.reshape(scales, (B, 16)), 32, 1, sw)  # ls: 0..63
        ls = xp.astype(ls, xp.float32)
    sc = ls - 32                                                          # (B, 16) signed scale codes
    d_sub = to_fp16(d)[:, None] * sc                                        # (B, 16)
    L = _requantize(xp.reshape(x, (B, 16, 16)), d_sub[:, :, None], None,
                    xp.reshape(L, (B, 16, 16)), -4, 3, 4)                 # (B, 16, 16) 0..7
    Ln = to_numpy(xp.reshape(L, (B, QK_K))).astype(np.uint8)              # (B, 256)
    high = (Ln >> 2).reshape(B, 8, 32)                                    # (B, e // 32, e % 32)
    return Q3_K_BLOCK.join(hmask=pack_planes(high, 1), qs=_pack_2bit(Ln & 3), scales=_pack_scales_q3(to_numpy(ls)),
                           d=fp16_bytes(d))


def dequantize_q3_k(raw: Any) -> Any:
    """uint8 (n_blocks, 110) -> float32 (n_blocks, 256):  ŵ = (d·(sc_j − 32))·(q_low − (h ? 0 : 4)).

    Ref: dequantize_row_q3_K.
    """
    return _decode(Q3_K_BLOCK, _decode_q3_k, raw)


def _decode_q3_k(b: Any) -> Any:
    xp = namespace(b.qs)
    low = _unpack_2bit(b.qs)                                              # (B, 256)
    high = xp.reshape(unpack_planes(b.hmask, 1), (-1, QK_K))              # (B, 256) bit e//32 of hmask[e%32]
    q = xp.astype(low | (high << 2), xp.float32) - 4.0                    # (B, 256) in -4..3: C's q - (h ? 0 : 4)
    sc = _unpack_scales_q3(b.scales) - 32                                 # (B, 16)
    return _scaled(fp16_field(b.d), sc, q)


# =======================================================================================
# Q2_K — 2.625 bits per weight
#
#   byte 0               16                  80     82     84
#        +---------------+-------------------+------+------+
#        | scales[16]:   | qs[64]: 2-bit     |  d   | dmin |
#        | sc | m << 4   | codes (as Q3_K)   | f16  | f16  |
#        +---------------+-------------------+------+------+
#   16 sub-blocks j of 16:  ŵ = d·sc_j · q − dmin·m_j,   q in 0..3, sc_j, m_j in 0..15
#
# The search: each sub-block runs make_qkx2_quants (nmax 3, weights |x|, mean absolute
# error, 16 candidates) for an affine fit; scales and mins are coded as round(15·s/max)
# against d = max s/15, dmin = max m/15; then every weight is rounded again. With an
# imatrix: weights qw·sqrt(σ² + x²) with σ² = mean x² (no factor 2 here), make_qkx3_quants,
# and make_qp_quants (nmax 15) for the 4-bit scale and min codes.
# =======================================================================================

def quantize_q2_k(x: Any, qw: Any | None = None) -> Any:
    """Q2_K super-blocks: x (n_blocks, 256), qw None | (n_blocks, 256) -> uint8 (n_blocks, 84).

    ŵ = d·sc_j·q − dmin·m_j, q in 0..3, 4-bit sc_j and m_j, 16 sub-blocks of 16.
    Ref: quantize_row_q2_K_ref / quantize_row_q2_K_impl, ggml-quants.c.
    """
    x, qw = _check_x(x, qw)
    return _encode(_encode_q2_k, x, qw)


def _encode_q2_k(x: Any, qw: Any | None) -> np.ndarray:
    xp = namespace(x)
    B = x.shape[0]
    xs = xp.reshape(x, (B * 16, 16))
    zero = xp.zeros((B,), dtype=xp.float32)
    if qw is None:                                                        # quantize_row_q2_K_ref
        scales, mins, L = _search.make_qkx2_quants(xs, 3, xp.abs(xs), *QKX2_GRID_Q2_K, True)
        scales = xp.reshape(scales, (B, 16))
        mins = xp.reshape(mins, (B, 16))
        max_scale = running_max(scales, axis=1)                           # C: if (scale > max_scale) from 0
        max_min = running_max(mins, axis=1)
        has_s, has_m = max_scale > 0, max_min > 0
        ls = nearest_int(rdiv(15.0, _where0(has_s, max_scale))[:, None] * scales)  # C: q4scale/max_scale
        lm = nearest_int(rdiv(15.0, _where0(has_m, max_min))[:, None] * mins)
        ls = xp.where(has_s[:, None], ls, xp.zeros_like(ls))
        lm = xp.where(has_m[:, None], lm, xp.zeros_like(lm))
        d = xp.where(has_s, max_scale / 15.0, zero)
        dmin = xp.where(has_m, max_min / 15.0, zero)
    else:                                                                 # quantize_row_q2_K_impl
        sigma2 = _sum_of_squares(x) / QK_K                                # (B,) C: sumx2/QK_K
        weight = _importance(x, qw, sigma2, 16)                           # (B·16, 16)
        sw = xp.reshape(sequential_sum(weight), (B, 16))
        scales, mins, L = _search.make_qkx3_quants(xs, 3, weight, *QKX3_GRID, False)
        d, ls = _search.make_qp_quants(xp.reshape(scales, (B, 16)), 15, sw)
        dmin, lm = _search.make_qp_quants(xp.reshape(mins, (B, 16)), 15, sw)
        ls, lm = xp.astype(ls, xp.float32), xp.astype(lm, xp.float32)
    byte = _u8(ls) | (_u8(lm) << 4)                                       # (B, 16) C: scales[j] = ls | lm << 4 (uint8)
    # the decoder reads the stored byte back: sc = byte & 15, m = byte >> 4
    sc = from_numpy((byte & 0x0F).astype(np.float32), like=x)
    m = from_numpy((byte >> 4).astype(np.float32), like=x)
    d_sub = to_fp16(d)[:, None] * sc                                        # (B, 16)
    m_sub = to_fp16(dmin)[:, None] * m
    L = _requantize(xp.reshape(x, (B, 16, 16)), d_sub[:, :, None], m_sub[:, :, None],
                    xp.reshape(L, (B, 16, 16)), 0, 3, 0)
    Ln = to_numpy(xp.reshape(L, (B, QK_K))).astype(np.uint8)
    return Q2_K_BLOCK.join(scales=byte, qs=_pack_2bit(Ln), d=fp16_bytes(d), dmin=fp16_bytes(dmin))


def dequantize_q2_k(raw: Any) -> Any:
    """uint8 (n_blocks, 84) -> float32 (n_blocks, 256):  ŵ = (d·sc_j)·q − (dmin·m_j).

    Ref: dequantize_row_q2_K.
    """
    return _decode(Q2_K_BLOCK, _decode_q2_k, raw)


def _decode_q2_k(b: Any) -> Any:
    s = namespace(b.scales).astype(b.scales, namespace(b.scales).int32)   # (B, 16) sc | m << 4
    return _scaled(fp16_field(b.d), s & 0x0F, _unpack_2bit(b.qs), fp16_field(b.dmin), s >> 4)


# =======================================================================================
# Q8_K — 9.125 bits per weight (the activation format of the k-quant dot products)
#
#   byte 0     4                        260                  292
#        +-----+------------------------+--------------------+
#        |  d  | qs[256] int8           | bsums[16] int16    |
#        | f32 |                        | Σ of each 16 codes |
#        +-----+------------------------+--------------------+
#   ŵ = d · q,  d = −max/127 where max is the (signed) value of largest |x|
#
# No search: q = min(127, round(−127·x/max)). bsums lets the dot-product kernels
# subtract the mins of Q2_K/Q4_K/Q5_K without touching the codes again.
# =======================================================================================

def quantize_q8_k(x: Any, qw: Any | None = None) -> Any:
    """Q8_K super-blocks: x (n_blocks, 256) -> uint8 (n_blocks, 292). ``qw`` is ignored (no imatrix path).

    q = min(127, round(iscale·x)), iscale = −127/max, d = 1/iscale (float32);
    |x − d·q| ≤ |d|/2. An all-zero block is all zero bytes (C leaves bsums untouched there;
    we write zeros).
    Ref: quantize_row_q8_K_ref, ggml-quants.c.
    """
    x, _ = _check_x(x, None)
    return _encode(_encode_q8_k, x, None)


def _encode_q8_k(x: Any, qw: Any | None) -> np.ndarray:
    xp = namespace(x)
    hi, lo = xp.max(x, axis=1, keepdims=True), xp.min(x, axis=1, keepdims=True)  # (B, 1)
    mx = signed_absmax_of(x, hi, lo, 1).signed[:, 0]                      # (B,)
    has = mx != 0
    iscale = rdiv(-127.0, _where0(has, mx))                              # (B,)
    q = clamp(nearest_int(iscale[:, None] * x), None, 127)              # (B, 256) (iscale may overflow to inf)
    if not float(xp.min(q)) >= -128.0:                                    # only an overflowed iscale leaves int8
        q = xp.remainder(q + 128.0, 256.0) - 128.0                        # the int8_t store wraps
    q = xp.where(has[:, None], q, xp.zeros_like(q))
    d = xp.where(has, rdiv(1.0, iscale), xp.zeros_like(iscale))
    qn = to_numpy(q).astype(np.int8)
    bsums = qn.reshape(-1, 16, 16).sum(axis=2, dtype=np.int32).astype("<i2")  # (B, 16) exact integer sums
    dn = np.ascontiguousarray(to_numpy(d), dtype="<f4").reshape(-1, 1)
    return Q8_K_BLOCK.join(d=dn.view(np.uint8), qs=qn.view(np.uint8), bsums=bsums.view(np.uint8))


def dequantize_q8_k(raw: Any) -> Any:
    """uint8 (n_blocks, 292) -> float32 (n_blocks, 256):  ŵ = d·q (bsums are not needed).

    Ref: dequantize_row_q8_K.
    """
    return _decode(Q8_K_BLOCK, _decode_q8_k, raw)


def _decode_q8_k(b: Any) -> Any:
    xp = namespace(b.qs)
    q = xp.astype(b.qs, xp.int32)
    q = xp.astype(xp.where(q > 127, q - 256, q), xp.float32)              # (B, 256) int8
    return f32_field(b.d) * q
