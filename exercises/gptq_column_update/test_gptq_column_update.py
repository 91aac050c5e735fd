"""Checker for the fixed GPTQ column loop: a real SmolLM2 layer against refquant.gptq (float64,
where column-by-column and lazy-batched GPTQ agree) and against round-to-nearest.

    EXERCISE=my_attempt python -m pytest exercises/gptq_column_update -q

The layer: blk.3.attn_q (576 x 576), H from the first 128 calibration tokens (short: time).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant import gptq
from refquant.exercises import attempt, load_attempt
from refquant.testing import strategies as st_rq

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder

BLOCK, LAYER = 3, "attn_q"
N_TOKENS = 128
BITS, G = 4, 64
ATOL = 1e-9   # relative to max |W|: float64 rounding of the unbatched vs batched updates


@pytest.fixture(scope="module")
def layer(smollm2, calib_tokens):
    """(W, H) in float64 of blk.3.attn_q, H = 2XᵀX/n from the inputs the float model gives it."""
    h = smollm2.embed(calib_tokens[:N_TOKENS])                    # (T, d)
    for i in range(BLOCK):
        h = smollm2.block(i, h)
    seen = {}
    smollm2.block(BLOCK, h, capture=lambda name, x: seen.setdefault(name, x))
    acc = gptq.Hessian(smollm2.config.n_embd, dtype=np.float64)
    acc.add(seen[f"blk.{BLOCK}.{LAYER}.weight"].astype(np.float64))
    return smollm2.weights[f"blk.{BLOCK}.{LAYER}.weight"].astype(np.float64), acc.H


def _first_bad_column(got, expected, scale):
    bad = np.nonzero(np.any(np.abs(got - expected) > ATOL * scale, axis=0))[0]
    return int(bad[0]) if bad.size else None


def test_real_layer_matches_gptq(layer):
    W, H = layer
    got = np.asarray(attempt(ex.gptq_update, W.copy(), H.copy(), BITS, G))
    assert got.shape == W.shape, f"Ŵ: expected shape {W.shape} (out, in), got {got.shape}"
    expected = gptq.gptq_quantize(W, H, BITS, G).W_hat
    j = _first_bad_column(got, expected, np.abs(W).max())
    if j is None:
        return
    i = int(np.argmax(np.abs(got[:, j] - expected[:, j])))
    if j == 0:
        hint = "column 0 comes before any update: the quantizer is wrong. Which axis do the groups run along?"
    elif j % G == 0:
        hint = (f"column {j} starts a group: its (s, z) come from W[:, {j}:{j + G}] as updated so far — "
                "or the update before it is wrong")
    else:
        hint = "the update from the columns before it: e_j = (w_j − q_j) / U_jj, W[:, j:] −= e_j · U[j, j:]"
    pytest.fail(f"Ŵ first differs in column {j} (row {i}): expected {expected[i, j]:.6g}, got {got[i, j]:.6g}\n"
                f"hint: {hint}", pytrace=False)


def test_real_layer_beats_round_to_nearest(layer):
    W, H = layer
    got = np.asarray(attempt(ex.gptq_update, W.copy(), H.copy(), BITS, G))
    loss, rtn = gptq.layer_loss(W, got, H), gptq.layer_loss(W, gptq.rtn_quantize(W, BITS, G).W_hat, H)
    assert np.isfinite(loss) and loss < rtn, (f"output error tr((W − Ŵ) H (W − Ŵ)ᵀ) = {loss:.4g}, round-to-nearest "
                                              f"gives {rtn:.4g}: error feedback should help, not hurt")


@settings(max_examples=20)
@given(W=st_rq.matrices(rows_max=6, cols_multiple=16, cols_blocks_max=4),
       h=st.lists(st.sampled_from([1e-3, 0.5, 1.0, 30.0]), min_size=64, max_size=64))
def test_diagonal_hessian_is_round_to_nearest(W, h):
    """Uncorrelated inputs: no column can absorb another's error, GPTQ = RTN exactly."""
    W = W.astype(np.float64)
    H = np.diag(np.asarray(h[:W.shape[1]], dtype=np.float64))
    got = np.asarray(attempt(ex.gptq_update, W.copy(), H, BITS, 16))
    expected = gptq.rtn_quantize(W, BITS, 16).W_hat
    j = _first_bad_column(got, expected, max(np.abs(W).max(), 1.0))
    assert j is None, (f"with a diagonal H, Ŵ should be round-to-nearest; column {j} differs\n"
                       f"W = {W.tolist()}\ndiag H = {np.diag(H).tolist()}\n"
                       "hint: with H diagonal, U is diagonal too: the update W[:, j+1:] −= e_j U[j, j+1:] is zero")
