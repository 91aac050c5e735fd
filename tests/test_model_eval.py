"""refquant.model.data (the text split), refquant.model.ppl (perplexity protocols, hand-worked)
and refquant.model.calibration (streamed statistics, block-by-block propagation)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refquant.blockwise import calibrate
from refquant.model import data, perplexity, windows
from refquant.model.ppl import token_nll
from refquant.testing.llama import tiny_llama


# --- the text split --------------------------------------------------------------------------

def test_split_is_a_partition_of_the_topics():
    calibration, evaluation = data.split()
    keys = list(data.topics())
    assert keys == sorted(keys)
    assert set(calibration).isdisjoint(evaluation)
    assert sorted(calibration + evaluation) == keys
    assert evaluation == keys[3::4]  # every 4th topic, from the 4th on


def test_texts_are_the_topics_joined():
    table = data.topics()
    calibration, evaluation = data.split()
    assert data.evaluation_text() == "\n\n".join(table[k] for k in evaluation)
    assert data.calibration_text().startswith(table[calibration[0]])
    assert len(data.evaluation_text()) > 50_000  # enough for dozens of 512-token windows
    assert "Python" in data.source()


# --- perplexity --------------------------------------------------------------------------------

def constant_logits(row):
    """A 'model' whose logits are the same row at every position."""
    row = np.asarray(row, dtype=np.float32)
    return lambda tokens: np.tile(row, (len(tokens), 1))


@given(st.integers(2, 64), st.integers(3, 40), st.integers(1, 5), st.sampled_from(["all", "llama.cpp"]))
def test_uniform_model_has_perplexity_vocab_size(V, W, n, protocol):
    tokens = np.arange(n * W + W - 1) % V  # W − 1 leftover tokens: dropped
    result = perplexity(constant_logits(np.zeros(V)), tokens, window=W, protocol=protocol)
    assert result.n_windows == n
    assert result.n_tokens == n * ((W - 1) if protocol == "all" else (W - W // 2 - 1))
    assert result.ppl == pytest.approx(V, rel=1e-6)  # −log(1/V) per token


def test_hand_worked_two_token_vocabulary():
    # logits (log 3, 0): p(0) = 3/4, p(1) = 1/4. Stream 0 1 0 0 | 1 1 0 1, window 4.
    model = constant_logits([math.log(3.0), 0.0])
    tokens = [0, 1, 0, 0, 1, 1, 0, 1]
    # protocol "all": targets 1 0 0 and 1 0 1 -> three 1/4's and three 3/4's
    nll_all = (3 * math.log(4) + 3 * math.log(4 / 3)) / 6
    assert perplexity(model, tokens, window=4).nll == pytest.approx(nll_all, rel=1e-6)
    # protocol "llama.cpp": first = 2, scores position 2 -> target 3 only: tokens 0 and 1
    nll_half = (math.log(4 / 3) + math.log(4)) / 2
    result = perplexity(model, tokens, window=4, protocol="llama.cpp")
    assert result.n_tokens == 2
    assert result.nll == pytest.approx(nll_half, rel=1e-6)
    assert result.ppl == pytest.approx(math.exp(nll_half), rel=1e-6)


def test_token_nll_is_shift_invariant_and_exact():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((5, 7)).astype(np.float32)
    targets = rng.integers(0, 7, 5)
    expected = [math.log(sum(math.exp(float(v)) for v in row)) - float(row[t]) for row, t in zip(logits, targets)]
    np.testing.assert_allclose(token_nll(logits, targets), expected, rtol=1e-6)
    np.testing.assert_allclose(token_nll(logits + 100.0, targets), expected, rtol=1e-4)


def test_token_nll_backend_parity(xp):
    from refquant._backend import from_numpy

    rng = np.random.default_rng(1)
    logits = rng.standard_normal((6, 11)).astype(np.float32)
    targets = rng.integers(0, 11, 6)
    np.testing.assert_allclose(token_nll(from_numpy(logits, xp=xp), targets), token_nll(logits, targets), rtol=1e-6)


def test_perplexity_of_a_model_object_and_max_windows():
    model = tiny_llama()
    tokens = np.arange(40) % model.config.vocab_size
    result = perplexity(model, tokens, window=8, max_windows=2)
    assert result.n_windows == 2 and result.n_tokens == 14
    assert result.window_nll.shape == (2,)
    assert math.isclose(result.nll, float(np.mean(result.window_nll)), rel_tol=1e-12)  # equal windows


def test_perplexity_bad_arguments():
    model = constant_logits([0.0, 0.0])
    with pytest.raises(ValueError, match="protocol"):
        perplexity(model, [0, 1, 0, 1], window=2, protocol="gptq")
    with pytest.raises(ValueError, match="window: expected an integer >= 2"):
        perplexity(model, [0, 1, 0, 1], window=1)
    with pytest.raises(ValueError, match="window=2 scores none"):
        perplexity(model, [0, 1, 0, 1], window=2, protocol="llama.cpp")
    with pytest.raises(ValueError, match="fewer than one window"):
        perplexity(model, [0, 1, 0], window=4)
    with pytest.raises(ValueError, match="max_windows"):
        windows([0, 1, 0, 1], 2, max_windows=0)
    with pytest.raises(TypeError, match="model"):
        perplexity(42, [0, 1, 0, 1], window=2)


# --- calibration --------------------------------------------------------------------------------

def _captured_inputs(model, chunks, i):
    """Every linear input of block i, kept whole (the memory-hungry obvious way)."""
    h = [model.embed(c) for c in chunks]
    for j in range(i):
        h = [model.block(j, x) for x in h]
    seen = {}
    for x in h:
        model.block(i, x, capture=lambda name, a: seen.setdefault(name, []).append(a))
    return {name: np.concatenate(rows) for name, rows in seen.items()}


@given(st.integers(1, 3), st.integers(2, 9), st.integers(0, 2**32 - 1))
def test_streamed_statistics_equal_whole_activation_sums(n_windows, T, seed):
    model = tiny_llama(seed % 7)
    chunks = np.random.default_rng(seed).integers(0, model.config.vocab_size, (n_windows, T))
    stats = calibrate(model, chunks).stats
    for i in range(model.config.n_layer):
        for name, X in _captured_inputs(model, chunks, i).items():
            s = stats[name]
            assert s.n == n_windows * T
            # float32 sums of n_windows partial Gram matrices vs one Gram matrix
            np.testing.assert_allclose(s.hessian(), 2 * X.T @ X / len(X), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(s.mean_abs(), np.abs(X).mean(0), rtol=1e-5, atol=1e-6)


def test_block_sees_quantized_predecessors_when_asked():
    model = tiny_llama()
    chunks = [np.arange(6), np.arange(6, 12)]
    halve = lambda i, stats, inputs: {n: model.weights[n] * 0.5 for n in stats} if i == 0 else None  # noqa: E731
    quantized = calibrate(model, chunks, on_block=halve, propagate="quantized")
    original = calibrate(model, chunks, on_block=halve, propagate="original")
    plain = calibrate(model, chunks)
    # block 0 statistics are taken before block 0 changes: identical everywhere
    np.testing.assert_array_equal(quantized.stats["blk.0.attn_q.weight"].hessian(), plain.stats["blk.0.attn_q.weight"].hessian())
    # block 1 sees the halved block 0 only under propagate="quantized"
    np.testing.assert_array_equal(original.stats["blk.1.attn_q.weight"].hessian(), plain.stats["blk.1.attn_q.weight"].hessian())
    swapped = model.with_weights({n: model.weights[n] * 0.5 for n in quantized.stats if n.startswith("blk.0.")})
    expected = _captured_inputs(swapped, chunks, 1)["blk.1.ffn_down.weight"]
    np.testing.assert_allclose(quantized.stats["blk.1.ffn_down.weight"].mean_abs(), np.abs(expected).mean(0),
                               rtol=1e-5, atol=1e-6)
    assert quantized.model.weights["blk.0.attn_q.weight"] is not model.weights["blk.0.attn_q.weight"]


def test_shared_inputs_share_statistics_and_keep_false():
    model = tiny_llama()
    result = calibrate(model, [np.arange(5)])
    s = result.stats
    assert s["blk.0.attn_q.weight"] is s["blk.0.attn_k.weight"] is s["blk.0.attn_v.weight"]
    assert s["blk.0.ffn_gate.weight"] is s["blk.0.ffn_up.weight"]
    assert s["blk.0.ffn_down.weight"].hessian().shape == (24, 24)  # n_ff inputs
    assert calibrate(model, [np.arange(5)], keep=False).stats == {}


def test_calibrate_bad_arguments():
    model = tiny_llama()
    with pytest.raises(ValueError, match="propagate"):
        calibrate(model, [np.arange(4)], propagate="both")
    with pytest.raises(ValueError, match="windows"):
        calibrate(model, [])
