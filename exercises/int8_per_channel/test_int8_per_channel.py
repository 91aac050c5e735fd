"""Checker for INT8 per channel / per tensor, with refquant.uniform as the oracle.

    EXERCISE=my_attempt python -m pytest exercises/int8_per_channel -q
    refquant exercises check int8_per_channel --file my_attempt

Codes and scales: bit for bit. Perplexity: relative 1e-4 on one 128-token window of the
held-out text (short, to stay under a minute on 2 cores; see README.md for why 1e-4).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant import uniform as U
from refquant.exercises import attempt, first_difference, load_attempt
from refquant.model import perplexity
from refquant.testing import strategies as st_rq

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder

WINDOW = 128           # tokens per perplexity window (one window: the checker's time budget)
PPL_RTOL = 1e-4        # same forward pass; only float32 operation order in Ŵ may differ


@st.composite
def weights(draw):
    """(rows, cols) float32 with drawn structure: which rows are all zero, which carry an outlier."""
    W = draw(st_rq.matrices(rows_max=8, cols_multiple=8, cols_blocks_max=4))
    zero_rows = draw(st.lists(st.booleans(), min_size=W.shape[0], max_size=W.shape[0]))
    W[np.asarray(zero_rows)] = 0.0
    return W


def _check(q, s, ref, label):
    assert q.dtype == np.int8, f"{label}: q must be int8 codes, got dtype {q.dtype}"
    assert s.dtype == np.float32, f"{label}: s must stay float32, got dtype {s.dtype}"
    diff = first_difference(s, ref.s, f"{label} s")
    assert diff is None, (f"{diff}\nhint: s = max |W| / 127.0 in float32 over "
                          f"{'each row' if label == 'per channel' else 'the whole matrix'}; an all-zero one gets s = 1")
    diff = first_difference(q.astype(np.int32), ref.q, f"{label} q")
    assert diff is None, f"{diff}\nhint: q = clip(np.round(W / s), -127, 127): divide by s (not times 1/s), half to even"


@settings(max_examples=40)
@given(W=weights())
def test_per_channel_codes(W):
    q, s = attempt(ex.quantize_per_channel, W)
    _check(q, s, U.quantize(W, 8, symmetric=True, granularity="channel"), "per channel")


@settings(max_examples=40)
@given(W=weights())
def test_per_tensor_codes(W):
    q, s = attempt(ex.quantize_per_tensor, W)
    assert s.shape == (1, 1), f"per tensor: s should have shape (1, 1), got {s.shape}"
    _check(q, s, U.quantize(W, 8, symmetric=True, granularity="tensor"), "per tensor")


@settings(max_examples=20)
@given(W=weights())
def test_dequantize(W):
    ref = U.quantize(W, 8, symmetric=True, granularity="channel")
    W_hat = attempt(ex.dequantize, ref.q.astype(np.int8), ref.s)
    diff = first_difference(W_hat, U.dequantize(ref), "Ŵ")
    assert diff is None, f"{diff}\nhint: Ŵ = s · q in float32 (cast q to float32 first)"


def test_perplexities_on_smollm2(smollm2, eval_tokens):
    tokens = eval_tokens[:WINDOW]
    got = attempt(ex.perplexities, smollm2, tokens, WINDOW)
    assert set(got) == {"per_channel", "per_tensor"}, f"expected keys per_channel, per_tensor; got {sorted(got)}"
    for label, granularity in (("per_channel", "channel"), ("per_tensor", "tensor")):
        W_hat = {n: U.fake_quantize(smollm2.weights[n], 8, True, granularity) for n in smollm2.linear_names()}
        expected = perplexity(smollm2.with_weights(W_hat), tokens, window=WINDOW).ppl
        assert got[label] == pytest.approx(expected, rel=PPL_RTOL), (
            f"{label}: expected perplexity {expected:.4f} on the checker's window, got {float(got[label]):.4f}\n"
            f"hint: every name in model.linear_names(), replaced by Ŵ, with perplexity(model, tokens, window)")
    assert got["per_channel"] < got["per_tensor"], (
        f"per channel ({got['per_channel']:.3f}) should beat per tensor ({got['per_tensor']:.3f})")
