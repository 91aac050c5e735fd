"""refquant.mx: MX block scales (E8M0 per 32) in every scale mode, and NVFP4.

Oracles: torchao's ``to_mx`` / ``to_dtype`` for the floor, ceil, even and rceil modes of all five
element formats; libggml's MXFP4 (type 39) for the "ggml" mode's E8M0 byte and its NVFP4 (type 40)
for the "ggml" block-scale rounding; torchao's ``nvfp4_quantize`` (one and two levels).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from refquant import fp8, mx
from refquant._backend import from_numpy, to_numpy

pytest.importorskip("torch")
from refquant.testing import torchao as T  # noqa: E402
from refquant.testing.ggml import ggml_quantize  # noqa: E402

XP_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
GGML_MXFP4, GGML_NVFP4 = 39, 40                   # ggml's type ids (ggml.h: GGML_TYPE_MXFP4, GGML_TYPE_NVFP4)
GGML_MXFP4_BYTES, GGML_NVFP4_BYTES = 17, 36        # block_mxfp4: e + 16 qs; block_nvfp4: d[4] + 32 qs
TORCHAO_MODES = ("floor", "ceil", "even", "rceil")
BLOCK_KINDS = ("ordinary", "below_pow2", "above_pow2", "at_max", "zeros", "signed_zeros", "tiny", "huge", "ties")


@st.composite
def mx_blocks(draw, block=32, max_blocks=4, rows=2):
    """(rows, n_blocks·block) float32: each block's amax structure is drawn — one ulp below or above a
    power of two (where floor/ceil/even and float32 log2 disagree), exactly max·2^k, all ±0, tiny
    (amax < 2^-120: torchao's subnormal-scale guards), huge (near float32 max), ties on the E2M1 grid."""
    n_blocks = draw(st.integers(1, max_blocks))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((rows, n_blocks, block)).astype(np.float32)
    for r in range(rows):
        for b in range(n_blocks):
            kind = draw(st.sampled_from(BLOCK_KINDS))
            k = draw(st.integers(-30, 30))
            v = out[r, b]
            v /= np.abs(v).max()  # amax 1 at a random lane
            lane = int(np.abs(v).argmax())
            if kind == "below_pow2":
                v[lane] = np.copysign(np.nextafter(np.float32(2.0**k), np.float32(0)), v[lane]) * 2.0 ** -k
            elif kind == "above_pow2":
                v[lane] = np.copysign(np.nextafter(np.float32(2.0**k), np.float32(np.inf)), v[lane]) * 2.0 ** -k
            elif kind == "at_max":
                v[lane] = np.copysign(6.0 / 4, v[lane])  # amax = E2M1 max · 2^(k-2)
            elif kind == "zeros":
                v[:] = 0.0
            elif kind == "signed_zeros":
                v[:] = np.where(rng.random(block) < 0.5, -0.0, 0.0)
            elif kind == "ties":
                v[:] = np.round(v * 8) / 8 + 1 / 16
            scale = {"tiny": 2.0**-130, "huge": 2.0**120}.get(kind, 2.0**k)
            out[r, b] = (v * np.float32(scale)).astype(np.float32)
    return out.reshape(rows, n_blocks * block)


@pytest.mark.parametrize("mode", TORCHAO_MODES)
@pytest.mark.parametrize("element", sorted(mx.ELEMENTS))
@given(data=st.data())
def test_mx_matches_torchao(element, mode, data):
    x = data.draw(mx_blocks())
    ref = T.torchao_to_mx(x, element, mode)
    r = mx.mx_quantize(x, element, mode)
    assert np.array_equal(mx.e8m0_bytes(r), ref.scale_bytes)
    assert np.array_equal(mx.mx_dequantize(r), ref.W_hat)


@given(x=mx_blocks())
def test_ggml_mode_is_libggml_mxfp4_scale_byte(x):
    raw = ggml_quantize(x, GGML_MXFP4).reshape(x.shape[0], -1, GGML_MXFP4_BYTES)
    assert np.array_equal(mx.e8m0_bytes(mx.mx_quantize(x, "fp4_e2m1", "ggml")), raw[..., 0])


def test_ggml_mode_is_floor_but_for_float32_log2_just_below_a_power_of_two_and_tiny_blocks():
    # floorf(log2f(2^20 - ulp)): log2 = 20 - 8e-8 rounds to 20.0 in float32, so ggml's scale is one up;
    # amax = 2^-130: floor says X = -132 -> clamped to -127; ggml's uint8 cast wraps -132 + 127 to 251
    amax = np.float32([np.nextafter(np.float32(2.0**20), np.float32(0)), 3.0, 2.0**-3, 2.0**-130])
    ggml, floor = (mx.scale_exponent(amax, "fp4_e2m1", m) for m in ("ggml", "floor"))
    assert (ggml - floor).tolist() == [1.0, 0.0, 0.0, 251.0]


@pytest.mark.parametrize("k", [5, 10, 20])
def test_rceil_is_exact_where_torchaos_float32_log2_rounds_down(k):
    # descale = amax / 6 = 2^k (1 + 2^-23): float32 log2 gives k + 1.7e-7, which rounds to k once the
    # spacing of float32 near k (2^-21 for k ≥ 4) exceeds it; torchao's eager ceil(log2) then picks
    # X = k and saturates amax / 2^k > 6, while the exact round-up (NVIDIA's cvt.rp) picks k + 1
    amax = np.float32(6 * 2.0**k) * np.float32(1 + 2**-23)
    x = np.zeros((1, 32), np.float32)
    x[0, 0] = amax
    r = mx.mx_quantize(x, "fp4_e2m1", "rceil")
    assert int(mx.e8m0_bytes(r)[0, 0]) == int(T.torchao_to_mx(x, "fp4_e2m1", "rceil").scale_bytes[0, 0]) + 1
    assert float(np.asarray(r.X).ravel()[0]) == k + 1 and amax / 2.0 ** (k + 1) <= fp8.E2M1.max


@given(x=mx_blocks(block=16, rows=3))
def test_nvfp4_matches_torchao_single_and_two_level(x):
    for two_level in (False, True):
        ref = T.torchao_nvfp4(x, two_level)
        if two_level and ref.t < mx.F32_MIN_NORMAL:
            continue  # all-zero (torchao: t = 0, NaN) or 1/t overflowing: the next two tests
        r = mx.nvfp4_quantize(x, "amax" if two_level else None)
        assert np.array_equal(r.d[..., 0], ref.d) and np.array_equal(r.q, ref.q)


def test_nvfp4_all_zero_tensor_is_zero_under_a_tensor_scale():
    r = mx.nvfp4_quantize(np.zeros((2, 32), np.float32), "amax")
    assert float(r.t) == 1.0 and not np.any(mx.nvfp4_dequantize(r))


def test_nvfp4_tiny_tensor_scale_is_an_error_not_nan():
    x = np.float32([[1e-36] * 8 + [0.0] * 8])  # t = 1e-36 / 2688 is subnormal: torchao's 0 · inf is NaN,
    # which its FP4 cast turns into a code
    assert np.any(T.torchao_nvfp4(x, two_level=True).q[..., 8:] != 0)  # its zeros come back as ±1.5
    with pytest.raises(ValueError, match="tensor_scale: t = .* subnormal"):
        mx.nvfp4_quantize(x, "amax")


@given(x=mx_blocks(block=64, rows=2))
def test_nvfp4_ggml_scale_mode_is_libggml_nvfp4_scale_bytes(x):
    raw = ggml_quantize(x, GGML_NVFP4).reshape(x.shape[0], -1, GGML_NVFP4_BYTES)
    d = raw[..., :4].reshape(x.shape[0], -1)  # d[4] first: one UE4M3 byte per 16 values
    ours = mx.nvfp4_scale_bytes(mx.nvfp4_quantize(x, scale_mode="ggml"))
    assert np.array_equal(ours, d)


def test_nvfp4_torchao_and_ggml_scales_differ_at_ties_and_below_two_to_the_minus_6():
    ratio = np.float32([0.53125, 0.0155, 0.75])  # a tie, a sub-2^-6 ratio, a grid value
    t, g = (mx.nvfp4_block_scale(ratio, m) for m in mx.NVFP4_SCALE_MODES)
    assert t.tolist()[2] == g.tolist()[2] == 0.75 and t.tolist()[:2] != g.tolist()[:2]


# --- properties ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("element", sorted(mx.ELEMENTS))
@given(x=mx_blocks())
def test_ceil_never_saturates_error_bound(element, x):
    # ceil: amax / 2^X ≤ 2^emax ≤ max, so every element is rounded, none clipped:
    # |x - x̂| ≤ 2^X · spacing(top binade) / 2 = 2^(X + emax - m - 1)
    fmt = mx.ELEMENTS[element]
    r = mx.mx_quantize(x, element, "ceil")
    X = np.repeat(np.asarray(r.X)[..., 0], 32, axis=-1)
    normal_range = X > -mx.E8M0_BIAS + 1  # away from torchao's 2^-126 divisor guard
    err = np.abs(x - mx.mx_dequantize(r))
    assert np.all(err[normal_range] <= 2.0 ** (X[normal_range] + fmt.emax - fmt.man_bits - 1))


@pytest.mark.parametrize("mode", TORCHAO_MODES)  # not ggml: float32 log2 near 2^j rounds differently per binade
@given(x=mx_blocks(), k=st.integers(-8, 8))
def test_power_of_two_scaling_moves_only_the_scale(mode, x, k):
    with np.errstate(over="ignore"):
        assume(np.all(np.isfinite(x * np.float32(2.0**k))))
    r0 = mx.mx_quantize(x, "fp4_e2m1", mode)
    inside = np.all(np.abs(np.asarray(r0.X)) < 100, axis=(-1, -2))  # far from the E8M0 clamp
    rk = mx.mx_quantize(x * np.float32(2.0**k), "fp4_e2m1", mode)
    assert np.array_equal(np.asarray(rk.q)[inside], np.asarray(r0.q)[inside])
    assert np.array_equal(np.asarray(rk.X)[inside], np.asarray(r0.X)[inside] + k)


@XP_OK
@given(x=mx_blocks())
def test_backends_agree(xp, x):
    for mode in mx.SCALE_MODES:
        ours = mx.mx_dequantize(mx.mx_quantize(from_numpy(x, xp=xp), "fp6_e3m2", mode))
        assert np.array_equal(to_numpy(ours), mx.mx_dequantize(mx.mx_quantize(x, "fp6_e3m2", mode)))
    for scale_mode in mx.NVFP4_SCALE_MODES:
        r = mx.nvfp4_quantize(from_numpy(x, xp=xp), scale_mode=scale_mode)
        assert np.array_equal(to_numpy(mx.nvfp4_dequantize(r)),
                              mx.nvfp4_dequantize(mx.nvfp4_quantize(x, scale_mode=scale_mode)))


def test_bits_per_weight():
    x = np.ones((8, 1024), np.float32)
    assert mx.mx_stored_bytes(mx.mx_quantize(x)) * 8 / x.size == 4.25        # 4 + 8/32
    assert mx.mx_stored_bytes(mx.mx_quantize(x, "fp8_e4m3")) * 8 / x.size == 8.25
    assert (mx.nvfp4_stored_bytes(mx.nvfp4_quantize(x)) - 4) * 8 / x.size == 4.5  # 4 + 8/16, + a float32


@pytest.mark.parametrize("call, message", [
    (lambda: mx.mx_quantize(np.ones(32, np.float32), "fp5"), "element: expected one of"),
    (lambda: mx.mx_quantize(np.ones(32, np.float32), mode="round"), "mode: expected one of"),
    (lambda: mx.mx_quantize(np.ones(40, np.float32)), "x: last dimension 40 is not a multiple of the block"),
    (lambda: mx.mx_quantize(np.ones(32, np.float32), block=0), "block: expected an integer >= 1"),
    (lambda: mx.mx_quantize(np.float32([np.inf] * 32)), "x: contains NaN or Inf"),
    (lambda: mx.mx_quantize(np.ones(32, np.int32)), "x: expected a real floating-point array"),
    (lambda: mx.nvfp4_quantize(np.ones(24, np.float32)), "x: last dimension 24 is not a multiple of the NVFP4"),
    (lambda: mx.nvfp4_quantize(np.ones(16, np.float32), -1.0), "tensor_scale: expected None, 'amax'"),
    (lambda: mx.nvfp4_quantize(np.ones(16, np.float32), scale_mode="even"), "scale_mode: expected one of"),
    (lambda: mx.scale_exponent(np.ones(1, np.float32), "fp4_e2m1", "nearest"), "mode: expected one of"),
])
def test_bad_input_names_the_argument(call, message):
    with pytest.raises((ValueError, TypeError), match=message):
        call()
