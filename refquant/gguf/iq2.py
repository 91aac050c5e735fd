"""The IQ2 i-quants (IQ2_XXS, IQ2_XS, IQ2_S): 2-bit codes from E8-lattice code books.

A super-block of 256 weights is cut into groups of 8. Each group is stored as the index
of a point of a grid (refquant.gguf._grids: 256, 512 or 1024 points with coordinates in
{8, 25, 43}, odd-coordinate E8 points 1, 3, 5 stretched), 7 or 8 sign bits, and a 4-bit
scale per 32 (IQ2_XXS) or 16 (IQ2_XS, IQ2_S) weights:

    ŵ_j = d · (0.5 + s) / 4 · grid[idx][j] · (−1 if sign bit j else +1)

| type    | bytes | bits/weight | grid     | per group of 8                  | scale s per |
|---------|------:|------------:|----------|---------------------------------|-------------|
| IQ2_XXS |  66   | 2.0625      | 256      | 8-bit index, 7 sign bits (even) | 32 weights  |
| IQ2_XS  |  74   | 2.3125      | 512      | 9-bit index, 7 sign bits (even) | 16 weights  |
| IQ2_S   |  82   | 2.5625      | 1024     | 10-bit index, 8 sign bits       | 16 weights  |

"7 sign bits (even)": the 8th sign makes the number of minus signs even (ksigns_iq2xs,
a parity, see _grids), which keeps a signed grid point in E8. The encoder flips the sign
of the least important weight when the count is odd.

Layouts (little-endian; "group g" = weights 8g … 8g+7 of the super-block)::

    IQ2_XXS  0     2                                                         66
             +-----+---------------------------------------------------------+
             |  d  | qs: 8 × (u32 a, u32 b) for sub-blocks of 32              |
             +-----+---------------------------------------------------------+
             a = 4 grid indices (a byte per group); b = 4 × 7 sign bits (bits 7k …) | s << 28

    IQ2_XS   0     2                                 66          74
             +-----+---------------------------------+-----------+
             |  d  | qs: 32 × u16 = idx | signs << 9 | scales[8] |   (low nibble: even 16)
             +-----+---------------------------------+-----------+

    IQ2_S    0     2               34               66       74          82
             +-----+---------------+----------------+--------+-----------+
             |  d  | qs: idx & 255 | signs: 8 bits  | qh[8]  | scales[8] |
             +-----+---------------+----------------+--------+-----------+
             idx = qs[g] | ((qh[g/4] >> 2·(g%4)) & 3) << 8

The search (ggml-quants.c: quantize_row_iq2_xxs_impl, quantize_row_iq2_xs_impl,
quantize_row_iq2_s_impl), per sub-block of n = 32 (XXS) or 16 weights:

1. weights w_i = qw_i·sqrt(σ² + x_i²), σ² = Σx²/256 (XXS, XS) or 2Σx²/256 (IQ2_S);
   IQ2_S without an imatrix: w_i = σ²/4 + x_i². (XXS and XS need an imatrix.)
2. magnitudes v = |x| (signs aside; for XXS/XS, the lowest w·x² of an odd group is negated);
3. try scales: 1/s = (5 + 0.1·t)/M, t = −9 … 9 with M = max v (XXS: t = −6 … 6 and
   M = 3·make_qp_quants(v, 4, w)); round l_i = clamp(round((v_i/s − 1)/2), 0, 2); a group
   whose levels are not a grid point takes its best neighbour (refquant.gguf._lattice:
   the nearest grid points, the one of least Σ w^½(s·(2l+1) − v)²); keep the trial with
   the largest (Σ w v q)²/Σ w q², q = 2l + 1, and its least-squares scale Σwvq/Σwq²;
4. re-round with that scale (XXS: every group; XS/S: the groups that were off the grid),
   refit the scale;
5. super-block: d = max scale / 31 (IQ2_S stores d·0.9875), s = clamp(round((scale/d − 1)/2), 0, 15).

Every sum is float32, left to right, in C's operand order; ``nearest_int`` rounds half to
even; NaN follows C's comparisons (IQ2_XXS goes on past ``eff_max <= 0`` with a NaN, and
max_scale is C's ``a > b ? a : b``). Where every neighbour's weighted distance overflows to
inf (|x| ≳ 1e16) libggml aborts (GGML_ASSERT in iq2_find_best_neighbour); we raise ValueError. The searches run in NumPy, vectorized over all sub-blocks; decoding runs on any
array-API namespace.

Ref: ggml/src/ggml-quants.c — quantize_row_iq2_xxs_impl, quantize_row_iq2_xs_impl,
quantize_row_iq2_s_impl, iq2_find_best_neighbour, dequantize_row_iq2_xxs,
dequantize_row_iq2_xs, dequantize_row_iq2_s; ggml-common.h (block_iq2_xxs, block_iq2_xs,
block_iq2_s); ggml.c ggml_quantize_requires_imatrix (IQ2_XXS, IQ2_XS).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from .._backend import from_numpy, namespace, to_numpy
from . import _grids, _lattice
from ._bytes import QK_K, Layout, check_blocks, fp16_bytes, fp16_field, uint_le
from ._search import clamp, make_qp_quants, nearest_int

__all__ = ["CODECS", "IQ2_XXS_BLOCK", "IQ2_XS_BLOCK", "IQ2_S_BLOCK",
           "quantize_iq2_xxs", "dequantize_iq2_xxs", "quantize_iq2_xs", "dequantize_iq2_xs",
           "quantize_iq2_s", "dequantize_iq2_s"]

IQ2_XXS_BLOCK = Layout("IQ2_XXS", d=2, qs=64)
IQ2_XS_BLOCK = Layout("IQ2_XS", d=2, qs=64, scales=8)
IQ2_S_BLOCK = Layout("IQ2_S", d=2, qs=32, signs=32, qh=8, scales=8)

GROUP = 8                           # weights per grid point
N_GROUPS = QK_K // GROUP            # 32 groups in a super-block
K_MAX_Q = 3                         # kMaxQ: levels 0, 1, 2 (odd values 1, 3, 5)
TOP_ODD = 2 * K_MAX_Q - 1           # 5, the largest odd value: 1/s starts at 5/max
SCALE_MAX = 15                      # 4-bit sub-block scale
SCALE_DIV = 31                      # d = max_scale / 31
STEP = np.float32(0.1)              # 1/s = (5 + t·0.1f)/M
GROUP_MAX_EPS = np.float32(1e-15)   # ggml-quants.c GROUP_MAX_EPS: an "all zero" sub-block (XXS, XS)
GROUP_MAX_EPS_IQ2_S = np.float32(1e-8)  # GROUP_MAX_EPS_IQ2_S
IQ2_S_D_FUDGE = np.float32(0.9875)  # quantize_row_iq2_s_impl stores d·0.9875f


# ---------------------------------------------------------------------------------------
# The shared search (steps 1-4 of the module docstring)
# ---------------------------------------------------------------------------------------

class SubBlocks(NamedTuple):
    """The search's result per sub-block: levels, grid indices, signs and scale."""

    index: np.ndarray    # (S, G) int64 grid index of each group
    signs: np.ndarray    # (S, G) uint8 sign bits (7 for XXS/XS, 8 for IQ2_S), flipped if the scale was < 0
    scale: np.ndarray    # (S,) float32, ≥ 0; 0 for an "all zero" sub-block
    empty: np.ndarray    # (S,) bool: max v < eps (nothing written for it)


def _f32(v: Any) -> np.ndarray:
    return np.asarray(v, dtype=np.float32)


def _running_sum(t: np.ndarray) -> np.ndarray:
    """C's ``s = 0; for i: s += t[:, i]``: (S, n) -> (S,), left to right in float32."""
    s = np.zeros(t.shape[0], dtype=np.float32)
    for i in range(t.shape[1]):
        s = s + t[:, i]
    return s


def _sigma2(x: np.ndarray, twice: bool) -> np.ndarray:
    """σ² per super-block: Σx²/256, or 2Σx²/256 (C: sumx2/QK_K, 2*sumx2/QK_K): (B, 256) -> (B, 1)."""
    sumx2 = _running_sum(x * x)                                               # (B,)
    return ((np.float32(2) * sumx2 if twice else sumx2) / np.float32(QK_K))[:, None]


def _weights(x: np.ndarray, qw: np.ndarray | None, sigma2: np.ndarray) -> np.ndarray:
    """Step 1: (B, 256) -> (B, 256) w = qw·sqrt(σ² + x²), or σ²/4 + x² without qw (IQ2_S)."""
    if qw is None:
        return np.float32(0.25) * sigma2 + x * x
    return qw * np.sqrt(sigma2 + x * x)


def _magnitudes(x: np.ndarray, w: np.ndarray, even: bool) -> tuple[np.ndarray, np.ndarray]:
    """Step 2, per group of 8: v = |x| (C: x >= 0 ? x : -x, so −0.0 stays −0.0) and the sign bits.

    even: an odd number of negatives negates v at the group's smallest w·x² (the first such)
    and toggles its bit, leaving 7 bits to store. x, w: (S, n) -> v (S, n), signs (S, G) uint8.
    """
    S, n = x.shape
    neg = ~(x >= 0)                                                           # (S, n)
    v = np.where(neg, -x, x)
    bit = (1 << np.arange(GROUP)).astype(np.int64)                            # (8,)
    negg = neg.reshape(S, n // GROUP, GROUP)                                  # (S, G, 8)
    signs = (negg * bit).sum(axis=2)                                          # (S, G)
    if even:
        odd = negg.sum(axis=2) % 2 == 1                                       # (S, G)
        imp = ((w * x) * x).reshape(S, n // GROUP, GROUP)                     # C: weight*xb*xb
        imin = _lattice.first_least(imp)                                      # C's '<' scan: NaN never wins
        flip = odd[:, :, None] & (np.arange(GROUP) == imin[:, :, None])       # (S, G, 8)
        v = np.where(flip.reshape(S, n), -v, v)
        signs = np.where(odd, signs ^ (1 << imin), signs) & 127
    return v, signs.astype(np.uint8)


def _levels_at(nmap: _lattice.NeighbourMap, v: np.ndarray, waux: np.ndarray, inv_scale: np.ndarray,
               scale: np.ndarray, mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Round every group to levels at scale 1/inv_scale, replacing off-grid groups by their best neighbour.

    v, waux: (S, n); inv_scale, scale: (S,). mask (S, G): the groups to do (others -> level 0,
    index -1, on_grid True). Returns L (S, n) int64, index (S, G) int64, on_grid (S, G) bool.
    """
    S, n = v.shape
    G = n // GROUP
    l = nearest_int(np.float32(0.5) * (inv_scale[:, None] * v - np.float32(1)))  # C: 0.5f*(id*xval-1)
    L = clamp(l, 0, K_MAX_Q - 1).astype(np.int64).reshape(S, G, GROUP)        # (S, G, 8)
    u = _lattice.level_key(L, 2)                                              # (S, G)
    index = nmap.kmap[u].astype(np.int64)                                     # (S, G)
    todo = np.ones((S, G), bool) if mask is None else mask
    off = (index < 0) & todo
    if off.any():
        s_idx, g_idx = np.nonzero(off)
        vg = v.reshape(S, G, GROUP)[s_idx, g_idx]                             # (m, 8)
        wg = waux.reshape(S, G, GROUP)[s_idx, g_idx]
        best = _lattice.best_neighbour(nmap, u[s_idx, g_idx], vg, wg, scale[s_idx])
        if (best < 0).any():
            raise ValueError("x: the weighted distances of an IQ2 group overflow float32 (|x| around 1e16 or more, "
                             "or a huge imatrix); libggml aborts on such a block (iq2_find_best_neighbour finds "
                             "no grid point)")
        index[s_idx, g_idx] = best
        L[s_idx, g_idx] = nmap.grid.levels[best]
    return L.reshape(S, n), index, ~off | ~todo


def _fit(w: np.ndarray, v: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ w v q and Σ w q² with q = 2l + 1, left to right (C: w*xval[i]*q, w*q*q): (S,) each."""
    q = (2 * L + 1).astype(np.float32)
    return _running_sum((w * v) * q), _running_sum((w * q) * q)


def _trial(nmap, w, v, waux, inv_scale, best, scale, L, index, on_grid, active):
    """One step-3 trial: round at 1/inv_scale, keep it where (Σwvq)² > best·Σwq² (active sub-blocks only)."""
    this_scale = np.float32(1) / inv_scale                                    # (S,)
    La, ia, ga = _levels_at(nmap, v, waux, inv_scale, this_scale, mask=np.repeat(active[:, None], index.shape[1], 1))
    sumqx, sumq2 = _fit(w, v, La)
    better = active & (sumq2 > 0) & (sumqx * sumqx > best * sumq2)            # (S,)
    new_scale = np.where(better, sumqx / np.where(better, sumq2, np.float32(1)), scale)
    best = np.where(better, new_scale * sumqx, best)
    return (best, new_scale.astype(np.float32), np.where(better[:, None], La, L),
            np.where(better[:, None], ia, index), np.where(better[:, None], ga, on_grid))


def _search_16(nmap: _lattice.NeighbourMap, v: np.ndarray, w: np.ndarray, eps: np.float32) -> tuple:
    """Steps 3-4 of IQ2_XS / IQ2_S for sub-blocks of 16: (S, 16) -> (index (S, 2), scale (S,), empty (S,))."""
    S = v.shape[0]
    waux = np.sqrt(w)
    mx = np.max(v, axis=1)                                                    # (S,) C: MAX over xval
    empty = mx < eps
    mx_safe = np.where(empty, np.float32(1), mx)
    best = np.zeros(S, np.float32)
    scale = (mx_safe / np.float32(TOP_ODD)).astype(np.float32)               # C: max/(2*kMaxQ-1)
    L = np.zeros(v.shape, np.int64)
    index = np.zeros((S, 2), np.int64)                                        # L = 0 is grid point 0
    on_grid = np.ones((S, 2), bool)
    for t in range(-9, 10):
        inv_scale = (np.float32(TOP_ODD) + np.float32(t) * STEP) / mx_safe    # C: (2*kMaxQ-1+is*0.1f)/max
        best, scale, L, index, on_grid = _trial(nmap, w, v, waux, inv_scale, best, scale, L, index, on_grid, ~empty)
    redo = (~on_grid).any(axis=1) & (scale > 0) & ~empty                      # (S,)
    if redo.any():
        inv = np.float32(1) / np.where(redo, scale, np.float32(1))
        Lr, ir, _ = _levels_at(nmap, v, waux, inv, scale, mask=redo[:, None] & ~on_grid)
        fix = np.repeat(redo[:, None] & ~on_grid, GROUP, axis=1)             # (S, 16)
        L = np.where(fix, Lr, L)
        index = np.where(redo[:, None] & ~on_grid, ir, index)
        sumqx, sumq2 = _fit(w, v, L)
        refit = redo & (sumq2 > 0)
        scale = np.where(refit, sumqx / np.where(refit, sumq2, np.float32(1)), scale).astype(np.float32)
    return index, scale, empty


def _flip_negative(scale: np.ndarray, signs: np.ndarray, mask: int) -> tuple[np.ndarray, np.ndarray]:
    """C: if (scale < 0) { scale = -scale; signs = ~signs (& 127) } — "should never happen"."""
    neg = scale < 0
    return np.where(neg, -scale, scale), np.where(neg[:, None], ~signs & mask, signs).astype(np.uint8)


def _scale_nibbles(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 5: (B, m) sub-block scales -> d (B,) float32 = max/31, nibbles (B, m) in 0 … 15."""
    max_scale = np.zeros(scales.shape[0], np.float32)                         # C: max_scale = MAX(max_scale, scale)
    for ib in range(scales.shape[1]):                                         # MAX(a, b) = a > b ? a : b (NaN kept
        max_scale = np.where(max_scale > scales[:, ib], max_scale, scales[:, ib])  # only if it comes last)
    d = (max_scale / np.float32(SCALE_DIV)).astype(np.float32)
    inv = np.float32(1) / np.where(d > 0, d, np.float32(1))
    s = nearest_int(np.float32(0.5) * (inv[:, None] * scales - np.float32(1)))  # C: 0.5f*(id*scales[ib]-1)
    return d, clamp(s, 0, SCALE_MAX).astype(np.int64)


def _numpy_blocks(x: Any, qw: Any | None, qtype: str) -> tuple[np.ndarray, np.ndarray | None]:
    x = check_blocks(x, qw, qtype, QK_K)
    return to_numpy(x).astype(np.float32), None if qw is None else to_numpy(qw).astype(np.float32)


def _require_qw(qw: Any | None, qtype: str) -> None:
    if qw is None:
        raise ValueError(f"qw: {qtype} needs importance weights (ggml_quantize_requires_imatrix); "
                         "pass an imatrix to refquant.gguf.quantize")


# ---------------------------------------------------------------------------------------
# IQ2_XXS — 2.0625 bits per weight
# ---------------------------------------------------------------------------------------

def quantize_iq2_xxs(x: Any, qw: Any | None) -> Any:
    """x, qw: (n_blocks, 256) float32 -> (n_blocks, 66) uint8 (quantize_row_iq2_xxs_impl); qw required.

    Sub-blocks of 32 = 4 groups; the trials start from make_qp_quants' scale, t = −6 … 6,
    and step 4 re-rounds every group at the chosen scale.
    """
    _require_qw(qw, "IQ2_XXS")
    x, qw = _numpy_blocks(x, qw, "IQ2_XXS")
    nmap = _lattice.neighbour_map("IQ2_XXS")
    B = x.shape[0]
    w = _weights(x, qw, _sigma2(x, twice=False))                              # (B, 256)
    xs, ws = x.reshape(B * 8, 32), w.reshape(B * 8, 32)                       # (S, 32) sub-blocks
    S = xs.shape[0]
    v, signs = _magnitudes(xs, ws, even=True)                                 # (S, 32), (S, 4)
    waux = np.sqrt(ws)
    mx = np.max(v, axis=1)
    empty = mx < GROUP_MAX_EPS
    qp_scale, _ = make_qp_quants(np.where(empty[:, None], np.float32(0), v), K_MAX_Q + 1, ws)
    eff_max = (qp_scale * np.float32(K_MAX_Q)).astype(np.float32)            # (S,)
    empty |= eff_max <= 0                                                     # C: if (eff_max <= 0) continue (NaN goes on)
    eff_safe = np.where(empty, np.float32(1), eff_max)
    best = np.zeros(S, np.float32)
    scale = qp_scale.astype(np.float32)
    L = np.zeros(v.shape, np.int64)
    index = np.zeros((S, 4), np.int64)
    on_grid = np.ones((S, 4), bool)
    for t in range(-6, 7):
        inv_scale = (np.float32(TOP_ODD) + np.float32(t) * STEP) / eff_safe
        best, scale, L, index, on_grid = _trial(nmap, ws, v, waux, inv_scale, best, scale, L, index, on_grid,
                                                 ~empty)
    pos = (scale > 0) & ~empty                                                # step 4 for every group
    inv = np.float32(1) / np.where(pos, scale, np.float32(1))
    Lr, ir, _ = _levels_at(nmap, v, waux, inv, scale, mask=np.repeat(pos[:, None], 4, axis=1))
    L = np.where(pos[:, None], Lr, L)
    index = np.where(pos[:, None], ir, index)
    sumqx, sumq2 = _fit(ws, v, L)
    refit = pos & (sumq2 > 0)
    scale = np.where(refit, sumqx / np.where(refit, sumq2, np.float32(1)), scale).astype(np.float32)
    scale, signs = _flip_negative(scale, signs, 127)
    _lattice.check_scale(scale, "IQ2_XXS", ~empty)
    scale = np.where(empty, np.float32(0), scale)
    index = np.where(empty[:, None], 0, index)
    signs = np.where(empty[:, None], 0, signs)
    d, s = _scale_nibbles(scale.reshape(B, 8))                                # (B,), (B, 8)
    a = (index.reshape(B, 8, 4) << (8 * np.arange(4))).sum(axis=2)           # (B, 8) u32: 4 index bytes
    b = (signs.reshape(B, 8, 4).astype(np.int64) << (7 * np.arange(4))).sum(axis=2) | (s << 28)
    words = np.stack([a, b], axis=2).reshape(B, 16).astype("<u4")            # (B, 16) u32
    qs = np.where((d > 0)[:, None], words.view(np.uint8).reshape(B, 64), 0).astype(np.uint8)
    return from_numpy(IQ2_XXS_BLOCK.join(d=fp16_bytes(d[:, None]), qs=qs), like=x)


def _signed_grid(grid: _grids.Grid, index: Any, signs: Any, like: Any) -> Any:
    """index, signs (n, G) int -> the grid values (n, G, 8) float32 and the signs ±1 of the 8 sign bits (n, G, 8)."""
    xp = namespace(like)
    n, G = index.shape
    table = from_numpy(grid.values.astype(np.float32).reshape(-1), like=like)   # (n_points·8,)
    flat = xp.reshape(xp.astype(index, xp.int64), (-1, 1)) * GROUP + from_numpy(np.arange(GROUP), like=like)
    values = xp.reshape(xp.take(table, xp.reshape(flat, (-1,))), (n, G, GROUP))
    bits = xp.bitwise_and(xp.bitwise_right_shift(xp.reshape(xp.astype(signs, xp.int64), (n, G, 1)),
                                                 from_numpy(np.arange(GROUP, dtype=np.int64), like=like)), 1)
    sign = 1.0 - 2.0 * xp.astype(bits, xp.float32)                          # (n, G, 8) ±1
    return values, sign


def _ksigns(seven: Any, like: Any) -> Any:
    """7 stored sign bits -> the 8 of ksigns_iq2xs (parity bit 7)."""
    xp = namespace(like)
    table = from_numpy(_grids.KSIGNS_IQ2XS.astype(np.int64), like=like)
    return xp.reshape(xp.take(table, xp.reshape(xp.astype(seven, xp.int64), (-1,))), seven.shape)


def _scaled(d: Any, s: Any) -> Any:
    """db = d·(0.5 + s)·0.25 in C's order: d (n, 1) float32, s (n, m) int -> (n, m) float32."""
    xp = namespace(s)
    return (d * (0.5 + xp.astype(s, xp.float32))) * 0.25


def dequantize_iq2_xxs(raw: Any) -> Any:
    """(n_blocks, 66) uint8 -> (n_blocks, 256) float32 (dequantize_row_iq2_xxs)."""
    xp = namespace(raw)
    b = IQ2_XXS_BLOCK.split(raw)
    n = raw.shape[0]
    words = xp.reshape(uint_le(xp.reshape(b.qs, (n * 16, 4))), (n, 8, 2))    # (n, 8 sub-blocks, a/b)
    idx_bytes = xp.reshape(b.qs, (n, 8, 2, 4))[:, :, 0, :]                    # (n, 8, 4) grid indices
    word_b = words[:, :, 1]                                                   # (n, 8)
    seven = xp.bitwise_and(xp.bitwise_right_shift(word_b[:, :, None],
                                                  from_numpy(7 * np.arange(4, dtype=np.int64), like=raw)), 127)
    db = _scaled(fp16_field(b.d), xp.bitwise_right_shift(word_b, 28))         # (n, 8)
    values, sign = _signed_grid(_grids.IQ2XXS, xp.reshape(idx_bytes, (n, 32)),
                                _ksigns(xp.reshape(seven, (n, 32)), raw), raw)  # (n, 32, 8)
    y = (xp.reshape(db, (n, 8, 1, 1)) * xp.reshape(values, (n, 8, 4, 8))) * xp.reshape(sign, (n, 8, 4, 8))
    return xp.reshape(y, (n, QK_K))


# ---------------------------------------------------------------------------------------
# IQ2_XS — 2.3125 bits per weight
# ---------------------------------------------------------------------------------------

def _pack_scales(s: np.ndarray) -> np.ndarray:
    """(B, 16) nibbles -> (B, 8) bytes: sub-block 2i low, 2i+1 high."""
    return (s[:, 0::2] | (s[:, 1::2] << 4)).astype(np.uint8)


def quantize_iq2_xs(x: Any, qw: Any | None) -> Any:
    """x, qw: (n_blocks, 256) float32 -> (n_blocks, 74) uint8 (quantize_row_iq2_xs_impl); qw required."""
    _require_qw(qw, "IQ2_XS")
    x, qw = _numpy_blocks(x, qw, "IQ2_XS")
    nmap = _lattice.neighbour_map("IQ2_XS")
    B = x.shape[0]
    w = _weights(x, qw, _sigma2(x, twice=False))
    xs, ws = x.reshape(B * 16, 16), w.reshape(B * 16, 16)                     # (S, 16)
    v, signs = _magnitudes(xs, ws, even=True)                                 # (S, 16), (S, 2)
    index, scale, empty = _search_16(nmap, v, ws, GROUP_MAX_EPS)
    scale, signs = _flip_negative(scale, signs, 127)
    _lattice.check_scale(scale, "IQ2_XS", ~empty)
    scale = np.where(empty, np.float32(0), scale)
    q = np.where(empty[:, None], 0, index | (signs.astype(np.int64) << 9))   # (S, 2) u16
    d, s = _scale_nibbles(scale.reshape(B, 16))
    keep = (d > 0)[:, None]
    qs = np.where(keep, q.reshape(B, 32).astype("<u2").view(np.uint8).reshape(B, 64), 0).astype(np.uint8)
    scales = np.where(keep, _pack_scales(s), 0).astype(np.uint8)
    return from_numpy(IQ2_XS_BLOCK.join(d=fp16_bytes(d[:, None]), qs=qs, scales=scales), like=x)


def _sub16_scales(scales: Any) -> Any:
    """(n, 8) bytes -> (n, 16) nibbles, low first."""
    xp = namespace(scales)
    s = xp.astype(scales, xp.int64)
    return xp.reshape(xp.stack([xp.bitwise_and(s, 15), xp.bitwise_right_shift(s, 4)], axis=2), (-1, 16))


def dequantize_iq2_xs(raw: Any) -> Any:
    """(n_blocks, 74) uint8 -> (n_blocks, 256) float32 (dequantize_row_iq2_xs)."""
    xp = namespace(raw)
    b = IQ2_XS_BLOCK.split(raw)
    n = raw.shape[0]
    q = xp.reshape(uint_le(xp.reshape(b.qs, (n * 32, 2))), (n, 32))          # (n, 32) u16
    index = xp.bitwise_and(q, 511)
    db = _scaled(fp16_field(b.d), _sub16_scales(b.scales))                    # (n, 16)
    values, sign = _signed_grid(_grids.IQ2XS, index, _ksigns(xp.bitwise_right_shift(q, 9), raw), raw)
    y = (xp.reshape(db, (n, 16, 1, 1)) * xp.reshape(values, (n, 16, 2, 8))) * xp.reshape(sign, (n, 16, 2, 8))
    return xp.reshape(y, (n, QK_K))


# ---------------------------------------------------------------------------------------
# IQ2_S — 2.5625 bits per weight
# ---------------------------------------------------------------------------------------

def quantize_iq2_s(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 256) float32, qw optional -> (n_blocks, 82) uint8 (quantize_row_iq2_s_impl).

    8 stored signs per group (no parity), 10-bit indices; d is stored as 0.9875·max/31.
    """
    x, qw = _numpy_blocks(x, qw, "IQ2_S")
    nmap = _lattice.neighbour_map("IQ2_S")
    B = x.shape[0]
    w = _weights(x, qw, _sigma2(x, twice=True))
    xs, ws = x.reshape(B * 16, 16), w.reshape(B * 16, 16)
    v, signs = _magnitudes(xs, ws, even=False)                                # (S, 16), (S, 2) 8 bits
    index, scale, empty = _search_16(nmap, v, ws, GROUP_MAX_EPS_IQ2_S)
    scale, signs = _flip_negative(scale, signs, 255)
    _lattice.check_scale(scale, "IQ2_S", ~empty)
    scale = np.where(empty, np.float32(0), scale)
    index = np.where(empty[:, None], 0, index).reshape(B, 32)                 # (B, 32 groups)
    signs = np.where(empty[:, None], 0, signs).reshape(B, 32)
    d, s = _scale_nibbles(scale.reshape(B, 16))
    qh = ((index >> 8).reshape(B, 8, 4) << (2 * np.arange(4))).sum(axis=2)   # (B, 8): 2 high bits per group
    keep = (d > 0)[:, None]
    scales = np.where(keep, _pack_scales(s), 0).astype(np.uint8)             # C: continue before the scales
    d_stored = (d * IQ2_S_D_FUDGE).astype(np.float32)
    return from_numpy(IQ2_S_BLOCK.join(d=fp16_bytes(d_stored[:, None]), qs=(index & 255).astype(np.uint8),
                                       signs=signs.astype(np.uint8), qh=qh.astype(np.uint8), scales=scales), like=x)


def dequantize_iq2_s(raw: Any) -> Any:
    """(n_blocks, 82) uint8 -> (n_blocks, 256) float32 (dequantize_row_iq2_s)."""
    xp = namespace(raw)
    b = IQ2_S_BLOCK.split(raw)
    n = raw.shape[0]
    qh = xp.astype(b.qh, xp.int64)                                            # (n, 8)
    high = xp.bitwise_and(xp.bitwise_right_shift(qh[:, :, None], from_numpy(2 * np.arange(4, dtype=np.int64), like=raw)), 3)
    index = xp.astype(b.qs, xp.int64) + xp.reshape(high, (n, 32)) * 256       # (n, 32)
    db = _scaled(fp16_field(b.d), _sub16_scales(b.scales))                    # (n, 16)
    values, sign = _signed_grid(_grids.IQ2S, index, b.signs, raw)
    y = (xp.reshape(db, (n, 16, 1, 1)) * xp.reshape(values, (n, 16, 2, 8))) * xp.reshape(sign, (n, 16, 2, 8))
    return xp.reshape(y, (n, QK_K))


# {type name: (quantize_<t>, dequantize_<t>, imatrix use)}: registered in refquant.gguf.CODECS
CODECS: dict = {
    "IQ2_XXS": (quantize_iq2_xxs, dequantize_iq2_xxs, "required"),
    "IQ2_XS": (quantize_iq2_xs, dequantize_iq2_xs, "required"),
    "IQ2_S": (quantize_iq2_s, dequantize_iq2_s, "weighted"),
}
