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

All values are finite: NaN/Inf handling is tested separately as bad input.
Shapes are drawn together with the block so they are always divisible (better shrinking).
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

__all__ = ["KINDS", "block_values", "rows", "float_arrays", "matrices"]

KINDS = ("normal", "zeros", "constant", "outlier", "ties", "same_sign", "heavy_tails", "fp16_edge", "uniform_int")


def _block(kind: str, rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
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
    if kind == "ties":
        # integers and half-integers times a power of two: many exact midpoints for
        # scales that are themselves powers of two (absmax = 2^k * q_max cases)
        k = rng.integers(-8, 8, n) / 2.0
        x = k * 2.0 ** rng.integers(-6, 3)
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
    raise ValueError(f"kind: unknown block kind {kind!r}")


@st.composite
def block_values(draw, n_blocks: int, block: int, kinds=KINDS, dtype=np.float32) -> np.ndarray:
    """(n_blocks*block,) values, each block of a drawn kind (see module docstring)."""
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 0.02, 1.0, 30.0]))
    picks = draw(st.lists(st.sampled_from(kinds), min_size=n_blocks, max_size=n_blocks))
    rng = np.random.default_rng(seed)
    x = np.concatenate([_block(k, rng, block, scale) for k in picks])
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
