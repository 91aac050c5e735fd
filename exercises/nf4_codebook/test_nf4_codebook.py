"""Checker for the NF4 code book: bit for bit with bitsandbytes (create_normal_map, its NF4
table) and torch.linspace; block codes bit for bit with refquant.nf4 (itself bit-exact with
bitsandbytes' quantize_4bit).

    EXERCISE=my_attempt python -m pytest exercises/nf4_codebook -q
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import example, given, settings, strategies as st

from refquant import nf4
from refquant.exercises import attempt, first_difference, load_attempt
from refquant.testing import strategies as st_rq

bnb_functional = pytest.importorskip("bitsandbytes.functional")

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder

BLOCK = 64
# offsets: near NF4's own, and the ones where a float64 linspace rounds differently
offsets = st.floats(0.9, 0.999).map(lambda p: float(np.float32(p)))  # float32 offsets, as torch takes them


def _bnb_levels(offset: float) -> np.ndarray:
    """bitsandbytes' 256-entry map has 241 zeros in the middle: keep its 16 distinct levels."""
    m = bnb_functional.create_normal_map(offset).numpy()                 # (256,) sorted
    return np.concatenate([m[:7], np.float32([0.0]), m[-8:]]).astype(np.float32)


@settings(max_examples=40)
@given(offset=offsets, n=st.sampled_from([8, 9]))
@example(offset=0.99, n=9)
def test_probabilities(offset, n):
    got = attempt(ex.probabilities, offset, n)
    expected = torch.linspace(offset, 0.5, n).numpy()
    diff = first_difference(np.asarray(got), expected, f"probabilities({offset}, {n})")
    assert diff is None, f"{diff}\nhint: torch steps in float32 and fills the two halves from each end (README hint 2)"


def test_nf4_levels_are_bitsandbytes_table():
    got = attempt(ex.normal_map)
    table = bnb_functional.get_4bit_type("nf4", device="cpu").numpy()[:16]
    diff = first_difference(np.asarray(got), table, "level")
    assert diff is None, f"{diff} against bitsandbytes' NF4 table\nhint: cast to float32 before dividing by the max"


@settings(max_examples=25)
@given(offset=offsets)
@example(offset=0.99)
def test_normal_map_for_any_offset(offset):
    got = attempt(ex.normal_map, offset)
    diff = first_difference(np.asarray(got), _bnb_levels(offset), f"normal_map({offset}) level")
    assert diff is None, f"{diff}\nhint: 8 positive quantiles from 9 probabilities, 7 negative from 8, and 0"


@settings(max_examples=40)
@given(x=st_rq.rows(block=BLOCK, max_rows=1, max_blocks=1))
def test_quantize_block(x):
    x = x.reshape(BLOCK)
    codes, absmax = attempt(ex.quantize_block, x)
    packed, state = nf4.quantize_4bit(x, BLOCK, "nf4")
    byte = packed.reshape(-1)
    expected = np.stack([byte >> 4, byte & 15], axis=1).reshape(-1)      # high nibble first
    assert np.float32(absmax) == state.absmax[0], f"absmax: expected {state.absmax[0]}, got {absmax}"
    diff = first_difference(np.asarray(codes).astype(np.uint8), expected, "code")
    assert diff is None, (f"{diff}\nblock {x.tolist()}\nhint: y = x · (1/absmax) in float32, then count the "
                          f"midpoints strictly below y (a tie takes the lower code)")
