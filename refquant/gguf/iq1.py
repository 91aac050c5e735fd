"""The IQ1 i-quants (IQ1_S, IQ1_M): 1.5625 and 1.75 bits per weight from a ternary code book.

A group of 8 weights is one point g of ``iq1s_grid`` (2048 of the 3⁸ ternary vectors,
coordinates −1, 0, +1; refquant.gguf._grids), shifted by ±Δ, Δ = 1/8, and scaled:

    IQ1_S (blocks of 32):  ŵ_j = d·(2·s_b + 1) · (g_j + δ_b),     δ_b = ±Δ per block of 32
    IQ1_M (blocks of 16):  ŵ_j = d·(2·s_b + 1) · (g_j + δ_k),     δ_k = ±Δ per group of 8

with d an fp16 super-block scale (256 weights) and s_b a 3-bit block scale.

| type  | QK  | bytes | bits/weight | stored                                                   |
|-------|----:|------:|------------:|----------------------------------------------------------|
| IQ1_S | 256 |  50   | 1.5625      | d (f16), qs[32] index low bytes, qh[8] (u16 per 32)      |
| IQ1_M | 256 |  56   | 1.75        | qs[32], qh[16] (a nibble per group), scales[8] (d in it) |

Layouts (``struct block_iq1_s`` / ``block_iq1_m``, ggml-common.h)::

    IQ1_S   0     2                      34                     50
            +-----+----------------------+----------------------+
            |  d  | qs[32]               | qh[8] (uint16)       |
            +-----+----------------------+----------------------+
    group g (8 weights, 0 ≤ g < 32) of block b = g/4:  index = qs[g] | ((qh[b] >> 3·(g%4)) & 7) << 8;
    qh[b] bits 12-14: s_b;  bit 15: δ_b = −Δ (else +Δ)

    IQ1_M   0                      32             48           56
            +----------------------+--------------+------------+
            | qs[32]               | qh[16]       | scales[8]  |
            +----------------------+--------------+------------+
    group g: nibble n = (qh[g/2] >> 4·(g%2)) & 15;  index = qs[g] | (n & 7) << 8;  n & 8: δ = −Δ;
    scales as 4 uint16 sc[0..3]: bits 3·(b%4) .. +2 of sc[b/4] are s_b of block b (16 weights);
    the top nibbles sc[0] >> 12, sc[1] >> 12, sc[2] >> 12, sc[3] >> 12 are the 4 nibbles
    (lowest first) of d's fp16 bits.

The search (quantize_row_iq1_s_impl, quantize_row_iq1_m_impl; the same for both but for
the block size and where the shift is chosen):

1. Importance w_i = qw_i·sqrt(σ² + x_i²), σ² = 2·Σx²/256 over the super-block; IQ1_M
   without an imatrix uses w_i = x_i². (IQ1_S has no such fallback: libggml asserts on a
   missing imatrix, and ggml_quantize_requires_imatrix says so; refquant refuses.)
2. Per block: with the levels q ∈ {−1+δ, δ, 1+δ}, the codes of the weighted least-squares
   fit are 0, 1, 2 split at two thresholds of the sorted x. Sort x (a stable sort, as
   glibc's merge-sort qsort is for these small arrays — glibc 2.36 here: equal x, ±0
   included, keep their order, which decides the codes when a split falls between equal
   values), and for every split (i1 ≤ i2) and every shift choice
   (IQ1_S: δ = ±Δ for the block; IQ1_M: δ = ±Δ for each half) compute Σwqx and Σwq² and
   keep the split with the largest (Σwqx)²/Σwq² (the first one, by C's strict '>').
   A negative scale is turned positive by mirroring the codes (L → 2 − L, δ → −δ).
3. Each group's 8 codes are a key Σ L_j·4^j; a key that is a grid point is stored as
   its index; any other key takes, among its neighbours (the grid points at the 3
   smallest distances: iq2xs_init_impl's map, computed by refquant.gguf._lattice), the one with the
   smallest weighted error Σ w (s·q − x)² at the block's scale (iq1_find_best_neighbour2).
   If any group moved, the block scale is refit to the chosen points.
4. d = max_b(scale_b)/15, s_b = clamp(round(½(scale_b/d − 1)), 0, 7); IQ1_S stores
   fp16(1.125·d); IQ1_M refits d over the whole super-block with the rounded s_b and stores
   fp16(1.1125·d) (both factors are ggml's empirical "fudge factors").

Arithmetic is float32 in the C order (sequential sums; ``(w·q)·x``; no FMA), vectorized
across blocks; the sequential comparisons of step 2 stay a loop over the candidates.
The encoders run in NumPy (the search is a gather-heavy loop; bytes are the NumPy edge)
and return bytes of the input's namespace; the decoders run in any array namespace.

Domain: finite x whose search sums stay finite. Where x² (or a split's Σwqx, Σwq²)
overflows float32 — |x| around 1e19 and above — a block scale becomes inf/inf = NaN and
libggml aborts (GGML_ASSERT(scale >= 0)); a neighbour search whose every error overflows
would make it read past its input (iq1_find_best_neighbour2's fallback loop indexes xval
by the grid index). refquant raises ValueError in both cases (checked against libggml in
a subprocess: at 1e20 and 3e38 it aborts exactly where refquant refuses; at 1e15 both give
the same bytes).

Ref: ggml/src/ggml-quants.c (quantize_row_iq1_s_impl, quantize_row_iq1_m_impl,
iq1_find_best_neighbour2, iq1_sort_helper, iq2xs_init_impl, dequantize_row_iq1_s,
dequantize_row_iq1_m); ggml-common.h (block_iq1_s, block_iq1_m, iq1m_scale_t, IQ1S_DELTA,
IQ1M_DELTA, iq1s_grid); gguf-py quants.py (IQ1_S, IQ1_M).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .._backend import from_numpy, namespace, to_numpy
from ._bytes import QK_K, Layout, check_blocks, fp16_bytes, fp16_field, sequential_sum
from ._grids import IQ1S
from ._lattice import check_scale, neighbour_map
from ._search import clamp, nearest_int

__all__ = ["CODECS", "IQ1_S_BLOCK", "IQ1_M_BLOCK", "quantize_iq1_s", "dequantize_iq1_s", "quantize_iq1_m", "dequantize_iq1_m"]

IQ1S_DELTA = 0.125                          # ggml-common.h IQ1S_DELTA (= IQ1M_DELTA): the ±1/8 shift
GROUP = 8                                   # weights per grid point
IQ1S_BLOCK_SIZE = 32                        # ggml-quants.c IQ1S_BLOCK_SIZE: weights per block scale
IQ1M_BLOCK_SIZE = 16                        # ggml-quants.c IQ1M_BLOCK_SIZE
GROUP_MAX_EPS_IQ1_S = float(np.float32(1e-12))  # ggml-quants.c: a block below it is "all zero"
GROUP_MAX_EPS_IQ1_M = float(np.float32(1e-7))
SCALE_MAX = 15                              # d = max_scale/15 (both types)
FUDGE_IQ1_S = float(np.float32(1.125))      # quantize_row_iq1_s_impl: GGML_FP32_TO_FP16(d*1.125f)
FUDGE_IQ1_M = float(np.float32(1.1125))     # quantize_row_iq1_m_impl: GGML_FP32_TO_FP16(d*1.1125f)
FLT_MAX = float(np.finfo(np.float32).max)
_IQ1M_MASKS = np.array([0x00, 0x80, 0x08, 0x88], np.uint8)  # quantize_row_iq1_m_impl masks[best_k]

# the three levels of a shift: x_p = {−1+Δ, Δ, 1+Δ} (δ = +Δ), x_m = {−1−Δ, −Δ, 1−Δ} (δ = −Δ)
X_P = np.array([-1 + IQ1S_DELTA, IQ1S_DELTA, 1 + IQ1S_DELTA], np.float32)
X_M = np.array([-1 - IQ1S_DELTA, -IQ1S_DELTA, 1 - IQ1S_DELTA], np.float32)
_LEVELS = np.stack([X_P, X_M])              # (2, 3): row 0 δ = +Δ, row 1 δ = −Δ


# ---------------------------------------------------------------------------------------
# The neighbour search of iq1_find_best_neighbour2 (the map itself: refquant.gguf._lattice)
# ---------------------------------------------------------------------------------------

def _best_neighbour(x: np.ndarray, w: np.ndarray, scale: np.ndarray, xx: np.ndarray,
                    keys: np.ndarray) -> np.ndarray:
    """iq1_find_best_neighbour2 for G off-grid groups: x, w (G, 8); scale (G,); xx (G, 3) the levels
    of the group's shift; keys (G,) -> grid index (G,), the neighbour of least Σ w·(s·q − x)².

    d² is summed left to right; the first of equal errors wins (strict '<' from FLT_MAX). A
    group whose every error is NaN or ≥ FLT_MAX (overflow) makes libggml read outside its
    input: ValueError.
    """
    table = neighbour_map("IQ1_S").table                                      # (43692, 205) int16, −1 padded
    out = np.empty(keys.shape, np.int64)
    step = 1024                                                               # groups per pass: bounded memory
    for lo in range(0, keys.size, step):
        cand = table[keys[lo : lo + step]].astype(np.int64)                   # (g, M) grid indices, −1 pad
        lv = IQ1S.levels[np.maximum(cand, 0)]                                 # (g, M, 8) codes 0..2
        q = np.take_along_axis(xx[lo : lo + step, None, :], lv.astype(np.intp), axis=2)  # (g, M, 8)
        diff = scale[lo : lo + step, None, None] * q - x[lo : lo + step, None, :]
        term = (w[lo : lo + step, None, :] * diff) * diff                     # w*diff*diff
        d2 = np.zeros(cand.shape, np.float32)
        for i in range(GROUP):
            d2 += term[..., i]
        ok = (cand >= 0) & (d2 < FLT_MAX)                                     # NaN fails '<' too
        if not ok.any(axis=1).all():
            raise ValueError("x: values too large for IQ1's neighbour search (the weighted errors overflow "
                             "float32; libggml reads outside its input there), keep |x| below ~1e19")
        best = np.argmin(np.where(ok, d2, np.inf), axis=1)                    # first of the least
        out[lo : lo + step] = np.take_along_axis(cand, best[:, None], axis=1)[:, 0]
    return out


# ---------------------------------------------------------------------------------------
# The shared search: importance, sorted prefix sums, sequential choice of the best split
# ---------------------------------------------------------------------------------------

def _importance(x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """Step 1: (n, 256) -> (n, 256) w = qw·sqrt(σ² + x²), σ² = 2·Σx²/QK_K (C order); x² without qw."""
    if qw is None:
        return x * x
    sigma2 = (np.float32(2) * sequential_sum(x * x)) / np.float32(QK_K)      # (n, 1): 2*sumx2/QK_K
    return qw * np.sqrt(sigma2 + x * x)


def _splits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every (i1, i2), 0 ≤ i1 ≤ i2 ≤ n, in the C loops' order (i1 outer): two (n_splits,) arrays."""
    i1, i2 = np.triu_indices(n + 1)
    return i1, i2


def _choose(sumqx: np.ndarray, sumq2: np.ndarray, start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The C selection over candidates c = 0, 1, … (n_cand, B) in order:

        if (sumq2 > 0 && sumqx*sumqx > best_score*sumq2) { scale = sumqx/sumq2; best_score = scale*sumqx; best = c; }

    from best_score = −FLT_MAX, scale = ``start`` (B,). Not an argmax: best_score is the rounded
    product, so the rule is kept step by step. -> (best (B,) int64, −1 if none; scale (B,)).
    """
    best_score = np.full(sumqx.shape[1], -FLT_MAX, np.float32)
    scale = start.astype(np.float32).copy()
    best = np.full(sumqx.shape[1], -1, np.int64)
    for c in range(sumqx.shape[0]):
        qx, q2 = sumqx[c], sumq2[c]
        better = (q2 > 0) & (qx * qx > best_score * q2)
        if better.any():
            scale = np.where(better, qx / q2, scale)
            best_score = np.where(better, scale * qx, best_score)
            best[better] = c
    return best, scale


def _codes(order: np.ndarray, i1: np.ndarray, i2: np.ndarray) -> np.ndarray:
    """Sorted ranks below i1 get code 0, below i2 code 1, the rest 2, put back in x's order: (B, n) int64."""
    rank = np.arange(order.shape[1])
    sorted_codes = (rank >= i1[:, None]).astype(np.int64) + (rank >= i2[:, None])
    L = np.empty_like(sorted_codes)
    np.put_along_axis(L, order, sorted_codes, axis=1)
    return L


def _grid_indices(x: np.ndarray, w: np.ndarray, L: np.ndarray, scale: np.ndarray,
                  minus: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 3: codes L (B, n) -> grid index per group (B, n/8) and whether any group of a block left
    its key (B,). minus (B, n/8): the group's levels are x_m (δ = −Δ)."""
    B, n = L.shape
    g = n // GROUP
    key = (L.reshape(B, g, GROUP) << (2 * np.arange(GROUP))).sum(axis=2)     # (B, g)
    index = neighbour_map("IQ1_S").kmap[key].astype(np.int64)                 # (B, g): < 0 off the grid
    off = index < 0
    if off.any():
        b, k = np.nonzero(off)
        xg, wg = x.reshape(B, g, GROUP)[b, k], w.reshape(B, g, GROUP)[b, k]   # (G, 8)
        index[b, k] = _best_neighbour(xg, wg, scale[b], _LEVELS[minus[b, k].astype(np.intp)], key[b, k])
    return index, off.any(axis=1)


def _refit(x: np.ndarray, w: np.ndarray, index: np.ndarray, minus: np.ndarray, scale: np.ndarray,
           moved: np.ndarray) -> np.ndarray:
    """The refit after a move: scale = Σwqx/Σwq² over the block's chosen points, if both > 0. (B,)"""
    B, n = x.shape
    q = _LEVELS[np.repeat(minus.astype(np.intp), GROUP, axis=1), IQ1S.levels[index].reshape(B, n)]  # (B, n)
    wq = w * q
    sumqx, sumq2 = sequential_sum(wq * x)[:, 0], sequential_sum(wq * q)[:, 0]
    ok = moved & (sumqx > 0) & (sumq2 > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok, sumqx / np.where(ok, sumq2, 1), scale)


class _Blocks(NamedTuple):
    """One block search's result, per block of 16 or 32: index (B, n/8), scale (B,), shift, used (B,)."""

    index: np.ndarray
    scale: np.ndarray
    shift: np.ndarray     # IQ1_S: +1 / −1 (δ of the block); IQ1_M: best_k 0..3
    used: np.ndarray      # the block was searched and kept (not "all zero", a split found)


# ---------------------------------------------------------------------------------------
# IQ1_S — 1.5625 bits per weight
# ---------------------------------------------------------------------------------------

IQ1_S_BLOCK = Layout("IQ1_S", d=2, qs=32, qh=16)
N_SUB_S = QK_K // IQ1S_BLOCK_SIZE             # 8 blocks of 32


def _search_iq1_s(x: np.ndarray, w: np.ndarray) -> _Blocks:
    """Steps 2-3 for blocks of 32: x, w (B, 32) float32."""
    B, n = x.shape
    amax = np.abs(x).max(axis=1)
    order = np.argsort(x, axis=1, kind="stable")                              # qsort of (x, j) pairs
    xs, ws = np.take_along_axis(x, order, axis=1), np.take_along_axis(w, order, axis=1)
    sumx = np.zeros((n + 1, B), np.float32)                                   # sumx[j+1] = sumx[j] + w*x
    sumw = np.zeros((n + 1, B), np.float32)
    for j in range(n):
        sumx[j + 1] = sumx[j] + ws[:, j] * xs[:, j]
        sumw[j + 1] = sumw[j] + ws[:, j]
    i1, i2 = _splits(n)
    lo_x, mid_x, hi_x = sumx[i1] - sumx[0], sumx[i2] - sumx[i1], sumx[n] - sumx[i2]   # (n_splits, B)
    lo_w, mid_w, hi_w = sumw[i1] - sumw[0], sumw[i2] - sumw[i1], sumw[n] - sumw[i2]
    sumqx = np.empty((i1.size, 2, B), np.float32)                             # candidate (split, shift)
    sumq2 = np.empty((i1.size, 2, B), np.float32)
    for s, lv in enumerate(_LEVELS):                                          # s = 0: x_p, 1: x_m
        sumqx[:, s] = (lo_x * lv[0] + mid_x * lv[1]) + hi_x * lv[2]
        sumq2[:, s] = (lo_w * lv[0] * lv[0] + mid_w * lv[1] * lv[1]) + hi_w * lv[2] * lv[2]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        best, scale = _choose(sumqx.reshape(-1, B), sumq2.reshape(-1, B), amax)
    used = (amax >= GROUP_MAX_EPS_IQ1_S) & (best >= 0)
    split = np.maximum(best, 0) // 2
    shift = np.where(best % 2 == 0, 1, -1)
    L = _codes(order, i1[split], i2[split])
    flip = scale < 0                                                          # mirror: L -> 2 - L, δ -> -δ
    L = np.where(flip[:, None], 2 - L, L)
    scale = np.where(flip, -scale, scale)
    shift = np.where(flip, -shift, shift)
    minus = np.repeat((shift < 0)[:, None], n // GROUP, axis=1)               # (B, 4)
    index = np.zeros((B, n // GROUP), np.int64)
    if used.any():
        u = np.flatnonzero(used)
        index[u], moved = _grid_indices(x[u], w[u], L[u], scale[u], minus[u])
        scale[u] = _refit(x[u], w[u], index[u], minus[u], scale[u], moved)
        check_scale(scale[u], "IQ1_S")
    return _Blocks(index, np.where(used, scale, 0).astype(np.float32), np.where(used, shift, 1), used)


def quantize_iq1_s(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 256) float32, qw the importance (required) -> (n_blocks, 50) uint8 IQ1_S blocks.

    Example: all ones. Every block of 32 is "all code 2" at the top level 1 + Δ, the grid
    point 2047 = (1, …, 1), at scale 1/1.125 = 8/9; so d = (8/9)/15, s_b = round(½(15 − 1)) = 7,
    qh = 7 << 12 | 0x7ff (index bits), and d is stored as fp16(1.125·d) = fp16(1/15): the
    weights decode to 15·fp16(1/15)·1.125 ≈ 1.1247, the fudge factor's bias.

        >>> raw = quantize_iq1_s(np.ones((1, 256), np.float32), np.ones((1, 256), np.float32))
        >>> hex(int(raw[0, 34]) | int(raw[0, 35]) << 8), float(dequantize_iq1_s(raw)[0, 0])
        ('0x7fff', 1.124725341796875)
    """
    if qw is None:
        raise ValueError("qw: IQ1_S needs importance weights (an imatrix); libggml refuses without one "
                         "(ggml_quantize_requires_imatrix)")
    x = check_blocks(x, qw, "IQ1_S", QK_K)
    xn, qn = to_numpy(x).astype(np.float32), to_numpy(qw).astype(np.float32)
    n = xn.shape[0]
    w = _importance(xn, qn)                                                   # (n, 256)
    blk = _search_iq1_s(xn.reshape(n * N_SUB_S, IQ1S_BLOCK_SIZE), w.reshape(n * N_SUB_S, IQ1S_BLOCK_SIZE))
    scales = blk.scale.reshape(n, N_SUB_S)                                    # (n, 8)
    index = blk.index.reshape(n, N_SUB_S, 4)                                  # (n, 8, 4)
    qh = ((index >> 8) << (3 * np.arange(4))).sum(axis=2)                     # (n, 8) index bits 8-10
    max_scale = scales.max(axis=1, keepdims=True)                             # (n, 1), from 0: scales >= 0
    has = max_scale > 0                                                       # if (!max_scale) continue;
    with np.errstate(divide="ignore", invalid="ignore"):
        d = (max_scale / np.float32(SCALE_MAX)).astype(np.float32)
        inv_d = np.float32(1) / d
        s = clamp(nearest_int(np.float32(0.5) * (inv_d * scales - np.float32(1))), 0, 7).astype(np.int64)
    s = s | np.where(blk.shift.reshape(n, N_SUB_S) == -1, 8, 0)
    qh = np.where(has, qh | (s << 12), qh)
    d_field = np.where(has, d * np.float32(FUDGE_IQ1_S), np.float32(0)).astype(np.float32)
    out = IQ1_S_BLOCK.join(d=fp16_bytes(d_field), qs=(index.reshape(n, 32) & 0xFF).astype(np.uint8),
                           qh=qh.astype("<u2").view(np.uint8).reshape(n, 16))
    return from_numpy(out, like=x)


def _group_points(xp: Any, index: Any) -> Any:
    """iq1s_grid[index] as float32: (n, g) -> (n, g, 8)."""
    grid = from_numpy(IQ1S.values.astype(np.float32), like=index)             # (2048, 8): −1, 0, 1
    n, g = index.shape
    return xp.reshape(xp.take(grid, xp.reshape(index, (-1,)), axis=0), (n, g, GROUP))


def _u16(field: Any) -> Any:
    """(n, 2k) bytes -> (n, k) int64, the little-endian uint16 fields."""
    xp = namespace(field)
    f = xp.astype(field, xp.int64)
    return f[:, 0::2] | (f[:, 1::2] << 8)


def dequantize_iq1_s(raw: Any) -> Any:
    """(n_blocks, 50) uint8 -> (n_blocks, 256) float32: ŵ = (d·(2s_b + 1))·(g + δ_b)."""
    b = IQ1_S_BLOCK.split(raw)
    xp = namespace(raw)
    n = raw.shape[0]
    qh = _u16(b.qh)                                                           # (n, 8)
    g = from_numpy(np.arange(32, dtype=np.int64), like=raw)                   # group 0..31
    qh_g = xp.take(qh, g // 4, axis=1)                                        # (n, 32): qh of its block
    index = xp.astype(b.qs, xp.int64) | (((qh_g >> (3 * (g % 4))) & 7) << 8)  # (n, 32)
    dl = fp16_field(b.d) * xp.astype(2 * ((qh >> 12) & 7) + 1, xp.float32)    # (n, 8)
    delta = xp.where((qh & 0x8000) != 0, xp.asarray(-IQ1S_DELTA, dtype=xp.float32),
                     xp.asarray(IQ1S_DELTA, dtype=xp.float32))               # (n, 8)
    pts = xp.reshape(_group_points(xp, index), (n, N_SUB_S, IQ1S_BLOCK_SIZE))  # (n, 8, 32)
    return xp.reshape(dl[:, :, None] * (pts + delta[:, :, None]), (n, QK_K))


# ---------------------------------------------------------------------------------------
# IQ1_M — 1.75 bits per weight
# ---------------------------------------------------------------------------------------

IQ1_M_BLOCK = Layout("IQ1_M", qs=32, qh=16, scales=8)
N_SUB_M = QK_K // IQ1M_BLOCK_SIZE             # 16 blocks of 16
# best_k: the shift of the two groups, 0: (+, +), 1: (+, −), 2: (−, +), 3: (−, −); MINUS_M[k, h] = group h is x_m
MINUS_M = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], np.intp)


def _search_iq1_m(x: np.ndarray, w: np.ndarray) -> _Blocks:
    """Steps 2-3 for blocks of 16: x, w (B, 16) float32. Unlike IQ1_S's prefix sums, the C code
    sums each split's Σwqx and Σwq² afresh in sorted order, for the 4 shift pairs at once."""
    B, n = x.shape
    amax = np.abs(x).max(axis=1)
    order = np.argsort(x, axis=1, kind="stable")
    xs, ws = np.take_along_axis(x, order, axis=1), np.take_along_axis(w, order, axis=1)
    second = (order >= n // 2).astype(np.intp)                               # (B, n): sorted lane's half
    # the level index v = level + 3·minus of lane j under shift pair k: 3·MINUS_M[k, half of lane j]
    shift = 3 * np.take_along_axis(MINUS_M.T[None, :, :], second[:, :, None], axis=1)  # (B, n, 4)
    v = np.arange(3)[None, None, :, None] + shift[:, :, None, :]             # (B, n, 3 levels, 4)
    lv = _LEVELS.reshape(-1)                                                  # (6,) x_p then x_m
    vx = lv[v]                                                                # (B, n, 3, 4) x_v per level, k
    wv = ws[:, :, None, None] * vx
    # blocks last, so that each lane's gather below copies whole rows of B sums
    pqx = np.ascontiguousarray((wv * xs[:, :, None, None]).transpose(1, 2, 3, 0))  # (n, 3, 4, B): weight*x_v*xb
    pq2 = np.ascontiguousarray((wv * vx).transpose(1, 2, 3, 0))                 # weight*x_v*x_v
    i1, i2 = _splits(n)                                                       # (n_splits,)
    cand_qx = np.zeros((i1.size, 4, B), np.float32)                           # candidate c = 4·split + k
    cand_q2 = np.zeros((i1.size, 4, B), np.float32)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for j in range(n):  # the C loop over the sorted lanes: Σ in rank order, one term per lane
            level = (j >= i1).astype(np.intp) + (j >= i2)                     # (n_splits,) code of rank j
            cand_qx += pqx[j, level]                                          # (n_splits, 4, B)
            cand_q2 += pq2[j, level]
        cand_qx, cand_q2 = cand_qx.reshape(-1, B), cand_q2.reshape(-1, B)      # (n_splits*4, B)
        best, scale = _choose(cand_qx, cand_q2, amax)
    used = (amax >= GROUP_MAX_EPS_IQ1_M) & (best >= 0)
    split, k = np.maximum(best, 0) // 4, np.maximum(best, 0) % 4
    L = _codes(order, i1[split], i2[split])
    flip = scale < 0
    L = np.where(flip[:, None], 2 - L, L)
    scale = np.where(flip, -scale, scale)
    k = np.where(flip, 3 - k, k)                                              # 0 <-> 3, 1 <-> 2
    minus = MINUS_M[k]                                                        # (B, 2)
    index = np.zeros((B, n // GROUP), np.int64)
    if used.any():
        u = np.flatnonzero(used)
        index[u], moved = _grid_indices(x[u], w[u], L[u], scale[u], minus[u])
        scale[u] = _refit(x[u], w[u], index[u], minus[u], scale[u], moved)
        check_scale(scale[u], "IQ1_M")
    return _Blocks(index, np.where(used, scale, 0).astype(np.float32), np.where(used, k, 0), used)


def quantize_iq1_m(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 256) float32, qw importance or None -> (n_blocks, 56) uint8 IQ1_M blocks.

    After the block search, d = max_scale/15 and s_b = clamp(round(½(scale_b/d − 1)), 0, 7);
    then d is refit over all 256 weights, d = Σ w q x / Σ w q² with q = level·(2s_b + 1)
    (one running sum in weight order), and fp16(1.1125·d) is split over the scales' top nibbles.

    Example: all ones. Every block is the point 2047 = (1, …, 1) with δ = +Δ for both groups
    (k = 0) at scale 8/9, s_b = 7 (qh nibbles 7: index bits only); the refit over the
    whole super-block gives d = 1/(1.125·15) exactly, and fp16(1.1125·d) decodes to
    15·1.125·fp16(0.065926) ≈ 1.1124 per weight.

        >>> raw = quantize_iq1_m(np.ones((1, 256), np.float32))
        >>> round(float(dequantize_iq1_m(raw)[0, 0]), 5), raw[0, 32:34].tolist()
        (1.11237, [119, 119])
    """
    x = check_blocks(x, qw, "IQ1_M", QK_K)
    xn = to_numpy(x).astype(np.float32)
    qn = None if qw is None else to_numpy(qw).astype(np.float32)
    n = xn.shape[0]
    w = _importance(xn, qn)                                                   # (n, 256)
    blk = _search_iq1_m(xn.reshape(n * N_SUB_M, IQ1M_BLOCK_SIZE), w.reshape(n * N_SUB_M, IQ1M_BLOCK_SIZE))
    scales = blk.scale.reshape(n, N_SUB_M)                                    # (n, 16)
    index = blk.index.reshape(n, N_SUB_M, 2)                                  # (n, 16, 2)
    shift = blk.shift.reshape(n, N_SUB_M)
    qh = (index[:, :, 0] >> 8) | ((index[:, :, 1] >> 8) << 4)                 # (n, 16)
    max_scale = scales.max(axis=1, keepdims=True)                             # (n, 1)
    has = max_scale > 0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        d = (max_scale / np.float32(SCALE_MAX)).astype(np.float32)
        inv_d = np.float32(1) / d
        s = clamp(nearest_int(np.float32(0.5) * (inv_d * scales - np.float32(1))), 0, 7).astype(np.int64)
        # the refit of d: q = level · (2s + 1) over every weight, one running sum in weight order
        minus = MINUS_M[shift]                                                # (n, 16, 2)
        code = IQ1S.levels[index].astype(np.intp)                             # (n, 16, 2, 8)
        level = _LEVELS[np.broadcast_to(minus[..., None], code.shape), code]  # (n, 16, 2, 8)
        q = (level * (2 * s[:, :, None, None] + 1).astype(np.float32)).reshape(n, QK_K)
        wq = w * q
        sumqx, sumq2 = sequential_sum(wq * xn), sequential_sum(wq * q)        # (n, 1)
        d = np.where(sumq2 > 0, sumqx / np.where(sumq2 > 0, sumq2, 1), d).astype(np.float32)
    qh = np.where(has, qh | _IQ1M_MASKS[shift], qh)
    d16 = fp16_bytes(d * np.float32(FUDGE_IQ1_M)).astype(np.int64)          # (n, 2)
    d_bits = d16[:, 0] | (d16[:, 1] << 8)                                     # (n,) the fp16 bits
    sc = (s.reshape(n, 4, 4) << (3 * np.arange(4))).sum(axis=2)               # (n, 4) twelve bits each
    sc = sc | (((d_bits[:, None] >> (4 * np.arange(4))) & 0xF) << 12)         # top nibble: 4 bits of d
    sc = np.where(has, sc, 0)
    out = IQ1_M_BLOCK.join(qs=(index.reshape(n, 32) & 0xFF).astype(np.uint8), qh=qh.astype(np.uint8),
                           scales=sc.astype("<u2").view(np.uint8).reshape(n, 8))
    return from_numpy(out, like=x)


def dequantize_iq1_m(raw: Any) -> Any:
    """(n_blocks, 56) uint8 -> (n_blocks, 256) float32: ŵ = (d·(2s_b + 1))·(g + δ_group)."""
    b = IQ1_M_BLOCK.split(raw)
    xp = namespace(raw)
    n = raw.shape[0]
    sc = _u16(b.scales)                                                       # (n, 4)
    d_bits = (sc[:, 0:1] >> 12) | ((sc[:, 1:2] >> 8) & 0x00F0) | ((sc[:, 2:3] >> 4) & 0x0F00) | (sc[:, 3:4] & 0xF000)
    # iq1m_scale_t.f16: through fp16_field's bytes, so that a NaN keeps its payload as in C's conversion
    d16 = xp.astype(xp.concat([d_bits & 0xFF, d_bits >> 8], axis=1), xp.uint8)  # (n, 2)
    d = fp16_field(d16)                                                       # (n, 1)
    h = from_numpy(np.arange(N_SUB_M, dtype=np.int64), like=raw)              # block of 16: 0..15
    s = (xp.take(sc, h // 4, axis=1) >> (3 * (h % 4))) & 7                    # (n, 16)
    dl = d * xp.astype(2 * s + 1, xp.float32)                                 # (n, 16)
    g = from_numpy(np.arange(32, dtype=np.int64), like=raw)                   # group 0..31
    nibble = (xp.take(xp.astype(b.qh, xp.int64), g // 2, axis=1) >> (4 * (g % 2))) & 0xF  # (n, 32)
    index = xp.astype(b.qs, xp.int64) | ((nibble & 7) << 8)
    delta = xp.where((nibble & 8) != 0, xp.asarray(-IQ1S_DELTA, dtype=xp.float32),
                     xp.asarray(IQ1S_DELTA, dtype=xp.float32))               # (n, 32)
    pts = _group_points(xp, index) + delta[:, :, None]                        # (n, 32, 8)
    return xp.reshape(dl[:, :, None] * xp.reshape(pts, (n, N_SUB_M, 2 * GROUP)), (n, QK_K))


# {type name: (quantize_<t>, dequantize_<t>, imatrix use)}: registered in refquant.gguf.CODECS.
# IQ1_S: "required" (ggml_quantize_requires_imatrix(IQ1_S) is true); IQ1_M: "weighted" (false:
# quantize_row_iq1_m_impl falls back to w = x², its assert on quant_weights is commented out).
CODECS: dict = {
    "IQ1_S": (quantize_iq1_s, dequantize_iq1_s, "required"),
    "IQ1_M": (quantize_iq1_m, dequantize_iq1_m, "weighted"),
}
