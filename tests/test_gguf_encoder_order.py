"""The fast paths of the GGUF encoders keep C's float32 order (refquant.gguf._bytes, _search).

The encoders batch their work (whole-array reductions, all candidate scales of a search
at once); each fast path is checked here against the plain loop it replaces, on data
built so that any other order of the float32 additions rounds differently.
"""

from __future__ import annotations

import numpy as np
import pytest

from refquant.gguf._bytes import column_sum

F = np.float32


def _loop_column_sum(t: np.ndarray, from_zero: bool) -> np.ndarray:
    """C's ``s = 0; for i: s += t[i]`` (or ``s = t[0]; for i >= 1``), one row at a time."""
    s = t[0].copy() + F(0.0) if from_zero else t[0].copy()
    for i in range(1, t.shape[0]):
        s = (s + t[i]).astype(F)
    return s


def _order_sensitive(rng: np.random.Generator, n: int, B: int) -> np.ndarray:
    """(n, B) float32 whose sums depend on the order: magnitudes spread over 11 decades,
    signed zeros, and in column 0 a cancelling pair that a pairwise sum would pair first."""
    t = rng.standard_normal((n, B)) * 10.0 ** rng.integers(-4, 7, (n, B))
    t[rng.random((n, B)) < 0.1] = -0.0
    t[:, 0] = 1.0
    t[0, 0], t[n - 1, 0] = 1e8, -1e8                   # sequential: 1e8 absorbs the ones, then 0
    return t.astype(F)


@pytest.mark.parametrize("n", [2, 8, 16, 17, 32, 256])
@pytest.mark.parametrize("B", [1, 2, 3, 8, 1000, 8193])
@pytest.mark.parametrize("from_zero", [True, False])
def test_column_sum_is_the_running_sum(n, B, from_zero):
    t = _order_sensitive(np.random.default_rng(n * 10007 + B), n, B)
    got = column_sum(t, from_zero)
    assert got.view(np.int32).tolist() == _loop_column_sum(t, from_zero).view(np.int32).tolist()
    assert got[0] == 0.0                                # the pairwise order would keep n - 2 ones


def test_column_sum_of_negative_zeros_keeps_c_signs():
    t = np.full((4, 3), -0.0, F)
    assert np.signbit(column_sum(t)).tolist() == [False] * 3
    assert np.signbit(column_sum(t, from_zero=False)).tolist() == [True] * 3


def test_column_sum_of_a_transposed_view_is_still_sequential():
    t = _order_sensitive(np.random.default_rng(5), 64, 4)
    view = np.asfortranarray(t)                         # axis 0 is now the fast one
    assert column_sum(view).view(np.int32).tolist() == _loop_column_sum(t, True).view(np.int32).tolist()
