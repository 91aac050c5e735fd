"""Hardening of uniform / NF4 / 8-bit numerics: one parametrized test per class of input.

Each class has one policy: either refquant raises one clear ValueError/TypeError that names
the argument and the range (never NaN, ±inf or a traceback from inside), or it equals the
real library byte for byte ("oracle-equal": bitsandbytes 0.50 on the CPU, torch 2.x).

| class                                                  | policy                                       |
|--------------------------------------------------------|----------------------------------------------|
| asymmetric range wider than float32 (±3e38)            | error naming the range ("does not fit")      |
| range touching float32's max: a grid end overflows     | error naming the range and the grid end      |
| float16 fake_quantize whose grid passes ±65504         | error naming float16's range                 |
| LLM.int8() on a finite float64 beyond float32 (1e300)  | error "outside float32's range"              |
| NF4 double quantization whose absmax sum overflows     | error naming the mean of the absmax          |
| uniform.dequantize of a state that does not fit shape  | error naming the field (qt.q / qt.s / qt.z)  |
| NumPy integers as bits / group_size / axis / blocksize | accepted, same result as Python ints         |
| axis given with granularity="tensor"                   | error naming axis                            |
| NF4 + double quantization of subnormal weights         | oracle-equal (bitsandbytes bytes)            |
| blockwise 8-bit with block sizes outside the doc list  | oracle-equal (bitsandbytes bytes)            |
| create_dynamic_map (signed, E, total) like (True, 8, 8)| oracle-equal (bitsandbytes' table)           |
| torch fake-quant of float16 / bfloat16 / float64 x     | oracle-equal (torch kernels)                 |
| torch fake-quant with float (non-integral) zero-points | oracle-equal (torch per-channel float branch)|
| torch quint8 symmetric observer, default range         | oracle-equal (zero-point 128)                |
| torch fake-quant with an integer z outside the range   | error, as torch raises                       |
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from refquant import int8 as R8
from refquant import nf4 as R4
from refquant import uniform as U
from refquant.testing import bnb as B
from refquant.testing import torch_oracles as T

F32_MAX = float(np.finfo(np.float32).max)
RNG = np.random.default_rng(20240607)


def _normal(n, scale=1.0, dtype=np.float32):
    return (RNG.standard_normal(n) * scale).astype(dtype)


# --------------------------------------------------------------------------- error classes


@pytest.mark.parametrize("call, words", [
    # asymmetric: x_max - x_min = 6e38 overflows float32 -> used to give all NaN
    (lambda: U.quantize(np.float32([-3e38, 0.0, 3e38]), 8, symmetric=False), r"range \[-3e\+38, 3e\+38\]"),
    (lambda: U.fake_quantize(np.float32([-3e38, 1.0, 3e38]), 4, False, signed=False), "does not fit float32"),
    (lambda: U.qparams(np.float32([-F32_MAX]), np.float32([F32_MAX]), 8, False), "scale"),
    # a range touching float32's max: the zero-point's rounding pushes a grid end past it
    (lambda: U.quantize(np.float32([-F32_MAX, F32_MAX]), 8, True), "grid end"),
    (lambda: U.quantize(np.float32([-F32_MAX, F32_MAX]), 8, True, convention="torch"), "grid end"),
    # float16 at ±65504: the grid reaches -65760.9, which float16 rounds to -inf
    (lambda: U.fake_quantize(np.float16([-65504, 0, 65504]), 8, False, signed=False), "float16's range"),
    (lambda: U.fake_quantize(np.float16([-65504, 65504]), 8, True, convention="torch"), "float16's range"),
    # LLM.int8() casts to float32: 1e300 became inf and then NaN
    (lambda: R8.int8_vectorwise_quant(np.array([[1e300, 1.0], [2.0, 3.0]])), "outside float32's range"),
    (lambda: R8.int8_matmul(np.ones((2, 4)), np.full((3, 4), -1e300)), "outside float32's range"),
    # NF4 double quantization: the float32 sum of 4 absmax values of 3e38 overflows
    (lambda: R4.quantize_4bit(np.full(256, 3e38, np.float32), 64, "nf4", double_quant=True), "mean"),
], ids=["asym-wider-than-f32", "asym-fake-quant", "qparams-direct", "grid-end-refquant", "grid-end-torch",
        "f16-asym", "f16-torch-symmetric", "int8-1e300", "int8-matmul-W", "nf4-dq-3e38"])
def test_overflowing_ranges_raise_naming_the_range(call, words):
    with pytest.raises(ValueError, match=words) as info:
        call()
    assert "NaN or Inf" not in str(info.value)


def _state(**changes):
    qt = U.quantize(_normal(4 * 32).reshape(4, 32), 4, False, "group", group_size=8, signed=False)
    return U.UniformQuantized(**{**qt.__dict__, **changes})


@pytest.mark.parametrize("changes, words", [
    (dict(shape=(4, 16)), "qt.q"),                               # codes of a (4, 32) tensor
    (dict(shape=(8, 32)), "qt.q"),
    (dict(group_size=16), "qt.q"),                               # (4, 4, 8) codes are not G = 16 groups
    (dict(s=np.ones((4, 4, 8), np.float32)), "qt.s"),            # a scale per code
    (dict(z=np.zeros((1, 4, 1), np.float32)), "qt.z"),           # one zero-point row for 4 rows
    (dict(granularity="channel"), "qt.q"),
    (dict(axis=0), "qt.group_size"),                             # 4 rows are not groups of 8
    (dict(q_max=7), "qt.q"),                                     # 4-bit codes up to 15 under q_max 7
    (dict(s=np.zeros((4, 4, 1), np.float32)), "qt.s"),           # zero scales
], ids=["short-shape", "long-shape", "group-size", "s-per-code", "z-one-row", "granularity", "axis", "q-max",
        "zero-scale"])
def test_dequantize_rejects_a_state_that_does_not_fit(changes, words):
    with pytest.raises(ValueError, match=words):
        U.dequantize(_state(**changes))


@pytest.mark.parametrize("kwargs", [
    dict(granularity="tensor", axis=0), dict(granularity="tensor", axis=-1), dict(granularity="tensor", axis=np.int64(1)),
])
def test_axis_with_per_tensor_granularity_is_an_error(kwargs):
    with pytest.raises(ValueError, match="axis: only meaningful"):
        U.quantize(np.ones((2, 8), np.float32), 4, **kwargs)


@pytest.mark.parametrize("call", [
    lambda I: U.quantize(_X, I(4), False, "group", axis=I(1), group_size=I(8)).q,
    lambda I: U.quantize(_X, I(3), True, "channel", axis=I(0), convention="torch").q,
    lambda I: U.quantize(_X, 5, search=I(2)).q,
    lambda I: U.code_range(I(6), True),
    lambda I: U.bits_per_weight(I(4), I(128), I(16), I(4)),
    lambda I: U.pack_codes(np.arange(-8, 8), I(4)),
    lambda I: R8.quantize_blockwise(_X, blocksize=I(64))[0],
    lambda I: R8.create_dynamic_map(True, I(7), I(8)),
], ids=["group", "channel-torch", "search-p", "code_range", "bits_per_weight", "pack", "blockwise", "dynamic-map"])
def test_numpy_integers_are_integers(call):
    """np.int64(4) used to be refused with 'expected an integer ..., got 4'."""
    expected = call(int)
    for I in (np.int64, np.int32, np.uint8):
        got = call(I)
        assert np.array_equal(np.asarray(got), np.asarray(expected))


_X = RNG.standard_normal((4, 32)).astype(np.float32)


# --------------------------------------------------------------------------- oracle-equal classes

needs_bnb = pytest.mark.skipif(not B.bnb_available(), reason="needs bitsandbytes")


def _subnormal_weights(kind):
    """Weights whose block absmax values are subnormal, so the nested absmax block has 1/M = inf."""
    n = 64 * 12
    x = _normal(n, 1e-39)
    if kind == "zeros":
        x[::7] = 0.0                                  # 0 · inf = NaN lanes inside the nested blocks
    elif kind == "one-normal-block":
        x[:64] = _normal(64)                          # one normal block: M stays normal, the rest tiny
    elif kind == "signed-zeros":
        x[::5] = -0.0
    elif kind == "denormal-min":
        x = np.where(RNG.random(n) < 0.5, np.float32(1.4e-45), np.float32(-1.4e-45)).astype(np.float32)
    return x


@needs_bnb
@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
@pytest.mark.parametrize("kind", ["plain", "zeros", "one-normal-block", "signed-zeros", "denormal-min"])
def test_double_quantization_of_subnormal_weights_matches_bitsandbytes(kind, quant_type):
    x = _subnormal_weights(kind)
    ref = B.bnb_quantize_4bit(x, 64, quant_type, double_quant=True)
    packed, state = R4.quantize_4bit(x, 64, quant_type, double_quant=True)
    assert packed.tobytes() == ref["packed"].tobytes()
    assert state.absmax.tobytes() == ref["absmax"].tobytes()
    assert state.state2.absmax.tobytes() == ref["nested_absmax"].tobytes()
    x_hat = R4.dequantize_4bit(packed, state)
    assert np.array_equal(x_hat, ref["dequantized_flat"])
    if quant_type == "nf4":  # FP4's pattern 8 decodes to -0.0 on bitsandbytes' scalar path (see refquant.nf4)
        assert x_hat.tobytes() == ref["dequantized_flat"].tobytes()


@needs_bnb
@pytest.mark.parametrize("blocksize, n", [(16384, 40000), (8192, 8192), (100, 1000), (3, 10), (1, 7), (65536, 70000)])
def test_blockwise_8bit_any_positive_block_size_matches_bitsandbytes(blocksize, n):
    x = _normal(n)
    x[::13] = 0.0
    ref = B.bnb_quantize_blockwise(x, blocksize=blocksize)
    q, state = R8.quantize_blockwise(x, blocksize=blocksize)
    assert q.tobytes() == ref["q"].tobytes() and state.absmax.tobytes() == ref["absmax"].tobytes()
    assert R8.dequantize_blockwise(q, state).tobytes() == ref["dequantized"].tobytes()


@needs_bnb
@pytest.mark.parametrize("signed, E, total", [(True, 8, 8), (True, 2, 2), (True, 4, 4), (True, 3, 3), (False, 7, 8),
                                              (True, 5, 8), (False, 6, 7), (True, 6, 6), (True, 7, 7)])
def test_dynamic_map_layouts_match_bitsandbytes(signed, E, total):
    import bitsandbytes.functional as F

    assert R8.create_dynamic_map(signed, E, total).tobytes() == F.create_dynamic_map(signed, E, total).numpy().tobytes()


def _x(dtype, shape=(4, 24)):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(7)) * 3
    x[0, :8] = torch.arange(8) * 0.1 + 0.05       # values 0.05, 0.15, ...: k + 1/2 ties at s = 0.1
    return x.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64, torch.float32])
@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_fake_quant_of_half_bfloat16_double_matches_torch(dtype, per_channel):
    """torch multiplies in float32 (double for a double x) and rounds (q - z)·s once to x's dtype."""
    x = _x(dtype)
    if per_channel:
        s = torch.tensor([0.1, 0.037, 0.5, 0.0123])
        z = torch.tensor([3, 128, 0, 255], dtype=torch.int32)
        expected = torch.fake_quantize_per_channel_affine(x, s, z, 0, 0, 255)
        got = U.fake_quantize_codes(x, s.reshape(-1, 1), z.reshape(-1, 1), 0, 255, convention="torch")
    else:
        expected = torch.fake_quantize_per_tensor_affine(x, 0.1, 5, 0, 255)
        got = U.fake_quantize_codes(x, torch.tensor([[0.1]]), torch.tensor([[5]]), 0, 255, convention="torch")
    assert got.dtype == expected.dtype and torch.equal(got, expected)


@pytest.mark.parametrize("z_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("z_values, float_zero_point", [
    ([2.5, -3.25, 130.75, 7.0], None),       # non-integral: the float branch by default
    ([0.1, 1e-3, 256.5, -1.5], None),        # tiny, and outside 0..255 (allowed for a float z)
    ([1.0, 3.0, 5.0, 7.0], True),            # integral but float-typed: torch still takes the float branch
], ids=["halves", "small-and-outside", "integral-odd"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_torch_float_zero_points_round_after_adding_z(z_values, float_zero_point, z_dtype, dtype):
    """round(x/s + z) (float z) vs round(x/s) + z: at the k + 1/2 ties of _x an odd z flips the code."""
    x = _x(dtype)
    s = torch.tensor([0.1, 0.2, 0.05, 0.3])
    z = torch.tensor(z_values).to(z_dtype)
    expected = torch.fake_quantize_per_channel_affine(x, s, z, 0, 0, 255)
    got = U.fake_quantize_codes(x, s.reshape(-1, 1), z.reshape(-1, 1), 0, 255, convention="torch",
                                float_zero_point=float_zero_point)
    assert torch.equal(got, expected)


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("x", [_normal(64), np.abs(_normal(64)), -np.abs(_normal(64)), np.zeros(64, np.float32)],
                         ids=["normal", "positive", "negative", "zeros"])
def test_torch_default_quint8_symmetric_observer_zero_point_128(x, per_channel):
    from torch.ao.quantization import MinMaxObserver, PerChannelMinMaxObserver

    x = x.reshape(4, 16)
    if per_channel:   # default-configured: no quant_min / quant_max
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_symmetric)
        qt = U.quantize(x, 8, True, "channel", axis=0, signed=False, convention="torch")
    else:
        obs = MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_symmetric)
        qt = U.quantize(x, 8, True, "tensor", signed=False, convention="torch")
    obs(torch.from_numpy(x))
    ts, tz = (t.numpy().astype(np.float32) for t in obs.calculate_qparams())
    assert set(tz.tolist()) == {128.0}
    assert np.array_equal(qt.z.reshape(-1), tz) and np.array_equal(qt.s.reshape(-1), ts)
    # the adapter builds the same default observer for the default range
    assert np.array_equal(T.minmax_observer_qparams(x, 0, 255, True, signed=False)[1], tz[:1])


@pytest.mark.parametrize("z, q_range", [(-1, (0, 255)), (256, (0, 255)), (-129, (-128, 127)), (8, (0, 7))])
@pytest.mark.parametrize("per_channel", [False, True])
def test_torch_integer_zero_point_outside_the_range_is_rejected(z, q_range, per_channel):
    x = torch.randn(3, 4)
    s = torch.full((3,), 0.1)
    zt = torch.tensor([0, z, 0], dtype=torch.int32) if per_channel else torch.tensor(z)
    with pytest.raises(RuntimeError, match="zero_point"):
        if per_channel:
            torch.fake_quantize_per_channel_affine(x, s, zt, 0, *q_range)
        else:
            torch.fake_quantize_per_tensor_affine(x, 0.1, z, *q_range)
    shape = (3, 1) if per_channel else (1, 1)
    with pytest.raises(ValueError, match="z: an integer zero-point must be between q_min and q_max"):
        U.fake_quantize_codes(x, s.reshape(-1, 1)[: shape[0]], zt.reshape(shape), *q_range, convention="torch")
