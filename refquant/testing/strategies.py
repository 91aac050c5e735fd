"""Hypothesis strategies for quantization tests — each states its domain and why.

Quantizers fail at the edges, not in the bulk of a Gaussian, so the array strategies mix
ordinary values with the cases that break real kernels:

* ``zeros`` / ``constant`` blocks      — the scale is 0 or the range is empty (division by 0);
* ``outlier`` blocks                   — one huge value sets the scale for everyone else;
* ``ties``                              — values on an exact rounding midpoint (k + 0.5)·s, where
                                          half-even and half-away modes disagree;
* ``same_sign``                         — all-positive or all-negative (asymmetric ranges, ggml's
                                          signed-max trick);
* ``heavy_tails``                       — Student-t like weights, as real LLM weights are;
* ``fp16_edge``                         — magnitudes near the float16 maximum (65504) and below its
                                          subnormal range (6e-8), where a scale stored in fp16
                                          overflows or flushes to zero.

``EDGE_KINDS`` are the blocks that break *bit-exact* parity with C float code rather than
accuracy. Their structure — which lanes are +0, −0, subnormal, huge or ordinary, and the
values in those lanes — is drawn by Hypothesis lane by lane, so a failure shrinks to a
block a person can read (``[-0.0, 0.0, 0.0, ..., 1.0]``), not to a NumPy seed:

* ``signed_zeros``       — ±0 lanes (either sign, drawn per lane) among ordinary values: the
                           sign of a stored min/max depends on which zero a C loop keeps;
* ``all_signed_zeros``   — a block of only ±0 with a drawn mix of signs (first lane decides);
* ``zero_extreme``       — a same-sign block whose min (or max) is 0, held by ±0 lanes;
* ``subnormal``          — float32 subnormals (< 1.18e-38) mixed with ±0: d = max/−8 is
                           subnormal and 1/d overflows to inf in float32;
* ``fp16_overflow``      — magnitudes 1e5 … 1e20: a scale d ≈ max/8 … max/127 overflows fp16;
* ``huge``               — magnitudes 1e20 … 3e38 among ordinary values: x² and the
                           weighted sums of the searches overflow float32 to inf (and NaN).

``GGUF_KINDS = KINDS + EDGE_KINDS`` is what the GGUF parity tests draw. ``KINDS`` itself is
unchanged: formats without a C oracle (uniform, NF4, int8) bound their error only for the
ordinary kinds, and other modules draw from it by name.

All values are finite: NaN/Inf handling is tested separately as bad input.
Shapes are drawn together with the block so they are always divisible (better shrinking).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["KINDS", "EDGE_KINDS", "GGUF_KINDS", "ordinary_block", "edge_block", "seeded_edge_block", "seeded_block", "block_values", "rows",
           "float_arrays", "matrices"]

KINDS = ("normal", "zeros", "constant", "outlier", "ties", "same_sign", "heavy_tails", "fp16_edge", "uniform_int")
EDGE_KINDS = ("signed_zeros", "all_signed_zeros", "zero_extreme", "subnormal", "fp16_overflow", "huge")
GGUF_KINDS = KINDS + EDGE_KINDS

FLT_TRUE_MIN = float(np.finfo(np.float32).smallest_subnormal)  # 1.4e-45, the smallest float32 > 0
FLT_MIN = float(np.finfo(np.float32).tiny)                      # 1.18e-38, the smallest normal float32
FLT_MAX_DRAWN = float(np.float32(3e38))                          # a little below FLT_MAX = 3.4028e38
_1E20 = float(np.float32(1e20))

# (lo, hi) magnitude of the special lanes of each edge kind (float32 values: Hypothesis draws width=32)
_EDGE_MAGNITUDE = {"subnormal": (FLT_TRUE_MIN, float(np.nextafter(np.float32(FLT_MIN), np.float32(0)))),
                   "fp16_overflow": (1e5, _1E20), "huge": (_1E20, FLT_MAX_DRAWN)}


def _rng(draw) -> np.random.Generator:
    """A NumPy generator for one block's bulk values, seeded by Hypothesis (one seed per block)."""
    return np.random.default_rng(draw(st.integers(0, 2**32 - 1)))


def _sign(draw) -> float:
    return -1.0 if draw(st.booleans()) else 1.0


@st.composite
def ordinary_block(draw, kind: str, n: int, scale: float) -> np.ndarray:
    """One (n,) float64 block of a ``KINDS`` kind (see ``_ordinary_block``)."""
    return _ordinary_block(draw, kind, n, scale)


def _ordinary_block(draw, kind: str, n: int, scale: float) -> np.ndarray:
    """One (n,) float64 block of a ``KINDS`` kind, drawn with ``draw`` (no strategy object per block).

    Its structure is drawn by Hypothesis — the sign, the lane and size of an outlier, a
    constant's value, the power of two of the ties and the lane of their maximum — and its
    bulk values (normal, Student-t, integers) come from a generator seeded per block, so a
    failing block shrinks on its own and keeps the distribution of its kind.
    """
    if kind == "zeros":
        return np.zeros(n)
    if kind == "constant":
        return np.full(n, _sign(draw) * scale * draw(st.floats(0.1, 10.0)))
    if kind == "normal":
        return _rng(draw).standard_normal(n) * scale
    if kind == "same_sign":
        return np.abs(_rng(draw).standard_normal(n) * scale) * _sign(draw)
    if kind == "heavy_tails":
        return _rng(draw).standard_t(2.5, n) * scale
    if kind == "uniform_int":
        return _rng(draw).integers(-8, 8, n).astype(np.float64)
    if kind == "outlier":
        x = _rng(draw).standard_normal(n) * scale
        x[draw(st.integers(0, n - 1))] = _sign(draw) * scale * draw(st.floats(20.0, 1000.0))
        return x
    if kind == "ties":
        # integers and half-integers times a power of two: many exact midpoints for
        # scales that are themselves powers of two (absmax = 2^k * q_max cases)
        x = _rng(draw).integers(-8, 8, n) / 2.0 * 2.0 ** draw(st.integers(-6, 2))
        x[draw(st.integers(0, n - 1))] = np.abs(x).max() + 1.0 if np.any(x) else 1.0
        return x
    if kind == "fp16_edge":
        rng = _rng(draw)
        return rng.choice([-1.0, 1.0], n) * rng.choice([6e4, 6.5e4, 1e-8, 5.9e-8, 3e-5, 1.0], n) * rng.uniform(0.5, 1.0, n)
    raise ValueError(f"kind: unknown block kind {kind!r}")


def _lanes(n: int, n_choices: int) -> st.SearchStrategy:
    """(n,) int8 lane labels 0 … n_choices−1; shrinks toward all 0 (the first choice)."""
    return hnp.arrays(np.int8, n, elements=st.integers(0, n_choices - 1))


def _f32s(n: int, lo: float, hi: float) -> st.SearchStrategy:
    """(n,) float32 in [lo, hi] (lo, hi > 0 float32 values); shrinks toward lo."""
    return hnp.arrays(np.float32, n, elements=st.floats(lo, hi, width=32))


@st.composite
def edge_block(draw, kind: str, n: int) -> np.ndarray:
    """One (n,) float32 block of an ``EDGE_KINDS`` kind, its lanes drawn by Hypothesis.

    Every kind draws lane labels (which lanes are +0, −0, special or ordinary) and then
    the values of the lanes; ordinary values lie in ±[2^−4, 16], specials as the module
    docstring says.
    """
    if kind not in EDGE_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of EDGE_KINDS {EDGE_KINDS}")
    if kind == "all_signed_zeros":
        return _compose_edge(kind, draw(hnp.arrays(np.bool_, n)), None, None, None, 1.0)   # True: −0.0
    negative = draw(hnp.arrays(np.bool_, n))                              # sign of every lane
    if kind == "zero_extreme":
        labels, v = draw(_lanes(n, 3)), draw(_f32s(n, 2.0**-4, 16.0))
        return _compose_edge(kind, negative, labels, v, None, -1.0 if draw(st.booleans()) else 1.0)
    ordinary = draw(_f32s(n, 2.0**-4, 16.0))
    if kind == "signed_zeros":
        return _compose_edge(kind, negative, draw(_lanes(n, 2)), ordinary, None, 1.0)
    lo, hi = _EDGE_MAGNITUDE[kind]
    special = draw(_f32s(n, lo, hi))
    labels = draw(_lanes(n, 2 if kind == "subnormal" else 3))
    return _compose_edge(kind, negative, labels, ordinary, special, 1.0)


def seeded_edge_block(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """(n,) float32: one block of an ``EDGE_KINDS`` kind from a NumPy generator, lanes as ``edge_block``
    labels and fills them, so that a battery can try every edge class whatever Hypothesis draws.

    >>> seeded_edge_block("all_signed_zeros", np.random.default_rng(0), 4).tolist()
    [0.0, -0.0, -0.0, -0.0]
    """
    if kind not in EDGE_KINDS:
        raise ValueError(f"kind: {kind!r} is not one of EDGE_KINDS {EDGE_KINDS}")
    negative = rng.random(n) < 0.5
    n_labels = {"all_signed_zeros": 1, "zero_extreme": 3, "signed_zeros": 2, "subnormal": 2}.get(kind, 3)
    labels = rng.integers(0, n_labels, n)
    ordinary = np.exp2(rng.uniform(-4, 4, n)).astype(np.float32)          # ±[2^-4, 16] as edge_block's
    lo, hi = _EDGE_MAGNITUDE.get(kind, (1.0, 1.0))
    special = np.exp(rng.uniform(np.log(lo), np.log(hi), n)).astype(np.float32)  # log-uniform over the range
    return _compose_edge(kind, negative, labels, ordinary, special, float(rng.choice([-1.0, 1.0])))


def _compose_edge(kind: str, negative, labels, ordinary, special, side: float) -> np.ndarray:
    """The block of ``kind`` from its drawn parts (lane signs, lane labels, ordinary and special values).

    all_signed_zeros: −0 where ``negative``; zero_extreme: labels 0: +0, 1: −0, 2: side·ordinary
    (all values on one side, so 0 is the min or the max); signed_zeros: 0: a ±0 lane, 1: ±ordinary;
    subnormal: 0: ±0, 1: ±special (no ordinary lanes: they would set the scale);
    fp16_overflow / huge: 0: ±0, 1: ±special, 2: ±ordinary.
    """
    if kind == "all_signed_zeros":
        return np.where(negative, np.float32(-0.0), np.float32(0.0))
    sign = np.where(negative, np.float32(-1.0), np.float32(1.0))
    if kind == "zero_extreme":
        return np.where(labels == 0, np.float32(0.0), np.where(labels == 1, np.float32(-0.0),
                                                                np.float32(side) * ordinary)).astype(np.float32)
    if kind == "signed_zeros":
        return (np.where(labels == 0, np.float32(0.0), ordinary) * sign).astype(np.float32)
    v = np.where(labels == 0, np.float32(0.0), np.where(labels == 1, special, ordinary))
    return (v * sign).astype(np.float32)


def seeded_block(kind: str, rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    """(n,) float64 values of one block of ``kind`` (one of KINDS) from a NumPy generator: the
    same kinds as ``ordinary_block``, for fixed-seed samples outside Hypothesis (``refquant verify``
    draws its rows with it, so that a run on any machine compares the same values).

    >>> seeded_block("zeros", np.random.default_rng(0), 4, 1.0).tolist()
    [0.0, 0.0, 0.0, 0.0]
    >>> seeded_block("uniform_int", np.random.default_rng(0), 4, 1.0).tolist()
    [5.0, 2.0, 0.0, -4.0]
    """
    if kind == "normal":
        return rng.standard_normal(n) * scale
    if kind == "zeros":
        return np.zeros(n)
    if kind == "constant":
        return np.full(n, rng.choice([-1.0, 1.0]) * scale * rng.uniform(0.1, 10))
    if kind == "outlier":
        x = rng.standard_normal(n) * scale
        x[rng.integers(n)] = rng.choice([-1.0, 1.0]) * scale * rng.uniform(20, 1000)
        return x
    if kind == "ties":  # k/2 times a power of two: exact midpoints for power-of-two scales
        x = rng.integers(-8, 8, n) / 2.0 * 2.0 ** rng.integers(-6, 3)
        x[rng.integers(n)] = np.abs(x).max() + 1.0 if np.any(x) else 1.0
        return x
    if kind == "same_sign":
        return np.abs(rng.standard_normal(n) * scale) * rng.choice([-1.0, 1.0])
    if kind == "heavy_tails":
        return rng.standard_t(2.5, n) * scale
    if kind == "fp16_edge":
        return rng.choice([-1.0, 1.0], n) * rng.choice([6e4, 6.5e4, 1e-8, 5.9e-8, 3e-5, 1.0], n) * rng.uniform(0.5, 1.0, n)
    if kind == "uniform_int":
        return rng.integers(-8, 8, n).astype(np.float64)
    raise ValueError(f"kind: unknown block kind {kind!r}; expected one of {KINDS}")

@st.composite
def block_values(draw, n_blocks: int, block: int, kinds=KINDS, dtype=np.float32) -> np.ndarray:
    """(n_blocks*block,) values, each block of a drawn kind (see module docstring).

    Blocks of ``KINDS`` draw their structure (``ordinary_block``), blocks of ``EDGE_KINDS``
    their lanes (``edge_block``) from Hypothesis, block by block; the kinds are drawn with
    ``zeros`` first, so the blocks a failure does not need shrink to zeros.
    """
    scale = draw(st.sampled_from([1e-3, 0.02, 1.0, 30.0]))
    simplest_first = sorted(kinds, key=lambda k: k != "zeros")
    picks = draw(st.lists(st.sampled_from(simplest_first), min_size=n_blocks, max_size=n_blocks))
    x = np.concatenate([draw(edge_block(k, block)) if k in EDGE_KINDS else _ordinary_block(draw, k, block, scale)
                        for k in picks])
    with np.errstate(over="ignore"):
        return x.astype(dtype)


@st.composite
def rows(draw, block: int, max_rows: int = 4, max_blocks: int = 4, kinds=KINDS, dtype=np.float32) -> np.ndarray:
    """(rows, n_blocks*block) float array whose row length is a multiple of ``block``."""
    n_rows = draw(st.integers(1, max_rows))
    n_blocks = draw(st.integers(1, max_blocks))
    x = draw(block_values(n_rows * n_blocks, block, kinds=kinds, dtype=dtype))
    return x.reshape(n_rows, n_blocks * block)


def float_arrays(shape=hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=16),
                 dtype=np.float32, min_value=-1e4, max_value=1e4) -> st.SearchStrategy:
    """Finite float arrays of a drawn shape, elements bounded (no overflow in x/s)."""
    return hnp.arrays(dtype, shape, elements=st.floats(min_value, max_value, width=np.dtype(dtype).itemsize * 8,
                                                        allow_nan=False, allow_infinity=False))


@st.composite
def matrices(draw, rows_max: int = 16, cols_multiple: int = 1, cols_blocks_max: int = 8, kinds=KINDS) -> np.ndarray:
    """(rows, cols) float32 weight matrix, cols a multiple of ``cols_multiple``."""
    n_rows = draw(st.integers(1, rows_max))
    n_blocks = draw(st.integers(1, cols_blocks_max))
    x = draw(block_values(n_rows * n_blocks, cols_multiple, kinds=kinds))
    return x.reshape(n_rows, n_blocks * cols_multiple)
