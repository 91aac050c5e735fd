"""refquant.uniform: error bound, round trips, metamorphic properties, a loop oracle, bad input.

Torch parity lives in test_uniform_torch.py, backend parity in test_uniform_backends.py.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given, target, strategies as st

from refquant import uniform as U
from refquant.testing import strategies as st_rq

U32 = 2.0**-24  # float32 unit roundoff: the relative error of one rounded float32 operation

bits_st = st.integers(2, 8)
granularity_st = st.sampled_from(U.GRANULARITIES)
convention_st = st.sampled_from(U.CONVENTIONS)


def _quantize(x, bits, symmetric, granularity, signed=True, convention="refquant", search=None, G=16):
    return U.quantize(x, bits, symmetric, granularity, axis=None, group_size=G if granularity == "group" else None,
                      signed=signed, convention=convention, search=search)


def _expand(qt, a):
    """A per-block array (s or z) broadcast to x's shape (for elementwise comparison)."""
    full = np.broadcast_to(a, qt.q.shape)
    if qt.granularity == "group":
        full = np.moveaxis(full.reshape(*full.shape[:-2], -1), -1, qt.axis)
    return full


# --------------------------------------------------------------------------- hand-worked examples


def test_code_ranges_by_hand():
    assert U.code_range(8, True) == (-127, 127)   # restricted: -q_max..q_max
    assert U.code_range(8, False) == (-128, 127)
    assert U.code_range(4, False, signed=False) == (0, 15)
    assert U.code_range(4, True, signed=False) == (1, 15)  # -7..7 + 8
    assert U.torch_code_range(8, True) == (-128, 127)
    assert U.torch_code_range(3, False) == (0, 7)


def test_tutorial_asymmetric_example_by_hand():
    # range [-1, 2] in 2 unsigned bits: s = (2 - (-1)) / (3 - 0) = 1, z = 0 - round(-1 / 1) = 1
    s, z = U.qparams(np.float32([-1.0]), np.float32([2.0]), 2, symmetric=False, signed=False)
    assert (s[0], z[0]) == (1.0, 1.0)
    x = np.float32([-1.0, 0.0, 0.5, 1.5, 2.0, 7.0])
    # round(x/s) = -1, 0, 0 (0.5 is a tie -> even 0), 2 (1.5 tie -> even 2), 2, 7
    # + z        =  0, 1, 1, 3, 3, 8 -> clamped to q_max = 3
    q = U.quantize_codes(x, s, z, 0, 3)
    assert q.tolist() == [0, 1, 1, 3, 3, 3]
    assert U.dequantize_codes(q, s, z).tolist() == [-1.0, 0.0, 0.0, 2.0, 2.0, 2.0]


def test_symmetric_int8_example_by_hand():
    # absmax 2.54 -> s = 2.54 / 127 = 0.02; 1.27 / 0.02 = 63.5 in reals, fl32 rounds the quotient
    x = np.float32([-2.54, 0.0, 1.0, 2.54])
    qt = U.quantize(x, bits=8, symmetric=True)
    s = np.float32(2.54) / np.float32(127)
    assert qt.s.reshape(-1)[0] == s and qt.z.reshape(-1)[0] == 0
    assert qt.q.tolist() == [-127, 0, int(np.round(np.float32(1.0) / s)), 127]


def test_ties_round_half_to_even():
    s, z = np.float32([1.0]), np.float32([0.0])
    x = np.float32([0.5, 1.5, 2.5, -0.5, -1.5, -2.5])
    assert U.quantize_codes(x, s, z, -8, 7).tolist() == [0, 2, 2, 0, -2, -2]


def test_memory_arithmetic_13b():
    # the tutorial's first exercise: 13e9 weights
    assert U.model_size_bytes(13e9, 16) == 26e9                               # FP16: 2 bytes each
    assert U.model_size_bytes(13e9, 4) == 6.5e9                               # INT4 codes alone
    assert U.bits_per_weight(4, 128) == 4 + 16 / 128                          # fp16 scale per 128
    assert U.bits_per_weight(4, 128, scale_bits=16, zero_bits=4) == 4.15625   # + 4-bit zero-point
    assert U.model_size_bytes(13e9, 4, 128) == pytest.approx(13e9 * 4.125 / 8, rel=1e-15)
    assert U.bits_per_weight(4, 32, 16, 16) == 5.0                            # 32 extra bits per 32 weights


# --------------------------------------------------------------------------- (1) error bound


def _slack(x, x_hat):
    # one rounding in x / s (relative U32 of |x/s|, i.e. U32 |x| after scaling back by s) and one
    # in the product s (q - z) (relative U32 of |x̂|); round() and "+ z" are exact.
    return U32 * (np.abs(x) + np.abs(x_hat))


@given(x=st_rq.rows(block=16), bits=bits_st, symmetric=st.booleans(), signed=st.booleans(),
       granularity=granularity_st, convention=convention_st)
# exact ties: range [0, 3] in 2 unsigned bits gives s = 1, z = 0, and 0.5, 1.5, 2.5 sit on
# midpoints: the error is exactly s/2, the bound with no room to spare
@example(x=np.float32([[0.5, 1.5, 2.5, 3.0] * 4]), bits=2, symmetric=False, signed=False,
         granularity="tensor", convention="torch")
def test_error_at_most_half_a_step(x, bits, symmetric, signed, granularity, convention):
    """|x - x̂| <= s/2 for every x of the observed range (plus two float32 roundings)."""
    qt = _quantize(x, bits, symmetric, granularity, signed, convention)
    x_hat = U.dequantize(qt)
    s = _expand(qt, qt.s)
    # torch's x * fl(1/s) carries one more rounding (the reciprocal): 2 U32 |x| instead of U32 |x|
    extra = U32 * np.abs(x) if convention == "torch" else 0.0
    err = np.abs(x.astype(np.float64) - x_hat)
    bound = s / 2 + _slack(x, x_hat) + extra
    target(float(np.max(err / bound)), label="error / bound")
    assert np.all(err <= bound)


@given(x=st_rq.rows(block=16), bits=bits_st, symmetric=st.booleans(), signed=st.booleans())
def test_outside_the_range_clamps_to_the_end(x, bits, symmetric, signed):
    q_min, q_max = U.code_range(bits, symmetric, signed)
    s, z = U.qparams(np.min(x, keepdims=True), np.max(x, keepdims=True), bits, symmetric, signed)
    lo, hi = s * (q_min - z), s * (q_max - z)       # the grid's ends
    far = np.concatenate([hi + 3 * s + np.abs(x), lo - 3 * s - np.abs(x)], axis=-1).astype(np.float32)
    x_hat = U.dequantize_codes(U.quantize_codes(far, s, z, q_min, q_max), s, z)
    n = x.shape[-1]
    assert np.all(x_hat[..., :n] == hi) and np.all(x_hat[..., n:] == lo)


@given(x=st_rq.rows(block=32, max_blocks=2), bits=st.integers(2, 4), norm=st.sampled_from(["mse", 2.4]))
def test_range_search_never_worse_than_min_max(x, bits, norm):
    """The grid starts at the plain min/max (shrink factor 1), so its Lp error can only drop."""
    p = 2.0 if norm == "mse" else norm
    plain = U.fake_quantize(x, bits, False, "channel", signed=False)
    searched = U.fake_quantize(x, bits, False, "channel", signed=False, search=norm)
    e_plain = np.sum(np.abs(plain.astype(np.float64) - x) ** p, axis=1)
    e_search = np.sum(np.abs(searched.astype(np.float64) - x) ** p, axis=1)
    # float32 sums inside the search vs float64 here: allow the float32 summation error only
    assert np.all(e_search <= e_plain * (1 + 64 * U32) + 1e-30)


# --------------------------------------------------------------------------- (2) round trips


@given(x=st_rq.rows(block=16), bits=bits_st, symmetric=st.booleans(), signed=st.booleans(),
       granularity=granularity_st, convention=convention_st)
def test_idempotent(x, bits, symmetric, signed, granularity, convention):
    """Q(D(Q(x))) == Q(x) for the same s, z: fl(fl(s k) / s) = k for |k| <= 255."""
    qt = _quantize(x, bits, symmetric, granularity, signed, convention)
    codes = U.quantize_codes_torch if convention == "torch" else U.quantize_codes
    again = codes(U.dequantize_codes(qt.q, qt.s, qt.z), qt.s, qt.z, qt.q_min, qt.q_max)
    assert np.array_equal(again, qt.q)


@given(x=st_rq.rows(block=16), bits=bits_st, signed=st.booleans(), granularity=granularity_st, convention=convention_st)
def test_zero_is_exact_in_asymmetric_mode(x, bits, signed, granularity, convention):
    x = x.copy()
    x[..., ::3] = 0.0
    x_hat = U.dequantize(_quantize(x, bits, False, granularity, signed, convention))
    assert np.all(x_hat[..., ::3] == 0.0)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("signed", [True, False])
def test_pack_unpack_every_code(bits, signed):
    lo = -(1 << (bits - 1)) if signed else 0
    codes = np.arange(lo, lo + (1 << bits), dtype=np.int32)   # every code, incl. both ends
    codes = np.stack([codes, codes[::-1]])                    # (2, 2^b)
    packed = U.pack_codes(codes, bits, signed)
    assert packed.shape == (2, (codes.shape[1] * bits + 7) // 8) and packed.dtype == np.uint8
    assert np.array_equal(U.unpack_codes(packed, bits, codes.shape[1], signed), codes)


def test_pack_bit_order_by_hand():
    # unsigned 4-bit [1, 2] -> 0x21 (first code low nibble); signed 4-bit [-8, 7] -> offsets [0, 15] -> 0xF0
    assert U.pack_codes(np.array([1, 2]), 4, signed=False).tolist() == [0x21]
    assert U.pack_codes(np.array([-8, 7]), 4, signed=True).tolist() == [0xF0]
    assert U.pack_codes(np.array([1, 2, 3, 0]), 2, signed=False).tolist() == [0b00_11_10_01]


@given(x=st_rq.rows(block=16), bits=st.sampled_from([2, 3, 4, 8]), granularity=granularity_st)
def test_quantized_tensor_packs_and_unpacks(x, bits, granularity):
    qt = _quantize(x, bits, False, granularity, signed=False)
    n = qt.q.shape[-1]
    assert np.array_equal(U.unpack_codes(U.pack_codes(qt.q, bits, signed=False), bits, n, signed=False), qt.q)


# --------------------------------------------------------------------------- (3) metamorphic


@given(x=st_rq.rows(block=16), bits=bits_st, symmetric=st.booleans(), signed=st.booleans(),
       granularity=granularity_st, k=st.integers(-6, 6))
def test_power_of_two_scaling_commutes(x, bits, symmetric, signed, granularity, k):
    """D(Q(2^k x)) == 2^k D(Q(x)): every float op commutes with an exact power-of-two factor.

    (refquant's convention only: torch's eps floor on s breaks it for tiny ranges.)"""
    a = _quantize(x, bits, symmetric, granularity, signed)
    b = _quantize((x * np.float32(2.0**k)).astype(np.float32), bits, symmetric, granularity, signed)
    assert np.array_equal(a.q, b.q)
    assert np.array_equal(U.dequantize(a) * np.float32(2.0**k), U.dequantize(b))


@given(x=st_rq.rows(block=16), bits=bits_st, signed=st.booleans(), granularity=granularity_st)
def test_sign_flip_symmetric(x, bits, signed, granularity):
    """Symmetric quantization is odd: D(Q(-x)) == -D(Q(x)) — the restricted range is mirror-symmetric
    and half-to-even rounding is odd. (torch's full range -2^(b-1)..2^(b-1)-1 is not.)"""
    a = U.dequantize(_quantize(x, bits, True, granularity, signed))
    b = U.dequantize(_quantize(-x, bits, True, granularity, signed))
    assert np.array_equal(-a, b)


@given(x=st_rq.rows(block=8, max_blocks=6), bits=bits_st, symmetric=st.booleans(), seed=st.integers(0, 2**16))
def test_permuting_groups_permutes_codes_and_scales(x, bits, symmetric, seed):
    G = 8
    perm = np.random.default_rng(seed).permutation(x.shape[1] // G)
    xp_ = x.reshape(x.shape[0], -1, G)[:, perm, :].reshape(x.shape)
    a = U.quantize(x, bits, symmetric, "group", group_size=G)
    b = U.quantize(xp_, bits, symmetric, "group", group_size=G)
    assert np.array_equal(a.q[:, perm], b.q) and np.array_equal(a.s[:, perm], b.s) and np.array_equal(a.z[:, perm], b.z)


@given(x=st_rq.rows(block=16, max_rows=3), bits=bits_st, symmetric=st.booleans())
def test_groups_along_axis_0_are_groups_of_the_transpose(x, bits, symmetric):
    a = U.fake_quantize(np.ascontiguousarray(x.T), bits, symmetric, "group", axis=0, group_size=16)   # (n, rows)
    b = U.fake_quantize(x, bits, symmetric, "group", axis=-1, group_size=16)                          # (rows, n)
    assert np.array_equal(a.T, b)


# --------------------------------------------------------------------------- (4) a slow, obvious loop


def _loop_fake_quantize_groups(w, bits, symmetric, G):
    """Group quantization of a (rows, n) float32 matrix, one group at a time in float32 scalars."""
    q_min, q_max = U.code_range(bits, symmetric)
    out = np.empty_like(w)
    f = np.float32
    for r in range(w.shape[0]):
        for g0 in range(0, w.shape[1], G):
            grp = w[r, g0:g0 + G]
            lo, hi = min(f(0), min(grp)), max(f(0), max(grp))
            if symmetric:
                s = max(-lo, hi) / f((q_max - q_min) / 2)
                z = f(0)
            else:
                s = (hi - lo) / f(q_max - q_min)
            s = f(1) if s == 0 else s
            if not symmetric:
                z = min(max(f(q_min) - f(round(lo / s)), f(q_min)), f(q_max))   # round(): half to even
            for j, v in enumerate(grp):
                k = min(max(f(round(v / s)) + z, q_min), q_max)
                out[r, g0 + j] = s * (f(k) - z)
    return out


@given(x=st_rq.rows(block=16, max_rows=3, max_blocks=3), bits=bits_st, symmetric=st.booleans())
def test_group_quantization_matches_the_loop(x, bits, symmetric):
    got = U.fake_quantize(x, bits, symmetric, "group", group_size=16, signed=True)
    assert got.tobytes() == _loop_fake_quantize_groups(x, bits, symmetric, 16).tobytes()


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kwargs, exc, words", [
    (dict(bits=1), ValueError, "bits"),
    (dict(bits=9), ValueError, "bits"),
    (dict(bits=4.0), ValueError, "bits"),
    (dict(granularity="block"), ValueError, "granularity"),
    (dict(granularity="group", group_size=5), ValueError, "group size"),
    (dict(granularity="group"), ValueError, "group_size"),
    (dict(granularity="group", group_size=0), ValueError, "group_size"),
    (dict(granularity="tensor", group_size=8), ValueError, "group_size"),
    (dict(granularity="channel", axis=2), ValueError, "axis"),
    (dict(search="l1"), ValueError, "search"),
    (dict(search=-1.0), ValueError, "search"),
    (dict(convention="tf"), ValueError, "convention"),
])
def test_bad_arguments_name_themselves(kwargs, exc, words):
    x = np.ones((2, 16), np.float32)
    with pytest.raises(exc, match=words):
        U.quantize(x, **kwargs)


@pytest.mark.parametrize("x, exc, words", [
    (np.array([1.0, np.nan], np.float32), ValueError, "NaN or Inf"),
    (np.array([1.0, np.inf], np.float32), ValueError, "NaN or Inf"),
    (np.zeros((0, 4), np.float32), ValueError, "non-empty"),
    (np.float32(3.0), ValueError, "non-empty"),
    (np.arange(8, dtype=np.int32), TypeError, "floating"),
    (np.arange(8, dtype=np.uint8), TypeError, "floating"),
])
def test_bad_tensors_name_x(x, exc, words):
    with pytest.raises(exc, match=f"x: .*{words}"):
        U.quantize(x, 4)


def test_bad_packing_and_accounting_inputs():
    with pytest.raises(ValueError, match="q: .*out of range"):
        U.pack_codes(np.array([16]), 4, signed=False)
    with pytest.raises(ValueError, match="q: .*out of range"):
        U.pack_codes(np.array([-9]), 4, signed=True)
    with pytest.raises(ValueError, match="group_size"):
        U.bits_per_weight(4, 0)
    with pytest.raises(ValueError, match="n_params"):
        U.model_size_bytes(0, 4)
    with pytest.raises(ValueError, match="zero_scale"):
        U.qparams(np.float32([0]), np.float32([0]), 4, False, zero_scale=0.0)
    with pytest.raises(ValueError, match="q_range"):
        U.qparams(np.float32([-1]), np.float32([1]), 4, False, q_range=(3, 3))


def test_all_zero_blocks_reconstruct_exactly_whatever_the_scale():
    x = np.zeros((2, 8), np.float32)
    for kw in (dict(), dict(zero_scale=2.0**-23), dict(eps=U.TORCH_EPS)):
        for symmetric in (True, False):
            s, z = U.qparams(x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True), 4, symmetric, **kw)
            assert np.all(s > 0)
            assert np.all(U.dequantize_codes(U.quantize_codes(x, s, z, *U.code_range(4, symmetric)), s, z) == 0)


def test_float16_input_is_widened():
    x = np.linspace(-1, 1, 32, dtype=np.float16)
    qt = U.quantize(x, 4, False)
    assert qt.s.dtype == np.float32
    assert U.fake_quantize(x, 4, False).dtype == np.float16


def test_bits_per_weight_table_is_consistent():
    for b in range(2, 9):
        for G in (32, 64, 128):
            assert math.isclose(U.bits_per_weight(b, G, 16, b) * G, b * G + 16 + b)


@given(x=st_rq.rows(block=16, max_rows=3), bits=bits_st, signed=st.booleans(), convention=convention_st,
       scale_exp=st.integers(-20, 4), z_end=st.sampled_from(["low", "mid", "high"]))
def test_fused_fake_quant_equals_codes_then_dequantize(x, bits, signed, convention, scale_exp, z_end):
    """fake_quantize_codes' single-buffer form against the two steps it replaces, codes then
    s (q - z): ties, huge |x / s| (scales down to 2^-20 · 1.5), ±inf, z at either end of the range."""
    q_min, q_max = U.torch_code_range(bits, signed) if convention == "torch" else U.code_range(bits, False, signed)
    x = x.copy()
    x[0, :2] = [np.inf, -np.inf]
    s = (np.float32(1.5) * np.float32(2.0) ** (scale_exp + np.arange(x.shape[0]))).astype(np.float32)[:, None]
    z = np.full_like(s, {"low": q_min, "mid": (q_min + q_max) // 2, "high": q_max}[z_end])
    codes = (U.quantize_codes_torch if convention == "torch" else U.quantize_codes)(x, s, z, q_min, q_max)
    two_step = U.dequantize_codes(codes, s, z)
    got = U.fake_quantize_codes(x, s, z, q_min, q_max, convention=convention)
    assert got.dtype == np.float32 and got.tobytes() == two_step.tobytes()
    assert np.all(np.isfinite(got))
