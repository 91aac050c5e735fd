"""Hardening of GPTQ and AWQ: every input class has one policy, and one test holds it.

| class            | inputs                                                        | policy                                   |
|------------------|---------------------------------------------------------------|------------------------------------------|
| bad argument     | percdamp inf/NaN/0; H not symmetric; G not dividing the       | ValueError/TypeError; the message starts |
|                  | columns or G <= 0; float16 W; given s with a 0, z with NaN;   | with the argument's name and states what |
|                  | U with a 0 diagonal; X whose Hessian overflows; AWQ n_grid 0  | was expected                             |
|                  | or 1, max_shrink <= 0 or > 1, n_sample_token 0; a 0 or        |                                          |
|                  | negative folding scale; negative s_X; α outside [0, 1];       |                                          |
|                  | max_val of the wrong shape; X, W whose searched output errors |                                          |
|                  | overflow when squared; model drivers with bad blocks,         |                                          |
|                  | window, group_size, n_grid, percdamp                          |                                          |
| no calibration   | an all-zero Hessian (no token reached the layer)              | RuntimeWarning "no calibration input     |
|                  |                                                               | reached this layer"; the layer is 0, as  |
|                  |                                                               | for any dead input                       |
| extreme range    | GPTQ, RTN and AWQ's quantizer on weights of ±2e38             | finite, and equal to 2^k × the result on |
|                  |                                                               | W·2^-k (power-of-two equivariance)       |
| one-signed group | AWQ on constant groups (0.37, -2.5, ...) and groups entirely  | bit-identical to round-to-nearest with   |
|                  | on one side of 0                                              | the range widened to contain 0           |
|                  |                                                               | (``refquant.uniform``): |w - ŵ| <= s/2    |

Each test below failed on the code before the hardening (bad argument: a None result,
inf/NaN, or a message blaming H or garbled; no calibration: no warning; extreme range:
NaN; one-signed group: 0.37 decoded to 1e-5) and passes after it.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from refquant import awq, blockwise, gptq, uniform
from test_awq import tiny_model

RNG = np.random.default_rng(0)
W8 = RNG.standard_normal((4, 32)).astype(np.float32)                    # (out, in)
X8 = RNG.standard_normal((16, 32)).astype(np.float32)                   # (T, in)
H8 = gptq.Hessian(32)
H8.add(X8)
H = H8.H                                                                 # (in, in)
ASYM = H + np.triu(np.ones_like(H), 1)                                   # upper triangle moved by 1
S_X = awq.act_scale(X8)                                                  # (in,)
MODEL = tiny_model(0, n_layer=2)
TOKENS = np.arange(64) % 97

BAD_ARGUMENTS = {
    "percdamp=inf": (lambda: gptq.gptq_quantize(W8, H, percdamp=float("inf")), ValueError, r"^percdamp: expected a finite"),
    "percdamp=nan": (lambda: gptq.gptq_quantize(W8, H, percdamp=float("nan")), ValueError, r"^percdamp: expected a finite"),
    "percdamp=0": (lambda: gptq.gptq_quantize(W8, H, percdamp=0.0), ValueError, r"^percdamp: expected a finite number > 0"),
    "H not symmetric": (lambda: gptq.gptq_quantize(W8, ASYM), ValueError, r"^H: expected a symmetric matrix"),
    "group_size 24 on 32": (lambda: gptq.gptq_quantize(W8, H, group_size=24), ValueError,
                            r"^group_size: W's 32 input columns are not a multiple of group_size=24 \(pass partial_group=True"),
    "group_size 0": (lambda: gptq.gptq_quantize(W8, H, group_size=0), ValueError, r"^group_size: expected a positive integer or None, got 0"),
    "awq group_size 24": (lambda: awq.awq_group_quantize(W8, 4, 24), ValueError,
                          r"^group_size: W's 32 input columns are not a multiple of group_size=24"),
    "float16 W": (lambda: gptq.gptq_quantize(W8.astype(np.float16), H.astype(np.float16), group_size=None), TypeError,
                  r"^W: GPTQ computes in W's dtype and needs float32 or float64, got float16"),
    "s with a zero": (lambda: gptq.gptq_quantize(W8, H, group_size=None, s=np.zeros((4, 1), np.float32),
                                                 z=np.zeros((4, 1), np.float32)), ValueError, r"^s: expected finite positive scales"),
    "z with NaN": (lambda: gptq.gptq_quantize(W8, H, group_size=None, s=np.ones((4, 1), np.float32),
                                              z=np.full((4, 1), np.nan, np.float32)), ValueError, r"^z: expected finite zero-points"),
    "U with a zero diagonal": (lambda: gptq.gptq_quantize(W8, H, group_size=None, U=np.zeros((32, 32), np.float32)), ValueError,
                               r"^U: expected an upper Cholesky factor with a finite positive diagonal"),
    "Hessian overflows": (lambda: gptq.Hessian(32).add(X8 * np.float32(1e30)), ValueError, r"^X: the Hessian 2XᵀX/n overflows float32"),
    "clip n_grid=0": (lambda: awq.search_clip(W8, X8, 4, 32, n_grid=0), ValueError, r"^n_grid: expected an integer >= 1, got 0"),
    "clip n_grid=1": (lambda: awq.search_clip(W8, X8, 4, 32, n_grid=1), ValueError, r"^n_grid, max_shrink: .* no grid point"),
    "clip max_shrink=0": (lambda: awq.search_clip(W8, X8, 4, 32, max_shrink=0.0), ValueError, r"^max_shrink: expected a finite number in \(0, 1\]"),
    "clip max_shrink=-1": (lambda: awq.search_clip(W8, X8, 4, 32, max_shrink=-1.0), ValueError, r"^max_shrink: expected a finite"),
    "clip max_shrink=2": (lambda: awq.search_clip(W8, X8, 4, 32, max_shrink=2.0), ValueError, r"^max_shrink: expected a finite"),
    "clip n_sample_token=0": (lambda: awq.search_clip(W8, X8, 4, 32, n_sample_token=0), ValueError, r"^n_sample_token: expected an integer >= 1"),
    "clip bits=9": (lambda: awq.search_clip(W8, X8, 9, 32), ValueError, r"^bits: expected an integer in 2..8"),
    "fold_norm zero scale": (lambda: awq.fold_norm(np.ones(32, np.float32), [W8], np.zeros(32, np.float32)), ValueError,
                             r"^s: expected finite positive scales"),
    "fold_norm negative scale": (lambda: awq.fold_norm(np.ones(32, np.float32), [W8], -S_X), ValueError, r"^s: expected finite positive"),
    "fold_norm wrong shape": (lambda: awq.fold_norm(np.ones(32, np.float32), [W8], S_X[:16]), ValueError, r"^s: expected shape \(32,\)"),
    "fold_linear zero scale": (lambda: awq.fold_linear(W8.T, W8, np.zeros(32, np.float32)), ValueError, r"^s: expected finite positive"),
    "scales_for negative s_X": (lambda: awq.scales_for(-S_X, 0.5), ValueError, r"^s_X: expected finite non-negative"),
    "scales_for alpha=-0.5": (lambda: awq.scales_for(S_X, -0.5), ValueError, r"^alpha: expected a finite number in \[0, 1\]"),
    "scales_for alpha=nan": (lambda: awq.scales_for(S_X, float("nan")), ValueError, r"^alpha: expected a finite number"),
    "apply_clip max_val shape": (lambda: awq.apply_clip(W8, np.ones((4, 3), np.float32), 16), ValueError,
                                 r"^max_val: expected shape \(4, 2\)"),
    "search_scale X overflows": (lambda: awq.search_scale(X8 * np.float32(1e30), [W8], 4, 32), ValueError,
                                 r"^X, Ws: the layer's output errors .* would overflow float32"),
    "search_clip W overflows": (lambda: awq.search_clip(W8 * np.float32(1e37), X8, 4, 32), ValueError,
                                r"^X, W: the layer's output errors .* would overflow float32"),
    "search_scale n_grid=0": (lambda: awq.search_scale(X8, [W8], 4, 32, n_grid=0), ValueError, r"^n_grid: expected an integer >= 1"),
    "gptq model blocks=[7]": (lambda: blockwise.gptq_quantize_model(MODEL, TOKENS, blocks=[7]), ValueError,
                              r"^blocks: expected an integer in \[0, 1\], got 7"),
    "gptq model window=0": (lambda: blockwise.gptq_quantize_model(MODEL, TOKENS, window=0), ValueError, r"^window: expected an integer >= 1"),
    "gptq model percdamp=-1": (lambda: blockwise.gptq_quantize_model(MODEL, TOKENS, percdamp=-1.0), ValueError, r"^percdamp: expected"),
    "gptq model group_size=0": (lambda: blockwise.gptq_quantize_model(MODEL, TOKENS, group_size=0), ValueError, r"^group_size: expected"),
    "awq model blocks=[-1]": (lambda: blockwise.awq_quantize_model(MODEL, TOKENS, blocks=[-1]), ValueError,
                              r"^blocks: expected an integer in \[0, 1\], got -1"),
    "awq model window=0": (lambda: blockwise.awq_quantize_model(MODEL, TOKENS, window=0), ValueError, r"^window: expected an integer >= 1"),
    "awq model n_grid=0": (lambda: blockwise.awq_quantize_model(MODEL, TOKENS, n_grid=0), ValueError, r"^n_grid: expected an integer >= 1"),
    "awq model group_size=0": (lambda: blockwise.awq_quantize_model(MODEL, TOKENS, group_size=0), ValueError, r"^group_size: expected"),
}


@pytest.mark.parametrize("case", BAD_ARGUMENTS, ids=list(BAD_ARGUMENTS))
def test_bad_argument_gets_one_clear_error(case):
    call, exc, match = BAD_ARGUMENTS[case]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning (overflow, invalid value) on the way to the error
        with pytest.raises(exc, match=match):
            call()


@pytest.mark.parametrize("kw", [dict(), dict(act_order=True), dict(static_groups=True), dict(group_size=None)])
def test_no_calibration_warns(kw):
    # an all-zero H: every input is dead, so GPTQ zeroes the whole layer — say so
    kw = dict(group_size=16) | kw
    with pytest.warns(RuntimeWarning, match="no calibration input reached this layer"):
        r = gptq.gptq_quantize(W8, np.zeros((32, 32), np.float32), **kw)
    assert np.all(r.W_hat == 0) and r.loss == 0.0


K = 100  # 2^-100 brings ±2e38 to ±1.6e8: an ordinary range for float32, and every scaling exact
BIG = np.where(RNG.standard_normal((6, 64)) > 0, 2e38, -2e38).astype(np.float32)  # (out, in)
BIG[1, :32] = 2e38                                                   # a one-signed group
BIG[2] *= RNG.uniform(0.5, 1, 64).astype(np.float32)                 # distinct magnitudes
X64 = RNG.standard_normal((256, 64)).astype(np.float32) @ (np.eye(64) + RNG.standard_normal((64, 64)) / 8).astype(np.float32)
H64 = gptq.Hessian(64)
H64.add(X64)                                                         # a correlated (64, 64) Hessian


def _gptq(W, **kw):
    r = gptq.gptq_quantize(W, H64.H, 4, 32, **kw)
    return r.q, r.s, r.W_hat


EXTREME = {
    "gptq": lambda W: _gptq(W),
    "gptq act-order symmetric": lambda W: _gptq(W, act_order=True, symmetric=True),
    "gptq static groups": lambda W: _gptq(W, static_groups=True, blocksize=7),
    "rtn": lambda W: (lambda r: (r.q, r.s, r.W_hat))(gptq.rtn_quantize(W, 4, 32)),
    "awq quantizer": lambda W: (lambda r: (r.q, r.s, r.W_hat))(awq.awq_group_quantize(W, 4, 32)),
}


@pytest.mark.parametrize("method", EXTREME, ids=list(EXTREME))
def test_extreme_range_is_finite_and_equivariant(method):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no overflow on the way
        q, s, W_hat = EXTREME[method](BIG)
        q_ref, s_ref, W_hat_ref = EXTREME[method](np.ldexp(BIG, -K))
    assert np.all(np.isfinite(W_hat)) and np.all(np.isfinite(s))
    assert np.array_equal(q, q_ref)
    assert np.array_equal(W_hat, np.ldexp(W_hat_ref, K)) and np.array_equal(s, np.ldexp(s_ref, K))


def _ramp(lo, hi):
    return np.linspace(lo, hi, 32, dtype=np.float32)


ONE_SIGNED = {
    "constant 0.37": np.full(32, 0.37, np.float32),
    "constant -2.5": np.full(32, -2.5, np.float32),
    "constant 1e-3": np.full(32, 1e-3, np.float32),
    "constant -7x2^20": np.full(32, -7 * 2.0**20, np.float32),
    "ramp 1..2": _ramp(1, 2),
    "ramp -3..-2.9": _ramp(-3, -2.9),
    "zero and positives": np.concatenate([np.zeros(16, np.float32), _ramp(0.5, 4)[:16]]),
}


@pytest.mark.parametrize("group", ONE_SIGNED, ids=list(ONE_SIGNED))
@pytest.mark.parametrize("bits", [3, 4])
def test_one_signed_group_equals_round_to_nearest(group, bits):
    # row 0 the group, row 1 an ordinary mixed-sign group (unchanged by the fix), two groups of 32
    W = np.stack([np.tile(ONE_SIGNED[group], 2), np.tile(np.linspace(-1, 1, 32, dtype=np.float32), 2)])
    _, s, _, W_hat = awq.awq_group_quantize(W, bits, 32)
    rtn = uniform.fake_quantize(W, bits, symmetric=False, granularity="group", group_size=32, signed=False)
    assert np.array_equal(W_hat, rtn)
    # |w - ŵ| <= s/2, plus the float32 roundings of s, of s·(q - z) and of w/s (≤ |w|·2^-24 each)
    assert np.all(np.abs(W - W_hat) <= np.repeat(s, 32, axis=1) / 2 + np.abs(W) * 2.0**-22)
    # the α search on it: α = 0 is RTN, and no α does worse
    X = RNG.standard_normal((64, 64)).astype(np.float32)
    found = awq.search_scale(X, [W], bits, 32)
    rtn_loss = float(np.mean((X @ W.T - X @ rtn.T) ** 2))
    assert found.losses[0] == rtn_loss and min(found.losses) <= rtn_loss
    if group.startswith("constant"):  # RTN is exact here: any clipping would only add error
        clip = awq.search_clip(W, X, bits, 32)
        assert np.array_equal(clip.max_val[0], np.abs(W[0, ::32]))
