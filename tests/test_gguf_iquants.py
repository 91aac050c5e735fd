"""IQ4_NL / IQ4_XS: bytes vs libggml (with and without imatrix), decoding vs libggml and gguf-py."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, target
from hypothesis import strategies as st

import refquant.gguf as rg
from refquant.gguf import iquants
from refquant.testing import strategies as rst
from refquant.testing.ggml import ggml_dequantize, ggml_quantize

from test_gguf_legacy import imatrices, random_blocks  # noqa: E402  (tests/ is on sys.path under pytest)

IQ4 = (("IQ4_NL", 32), ("IQ4_XS", 256))


@st.composite
def rows_and_imatrix(draw, block):
    x = draw(rst.rows(block=block, max_rows=3, max_blocks=3 if block == 256 else 8, kinds=rst.GGUF_KINDS))
    return x, draw(imatrices(x.shape[1]))


# --------------------------------------------------------------------------- bytes vs libggml

@pytest.mark.parametrize("qtype, block", IQ4)
@given(data=st.data())
def test_quantize_matches_libggml(qtype, block, data):
    x = data.draw(rst.rows(block=block, max_blocks=3 if block == 256 else 6, kinds=rst.GGUF_KINDS))  # ±0, huge ...
    assert np.array_equal(rg.quantize(x, qtype), ggml_quantize(x, qtype))


@pytest.mark.parametrize("qtype, block", IQ4)
@given(data=st.data())
def test_quantize_with_imatrix_matches_libggml(qtype, block, data):
    x, imatrix = data.draw(rows_and_imatrix(block))
    assert np.array_equal(rg.quantize(x, qtype, imatrix=imatrix), ggml_quantize(x, qtype, imatrix=imatrix))


@pytest.mark.parametrize("qtype", ("IQ4_NL", "IQ4_XS"))
def test_real_rows_match_libggml(qtype, real_rows):
    imatrix = np.mean(real_rows * real_rows, axis=0) + 1e-4
    assert np.array_equal(rg.quantize(real_rows, qtype), ggml_quantize(real_rows, qtype))
    assert np.array_equal(rg.quantize(real_rows, qtype, imatrix), ggml_quantize(real_rows, qtype, imatrix))


# --------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("qtype, block", IQ4)
@given(seed=st.integers(0, 2**32 - 1))
def test_dequantize_random_bytes_and_quantized(qtype, block, seed):
    import gguf
    from gguf import quants

    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, (2, 2 * block)) * 0.05).astype(np.float32)
    for raw in (random_blocks(rng, qtype, 8).reshape(2, -1), ggml_quantize(x, qtype)):
        ours = rg.dequantize(raw, qtype)
        assert np.array_equal(ours.view(np.uint32), ggml_dequantize(raw, qtype).view(np.uint32))
        theirs = quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_hand_built_iq4_nl_block():
    # d = 0.5, byte j = j | (15 − j) << 4: codes 0..15 then 15..0 -> 0.5·K[q]
    raw = np.array([list(np.float16(0.5).tobytes()) + [j | (15 - j) << 4 for j in range(16)]], np.uint8)
    K = iquants.KVALUES.astype(float)
    assert rg.dequantize(raw, "IQ4_NL").tolist() == [list(0.5 * K) + list(0.5 * K[::-1])]


def test_hand_built_iq4_xs_block():
    # d = 1; sub-block b gets ls_b = 32 + b − 4 (6 bits: low nibble in scales_l, top 2 bits in scales_h),
    # so its scale is d·(ls_b − 32) = b − 4; every code is 15 (K = 113): ŵ = (b − 4)·113.
    ls = np.arange(8) + 28
    scales_l = [(ls[2 * i] & 15) | (ls[2 * i + 1] & 15) << 4 for i in range(4)]
    scales_h = int(sum((ls[b] >> 4) << (2 * b) for b in range(8)))
    raw = np.array([list(np.float16(1.0).tobytes()) + [scales_h & 255, scales_h >> 8] + scales_l + [0xFF] * 128], np.uint8)
    expected = np.repeat((np.arange(8) - 4) * 113.0, 32)
    assert rg.dequantize(raw, "IQ4_XS").tolist() == [expected.tolist()]


def test_iq4_nl_worked_example():
    """x = 0.5·[K, K] (each level twice): the trial t = 0 gives 1/d = −127/max = 2 and an exact fit,
    so d = 0.5 is stored exactly and the block decodes to x itself."""
    x = (0.5 * np.concatenate([iquants.KVALUES, iquants.KVALUES]).astype(np.float32))[None, :]
    raw = rg.quantize(x, "IQ4_NL")
    assert raw[0, :2].view(np.float16)[0] == 0.5
    assert np.array_equal(rg.dequantize(raw, "IQ4_NL"), x)


# --------------------------------------------------------------------------- nearest level

@given(v=st.floats(-200, 200, width=32))
def test_best_index_is_the_nearest_level_ties_up(v):
    """The midpoint count equals ggml's bisection: nearest level, a tie going to the upper one."""
    K = iquants.KVALUES.astype(np.float64)
    got = int(iquants.best_index(np.array([v], np.float32))[0])
    dist = np.abs(K - v)
    nearest = np.flatnonzero(dist == dist.min())
    assert got == nearest.max()


def test_best_index_on_every_midpoint():
    mids = (iquants.KVALUES[:-1].astype(np.float32) + iquants.KVALUES[1:]) / 2
    below = np.nextafter(mids.astype(np.float32), np.float32(-np.inf))
    assert iquants.best_index(mids.astype(np.float32)).tolist() == list(range(1, 16))
    assert iquants.best_index(below).tolist() == list(range(0, 15))


# --------------------------------------------------------------------------- bounds, metamorphic, backends

@settings(max_examples=25)
@pytest.mark.parametrize("qtype, block", IQ4)
@given(data=st.data())
def test_error_within_the_level_gaps(qtype, block, data):
    """Each weight gets the level nearest to x/d_b, so |x − ŵ| ≤ |d_b|·(largest half-gap, 12) for
    weights inside the table's range, and ≤ |x| + |d_b|·127 outside it (plus float16 rounding of d)."""
    x = data.draw(rst.rows(block=block, max_blocks=2, kinds=("normal", "heavy_tails", "same_sign", "outlier")))
    w_hat = rg.dequantize(rg.quantize(x, qtype), qtype)
    sub = 32
    xb = x.reshape(-1, sub).astype(np.float64)
    wb = w_hat.reshape(-1, sub).astype(np.float64)
    # the block scale the decoder used: ŵ / K[q] for the largest |ŵ| of each block
    scale = np.abs(wb).max(1, keepdims=True) / 127.0 * 1.2 + 1e-30
    err = np.abs(xb - wb)
    target(float((err / (12 * scale)).max()), label="error / (12·scale)")
    assert np.all(err <= np.maximum(12 * scale * 127 / 113 * 1.01, np.abs(xb) + 127 * scale))


@settings(max_examples=25)
@pytest.mark.parametrize("qtype, block", IQ4)
@given(data=st.data(), k=st.integers(-3, 3))
def test_power_of_two_scaling_commutes(qtype, block, data, k):
    """Every step of the search is scale-equivariant for x -> 2^k x (the importances x² scale by 4^k,
    which cancels in Σwqx/Σwq²), so the codes stay and the scales double — while float16 keeps d normal."""
    x = data.draw(rst.rows(block=block, max_blocks=2, kinds=("normal", "heavy_tails", "same_sign")))
    blocks = x.reshape(-1, 32).astype(np.float64)
    x = (blocks / np.abs(blocks).max(1, keepdims=True) * 4.0).astype(np.float32).reshape(x.shape)
    s = np.float32(2.0**k)
    got = rg.dequantize(rg.quantize(x * s, qtype), qtype)
    assert np.array_equal(got, rg.dequantize(rg.quantize(x, qtype), qtype) * s)


@pytest.mark.parametrize("qtype", ("IQ4_NL", "IQ4_XS"))
def test_backend_parity(xp, qtype, real_rows):
    from refquant._backend import to_numpy

    x = real_rows[:4]
    raw = rg.quantize(x, qtype)
    assert np.array_equal(to_numpy(rg.dequantize(xp.asarray(raw), qtype)), rg.dequantize(raw, qtype))
    assert np.array_equal(to_numpy(rg.quantize(xp.asarray(x), qtype)), raw)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", ("IQ4_NL", "IQ4_XS"))
def test_cupy_matches_numpy(qtype, real_rows):
    cupy = pytest.importorskip("cupy")
    raw = rg.quantize(real_rows, qtype)
    assert np.array_equal(cupy.asnumpy(rg.dequantize(cupy.asarray(raw), qtype)), rg.dequantize(raw, qtype))
    assert np.array_equal(cupy.asnumpy(rg.quantize(cupy.asarray(real_rows), qtype)), raw)
