"""The k-quant scale searches (refquant.gguf._search) against libggml and against C semantics.

The searches are ``static`` in ggml-quants.c, so libggml cannot be asked for them directly.
Two of them write their results straight into a block, though: the imatrix paths of Q4_0
(``make_qx_quants(32, 8, x, L, 1, weight)`` -> d = fp16(scale), nibbles L) and Q4_1
(``make_qkx3_quants(32, 15, ..., -0.9, 0.05, 36, false)`` -> d = fp16(scale), m = fp16(-the_min)),
with weight = qw·sqrt(sigma2 + x²), sigma2 = Σx²/n_per_row (a sequential sum over the row).
Rebuilding those blocks from our search output and comparing bytes tests the searches.
The k-quant tests (test_gguf_kquants.py) exercise every search through whole blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refquant._rounding import to_fp16
from refquant.gguf._bytes import sequential_sum
from refquant.gguf._search import (
    make_q3_quants, make_qkx2_quants, make_qkx3_quants, make_qp_quants, make_qx_quants, nearest_int,
)
from refquant.testing import strategies as st_rq
from refquant.testing.ggml import ggml_quantize


def _c_nearest_int(f: np.ndarray) -> np.ndarray:
    """ggml's nearest_int literally: float32 add of the magic number, then the bit pattern."""
    val = (np.asarray(f, np.float32) + np.float32(12582912.0)).astype(np.float32)
    bits = val.view(np.int32)
    return ((bits & 0x007FFFFF) - 0x00400000).astype(np.float32)


@st.composite
def row_and_imatrix(draw, block: int):
    """A (rows, n) row batch and a positive importance vector (n,) with some zeros."""
    x = draw(st_rq.rows(block=block, max_rows=3, max_blocks=4))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    qw = rng.uniform(0.0, 4.0, x.shape[1]).astype(np.float32) ** 2
    qw[rng.random(x.shape[1]) < 0.1] = 0.0
    return x, qw


def _imatrix_weights(x: np.ndarray, qw: np.ndarray) -> np.ndarray:
    """weight = qw·sqrt(sigma2 + x²), sigma2 = (Σx² sequential over the row)/n_per_row, in float32."""
    sigma2 = sequential_sum(x * x) / np.float32(x.shape[1])          # (rows, 1)
    return (qw[None, :] * np.sqrt(sigma2 + x * x)).astype(np.float32)


def _fp16_bytes(v: np.ndarray) -> np.ndarray:
    return to_fp16(np.asarray(v, np.float32)).astype(np.float16).view(np.uint8).reshape(-1, 2)


# ---------------------------------------------------------------------------------------
# nearest_int and sequential_sum: C semantics
# ---------------------------------------------------------------------------------------

def test_nearest_int_ties_to_even_by_hand():
    f = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 2.6, -2.4, 0.49999997], np.float32)
    assert nearest_int(f).tolist() == [0, 2, 2, 0, -2, 3, -2, 0]


@given(st.lists(st.floats(-4194303, 4194303, width=32), min_size=1, max_size=64))
def test_nearest_int_matches_magic_number_in_range(vals):
    f = np.array(vals, np.float32)
    assert np.array_equal(nearest_int(f), _c_nearest_int(f))
    assert np.array_equal(nearest_int(f), np.rint(f))


@given(st.lists(st.floats(width=32, allow_nan=True, allow_infinity=True), min_size=1, max_size=64))
def test_nearest_int_matches_bit_pattern_everywhere(vals):
    # asserts are off in release builds: libggml then returns the mantissa field - 2**22
    f = np.array(vals, np.float32)
    assert np.array_equal(nearest_int(f), _c_nearest_int(f))


@given(st.lists(st.floats(-1e6, 1e6, width=32), min_size=1, max_size=40))
def test_sequential_sum_is_c_running_sum(vals):
    t = np.array(vals, np.float32)
    s = np.float32(0.0)
    for v in t:  # the obvious C loop
        s = np.float32(s + v)
    assert sequential_sum(t[None, :]).tobytes() == s.tobytes()


def test_sequential_sum_of_negative_zeros_is_positive_zero():
    assert sequential_sum(np.array([[-0.0, -0.0]], np.float32)).tobytes() == np.float32(0.0).tobytes()


# ---------------------------------------------------------------------------------------
# parity with libggml through the Q4_0 / Q4_1 imatrix blocks
# ---------------------------------------------------------------------------------------

@given(row_and_imatrix(block=32))
def test_make_qx_quants_matches_libggml_q4_0_imatrix(data):
    x, qw = data
    rows = x.shape[0]
    weight = _imatrix_weights(x, qw)
    d, L = make_qx_quants(x.reshape(-1, 32), 8, 1, weight.reshape(-1, 32))          # (B,), (B, 32)
    L = L.astype(np.uint8)
    block = np.concatenate([_fp16_bytes(d), L[:, :16] | (L[:, 16:] << 4)], axis=1)  # (B, 18)
    assert np.array_equal(block.reshape(rows, -1), ggml_quantize(x, "Q4_0", qw))


@given(row_and_imatrix(block=32))
def test_make_qkx3_quants_matches_libggml_q4_1_imatrix(data):
    x, qw = data
    rows = x.shape[0]
    weight = _imatrix_weights(x, qw)
    d, the_min, L = make_qkx3_quants(x.reshape(-1, 32), 15, weight.reshape(-1, 32), -0.9, 0.05, 36, False)
    block = np.concatenate([_fp16_bytes(d), _fp16_bytes(-the_min), L[:, :16] | (L[:, 16:] << 4)], axis=1)
    assert np.array_equal(block.reshape(rows, -1), ggml_quantize(x, "Q4_1", qw))


# ---------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------

@given(st_rq.rows(block=16, max_rows=2))
def test_codes_in_range(x):
    b = x.reshape(-1, 16)
    w = np.abs(b)
    assert make_qx_quants(b, 32, 1)[1].max() <= 63
    assert make_q3_quants(b, 4, True)[1].max() <= 7
    _, m, L = make_qkx2_quants(b, 3, w, -0.5, 0.1, 15, True)
    assert L.max() <= 3 and np.all(m >= 0)
    _, L = make_qp_quants(np.abs(b), 15, np.ones_like(b))
    assert L.max() <= 15


def test_zero_block_gives_zero_scale():
    z = np.zeros((2, 16), np.float32)
    assert make_qx_quants(z, 32, 1)[0].tolist() == [0, 0]
    assert make_q3_quants(z, 4, True)[0].tolist() == [0, 0]
    assert make_qkx3_quants(z, 15, None, -0.9, 0.05, 36, False)[0].tolist() == [0, 0]
    assert make_qp_quants(z, 63, np.ones_like(z))[0].tolist() == [0, 0]


def test_make_qkx2_quants_needs_weights():
    with pytest.raises(ValueError, match="weights"):
        make_qkx2_quants(np.ones((1, 16), np.float32), 3, None, -0.5, 0.1, 15, True)


def test_first_largest_magnitude_sets_the_sign():
    # [-3, 3]: C keeps the first of equal |x| (strict '>'), so max = -3 and iscale = -nmax/-3 > 0
    x = np.array([[-3.0, 3.0] + [0.0] * 14], np.float32)
    scale, L = make_qx_quants(x, 4, 0)
    iscale = np.float32(-4) / np.float32(-3)                 # +4/3
    assert scale[0] == np.float32(1) / iscale
    # -3·4/3 = -4 -> code -4 + 4 = 0;  3·4/3 = 4 -> clamped to nmax-1 = 3 -> 3 + 4 = 7
    assert L[0, :2].tolist() == [0, 7]


# ---------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------

def test_searches_backend_parity(xp):
    from refquant._backend import from_numpy, to_numpy

    rng = np.random.default_rng(1)
    x = (rng.standard_t(3, (64, 32)) * 0.1).astype(np.float32)
    w = (np.abs(x) + 0.05).astype(np.float32)
    xa, wa = from_numpy(x, xp=xp), from_numpy(w, xp=xp)
    for fn, args in [
        (make_qx_quants, (x, 16, 1, w)),
        (make_q3_quants, (x[:, :16], 4, True)),
        (make_qkx2_quants, (x, 31, w, -0.5, 0.1, 15, False)),
        (make_qkx3_quants, (x, 15, w, -0.9, 0.05, 36, False)),
        (make_qp_quants, (np.abs(x[:, :8]), 63, w[:, :8])),
    ]:
        ref = fn(*args)
        conv = tuple(from_numpy(a, xp=xp) if isinstance(a, np.ndarray) else a for a in args)
        got = fn(*conv)
        for r, g in zip(ref, got):
            assert np.array_equal(to_numpy(g), r), fn.__name__


# ---------------------------------------------------------------------------------------
# slow obvious loops: one block at a time, one float32 operation at a time
# ---------------------------------------------------------------------------------------
# The vectorized searches against plain scalar transcriptions of the algorithms, written
# for reading: every step rounds to float32 (F), sums run left to right, ties keep the
# earlier candidate. They double the libggml parity above for paths that have no direct
# libggml block to compare with (make_q3_quants, make_qp_quants, make_qkx2_quants alone).

F = np.float32


def _rint(v) -> int:
    return int(np.rint(F(v)))       # nearest_int inside its exact range: round half to even


def loop_make_qx_quants(x, nmax, w):
    """Symmetric codes, 19 candidate scales, weighted least squares (weights w given)."""
    n = len(x)
    big = max(range(n), key=lambda i: (abs(x[i]), -i))          # first element of largest |x|
    vmax = x[big]
    if abs(vmax) < F(1e-15):
        return F(0), [0] * n

    def fit(iscale):
        ls = [min(max(_rint(F(iscale * x[i])), -nmax), nmax - 1) for i in range(n)]
        sumlx = sumll = F(0)
        for i in range(n):
            sumlx = F(sumlx + F(F(w[i] * x[i]) * F(ls[i])))
            sumll = F(sumll + F(F(w[i] * F(ls[i])) * F(ls[i])))
        return ls, sumlx, sumll

    ls, sumlx, sumll = fit(F(F(-nmax) / vmax))
    scale = F(sumlx / sumll) if sumll != 0 else F(0)
    best = F(scale * sumlx)
    for k in [-9, -8, -7, -6, -5, -4, -3, -2, -1, 1, 2, 3, 4, 5, 6, 7, 8, 9]:
        cand, cx, c2 = fit(F(-F(F(nmax) + F(F(0.1) * F(k))) / vmax))
        if c2 > 0 and F(cx * cx) > F(best * c2):
            ls, scale = cand, F(cx / c2)
            best = F(scale * cx)
    return scale, [l + nmax for l in ls]


def loop_make_qkx(x, nmax, w, rmin, rdelta, nstep, use_mad):
    """Affine codes with a min, candidate scales refit by 2x2 least squares (weights w given)."""
    n = len(x)
    lo, hi = min(x), max(x)
    sum_w, sum_x = w[0], F(w[0] * x[0])
    for i in range(1, n):
        sum_w = F(sum_w + w[i])
        sum_x = F(sum_x + F(w[i] * x[i]))
    lo = min(lo, F(0))
    if hi == lo:
        return F(0), F(-lo), [0] * n

    def codes(iscale, m):
        return [min(max(_rint(F(iscale * F(x[i] - m))), 0), nmax) for i in range(n)]

    def err(s, m, ls):
        e = F(0)
        for i in range(n):
            d = F(F(F(s * F(ls[i])) + m) - x[i])
            e = F(e + F(w[i] * (abs(d) if use_mad else F(d * d))))
        return e

    iscale = F(F(nmax) / F(hi - lo))
    scale = F(F(1) / iscale)
    ls = codes(iscale, lo)
    best = err(scale, lo, ls)
    for k in range(nstep + 1):
        cand = codes(F(F(F(F(rmin) + F(F(rdelta) * F(k))) + F(nmax)) / F(hi - lo)), lo)
        sl = sl2 = sxl = F(0)
        for i in range(n):
            wl = F(w[i] * F(cand[i]))
            sl, sl2, sxl = F(sl + wl), F(sl2 + F(wl * F(cand[i]))), F(sxl + F(wl * x[i]))
        det = F(F(sum_w * sl2) - F(sl * sl))
        if not det > 0:
            continue
        s = F(F(F(sum_w * sxl) - F(sum_x * sl)) / det)
        m = F(F(F(sl2 * sum_x) - F(sl * sxl)) / det)
        if m > 0:
            s, m = F(sxl / sl2), F(0)
        e = err(s, m, cand)
        if e < best:
            ls, best, scale, lo = cand, e, s, m
    return scale, F(-lo), ls


@given(st_rq.rows(block=32, max_rows=1, max_blocks=2), st.integers(0, 2**16))
def test_vectorized_searches_match_the_slow_loops(x, seed):
    blocks = x.reshape(-1, 32)
    w = (np.random.default_rng(seed).uniform(0.0, 2.0, blocks.shape) * np.abs(blocks) + 0.01).astype(np.float32)
    with np.errstate(all="ignore"):
        d, L = make_qx_quants(blocks, 16, 1, w)
        s2, m2, L2 = make_qkx2_quants(blocks, 31, w, -0.5, 0.1, 15, False)
        s3, m3, L3 = make_qkx3_quants(blocks, 3, w, -0.9, 0.05, 36, True)
        for b in range(blocks.shape[0]):
            xb, wb = [F(v) for v in blocks[b]], [F(v) for v in w[b]]
            ds, Ls = loop_make_qx_quants(xb, 16, wb)
            assert d[b].tobytes() == F(ds).tobytes() and L[b].tolist() == Ls
            for (s, m, LL), args in (((s2, m2, L2), (31, wb, -0.5, 0.1, 15, False)),
                                     ((s3, m3, L3), (3, wb, -0.9, 0.05, 36, True))):
                ls_, lm_, LLs = loop_make_qkx(xb, *args)
                assert (s[b].tobytes(), m[b].tobytes(), LL[b].tolist()) == (F(ls_).tobytes(), F(lm_).tobytes(), LLs)
