"""The shared helpers: bit packing and rounding modes."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st
from hypothesis.extra import numpy as hnp

from refquant._packing import pack_bits, unpack_bits, pack_nibbles, unpack_nibbles, packed_length
from refquant._rounding import round_half_away, round_half_even, trunc, to_fp16, to_bf16_bits, bf16_bits_to_f32


@given(st.integers(1, 8).flatmap(lambda b: st.tuples(st.just(b), hnp.arrays(np.uint8, st.tuples(st.integers(1, 3), st.integers(1, 40)), elements=st.integers(0, 2**b - 1)))))
def test_pack_unpack_identity(args):
    bits, q = args
    packed = pack_bits(q, bits)
    assert packed.shape[-1] == packed_length(q.shape[-1], bits)
    assert np.array_equal(unpack_bits(packed, bits, q.shape[-1]), q)


def test_pack_bits_lsb_first_by_hand():
    # codes 1,2,3,0 at 2 bits: 0b00_11_10_01
    assert pack_bits(np.array([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    # 4 bits: first code in the low nibble
    assert pack_bits(np.array([0xA, 0x5]), 4).tolist() == [0x5A]
    # 3 bits, 8 codes -> 3 bytes, a continuous bit stream: 7 then 1 -> 0b001_111
    assert pack_bits(np.array([7, 1, 0, 0, 0, 0, 0, 0]), 3).tolist() == [0b00001111, 0, 0]


def test_pack_rejects_codes_out_of_range():
    with pytest.raises(ValueError, match="q: codes must lie in 0..15"):
        pack_bits(np.array([16]), 4)


def test_nibbles_round_trip():
    b = np.arange(256, dtype=np.uint8)
    lo, hi = unpack_nibbles(b)
    assert np.array_equal(pack_nibbles(lo, hi), b)


def test_rounding_modes_on_ties():
    x = np.array([0.5, 1.5, 2.5, -0.5, -2.5, 0.49999997, -1.2], dtype=np.float32)
    assert round_half_even(x).tolist() == [0, 2, 2, -0, -2, 0, -1]
    assert round_half_away(x).tolist() == [1, 2, 3, -1, -3, 0, -1]
    assert trunc(x).tolist() == [0, 1, 2, -0, -2, 0, -1]


@given(hnp.arrays(np.float32, 64, elements=st.floats(-1e6, 1e6, width=32)))
def test_round_half_away_matches_c_roundf(x):
    # C's roundf is half-away-from-zero; Python's math has no roundf, so build it from Decimal
    from decimal import Decimal, ROUND_HALF_UP

    expected = np.array([float(Decimal(float(v)).quantize(Decimal(1), rounding=ROUND_HALF_UP)) for v in x], dtype=np.float32)
    assert np.array_equal(round_half_away(x), expected)


def test_fp16_and_bf16_round_to_nearest_even():
    import torch

    x = np.random.default_rng(0).standard_normal(4096).astype(np.float32) * 100
    assert np.array_equal(to_fp16(x), torch.from_numpy(x).half().float().numpy())
    bits = to_bf16_bits(x)
    assert np.array_equal(bf16_bits_to_f32(bits), torch.from_numpy(x).bfloat16().float().numpy())
