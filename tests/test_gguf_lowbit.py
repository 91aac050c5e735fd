"""TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0, Q2_0: bytes vs libggml (with and without imatrix), decoding vs
libggml's to_float and gguf-py, hand-built blocks, the nearest-level property, round trips, backends.

Decoding policy for random bytes: every byte pattern is allowed, so the float16 d of TQ1_0, TQ2_0,
Q1_0 and Q2_0 can be ±inf or NaN (and MXFP4's e = 255 times 12 overflows to inf). The outputs are
compared as uint32 bit patterns — NaN payloads and signs included: libggml, gguf-py and refquant
(on NumPy) widen float16 by the same exact rule, and a signaling NaN comes out quiet in all three
(see dequantize_q1_0). Other namespaces decode NaN without its payload: compared with equal_nan.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import example, given, settings, target
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refquant.gguf as rg
from refquant.gguf import lowbit
from refquant.testing import strategies as rst
from refquant.testing.ggml import ggml_dequantize, ggml_quantize

from test_gguf_legacy import imatrices  # noqa: E402  (tests/ is on sys.path under pytest)

# enum ggml_type (ggml.h); refquant.testing.ggml's name table predates these types, its functions take ids
GGML_ID = {name: rg.ggml_type(name).id for name in lowbit.CODECS}
TYPES = tuple(lowbit.CODECS)
GGUF_PY = ("TQ1_0", "TQ2_0", "MXFP4", "NVFP4")          # the types gguf-py 0.19 decodes
BLOCK = {name: rg.ggml_type(name).block_size for name in TYPES}


def ggml_q(x, qtype, imatrix=None):
    return ggml_quantize(x, GGML_ID[qtype], imatrix)


def ggml_dq(raw, qtype):
    return ggml_dequantize(raw, GGML_ID[qtype])


def bits(a):
    return np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)


def max_blocks(qtype):
    return 2 if BLOCK[qtype] >= 128 else 4


# --------------------------------------------------------------------------- structured blocks

MIDS = (0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 10.0)   # the midpoints between the FP4 magnitudes 0 1 2 3 4 6 8 12


@st.composite
def fp4_block(draw, n: int, d: float):
    """(n,) float32 lanes around the FP4 grid K·d: 0 a level, 1 a midpoint (a tie), 2 an ulp below
    a midpoint, 3 an ulp above, 4 ±0; each lane's level and sign drawn."""
    labels = draw(hnp.arrays(np.int8, n, elements=st.integers(0, 4)))
    which = draw(hnp.arrays(np.int8, n, elements=st.integers(0, 6)))
    negative = draw(hnp.arrays(np.bool_, n))
    levels = np.float32(lowbit.FP4_LEVELS[1:])[which] * np.float32(d)
    mids = np.float32(MIDS)[which] * np.float32(d)
    v = np.select([labels == 0, labels == 1, labels == 2, labels == 3],
                  [levels, mids, np.nextafter(mids, np.float32(0)), np.nextafter(mids, np.float32(np.inf))],
                  np.float32(0.0))
    return np.where(negative, -v, v).astype(np.float32)


@st.composite
def mxfp4_rows(draw):
    """One row of MXFP4 blocks: per block an amax of a drawn binade 2^E (at 2^E, at 1.5·2^E, an ulp
    below 2^(E+1), where float32 log2f rounds up), the other lanes on or beside the grid of d = 2^(E−3).
    E runs from −149 (subnormal amax, the byte wraps) to 127."""
    n_blocks = draw(st.integers(1, 4))
    blocks = []
    for _ in range(n_blocks):
        E = draw(st.one_of(st.integers(-3, 3), st.integers(-149, 127), st.sampled_from([-127, -126, -125, 20, 127])))
        top = draw(st.sampled_from(["pow2", "1.5", "below_next"]))
        with np.errstate(over="ignore"):     # E = 127: 2^128 is inf, and an ulp below it FLT_MAX
            amax = {"pow2": np.ldexp(np.float32(1), E), "1.5": np.ldexp(np.float32(1.5), E),
                    "below_next": np.nextafter(np.ldexp(np.float32(1), E + 1), np.float32(0))}[top]
        amax = np.float32(min(amax, np.float32(3.4e38)))
        x = draw(fp4_block(32, float(np.ldexp(1.0, E - 3))))
        x = np.clip(x, -amax, amax)
        x[draw(st.integers(0, 31))] = amax * (1 if draw(st.booleans()) else -1)
        blocks.append(x)
    return np.concatenate(blocks)[None, :].astype(np.float32)


@st.composite
def nvfp4_rows(draw):
    """One NVFP4 block (4 sub-blocks): per sub-block amax = 6 · r with r an E4M3 value, a tie between
    two (half-up in ggml), an ulp beside it, or past 448 and below 2^−6 (the capped subnormal range);
    the other lanes around the grid K · r/2."""
    subs = []
    for _ in range(lowbit.QK_NVFP4 // lowbit.QK_NVFP4_SUB):
        code = draw(st.integers(1, 126))
        r = float(lowbit.UE4M3_HALF[code]) * 2.0
        nxt = float(lowbit.UE4M3_HALF[code + 1]) * 2.0 if code < 126 else 480.0
        kind = draw(st.sampled_from(["level", "tie", "below_tie", "above_tie", "huge", "tiny"]))
        tie = np.float32((r + nxt) / 2)
        ratio = {"level": np.float32(r), "tie": tie, "below_tie": np.nextafter(tie, np.float32(0)),
                 "above_tie": np.nextafter(tie, np.float32(np.inf)), "huge": np.float32(1e4),
                 "tiny": np.float32(draw(st.floats(float(np.float32(1e-6)), 2.0**-6, width=32)))}[kind]
        amax = np.float32(ratio * np.float32(6.0))
        x = np.clip(draw(fp4_block(16, float(ratio) / 2)), -amax, amax)
        x[draw(st.integers(0, 15))] = amax
        subs.append(x)
    return np.concatenate(subs)[None, :].astype(np.float32)


@st.composite
def ternary_rows(draw, n: int):
    """Rows for TQ1_0 / TQ2_0 / Q2_0: amax d (a power of two or not), lanes at ±d/2 (lroundf's
    ties), an ulp beside them, ±d, ±0."""
    d = np.float32(draw(st.sampled_from([1.0, 0.75, 3.0, 2.0**-20, 1e-3])))
    labels = draw(hnp.arrays(np.int8, n, elements=st.integers(0, 4)))
    half = np.float32(d / 2)
    v = np.select([labels == 0, labels == 1, labels == 2, labels == 3],
                  [half, np.nextafter(half, np.float32(0)), np.nextafter(half, np.float32(1)), d], np.float32(0))
    v = np.where(draw(hnp.arrays(np.bool_, n)), -v, v)
    v[draw(st.integers(0, n - 1))] = d
    return v[None, :].astype(np.float32)


def structured_rows(qtype):
    if qtype == "MXFP4":
        return mxfp4_rows()
    if qtype == "NVFP4":
        return nvfp4_rows()
    return ternary_rows(BLOCK[qtype])


# --------------------------------------------------------------------------- bytes vs libggml

@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_quantize_matches_libggml(qtype, data):
    x = data.draw(rst.rows(block=BLOCK[qtype], max_rows=3, max_blocks=max_blocks(qtype), kinds=rst.GGUF_KINDS))
    assert np.array_equal(rg.quantize(x, qtype), ggml_q(x, qtype))


@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_structured_blocks_match_libggml(qtype, data):
    """Ties of the element search, scales at E4M3 ties and past its range, log2f just below 2^k."""
    x = data.draw(structured_rows(qtype))
    assert np.array_equal(rg.quantize(x, qtype), ggml_q(x, qtype))


# (amax, ggml's byte): floorf(log2f(amax)) - 2 + 127, cast to uint8 (x86: modulo 256 below 0)
E8M0_CASES = [(2.0**-126, 255), (1.5 * 2.0**-126, 255), (2.0**-125, 0), (2.0**-130, 251), (2.0**-149, 232),
              (float(np.nextafter(np.float32(2.0**21), np.float32(0))), 146), (2.0**21, 146), (3e38, 252)]


@pytest.mark.parametrize("amax, byte", E8M0_CASES)
def test_mxfp4_scale_byte_wraps_and_rounds_as_libggml(amax, byte):
    """Below amax = 2^-125 the negative byte wraps (amax in [2^-126, 2^-125) gives 255, beyond E8M0's
    spec range); 2^21 - ulp has log2f = 21.0 in float32, so it shares 2^21's byte."""
    x = np.zeros((1, 32), np.float32)
    x[0, 5] = amax
    raw = rg.quantize(x, "MXFP4")
    assert raw[0, 0] == byte
    assert np.array_equal(raw, ggml_q(x, "MXFP4"))


@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_imatrix_is_ignored_as_in_libggml(qtype, data):
    x = data.draw(rst.rows(block=BLOCK[qtype], max_rows=2, max_blocks=max_blocks(qtype), kinds=rst.GGUF_KINDS))
    imatrix = data.draw(imatrices(x.shape[1]))
    ours = rg.quantize(x, qtype, imatrix=imatrix)
    assert np.array_equal(ours, ggml_q(x, qtype, imatrix))
    assert np.array_equal(ours, rg.quantize(x, qtype))


@pytest.mark.parametrize("qtype", TYPES)
def test_real_rows_match_libggml(qtype, real_rows):
    imatrix = np.mean(real_rows * real_rows, axis=0) + 1e-4
    assert np.array_equal(rg.quantize(real_rows, qtype), ggml_q(real_rows, qtype))
    assert np.array_equal(rg.quantize(real_rows, qtype, imatrix), ggml_q(real_rows, qtype, imatrix))


# --------------------------------------------------------------------------- decoding

@pytest.mark.parametrize("qtype", TYPES)
@given(seed=st.integers(0, 2**32 - 1))
def test_dequantize_random_bytes_and_quantized(qtype, seed):
    rng = np.random.default_rng(seed)
    t = rg.ggml_type(qtype)
    x = (rng.standard_t(3, (2, 2 * t.block_size)) * 0.05).astype(np.float32)
    for raw in (rng.integers(0, 256, (2, 8 * t.type_size), dtype=np.uint8), ggml_q(x, qtype)):
        ours = rg.dequantize(raw, qtype)
        assert np.array_equal(bits(ours), bits(ggml_dq(raw, qtype)))
        if qtype in GGUF_PY:
            import gguf
            from gguf import quants

            with np.errstate(over="ignore", invalid="ignore"):  # inf · 0 and 12 · 2^127, as in C
                theirs = quants.dequantize(raw, gguf.GGMLQuantizationType[qtype])
            assert np.array_equal(bits(ours), bits(theirs))


@pytest.mark.parametrize("qtype", TYPES)
def test_every_scale_byte_decodes_as_libggml(qtype):
    """All 256 values of each scale byte (both bytes of the f16 d: ±inf, NaN, subnormals) with every code."""
    t = rg.ggml_type(qtype)
    lay = {"TQ1_0": lowbit.TQ1_0_BLOCK, "TQ2_0": lowbit.TQ2_0_BLOCK, "MXFP4": lowbit.MXFP4_BLOCK,
           "NVFP4": lowbit.NVFP4_BLOCK, "Q1_0": lowbit.Q1_0_BLOCK, "Q2_0": lowbit.Q2_0_BLOCK}[qtype]
    raw = np.random.default_rng(1).integers(0, 256, (256, t.type_size), dtype=np.uint8)
    off = lay.offset("d" if "d" in lay.widths else "e")
    raw[:, off] = np.arange(256)
    if qtype != "NVFP4" and lay.widths.get("d") == 2:
        raw[:, off + 1] = np.arange(256)[::-1]
    assert np.array_equal(bits(rg.dequantize(raw, qtype)), bits(ggml_dq(raw, qtype)))


def f16(v):
    return list(np.float16(v).tobytes())


def test_hand_built_tq1_0_block():
    """Five trits (2, 1, 0, 1, 2) are q = 2·81 + 27 + 3 + 2 = 194 -> byte ceil(194·256/243) = 205; qh's four
    (2, 1, 0, 1) and a zero trit are q = 64·3 = 192 -> 203. With d = 1: trit t decodes to t − 1."""
    raw = np.array([[205] * 48 + [203] * 4 + f16(1.0)], np.uint8)
    five, four = [1, 0, -1, 0, 1], [1, 0, -1, 0]
    expected = np.repeat(five, 32).tolist() + np.repeat(five, 16).tolist() + np.repeat(four, 4).tolist()
    assert rg.dequantize(raw, "TQ1_0").tolist() == [expected]
    assert np.array_equal(rg.quantize(rg.dequantize(raw, "TQ1_0"), "TQ1_0"), raw)


def test_hand_built_tq2_0_block():
    # byte 0b00_01_10_00 = 0x18: planes 0 … 3 hold trits 0, 2, 1, 0 -> −1, +1, 0, −1 (times d = 2)
    raw = np.array([[0x18] * 64 + f16(2.0)], np.uint8)
    expected = np.repeat([-2.0, 2.0, 0.0, -2.0] * 2, 32)
    assert rg.dequantize(raw, "TQ2_0").tolist() == [expected.tolist()]


def test_hand_built_mxfp4_block():
    # e = 128: d = 2^0 = 1; byte j = j | (15 − j) << 4 -> K[0 … 15], then K[15 … 0]; e = 255 with K = 12 is inf
    K = list(lowbit.KVALUES_FP4)
    raw = np.array([[128] + [j | (15 - j) << 4 for j in range(16)], [255] + [0x71] * 16], np.uint8)
    out = rg.dequantize(raw, "MXFP4")
    assert out[0].tolist() == K + K[::-1]
    assert out[1].tolist() == [2.0**127] * 16 + [np.inf] * 16


def test_hand_built_nvfp4_block():
    # scales 0x38 (E4M3 1.0, halved 0.5), 0x40 (2.0 -> 1.0), 0x7F (read as 0), 0xFF (bit 7 ignored: 480 -> 240)
    raw = np.array([[0x38, 0x40, 0x7F, 0xFF] + [0x71] * 32], np.uint8)   # codes 1 (K = 1) low, 7 (K = 12) high
    expected = [v for d in (0.5, 1.0, 0.0, 240.0) for v in [d] * 8 + [12 * d] * 8]
    assert rg.dequantize(raw, "NVFP4").tolist() == [expected]


def test_hand_built_q1_0_and_q2_0_blocks():
    # Q1_0: byte 0x0F sets bits 0-3 -> +d for weights 8b .. 8b+3, −d for 8b+4 .. 8b+7
    q1 = np.array([f16(0.5) + [0x0F] * 16], np.uint8)
    assert rg.dequantize(q1, "Q1_0").tolist() == [[0.5, 0.5, 0.5, 0.5, -0.5, -0.5, -0.5, -0.5] * 16]
    # Q2_0: byte 0b11_10_01_00 = 0xE4 -> codes 0, 1, 2, 3 -> −d, 0, +d, +2d
    q2 = np.array([f16(3.0) + [0xE4] * 16], np.uint8)
    assert rg.dequantize(q2, "Q2_0").tolist() == [[-3.0, 0.0, 3.0, 6.0] * 16]


def test_q1_0_worked_example():
    """d = mean|x| summed left to right; −0.0 ≥ 0 sets its bit (decodes to +d)."""
    x = np.zeros((1, 128), np.float32)
    x[0, :4] = [-3.0, 1.0, -0.0, 4.0]          # Σ|x| = 8, d = 8/128 = 2^-4
    raw = rg.quantize(x, "Q1_0")
    assert raw[0, :3].tolist() == f16(2.0**-4) + [0b11111110]
    assert np.array_equal(raw, ggml_q(x, "Q1_0"))


def test_q1_0_sums_left_to_right():
    """x_0 = 1 + 2^-11 − 2^-22 (d = x_0/128 just below a float16 midpoint), then 127 lanes of 2^-24: C's
    running sum loses every one (a tie to even), a pairwise sum keeps 112 of them and crosses the midpoint."""
    x = np.full((1, 128), 2.0**-24, np.float32)
    x[0, 0] = 1 + 2.0**-11 - 2.0**-22
    raw = rg.quantize(x, "Q1_0")
    assert raw[0, :2].tolist() == f16(2.0**-7)          # the pairwise sum would round up to (1 + 2^-10)·2^-7
    assert np.array_equal(raw, ggml_q(x, "Q1_0"))


# --------------------------------------------------------------------------- the element search

@given(v=st.floats(-20, 20, width=32), e=st.integers(-3, 3))
@example(v=0.25, e=0)
@example(v=-0.75, e=0)
@example(v=-0.0, e=0)
@example(v=5.0, e=0)
def test_best_index_is_the_nearest_level_ties_to_the_smaller(v, e):
    """best_index_fp4 = best_index_mxfp4's loop: the nearest K·d, a tie going to the smaller magnitude,
    and code 0 (never 8) for a zero."""
    d = np.float32(2.0**e)
    got = int(lowbit.best_index_fp4(np.float32([[v]]), np.float32([[d]]))[0, 0])
    K = np.float64(lowbit.KVALUES_FP4) * float(d)
    dist = np.abs(K - v)
    assert got == int(np.flatnonzero(dist == dist.min())[0])


def test_best_index_far_above_the_grid_keeps_the_first_of_equal_float_errors():
    """x = 1e20 against d = 224 (NVFP4's capped scale): every fabsf(K·d − x) rounds to 1e20, so C's strict
    '<' keeps code 0 — not the saturating 12 a midpoint rule would give."""
    x = np.zeros((1, 64), np.float32)
    x[0, 0] = 1e20
    raw = rg.quantize(x, "NVFP4")
    assert raw[0, 0] == 0x7E and raw[0, 4] == 0
    assert np.array_equal(raw, ggml_q(x, "NVFP4"))


# --------------------------------------------------------------------------- bounds, round trips, metamorphic

ORDINARY = ("normal", "outlier", "same_sign", "heavy_tails", "ties", "constant", "uniform_int")


@settings(max_examples=30)
@pytest.mark.parametrize("qtype", TYPES)
@given(data=st.data())
def test_round_trip_is_idempotent(qtype, data):
    """Q(D(Q(x))) = Q(x) through the public API: the decoded block keeps its scale and codes."""
    x = data.draw(rst.rows(block=BLOCK[qtype], max_rows=2, max_blocks=max_blocks(qtype), kinds=ORDINARY))
    raw = rg.quantize(x, qtype)
    assert np.array_equal(rg.quantize(rg.dequantize(raw, qtype), qtype), raw)


@settings(max_examples=30)
@pytest.mark.parametrize("qtype", ("MXFP4", "NVFP4", "TQ2_0", "TQ1_0", "Q2_0"))
@given(data=st.data())
def test_decoded_weight_is_the_nearest_level_of_its_grid(qtype, data):
    """Every ŵ is a point of its block's grid nearest to x (or, for NVFP4's capped scale, the first of equal
    float32 errors): |x − ŵ| ≤ min over the grid + float32 rounding. Grids: K · d (FP4), d · {−1, 0, 1}."""
    x = data.draw(rst.rows(block=BLOCK[qtype], max_rows=2, max_blocks=max_blocks(qtype), kinds=ORDINARY))
    w = rg.dequantize(rg.quantize(x, qtype), qtype).astype(np.float64)
    sub = lowbit.QK_NVFP4_SUB if qtype == "NVFP4" else BLOCK[qtype]
    xb, wb = x.reshape(-1, sub).astype(np.float64), w.reshape(-1, sub)
    if qtype in ("MXFP4", "NVFP4"):
        raw = rg.quantize(x, qtype).reshape(-1, rg.ggml_type(qtype).type_size)
        d = (lowbit.e8m0_half(raw[:, :1]) if qtype == "MXFP4" else lowbit.ue4m3_half(raw[:, :4]).reshape(-1, 1))
        grid = np.float64(lowbit.KVALUES_FP4)[None, None, :] * d.astype(np.float64)[:, :, None]
    else:
        d = np.abs(wb).max(1, keepdims=True)
        grid = np.array([-1.0, 0.0, 1.0])[None, None, :] * d[:, :, None]
    best = np.abs(grid - xb[:, :, None]).min(-1)
    err = np.abs(xb - wb)
    scale = np.maximum(np.abs(grid).max(-1), 1e-30)
    target(float((err / scale).max()), label="error / block range")
    # d is float16-rounded for the trits (relative 2^-11), exact for FP4
    assert np.all(err <= best + 2.0**-10 * scale + 1e-30)


@settings(max_examples=30)
@given(data=st.data(), k=st.integers(-20, 20))
def test_mxfp4_power_of_two_scaling_moves_only_the_exponent(data, k):
    """x -> 2^k x adds k to e and keeps every code (amax's binade moves by k; the grid scales exactly)."""
    x = data.draw(rst.rows(block=32, max_rows=2, max_blocks=4, kinds=("normal", "heavy_tails", "outlier", "ties")))
    raw, scaled = rg.quantize(x, "MXFP4"), rg.quantize(x * np.float32(2.0**k), "MXFP4")
    e, e2 = raw.reshape(-1, 17)[:, 0].astype(int), scaled.reshape(-1, 17)[:, 0].astype(int)
    nonzero = np.abs(x.reshape(-1, 32)).max(1) > 0
    assert np.array_equal((e2 - e)[nonzero], np.full(int(nonzero.sum()), k))
    assert np.array_equal(raw.reshape(-1, 17)[:, 1:], scaled.reshape(-1, 17)[:, 1:])


@pytest.mark.parametrize("qtype", ("TQ1_0", "TQ2_0"))
@given(x=rst.rows(block=256, max_rows=2, max_blocks=2, kinds=ORDINARY))
def test_ternary_sign_flip_flips_the_trits(qtype, x):
    """lroundf is symmetric: −x gives trits 2 − t and the same d, so it decodes to −ŵ."""
    w = rg.dequantize(rg.quantize(x, qtype), qtype)
    w_neg = rg.dequantize(rg.quantize(-x, qtype), qtype)
    assert np.array_equal(w_neg + 0.0, -w + 0.0)


# --------------------------------------------------------------------------- registry, errors, backends

def test_registered_with_their_imatrix_use():
    assert all(rg.codec(t).imatrix == "ignored" for t in TYPES)
    assert set(TYPES) <= set(rg.SUPPORTED) and not set(TYPES) & set(rg.IMATRIX_TYPES)


@pytest.mark.parametrize("qtype", TYPES)
def test_bad_input_is_one_clear_error(qtype):
    n = BLOCK[qtype]
    with pytest.raises(ValueError, match="x: expected"):
        rg.codec(qtype).quantize(np.zeros((1, n + 1), np.float32))
    with pytest.raises(ValueError, match="x: contains NaN"):
        rg.quantize(np.full((1, n), np.nan, np.float32), qtype)
    with pytest.raises(TypeError, match="raw: expected a uint8"):
        rg.codec(qtype).dequantize(np.zeros((1, rg.ggml_type(qtype).type_size), np.int8))


@pytest.mark.parametrize("qtype", TYPES)
def test_backend_parity(xp, qtype, real_rows):
    from refquant._backend import to_numpy

    x = real_rows[:2]
    raw = rg.quantize(x, qtype)
    rnd = np.random.default_rng(2).integers(0, 256, (2, 4 * rg.ggml_type(qtype).type_size), dtype=np.uint8)
    assert np.array_equal(to_numpy(rg.quantize(xp.asarray(x), qtype)), raw)
    assert np.array_equal(bits(to_numpy(rg.dequantize(xp.asarray(raw), qtype))), bits(rg.dequantize(raw, qtype)))
    # random float16 scales include NaN: off NumPy, float_from_bits decodes every NaN without its payload
    ours = to_numpy(rg.dequantize(xp.asarray(rnd), qtype))
    assert np.array_equal(ours, rg.dequantize(rnd, qtype), equal_nan=True)


@pytest.mark.gpu
@pytest.mark.parametrize("qtype", TYPES)
def test_cupy_matches_numpy(qtype, real_rows):
    cupy = pytest.importorskip("cupy")
    raw = rg.quantize(real_rows, qtype)
    assert np.array_equal(cupy.asnumpy(rg.dequantize(cupy.asarray(raw), qtype)), rg.dequantize(raw, qtype))
    assert np.array_equal(cupy.asnumpy(rg.quantize(cupy.asarray(real_rows), qtype)), raw)
