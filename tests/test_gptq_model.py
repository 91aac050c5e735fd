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


VARIANTS = [dict(act_order=False), dict(act_order=True), dict(act_group_aware=True), dict(mse=2.4)]


@pytest.mark.parametrize("options", VARIANTS, ids=["plain", "act_order", "act_group_aware", "mse"])
def test_shared_input_codes_equal_separate_layers(options):
    # the driver builds one Hessian and one factor for q, k, v: their codes are those of three
    # separate gptq_quantize calls, each on its own Hessian of the captured input
    model = tiny_model(7)
    calib = np.random.default_rng(7).integers(0, 97, 128)
    r = blockwise.gptq_quantize_model(model, calib, bits=4, group_size=32, window=64, blocks=[0], **options)
    H = gptq.Hessian(model.config.n_embd)
    for h in blockwise.embedded_windows(model, calib, 64):
        H.add(blockwise.block_inputs(model, 0, [h])["attn_q"])
    for k in ("attn_q", "attn_k", "attn_v"):
        name = f"blk.0.{k}.weight"
        own = gptq.gptq_quantize(model.weights[name], H.H, 4, 32, partial_group=True, **options)
        assert np.array_equal(own.q, r.details[name].q) and np.array_equal(own.W_hat, r.weights[name])


def test_gptaq_first_stage_is_plain_gptq_and_later_stages_differ():
    # before anything is quantized the float and the quantized model read the same x (X̃ = X,
    # ΔXX̃ᵀ = 0): block 0's q, k, v are plain GPTQ's bit for bit; from o on X̃ ≠ X and GPTAQ moves
    model = tiny_model(8)
    calib = np.random.default_rng(8).integers(0, 97, 128)
    kw = dict(bits=3, group_size=32, window=64)
    plain = blockwise.gptq_quantize_model(model, calib, **kw).weights
    asym = blockwise.gptq_quantize_model(model, calib, gptaq=True, **kw).weights
    for k in ("attn_q", "attn_k", "attn_v"):
        assert np.array_equal(plain[f"blk.0.{k}.weight"], asym[f"blk.0.{k}.weight"]), k
    assert not np.array_equal(plain["blk.0.ffn_down.weight"], asym["blk.0.ffn_down.weight"])
    assert not np.array_equal(plain["blk.1.attn_q.weight"], asym["blk.1.attn_q.weight"])


@pytest.mark.parametrize("options", [dict(act_group_aware=True), dict(mse=2.4), dict(gptaq=True)],
                         ids=["act_group_aware", "mse", "gptaq"])
def test_model_variants_beat_rtn(options):
    model = tiny_model(3)
    rng = np.random.default_rng(3)
    calib, held_out = rng.integers(0, 97, 256), rng.integers(0, 97, 64)
    W_hat = blockwise.gptq_quantize_model(model, calib, bits=3, group_size=32, window=64, **options).weights
    rtn = blockwise.rtn_quantize_model(model, bits=3, group_size=32)
    assert _error(model, W_hat, held_out) < _error(model, rtn, held_out)


def test_bad_variant_options_fail_before_the_first_block():
    model, calib = tiny_model(), np.arange(128) % 97
    with pytest.raises(ValueError, match="act_order, act_group_aware: choose one"):
        blockwise.gptq_quantize_model(model, calib, act_order=True, act_group_aware=True, window=64)
    with pytest.raises(ValueError, match="group_size: act_group_aware orders groups"):
        blockwise.gptq_quantize_model(model, calib, group_size=None, act_group_aware=True, window=64)
    with pytest.raises(ValueError, match="mse"):
        blockwise.gptq_quantize_model(model, calib, mse=-2.4, window=64)
    with pytest.raises(TypeError, match="gptaq: expected True or False"):
        blockwise.gptq_quantize_model(model, calib, gptaq="yes", window=64)
    with pytest.raises(ValueError, match="alpha"):
        blockwise.gptq_quantize_model(model, calib, gptaq=True, alpha=-1.0, window=64)


def test_a_block_walked_alone_sees_the_outputs_of_the_blocks_before_it():
    # blocks=[1]: block 0 is run unchanged, so block 1 is calibrated on block 0's outputs, not on
    # the embeddings (recorded through walk_blocks with a method that only looks)
    from refquant.model import calibration

    model = tiny_model(8)
    hs = [model.embed(np.arange(32) % 97)]
    seen = {}

    class Look:
        stages = (("attn_q",),)
        accumulator = calibration.Rows

        def quantize(self, model, i, stage, inputs, hs):
            seen[i] = inputs["attn_q"].X
            return {}

    calibration.walk_blocks(model, hs, Look(), blocks=[1])
    want = calibration.block_inputs(model, 1, [model.block(0, h) for h in hs], ("attn_q",))["attn_q"]
    assert list(seen) == [1] and np.array_equal(seen[1], want)
    with pytest.raises(ValueError, match="blocks: expected increasing"):
        calibration.walk_blocks(model, hs, Look(), blocks=[1, 0])
