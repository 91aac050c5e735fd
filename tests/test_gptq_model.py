"""Block-sequential GPTQ over a (tiny, random) Llama built on refquant.model."""

from __future__ import annotations

import numpy as np
import pytest

from refquant import blockwise, gptq
from test_awq import tiny_model


def _error(model, weights, tokens):
    ref = model.forward(tokens)
    return float(np.mean((model.with_weights(weights).forward(tokens) - ref) ** 2))


@pytest.mark.parametrize("act_order", [False, True])
def test_model_gptq_beats_rtn(act_order):
    # calibrate on 4 windows of 64 tokens, compare logits with the float model on a held-out window
    model = tiny_model(3)
    rng = np.random.default_rng(3)
    calib, held_out = rng.integers(0, 97, 256), rng.integers(0, 97, 64)
    r = blockwise.gptq_quantize_model(model, calib, bits=3, group_size=32, act_order=act_order, window=64)
    W_hat, info = r.weights, r.details
    assert set(W_hat) == set(model.linear_names()) and set(info) == set(W_hat)
    assert all(info[n].perm is not None for n in info) == act_order
    rtn = blockwise.rtn_quantize_model(model, bits=3, group_size=32)
    assert _error(model, W_hat, held_out) < _error(model, rtn, held_out)


def test_partial_groups_and_chosen_blocks():
    # 96 input columns with G = 64 (ffn_down): a 64-group and a 32-group; only block 1 touched
    model = tiny_model(4)
    calls = []
    r = blockwise.gptq_quantize_model(model, np.arange(128) % 97, bits=4, group_size=64, window=64, blocks=[1],
                                      progress=lambda it, desc="", total=None: calls.append(desc) or it)
    assert sorted(r.weights) == sorted(n for n in model.linear_names() if n.startswith("blk.1."))
    assert calls == ["GPTQ 4-bit"]
    assert r.details["blk.1.ffn_down.weight"].s.shape == (64, 2)


def test_true_sequential_sees_quantized_inputs():
    # stage by stage, o/gate/up/down are calibrated on inputs that already went through quantized
    # layers: a different (and the reference's) Hessian than one capture of the float block
    model = tiny_model(5)
    calib = np.random.default_rng(5).integers(0, 97, 128)
    seq = blockwise.gptq_quantize_model(model, calib, bits=3, group_size=32, window=64, blocks=[0]).weights
    one = blockwise.gptq_quantize_model(model, calib, bits=3, group_size=32, window=64, blocks=[0],
                                        true_sequential=False).weights
    assert np.array_equal(seq["blk.0.attn_q.weight"], one["blk.0.attn_q.weight"])  # same first stage
    assert not np.array_equal(seq["blk.0.ffn_down.weight"], one["blk.0.ffn_down.weight"])


def test_bad_input():
    with pytest.raises(ValueError, match="calib_tokens"):
        blockwise.gptq_quantize_model(tiny_model(), np.arange(1), window=64)


def test_fewer_tokens_than_a_window():
    # the report's quick protocol calibrates on 256 tokens with window 512: one window of 256
    model = tiny_model(6)
    W_hat = blockwise.gptq_quantize_model(model, np.arange(40) % 97, bits=4, group_size=32, window=512, blocks=[0])
    assert len(W_hat.weights) == 7


@pytest.mark.parametrize("act_order", [False, True])
def test_shared_input_codes_equal_separate_layers(act_order):
    # the driver builds one Hessian and one factor for q, k, v: their codes are those of three
    # separate gptq_quantize calls, each on its own Hessian of the captured input
    model = tiny_model(7)
    calib = np.random.default_rng(7).integers(0, 97, 128)
    r = blockwise.gptq_quantize_model(model, calib, bits=4, group_size=32, act_order=act_order, window=64, blocks=[0])
    H = gptq.Hessian(model.config.n_embd)
    for h in blockwise.embedded_windows(model, calib, 64):
        H.add(blockwise.block_inputs(model, 0, [h])["attn_q"])
    for k in ("attn_q", "attn_k", "attn_v"):
        name = f"blk.0.{k}.weight"
        own = gptq.gptq_quantize(model.weights[name], H.H, 4, 32, act_order=act_order, partial_group=True)
        assert np.array_equal(own.q, r.details[name].q) and np.array_equal(own.W_hat, r.weights[name])
