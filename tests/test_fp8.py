"""refquant.fp8: the small float grids (E4M3, E5M2, E3M2, E2M3, E2M1) and FP8 weight scaling.

Oracles: torch's float8_e4m3fn / float8_e5m2 casts (values and bytes), torchao's float8 weight
functions, and torchao's FP6/FP4 decoders; plus a slow loop (nearest grid value from a decoder written
here from the OCP field definitions, ties to the even pattern) for every format.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from refquant import fp8
from refquant._backend import from_numpy, to_numpy

torch = pytest.importorskip("torch")
from refquant.testing import torchao as T  # noqa: E402

XP_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
LANE_KINDS = ("grid", "tie", "tie_up", "tie_down", "ordinary", "subnormal", "overflow", "huge", "zero")


# --- the slow loop oracle: the OCP definitions, one pattern at a time ---------------------------------

def slow_value(pattern: int, fmt: fp8.FloatFormat) -> float:
    """The value of one bit pattern, from the field definitions (OFP8 §3, MX §5.3)."""
    e, m, bias = fmt.exp_bits, fmt.man_bits, fmt.bias
    sign = -1.0 if pattern >> (e + m) else 1.0
    E, M = (pattern >> m) & ((1 << e) - 1), pattern & ((1 << m) - 1)
    if fmt.specials == "ieee" and E == (1 << e) - 1:
        return sign * math.inf if M == 0 else math.nan
    if fmt.specials == "fn" and E == (1 << e) - 1 and M == (1 << m) - 1:
        return math.nan
    if E == 0:
        return sign * math.ldexp(M, 1 - bias - m)
    return sign * math.ldexp((1 << m) + M, E - bias - m)


def slow_grid(fmt):
    """(value, pattern) of every finite non-negative value, increasing."""
    pairs = [(slow_value(p, fmt), p) for p in range(1 << (fmt.n_bits - 1))]
    return sorted((v, p) for v, p in pairs if math.isfinite(v))


def slow_round(x: float, fmt) -> float:
    """Nearest finite grid value to x, ties to the even pattern (the even mantissa), saturating."""
    grid = slow_grid(fmt)
    a = min(abs(x), fmt.max)  # satfinite; and keeps the float64 distances below exact for huge x
    best = min(grid, key=lambda vp: (abs(a - vp[0]), vp[1] % 2))
    return math.copysign(best[0], x)


def _f32(lo, hi):
    """float32 values in [lo, hi] (bounds rounded to float32; subnormals where the range reaches them)."""
    return st.floats(float(np.float32(lo)), float(np.float32(hi)), width=32, allow_subnormal=lo == 0)


@st.composite
def lanes(draw, fmt, n_max=24):
    """float32 values whose structure is drawn: exact grid values, exact midpoints (ties) and their
    float32 neighbours, ordinary values, subnormals, overflow just past max, huge, ±0."""
    grid = [v for v, _ in slow_grid(fmt)]
    out = []
    for _ in range(draw(st.integers(1, n_max))):
        kind = draw(st.sampled_from(LANE_KINDS))
        i = draw(st.integers(0, len(grid) - 2))
        if kind == "grid":
            v = grid[i]
        elif kind.startswith("tie"):
            v = np.float32((grid[i] + grid[i + 1]) / 2)
            if kind != "tie":
                v = np.nextafter(v, np.float32(np.inf if kind == "tie_up" else 0))
        elif kind == "ordinary":
            v = draw(_f32(0, 2 * fmt.max))
        elif kind == "subnormal":
            v = draw(_f32(0, fmt.min_normal))
        elif kind == "overflow":  # up to a little past the last rounding boundary, max + spacing/2
            v = draw(_f32(fmt.max, fmt.max * (1 + 2.0 ** -(fmt.man_bits + 1)) * 1.01))
        elif kind == "huge":
            v = draw(_f32(fmt.max, 3e38))
        else:
            v = 0.0
        out.append(-float(v) if draw(st.booleans()) else float(v))
    return np.array(out, dtype=np.float32)


# --- the published tables, derived --------------------------------------------------------------------

@pytest.mark.parametrize("fmt", fp8.FORMATS.values(), ids=list(fp8.FORMATS))
def test_value_table_matches_the_field_definitions(fmt):
    slow = np.array([slow_value(p, fmt) for p in range(1 << fmt.n_bits)], dtype=np.float32)
    assert np.array_equal(fp8.value_table(fmt), slow, equal_nan=True)
    finite = slow[np.isfinite(slow)]
    assert fmt.max == finite.max() and fmt.min_subnormal == finite[finite > 0].min()


def test_published_maxima_and_e2m1_values():
    # OCP OFP8: E4M3 max 448 = 1.75 · 2^8, E5M2 max 57344 = 1.75 · 2^15 (torch.finfo says the same);
    # OCP MX: E2M1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 (here from torchao's own FP4 decoder)
    assert (fp8.E4M3.max, fp8.E5M2.max) == (float(torch.finfo(torch.float8_e4m3fn).max),
                                            float(torch.finfo(torch.float8_e5m2).max))
    from torchao.prototype.mx_formats.kernels import f4_unpacked_to_f32, f6_e2m3_unpacked_to_f32, \
        f6_e3m2_unpacked_to_f32
    assert fp8.value_table(fp8.E2M1).tolist() == f4_unpacked_to_f32(torch.arange(16, dtype=torch.uint8)).tolist()
    p6 = torch.arange(64, dtype=torch.uint8)
    assert fp8.value_table(fp8.E2M3).tolist() == f6_e2m3_unpacked_to_f32(p6).tolist()
    assert fp8.value_table(fp8.E3M2).tolist() == f6_e3m2_unpacked_to_f32(p6).tolist()


@pytest.mark.parametrize("name", ["e4m3", "e5m2"])
def test_every_fp8_pattern_decodes_as_torch(name):
    patterns = np.arange(256, dtype=np.uint8)
    ref = torch.from_numpy(patterns).view(getattr(torch, T._FP8[name])).float().numpy()
    assert np.array_equal(fp8.decode(patterns, name), ref, equal_nan=True)


# --- parity with torch's casts ------------------------------------------------------------------------

@given(st.data())
def test_e4m3_matches_torch_cast_saturating(data):
    x = data.draw(lanes(fp8.E4M3))
    ref = T.torch_cast(x, "e4m3")
    assert np.array_equal(fp8.round_to_format(x, fp8.E4M3), ref.values)
    assert np.array_equal(fp8.encode(x, fp8.E4M3), ref.bits)


@given(st.data())
def test_e5m2_matches_torch_cast_overflowing_to_inf(data):
    # torch's E5M2 cast does not saturate: past the last rounding boundary (61440) it gives ±inf
    x = data.draw(lanes(fp8.E5M2))
    ref = T.torch_cast(x, "e5m2")
    assert np.array_equal(fp8.round_to_format(x, fp8.E5M2, saturate=False), ref.values)
    assert np.array_equal(fp8.encode(x, fp8.E5M2, saturate=False), ref.bits)


def test_torch_e4m3_cast_saturates_even_infinity():
    x = np.float32([464.0, 1e6, np.inf, -np.inf])  # 464 is the midpoint past 448: RNE alone would say 512
    assert T.torch_cast(x, "e4m3").values.tolist() == [448.0, 448.0, 448.0, -448.0]
    assert fp8.round_to_format(x[:2], fp8.E4M3, saturate=False).tolist()[1] != 448.0  # NaN without saturation


# --- the slow loop, every format ---------------------------------------------------------------------

@pytest.mark.parametrize("fmt", fp8.FORMATS.values(), ids=list(fp8.FORMATS))
@given(data=st.data())
def test_round_matches_slow_loop(fmt, data):
    x = data.draw(lanes(fmt))
    ours = fp8.round_to_format(x, fmt)
    slow = np.array([slow_round(float(v), fmt) for v in x], dtype=np.float32)
    assert np.array_equal(ours, slow) and np.array_equal(np.signbit(ours), np.signbit(slow))


@pytest.mark.parametrize("fmt", fp8.FORMATS.values(), ids=list(fp8.FORMATS))
@given(data=st.data())
def test_round_trip_and_idempotence(fmt, data):
    x = data.draw(lanes(fmt))
    y = fp8.round_to_format(x, fmt)
    assert np.array_equal(fp8.round_to_format(y, fmt), y)
    assert np.array_equal(fp8.decode(fp8.encode(x, fmt), fmt), y)


@pytest.mark.parametrize("fmt", fp8.FORMATS.values(), ids=list(fp8.FORMATS))
@given(data=st.data())
def test_error_bound_half_spacing(fmt, data):
    # inside the range, |x - ŷ| ≤ spacing/2 where spacing = 2^(max(floor(log2|x|), emin) - m)
    x = data.draw(lanes(fmt))
    x = x[np.abs(x) <= fmt.max]
    a = np.abs(x.astype(np.float64))
    e = np.maximum(np.floor(np.log2(np.where(a > 0, a, 1.0))), fmt.emin)
    assert np.all(np.abs(x - fp8.round_to_format(x, fmt)) <= 2.0 ** (e - fmt.man_bits) / 2)


@given(st.data())
def test_power_of_two_scaling_commutes_inside_the_normal_range(data):
    # metamorphic: ×2 moves every normal value one binade up (no saturation below max/2)
    x = data.draw(lanes(fp8.E4M3))
    x = x[(np.abs(x) >= fp8.E4M3.min_normal) & (np.abs(x) <= fp8.E4M3.max / 2)]
    assert np.array_equal(fp8.round_to_format(2 * x, fp8.E4M3), 2 * fp8.round_to_format(x, fp8.E4M3))
    assert np.array_equal(fp8.round_to_format(-x, fp8.E4M3), -fp8.round_to_format(x, fp8.E4M3))


@XP_OK
@given(data=st.data())
def test_backends_agree(xp, data):
    x = data.draw(lanes(fp8.E5M2))
    ours = to_numpy(fp8.round_to_format(from_numpy(x, xp=xp), fp8.E5M2))
    assert np.array_equal(ours, fp8.round_to_format(x, fp8.E5M2))


# --- FP8 weights with scales: torchao ------------------------------------------------------------------

@st.composite
def weights(draw, multiple=1):
    """A matrix of shape divisible by ``multiple``, rows of drawn kinds: ordinary, an outlier lane, all
    zeros, a tie-prone power-of-two grid."""
    # at least 2 columns: torchao's row granularity fails to reshape its scale for a (r, 1) matrix
    r, c = draw(st.integers(1, 3)) * multiple, draw(st.integers(2 if multiple == 1 else 1, 3)) * multiple
    seed = draw(st.integers(0, 2**32 - 1))
    W = np.random.default_rng(seed).standard_normal((r, c)).astype(np.float32)
    for i in range(r):
        kind = draw(st.sampled_from(("ordinary", "outlier", "zeros", "grid")))
        if kind == "outlier":
            W[i, draw(st.integers(0, c - 1))] = draw(st.floats(10, 1e6, width=32))
        elif kind == "zeros":
            W[i] = 0.0
        elif kind == "grid":
            W[i] = np.round(W[i] * 8) / 8
    return W


@pytest.mark.parametrize("granularity", ["tensor", "row"])
@pytest.mark.parametrize("fmt", ["e4m3", "e5m2"])
@given(data=st.data())
def test_fp8_weights_match_torchao(fmt, granularity, data):
    W = data.draw(weights())
    nonzero = np.abs(W).max(axis=None if granularity == "tensor" else 1) > 0
    ref = T.torchao_float8(W, fmt, granularity)
    r = fp8.quantize(W, fmt, granularity)
    # torchao divides 0 by 0 in an all-zero granule (NaN); we store s = 1 and q = 0 there
    rows = np.broadcast_to(np.reshape(nonzero, (-1, 1)), W.shape)
    assert np.array_equal(r.q[rows], ref.q[rows])
    assert np.array_equal(r.s.ravel()[np.ravel(nonzero)], ref.s.ravel()[np.ravel(nonzero)])
    assert np.all(fp8.dequantize(r)[~rows] == 0)


@settings(max_examples=10)
@given(W=weights(multiple=128))
def test_fp8_block_weights_match_torchao(W):
    W = W + np.float32(1e-3)  # no all-zero 128x128 block (torchao's NaN, checked above)
    ref, r = T.torchao_float8(W, "e4m3", "block"), fp8.quantize(W, "e4m3", "block")
    assert np.array_equal(r.q, ref.q) and np.array_equal(r.s.reshape(ref.s.shape), ref.s)
    assert np.abs(fp8.dequantize(r) - W).max() <= np.abs(W).max() * 2.0**-4  # half of E4M3's 2^-3 relative step


def test_stored_bytes_count_one_byte_per_weight_and_a_float32_per_scale():
    W = np.ones((256, 384), np.float32)
    assert [fp8.stored_bytes(fp8.quantize(W, granularity=g)) for g in fp8.GRANULARITIES] == \
        [256 * 384 + 4, 256 * 384 + 4 * 256, 256 * 384 + 4 * 2 * 3]


# --- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: fp8.quantize(np.ones((4, 4), np.float32), "e2m1"), "fmt: FP8 weights are e4m3 or e5m2"),
    (lambda: fp8.quantize(np.ones((4, 4), np.float32), "e4m3x"), "fmt: expected one of"),
    (lambda: fp8.quantize(np.ones((4, 4), np.float32), granularity="col"), "granularity: expected one of"),
    (lambda: fp8.quantize(np.ones((100, 128), np.float32), granularity="block"), "not a whole number of 128x128"),
    (lambda: fp8.quantize(np.float32([[1.0, np.nan]])), "W: contains NaN or Inf"),
    (lambda: fp8.quantize(np.ones(4, np.float32)), "W: expected a matrix"),
    (lambda: fp8.round_to_format(np.ones(2, np.float32), "e2m1", saturate=False), "saturate: e2m1 has no inf"),
    (lambda: fp8.decode(np.uint8([16]), "e2m1"), "codes: e2m1 patterns are 4-bit"),
    (lambda: fp8.decode(np.int32([1]), "e4m3"), "codes: expected uint8"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()


@pytest.mark.parametrize("granularity", fp8.GRANULARITIES)
def test_fp8_weights_backends_agree(xp, granularity):
    W = (np.random.default_rng(3).standard_normal((256, 128)) * np.float32(0.05)).astype(np.float32)
    W[7, 3] = 40.0  # an outlier sets its row's, block's and the tensor's scale
    r = fp8.quantize(from_numpy(W, xp=xp), "e4m3", granularity)
    ref = fp8.quantize(W, "e4m3", granularity)
    assert np.array_equal(to_numpy(fp8.dequantize(r)), fp8.dequantize(ref))
    assert np.array_equal(to_numpy(r.s), ref.s)
