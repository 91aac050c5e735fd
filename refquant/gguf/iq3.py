"""The IQ3 i-quants (IQ3_XXS, IQ3_S): groups of 4 weights as points of a 3-bit lattice code book.

A super-block of 256 weights is 8 sub-blocks of 32, each 8 groups of 4. A group stores the
*index* of a point g of a grid (``refquant.gguf._grids``: 256 points for IQ3_XXS, 512 for
IQ3_S, every coordinate one of 8 levels) and 4 signs; a sub-block stores a 4-bit scale ls:

    IQ3_XXS:  ŵ = d · (0.5 + ls)/2 · g_j · sign_j,   g_j ∈ {4, 12, 20, 28, 36, 44, 52, 62}
    IQ3_S:    ŵ = d · (1 + 2·ls) · g_j · sign_j,      g_j ∈ {1, 3, 5, …, 15}

(both are d·(2·ls + 1)·(2·l + 1) in the encoder's terms, with level l ∈ 0 … 7; IQ3_XXS's
top level is stretched from 60 to 62 in its table).

| type    | bytes | bits/weight | stored (per super-block)                                      |
|---------|------:|------------:|---------------------------------------------------------------|
| IQ3_XXS |   98  | 3.0625      | d (f16), qs[64] grid indices, 8 × u32 = 4 × 7 sign bits + ls  |
| IQ3_S   |  110  | 3.4375      | d (f16), qs[64] + qh[8] 9-bit indices, signs[32], scales[4]   |

Layouts::

    IQ3_XXS  0    2                    66                          98
             +----+--------------------+---------------------------+
             | d  | qs[64] (8 per sub) | scales_and_signs: 8 × u32  |
             +----+--------------------+---------------------------+
             u32 of sub-block b: bits 7k … 7k+6 = the signs of weights 8k … 8k+6 (k = 0 … 3),
             the sign of weight 8k+7 is their parity (ksigns_iq2xs: an even count of minus
             signs per 8); bits 28 … 31 = ls_b

    IQ3_S    0    2         66       74          106       110
             +----+---------+--------+-----------+---------+
             | d  | qs[64]  | qh[8]  | signs[32] | scales  |
             +----+---------+--------+-----------+---------+
             index of group k of sub-block b: qs[8b + k] | ((qh[b] >> k) & 1) << 8;
             signs: one bit per weight; ls_b = nibble b of scales (low nibble first)

The encoder (quantize_row_iq3_xxs_impl, quantize_row_iq3_s_impl), per sub-block of 32:

1. Importance w_j = x_j² without an imatrix, else qw_j · sqrt(σ² + x_j²), σ² = 2 Σ x²/256
   over the super-block. Signs come off: x_j ← |x_j|. IQ3_XXS stores only 7 signs per 8,
   so when an odd number of the 8 is negative it flips the least important one
   (min w_j x_j²) back to its signed value.
2. For 31 (IQ3_XXS) / 19 (IQ3_S) trial scales 1/s = (15 + 0.2 t)/max, t = −15 … 15 / −9 … 9:
   each weight takes level l = clamp(round(((x/s) − 1)/2), 0, 7). A group of 4 levels that is
   not a grid point is replaced by the nearest of its *neighbours* (below) under the
   weighted distance Σ sqrt(w_j) (s(2l_j + 1) − x_j)². The least-squares scale
   s = Σ w q x / Σ w q² (q = 2l + 1) of the best trial (largest (Σ w q x)² / Σ w q²) wins.
3. Once more at that s (IQ3_XXS: only for the groups that were off the grid), then the
   least-squares s again.
4. d = max_b s_b / 31, stored as fp16(d · 1.0125) (IQ3_XXS) or fp16(d · 1.033) (IQ3_S),
   and ls_b = clamp(round((s_b/d − 1)/2), 0, 15).

The neighbour lists are what ggml's ``iq3xs_init_impl`` builds at start-up, and we compute
them the same way (``neighbours``): for each of the 8⁴ = 4096 level vectors not in the
grid, the grid points at the 2 (IQ3_XXS) / 3 (IQ3_S) smallest distinct squared distances
in odd coordinates Σ ((2l_j + 1) − (2g_j + 1))², listed by distance, then by index (qsort
on (d², index)); a search keeps the first strict minimum, so that order matters.

Two details of the C code that the bytes depend on, reproduced here:

* a sub-block is "empty" when max |x| < 1e-8 (IQ3_XXS, GROUP_MAX_EPS_IQ3_XXS) or == 0
  (IQ3_S); it gets scale 0 and zero codes;
* in IQ3_S an empty sub-block does not advance the write pointers of qs and signs (the
  ``continue`` skips ``qs += 8; signs += 4``), so the codes of the following sub-blocks
  land one slot early and the last slots stay zero — while qh and the scales stay in
  place. The decoder reads them at their nominal places: libggml's bytes, not a round trip.

All arithmetic is float32 in the C order (sums left to right, ``nearest_int`` ties to even);
the search runs on NumPy (its neighbour lists are ragged), the decoder on any array-API
namespace.

Ref: ggml/src/ggml-quants.c (iq3xs_init_impl, iq3_find_best_neighbour,
quantize_row_iq3_xxs_impl, quantize_row_iq3_s_impl, dequantize_row_iq3_xxs,
dequantize_row_iq3_s); ggml-common.h (block_iq3_xxs, block_iq3_s, iq3xxs_grid, iq3s_grid,
ksigns_iq2xs); gguf-py quants.py (IQ3_XXS, IQ3_S).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from .._backend import from_numpy, namespace, to_numpy
from ._bytes import QK_K, Layout, check_blocks, fp16_bytes, fp16_field, sequential_sum, uint_le
from ._grids import IQ3S, IQ3XXS, KSIGNS_IQ2XS, Grid
from ._lattice import check_scale, first_least
from ._search import clamp, nearest_int

__all__ = ["CODECS", "Neighbours", "neighbours", "IQ3_XXS_BLOCK", "IQ3_S_BLOCK",
           "quantize_iq3_xxs", "dequantize_iq3_xxs", "quantize_iq3_s", "dequantize_iq3_s"]

SUB = 32                      # weights per sub-block (one scale)
N_SUB = QK_K // SUB           # 8 sub-blocks per super-block
GROUP = 4                     # weights per grid point
N_GROUP = SUB // GROUP        # 8 groups per sub-block
K_MAX_Q = 8                   # kMaxQ: levels 0 … 7, odd values 2l + 1 = 1 … 15
CUBE = K_MAX_Q ** GROUP       # kmap_size = 4096 level vectors
SCALE_MAX = 15                # 4-bit sub-block scales: MAX(0, MIN(15, l))
D_DIVISOR = 31                # d = max_scale / 31
FLT_MAX = np.float32(np.finfo(np.float32).max)  # best_d2's start in iq3_find_best_neighbour
STEP = float(np.float32(0.2))  # the 0.2f of id = (2*kMaxQ-1 + is*0.2f)/max


class Variant(NamedTuple):
    """What differs between quantize_row_iq3_xxs_impl and quantize_row_iq3_s_impl."""

    grid: Grid
    nwant: int           # neighbours at this many smallest distinct distances (iq3xs_init_impl)
    n_try: int           # trial scales is = −n_try … n_try
    empty_below: float   # a sub-block with max |x| below this (XXS) / equal to 0 (S) is empty
    fudge: float         # d is stored as fp16(d · fudge)
    even_signs: bool     # XXS: 7 sign bits per 8, an odd count flips the least important weight
    refit_all: bool      # S: the final pass re-rounds every group, XXS only the off-grid ones


XXS = Variant(IQ3XXS, 2, 15, float(np.float32(1e-8)), float(np.float32(1.0125)), True, False)
S = Variant(IQ3S, 3, 9, 0.0, float(np.float32(1.033)), False, True)


# ---------------------------------------------------------------------------------------
# The neighbour maps of iq3xs_init_impl (computed, not stored)
# ---------------------------------------------------------------------------------------

class Neighbours(NamedTuple):
    """kmap and the neighbour lists of one grid, as ragged arrays.

    index:  (4096,) int64 — the grid index of a level vector key u = Σ l_i << 3i, −1 off the grid
    start:  (4096,) int64 — where u's list begins in ``points`` (0 for grid points)
    count:  (4096,) int64 — its length (0 for grid points)
    points: (Σ count,) int64 — grid indices, by (squared distance, index)
    """

    index: np.ndarray
    start: np.ndarray
    count: np.ndarray
    points: np.ndarray


@functools.lru_cache(maxsize=None)
def _neighbours(name: str, nwant: int) -> Neighbours:
    grid = {IQ3XXS.name: IQ3XXS, IQ3S.name: IQ3S}[name]
    u = np.arange(CUBE)
    cube = (u[:, None] >> (3 * np.arange(GROUP))) & 7                      # (4096, 4) levels of key u
    index = np.full(CUBE, -1, dtype=np.int64)
    index[grid.keys] = np.arange(len(grid.keys))
    odd_cube = 2 * cube + 1                                                # pos[k] = 2*l + 1
    odd_grid = 2 * grid.levels.astype(np.int64) + 1                        # (n, 4)
    d2 = ((odd_cube[:, None, :] - odd_grid[None, :, :]) ** 2).sum(axis=-1)  # (4096, n) exact integers
    order = np.argsort(d2, axis=1, kind="stable")                          # by d², then by index (qsort's key)
    d2_sorted = np.take_along_axis(d2, order, axis=1)
    # the nwant-th smallest distinct distance of each row: count the rises along the sorted row
    rank = np.concatenate([np.zeros((CUBE, 1), np.int64), np.cumsum(np.diff(d2_sorted, axis=1) > 0, axis=1)], axis=1)
    keep = (rank < nwant) & (index[:, None] < 0)                           # (4096, n), a prefix of each row
    count = keep.sum(axis=1)
    start = np.concatenate([[0], np.cumsum(count)[:-1]])
    points = order[keep]                                                   # row-major: row by row, in order
    for a in (index, start, count, points):
        a.setflags(write=False)
    return Neighbours(index, start, count, points)


def neighbours(grid: Grid, nwant: int) -> Neighbours:
    """The kmap / neighbour lists iq3xs_init_impl builds for ``grid`` (cached per grid).

    Example: the level vector (1, 0, 0, 0) (key 1) is not an IQ3_XXS point (its odd
    coordinates 3+1+1+1 are not ≡ 0 mod 4). One level away, at squared odd-coordinate
    distance 4, lie 5 grid points: (0,0,0,0), (2,0,0,0), (1,1,0,0), (1,0,1,0), (1,0,0,1),
    indices 0, 1, 3, 12, 58; the next distance, 12 (three coordinates one level off), adds 7.

        >>> nb = neighbours(IQ3XXS, 2)
        >>> int(nb.index[1]), nb.points[nb.start[1] : nb.start[1] + nb.count[1]].tolist()
        (-1, [0, 1, 3, 12, 58, 14, 15, 60, 61, 69, 70, 71])
    """
    return _neighbours(grid.name, nwant)


def _best_neighbour(nb: Neighbours, grid_odd: np.ndarray, u: np.ndarray, xval: np.ndarray, waux: np.ndarray,
                    scale: np.ndarray) -> np.ndarray:
    """iq3_find_best_neighbour for M off-grid groups: the grid index of least Σ waux (s q − x)².

    u: (M,) keys; xval, waux: (M, 4); scale: (M, 1); grid_odd: (4, n) the grid's 2l + 1
    by coordinate -> (M,) grid indices. The sum runs
    over the 4 coordinates in order (d2 += w*diff*diff); the first strict minimum wins.
    """
    count = nb.count[u]                                                    # (M,)
    starts = np.cumsum(count) - count                                      # (M,) where group m's entries begin
    seg = np.repeat(np.arange(u.size), count)                              # (T,) the group of each entry
    offset = np.arange(seg.size) - starts[seg]                             # (T,) position inside its list
    flat = nb.points[nb.start[u][seg] + offset]                            # (T,) candidate grid indices
    s = scale[:, 0][seg]                                                   # (T,)
    d2 = np.zeros(flat.shape, np.float32)
    for i in range(GROUP):                                                 # coordinate by coordinate, as C
        diff = s * grid_odd[i][flat] - xval[:, i][seg]
        d2 = d2 + waux[:, i][seg] * diff * diff
    d2 = np.where(np.isnan(d2), np.float32(np.inf), d2)                    # a NaN never passes d2 < best_d2
    seg_min = np.minimum.reduceat(d2, starts)                              # (M,)
    if not (seg_min < FLT_MAX).all():
        # C: best_d2 = FLT_MAX and no candidate is below it -> GGML_ASSERT(grid_index >= 0) aborts
        raise ValueError("x: the weighted distances of an IQ3 group overflow float32 (|x| above about 1e12, or a "
                         "huge imatrix); libggml aborts on such a block (iq3_find_best_neighbour finds no grid point)")
    hit = np.flatnonzero(d2 == seg_min[seg])                               # every position at its group's minimum
    first = hit[np.concatenate([[True], seg[hit[1:]] != seg[hit[:-1]]])]   # the first of each group
    return flat[first]


# ---------------------------------------------------------------------------------------
# The search of one sub-block (vectorized across all sub-blocks)
# ---------------------------------------------------------------------------------------

class SubBlocks(NamedTuple):
    """What the search leaves for the bytes: per sub-block of 32 weights."""

    index: np.ndarray    # (B, 8) grid index of each group of 4
    signs: np.ndarray    # (B, 4) uint8, one sign byte per 8 weights (bit i: weight 8k+i negative)
    scale: np.ndarray    # (B, 1) float32 s_b ≥ 0 (0 for an empty sub-block)
    empty: np.ndarray    # (B,) bool: skipped by the C loop (``continue``)


def _levels(xval: np.ndarray, inv_scale: np.ndarray) -> np.ndarray:
    """l = MAX(0, MIN(7, nearest_int(0.5f*(id*x - 1)))) -> (B, 32) int64.

    nearest_int is ggml's bit trick, not round(): a subnormal max makes id = 15/max = inf,
    and id·x is then ±inf or NaN (0·inf), which the trick maps to −2²² and 0 (level 0)."""
    f = np.float32(0.5) * (inv_scale * xval - np.float32(1))
    return clamp(nearest_int(f), 0, K_MAX_Q - 1).astype(np.int64)


def _keys(L: np.ndarray) -> np.ndarray:
    """(B, 32) levels -> (B, 8) keys u = Σ_i L[4k+i] << 3i."""
    g = L.reshape(L.shape[0], N_GROUP, GROUP)
    u = g[..., 0].copy()
    for i in range(1, GROUP):  # exact integer adds, the same as .sum(axis=-1) without NumPy's slow
        u += g[..., i] << (3 * i)  # reduction over a last axis of 4 (a third of IQ3_S's time)
    return u


def _snap(v: Variant, L: np.ndarray, xval: np.ndarray, waux: np.ndarray, scale: np.ndarray,
          todo: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Replace every off-grid group of L (among ``todo``, (B, 8) bool) by its best neighbour at ``scale``.

    Returns (L with grid points, (B, 8) bool: the group's own levels were on the grid)."""
    nb = neighbours(v.grid, v.nwant)
    u = _keys(L)                                                           # (B, 8)
    on = nb.index[u] >= 0
    off = ~on if todo is None else (~on & todo)
    b, k = np.nonzero(off)
    if b.size:
        grid_odd = np.ascontiguousarray((2 * v.grid.levels.astype(np.float32) + 1).T)   # (4, n)
        xg = xval.reshape(-1, N_GROUP, GROUP)[b, k]                        # (M, 4)
        wg = waux.reshape(-1, N_GROUP, GROUP)[b, k]
        best = _best_neighbour(nb, grid_odd, u[b, k], xg, wg, scale[b])
        L = L.copy().reshape(-1, N_GROUP, GROUP)
        L[b, k] = v.grid.levels[best]
        L = L.reshape(-1, SUB)
    return L, on


def _fit(weight: np.ndarray, xval: np.ndarray, L: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ w·x·q and Σ w·q·q with q = 2L + 1, left to right over 32: (B, 1) each."""
    q = (2 * L + 1).astype(np.float32)
    return sequential_sum(weight * xval * q), sequential_sum(weight * q * q)


def _search(v: Variant, x: np.ndarray, weight: np.ndarray) -> SubBlocks:
    """Steps 1-3 of the module docstring for sub-blocks x, importances weight: (B, 32) each."""
    B = x.shape[0]
    waux = np.sqrt(weight)
    neg = x < 0                                                            # C: if (x >= 0) keep, else flip
    xval = np.where(neg, -x, x)
    signs = neg.reshape(B, 4, 8)                                           # (B, 4, 8) sign bit of each weight
    if v.even_signs:
        odd = signs.sum(axis=-1) % 2 == 1                                  # (B, 4)
        ax = (weight * x * x).reshape(B, 4, 8)
        imin = first_least(ax)                                             # C's '<' scan: NaN never wins
        flip = np.zeros_like(signs)
        np.put_along_axis(flip, imin[..., None], odd[..., None], axis=-1)
        signs = signs ^ flip
        xval = np.where(flip.reshape(B, SUB), -xval, xval)
    sign_bytes = np.packbits(signs, axis=-1, bitorder="little")[..., 0]   # (B, 4)
    max_ = np.max(xval, axis=-1, keepdims=True)                            # (B, 1)
    empty = (max_ < v.empty_below) if v.empty_below else (max_ == 0)
    empty = empty[:, 0]
    safe_max = np.where(empty[:, None], np.float32(1), max_)
    # the trials (best = 0, scale = max/15; XXS starts with every group "on the grid", S with none)
    L = np.zeros((B, SUB), np.int64)
    scale = safe_max / np.float32(2 * K_MAX_Q - 1)
    best = np.zeros((B, 1), np.float32)
    on_grid = np.full((B, N_GROUP), not v.refit_all)
    used = np.broadcast_to(~empty[:, None], (B, N_GROUP))                 # C `continue`s past empty sub-blocks:
    for t in range(-v.n_try, v.n_try + 1):                                 # no neighbour search (nor abort) there
        inv = np.float32(2 * K_MAX_Q - 1) + np.float32(t) * np.float32(STEP)   # (2*kMaxQ-1+is*0.2f) in float32
        inv_scale = inv / safe_max                                         # (B, 1)
        trial_scale = np.float32(1) / inv_scale                            # this_scale = 1/id
        Laux, on_aux = _snap(v, _levels(xval, inv_scale), xval, waux, trial_scale, used)
        sumqx, sumq2 = _fit(weight, xval, Laux)
        better = (sumq2 > 0) & (sumqx * sumqx > best * sumq2)              # (B, 1)
        scale = np.where(better, sumqx / np.where(sumq2 > 0, sumq2, np.float32(1)), scale)
        best = np.where(better, scale * sumqx, best)
        L = np.where(better, Laux, L)
        on_grid = np.where(better, on_aux, on_grid)
    # the refit at the chosen scale, where some group was off the grid
    refit = (~on_grid).any(axis=1, keepdims=True) & (scale > 0) & ~empty[:, None]   # (B, 1)
    if refit.any():
        with np.errstate(divide="ignore"):
            inv_scale = np.float32(1) / np.where(refit, scale, np.float32(1))
        todo = np.broadcast_to(refit, on_grid.shape) & (True if v.refit_all else ~on_grid)  # (B, 8)
        Lr = np.where(np.repeat(todo, GROUP, axis=1), _levels(xval, inv_scale), L)
        Lr, _ = _snap(v, Lr, xval, waux, scale, todo)
        sumqx, sumq2 = _fit(weight, xval, Lr)
        L = np.where(refit, Lr, L)
        scale = np.where(refit & (sumq2 > 0), sumqx / np.where(sumq2 > 0, sumq2, np.float32(1)), scale)
    # "this should never happen": a negative scale flips every sign instead
    negative = scale < 0                                                   # (B, 1)
    scale = np.where(negative, -scale, scale)
    sign_bytes = np.where(negative, ~sign_bytes, sign_bytes)
    check_scale(scale, "IQ3_XXS" if v.even_signs else "IQ3_S", ~empty[:, None])
    index = neighbours(v.grid, v.nwant).index[_keys(L)]                   # (B, 8), all on the grid now
    scale = np.where(empty[:, None], np.float32(0), scale)
    index = np.where(empty[:, None], 0, index)
    sign_bytes = np.where(empty[:, None], np.uint8(0), sign_bytes)
    return SubBlocks(index, sign_bytes.astype(np.uint8), scale.astype(np.float32), empty)


def _importance(x: np.ndarray, qw: np.ndarray | None) -> np.ndarray:
    """Step 1's w: x² or qw·sqrt(σ² + x²), σ² = 2·Σx²/256 per super-block: (n, 256)."""
    if qw is None:
        return x * x
    sigma2 = np.float32(2) * sequential_sum(x * x) / np.float32(QK_K)     # (n, 1): 2*sumx2/QK_K
    return qw * np.sqrt(sigma2 + x * x)


def _super_scale(v: Variant, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Step 4: scales (n, 8) -> (stored d (n, 1) float32 before fp16, ls (n, 8) int64, max_scale (n, 1))."""
    max_scale = np.max(scale, axis=1, keepdims=True)                       # MAX over s_b ≥ 0
    d = max_scale / np.float32(D_DIVISOR)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv_d = np.float32(1) / np.where(max_scale > 0, d, np.float32(1))
    ls = clamp(nearest_int(np.float32(0.5) * (inv_d * scale - np.float32(1))), 0, SCALE_MAX).astype(np.int64)
    stored = np.where(max_scale > 0, d * np.float32(v.fudge), np.float32(0))
    return stored, np.where(max_scale > 0, ls, 0), max_scale


def _prepare(x: Any, qw: Any | None, qtype: str) -> tuple[np.ndarray, np.ndarray]:
    x = to_numpy(check_blocks(x, qw, qtype, QK_K))                         # (n, 256) float32
    w = _importance(x, None if qw is None else to_numpy(qw).astype(np.float32))
    return x, w


# ---------------------------------------------------------------------------------------
# IQ3_XXS — 3.0625 bits per weight
# ---------------------------------------------------------------------------------------

IQ3_XXS_BLOCK = Layout("IQ3_XXS", d=2, qs=64, scales_and_signs=32)


def quantize_iq3_xxs(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 256) float32 -> (n_blocks, 98) uint8 IQ3_XXS blocks (quantize_iq3_xxs).

    Example: an all-zero super-block is all-zero bytes (d = 0, every sub-block empty).

        >>> quantize_iq3_xxs(np.zeros((1, 256), np.float32)).tolist() == [[0] * 98]
        True
    """
    x_np, w = _prepare(x, qw, "IQ3_XXS")
    n = x_np.shape[0]
    sb = _search(XXS, x_np.reshape(n * N_SUB, SUB), w.reshape(n * N_SUB, SUB))
    d, ls, max_scale = _super_scale(XXS, sb.scale.reshape(n, N_SUB))
    signs7 = (sb.signs & 127).astype(np.uint32).reshape(n, N_SUB, 4)       # block_signs[k] = s & 127
    aux = (signs7 << (7 * np.arange(4, dtype=np.uint32))).sum(axis=-1, dtype=np.uint32)   # (n, 8)
    aux = aux | (ls.astype(np.uint32) << 28)
    qs = sb.index.reshape(n, N_SUB * N_GROUP).astype(np.uint8)            # (n, 64)
    zero = (max_scale == 0)[:, 0]                                          # memset(qs, 0, quant_size)
    qs[zero] = 0
    aux[zero] = 0
    out = IQ3_XXS_BLOCK.join(d=fp16_bytes(d), qs=qs, scales_and_signs=aux.astype("<u4").view(np.uint8).reshape(n, 32))
    return from_numpy(out, like=x)


def dequantize_iq3_xxs(raw: Any) -> Any:
    """(n_blocks, 98) uint8 -> (n_blocks, 256) float32: ŵ = d·(0.5 + ls)·0.5 · grid · sign."""
    f = IQ3_XXS_BLOCK.split(raw)
    xp = namespace(raw)
    n = raw.shape[0]
    aux = xp.reshape(uint_le(xp.reshape(f.scales_and_signs, (n * N_SUB, 4))), (n, N_SUB, 1))   # (n, 8, 1)
    db = xp.reshape(fp16_field(f.d), (n, 1, 1)) * (0.5 + xp.astype(aux >> 28, xp.float32)) * 0.5  # (n, 8, 1)
    k = from_numpy(np.arange(4, dtype=np.int64), like=raw)                # (4,)
    signs7 = (aux >> (7 * k)) & 127                                        # (n, 8, 4)
    sign_bytes = xp.take(from_numpy(KSIGNS_IQ2XS.astype(np.int64), like=raw), xp.reshape(signs7, (-1,)))
    values = xp.reshape(_grid_values(IQ3XXS, f.qs), (n, N_SUB, SUB))      # (n, 8, 32)
    signs = xp.reshape(_sign_lanes(sign_bytes, n), (n, N_SUB, SUB))        # (n, 8, 32) ±1
    return xp.reshape(db * values * signs, (n, QK_K))


def _grid_values(grid: Grid, index: Any) -> Any:
    """Grid indices (n, 64) -> the 256 table values, float32 (n, 256)."""
    xp = namespace(index)
    table = from_numpy(grid.values.astype(np.float32).reshape(-1), like=index)     # (n_points*4,)
    flat = xp.reshape(xp.astype(index, xp.int64), (-1, 1)) * GROUP + from_numpy(np.arange(GROUP, dtype=np.int64),
                                                                                  like=index)
    return xp.reshape(xp.take(table, xp.reshape(flat, (-1,))), (index.shape[0], QK_K))


def _sign_lanes(sign_bytes: Any, n: int) -> Any:
    """Sign bytes (n·32 bytes, 8 weights each) -> ±1.0 per weight, (n, 256) float32."""
    xp = namespace(sign_bytes)
    bit = from_numpy(np.arange(8, dtype=np.int64), like=sign_bytes)
    neg = (xp.reshape(xp.astype(sign_bytes, xp.int64), (-1, 1)) >> bit) & 1        # (n*32, 8)
    return xp.reshape(xp.astype(1 - 2 * neg, xp.float32), (n, QK_K))


# ---------------------------------------------------------------------------------------
# IQ3_S — 3.4375 bits per weight
# ---------------------------------------------------------------------------------------

IQ3_S_BLOCK = Layout("IQ3_S", d=2, qs=64, qh=8, signs=32, scales=4)


def quantize_iq3_s(x: Any, qw: Any | None = None) -> Any:
    """x: (n_blocks, 256) float32 -> (n_blocks, 110) uint8 IQ3_S blocks (quantize_iq3_s).

    Example: a super-block whose first sub-block is empty: the codes of sub-block 1 are
    written in slot 0 (the C pointer that did not advance), qh stays in place.

        >>> x = np.zeros((1, 256), np.float32); x[0, 32:64] = 1.0
        >>> raw = quantize_iq3_s(x)
        >>> bool(raw[0, 2:10].any()), bool(raw[0, 10:18].any())
        (True, False)
    """
    x_np, w = _prepare(x, qw, "IQ3_S")
    n = x_np.shape[0]
    sb = _search(S, x_np.reshape(n * N_SUB, SUB), w.reshape(n * N_SUB, SUB))
    d, ls, _ = _super_scale(S, sb.scale.reshape(n, N_SUB))
    index = sb.index.reshape(n, N_SUB, N_GROUP)
    qh = np.packbits((index >> 8).astype(np.uint8) & 1, axis=-1, bitorder="little")[..., 0]   # (n, 8) at ib
    # qs and signs: sub-block ib goes to slot (number of non-empty sub-blocks before it)
    full = ~sb.empty.reshape(n, N_SUB)
    slot = np.cumsum(full, axis=1) - 1                                     # (n, 8)
    qs = np.zeros((n, N_SUB, N_GROUP), np.uint8)
    signs = np.zeros((n, N_SUB, 4), np.uint8)
    b, ib = np.nonzero(full)
    qs[b, slot[b, ib]] = (index[b, ib] & 255).astype(np.uint8)
    signs[b, slot[b, ib]] = sb.signs.reshape(n, N_SUB, 4)[b, ib]
    scales = (ls[:, 0::2] | (ls[:, 1::2] << 4)).astype(np.uint8)           # (n, 4): l1 | l2 << 4
    out = IQ3_S_BLOCK.join(d=fp16_bytes(d), qs=qs.reshape(n, 64), qh=qh.astype(np.uint8),
                           signs=signs.reshape(n, 32), scales=scales)
    return from_numpy(out, like=x)


def dequantize_iq3_s(raw: Any) -> Any:
    """(n_blocks, 110) uint8 -> (n_blocks, 256) float32: ŵ = d·(1 + 2·ls) · grid · sign."""
    f = IQ3_S_BLOCK.split(raw)
    xp = namespace(raw)
    n = raw.shape[0]
    k = from_numpy(np.arange(N_GROUP, dtype=np.int64), like=raw)          # (8,)
    high = (xp.reshape(xp.astype(f.qh, xp.int64), (n, N_SUB, 1)) >> k) & 1     # (n, 8, 8): bit k of qh[ib]
    index = xp.reshape(xp.astype(f.qs, xp.int64), (n, N_SUB, N_GROUP)) | (high << 8)
    scales = xp.astype(f.scales, xp.int64)                                 # (n, 4)
    ls = xp.reshape(xp.stack([scales & 0xF, scales >> 4], axis=-1), (n, N_SUB, 1))   # (n, 8, 1): low nibble first
    db = xp.reshape(fp16_field(f.d), (n, 1, 1)) * xp.astype(1 + 2 * ls, xp.float32)
    values = xp.reshape(_grid_values(IQ3S, xp.reshape(index, (n, N_SUB * N_GROUP))), (n, N_SUB, SUB))
    signs = xp.reshape(_sign_lanes(f.signs, n), (n, N_SUB, SUB))
    return xp.reshape(db * values * signs, (n, QK_K))


# {type name: (quantize_<t>, dequantize_<t>, imatrix use)}: registered in refquant.gguf.CODECS
# (ggml_quantize_requires_imatrix names IQ3_XXS? no: only IQ2_XXS, IQ2_XS, IQ1_S; both IQ3 types
# quantize without one, and weigh by it when given)
CODECS: dict = {
    "IQ3_XXS": (quantize_iq3_xxs, dequantize_iq3_xxs, "weighted"),
    "IQ3_S": (quantize_iq3_s, dequantize_iq3_s, "weighted"),
}
