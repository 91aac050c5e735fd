"""GPTQ parity with llm-compressor (vllm-project/llm-compressor), codes identical.

llm-compressor's ``quantize_weight`` takes every group's scale and zero-point up front
(its min-max weight observer on the original W), signed INT codes, and quantizes with
round(clamp(w/s + z)) (compressed-tensors ``fake_quantize``). refquant's matching mode:
``gptq_quantize(W, H, ..., s=s, z=z, signed=True, zero_before_round=True)``.

Both run in float32. Our NumPy LAPACK and torch's compute the Cholesky factor U with
different rounding (last-bit differences in U), so identical codes are a property of the
algorithm being the same, not of identical rounding everywhere; we assert identical codes
*and* identical dequantized weights on every example.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refquant import gptq
from test_gptq import correlated_layer

L = pytest.importorskip("refquant.testing.llmcompressor")
pytest.importorskip("llmcompressor")


@st.composite
def configs(draw):
    G = draw(st.sampled_from([16, 32, 64, None]))
    n_in = (G or 32) * draw(st.integers(1, 4))
    return dict(
        seed=draw(st.integers(0, 2**32 - 1)), n_out=draw(st.integers(1, 24)), n_in=n_in, G=G,
        bits=draw(st.integers(2, 8)), symmetric=draw(st.booleans()), act_order=draw(st.booleans()),
        blocksize=draw(st.sampled_from([16, 128])), n_tokens=draw(st.sampled_from([n_in // 2 + 1, 4 * n_in])),
        corr=draw(st.sampled_from([0.0, 1.0])),
    )


def _both(c):
    W, _, H = correlated_layer(c["seed"], c["n_out"], c["n_in"], c["n_tokens"], c["corr"])
    s, z = L.observer_qparams(W, c["bits"], c["G"], c["symmetric"])
    W_llmc, loss_llmc = L.llmc_gptq(W, H, s, z, c["bits"], c["G"], c["symmetric"], c["act_order"], c["blocksize"])
    ours = gptq.gptq_quantize(W, H, c["bits"], c["G"], c["symmetric"], act_order=c["act_order"],
                              blocksize=c["blocksize"], s=s, z=z, signed=True, zero_before_round=True)
    g = np.arange(c["n_in"]) // (c["G"] or c["n_in"])
    q_llmc = np.round(W_llmc / s[:, g] + z[:, g])  # exact: ŵ/s = q - z up to rounding, q integral
    return ours, W_llmc, q_llmc, loss_llmc


@given(configs())
def test_codes_identical_to_llmcompressor(c):
    ours, W_llmc, q_llmc, loss_llmc = _both(c)
    assert np.array_equal(ours.q, q_llmc)
    assert np.array_equal(ours.W_hat, W_llmc)
    # the loss Σ e²/2 is summed in another order (per block, then per row): float32 rounding only
    assert ours.loss == pytest.approx(loss_llmc, rel=1e-4)


def test_realistic_layer_identical():
    # one larger layer with the defaults users run (4-bit, G=128, asymmetric, act-order on/off)
    for act_order in (False, True):
        c = dict(seed=7, n_out=64, n_in=512, G=128, bits=4, symmetric=False, act_order=act_order,
                 blocksize=128, n_tokens=2048, corr=1.0)
        ours, W_llmc, q_llmc, _ = _both(c)
        assert np.array_equal(ours.q, q_llmc) and np.array_equal(ours.W_hat, W_llmc)
