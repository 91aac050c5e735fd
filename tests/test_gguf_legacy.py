"""Legacy GGUF types Q4_0 … Q8_1 and F32/F16/BF16: bytes vs libggml, decoding vs libggml and gguf-py.

Oracles: libggml's ``ggml_quantize_chunk`` / ``to_float`` (refquant.testing.ggml) and
gguf-py's ``gguf.quants``. Q8_1 is not reachable through ggml_quantize_chunk, so its
oracle is the type traits' ``from_float_ref`` (quantize_row_q8_1_ref), called through
ctypes below; neither libggml nor gguf-py decode Q8_1, so its decoder is checked against
hand-worked blocks and the obvious loop.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from hypothesis import assume, given, settings, target
from hypothesis import strategies as st

import refquant.gguf as rg
from refquant.gguf._bytes import float_from_bits
from refquant.testing import strategies as rst
from refquant.testing.ggml import ggml_dequantize, ggml_quantize, lib

LEGACY = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")          # reachable through ggml_quantize_chunk
WEIGHTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1")                # the imatrix changes their bytes
FLOATS = ("F32", "F16", "BF16")


def gguf_py_type(name):
    import gguf

    return gguf.GGMLQuantizationType[name]


def q8_1_reference(x: np.ndarray) -> np.ndarray:
    """libggml's quantize_row_q8_1_ref through the type traits (not in ggml_quantize_chunk)."""
    traits = lib().ggml_get_type_traits(9).contents
    fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)(traits.from_float_ref)
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros((*x.shape[:-1], x.shape[-1] // 32 * 36), dtype=np.uint8)
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out


@st.composite
def imatrices(draw, n: int) -> np.ndarray:
    """(n,) importance per column, as llama-imatrix writes: ≥ 0, spread over decades, some exact zeros."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    w = rng.gamma(0.7, 1.0, n) * 10.0 ** rng.integers(-3, 3)
    w[rng.random(n) < draw(st.sampled_from([0.0, 0.1, 1.0]))] = 0.0
    return w.astype(np.float32)


@st.composite
def rows_and_imatrix(draw, block=32):
    x = draw(rst.rows(block=block, max_rows=3, max_blocks=6, kinds=rst.GGUF_KINDS))
    return x, draw(imatrices(x.shape[1]))


# --------------------------------------------------------------------------- bytes vs libggml

@pytest.mark.parametrize("qtype", LEGACY)
@given(x=rst.rows(block=32, kinds=rst.GGUF_KINDS))  # EDGE_KINDS too: ±0, subnormals, huge values
def test_quantize_matches_libggml(qtype, x):
    assert np.array_equal(rg.quantize(x, qtype), ggml_quantize(x, qtype))


@pytest.mark.parametrize("qtype", WEIGHTED + ("Q8_0",))
@given(data=rows_and_imatrix())
def test_quantize_with_imatrix_matches_libggml(qtype, data):
    x, imatrix = data
    assert np.array_equal(rg.quantize(x, qtype, imatrix=imatrix), ggml_quantize(x, qtype, imatrix=imatrix))


@given(x=rst.rows(block=32, kinds=rst.GGUF_KINDS))
def test_q8_1_matches_quantize_row_q8_1_ref(x):
    assert np.array_equal(rg.quantize(x, "Q8_1"), q8_1_reference(x))


@pytest.mark.parametrize("qtype", FLOATS)
@given(x=rst.rows(block=1, max_blocks=40, kinds=rst.GGUF_KINDS))
def test_float_types_match_libggml(qtype, x):
    assert np.array_equal(rg.quantize(x, qtype), ggml_quantize(x, qtype))


@pytest.mark.parametrize("qtype", LEGACY + ("Q8_1",))
def test_real_rows_match_libggml(qtype, smollm2_rows):
    x = smollm2_rows
    expected = q8_1_reference(x) if qtype == "Q8_1" else ggml_quantize(x, qtype)
    assert np.array_equal(rg.quantize(x, qtype), expected)
    if qtype in WEIGHTED:
        imatrix = np.mean(x * x, axis=0) + 1e-3  # a stand-in for activation statistics
        assert np.array_equal(rg.quantize(x, qtype, imatrix=imatrix), ggml_quantize(x, qtype, imatrix=imatrix))


# --------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("qtype", LEGACY + FLOATS)
@given(x=rst.rows(block=32))
def test_dequantize_matches_libggml_and_gguf_py(qtype, x):
    from gguf import quants

    raw = ggml_quantize(x, qtype)
    ours = rg.dequantize(raw, qtype)
    # compare bit patterns: NaN-free here, and -0.0 vs 0.0 must agree too
    assert np.array_equal(ours.view(np.uint32), ggml_dequantize(raw, qtype).view(np.uint32))
    theirs = quants.dequantize(raw, gguf_py_type(qtype)).astype(np.float32)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def random_blocks(rng: np.random.Generator, qtype: str, n_blocks: int) -> np.ndarray:
    """Random bytes, with every float16 field (d, m, s) replaced by a random *finite* half."""
    t = rg.ggml_type(qtype)
    raw = rng.integers(0, 256, (n_blocks, t.type_size), dtype=np.uint8)
    halves = {"Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,), "Q8_1": (0, 2),
              "F16": (0,), "IQ4_NL": (0,), "IQ4_XS": (0,)}.get(qtype, ())
    for off in halves:
        h = rng.integers(0, 0x7C00, n_blocks).astype(np.uint16) | (rng.integers(0, 2, n_blocks).astype(np.uint16) << 15)
        raw[:, off : off + 2] = h.view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("qtype", LEGACY + ("F16", "BF16"))
@given(seed=st.integers(0, 2**32 - 1))
def test_dequantize_random_bytes(qtype, seed):
    from gguf import quants

    raw = random_blocks(np.random.default_rng(seed), qtype, 64).reshape(4, -1)
    ours = rg.dequantize(raw, qtype)
    assert np.array_equal(ours.view(np.uint32), ggml_dequantize(raw, qtype).view(np.uint32))
    theirs = quants.dequantize(raw, gguf_py_type(qtype)).astype(np.float32)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_float_decoders_cover_every_bit_pattern():
    """All 65536 halves and bfloats (inf and NaN included) decode as NumPy's own casts."""
    bits = np.arange(1 << 16, dtype=np.uint16)
    raw = bits.view(np.uint8).reshape(-1, 2)
    f16 = rg.dequantize(raw, "F16").ravel()
    assert np.array_equal(f16.view(np.uint32), bits.view(np.float16).astype(np.float32).view(np.uint32))
    bf16 = rg.dequantize(raw, "BF16").ravel()
    assert np.array_equal(bf16.view(np.uint32), bits.astype(np.uint32) << 16)


@pytest.mark.parametrize("exp_bits, mant_bits", [(5, 10), (8, 7)])
def test_arithmetic_float_decoding_covers_every_bit_pattern(exp_bits, mant_bits):
    """float_from_bits (how block scales are read in any namespace) equals the bit-cast on all 2^16 patterns."""
    bits = np.arange(1 << 16, dtype=np.int64)
    if exp_bits == 5:
        want = bits.astype(np.uint16).view(np.float16).astype(np.float32)
    else:
        want = (bits.astype(np.uint32) << 16).view(np.float32)
    got = float_from_bits(bits, exp_bits, mant_bits)
    finite = ~np.isnan(want)
    assert np.array_equal(got[finite].view(np.uint32), want[finite].view(np.uint32))
    assert np.all(np.isnan(got[~finite]))


def test_f32_decoder_on_special_values():
    x = np.array([0.0, -0.0, 1.0, -2.5, 1e-45, -1e-40, 3.4e38, np.inf, -np.inf, np.nan], dtype=np.float32)
    out = rg.dequantize(x.view(np.uint8).reshape(1, -1), "F32")
    assert np.array_equal(out.view(np.uint32), x.view(np.uint32).reshape(1, -1))


def test_opposite_extremes_the_first_one_wins():
    """A block holding both −5 and +5: C keeps the first of them as max (d = max/−8 flips sign)."""
    for first, second in ((-5.0, 5.0), (5.0, -5.0)):
        x = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
        x[0, 3], x[0, 7] = first, second
        x[1, 30], x[1, 2] = first, second
        for qtype in ("Q4_0", "Q5_0", "IQ4_NL"):
            assert np.array_equal(rg.quantize(x, qtype), ggml_quantize(x, qtype)), (qtype, first)


# --------------------------------------------------------------------------- hand-built blocks

def half(v: float) -> list[int]:
    return list(np.array([v], dtype=np.float16).view(np.uint8))


def test_hand_built_q4_0_block():
    # d = 0.5; byte j = code j (low) | code j+16 (high); codes 0..15 then 15..0
    qs = [j | (15 - j) << 4 for j in range(16)]
    raw = np.array([half(0.5) + qs], dtype=np.uint8)
    # ŵ_j = 0.5 · (q_j − 8): −4.0, −3.5, …, 3.5 then 3.5, 3.0, …, −4.0
    expected = [0.5 * (j - 8) for j in range(16)] + [0.5 * (15 - j - 8) for j in range(16)]
    assert rg.dequantize(raw, "Q4_0").tolist() == [expected]


def test_hand_built_q4_1_block():
    # d = 0.25, m = −1.0: ŵ = 0.25·q − 1; all codes 4 (0x44) -> 0.0, first byte 0xF0 -> q0 = 0, q16 = 15
    raw = np.array([half(0.25) + half(-1.0) + [0xF0] + [0x44] * 15], dtype=np.uint8)
    out = rg.dequantize(raw, "Q4_1")[0]
    assert out[0] == -1.0 and out[16] == 0.25 * 15 - 1.0 == 2.75
    assert set(out[1:16].tolist()) | set(out[17:].tolist()) == {0.0}


def test_hand_built_q5_0_and_q5_1_blocks():
    # qh = 0x80000001: bit 0 (code 0) and bit 31 (code 31) are set; all nibbles 0
    qh = [0x01, 0x00, 0x00, 0x80]
    q5_0 = np.array([half(2.0) + qh + [0] * 16], dtype=np.uint8)
    out = rg.dequantize(q5_0, "Q5_0")[0]            # ŵ = 2 · (q − 16): q = 16 -> 0, else q = 0 -> −32
    assert out[0] == 0.0 and out[31] == 0.0 and set(out[1:31].tolist()) == {-32.0}
    q5_1 = np.array([half(1.0) + half(0.5) + qh + [0x1F] * 16], dtype=np.uint8)  # nibbles 15 (low), 1 (high)
    out = rg.dequantize(q5_1, "Q5_1")[0]            # ŵ = q + 0.5
    assert out[0] == 31.5 and out[1] == 15.5 and out[16] == 1.5 and out[31] == 17.5


def test_hand_built_q8_blocks():
    qs = list(np.arange(-16, 16, dtype=np.int8).view(np.uint8))
    raw = np.array([half(0.125) + qs], dtype=np.uint8)
    assert rg.dequantize(raw, "Q8_0").tolist() == [[0.125 * k for k in range(-16, 16)]]
    raw1 = np.array([half(0.125) + half(-2.0) + qs], dtype=np.uint8)  # s = 0.125·Σq = −2 (unused to decode)
    assert rg.dequantize(raw1, "Q8_1").tolist() == [[0.125 * k for k in range(-16, 16)]]


def test_q4_0_worked_example():
    # a block of −1.0: max = −1, d = −1/−8 = 0.125 (f16 0x3000), q = trunc(−1·8 + 8.5) = 0
    raw = rg.quantize(np.full((1, 32), -1.0, np.float32), "Q4_0")
    assert raw.tolist() == [[0x00, 0x30] + [0x00] * 16]
    # Q8_0 of [254, 0, ...]: d = 2 (f16 0x4000), q0 = 127
    raw = rg.quantize(np.array([[254.0] + [0.0] * 31], np.float32), "Q8_0")
    assert raw.tolist() == [[0x00, 0x40, 127] + [0] * 31]


def test_q8_1_sum_field():
    x = np.arange(32, dtype=np.float32).reshape(1, 32)  # d = 31/127, q_j = round(j·127/31)
    raw = rg.quantize(x, "Q8_1")
    q = raw[0, 4:].view(np.int8).astype(np.int64)
    d = np.float32(31.0) / np.float32(127.0)
    assert np.array_equal(q, np.round(np.arange(32) * 127 / 31 + 1e-9).astype(np.int64))  # no ties here
    assert raw[0, 2:4].view(np.float16)[0] == np.float16(np.float32(q.sum()) * d)


# --------------------------------------------------------------------------- slow obvious loops

def loop_q4_0_ref(block: np.ndarray) -> tuple[np.float16, list[int]]:
    """quantize_row_q4_0_ref for one block, one float32 scalar operation at a time."""
    amax, max_ = np.float32(0), np.float32(0)
    for v in block:
        if amax < abs(v):
            amax, max_ = abs(v), v
    d = max_ / np.float32(-8)
    inv = np.float32(1) / d if d else np.float32(0)
    codes = [min(15, int(v * inv + np.float32(8.5))) for v in block]  # int() truncates like a C cast
    return np.float16(d), codes


def loop_q8_0_ref(block: np.ndarray) -> tuple[np.float16, list[int]]:
    amax = np.float32(0)
    for v in block:
        amax = max(amax, abs(v))
    d = amax / np.float32(127)
    inv = np.float32(1) / d if d else np.float32(0)
    codes = []
    for v in block:
        t = v * inv
        codes.append(int(np.sign(t) * np.floor(abs(t) + np.float32(0.5))) if abs(t) % 1 != 0.5 else int(np.sign(t) * np.ceil(abs(t))))
    return np.float16(d), codes


@settings(max_examples=25)  # the parity tests above carry the example count
@given(x=rst.block_values(1, 32))
def test_q4_0_and_q8_0_match_the_obvious_loop(x):
    with np.errstate(over="ignore"):
        d, codes = loop_q4_0_ref(x)
    raw = rg.quantize(x[None, :], "Q4_0")[0]
    assert raw[:2].view(np.float16)[0].tobytes() == d.tobytes()
    assert [b & 15 for b in raw[2:]] + [b >> 4 for b in raw[2:]] == codes
    with np.errstate(over="ignore"):
        d, codes = loop_q8_0_ref(x)
    raw = rg.quantize(x[None, :], "Q8_0")[0]
    assert raw[:2].view(np.float16)[0].tobytes() == d.tobytes() and raw[2:].view(np.int8).tolist() == codes


# --------------------------------------------------------------------------- error bounds

BOUND_KINDS = ("normal", "outlier", "same_sign", "heavy_tails", "uniform_int", "constant", "zeros")


@settings(max_examples=25)  # the parity tests above carry the example count
@pytest.mark.parametrize("qtype", LEGACY + ("Q8_1",))
@given(x=rst.rows(block=32, kinds=BOUND_KINDS))
def test_error_within_half_a_step(qtype, x):
    """|w − ŵ| ≤ s/2 for a step s = |d| (Q4_0/Q5_0: one full step for the far end beyond +7.5·|d|).

    The decoder's d̃ is d rounded to float16, which moves level q by |q|·|d − d̃|; the
    margin adds that and a few float32 ulps for x·(1/d) and the decoder's q·d̃ + m.
    """
    raw = rg.quantize(x, qtype)
    w_hat = rg.dequantize(raw, qtype).astype(np.float64)
    blocks = x.reshape(-1, 32).astype(np.float64)
    t = rg.ggml_type(qtype)
    fields = raw.reshape(-1, t.type_size)
    d16 = fields[:, 0:2].copy().view(np.float16).astype(np.float64)             # (n, 1)
    if qtype in ("Q4_1", "Q5_1"):
        n_levels = 15 if qtype == "Q4_1" else 31
        lo, hi = blocks.min(1, keepdims=True), blocks.max(1, keepdims=True)
        d = (hi - lo) / n_levels
        m16 = fields[:, 2:4].copy().view(np.float16).astype(np.float64)
        step, slack = d, n_levels * np.abs(d - d16) + np.abs(lo - m16)
        allowed = np.full_like(blocks, 0.5)
    else:
        q_max = {"Q4_0": 8, "Q5_0": 16}.get(qtype, 127)
        amax = np.abs(blocks).max(1, keepdims=True)
        d = amax / q_max
        step, slack = d, q_max * np.abs(d - d16)
        allowed = np.full_like(blocks, 0.5)
        if qtype in ("Q4_0", "Q5_0"):
            signed_max = np.take_along_axis(blocks, np.abs(blocks).argmax(1)[:, None], 1)
            beyond = blocks / np.where(signed_max == 0, 1, -signed_max / q_max) > q_max - 0.5
            allowed = np.where(beyond, 1.0, 0.5)
    err = np.abs(blocks - w_hat.reshape(blocks.shape))
    tol = allowed * step + slack + 8 * np.finfo(np.float32).eps * (np.abs(blocks) + step * q_levels(qtype))
    target(float(np.max(err / np.maximum(step, 1e-30))), label="error / step")
    assert np.all(err <= tol)


def q_levels(qtype: str) -> int:
    return {"Q4_0": 8, "Q4_1": 15, "Q5_0": 16, "Q5_1": 31}.get(qtype, 127)


# --------------------------------------------------------------------------- round trips, metamorphic

@settings(max_examples=25)  # the parity tests above carry the example count
@pytest.mark.parametrize("qtype", ("Q4_0", "Q5_0", "Q8_0"))
@given(x=rst.rows(block=32, kinds=BOUND_KINDS))
def test_requantizing_decoded_blocks_is_idempotent(qtype, x):
    """Q(D(Q(x))) == Q(x) for the symmetric types: the decoded extreme is d̃·(−2^(b−1)) (or ±127·d̃),
    so the recomputed scale rounds to d̃ again and every x̂/d̃ is within float32 rounding of an
    integer. (Not Q8_1: its s field is fp16(Σq · d) with the float32 d of the first pass,
    while the second pass only sees d̃ = fp16(d), so s can move by an ulp.)"""
    raw = rg.quantize(x, qtype)
    assert np.array_equal(rg.quantize(rg.dequantize(raw, qtype), qtype), raw)


@st.composite
def rows_with_normal_half_scales(draw):
    """Rows whose every block has max |x| in {0.5, 3, 100}: with 2^k, |k| ≤ 4, each block's d stays
    a normal float16 (≥ 2^-14), where rounding to float16 commutes with scaling by 2^k."""
    x = draw(rst.rows(block=32, kinds=("normal", "heavy_tails", "outlier", "same_sign", "ties")))
    blocks = x.reshape(-1, 32).astype(np.float64)
    target_max = draw(st.sampled_from([0.5, 3.0, 100.0]))
    return (blocks / np.abs(blocks).max(1, keepdims=True) * target_max).astype(np.float32).reshape(x.shape)


@settings(max_examples=25)  # the parity tests above carry the example count
@pytest.mark.parametrize("qtype", LEGACY)
@given(x=rows_with_normal_half_scales(), k=st.integers(-4, 4))
def test_power_of_two_scaling_commutes(qtype, x, k):
    """Scaling by 2^k scales d (and m) by exactly 2^k and leaves every code unchanged."""
    s = np.float32(2.0**k)
    if qtype in ("Q4_1", "Q5_1"):  # m = the block minimum is stored in float16 too: keep it normal (or 0)
        m = np.abs(x.reshape(-1, 32).min(1)) * min(1.0, float(s))
        assume(np.all((m == 0) | (m >= 2.0**-14)))
    got = rg.dequantize(rg.quantize(x * s, qtype), qtype)
    want = rg.dequantize(rg.quantize(x, qtype), qtype) * s
    assert np.array_equal(got, want)


@settings(max_examples=25)  # the parity tests above carry the example count
@pytest.mark.parametrize("qtype", ("Q4_0", "Q5_0", "Q8_0"))
@given(x=rst.rows(block=32))
def test_sign_flip(qtype, x):
    """D(Q(−x)) = −D(Q(x)): the symmetric scale d flips sign with max, the codes stay."""
    assert np.array_equal(rg.dequantize(rg.quantize(-x, qtype), qtype), -rg.dequantize(rg.quantize(x, qtype), qtype))


@settings(max_examples=25)  # the parity tests above carry the example count
@pytest.mark.parametrize("qtype", LEGACY)
@given(x=rst.rows(block=32, max_blocks=5), seed=st.integers(0, 1000))
def test_permuting_blocks_permutes_bytes(qtype, x, seed):
    n_blocks = x.shape[1] // 32
    perm = np.random.default_rng(seed).permutation(n_blocks)
    xp_ = x.reshape(x.shape[0], n_blocks, 32)[:, perm].reshape(x.shape)
    t = rg.ggml_type(qtype)
    raw = rg.quantize(x, qtype).reshape(x.shape[0], n_blocks, t.type_size)
    assert np.array_equal(rg.quantize(xp_, qtype), raw[:, perm].reshape(x.shape[0], -1))


# --------------------------------------------------------------------------- backends

@pytest.mark.parametrize("qtype", LEGACY + ("Q8_1",) + FLOATS)
def test_backend_parity(xp, qtype, smollm2_rows):
    from refquant._backend import to_numpy

    x = smollm2_rows[:8]
    raw = rg.quantize(x, qtype)
    ours = rg.dequantize(xp.asarray(raw), qtype)
    assert np.array_equal(to_numpy(ours), rg.dequantize(raw, qtype))
    # the quantizers' math runs in xp too (packing at the NumPy edge)
    assert np.array_equal(to_numpy(rg.quantize(xp.asarray(x), qtype)), raw)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", LEGACY)
def test_cupy_matches_numpy(qtype, smollm2_rows):
    cupy = pytest.importorskip("cupy")
    raw = rg.quantize(smollm2_rows, qtype)
    assert np.array_equal(cupy.asnumpy(rg.dequantize(cupy.asarray(raw), qtype)), rg.dequantize(raw, qtype))
    assert np.array_equal(cupy.asnumpy(rg.quantize(cupy.asarray(smollm2_rows), qtype)), raw)
