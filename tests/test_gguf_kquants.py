"""K-quants Q2_K … Q8_K (refquant.gguf.kquants): bytes identical to libggml, decoding identical
to libggml and gguf-py, bounds, metamorphic properties, backends, bad input.

Oracles: ``ggml_quantize_chunk`` (refquant.testing.ggml.ggml_quantize) for Q2_K … Q6_K with
and without an importance matrix; Q8_K is not offered by ggml_quantize_chunk, so its
oracle is the exported ``quantize_row_q8_K_ref`` / ``dequantize_row_q8_K``.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant._backend import from_numpy, to_numpy
from refquant.gguf import kquants as K
from refquant.testing import strategies as st_rq
from refquant.testing.ggml import ggml_dequantize, ggml_dequantize_row, ggml_quantize, ggml_quantize_row_ref

TYPES = ("Q4_K", "Q6_K", "Q5_K", "Q3_K", "Q2_K", "Q8_K")
IMATRIX = ("Q4_K", "Q6_K", "Q5_K", "Q3_K", "Q2_K")


def _quantize(t: str):
    return getattr(K, f"quantize_{t.lower()}")


def _dequantize(t: str):
    return getattr(K, f"dequantize_{t.lower()}")


def rq_quantize(x: np.ndarray, t: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    """Rows (R, n) -> (R, row_bytes) through the block functions (imatrix broadcast over rows)."""
    blocks = x.reshape(-1, K.QK_K)
    qw = None if imatrix is None else np.broadcast_to(imatrix, x.shape).reshape(-1, K.QK_K)
    return np.asarray(_quantize(t)(blocks, qw)).reshape(x.shape[0], -1)


def ggml_bytes(x: np.ndarray, t: str, imatrix: np.ndarray | None = None) -> np.ndarray:
    if t == "Q8_K":
        return ggml_quantize_row_ref(x, t)
    return ggml_quantize(x, t, imatrix)


def ggml_floats(raw: np.ndarray, t: str) -> np.ndarray:
    return ggml_dequantize_row(raw, t) if t == "Q8_K" else ggml_dequantize(raw, t)


@st.composite
def rows_and_imatrix(draw):
    """Rows of whole super-blocks and a positive importance vector with some zeros (one per column)."""
    x = draw(st_rq.rows(block=K.QK_K, max_rows=3, max_blocks=3, kinds=st_rq.GGUF_KINDS))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    imatrix = (rng.gamma(0.5, 2.0, x.shape[1])).astype(np.float32)   # llama-imatrix: mean squared activations
    imatrix[rng.random(x.shape[1]) < 0.1] = 0.0
    return x, imatrix


# ---------------------------------------------------------------------------------------
# (4) parity with libggml: quantize
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", TYPES)
@given(x=st_rq.rows(block=K.QK_K, max_rows=3, max_blocks=3, kinds=st_rq.GGUF_KINDS))  # ±0, subnormals, huge too
def test_quantize_matches_libggml(t, x):
    assert np.array_equal(rq_quantize(x, t), ggml_bytes(x, t))


@pytest.mark.parametrize("t", IMATRIX)
@given(data=rows_and_imatrix())
def test_quantize_with_imatrix_matches_libggml(t, data):
    x, imatrix = data
    assert np.array_equal(rq_quantize(x, t, imatrix), ggml_bytes(x, t, imatrix))


@functools.lru_cache(maxsize=1)
def _real_rows() -> tuple[np.ndarray, np.ndarray]:
    """Real SmolLM2 weights: 32 rows of 2304 from the Q8_0 token embedding (4 embeddings per
    row), and 16 rows of 1536 of blk.0.ffn_down (Q4_1), both decoded with gguf-py."""
    import gguf

    from refquant._data import smollm2_path
    from refquant.gguf.file import read

    with read(smollm2_path()) as f:               # refquant's reader: the tensor bytes, no metadata decoding
        emb = f.tensors["token_embd.weight"]
        down = f.tensors["blk.0.ffn_down.weight"]
        emb_rows = gguf.quants.dequantize(np.array(emb.raw[1000:1128]), gguf.GGMLQuantizationType[emb.type])  # (128, 576)
        down_rows = gguf.quants.dequantize(np.array(down.raw[:16]), gguf.GGMLQuantizationType[down.type])     # (16, 1536)
    return emb_rows.reshape(32, 2304).astype(np.float32), down_rows.astype(np.float32)


@pytest.mark.parametrize("t", TYPES)
def test_real_smollm2_rows_match_libggml(t):
    rng = np.random.default_rng(7)
    for x in _real_rows():
        assert np.array_equal(rq_quantize(x, t), ggml_bytes(x, t))
        if t in IMATRIX:
            imatrix = rng.gamma(0.5, 2.0, x.shape[1]).astype(np.float32)
            imatrix[::17] = 0.0
            assert np.array_equal(rq_quantize(x, t, imatrix), ggml_bytes(x, t, imatrix))


@pytest.mark.parametrize("t", TYPES)
@pytest.mark.parametrize("magnitude", [1e-38, 1e-10, 1e7, 1e15, 1e30, 3e38])
def test_extreme_magnitudes_match_libggml(t, magnitude):
    """Far outside the float16 range of d: the C arithmetic overflows to inf and NaN
    (x² = inf, inf/inf = NaN, fp16(d) = inf) and we follow it — NaN never wins C's
    `if (v > max)`, nearest_int(NaN) = 0, a float→uint8 store wraps."""
    rng = np.random.default_rng(int(np.log10(magnitude) + 40))
    with np.errstate(over="ignore"):
        x = (rng.standard_normal((2, 512)) * magnitude).astype(np.float32)
    x[1, ::3] *= 1e-6
    x = np.where(np.isfinite(x), x, np.float32(magnitude))
    imatrix = rng.gamma(0.5, 2.0, 512).astype(np.float32)
    with np.errstate(all="ignore"):
        assert np.array_equal(rq_quantize(x, t), ggml_bytes(x, t))
        if t in IMATRIX:
            assert np.array_equal(rq_quantize(x, t, imatrix), ggml_bytes(x, t, imatrix))


# ---------------------------------------------------------------------------------------
# (4) parity: decode, on quantized data and on random bytes
# ---------------------------------------------------------------------------------------

def _gguf_py_dequantize(raw: np.ndarray, t: str) -> np.ndarray:
    import gguf

    return gguf.quants.dequantize(raw, gguf.GGMLQuantizationType[t])


def _random_blocks(t: str, n_blocks: int, seed: int) -> np.ndarray:
    """Arbitrary bytes with finite scale fields (float16 d/dmin, or Q8_K's float32 d)."""
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, (n_blocks, K.BLOCK_BYTES[t]), dtype=np.uint8)
    if t == "Q8_K":
        raw[:, 0:4] = rng.standard_normal(n_blocks).astype("<f4").view(np.uint8).reshape(-1, 4)
        return raw
    offsets = {"Q2_K": (80, 82), "Q3_K": (108,), "Q4_K": (0, 2), "Q5_K": (0, 2), "Q6_K": (208,)}[t]
    for off in offsets:
        bits = rng.integers(0, 2**16, n_blocks, dtype=np.uint16)
        bits = np.where((bits & 0x7C00) == 0x7C00, bits & 0xBFFF, bits).astype("<u2")  # no inf/NaN exponent
        raw[:, off:off + 2] = bits.view(np.uint8).reshape(-1, 2)
    return raw


@pytest.mark.parametrize("t", TYPES)
@given(seed=st.integers(0, 2**32 - 1), n_blocks=st.integers(1, 8))
def test_decode_random_bytes_matches_libggml_and_gguf_py(t, seed, n_blocks):
    raw = _random_blocks(t, n_blocks, seed)
    ours = np.asarray(_dequantize(t)(raw))
    assert np.array_equal(ours, ggml_floats(raw, t).reshape(n_blocks, -1))
    if t != "Q8_K":  # gguf-py has no Q8_K codec
        assert np.array_equal(ours, _gguf_py_dequantize(raw, t).reshape(n_blocks, -1))


@pytest.mark.parametrize("t", TYPES)
@given(x=st_rq.rows(block=K.QK_K, max_rows=2, max_blocks=2))
def test_decode_quantized_matches_libggml_and_gguf_py(t, x):
    raw = ggml_bytes(x, t)
    ours = np.asarray(_dequantize(t)(raw.reshape(-1, K.BLOCK_BYTES[t]))).reshape(x.shape)
    assert np.array_equal(ours, ggml_floats(raw, t))
    if t != "Q8_K":
        assert np.array_equal(ours, _gguf_py_dequantize(raw, t))


# ---------------------------------------------------------------------------------------
# hand-built blocks, decoded values worked out by hand
# ---------------------------------------------------------------------------------------

def _half(v: float) -> list[int]:
    return list(np.float16(v).tobytes())


def test_hand_built_q4_k_block():
    # d = 1.0, dmin = 0.5; sub-block 0: sc = 2, m = 3; sub-block 4: sc = 17 = 0b01_0001, m = 0
    scales = [2, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]
    scales[0] |= (17 >> 4) << 6          # high 2 bits of sc_4 ride on byte 0
    scales[8] = 17 & 0x0F                # low 4 bits of sc_4 (m_4 = 0)
    qs = [0] * 128
    qs[0] = 5 | (7 << 4)                 # weight 0 (sub-block 0) = 5, weight 32 (sub-block 1) = 7
    qs[64] = 9                           # weight 128 (chunk 2, low nibble: sub-block 4) = 9
    raw = np.array([_half(1.0) + _half(0.5) + scales + qs], dtype=np.uint8)
    w = np.asarray(K.dequantize_q4_k(raw))[0]
    assert w[0] == 1.0 * 2 * 5 - 0.5 * 3         # 8.5
    assert w[1] == -1.5                           # q = 0: just the min
    assert w[32] == 0.0                           # sub-block 1: sc = m = 0
    assert w[128] == 1.0 * 17 * 9                 # 153


def test_hand_built_q6_k_block():
    # d = 0.25, sc_0 = -2, sc_15 = 100; weight 0: q = 33 (low 1, high 2), weight 255: q = 0
    ql = [0] * 128
    qh = [0] * 64
    ql[0] = 1                                    # weight 0 low nibble
    qh[0] = 2                                    # weight 0 high bits (bits 0-1 of qh[0])
    sc = [(-2) & 0xFF] + [0] * 14 + [100]
    raw = np.array([ql + qh + sc + _half(0.25)], dtype=np.uint8)
    w = np.asarray(K.dequantize_q6_k(raw))[0]
    assert w[0] == 0.25 * -2 * (33 - 32)          # -0.5
    assert w[1] == 0.25 * -2 * (0 - 32)           # 16
    assert w[255] == 0.25 * 100 * (0 - 32)        # weight 255 = 128 + 96 + 31: ql[64+32+31] high nibble 0 -> -800


def test_hand_built_q3_k_block():
    # d = 2, all 6-bit scales 33 (-> sc - 32 = 1); weight 0: low 3, high bit set -> q - 4 = 3;
    # weight 32: low 1, high bit clear -> 1 - 4 = -3
    hmask = [0] * 32
    hmask[0] = 1                                 # bit 0 of hmask[0]: weight 0
    qs = [0] * 64
    qs[0] = 3 | (1 << 2)                         # weight 0 (k = 0) = 3, weight 32 (k = 1) = 1
    scales = [0x11] * 8 + [0b10101010] * 4       # low nibbles 1, high pairs 0b10 -> 1 + 32 = 33
    raw = np.array([hmask + qs + scales + _half(2.0)], dtype=np.uint8)
    w = np.asarray(K.dequantize_q3_k(raw))[0]
    assert w[0] == 2.0 * 1 * 3
    assert w[32] == 2.0 * 1 * -3
    assert w[1] == 2.0 * 1 * -4                  # low 0, high clear


def test_hand_built_q2_k_and_q5_k_and_q8_k_blocks():
    scales = [0x21] + [0] * 15                   # sc_0 = 1, m_0 = 2
    qs = [3] + [0] * 63                          # weight 0 = 3
    raw = np.array([scales + qs + _half(0.5) + _half(0.25)], dtype=np.uint8)
    w = np.asarray(K.dequantize_q2_k(raw))[0]
    assert w[0] == 0.5 * 1 * 3 - 0.25 * 2 and w[1] == -0.5

    scales = [1] + [0] * 11                      # sc_0 = 1, m_0 = 0
    qh = [1] + [0] * 31                          # bit 0 of qh[0]: weight 0 gets +16
    qs = [2] + [0] * 127
    raw = np.array([_half(0.5) + _half(0.0) + scales + qh + qs], dtype=np.uint8)
    assert np.asarray(K.dequantize_q5_k(raw))[0, 0] == 0.5 * (16 + 2)

    raw = np.zeros((1, 292), np.uint8)
    raw[0, 0:4] = np.frombuffer(np.float32(0.125).tobytes(), np.uint8)
    raw[0, 4] = 0xFF                             # int8 -1
    raw[0, 5] = 100
    w = np.asarray(K.dequantize_q8_k(raw))[0]
    assert w[0] == -0.125 and w[1] == 12.5


def test_zero_blocks_are_zero_bytes():
    z = np.zeros((2, 256), np.float32)
    for t in TYPES:
        assert not np.asarray(_quantize(t)(z)).any(), t


# ---------------------------------------------------------------------------------------
# (1) error bounds
# ---------------------------------------------------------------------------------------

@given(x=st_rq.rows(block=K.QK_K, max_rows=2, max_blocks=2))
def test_q8_k_error_within_half_a_step(x):
    blocks = x.reshape(-1, 256)
    raw = np.asarray(K.quantize_q8_k(blocks))
    d = np.abs(raw[:, :4].copy().view("<f4"))                          # (B, 1)
    err = np.abs(np.asarray(K.dequantize_q8_k(raw)) - blocks)
    # q = round(iscale·x): half a step, plus the rounding of iscale·x and of d·q (a few ulp of |x|)
    assert np.all(err <= d / 2 + 4 * np.spacing(np.abs(blocks)) + 4 * np.spacing(d))


@pytest.mark.parametrize("t,nmax", [("Q4_K", 15), ("Q5_K", 31), ("Q2_K", 3)])
@settings(max_examples=30)
@given(x=st_rq.rows(block=K.QK_K, max_rows=2, max_blocks=2))
def test_unclamped_codes_within_half_a_sub_block_step(t, nmax, x):
    """For every code strictly inside 0..nmax the requantize step rounded (x + m)/d, so
    |x - ŵ| <= d/2 with d the decoded sub-block step (up to float rounding of the formula)."""
    blocks = x.reshape(-1, 256)
    raw = np.asarray(_quantize(t)(blocks))
    w = np.asarray(_dequantize(t)(raw))
    step = np.abs(np.asarray(_dequantize(t)(_with_codes(raw, t, 1))) - np.asarray(_dequantize(t)(_with_codes(raw, t, 0))))
    q = _codes(raw, t)
    inside = (q > 0) & (q < nmax) & (step > 0)
    slack = 8 * np.spacing(np.maximum(np.abs(blocks), np.abs(w)))
    assert np.all(np.abs(blocks - w)[inside] <= step[inside] / 2 + slack[inside])


def _codes(raw: np.ndarray, t: str) -> np.ndarray:
    """Codes of Q2_K / Q4_K / Q5_K blocks (from the decoder's own unpacking)."""
    if t == "Q2_K":
        return np.asarray(K._unpack_2bit(raw[:, 16:80]))
    low = np.asarray(K._unpack_nibble_pairs(raw[:, 16:144] if t == "Q4_K" else raw[:, 48:176]))
    if t == "Q4_K":
        return low
    high = ((raw[:, None, 16:48].astype(np.int32) >> np.arange(8)[None, :, None]) & 1).reshape(-1, 256)
    return low + 16 * high


def _with_codes(raw: np.ndarray, t: str, code: int) -> np.ndarray:
    """The same blocks with every code set to ``code`` (0 or 1): decoding them gives -m and d - m."""
    out = raw.copy()
    if t == "Q2_K":
        out[:, 16:80] = 0b01010101 * code
    elif t == "Q4_K":
        out[:, 16:144] = 0x11 * code
    else:
        out[:, 16:48] = 0
        out[:, 48:176] = 0x11 * code
    return out


# ---------------------------------------------------------------------------------------
# (3) metamorphic: blocks are independent; the symmetric types are odd in x
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", TYPES)
@settings(max_examples=15)  # a structural property: a few draws per type suffice
@given(x=st_rq.rows(block=K.QK_K, max_rows=1, max_blocks=4), seed=st.integers(0, 2**16))
def test_permuting_blocks_permutes_bytes(t, x, seed):
    blocks = x.reshape(-1, 256)
    perm = np.random.default_rng(seed).permutation(blocks.shape[0])
    assert np.array_equal(np.asarray(_quantize(t)(blocks[perm])), np.asarray(_quantize(t)(blocks))[perm])


@pytest.mark.parametrize("t", ("Q6_K", "Q8_K"))
@given(x=st_rq.rows(block=K.QK_K, max_rows=1, max_blocks=3))
def test_sign_flip_negates_decoded_weights(t, x):
    # -x: the signed max flips, so iscale flips and every code stays; only d changes sign.
    # Not Q3_K: make_q3_quants' coordinate descent only moves a code while Σw·x·l > 0, i.e.
    # in sub-blocks whose largest-magnitude weight is negative, so Q3_K is not odd in x.
    blocks = x.reshape(-1, 256)
    pos = np.asarray(_dequantize(t)(np.asarray(_quantize(t)(blocks))))
    neg = np.asarray(_dequantize(t)(np.asarray(_quantize(t)(-blocks))))
    assert np.array_equal(neg, -pos)


# ---------------------------------------------------------------------------------------
# (5) backends
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", TYPES)
def test_backend_parity(t, xp):
    rng = np.random.default_rng(3)
    x = (rng.standard_t(3, (3, 256)) * 0.02).astype(np.float32)
    qw = rng.gamma(0.5, 2.0, (3, 256)).astype(np.float32)
    xa, qwa = from_numpy(x, xp=xp), from_numpy(qw, xp=xp)
    raw = np.asarray(_quantize(t)(x))
    assert np.array_equal(to_numpy(_quantize(t)(xa)), raw)
    if t in IMATRIX:
        assert np.array_equal(to_numpy(_quantize(t)(xa, qwa)), np.asarray(_quantize(t)(x, qw)))
    rand = _random_blocks(t, 4, 11)
    assert np.array_equal(to_numpy(_dequantize(t)(from_numpy(rand, xp=xp))), np.asarray(_dequantize(t)(rand)))


@pytest.mark.gpu
@pytest.mark.parametrize("t", TYPES)
def test_cupy_matches_numpy(t):
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(5)
    x = (rng.standard_t(3, (64, 256)) * 0.02).astype(np.float32)
    qw = rng.gamma(0.5, 2.0, (64, 256)).astype(np.float32)
    raw = np.asarray(_quantize(t)(x))
    assert np.array_equal(cupy.asnumpy(_quantize(t)(cupy.asarray(x))), raw)
    if t in IMATRIX:
        assert np.array_equal(cupy.asnumpy(_quantize(t)(cupy.asarray(x), cupy.asarray(qw))),
                              np.asarray(_quantize(t)(x, qw)))
    assert np.array_equal(cupy.asnumpy(_dequantize(t)(cupy.asarray(raw))), np.asarray(_dequantize(t)(raw)))


# ---------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("t", TYPES)
def test_bad_input(t):
    q, dq = _quantize(t), _dequantize(t)
    with pytest.raises(ValueError, match="x: expected super-blocks"):
        q(np.zeros((2, 100), np.float32))
    with pytest.raises(ValueError, match="NaN or Inf"):
        q(np.full((1, 256), np.nan, np.float32))
    with pytest.raises(TypeError, match="x: expected a real floating"):
        q(np.zeros((1, 256), np.int32))
    with pytest.raises(ValueError, match="raw: expected"):
        dq(np.zeros((1, K.BLOCK_BYTES[t] - 1), np.uint8))
    with pytest.raises(TypeError, match="raw: expected a uint8"):
        dq(np.zeros((1, K.BLOCK_BYTES[t]), np.float32))
    if t in IMATRIX:
        with pytest.raises(ValueError, match="qw: expected the shape"):
            q(np.zeros((2, 256), np.float32), np.ones((1, 256), np.float32))
        with pytest.raises(ValueError, match="qw: contains NaN"):
            q(np.zeros((1, 256), np.float32), np.full((1, 256), np.inf, np.float32))
