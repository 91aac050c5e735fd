"""QAT with the straight-through estimator (refquant.qat) on the tiny Llama.

Oracles: refquant.model.backward's dense gradient at Ŵ (the STE's definition), torch autograd
through ``W + (Ŵ − W).detach()`` (the usual STE spelling), and RTN's codes from
refquant.uniform (QAT's step 0 and a zero learning rate must keep them).
"""

from __future__ import annotations

import numpy as np
import pytest

from refquant import qat, uniform
from refquant.model import backward as bw
from refquant.model.llama import LlamaModel
from refquant.model.loader import LINEAR_NAMES
from refquant.testing.llama import tiny_llama

CONFIG = qat.QatConfig(bits=4, group_size=8)  # the tiny model's widths are 16 and 24: 2 and 3 groups
TOKENS = np.array([3, 17, 5, 42, 8, 8, 31, 0, 12, 49, 7, 21], dtype=np.int64)


@pytest.fixture(scope="module")
def model():
    return tiny_llama(seed=0)


def test_codes_are_uniform_group_codes(model):
    """quantize's codes, scales and Ŵ are uniform.quantize's on every full group (RTN's codes)."""
    W = model.weights["blk.0.ffn_down.weight"]  # (16, 24)
    g = qat.quantize(W, CONFIG)
    qt = uniform.quantize(W, bits=4, symmetric=False, granularity="group", group_size=8, signed=False)
    np.testing.assert_array_equal(g.q, qt.q.reshape(16, 24))
    np.testing.assert_array_equal(g.s, qt.s[:, :, 0])
    np.testing.assert_array_equal(g.W_hat, uniform.dequantize(qt))
    assert g.q.min() >= 0 and g.q.max() <= 15


def test_partial_last_group_is_its_own_group(model):
    """n_in = 24, G = 16: one group of 16, then the 8 left over quantized alone."""
    W = model.weights["blk.0.ffn_down.weight"]  # (16, 24)
    g = qat.quantize(W, qat.QatConfig(4, 16))
    tail = uniform.fake_quantize(W[:, 16:], bits=4, symmetric=False, granularity="group", group_size=8,
                                 signed=False)
    assert g.s.shape == (16, 2)
    np.testing.assert_array_equal(g.W_hat[:, 16:], tail)


@pytest.mark.parametrize("blocks", [[0, 1], [1]])
def test_ste_gradient_is_the_dense_gradient_at_w_hat(model, blocks):
    """dL/dW (STE) == dL/dŴ: backward.loss_and_grads of the model whose linears are Ŵ."""
    weights = qat.init_weights(model, blocks)
    weights = {n: W + np.float32(0.01) * np.sign(W) for n, W in weights.items()}  # latent ≠ float weights
    loss, grads = qat.loss_and_grads(model, weights, TOKENS, CONFIG)
    dense = qat.quantized_model(model, weights, CONFIG)  # every linear Ŵ (RTN outside `blocks`)
    ref = bw.loss_and_grads(dense, TOKENS, embedding_grad=False)
    assert loss == ref.loss
    assert set(grads) == set(weights)
    for name, dW in grads.items():
        np.testing.assert_array_equal(dW, ref.linear[name])


def test_ste_gradient_matches_torch_autograd_detach_trick(model):
    """torch: Ŵ = W + (fq(W) − W).detach() gives dW = dL/dŴ; the same loss and gradient (float32)."""
    torch = pytest.importorskip("torch")
    from tests.test_qlora import torch_lora_loss

    weights = qat.init_weights(model, [1])
    loss, grads = qat.loss_and_grads(model, weights, TOKENS, CONFIG)
    tw = {k: torch.tensor(v) for k, v in model.weights.items()}
    latent = {n: torch.tensor(W, requires_grad=True) for n, W in weights.items()}
    for name in model.linear_names():
        W_hat = torch.tensor(qat.fake_quantize(np.asarray(model.weights[name], np.float32), CONFIG))
        tw[name] = latent[name] + (W_hat - latent[name]).detach() if name in latent else W_hat
    tloss = torch_lora_loss(model.config, tw, {}, {}, {}, TOKENS)
    tloss.backward()
    assert abs(loss - tloss.item()) <= 1e-5 * abs(tloss.item())
    for name, dW in grads.items():
        ref = latent[name].grad.numpy()
        assert np.linalg.norm(dW - ref) <= 1e-5 * np.linalg.norm(ref), name


def test_step_zero_is_rtn(model):
    """Before any step the latent weights are the float ones: the QAT model is the RTN model."""
    rtn = qat.quantized_model(model, {}, CONFIG)
    start = qat.quantized_model(model, qat.init_weights(model, [0, 1]), CONFIG)
    for name in model.linear_names():
        np.testing.assert_array_equal(start.weights[name], rtn.weights[name])
        assert not np.array_equal(rtn.weights[name], model.weights[name])  # RTN did change them


def test_zero_learning_rate_leaves_the_codes_unchanged(model):
    weights = qat.init_weights(model, [0, 1])
    before = qat.quantized_weights(model, weights, CONFIG)
    result = qat.train(model, weights, [TOKENS], 5, qat.AdamW(lr=0.0), CONFIG)
    after = qat.quantized_weights(model, result.weights, CONFIG)
    for name in weights:
        np.testing.assert_array_equal(after[name].q, before[name].q)
        np.testing.assert_array_equal(result.weights[name], weights[name])
    assert len(set(result.losses)) == 1  # the same fake-quantized model at every step


def test_loss_decreases_over_20_steps_on_a_fixed_batch(model):
    weights = qat.init_weights(model, [0, 1])
    rtn_loss, _ = qat.loss_and_grads(model, weights, TOKENS, CONFIG)
    result = qat.train(model, weights, [TOKENS], 20, qat.AdamW(lr=1e-2), CONFIG)
    assert result.losses[0] == rtn_loss
    final, _ = qat.loss_and_grads(model, result.weights, TOKENS, CONFIG)  # a fresh pass, not train's log
    assert final < 0.8 * rtn_loss
    changed = sum(int(np.sum(a.q != b.q)) for a, b in zip(qat.quantized_weights(model, result.weights, CONFIG).values(),
                                                           qat.quantized_weights(model, weights, CONFIG).values()))
    assert changed > 0  # the STE moved weights across code boundaries


def test_prefix_cache_gives_the_same_gradients(model):
    weights = qat.init_weights(model, [1], kinds=("attn_v", "ffn_up"))
    loss, grads = qat.loss_and_grads(model, weights, TOKENS, CONFIG)
    (h,) = qat.prefixes(model, [TOKENS], 1, CONFIG)
    loss_h, grads_h = qat.loss_and_grads(model, weights, TOKENS, CONFIG, h=h)
    assert loss_h == loss
    for name in grads:
        np.testing.assert_array_equal(grads_h[name], grads[name])


@pytest.mark.parametrize("kwargs, word", [
    ({"bits": 1}, "bits"), ({"bits": 9}, "bits"), ({"bits": 4.0}, "bits"), ({"bits": True}, "bits"),
    ({"group_size": 0}, "group_size"), ({"group_size": -128}, "group_size"), ({"group_size": 12.5}, "group_size"),
])
def test_bad_config_is_one_clear_error(kwargs, word):
    with pytest.raises(ValueError, match=word):
        qat.QatConfig(**kwargs)


@pytest.mark.parametrize("lr", [-1e-3, float("nan"), float("inf"), "1e-3"])
def test_bad_learning_rate_is_one_clear_error(lr):
    with pytest.raises(ValueError, match="lr"):
        qat.AdamW(lr=lr)


def test_bad_weights_tokens_and_blocks_are_clear_errors(model):
    weights = qat.init_weights(model, [1])
    with pytest.raises(ValueError, match="blocks"):
        qat.init_weights(model, [2])
    with pytest.raises(ValueError, match="kinds"):
        qat.init_weights(model, [0], kinds=("attn_x",))
    with pytest.raises(ValueError, match="weights"):
        qat.loss_and_grads(model, {"blk.1.attn_q.weight": np.zeros((3, 3), np.float32)}, TOKENS, CONFIG)
    with pytest.raises(ValueError, match="tokens"):
        qat.loss_and_grads(model, weights, np.array([1, 50]), CONFIG)
    with pytest.raises(TypeError, match="config"):
        qat.loss_and_grads(model, weights, TOKENS, {"bits": 4})
    with pytest.raises(ValueError, match="steps"):
        qat.train(model, weights, [TOKENS], 0, qat.AdamW(), CONFIG)


def test_a_trained_model_is_a_plain_llama_model(model):
    """quantized_model is a LlamaModel usable by perplexity; its linears lie on the b-bit grid."""
    m = qat.quantized_model(model, {}, CONFIG)
    assert isinstance(m, LlamaModel)
    for kind in LINEAR_NAMES:
        W_hat = m.weights[f"blk.0.{kind}.weight"]
        assert len(np.unique(W_hat[0, :8])) <= 2**CONFIG.bits
