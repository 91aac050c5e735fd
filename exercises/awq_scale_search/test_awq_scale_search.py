"""Checker for AWQ's scale search against refquant.awq, on SmolLM2's block 2 (q, k, v).

    EXERCISE=my_attempt python -m pytest exercises/awq_scale_search -q

Inputs: what the float model feeds block 2's attention on the first 128 calibration tokens
(short, for time). Bit for bit where the operations are the same; the losses to 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from refquant import awq
from refquant.exercises import attempt, first_difference, load_attempt

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder

BLOCK, N_TOKENS = 2, 128
BITS, G = 4, 128
TARGETS = ("attn_q", "attn_k", "attn_v")
GRID = [i / awq.N_GRID for i in range(awq.N_GRID)]
LOSS_RTOL = 1e-5     # float32 summation order of X Ŵᵀ and the mean
FOLD_RTOL = 1e-4     # float32 rounding of g/s and W·s through one block


@pytest.fixture(scope="module")
def block_inputs(smollm2, calib_tokens):
    """(h, X): block 2's input hidden states and the q/k/v input X (T, 576), float model."""
    h = smollm2.embed(calib_tokens[:N_TOKENS])
    for i in range(BLOCK):
        h = smollm2.block(i, h)
    seen = {}
    smollm2.block(BLOCK, h, capture=lambda name, x: seen.setdefault(name.split(".")[2], x))
    return h, seen["attn_q"]


def _Ws(model):
    return [model.weights[f"blk.{BLOCK}.{k}.weight"] for k in TARGETS]


def test_act_scale(block_inputs):
    _, X = block_inputs
    diff = first_difference(np.asarray(attempt(ex.act_scale, X)), awq.act_scale(X), "s_X")
    assert diff is None, f"{diff}\nhint: the mean over tokens (axis 0) of |x|"


# s_X with structure: which channels are zero, tiny, ordinary or huge
channel_values = st.sampled_from([0.0, 1e-9, 1e-4, 0.01, 0.3, 1.0, 7.5, 300.0])


@settings(max_examples=40)
@given(s_X=hnp.arrays(np.float32, st.integers(2, 16), elements=channel_values), alpha=st.sampled_from(GRID))
def test_scales_for(s_X, alpha):
    got = np.asarray(attempt(ex.scales_for, s_X, alpha))
    diff = first_difference(got, awq.scales_for(s_X, alpha), f"s(α={alpha})")
    assert diff is None, (f"{diff}\ns_X = {s_X.tolist()}\n"
                          "hint: floor s_X^α at 1e-4 *before* the normalisation by sqrt(max · min)")


def test_scales_for_real_channels(block_inputs):
    s_X = awq.act_scale(block_inputs[1])
    for alpha in GRID:
        diff = first_difference(np.asarray(attempt(ex.scales_for, s_X, alpha)), awq.scales_for(s_X, alpha), f"s(α={alpha})")
        assert diff is None, diff


def test_search_scale(smollm2, block_inputs):
    _, X = block_inputs
    s, alpha, losses = attempt(ex.search_scale, X, _Ws(smollm2), BITS, G)
    ref = awq.search_scale(X, _Ws(smollm2), BITS, G, partial_group=True)
    assert len(losses) == len(ref.losses), f"losses: expected one per grid point ({len(ref.losses)}), got {len(losses)}"
    for i, (mine, theirs) in enumerate(zip(losses, ref.losses)):
        assert mine == pytest.approx(theirs, rel=LOSS_RTOL), (
            f"loss at α = {GRID[i]}: expected {theirs:.6g}, got {mine:.6g}\n"
            + ("hint: α = 0 is plain rounding of W: check Y = X Wᵀ and the mean of the squared difference" if i == 0
               else "hint: Ŵ(α) = Q(W · s) / s, both along the input columns"))
    assert alpha == ref.alpha, f"α: expected {ref.alpha}, got {alpha} (the first strictly smallest loss wins)"
    diff = first_difference(np.asarray(s), ref.s, "s")
    assert diff is None, f"{diff}\nhint: return scales_for(s_X, α) of the chosen α"


def test_fold_norm_keeps_the_block(smollm2, block_inputs):
    h, X = block_inputs
    s = awq.search_scale(X, _Ws(smollm2), BITS, G, partial_group=True).s
    g = smollm2.weights[f"blk.{BLOCK}.attn_norm.weight"]
    g_new, Ws_new = attempt(ex.fold_norm, g, _Ws(smollm2), s)
    g_ref, Ws_ref = awq.fold_norm(g, _Ws(smollm2), s)
    for what, mine, theirs in [("g'", g_new, g_ref)] + [(f"{k}'", a, b) for k, a, b in zip(TARGETS, Ws_new, Ws_ref)]:
        diff = first_difference(np.asarray(mine), theirs, what)
        assert diff is None, f"{diff}\nhint: the gain is divided by s, the weights' columns multiplied by s"
    folded = smollm2.with_weights({f"blk.{BLOCK}.attn_norm.weight": g_new,
                                   **{f"blk.{BLOCK}.{k}.weight": W for k, W in zip(TARGETS, Ws_new)}})
    np.testing.assert_allclose(folded.block(BLOCK, h), smollm2.block(BLOCK, h), rtol=FOLD_RTOL, atol=FOLD_RTOL,
                               err_msg="the folded block should compute what the original does")
