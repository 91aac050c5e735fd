"""Bit-exact parity of refquant.uniform's "torch" convention with torch itself.

Oracles: torch.ao.quantization MinMaxObserver / PerChannelMinMaxObserver (qparams) and
torch.fake_quantize_per_tensor_affine / torch.fake_quantize_per_channel_affine (codes), run
through the adapters in refquant.testing.torch_oracles.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from refquant import uniform as U
from refquant.testing import strategies as st_rq
from refquant.testing import torch_oracles as T

bits_st = st.integers(2, 8)


@given(x=st_rq.rows(block=16, max_rows=4, max_blocks=4), bits=bits_st, symmetric=st.booleans(), signed=st.booleans())
def test_per_tensor_qparams_and_fake_quant_match_torch(x, bits, symmetric, signed):
    q_min, q_max = U.torch_code_range(bits, signed)
    customized = bits != 8   # 8 bits: the default-configured observer (quint8 symmetric: z = 128)
    s, z = U.torch_observer_qparams(np.min(x, keepdims=True), np.max(x, keepdims=True), (q_min, q_max),
                                    symmetric=symmetric, signed=signed, customized_range=customized)
    ts, tz = T.minmax_observer_qparams(x, q_min, q_max, symmetric=symmetric, signed=signed, customized_range=customized)
    assert np.array_equal(s.reshape(-1), ts) and np.array_equal(z.reshape(-1), tz)
    expected = T.fake_quantize_per_tensor(x, float(ts[0]), int(tz[0]), q_min, q_max)
    got = U.fake_quantize_codes(x, s, z, q_min, q_max, convention="torch")
    assert got.tobytes() == expected.tobytes()


@st.composite
def tensors_3d(draw):
    """(a, b, c) float32 tensors, values from the edge-case block kinds (see strategies)."""
    a, b = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    c = draw(st.sampled_from([1, 4, 8]))
    return draw(st_rq.block_values(a * b, c)).reshape(a, b, c)


@given(x=tensors_3d(), axis=st.integers(0, 2), bits=bits_st, symmetric=st.booleans(), signed=st.booleans())
def test_per_channel_qparams_and_fake_quant_match_torch(x, axis, bits, symmetric, signed):
    q_min, q_max = U.torch_code_range(bits, signed)
    qt = U.quantize(x, bits, symmetric, "channel", axis=axis, signed=signed, convention="torch")
    ts, tz = T.per_channel_observer_qparams(x, axis, q_min, q_max, symmetric=symmetric, signed=signed)
    assert np.array_equal(qt.s.reshape(-1), ts) and np.array_equal(qt.z.reshape(-1), tz)
    expected = T.fake_quantize_per_channel(x, ts, tz, axis, q_min, q_max)
    assert U.fake_quantize(x, bits, symmetric, "channel", axis=axis, signed=signed, convention="torch").tobytes() \
        == expected.tobytes()


@given(x=st_rq.rows(block=8), bits=bits_st, symmetric=st.booleans(), signed=st.booleans(),
       scale_exp=st.integers(-12, 4), z_frac=st.floats(0, 1))
def test_fake_quant_kernels_match_torch_for_any_given_qparams(x, bits, symmetric, signed, scale_exp, z_frac):
    """Scale and zero-point chosen freely (not from the data): many values clamp, many tie."""
    q_min, q_max = U.torch_code_range(bits, signed)
    s = np.float32(1.5 * 2.0**scale_exp)            # 1.5 * 2^k: x/s has many exact k + 0.5 ties in `ties` blocks
    z = int(round(q_min + z_frac * (q_max - q_min)))
    expected = T.fake_quantize_per_tensor(x, s, z, q_min, q_max)
    got = U.fake_quantize_codes(x, np.float32([[s]]), np.float32([[z]]), q_min, q_max, convention="torch")
    assert got.tobytes() == expected.tobytes()
    rows = x.shape[0]
    s_rows = (s * 2.0 ** np.arange(rows)).astype(np.float32)
    expected = T.fake_quantize_per_channel(x, s_rows, np.full(rows, z), 0, q_min, q_max)
    got = U.fake_quantize_codes(x, s_rows[:, None], np.full((rows, 1), z, np.float32), q_min, q_max, convention="torch")
    assert got.tobytes() == expected.tobytes()


@given(x=st_rq.rows(block=16), bits=bits_st, symmetric=st.booleans(), signed=st.booleans())
def test_per_tensor_fake_quantize_end_to_end_matches_torch(x, bits, symmetric, signed):
    q_min, q_max = U.torch_code_range(bits, signed)
    ts, tz = T.minmax_observer_qparams(x, q_min, q_max, symmetric=symmetric, signed=signed)
    expected = T.fake_quantize_per_tensor(x, float(ts[0]), int(tz[0]), q_min, q_max)
    got = U.fake_quantize(x, bits, symmetric, "tensor", signed=signed, convention="torch")
    assert got.tobytes() == expected.tobytes()


def _division_and_reciprocal_disagree(s):
    """Values x = (k + 1/2) s (as float32) and their float32 neighbours where round(x / s) and
    round(x * fl(1/s)) differ — found by trying, not written down."""
    inv = np.float32(1) / s
    found = []
    for k in range(-120, 120):            # codes well inside -128..127: no clamping
        mid = np.float32((k + 0.5) * np.float64(s))
        for x in (np.nextafter(mid, np.float32(-np.inf)), mid, np.nextafter(mid, np.float32(np.inf))):
            if np.round(x / s) != np.round(x * inv):
                found.append(x)
    return np.array(found, np.float32)


def test_division_and_torchs_reciprocal_differ_and_each_path_matches_its_reference():
    """The one documented divergence: x / s (tutorial, GPTQ) vs x * fl(1/s) (torch's kernels)."""
    s = np.float32(0.1)
    x = _division_and_reciprocal_disagree(s)
    assert x.size > 0   # the two paths really differ on some near-midpoint values
    s_, z_ = np.float32([s]), np.float32([0])
    by_division = U.quantize_codes(x, s_, z_, -128, 127)
    by_reciprocal = U.quantize_codes_torch(x, s_, z_, -128, 127)
    assert np.all(by_division != by_reciprocal)
    assert np.array_equal(by_division, np.round(x / s).astype(np.int32))
    torch_codes = np.round(T.fake_quantize_per_tensor(x, s, 0, -128, 127) / s).astype(np.int32)
    assert np.array_equal(by_reciprocal, torch_codes)
