"""Checker for the group-quantization exercise, with refquant.uniform as the oracle.

    python -m pytest exercises/group_quant -q                        # checks solution.py
    EXERCISE=starter python -m pytest exercises/group_quant -q       # checks your starter.py
    EXERCISE=my_attempt python -m pytest exercises/group_quant -q    # checks my_attempt.py
    refquant exercises check group_quant --file my_attempt           # the same, with a summary
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant import uniform as U
from refquant.exercises import attempt, load_attempt
from refquant.testing import strategies as st_rq

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder


def _call(fn, *args):
    return attempt(fn, *args)


weights = st.integers(0, 2).flatmap(lambda i: st_rq.rows(block=(16, 32, 64)[i], max_rows=4, max_blocks=3))
bits_st = st.integers(2, 8)


def _group_size(w):
    for G in (64, 32, 16):
        if w.shape[1] % G == 0:
            return G


@settings(max_examples=30, deadline=None)  # no deadline: run alone, the default profile has one
@given(w=weights, bits=bits_st)
def test_scales_and_zero_points(w, bits):
    G = _group_size(w)
    ref = U.quantize(w, bits, symmetric=False, granularity="group", group_size=G, signed=False)
    s, z = _call(ex.group_qparams, w, bits, G)
    assert s.shape == ref.s.shape, "s: expected shape (rows, n // G, 1)"
    np.testing.assert_array_equal(s, ref.s, err_msg="s differs from refquant.uniform (float32 arithmetic?)")
    np.testing.assert_array_equal(z, ref.z, err_msg="z differs: -round(lo / s), clipped to 0 .. 2^b - 1")


@settings(max_examples=30, deadline=None)  # no deadline: run alone, the default profile has one
@given(w=weights, bits=bits_st)
def test_codes_and_reconstruction(w, bits):
    G = _group_size(w)
    ref = U.quantize(w, bits, symmetric=False, granularity="group", group_size=G, signed=False)
    q = _call(ex.quantize_groups, w, ref.s, ref.z, bits)
    np.testing.assert_array_equal(q, ref.q, err_msg="codes differ: round half to even *before* adding z")
    w_hat = _call(ex.dequantize_groups, ref.q, ref.s, ref.z)
    assert w_hat.shape == w.shape and w_hat.dtype == np.float32
    np.testing.assert_array_equal(w_hat, U.dequantize(ref))
    # and the point of it all: every weight is within half a step of its reconstruction
    s_full = np.broadcast_to(ref.s, ref.q.shape).reshape(w.shape)
    # slack: one float32 rounding in w / s and one in s (q - z), each 2^-24 relative
    assert np.all(np.abs(w.astype(np.float64) - w_hat) <= s_full / 2 + 2**-24 * (np.abs(w) + np.abs(w_hat)))


@pytest.mark.parametrize("bits, G, scale_bits, zero_bits", [(4, 128, 16, 0), (4, 128, 16, 4), (3, 64, 16, 16), (8, 32, 32, 0)])
def test_bits_per_weight(bits, G, scale_bits, zero_bits):
    assert _call(ex.bits_per_weight, bits, G, scale_bits, zero_bits) == U.bits_per_weight(bits, G, scale_bits, zero_bits)
