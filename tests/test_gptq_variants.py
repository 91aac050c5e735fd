"""GPTQ's newer variants: act_group_aware (GAR), mse range clipping, GPTAQ's asymmetric calibration.

Each reduces to plain GPTQ bit for bit in its neutral setting, each beats round-to-nearest on the
layer's output error, and bad option values are one clear error.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from refquant import gptq
from refquant._backend import to_numpy
from test_gptq import correlated_layer, layers


def _same(a: gptq.GPTQResult, b: gptq.GPTQResult) -> bool:
    """Bit for bit: codes, Ŵ, scales, zeros, groups and the loss."""
    return (np.array_equal(a.q, b.q) and np.array_equal(a.W_hat, b.W_hat) and np.array_equal(a.s, b.s)
            and np.array_equal(a.z, b.z) and np.array_equal(a.g_idx, b.g_idx) and a.loss == b.loss)


def _kw(layer, **extra):
    return dict(bits=layer["bits"], group_size=layer["G"], symmetric=layer["symmetric"], **extra)


# ----------------------------------------------------------------------------- act_group_aware (GAR)


def test_gar_order_hand_example():
    # groups of 2: [1, 3] [5, 2] [0.5, 4] [tail 9]; scores 3, 5, 4 -> groups 1, 2, 0; the tail last
    # even though its H_jj is the largest (GPTQModel leaves the columns past the last full group)
    perm = gptq.act_group_aware_perm(np.array([1.0, 3.0, 5.0, 2.0, 0.5, 4.0, 9.0]), 2)
    assert perm.tolist() == [2, 3, 5, 4, 1, 0, 6]
    # ties keep their order, inside a group and between groups
    assert gptq.act_group_aware_perm(np.array([2.0, 2.0, 1.0, 2.0]), 2).tolist() == [0, 1, 3, 2]


@given(layers(), st.booleans())
def test_gar_with_one_group_is_act_order(layer, static_groups):
    # a single group: the local sort is the whole act-order sort and there is no group to move
    n_in = layer["W"].shape[1]
    kw = dict(bits=layer["bits"], group_size=n_in, symmetric=layer["symmetric"], static_groups=static_groups)
    gar = gptq.gptq_quantize(layer["W"], layer["H"], act_group_aware=True, **kw)
    ordered = gptq.gptq_quantize(layer["W"], layer["H"], act_order=True, **kw)
    assert _same(gar, ordered) and np.array_equal(to_numpy(gar.perm), to_numpy(ordered.perm))


@given(layers())
def test_gar_is_plain_gptq_on_its_own_order(layer):
    """GAR = plain GPTQ on the columns permuted by GAR's order: Ŵ and codes permuted bit for bit, the
    scales of the k-th group met = the plain run's k-th group, g_idx the original j // G."""
    W, H, G = layer["W"], layer["H"], layer["G"]
    gar = gptq.gptq_quantize(W, H, act_group_aware=True, **_kw(layer))
    p = to_numpy(gar.perm)
    plain = gptq.gptq_quantize(W[:, p], H[p][:, p], **_kw(layer))
    assert np.array_equal(gar.W_hat[:, p], plain.W_hat) and np.array_equal(gar.q[:, p], plain.q)
    met = p[::G] // G  # original group of each group in processing order
    assert np.array_equal(gar.s[:, met], plain.s) and np.array_equal(gar.z[:, met], plain.z)
    assert np.array_equal(gar.g_idx, np.arange(W.shape[1]) // G) and gar.loss == plain.loss
    g = gar.g_idx
    np.testing.assert_array_equal(gar.W_hat, gar.s[:, g] * (gar.q.astype(np.float32) - gar.z[:, g]))


@given(layers())
def test_gar_on_an_already_ordered_hessian_is_plain_gptq(layer):
    # permute the problem into GAR's order once: now every local sort and the group sort are
    # the identity (stable sorts), and GAR is plain GPTQ bit for bit
    W, H = layer["W"], layer["H"]
    p = to_numpy(gptq.prepare_hessian(H, percdamp=None, act_group_aware=True, group_size=layer["G"]).perm)
    W, H = W[:, p], H[p][:, p]
    gar = gptq.gptq_quantize(W, H, act_group_aware=True, **_kw(layer))
    assert np.array_equal(to_numpy(gar.perm), np.arange(W.shape[1]))
    assert _same(gar, gptq.gptq_quantize(W, H, **_kw(layer)))


@given(layers())
def test_gar_static_groups_are_the_original_groups(layer):
    # static scales come from the original W's groups of G consecutive columns; under GAR each
    # column is quantized with its own group's (not the group at its processing position)
    W, H, G = layer["W"], layer["H"], layer["G"]
    r = gptq.gptq_quantize(W, H, act_group_aware=True, static_groups=True, **_kw(layer))
    for g in range(W.shape[1] // G):
        s, z = gptq.minmax_params(W[:, g * G:(g + 1) * G], layer["bits"], layer["symmetric"])
        assert np.array_equal(r.s[:, g:g + 1], s) and np.array_equal(r.z[:, g:g + 1], z)
    q = gptq.quantize_column(r.W_hat, r.s[:, r.g_idx], r.z[:, r.g_idx], 0, 2 ** layer["bits"] - 1)[0]
    assert np.array_equal(q, r.q)  # every Ŵ sits on its own group's grid


def test_gar_partial_last_group():
    # 80 columns in groups of 32: two full groups reordered, the 16-column tail last
    W, _, H = correlated_layer(3, 8, 80, 400, 1.0)
    r = gptq.gptq_quantize(W, H, 4, 32, act_group_aware=True, partial_group=True)
    assert sorted(to_numpy(r.perm)[:64] // 32) == [0] * 32 + [1] * 32
    assert to_numpy(r.perm)[64:].tolist() == list(range(64, 80)) and r.s.shape == (8, 3)
    np.testing.assert_array_equal(r.W_hat, r.s[:, r.g_idx] * (r.q.astype(np.float32) - r.z[:, r.g_idx]))


# ----------------------------------------------------------------------------- mse


@given(layers(), st.sampled_from([2.0, 2.4, 3.0]), st.booleans())
def test_mse_with_the_factor_one_only_is_plain_gptq(layer, norm, static_groups):
    # ⌊0.01 · 100⌋ = 1 factor, f = 1: the min/max grid itself
    kw = _kw(layer, static_groups=static_groups)
    one = gptq.gptq_quantize(layer["W"], layer["H"], mse=norm, mse_grid=100, mse_maxshrink=0.01, **kw)
    assert _same(one, gptq.gptq_quantize(layer["W"], layer["H"], **kw))


@st.composite
def groups_with_outliers(draw):
    """Rows of a group: a Gaussian bulk, some rows with one outlier lane (the case clipping helps)."""
    n_out, G = draw(st.integers(1, 8)), draw(st.sampled_from([8, 32, 128]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    Wg = rng.standard_normal((n_out, G))
    lanes = draw(st.lists(st.integers(0, G - 1), min_size=n_out, max_size=n_out))
    size = draw(st.sampled_from([0.0, 3.0, 10.0]))
    Wg[np.arange(n_out), lanes] += size * np.sign(rng.standard_normal(n_out))
    return Wg, draw(st.integers(2, 8)), draw(st.booleans()), draw(st.sampled_from([1.0, 2.0, 2.4]))


@given(groups_with_outliers())
def test_mse_params_never_worse_than_min_max(case):
    Wg, bits, symmetric, norm = case
    q_max = 2**bits - 1

    def lp_error(s, z):
        return np.sum(np.abs(gptq.quantize_column(Wg, s, z, 0, q_max)[1] - Wg) ** norm, axis=1)

    s, z = gptq.mse_params(Wg, bits, symmetric, gptq.MSEGrid(norm))
    s0, z0 = gptq.minmax_params(Wg, bits, symmetric)
    assert np.all(lp_error(s, z) <= lp_error(s0, z0))
    assert np.all(s <= s0)  # a range is only ever shrunk
    if symmetric:
        assert np.array_equal(z, z0)


def test_mse_clips_an_outlier_row():
    # 4 bits, one row with a 10-sigma outlier: clipping it buys a finer step for the other 127
    Wg = np.random.default_rng(0).standard_normal((2, 128))
    Wg[0, 5] = 10.0
    s, z = gptq.mse_params(Wg, 4, False, gptq.MSEGrid(2.4))
    s0, z0 = gptq.minmax_params(Wg, 4, False)
    assert s[0, 0] < s0[0, 0]
    w_hat = gptq.quantize_column(Wg, s, z, 0, 15)[1]
    assert abs(w_hat[0, 5]) < 10.0  # the outlier is clipped


# ----------------------------------------------------------------------------- GPTAQ


def _asymmetric(seed, n_out, n_in, n_tokens, noise, dtype=np.float32):
    """(W, X_fp, X_q, acc): the float model's inputs, the quantized model's (X plus an error that
    grows with |x|, as upstream quantization error does) and their GPTAQ statistics."""
    W, X, _ = correlated_layer(seed, n_out, n_in, n_tokens, 1.0, dtype)
    rng = np.random.default_rng(seed + 1)
    X_q = (X * (1 + noise * rng.standard_normal(X.shape)) + noise * rng.standard_normal(X.shape)).astype(dtype)
    acc = gptq.AsymmetricHessian(n_in, dtype=dtype)
    acc.add(X_q, X)
    return W, X, X_q, acc


@given(layers(), st.booleans(), st.booleans(), st.sampled_from([1, 16, 128]))
def test_gptaq_with_equal_inputs_is_plain_gptq(layer, act_order, static_groups, blocksize):
    # X̃ = X: ΔXX̃ᵀ = 0 exactly, P = 0, and every GPTAQ update subtracts w·0 = 0
    X = layer["X"]
    acc = gptq.AsymmetricHessian(X.shape[1])
    acc.add(X, X)
    assert not np.any(acc.dXXt)
    h = gptq.Hessian(X.shape[1])
    h.add(X)
    assert np.array_equal(acc.H, h.H)
    kw = _kw(layer, act_order=act_order, static_groups=static_groups, blocksize=blocksize)
    gptaq = gptq.gptq_quantize(layer["W"], acc.H, dXXt=acc.dXXt, **kw)
    assert _same(gptaq, gptq.gptq_quantize(layer["W"], h.H, **kw))


def test_gptaq_alpha_zero_is_plain_gptq_on_the_quantized_inputs():
    W, _, X_q, acc = _asymmetric(1, 16, 64, 512, 0.2)
    kw = dict(bits=4, group_size=32)
    assert _same(gptq.gptq_quantize(W, acc.H, dXXt=acc.dXXt, alpha=0.0, **kw), gptq.gptq_quantize(W, acc.H, **kw))


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("bits", [3, 4])
def test_gptaq_lowers_the_asymmetric_error(seed, bits):
    """On inputs that differ (X̃ ≠ X), GPTAQ's objective ‖XWᵀ - X̃Ŵᵀ‖² is lower than plain GPTQ's
    result on X̃'s Hessian, and lower than RTN's. (At 2 bits it is not reliably lower than plain
    GPTQ's: over seeds 0-3 it is above it on two, by under 1 %; the greedy rounding's noise is
    larger than the asymmetric term there. Both stay far below RTN.)"""
    W, X, X_q, acc = _asymmetric(seed, 64, 256, 2048, 0.3)
    kw = dict(bits=bits, group_size=64)
    ours = gptq.gptq_quantize(W, acc.H, dXXt=acc.dXXt, **kw).W_hat
    plain = gptq.gptq_quantize(W, acc.H, **kw).W_hat
    rtn = gptq.rtn_quantize(W, bits, 64).W_hat
    err = {k: gptq.asymmetric_layer_loss(W, v, X_q, X) for k, v in (("gptaq", ours), ("plain", plain), ("rtn", rtn))}
    assert err["gptaq"] < err["plain"] < err["rtn"], err


def _gptaq_column_by_column(W, H, dXXt, bits, alpha, block=None, percdamp=gptq.PERCDAMP):
    """The GPTAQ update one column at a time, each update applied at once (no lazy batches; one
    min/max grid per row, no dead inputs): a slow, obvious version of the loop.

    ``block``: the reference's batching, restated per column: columns of the same block of
    ``block`` get w_j P_j, the later ones (ŵ_j as W1 holds it: w_j - e_j U_jj) P_j."""
    n_in = W.shape[1]
    U = np.linalg.cholesky(np.linalg.inv(H + percdamp * np.mean(np.diag(H)) * np.eye(n_in))).T  # H⁻¹ = UᵀU
    P = alpha * np.triu(dXXt @ U.T, 1) @ U
    W = W.copy()
    s, z = gptq.minmax_params(W, bits, False)
    W_hat = np.zeros_like(W)
    for j in range(n_in):
        w = W[:, j].copy()
        W_hat[:, j] = gptq.quantize_column(w[:, None], s, z, 0, 2**bits - 1)[1][:, 0]
        e = (w - W_hat[:, j]) / U[j, j]
        i2 = n_in if block is None else min(n_in, (j // block + 1) * block)
        W[:, j:i2] -= np.outer(e, U[j, j:i2]) - np.outer(w, P[j, j:i2])
        W[:, i2:] -= np.outer(e, U[j, i2:]) - np.outer(w - e * U[j, j], P[j, i2:])
    return W_hat


def test_gptaq_matches_the_column_by_column_update():
    # float64, a single lazy batch (blocksize = in): the same updates in the same order
    W, X, X_q, acc = _asymmetric(7, 12, 48, 400, 0.3, np.float64)
    ours = gptq.gptq_quantize(W, acc.H, 3, None, dXXt=acc.dXXt, alpha=0.5, blocksize=48)
    slow = _gptaq_column_by_column(W, acc.H, acc.dXXt, 3, 0.5)
    assert np.array_equal(ours.W_hat, slow)
    # lazy batches of 16: the reference multiplies the later blocks' P by ŵ_j, not w_j, and so
    # does refquant: the slow loop restated that way agrees (codes; Ŵ to float64 reordering) ...
    batched = gptq.gptq_quantize(W, acc.H, 3, None, dXXt=acc.dXXt, alpha=0.5, blocksize=16)
    slow_batched = _gptaq_column_by_column(W, acc.H, acc.dXXt, 3, 0.5, block=16)
    assert np.array_equal(batched.W_hat, slow_batched) or (
        np.array_equal(batched.q, gptq.quantize_column(slow_batched, batched.s, batched.z, 0, 7)[0])
        and np.allclose(batched.W_hat, slow_batched, rtol=0, atol=1e-12))
    # ... and the block size is no longer free, unlike plain GPTQ's (tests/test_gptq.py)
    assert not np.array_equal(batched.W_hat, ours.W_hat)


# ----------------------------------------------------------------------------- against RTN


@st.composite
def realistic_layers(draw):
    """Correlated layers of a realistic shape (64 inputs or more, 4x as many tokens), where GPTQ's
    greedy updates have room to work; the variant's options drawn with them."""
    G = draw(st.sampled_from([32, 64]))
    n_in = G * draw(st.integers(2, 4))
    return dict(seed=draw(st.integers(0, 2**32 - 1)), n_out=draw(st.integers(8, 32)), n_in=n_in, G=G,
                bits=draw(st.integers(2, 4)), symmetric=draw(st.booleans()),
                corr=draw(st.sampled_from([0.3, 1.0])), static_groups=draw(st.booleans()))


@settings(max_examples=30, deadline=None)
@given(realistic_layers(), st.sampled_from(["act_group_aware", "mse", "gptaq"]))
def test_every_variant_beats_round_to_nearest(c, variant):
    W, X, H = correlated_layer(c["seed"], c["n_out"], c["n_in"], 4 * c["n_in"], c["corr"])
    kw = dict(bits=c["bits"], group_size=c["G"], symmetric=c["symmetric"], static_groups=c["static_groups"])
    rtn = gptq.rtn_quantize(W, c["bits"], c["G"], c["symmetric"]).W_hat
    if variant == "gptaq":
        X_q = (X * (1 + 0.1 * np.random.default_rng(c["seed"]).standard_normal(X.shape))).astype(np.float32)
        acc = gptq.AsymmetricHessian(c["n_in"])
        acc.add(X_q, X)
        W_hat = gptq.gptq_quantize(W, acc.H, dXXt=acc.dXXt, **kw).W_hat
        assert gptq.asymmetric_layer_loss(W, W_hat, X_q, X) <= gptq.asymmetric_layer_loss(W, rtn, X_q, X)
        return
    options = dict(act_group_aware=True) if variant == "act_group_aware" else dict(mse=2.4)
    W_hat = gptq.gptq_quantize(W, H, **options, **kw).W_hat
    assert gptq.layer_loss(W, W_hat, H) <= gptq.layer_loss(W, rtn, H)


# ----------------------------------------------------------------------------- bad options


def test_bad_variant_options():
    W, X, H = correlated_layer(0, 4, 64, 128, 0.3)
    cases = [
        (dict(act_group_aware=True, act_order=True), ValueError, "act_order, act_group_aware: choose one"),
        (dict(act_group_aware=True, group_size=None), ValueError, "group_size: act_group_aware orders groups"),
        (dict(act_group_aware=1), TypeError, "act_group_aware: expected True or False"),
        (dict(mse=-1.0), ValueError, "mse"),
        (dict(mse=float("nan")), ValueError, "mse"),
        (dict(mse=2.4, mse_grid=0), ValueError, "mse_grid"),
        (dict(mse=2.4, mse_maxshrink=1.5), ValueError, "mse_maxshrink"),
        (dict(mse=2.4, mse_maxshrink=0.001), ValueError, "is 0 factors"),
        (dict(dXXt=np.zeros((8, 8), np.float32)), ValueError, r"dXXt: expected shape \(64, 64\)"),
        (dict(dXXt=np.full((64, 64), np.nan, np.float32)), ValueError, "dXXt: expected the finite"),
        (dict(dXXt=np.zeros((64, 64), np.float32), alpha=-0.5), ValueError, "alpha"),
    ]
    for options, error, message in cases:
        with pytest.raises(error, match=message):
            gptq.gptq_quantize(W, H, **{"group_size": 32, **options})
    acc = gptq.AsymmetricHessian(64)
    with pytest.raises(ValueError, match=r"X_fp: expected the shape of X_q \(128, 64\)"):
        acc.add(X, X[:10])
    with pytest.raises(ValueError, match="X_fp: contains NaN"):
        acc.add(X, np.where(X > 1, np.nan, X))


# ----------------------------------------------------------------------------- backends


def test_variants_backend_parity(xp):
    # float64 problems on every backend: identical codes, Ŵ to rounding (LAPACK's last bits)
    W, X, X_q, acc = _asymmetric(4, 8, 64, 256, 0.2, np.float64)
    for options in (dict(act_group_aware=True), dict(mse=2.4), dict(dXXt=acc.dXXt)):
        ref = gptq.gptq_quantize(W, acc.H, 4, 16, **options)
        moved = {k: xp.asarray(v) if isinstance(v, np.ndarray) else v for k, v in options.items()}
        r = gptq.gptq_quantize(xp.asarray(W), xp.asarray(acc.H), 4, 16, **moved)
        assert np.array_equal(to_numpy(r.q), ref.q), options
        np.testing.assert_allclose(to_numpy(r.W_hat), ref.W_hat, rtol=1e-10, atol=1e-12)
