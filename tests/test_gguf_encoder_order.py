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


# ---------------------------------------------------------------------------------------
# signed absmax from extremes, clamp, the uint8 store, the descent's skipped blocks
# ---------------------------------------------------------------------------------------

def _edge_blocks(rng: np.random.Generator, B: int, n: int) -> np.ndarray:
    """(B, n) blocks with ties of +a and −a in either order, all-zero blocks of either sign,
    a NaN block and plain random ones."""
    x = rng.standard_normal((B, n)).astype(F)
    x[0, :] = 0.0
    x[1, :] = -0.0
    x[2, 3], x[2, 7] = 5.0, -5.0                        # tie, + first
    x[3, 3], x[3, 7] = -5.0, 5.0                        # tie, − first
    x[4, :2] = [-0.0, 0.0]
    return x


@pytest.mark.parametrize("with_nan", [False, True])
def test_signed_absmax_of_matches_signed_absmax(with_nan):
    from refquant.gguf._bytes import signed_absmax
    from refquant.gguf._search import signed_absmax_of
    x = _edge_blocks(np.random.default_rng(3), 64, 16)
    if with_nan:
        x[5, 2] = np.nan
    plain = x[5:, :] if not with_nan else x[4:, :]      # no tie: the fast path itself
    for v in (x, plain):
        for axis in (0, 1):
            ref = signed_absmax(v, axis=axis)
            got = signed_absmax_of(v, np.max(v, axis=axis, keepdims=True), np.min(v, axis=axis, keepdims=True), axis)
            for r, g in zip(ref, got):
                assert np.asarray(g).view(np.int32).tolist() == np.asarray(r).view(np.int32).tolist()


def test_block_signed_absmax_keeps_the_first_of_a_tie():
    from refquant.gguf.legacy import block_signed_absmax
    x = _edge_blocks(np.random.default_rng(4), 8, 32)
    got = block_signed_absmax(x)[:4, 0]
    assert got.tolist() == [0.0, 0.0, 5.0, -5.0] and not np.signbit(got[:2]).any()


def test_clamp_with_an_upper_bound_alone_is_the_c_min():
    from refquant.gguf._search import clamp
    v = np.float32([np.nan, -0.0, 0.0, np.inf, -np.inf, 15.0, 16.0, -3.0, 1e30, -1e30])
    # the fast path clips from −inf; it must give np.minimum's bits (the former path), NaN and −0.0 included
    assert clamp(v, None, 15.0).view(np.int32).tolist() == np.minimum(v, F(15.0)).view(np.int32).tolist()


def test_store_u8_is_the_low_byte():
    from refquant.gguf.legacy import _store_u8
    q = np.arange(-128, 256, dtype=np.float32)
    assert _store_u8(q).tolist() == [int(v) % 256 for v in q]


def test_q3_descent_skips_only_blocks_it_cannot_move():
    from refquant.gguf import _search
    x = (np.random.default_rng(6).standard_t(3, (512, 16)) * 0.05).astype(F)
    x[::7] *= -1.0                                       # both signs of the largest weight
    original = _search._may_descend
    seen = []
    try:
        _search._may_descend = lambda terms: seen.append(original(terms)) or seen[-1]
        got = _search.make_q3_quants(x, 4, True)
        _search._may_descend = lambda terms: np.ones(terms.shape[1], bool)  # every block in the descent
        full = _search.make_q3_quants(x, 4, True)
    finally:
        _search._may_descend = original
    assert 0 < int(seen[0].sum()) < x.shape[0]          # the filter skips some blocks, not all
    assert got[0].view(np.int32).tolist() == full[0].view(np.int32).tolist()
    assert np.array_equal(got[1], full[1])
