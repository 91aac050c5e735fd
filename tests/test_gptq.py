"""GPTQ: properties from the paper, the erratum, and bad input.

Parity with llm-compressor lives in tests/test_gptq_llmcompressor.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

from refquant import gptq
from refquant._backend import to_numpy


# ----------------------------------------------------------------------------- strategies


def correlated_layer(seed: int, n_out: int, n_in: int, n_tokens: int, corr: float, dtype=np.float32):
    """(W, X, H): a weight with heavy-ish tails and calibration inputs whose channels are
    correlated (X = Z A, A = I + corr·noise) and of unequal scale, as LLM activations are."""
    rng = np.random.default_rng(seed)
    W = (rng.standard_t(5, (n_out, n_in)) * 0.05).astype(dtype)
    A = np.eye(n_in) + corr * rng.standard_normal((n_in, n_in)) / np.sqrt(n_in) * 4
    X = (rng.standard_normal((n_tokens, n_in)) @ A * rng.uniform(0.2, 3.0, n_in)).astype(dtype)
    h = gptq.Hessian(n_in, dtype=dtype)
    h.add(X)
    return W, X, h.H


@st.composite
def layers(draw, dtype=np.float32, max_groups=4):
    """A GPTQ problem: correlated layer, group size dividing the columns, bits 2..8.

    Sizes stay small (≤ 32 x 128) so that each example runs in milliseconds; the column
    count is a multiple of G by construction. n_tokens may be below n_in: then H is
    singular and only the damping makes it positive definite (the case that breaks naive code).
    """
    G = draw(st.sampled_from([8, 16, 32]))
    n_in = G * draw(st.integers(1, max_groups))
    n_out = draw(st.integers(1, 32))
    n_tokens = draw(st.sampled_from([n_in // 2 + 1, 2 * n_in, 8 * n_in]))
    corr = draw(st.sampled_from([0.0, 0.3, 1.0]))
    seed = draw(st.integers(0, 2**32 - 1))
    W, X, H = correlated_layer(seed, n_out, n_in, n_tokens, corr, dtype)
    return dict(W=W, X=X, H=H, G=G, bits=draw(st.integers(2, 8)), symmetric=draw(st.booleans()))


# ----------------------------------------------------------------------------- Hessian


def test_hessian_hand_example():
    # add([[1, 0]]) then add([[0, 2]]): n = 2, H = (2/2) (e1 e1ᵀ + 4 e2 e2ᵀ) = diag(1, 4)
    h = gptq.Hessian(2, dtype=np.float64)
    h.add(np.array([[1.0, 0.0]]))
    h.add(np.array([[0.0, 2.0]]))
    # (√(2/n))² is 2/n to within one rounding of √: 2 ulp
    np.testing.assert_allclose(h.H, np.diag([1.0, 4.0]), rtol=4.5e-16, atol=0)
    assert h.n == 2


@given(st.integers(0, 2**32 - 1), st.lists(st.integers(1, 40), min_size=1, max_size=5))
def test_hessian_streaming_equals_one_shot(seed, sizes):
    X = np.random.default_rng(seed).standard_normal((sum(sizes), 12))
    h = gptq.Hessian(12, dtype=np.float64)
    for chunk in np.split(X, np.cumsum(sizes)[:-1]):
        h.add(chunk)
    np.testing.assert_allclose(h.H, 2 * X.T @ X / len(X), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------- properties


@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.booleans(), st.sampled_from([8, 32, None]),
       st.sampled_from([1, 7, 128]))
def test_diagonal_hessian_is_round_to_nearest(seed, bits, symmetric, G, blocksize):
    # H diagonal ⇒ H⁻¹ and U are diagonal ⇒ every update row U_{j, j+1:} is 0: nothing moves
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((6, 64)).astype(np.float32)
    H = np.diag(rng.uniform(0.1, 10, 64)).astype(np.float32)
    r = gptq.gptq_quantize(W, H, bits, G, symmetric, blocksize=blocksize)
    rtn = gptq.rtn_quantize(W, bits, G, symmetric)
    assert np.array_equal(r.q, rtn.q) and np.array_equal(r.W_hat, rtn.W_hat)


@given(st.integers(0, 2**32 - 1), st.integers(2, 8), st.booleans(), st.booleans())
def test_act_order_is_a_no_op_for_a_diagonal_hessian(seed, bits, symmetric, per_row):
    # with no correlations the order of the columns cannot matter (groups fixed up front);
    # symmetric and asymmetric grids both drawn, every bit width
    rng = np.random.default_rng(seed)
    W = rng.standard_normal((5, 96)).astype(np.float32)
    H = np.diag(rng.uniform(0.1, 10, 96)).astype(np.float32)
    G = None if per_row else 32
    plain = gptq.gptq_quantize(W, H, bits, G, symmetric, static_groups=True)
    ordered = gptq.gptq_quantize(W, H, bits, G, symmetric, static_groups=True, act_order=True)
    assert ordered.perm is not None and not np.array_equal(to_numpy(ordered.perm), np.arange(96))
    assert np.array_equal(plain.q, ordered.q) and np.array_equal(plain.W_hat, ordered.W_hat)
    assert np.array_equal(plain.g_idx, ordered.g_idx)


@given(layers(dtype=np.float64), st.sampled_from([1, 5, 16]), st.booleans(), st.booleans())
def test_blocksize_does_not_change_the_codes(layer, blocksize, act_order, static_groups):
    # lazy batches reorder the same updates: exact maths gives the same codes (float64)
    kw = dict(bits=layer["bits"], group_size=layer["G"], symmetric=layer["symmetric"],
              act_order=act_order, static_groups=static_groups)
    big = gptq.gptq_quantize(layer["W"], layer["H"], blocksize=128, **kw)
    small = gptq.gptq_quantize(layer["W"], layer["H"], blocksize=blocksize, **kw)
    assert np.array_equal(big.q, small.q)
    np.testing.assert_allclose(big.W_hat, small.W_hat, rtol=1e-9, atol=1e-12)


@given(layers(dtype=np.float64), st.integers(0, 2**32 - 1))
def test_permuting_inputs_permutes_the_result(layer, seed):
    # act-order processes columns by decreasing H_jj, whatever order they arrive in:
    # the same float operations happen, so the result is permuted bit for bit
    W, H = layer["W"], layer["H"]
    p = np.random.default_rng(seed).permutation(W.shape[1])
    kw = dict(bits=layer["bits"], group_size=None, symmetric=layer["symmetric"], act_order=True)
    base = gptq.gptq_quantize(W, H, **kw)
    moved = gptq.gptq_quantize(W[:, p], H[p][:, p], **kw)
    assert np.array_equal(moved.q, base.q[:, p]) and np.array_equal(moved.W_hat, base.W_hat[:, p])


@given(layers(), st.data())
def test_dead_columns(layer, data):
    # an input that is always 0 has H_jj = 0: its weight is zeroed and it stays out of the update
    W, X = layer["W"], layer["X"].copy()
    dead = data.draw(st.lists(st.integers(0, W.shape[1] - 1), min_size=1, max_size=3, unique=True))
    X[:, dead] = 0
    h = gptq.Hessian(W.shape[1])
    h.add(X)
    assert np.all(np.diag(h.H)[dead] == 0)
    r = gptq.gptq_quantize(W, h.H, layer["bits"], layer["G"], layer["symmetric"])
    assert np.all(np.isfinite(r.W_hat)) and np.all(r.W_hat[:, dead] == 0) and np.isfinite(r.loss)


@given(layers(), st.booleans(), st.data())
def test_a_shared_factor_gives_each_layer_its_own_codes(layer, act_order, data):
    # q, k, v read one input: one prepare_hessian(H).U serves them all, bit for bit with the
    # factor each gptq_quantize would compute (dead inputs and the act-order permutation included)
    W, X = layer["W"], layer["X"].copy()
    X[:, data.draw(st.lists(st.integers(0, W.shape[1] - 1), max_size=2, unique=True))] = 0
    h = gptq.Hessian(W.shape[1])
    h.add(X)
    U = gptq.prepare_hessian(h.H, act_order).U
    kw = dict(bits=layer["bits"], group_size=layer["G"], symmetric=layer["symmetric"], act_order=act_order)
    for rows in (W, 3 * W[::-1]):  # two different layers reading the same input
        own, shared = gptq.gptq_quantize(rows, h.H, **kw), gptq.gptq_quantize(rows, h.H, U=U, **kw)
        assert np.array_equal(own.q, shared.q) and np.array_equal(own.W_hat, shared.W_hat) and own.loss == shared.loss


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_not_above_round_to_nearest(bits, seed):
    # realistic correlated data, fixed seeds: GPTQ's output error is below RTN's
    W, _, H = correlated_layer(seed, 64, 256, 1024, 1.0, np.float32)
    rtn = gptq.rtn_quantize(W, bits, 64)
    for kw in (dict(), dict(act_order=True), dict(static_groups=True), dict(act_order=True, static_groups=True)):
        r = gptq.gptq_quantize(W, H, bits, 64, **kw)
        assert gptq.layer_loss(W, r.W_hat, H) <= gptq.layer_loss(W, rtn.W_hat, H), kw


def test_codes_and_groups_reconstruct_the_weight():
    # ŵ_ij = s[i, g_idx[j]] (q_ij - z[i, g_idx[j]]), whatever the order the columns were done in
    W, _, H = correlated_layer(3, 16, 128, 512, 1.0)
    for kw in (dict(), dict(act_order=True), dict(act_order=True, static_groups=True), dict(symmetric=True)):
        r = gptq.gptq_quantize(W, H, 3, 32, **kw)
        s, z, g = r.s[:, r.g_idx], r.z[:, r.g_idx], r.g_idx
        assert r.q.min() >= 0 and r.q.max() <= 7 and g.shape == (128,)
        assert np.array_equal(s * (r.q.astype(np.float32) - z), r.W_hat), kw


def test_act_order_groups_follow_the_processing_order():
    # dynamic groups + act-order: a group is G consecutive columns *in the processing order*
    W, _, H = correlated_layer(4, 8, 64, 256, 1.0)
    r = gptq.gptq_quantize(W, H, 4, 16, act_order=True)
    perm = to_numpy(r.perm)
    assert np.array_equal(r.g_idx[perm], np.arange(64) // 16)


def test_not_positive_definite_gets_more_damping_and_a_warning():
    # eigenvalues -1 and 3: λ = 1% and 10% of mean diag (=1) are not enough, 100% makes it singular,
    # 1000% positive definite
    H = np.array([[1.0, 2.0], [2.0, 1.0]], dtype=np.float32)
    W = np.array([[0.3, -0.7]], dtype=np.float32)
    with pytest.warns(RuntimeWarning, match="not positive definite"):
        r = gptq.gptq_quantize(W, H, 4, None)
    assert np.all(np.isfinite(r.W_hat))
    with pytest.raises(ValueError, match="H: not positive definite"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            gptq.gptq_quantize(W, -np.eye(2, dtype=np.float32) * 0 + np.array([[1, 0], [0, -3]], np.float32), 4, None)


# ----------------------------------------------------------------------------- the erratum


def test_tutorial_snippet_is_much_worse_than_rounding_and_gptq_is_better():
    # the snippet's update (no division by [H⁻¹]_jj, no downdate, undamped inverse, groups
    # along rows) against plain rounding and GPTQ on the same small correlated layer
    W, _, H = correlated_layer(0, 32, 64, 256, 1.0)
    err = {name: gptq.layer_loss(W, W_hat, H) for name, W_hat in [
        ("rtn", gptq.rtn_quantize(W, 4, 32).W_hat),
        ("gptq", gptq.gptq_quantize(W, H, 4, 32).W_hat),
        ("tutorial", gptq.tutorial_update(W, H, 4, 32)),
    ]}
    assert err["gptq"] < err["rtn"] and err["tutorial"] > 10 * err["rtn"], err


# ----------------------------------------------------------------------------- bad input


def test_bad_input():
    W, X, H = correlated_layer(0, 4, 32, 64, 0.3)
    with pytest.raises(ValueError, match=r"H: expected shape \(32, 32\)"):
        gptq.gptq_quantize(W, H[:16, :16])
    with pytest.raises(ValueError, match="group_size"):
        gptq.gptq_quantize(W, H, group_size=24)
    with pytest.raises(ValueError, match="bits"):
        gptq.gptq_quantize(W, H, bits=1)
    with pytest.raises(ValueError, match="W: contains NaN"):
        gptq.gptq_quantize(np.where(W > 0, np.nan, W), H)
    with pytest.raises(ValueError, match="s, z"):
        gptq.gptq_quantize(W, H, group_size=None, s=np.ones((4, 1), np.float32))
    with pytest.raises(ValueError, match="blocksize"):
        gptq.gptq_quantize(W, H, blocksize=0)
    h = gptq.Hessian(32)
    with pytest.raises(ValueError, match="X: contains NaN"):
        h.add(np.where(X > 1, np.inf, X))
    with pytest.raises(ValueError, match=r"X: expected shape \(n, 32\)"):
        h.add(X[:, :8])
    with pytest.raises(TypeError, match="X: expected a real floating-point"):
        h.add(np.ones((3, 32), dtype=np.int32))


# ----------------------------------------------------------------------------- backends


def test_backend_parity(xp):
    # the same float64 problem on every backend: identical codes (LAPACK differences are
    # at the last bit of float64, far from any rounding boundary here), close ŵ
    W, _, H = correlated_layer(5, 8, 64, 256, 1.0, np.float64)
    ref = gptq.gptq_quantize(W, H, 4, 16, act_order=True)
    Wx, Hx = xp.asarray(W), xp.asarray(H)
    r = gptq.gptq_quantize(Wx, Hx, 4, 16, act_order=True)
    assert np.array_equal(to_numpy(r.q), ref.q) and np.array_equal(to_numpy(r.g_idx), ref.g_idx)
    np.testing.assert_allclose(to_numpy(r.W_hat), ref.W_hat, rtol=1e-10, atol=1e-12)
    h = gptq.Hessian(64, xp=xp, dtype=xp.float64)
    h.add(xp.asarray(np.ones((3, 64))))
    assert np.allclose(to_numpy(h.H), 2.0)


@pytest.mark.gpu
def test_gpu_matches_numpy():
    cupy = pytest.importorskip("cupy")
    W, _, H = correlated_layer(6, 64, 256, 1024, 1.0, np.float64)
    ref = gptq.gptq_quantize(W, H, 4, 64, act_order=True)
    r = gptq.gptq_quantize(cupy.asarray(W), cupy.asarray(H), 4, 64, act_order=True)
    assert np.array_equal(to_numpy(r.q), ref.q)
    np.testing.assert_allclose(to_numpy(r.W_hat), ref.W_hat, rtol=1e-10, atol=1e-12)
