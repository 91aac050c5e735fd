"""IQ1_S / IQ1_M: bytes vs libggml (with an imatrix; IQ1_M without too), decoding vs libggml and
gguf-py on quantized data and random bytes, the IQ1 neighbour map (nwant = 3) vs a slow loop, refusals.

libggml's first IQ1 quantization builds its neighbour map (iq2xs_init_impl, seconds); the
search itself is slow in both libraries, so the example counts are small.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import refquant.gguf as rg
from refquant.gguf import iq1
from refquant.gguf._grids import IQ1S
from refquant.gguf._lattice import neighbour_map
from refquant.testing import strategies as rst
from refquant.testing.ggml import ggml_dequantize, ggml_quantize, ggml_quantize_or_abort

from test_gguf_legacy import imatrices  # noqa: E402  (tests/ is on sys.path under pytest)

IQ1 = ("IQ1_S", "IQ1_M")
# the searches are slow: a dozen rows per test in CI and by default, 300 with HYPOTHESIS_PROFILE=thorough
N_EXAMPLES = 300 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 12
FEW = settings(max_examples=N_EXAMPLES)
TOO_LARGE = "values too large"         # refquant's refusal where libggml aborts or reads out of bounds


def _id(qtype: str) -> int:
    return rg.ggml_type(qtype).id


def _check_against_libggml(x, qtype, imatrix):
    """Our bytes equal libggml's — or, for rows whose weighted sums overflow float32, our one
    documented ValueError, and then libggml must abort on the same row (run in a forked child).
    (A constant row of 8.15e17 with an ordinary imatrix is such a row: the split sums reach inf.)"""
    try:
        ours = rg.quantize(x, qtype, imatrix=imatrix)
    except ValueError as e:
        assert TOO_LARGE in str(e), str(e)
        assert ggml_quantize_or_abort(x, _id(qtype), imatrix) is None, f"refused where libggml does not abort: {e}"
        return
    assert np.array_equal(ours, ggml_quantize(x, _id(qtype), imatrix))


# --------------------------------------------------------------------------- bytes vs libggml

@pytest.mark.parametrize("qtype", IQ1)
@FEW
@given(data=st.data())
def test_quantize_with_imatrix_matches_libggml(qtype, data):
    x = data.draw(rst.rows(block=256, max_rows=2, max_blocks=2, kinds=rst.GGUF_KINDS))  # ±0, subnormal, huge ...
    _check_against_libggml(x, qtype, data.draw(imatrices(x.shape[1])))


@FEW
@given(x=rst.rows(block=256, max_rows=2, max_blocks=2, kinds=rst.GGUF_KINDS))
@example(x=np.ones((1, 256), np.float32))    # ties of the shift choice: x_p and x_m fit exactly
def test_iq1_m_without_imatrix_matches_libggml(x):
    _check_against_libggml(x, "IQ1_M", None)


@pytest.mark.parametrize("qtype", IQ1)
def test_real_rows_match_libggml(qtype, real_rows):
    rows = real_rows[:4]                                                    # (4, 1536) real weights
    imatrix = np.mean(real_rows * real_rows, axis=0) + 1e-4
    assert np.array_equal(rg.quantize(rows, qtype, imatrix), ggml_quantize(rows, _id(qtype), imatrix))
    if qtype == "IQ1_M":
        assert np.array_equal(rg.quantize(rows, qtype), ggml_quantize(rows, _id(qtype)))


def test_iq1_m_with_and_without_imatrix_differ(real_rows):
    # the imatrix reaches the search: the bytes change (else "weighted" would be "ignored")
    rows = real_rows[:2]
    imatrix = np.linspace(0.0, 4.0, rows.shape[1], dtype=np.float32) ** 2
    assert not np.array_equal(rg.quantize(rows, "IQ1_M", imatrix), rg.quantize(rows, "IQ1_M"))


# --------------------------------------------------------------------------- decoding

def _random_blocks(rng: np.random.Generator, qtype: str, n_blocks: int, finite: bool) -> np.ndarray:
    """Random bytes; with ``finite`` the fp16 scale (IQ1_S's d; IQ1_M's d spread over the
    scales' top nibbles) is replaced by a random finite half."""
    t = rg.ggml_type(qtype)
    raw = rng.integers(0, 256, (n_blocks, t.type_size), dtype=np.uint8)
    if finite:
        h = rng.integers(0, 0x7C00, n_blocks) | (rng.integers(0, 2, n_blocks) << 15)   # (n,) finite halves
        if qtype == "IQ1_S":
            raw[:, 0], raw[:, 1] = h & 0xFF, h >> 8
        else:                                   # nibble k of d is the top nibble of scale word k (byte 49+2k)
            for k in range(4):
                col = iq1.IQ1_M_BLOCK.offset("scales") + 2 * k + 1
                raw[:, col] = (raw[:, col] & 0x0F) | (((h >> (4 * k)) & 0xF) << 4).astype(np.uint8)
    return raw


@pytest.mark.parametrize("qtype", IQ1)
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1), finite=st.booleans())
def test_dequantize_random_bytes(qtype, seed, finite):
    import gguf
    from gguf import quants

    raw = _random_blocks(np.random.default_rng(seed), qtype, 8, finite).reshape(2, -1)
    ours = rg.dequantize(raw, qtype)
    assert np.array_equal(ours.view(np.uint32), ggml_dequantize(raw, _id(qtype)).view(np.uint32))
    if finite:                                  # gguf-py computes in float32 too (inf·0 would be its own NaN)
        theirs = quants.dequantize(raw, gguf.GGMLQuantizationType[qtype]).astype(np.float32)
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("qtype", IQ1)
def test_dequantize_quantized_matches_libggml(qtype, rng):
    x = (rng.standard_t(3, (2, 512)) * 0.05).astype(np.float32)
    raw = ggml_quantize(x, _id(qtype), rng.gamma(0.7, 1.0, 512).astype(np.float32))
    assert np.array_equal(rg.dequantize(raw, qtype).view(np.uint32), ggml_dequantize(raw, _id(qtype)).view(np.uint32))


def test_hand_built_iq1_s_block():
    # d = 0.5; block b: s_b = b % 8, δ = −Δ for odd b; group g has index g (qs[g] = g, no high bits):
    # ŵ = 0.5·(2 s_b + 1)·(iq1s_grid[g] + δ_b)
    qh = [(b % 8) << 12 | (0x8000 if b % 2 else 0) for b in range(8)]
    raw = np.array([list(np.float16(0.5).tobytes()) + list(range(32)) + [v for h in qh for v in (h & 255, h >> 8)]],
                   np.uint8)
    grid = IQ1S.values.astype(np.float64)
    expected = [0.5 * (2 * (g // 4 % 8) + 1) * (grid[g, j] + (-0.125 if g // 4 % 2 else 0.125))
                for g in range(32) for j in range(8)]
    assert rg.dequantize(raw, "IQ1_S")[0].tolist() == expected


def test_hand_built_iq1_m_block():
    # d = 2.0 (fp16 0x4000: nibbles 0, 0, 0, 4 in the scale words' tops); every s_b = 1 (scale 3);
    # group g: qs = 0, qh nibble 0x9 for even g (index 1 << 8 = 256, δ = −Δ), 0x0 for odd g (index 0, +Δ)
    sc = [(0b001001001001) | (((0x4000 >> (4 * k)) & 0xF) << 12) for k in range(4)]
    raw = np.array([[0] * 32 + [0x09] * 16 + [v for s in sc for v in (s & 255, s >> 8)]], np.uint8)
    grid = IQ1S.values.astype(np.float64)
    expected = [6.0 * (grid[256 if g % 2 == 0 else 0, j] + (-0.125 if g % 2 == 0 else 0.125))
                for g in range(32) for j in range(8)]
    assert rg.dequantize(raw, "IQ1_M")[0].tolist() == expected


# --------------------------------------------------------------------------- the neighbour map

def _slow_neighbours(key: int) -> list[int]:
    """iq2xs_init_impl for one key, as loops: grid points by (d², j), those at the 3 smallest d²."""
    pos = [2 * ((key >> (2 * k)) & 3) + 1 for k in range(8)]
    d2 = sorted((sum((2 * int(l) + 1 - p) ** 2 for l, p in zip(IQ1S.levels[j], pos)), j) for j in range(2048))
    wanted = sorted({d for d, _ in d2})[:3]
    return [j for d, j in d2 if d in wanted]


@settings(max_examples=8)
@given(codes=st.lists(st.integers(0, 2), min_size=8, max_size=8))
@example(codes=[1] * 8)                          # the centre of the cube: not a grid point
def test_neighbours_match_a_slow_loop(codes):
    key = sum(c << (2 * k) for k, c in enumerate(codes))
    nb = neighbour_map("IQ1_S")                                           # the map IQ1's search reads
    i = int(nb.kmap[key])
    if i >= 0:
        assert int(IQ1S.keys[i]) == key                                   # on the grid: its own index
    else:
        row = nb.table[key]
        assert row[row >= 0].tolist() == _slow_neighbours(key)


# --------------------------------------------------------------------------- metamorphic, backends

@pytest.mark.parametrize("qtype", IQ1)
@FEW
@given(data=st.data(), k=st.integers(-4, 4))
def test_power_of_two_scaling_scales_the_decoded_weights(qtype, data, k):
    # x·2^k (and the weights w ∝ |x|, σ) scale every sum by a power of two: the same codes and
    # s_b, and d·2^k exactly while d stays a normal fp16 — so the decoded block scales by 2^k
    x = data.draw(rst.rows(block=256, max_rows=1, max_blocks=1, kinds=("normal", "heavy_tails", "outlier", "ties")))
    x = x / np.float32(max(float(np.abs(x).max()), 1e-30))                  # |x| ≤ 1: d ≈ 1/15 … stays normal
    imatrix = data.draw(imatrices(256)) + np.float32(0.01)
    dq = rg.dequantize(rg.quantize(x, qtype, imatrix), qtype)
    dq2 = rg.dequantize(rg.quantize(np.ldexp(x, k), qtype, imatrix), qtype)
    assert np.array_equal(dq2, np.ldexp(dq, k))


@pytest.mark.parametrize("qtype", IQ1)
def test_backends_decode_and_encode_alike(qtype, xp, rng):
    from refquant._backend import to_numpy

    x = rng.standard_normal((2, 256)).astype(np.float32)
    imatrix = rng.gamma(0.7, 1.0, 256).astype(np.float32)
    raw = rg.quantize(x, qtype, imatrix)
    assert np.array_equal(to_numpy(rg.quantize(xp.asarray(x), qtype, xp.asarray(imatrix))), raw)
    assert np.array_equal(to_numpy(rg.dequantize(xp.asarray(raw), qtype)), rg.dequantize(raw, qtype))


# --------------------------------------------------------------------------- refusals

def test_requires_imatrix_as_libggml_says():
    import ctypes

    from refquant.testing.ggml import lib

    requires = lib().ggml_quantize_requires_imatrix
    requires.restype, requires.argtypes = ctypes.c_bool, [ctypes.c_int]
    assert [bool(requires(_id(t))) for t in IQ1] == [rg.codec(t).imatrix == "required" for t in IQ1] == [True, False]
    with pytest.raises(ValueError, match="imatrix"):
        rg.quantize(np.ones((1, 256), np.float32), "IQ1_S")
    with pytest.raises(ValueError, match="qw"):
        iq1.quantize_iq1_s(np.ones((1, 256), np.float32))


@pytest.mark.parametrize("qtype", IQ1)
@pytest.mark.parametrize("big", [1e20, 3e38])
def test_overflowing_rows_are_refused(qtype, big):
    # one lane of 1e20 among 0.5s: x² = inf, a split's scale is inf/inf = NaN, and libggml aborts
    # (GGML_ASSERT(scale >= 0), checked in a subprocess); refquant refuses with one ValueError
    x = np.full((1, 256), 0.5, np.float32)
    x[0, 5] = big
    with pytest.raises(ValueError, match=TOO_LARGE):
        rg.quantize(x, qtype, np.ones(256, np.float32))


@pytest.mark.parametrize("qtype", IQ1)
def test_large_but_finite_rows_match_libggml(qtype):
    # 1e15: x² = 1e30 and the split sums stay finite; libggml and refquant give the same bytes
    x = np.full((1, 256), 0.5, np.float32)
    x[0, ::3] = 1e15
    assert np.array_equal(rg.quantize(x, qtype, np.ones(256, np.float32)),
                          ggml_quantize(x, _id(qtype), np.ones(256, np.float32)))
