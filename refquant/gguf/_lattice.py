"""The neighbour maps ggml builds at init for the i-quant grid searches, computed.

An i-quant encoder rounds a group of ``dim`` magnitudes to levels l ∈ {0, …, L−1} one
coordinate at a time. The rounded vector is usually *not* a grid point; the encoder then
tries the grid points nearest to it. ggml precomputes, once per grid (ggml-quants.c,
``iq2xs_init_impl`` for the 8-dim grids of IQ2_XXS, IQ2_XS, IQ2_S, IQ1_S, IQ1_M and
``iq3xs_init_impl`` for the 4-dim grids of IQ3_XXS, IQ3_S):

* the key of a level vector: ``u = Σ_i l_i << (b·i)``, b = 2 bits (IQ2, IQ1) or 3 (IQ3);
* ``kmap[u]`` = the grid index of the point with key u, for u on the grid;
* for every other key u < kmap_size, its neighbour list: the grid points whose squared
  distance ``d2(u, g) = Σ_i (2 g_i + 1 − (2 u_i + 1))²`` is among the ``nwant`` smallest
  *distinct* distances from u, ordered by (d2, grid index) — ggml's qsort with
  ``iq2_compare_func`` / ``iq3_compare_func``, which break ties by index, so the order
  is fully determined. The list lives in one flat uint16 array ``kneighbors`` as
  ``[n, j_1, …, j_n]`` at an offset, and ``kmap[u] = −(offset + 1)`` points there.

| grid (refquant.gguf._grids) | used by          | nwant | kmap_size                          |
|-----------------------------|------------------|-------|------------------------------------|
| IQ2XXS (256)                | IQ2_XXS          | 2     | 43692 (the largest 3-level key + 2) |
| IQ2XS (512)                 | IQ2_XS           | 2     | 43692                              |
| IQ2S (1024)                 | IQ2_S            | 1     | 43692                              |
| IQ1S (2048)                 | IQ1_S, IQ1_M     | 3     | 43692                              |
| IQ3XXS (256)                | IQ3_XXS          | 2     | 4096 = 8⁴                          |
| IQ3S (512)                  | IQ3_S            | 3     | 4096                               |

Keys with a level-3 digit (for the 3-level grids) get lists too, as in ggml, though no
encoder reaches them (it clamps l to 0 … 2).

API::

    nmap = neighbour_map("IQ2_XS")            # a type name of the table above, cached
    nmap = neighbour_map(grid, nwant, kmap_size)   # any Grid of refquant.gguf._grids
    nmap.kmap       (kmap_size,) int32   ggml's kmap: grid index ≥ 0, or −(offset + 1)
    nmap.flat       (total,) uint16      ggml's kneighbors: [n, j_1 … j_n] per off-grid key
    nmap.table      (kmap_size, width) int16   the same lists padded with −1, one row per key
    nmap.count      (kmap_size,) int32   n per key (0 on the grid)
    nmap.odd        (n_points, dim) float32    grid points as 2l + 1, what the searches compare
    level_key(levels, key_bits)        (..., dim) levels -> (...,) keys
    best_neighbour(nmap, u, xval, weight, scale)   vectorized ``iq2_find_best_neighbour`` /
                                                   ``iq3_find_best_neighbour`` -> grid index (m,)

Example: IQ2_S keeps the single nearest distance. The all-zero key 0 is on every IQ2 grid.

    >>> m = neighbour_map("IQ2_S"); int(m.kmap[0]), m.nwant, m.table.shape[0]
    (0, 1, 43692)

Ref: ggml-quants.c — iq2xs_init_impl, iq3xs_init_impl, iq2_find_best_neighbour,
iq3_find_best_neighbour (llama.cpp commit 01243c587feceaa5d6a6c2305535ef2f549c48b8).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import numpy as np

from . import _grids
from ._grids import Grid

__all__ = ["NeighbourMap", "neighbour_map", "level_key", "best_neighbour", "NEIGHBOUR_MAPS",
           "KMAP_SIZE_IQ2", "KMAP_SIZE_IQ3"]

# iq2xs_init_impl: kmap_size = 43692 — keys of 8 two-bit digits up to 0b10…10 = 43690, + 2
KMAP_SIZE_IQ2 = 43692
# iq3xs_init_impl: kmap_size = 4096 — every key of 4 three-bit digits
KMAP_SIZE_IQ3 = 4096
CHUNK = 16                          # list positions best_neighbour scores at once

# type -> (grid, nwant, kmap_size), as iq2xs_init_impl / iq3xs_init_impl choose them
NEIGHBOUR_MAPS: dict[str, tuple[Grid, int, int]] = {
    "IQ2_XXS": (_grids.IQ2XXS, 2, KMAP_SIZE_IQ2),
    "IQ2_XS": (_grids.IQ2XS, 2, KMAP_SIZE_IQ2),
    "IQ2_S": (_grids.IQ2S, 1, KMAP_SIZE_IQ2),
    "IQ1_S": (_grids.IQ1S, 3, KMAP_SIZE_IQ2),
    "IQ1_M": (_grids.IQ1S, 3, KMAP_SIZE_IQ2),
    "IQ3_XXS": (_grids.IQ3XXS, 2, KMAP_SIZE_IQ3),
    "IQ3_S": (_grids.IQ3S, 3, KMAP_SIZE_IQ3),
}


class NeighbourMap(NamedTuple):
    """ggml's kmap and neighbour lists of one grid (module docstring), plus a padded table."""

    grid: Grid
    nwant: int
    kmap: np.ndarray    # (kmap_size,) int32: grid index, or -(offset + 1) into flat
    flat: np.ndarray    # (total,) uint16: [n, j_1, …, j_n] per off-grid key, keys in increasing order
    table: np.ndarray   # (kmap_size, width) int16: j_1 … j_n, then -1
    count: np.ndarray   # (kmap_size,) int32: n (0 for keys on the grid)
    odd: np.ndarray     # (n_points, dim) float32: 2·level + 1 of every grid point


def level_key(levels: Any, key_bits: int) -> np.ndarray:
    """(..., dim) integer levels -> (...,) int64 keys Σ_i l_i << (key_bits·i), ggml's ``u``.

    >>> int(level_key(np.array([1, 0, 2, 0, 0, 0, 0, 0]), 2))
    33
    """
    levels = np.asarray(levels, dtype=np.int64)
    u = levels[..., 0].copy()
    for i in range(1, levels.shape[-1]):  # exact integer adds, the same as .sum(axis=-1) without NumPy's
        u += levels[..., i] << (key_bits * i)  # slow reduction over a short last axis
    return u


def _digits(keys: np.ndarray, key_bits: int, dim: int) -> np.ndarray:
    """(m,) keys -> (m, dim) digits, the inverse of level_key (any digit up to 2**key_bits - 1)."""
    return (keys[:, None] >> (key_bits * np.arange(dim))) & ((1 << key_bits) - 1)


def _neighbour_lists(grid: Grid, nwant: int, keys: np.ndarray, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """For off-grid keys (m,): the padded lists (m, width) int32 (-1 after n) and n (m,)."""
    G = grid.levels.astype(np.float32)                                         # (n_points, dim)
    G2 = (G * G).sum(axis=1)                                                   # (n_points,)
    n_points = G.shape[0]
    rows, counts = [], []
    for lo in range(0, keys.size, chunk):
        P = _digits(keys[lo:lo + chunk], grid.key_bits, grid.dim).astype(np.float32)  # (c, dim)
        # Σ (g - p)² of small integers, exact in float32: |g|² + |p|² − 2 p·g. ggml measures on
        # the odd values 2l+1, which is 4× this: the same order.
        d2 = (G2[None, :] + (P * P).sum(axis=1, keepdims=True) - 2 * (P @ G.T)).astype(np.int64)  # (c, n_points)
        # the nwant smallest distinct distances: peel off one minimum at a time
        cut = d2.min(axis=1, keepdims=True)                                    # (c, 1)
        for _ in range(nwant - 1):
            cut = np.where(d2 > cut, d2, np.iinfo(np.int64).max).min(axis=1, keepdims=True)
        keep = d2 <= cut                                                       # (c, n_points)
        # ggml's qsort order: by d2, then by grid index; the others go last
        order_key = np.where(keep, d2 * n_points + np.arange(n_points), np.iinfo(np.int64).max)
        order = np.argsort(order_key, axis=1, kind="stable")                  # (c, n_points)
        n = keep.sum(axis=1)                                                   # (c,)
        width = int(n.max())
        lists = np.where(np.arange(width) < n[:, None], order[:, :width], -1)  # (c, width)
        rows.append(lists)
        counts.append(n)
    width = max(r.shape[1] for r in rows)
    table = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=-1) for r in rows])
    return table.astype(np.int16), np.concatenate(counts).astype(np.int32)


def _build(grid: Grid, nwant: int, kmap_size: int) -> NeighbourMap:
    if nwant < 1:
        raise ValueError(f"nwant: expected at least 1 distance level, got {nwant}")
    if kmap_size <= int(grid.keys.max()):
        raise ValueError(f"kmap_size: must exceed the largest key of {grid.name} ({int(grid.keys.max())}), got {kmap_size}")
    kmap = np.full(kmap_size, -1, dtype=np.int64)
    kmap[grid.keys] = np.arange(grid.keys.size)
    off_grid = np.flatnonzero(kmap < 0)                                        # (m,) increasing keys
    lists, n = _neighbour_lists(grid, nwant, off_grid)                         # (m, width), (m,)
    # ggml's flat layout: keys in increasing order, each [n, j_1 … j_n]
    offsets = np.concatenate([[0], np.cumsum(1 + n)[:-1]])                     # (m,)
    kmap[off_grid] = -(offsets + 1)
    flat = np.empty(int((1 + n).sum()), dtype=np.uint16)
    flat[offsets] = n
    slot = offsets[:, None] + 1 + np.arange(lists.shape[1])                    # (m, width)
    used = lists >= 0
    flat[slot[used]] = lists[used]
    table = np.full((kmap_size, lists.shape[1]), -1, dtype=np.int16)
    table[off_grid] = lists
    count = np.zeros(kmap_size, dtype=np.int32)
    count[off_grid] = n
    odd = (2 * grid.levels.astype(np.float32) + 1)                             # (n_points, dim)
    for a in (kmap, flat, table, count, odd):
        a.setflags(write=False)
    return NeighbourMap(grid, nwant, kmap.astype(np.int32), flat, table, count, odd)


@functools.lru_cache(maxsize=None)
def _cached(grid_name: str, nwant: int, kmap_size: int) -> NeighbourMap:
    return _build(_grids.GRIDS[grid_name], nwant, kmap_size)


def neighbour_map(grid: str | Grid, nwant: int | None = None, kmap_size: int | None = None) -> NeighbourMap:
    """The neighbour map of a type ("IQ2_XS", table in the module docstring) or of a Grid.

    Cached per (grid name, nwant, kmap_size): a grid's content is fixed by its name. For a
    Grid, nwant must be given; kmap_size defaults to ggml's for its key width.
    """
    if isinstance(grid, str):
        name = grid.upper()
        if name not in NEIGHBOUR_MAPS:
            raise ValueError(f"grid: expected one of {', '.join(NEIGHBOUR_MAPS)} or a Grid, got {grid!r}")
        g, default_nwant, default_size = NEIGHBOUR_MAPS[name]
        return _cached(g.name, default_nwant if nwant is None else nwant, default_size if kmap_size is None else kmap_size)
    if not isinstance(grid, Grid) or grid.name not in _grids.GRIDS:
        raise TypeError(f"grid: expected a type name or a Grid of refquant.gguf._grids, got {type(grid).__name__}")
    if nwant is None:
        raise ValueError("nwant: required with a Grid (how many distinct distances to keep)")
    size = kmap_size if kmap_size is not None else (KMAP_SIZE_IQ2 if grid.key_bits == 2 else KMAP_SIZE_IQ3)
    return _cached(grid.name, int(nwant), int(size))


def best_neighbour(nmap: NeighbourMap, u: np.ndarray, xval: np.ndarray, weight: np.ndarray,
                   scale: np.ndarray) -> np.ndarray:
    """Vectorized iq2_find_best_neighbour / iq3_find_best_neighbour: (m,) off-grid keys -> (m,) grid index.

    For each group, over its neighbour list in order, ``d2 = Σ_i weight_i·(scale·q_i − xval_i)²``
    with q the odd grid values 2l+1, summed left to right in float32 as the C loop does
    ((w·diff)·diff, no fused multiply-add); a candidate replaces the best only when its d2 is
    strictly smaller (C's ``d2 < best_d2`` from FLT_MAX: the first of equal minima wins, NaN never).

    u: (m,) keys with kmap[u] < 0; xval, weight: (m, dim) float32; scale: (m,) float32.
    A group none of whose distances is below FLT_MAX gets −1: there libggml aborts
    (GGML_ASSERT), so a caller raises ValueError instead.
    The groups are visited longest list first, a chunk of ``CHUNK`` list positions at a
    time: a chunk's first smallest d2 replaces the best only if strictly smaller, which is
    the C scan's result, and a chunk touches only the groups whose lists reach into it.
    """
    u = np.asarray(u)
    n = nmap.count[u]                                                          # (m,)
    if u.size and int(n.min()) < 1:
        raise ValueError("u: every key must be off the grid (kmap[u] < 0)")
    perm = np.argsort(-n, kind="stable")                                       # longest lists first
    lists = nmap.table[u[perm]].astype(np.int64)                               # (m, width)
    n_sorted = n[perm]
    xv = np.asarray(xval, dtype=np.float32)[perm]                              # (m, dim)
    w = np.asarray(weight, dtype=np.float32)[perm]
    s = np.asarray(scale, dtype=np.float32)[perm]                              # (m,)
    best_d2 = np.full(u.shape, np.finfo(np.float32).max, dtype=np.float32)    # FLT_MAX
    best = np.full(u.shape, -1, dtype=np.int64)
    width = int(n_sorted.max()) if u.size else 0
    odd_t = np.ascontiguousarray(nmap.odd.T)                                   # (dim, n_points)
    for j0 in range(0, width, CHUNK):
        k = int(np.count_nonzero(n_sorted > j0))                               # groups with a j0-th neighbour
        cand = lists[:k, j0:j0 + CHUNK]                                        # (k, J), -1 past the end
        safe = np.maximum(cand, 0)
        d2 = np.zeros(cand.shape, dtype=np.float32)
        for i in range(odd_t.shape[0]):                                        # the C loop over i, in order
            diff = s[:k, None] * odd_t[i][safe] - xv[:k, None, i]              # (k, J)
            d2 = d2 + (w[:k, None, i] * diff) * diff
        d2 = np.where((cand >= 0) & ~np.isnan(d2), d2, np.inf)                 # NaN never wins in C
        j = np.argmin(d2, axis=1)                                              # first smallest in the chunk
        d2_min = d2[np.arange(k), j]
        better = d2_min < best_d2[:k]
        best_d2[:k] = np.where(better, d2_min, best_d2[:k])
        best[:k] = np.where(better, cand[np.arange(k), j], best[:k])
    # −1 stays where no d2 is below FLT_MAX (all NaN or overflowed): ggml's GGML_ASSERT(grid_index >= 0) aborts there
    out = np.empty_like(best)
    out[perm] = best
    return out


def first_least(a: np.ndarray) -> np.ndarray:
    """(..., n) -> (...,) the index C's scan picks: ``imin = 0; for i ≥ 1: if (a[i] < a[imin]) imin = i``.

    The rule the encoders use to pick a group's least important weight (w·x²) for the sign
    flip. It is np.argmin's first-of-equal-minima except at NaN (inf·0 when the weights
    overflow): argmin returns the first NaN, while the C comparison is false for every NaN,
    so a NaN never wins, and a NaN in lane 0 keeps lane 0.

    >>> nan = float("nan")
    >>> first_least(np.array([[3.0, nan, 1.0, 1.0], [nan, 0.0, -1.0, 2.0]], np.float32)).tolist()
    [2, 0]
    """
    nan = np.isnan(a)
    j = np.argmin(np.where(nan, np.float32(np.inf), a), axis=-1)
    return np.where(nan[..., 0], 0, j)


def check_scale(scale: np.ndarray, qtype: str, used: np.ndarray | None = None) -> None:
    """C: ``GGML_ASSERT(scale >= 0)`` after a sub-block's search. Raise where libggml aborts.

    A scale is NaN when the weighted sums overflow float32 (Σ w·x·q and Σ w·q² both inf:
    |x| around 1e19, or an imatrix near FLT_MAX); libggml aborts on such a block. ``used``
    (broadcastable to scale): the sub-blocks that reach the assertion (C skips empty ones).
    """
    bad = ~(scale >= 0)
    if used is not None:
        bad &= used
    if np.any(bad):
        raise ValueError(f"x: values too large for {qtype}'s search: a sub-block's scale is NaN (the weighted sums overflow float32: |x| or the "
                         "imatrix too large); libggml aborts there (GGML_ASSERT(scale >= 0))")
