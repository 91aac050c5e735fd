"""AWQ: the quantizer, the α search, the clip search, folding, and the model-level driver."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refquant import awq, blockwise, uniform
from refquant._backend import to_numpy
from refquant.testing.llama import tiny_llama
from refquant.testing.strategies import KINDS, rows


# ----------------------------------------------------------------------------- data


def salient_layer(seed: int, n_out: int, n_in: int, n_tokens: int, n_salient: int = 4):
    """(W, X): LLM-like inputs — most channels O(1), a few 'salient' ones 10-50x larger
    (the activation outliers AWQ is about) — and Student-t weights."""
    rng = np.random.default_rng(seed)
    scale = np.ones(n_in)
    scale[rng.choice(n_in, min(n_salient, n_in), replace=False)] = rng.uniform(10, 50, min(n_salient, n_in))
    X = (rng.standard_normal((n_tokens, n_in)) * scale).astype(np.float32)
    W = (rng.standard_t(5, (n_out, n_in)) * 0.05).astype(np.float32)
    return W, X


def rtn_loop(W, bits: int, G: int):
    """The obvious round-to-nearest, one group at a time (the slow oracle of AWQ's quantizer).

    Range [min(min w, 0), max(max w, 0)] (0 representable), s = max(range, 1e-5)/(2^b - 1),
    z = round(-lo/s), q = clamp(round(w/s) + z, 0, 2^b - 1), ŵ = s (q - z). W: (out, in) -> Ŵ.
    """
    q_max = 2**bits - 1
    W_hat = np.empty_like(W)
    for lo_col in range(0, W.shape[1], G):
        w = W[:, lo_col:lo_col + G]                                         # (out, G)
        lo = np.minimum(w.min(axis=1, keepdims=True), 0)
        hi = np.maximum(w.max(axis=1, keepdims=True), 0)
        s = np.maximum(hi - lo, awq.MIN_RANGE) / q_max
        z = np.round(-lo / s)
        W_hat[:, lo_col:lo_col + G] = s * (np.clip(np.round(w / s) + z, 0, q_max) - z)
    return W_hat


# float64 brute force against float64 search: the two compute the same Ŵ bit for bit (same
# elementwise maths) and the losses up to matmul summation order, ~n·eps relative to terms
# of size |x||w| on a difference that is ≥ 1e-3 of them: 1e-9 leaves a margin of 1e3 or more
BRUTE_RTOL = 1e-9


@st.composite
def layers(draw):
    G = draw(st.sampled_from([16, 32, 64]))
    n_in = G * draw(st.integers(1, 4))
    W, X = salient_layer(draw(st.integers(0, 2**32 - 1)), draw(st.integers(1, 24)), n_in,
                         draw(st.sampled_from([16, 64, 256])), draw(st.integers(0, 8)))
    return W, X, G, draw(st.sampled_from([3, 4]))


def tiny_model(seed: int = 0, n_layer: int = 2, gqa: bool = True):
    """refquant.testing.llama.tiny_llama at d=64 (4 heads, 2 or 4 kv heads, n_ff=96, vocab 97), with
    one salient input channel, as real models have: a large attention-norm gain."""
    model = tiny_llama(seed, n_layer=n_layer, d=64, n_head=4, n_kv=2 if gqa else 4, n_ff=96, vocab=97, n_ctx=256,
                       norm_gains=(0.5, 2.0))
    for i in range(n_layer):
        model.weights[f"blk.{i}.attn_norm.weight"][3] = 20.0
    return model


# ----------------------------------------------------------------------------- pieces


def test_group_quantizer_hand_example():
    # group [-1, 0, 2] (+ a 4th value 1) at 2 bits: s = 3/3 = 1, z = -round(-1/1) = 1, q = w + 1
    q, s, z, W_hat = awq.awq_group_quantize(np.array([[-1.0, 0.0, 2.0, 1.0]], np.float32), bits=2, group_size=4)
    assert s.tolist() == [[1.0]] and z.tolist() == [[1.0]]
    assert q.tolist() == [[0, 1, 3, 2]] and W_hat.tolist() == [[-1.0, 0.0, 2.0, 1.0]]


@given(layers())
def test_group_quantizer_error_bound(layer):
    W, _, G, bits = layer
    q, s, z, W_hat = awq.awq_group_quantize(W, bits, G)
    s_col = np.repeat(s, G, axis=1)
    # |w - ŵ| ≤ s/2 (+ one float32 rounding of the division and of the product)
    assert np.all(np.abs(W - W_hat) <= s_col / 2 * (1 + 1e-5) + 1e-7)
    assert q.min() >= 0 and q.max() <= 2**bits - 1


def test_partial_last_group():
    # 96 columns, G = 64: groups [0, 64) and [64, 96), as SmolLM2's 576 = 4·128 + 64
    W, _ = salient_layer(0, 4, 96, 8)
    q, s, z, W_hat = awq.awq_group_quantize(W, 4, 64, partial_group=True)
    assert s.shape == (4, 2)
    assert np.array_equal(W_hat[:, 64:], awq.awq_group_quantize(W[:, 64:], 4, 32).W_hat)


def test_act_scale_hand_example():
    X = np.array([[1.0, -2.0], [-3.0, 0.0]], np.float32)
    assert awq.act_scale(X).tolist() == [2.0, 1.0]  # mean |x| per column


@given(st.integers(0, 2**32 - 1))
def test_alpha_zero_is_round_to_nearest(seed):
    # s_X^0 = 1 everywhere, normalised by √(1·1) = 1: Q(W·1)/1 is RTN bit for bit
    W, X = salient_layer(seed, 8, 64, 32)
    s = awq.scales_for(awq.act_scale(X), 0.0)
    assert np.all(s == 1.0)
    rtn = awq.awq_group_quantize(W, 4, 32).W_hat
    found = awq.search_scale(X, [W], 4, 32)
    assert found.losses[0] == float(np.mean((X @ W.T - X @ rtn.T) ** 2))


@given(rows(16, max_rows=6, max_blocks=4, kinds=KINDS))
def test_group_quantizer_equals_round_to_nearest(W):
    # AWQ's quantizer is refquant.uniform's asymmetric RTN (range widened to contain 0) bit for bit,
    # except the groups whose range is under AWQ's floor 1e-5: there only the bound s/2 holds
    _, s, _, W_hat = awq.awq_group_quantize(W, 4, 16)
    rtn = uniform.fake_quantize(W, 4, symmetric=False, granularity="group", group_size=16, signed=False)
    g = W.reshape(W.shape[0], -1, 16)
    wide = np.repeat(np.maximum(g.max(-1), 0) - np.minimum(g.min(-1), 0) >= awq.MIN_RANGE, 16, axis=1)
    assert np.array_equal(W_hat[wide], rtn[wide])
    assert np.all(np.abs(W - W_hat)[~wide] <= np.repeat(s, 16, axis=1)[~wide] / 2)


@given(layers())
def test_scale_search_matches_brute_force(layer):
    # every grid point α = i/n re-evaluated here: s(α) = max(s_X^α, 1e-4)/√(max·min), loss of
    # Q(W s)/s by the slow RTN; the search must report those losses and pick their minimum
    W, X, G, bits = (layer[0].astype(np.float64), layer[1].astype(np.float64), *layer[2:])
    Ws = [W, W[::-1] * 0.5]
    found = awq.search_scale(X, Ws, bits, G)
    s_X = np.abs(X).mean(axis=0)
    Y = np.concatenate([X @ Wk.T for Wk in Ws], axis=1)
    brute, scales = [], []
    for i in range(awq.N_GRID):
        s = np.maximum(s_X ** (i / awq.N_GRID), 1e-4)
        s = s / np.sqrt(s.max() * s.min())
        Y_hat = np.concatenate([X @ (rtn_loop(Wk * s, bits, G) / s).T for Wk in Ws], axis=1)
        brute.append(np.mean((Y - Y_hat) ** 2))
        scales.append(s)
    rtn_loss = np.mean((Y - np.concatenate([X @ rtn_loop(Wk, bits, G).T for Wk in Ws], axis=1)) ** 2)
    np.testing.assert_allclose(found.losses, brute, rtol=BRUTE_RTOL)
    k = round(found.alpha * awq.N_GRID)
    assert found.alpha == k / awq.N_GRID and np.array_equal(found.s, scales[k])
    assert brute[k] <= min(brute) * (1 + BRUTE_RTOL) and brute[k] <= rtn_loss * (1 + BRUTE_RTOL)


def test_search_helps_salient_channels():
    # the point of AWQ: with strong activation outliers, some α > 0 beats plain rounding
    W, X = salient_layer(0, 64, 256, 512, n_salient=8)
    found = awq.search_scale(X, [W], 4, 64)
    assert found.alpha > 0 and found.loss < 0.9 * found.losses[0]


@given(layers())
def test_clip_search_matches_brute_force(layer):
    # every shrink i re-evaluated per (row, group): m = (1 - i/n)·max|w_g|, error of the slow RTN of
    # clamp(w_g, ±m) on the subsampled tokens; the search must pick each group's smallest
    W, X, G, bits = (layer[0].astype(np.float64), layer[1].astype(np.float64), *layer[2:])
    found = awq.search_clip(W, X, bits, G)
    Xs = X[::max(1, X.shape[0] // awq.N_SAMPLE_TOKEN)]                       # (T', in)
    n_out, n_groups = W.shape[0], W.shape[1] // G
    absmax = np.abs(W).reshape(n_out, n_groups, G).max(-1)                  # (out, n_groups)
    shrinks = [absmax * (1 - i / awq.N_GRID) for i in range(int(awq.MAX_SHRINK * awq.N_GRID))]
    err = np.empty((len(shrinks), n_out, n_groups))                         # (n_shrink, out, n_groups)
    for i, m in enumerate(shrinks):
        W_hat = rtn_loop(np.clip(W, -np.repeat(m, G, axis=1), np.repeat(m, G, axis=1)), bits, G)
        for g in range(n_groups):
            cols = slice(g * G, (g + 1) * G)
            err[i, :, g] = np.mean((Xs[:, cols] @ (W_hat[:, cols] - W[:, cols]).T) ** 2, axis=0)
    on_grid = np.stack(shrinks) == found.max_val[None]                      # (n_shrink, out, n_groups)
    assert np.all(on_grid.any(axis=0))                                       # max_val is a grid point
    err_chosen = np.take_along_axis(err, np.argmax(on_grid, axis=0)[None], 0)[0]
    atol = err.max() * 1e-15  # a group reproduced exactly has error 0, or a few float64 ulps of the others
    assert np.all(err_chosen <= err.min(0) * (1 + BRUTE_RTOL) + atol)
    np.testing.assert_allclose(found.err, err_chosen, rtol=BRUTE_RTOL, atol=atol)
    np.testing.assert_allclose(found.err_unclipped, err[0], rtol=BRUTE_RTOL, atol=atol)
    clipped = awq.apply_clip(W, found.max_val, G)
    assert np.all(np.abs(clipped) <= np.repeat(found.max_val, G, axis=1))


@given(st.integers(0, 2**32 - 1))
def test_folding_keeps_the_float_layer(seed):
    # y = W (g ⊙ n) = (W diag(s)) ((g/s) ⊙ n);  down(silu(gate)·up) unchanged by up/s, down·s
    rng = np.random.default_rng(seed)
    n = rng.standard_normal((8, 32)).astype(np.float32)
    g, W = rng.uniform(0.5, 2, 32).astype(np.float32), rng.standard_normal((16, 32)).astype(np.float32)
    s = rng.uniform(0.1, 10, 32).astype(np.float32)
    g2, (W2,) = awq.fold_norm(g, [W], s)
    np.testing.assert_allclose((g2 * n) @ W2.T, (g * n) @ W.T, rtol=2e-5, atol=2e-5)  # a few float32 roundings
    up, down, s_mid = W, rng.standard_normal((32, 16)).astype(np.float32), s[:16]
    up2, down2 = awq.fold_linear(up, down, s_mid)
    np.testing.assert_allclose((n @ up2.T) @ down2.T, (n @ up.T) @ down.T, rtol=2e-5, atol=2e-5)


# ----------------------------------------------------------------------------- model level


@pytest.mark.parametrize("gqa", [True, False])
def test_model_folded_and_effective_weights_agree(gqa):
    # fold=True (norm gains and up/v rows changed) and fold=False (effective weights, norms
    # untouched) are the same quantized block: same outputs up to float32 rounding. (One
    # block: later blocks calibrate on inputs that differ in the last bits, which can move
    # a weight across a rounding boundary — a different, equally valid, quantization.)
    model = tiny_model(1, gqa=gqa)
    tokens = np.random.default_rng(1).integers(0, 97, 128)
    r = blockwise.awq_quantize_model(model, tokens, bits=4, group_size=32, window=64, blocks=[0])
    eff, info = r.weights, r.details
    folded = blockwise.awq_quantize_model(model, tokens, bits=4, group_size=32, window=64, blocks=[0], fold=True).weights
    assert set(info) == {0} and ("attn_output" in info[0]) == (not gqa)
    assert "blk.0.attn_norm.weight" in folded and "blk.0.attn_norm.weight" not in eff
    a, b = model.with_weights(eff).forward(tokens[:64]), model.with_weights(folded).forward(tokens[:64])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * np.abs(a).max())
    assert not np.allclose(a, model.forward(tokens[:64]), rtol=1e-3)  # it did quantize


def test_model_awq_beats_rtn_on_calibration_outputs():
    model = tiny_model(2)
    tokens = np.random.default_rng(2).integers(0, 97, 256)
    eff = blockwise.awq_quantize_model(model, tokens, bits=3, group_size=32, window=64).weights
    rtn = {n: awq.awq_group_quantize(model.weights[n], 3, 32).W_hat for n in eff}
    ref = model.forward(tokens[:64])
    err = lambda w: float(np.mean((model.with_weights(w).forward(tokens[:64]) - ref) ** 2))  # noqa: E731
    assert err(eff) < err(rtn)


def test_bad_input():
    W, X = salient_layer(0, 4, 64, 16)
    with pytest.raises(ValueError, match="group_size"):
        awq.awq_group_quantize(W, 4, 48)
    with pytest.raises(ValueError, match="X: contains NaN"):
        awq.search_scale(np.where(X > 1, np.nan, X), [W], 4, 32)
    with pytest.raises(ValueError, match=r"Ws\[0\]: expected 64 input columns"):
        awq.search_scale(X, [W[:, :32]], 4, 32)
    with pytest.raises(ValueError, match=r"X: expected shape \(T, 64\)"):
        awq.search_clip(W, X[:, :32], 4, 32)
    with pytest.raises(ValueError, match="calib_tokens"):
        blockwise.awq_quantize_model(tiny_model(), np.arange(1), window=64)


# ----------------------------------------------------------------------------- backends


def test_backend_parity(xp):
    W, X = salient_layer(3, 8, 64, 64)
    ref = awq.search_scale(X, [W], 4, 32)
    got = awq.search_scale(xp.asarray(X), [xp.asarray(W)], 4, 32)
    assert got.alpha == ref.alpha
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-4)  # float32 matmul order differs by BLAS
    clip_ref = awq.search_clip(W, X, 4, 32)
    clip = awq.search_clip(xp.asarray(W), xp.asarray(X), 4, 32)
    np.testing.assert_array_equal(to_numpy(clip.max_val), clip_ref.max_val)


@pytest.mark.gpu
def test_gpu_matches_numpy():
    cupy = pytest.importorskip("cupy")
    W, X = salient_layer(4, 64, 256, 512, 8)
    ref = awq.search_scale(X, [W], 4, 64)
    got = awq.search_scale(cupy.asarray(X), [cupy.asarray(W)], 4, 64)
    assert got.alpha == ref.alpha
    np.testing.assert_allclose(got.losses, ref.losses, rtol=1e-4)
