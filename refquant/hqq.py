"""HQQ: half-quadratic quantization (calibration-free), the zero-point solved by a proximal loop.

Asymmetric b-bit group quantization with the *inverse* scale σ = 1/s, as the hqq package writes it:

    σ_g = min(q_max / (max_g - min_g), 2e4),  z_g = -min_g · σ_g,   q_max = 2^b - 1
    Q(W) = clamp(round(W σ + z), 0, q_max),    Ŵ = (Q - z) / σ

HQQ keeps σ and moves z to minimise the lp error ‖W - Ŵ‖_p^p (p < 1, sparse outliers), splitting it
half-quadratically with an auxiliary error W_e (Badri & Shaji 2023, eqs. 4-6):

    W_e ← shrink_p(W - Ŵ, β) = sign(x) · relu(|x| - |x|^(p-1) / β),   x = W - Ŵ    (the lp shrinkage)
    z   ← mean_over_group(Q - (W - W_e) σ)                                      (closed-form z update)
    β   ← κ β                                                                   (torchao; see below)

repeated up to 20 times, stopping at the first iteration whose mean |W - Ŵ| (over the whole tensor,
before that iteration's z update) is not below the best so far. p = 0.7, β = 10, κ = 1.01.

W: (out, in) float -> q: (out, in/G, G) codes in 0..q_max, s = 1/σ, z: (out, in/G, 1); G = 64, axis 1.

Two conventions, both on CPU in float32:
* "hqq"     hqq 0.2.8 ``Quantizer.quantize`` with ``optimize_weights_proximal_legacy``: σ = 1 where
            |max - min| ≤ 1e-4, z not rounded, and β is *never* multiplied by κ (the legacy step has no
            ``beta *= kappa``), so κ is accepted but unused;
* "torchao" torchao 0.18 ``_choose_qparams_and_quantize_affine_hqq``: no range guard (q_max/0 = inf,
            clamped to 2e4), z rounded at the start for 4 bits, β ← κβ each iteration.

Ref: Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models" (2023);
mobiusml/hqq hqq/core/optimize.py and quantize.py; torchao quantization/quant_primitives.py.

Example: the group [0, 1, 2, 3] at 2 bits has σ = 3/3 = 1 and z = 0; its codes are exact, the error is
0 from the first iteration, which is the best one, so the loop stops at the second:

>>> r = hqq_quantize(np.float32([[0, 1, 2, 3]]), bits=2, group_size=4)
>>> r.q.ravel().tolist(), r.s.ravel().tolist(), r.z.ravel().tolist(), r.iterations
([0.0, 1.0, 2.0, 3.0], [1.0], [0.0], 2)
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._backend import namespace
from ._checks import check_float32_range, check_int, check_number, check_weight_matrix
from ._rounding import round_half_even

__all__ = ["BITS", "CONVENTIONS", "ProximalParams", "HQQQuantized", "HQQResult", "shrink_lp", "hqq_quantize",
           "hqq_dequantize", "hqq_stored_bytes", "hqq_quantize_matrix"]

BITS = (8, 4, 3, 2, 1)           # the widths hqq packs (it also lists 6, 5 and 1.58 without packing)
CONVENTIONS = ("hqq", "torchao")
GROUP_SIZE = 64                  # hqq's default group, along the input axis (axis=1)
SIGMA_MAX = 2e4                  # hqq: "clamp to avoid half-precision problems"
RANGE_EPS = 1e-4                 # hqq 0.2.8: σ = 1 where |max - min| ≤ this ("avoid small denom values")
BEST_ERROR_START = float("inf")  # hqq starts the early stop at inf (torchao at 1e4: the same for |W| < 1e4)
# hqq's packings: values per storage word and the word's bytes (hqq/core/bitpack.py: 3 bits as 10 per int32)
PACKING = {8: (1, 1), 4: (2, 1), 3: (10, 4), 2: (4, 1), 1: (8, 1)}
META_BYTES = 2 + 2               # the scale and the zero of a group, stored in float16 (compute dtype)


class ProximalParams(NamedTuple):
    """The solver's settings (hqq's ``opt_params`` defaults)."""

    lp_norm: float = 0.7
    beta: float = 10.0
    kappa: float = 1.01
    iters: int = 20
    early_stop: bool = True


class HQQQuantized(NamedTuple):
    q: Any            # (rows, in/G, G) float32 codes 0..q_max
    s: Any            # (rows, in/G, 1) float32 scale 1/σ
    z: Any            # (rows, in/G, 1) float32 zero-point (not an integer)
    bits: int
    group_size: int
    iterations: int   # solver iterations run (the last one found no improvement, unless iters ran out)


class HQQResult(NamedTuple):
    """What the report needs: the dequantized weight and the bytes hqq stores for it."""

    W_hat: Any        # (out, in) float32
    stored_bytes: int


def shrink_lp(x: Any, beta: float, p: float) -> Any:  # (...) -> (...)
    """The generalised soft-threshold of the lp norm: sign(x) · max(|x| - |x|^(p-1)/β, 0).

    For p = 1 it is the ordinary soft threshold 1/β. hqq computes (1/β)·|x|^(p-1) then subtracts; at
    x = 0 the power is inf and the result 0, taken here without the division by zero.

    >>> shrink_lp(np.float32([-2.0, 0.05, 0.0, 1.0]), beta=10.0, p=1.0).tolist()
    [-1.899999976158142, 0.0, 0.0, 0.8999999761581421]
    """
    xp = namespace(x)
    a = xp.abs(x)
    if p == 1:
        shrunk = xp.clip(a - 1.0 / beta, 0.0, None)
    else:
        nonzero = a > 0
        a_safe = xp.where(nonzero, a, xp.ones_like(a))
        shrunk = xp.where(nonzero, xp.clip(a - (1.0 / beta) * a_safe ** (p - 1), 0.0, None), xp.zeros_like(a))
    return shrunk * xp.sign(x)


def hqq_quantize(W: Any, bits: int = 4, group_size: int = GROUP_SIZE, params: ProximalParams = ProximalParams(),
                 convention: str = "hqq", optimize: bool = True) -> HQQQuantized:
    """HQQ of a matrix along its input axis: W (out, in) -> codes, scales, zero-points per group of G."""
    bits = check_int(bits, "bits", 1, 8)
    if bits not in BITS:
        raise ValueError(f"bits: HQQ packs {BITS} bits, got {bits}")
    if convention not in CONVENTIONS:
        raise ValueError(f"convention: expected one of {CONVENTIONS}, got {convention!r}")
    check_weight_matrix(W, "W")
    check_float32_range(W, "W", "HQQ")
    G = check_int(group_size, "group_size", 1)
    if W.shape[1] % G:
        raise ValueError(f"W: last dimension {W.shape[1]} is not a multiple of the group size G={G}")
    _check_params(params)
    xp = namespace(W)
    W = xp.astype(W, xp.float32)
    rows, cols = W.shape
    Wg = xp.reshape(W, (rows, cols // G, G))  # (rows, in/G, G)
    q_max = float(2**bits - 1)
    w_min = xp.min(Wg, axis=-1, keepdims=True)  # (rows, in/G, 1)
    w_max = xp.max(Wg, axis=-1, keepdims=True)
    span = w_max - w_min
    # σ = q_max · (1/span), two roundings: both libraries write ``max_v / denom`` with a Python number on
    # the left, and torch's ``__rtruediv__`` computes it as ``denom.reciprocal() * max_v`` (bit-different
    # from one division in ~1 group in 4)
    span_safe = xp.where(span > 0, span, xp.ones_like(span))
    sigma = q_max * (1.0 / span_safe)
    if convention == "hqq":
        sigma = xp.where(xp.abs(span) <= RANGE_EPS, xp.ones_like(span), sigma)
    else:
        sigma = xp.where(span > 0, sigma, xp.full_like(span, xp.inf))  # q_max/0, clamped to 2e4 below
    sigma = xp.clip(sigma, None, SIGMA_MAX)
    z = -w_min * sigma
    if convention == "torchao" and bits == 4:
        z = round_half_even(z)  # torchao's _Round (torch.round) of the initial zero for 4 bits only
    iterations = 0
    if optimize:
        z, iterations = _proximal_zero(xp, Wg, sigma, z, q_max, params, kappa_applied=convention == "torchao")
    q = xp.clip(round_half_even(Wg * sigma + z), 0.0, q_max)
    return HQQQuantized(q, 1.0 / sigma, z, bits, G, iterations)


def _proximal_zero(xp: Any, Wg: Any, sigma: Any, z: Any, q_max: float, params: ProximalParams,
                   kappa_applied: bool) -> tuple[Any, int]:
    """The legacy proximal loop of hqq / torchao (optimize.py ``optimize_weights_proximal_legacy``).

    Note the order both libraries use: the error is that of Ŵ *before* this iteration's z update, yet
    the update is kept when the loop stops, so the returned z is one step past the best Ŵ.
    """
    beta = float(params.beta)
    best_error = BEST_ERROR_START
    i = 0
    for i in range(1, int(params.iters) + 1):
        Q = xp.clip(round_half_even(Wg * sigma + z), 0.0, q_max)  # (rows, in/G, G)
        W_r = (Q - z) / sigma
        W_e = shrink_lp(Wg - W_r, beta, float(params.lp_norm))
        z = xp.mean(Q - (Wg - W_e) * sigma, axis=-1, keepdims=True)  # (rows, in/G, 1)
        if kappa_applied:
            beta *= float(params.kappa)
        error = float(xp.mean(xp.abs(Wg - W_r)))
        if params.early_stop:
            if error < best_error:
                best_error = error
            else:
                break
    return z, i


def _check_params(params: Any) -> None:
    if not isinstance(params, ProximalParams):
        raise TypeError(f"params: expected a ProximalParams, got {type(params).__name__}")
    check_number(params.lp_norm, "params.lp_norm", 0, 1, lo_open=True)
    check_number(params.beta, "params.beta", 0, lo_open=True)
    check_number(params.kappa, "params.kappa", 1, lo_open=True)
    check_int(params.iters, "params.iters", 2)


def hqq_dequantize(r: HQQQuantized) -> Any:  # -> (out, in) float32
    """Ŵ = (q - z) · s, as hqq's ``Quantizer.dequantize``.

    >>> r = hqq_quantize(np.float32([[0.0, 0.5, 1.0, 1.5]]), bits=2, group_size=4, optimize=False)
    >>> hqq_dequantize(r).tolist()
    [[0.0, 0.5, 1.0, 1.5]]
    """
    xp = namespace(r.q)
    W_hat = (r.q - r.z) * r.s  # (rows, in/G, G)
    return xp.reshape(W_hat, (W_hat.shape[0], W_hat.shape[1] * W_hat.shape[2]))


def hqq_stored_bytes(r: HQQQuantized) -> int:
    """Bytes as hqq lays them: codes packed per ``PACKING`` down the (groups, G) matrix, plus a float16
    scale and zero per group. 4-bit G=64 on (2, 256): 8 groups · 64 / 2 = 256 code bytes + 8 · 4.

    >>> hqq_stored_bytes(hqq_quantize(np.ones((2, 256), np.float32), optimize=False))
    288
    """
    n_groups = int(r.q.shape[0] * r.q.shape[1])
    per_word, word_bytes = PACKING[r.bits]
    return -(-n_groups // per_word) * r.group_size * word_bytes + n_groups * META_BYTES


def hqq_quantize_matrix(W: Any, bits: int = 4, group_size: int = GROUP_SIZE) -> HQQResult:
    """The report's entry point (HQQ-4-G64): W (out, in) float32 -> Ŵ and the bytes hqq stores for it.

    Two groups of 64 at 4 bits: hqq packs two groups' codes into one row of 64 bytes, plus 2 · 4 bytes
    of float16 scale and zero.

    >>> W = np.float32([[0, 1, 2, 3] * 32])
    >>> r = hqq_quantize_matrix(W)
    >>> float(np.abs(r.W_hat - W).max()) < 0.01, r.stored_bytes
    (True, 72)
    """
    r = hqq_quantize(W, bits, group_size)
    return HQQResult(hqq_dequantize(r), hqq_stored_bytes(r))
