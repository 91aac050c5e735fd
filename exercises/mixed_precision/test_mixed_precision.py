"""Checker for the mixed-precision allocation: the budget to the byte, and a lower perplexity
than uniform 4-bit at the same budget on SmolLM2.

    EXERCISE=my_attempt python -m pytest exercises/mixed_precision -q

Perplexity: the first 128 held-out tokens, one window (the checker's time budget).
"""

from __future__ import annotations

import numpy as np
import pytest

from refquant import uniform as U
from refquant.exercises import attempt, load_attempt
from refquant.model import perplexity

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder

G = 64
UNIFORM_BITS = 4          # the budget: what uniform 4-bit costs
WIDTHS = range(2, 9)
N_EVAL = 128


def quantize(W, bits):
    return U.fake_quantize(W, bits, symmetric=False, granularity="group", group_size=G, signed=False)


def real_bytes(W, bits) -> int:
    """What refquant writes for W at b bits: packed codes, fp16 scales, packed b-bit zero-points."""
    qt = U.quantize(W, bits, symmetric=False, granularity="group", group_size=G, signed=False)
    return (U.pack_codes(qt.q.reshape(-1), bits, signed=False).nbytes + qt.s.astype(np.float16).nbytes
            + U.pack_codes(qt.z.reshape(-1).astype(np.int32), bits, signed=False).nbytes)


@pytest.fixture(scope="module")
def shape_bytes(smollm2):
    """{(shape, bits): bytes} for SmolLM2's distinct linear shapes, from real packing."""
    first = {tuple(smollm2.weights[n].shape): smollm2.weights[n] for n in smollm2.linear_names()}
    return {(s, b): real_bytes(W, b) for s, W in first.items() for b in WIDTHS}


def test_tensor_bytes(shape_bytes):
    for (shape, b), expected in shape_bytes.items():
        got = attempt(ex.tensor_bytes, shape, b)
        assert got == expected, (f"tensor_bytes({shape}, {b}): refquant writes {expected:,} bytes, you count {got!r}\n"
                                 "hint: rows·cols/64 groups, each an fp16 scale and a b-bit zero-point")


def test_allocation_meets_budget_and_beats_uniform(smollm2, calib_tokens, eval_tokens, shape_bytes):
    names = smollm2.linear_names()
    shape = {n: tuple(smollm2.weights[n].shape) for n in names}
    budget = sum(shape_bytes[(shape[n], UNIFORM_BITS)] for n in names)
    bits = attempt(ex.allocate, smollm2, calib_tokens, budget)
    assert set(bits) == set(names), f"allocate: expected bits for all {len(names)} linears, got {len(bits)}"
    bad = [n for n in names if bits[n] not in WIDTHS]
    assert not bad, f"{bad[0]}: bits must be an integer in 2..8, got {bits[bad[0]]!r}"
    spent = sum(shape_bytes[(shape[n], bits[n])] for n in names)
    assert spent <= budget, f"your allocation takes {spent:,} bytes, {spent - budget:,} over the budget of {budget:,}"
    tokens = eval_tokens[:N_EVAL]
    mixed = perplexity(smollm2.with_weights({n: quantize(smollm2.weights[n], bits[n]) for n in names}), tokens, N_EVAL).ppl
    uniform = perplexity(smollm2.with_weights({n: quantize(smollm2.weights[n], UNIFORM_BITS) for n in names}),
                         tokens, N_EVAL).ppl
    assert mixed < uniform, (f"perplexity {mixed:.3f} with your allocation, {uniform:.3f} with uniform {UNIFORM_BITS} "
                             f"bits at the same budget ({8 * spent / sum(np.prod(s) for s in shape.values()):.3f} "
                             "bits/weight)\nhint: is your sensitivity comparable across layers? (README hint 2)")
