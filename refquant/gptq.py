"""GPTQ: one-shot weight quantization with second-order error compensation.

A linear layer y = W x (W: (out, in)) is quantized column by column. Quantizing column j
makes an error w_j - q_j; the remaining (not yet quantized) columns absorb it so that the
layer's *output* on calibration data X moves as little as possible (Optimal Brain
Surgeon, OBS). The loss of one row w is the quadratic form

    E(ŵ) = (w - ŵ)ᵀ H (w - ŵ),        H = 2 X Xᵀ / n      (X: (in, n) calibration inputs)

and the OBS update after fixing column j to q_j is

    δ = -(w_j - q_j) / [H⁻¹]_jj · [H⁻¹]_{j,:}                        (paper eq. 2/3)

GPTQ's three tricks (Frantar et al. 2023, Algorithm 1):

1. the same column order for every row, so H⁻¹ is shared and each step is a rank-1
   update vectorized across all rows;
2. the successive H⁻¹ after removing columns 0..j-1 are read off one upper Cholesky
   factor U of H⁻¹ (H⁻¹ = Uᵀ U): row j of U, divided by U_jj, is the needed row of the
   downdated inverse, and U_jj² its diagonal entry. So the error is divided by U_jj:

       e_j = (w_j - q_j) / U_jj,      W_{:, j:} -= e_j U_{j, j:}        (Algorithm 1, l. 8-9)

3. lazy batches: inside a block of B columns the updates are applied to that block only;
   the columns right of the block get all B errors at once, W_{:, i2:} -= E U_{i1:i2, i2:}
   (Algorithm 1, l. 12), a matrix product instead of B rank-1 updates.

Options, as the reference code and its descendants have them:

* damping λ = percdamp · mean(diag H) added to diag H (default 1 %); dead inputs
  (H_jj = 0) get H_jj = 1 and their weights are set to 0 (they never see a signal);
* group quantization along the input axis (G columns share a scale/zero per row). By
  default a group's parameters are computed when the loop reaches its first column, from
  the weights *as updated so far*; ``static_groups=True`` computes them all up front from
  the original W, and ``s``/``z`` may be given (as llm-compressor's observers do);
* act-order (``desc_act``): columns in order of decreasing H_jj. The result is returned in
  the original column order with ``g_idx`` (group of every input column) and ``perm``.
  (Dead columns are sorted with H_jj = 1, as the reference does; llm-compressor sorts
  them with H_jj = 0, i.e. last.)

The newer variants (options of ``gptq_quantize``; each off by default, and each in its
neutral setting plain GPTQ bit for bit, tests/test_gptq_variants.py):

* ``act_group_aware`` — GAR, group-aware reordering (Gafni, Karnieli, Hanani, CVPRW 2025;
  GPTQModel ``quantization/gar.py``). Act-order without its cost: groups stay the original
  runs of G consecutive columns (so g_idx is trivial, j // G, and a kernel needs no
  reordering), but the loop visits them in a better order:

      inside each full group g:  columns by decreasing H_jj                    (local order)
      the groups:                by decreasing score_g = max_{j ∈ g} H_jj      (global order)
      a last, shorter group (partial_group) stays last, its columns in order   (GPTQModel's tail)

  Both sorts are stable here (GPTQModel's local sort is ``torch.sort``, unspecified on ties).
  One group (G = in) makes it act-order. The scales are found on the group as the loop meets
  it and returned in the original group order. With static_groups each column takes its own
  (original) group's scales; GPTQModel's static branch looks the group up by processing
  position when act_group_aware is on, which refquant does not copy.
* ``mse`` — range clipping by an L^p search (GPTQ reference quant.py ``find_params``;
  GPTQModel's ``mse`` option, whose value is the norm p, 2.4 in the reference): for every
  group, once its weights are known (when the loop reaches it, or up front when static),

      for i = 0 .. ⌊maxshrink · grid⌋ - 1:    f_i = 1 - i / grid
          s_i = f_i (x_max - x_min) / q_max,  z_i = round(-f_i x_min / s_i)   (symmetric: z fixed)
          err_i = Σ_j |w_j - s_i (clamp(round(w_j / s_i) + z_i) - z_i)|^p    (per row of the group)
      keep (s_i, z_i) of the first i with the least err_i            (strictly less replaces)

  f_0 = 1 is the min/max grid, so one factor (``mse_maxshrink · mse_grid = 1``) is plain GPTQ.
  (GPTQModel also tries the other neighbouring integer zero at 2 bits, asymmetric; not modelled.)
* GPTAQ / GPTQ v2 — asymmetric calibration (Y. Li et al., "GPTAQ: Efficient
  Finetuning-Free Quantization for Asymmetric Calibration", ICML 2025; GPTQModel
  ``quantization/gptaq.py``). The layer's input in the quantized model, X̃, differs from the
  float model's X; GPTAQ minimizes ‖W X - Ŵ X̃‖² instead of ‖(W - Ŵ) X̃‖²:

      H  = 2 X̃ X̃ᵀ / n,      ΔXX̃ᵀ = 2 (X - X̃) X̃ᵀ / n                 (``AsymmetricHessian``)
      P  = α · triu₁(ΔXX̃ᵀ Uᵀ) U        (strictly upper: row j, right of j; α = 1/4 by default)
      W_{:, j:i2} -= e_j U_{j, j:i2} - w_j P_{j, j:i2}                   (in-block, w_j before rounding)
      W_{:, i2:}  -= E U_{i1:i2, i2:} - W1 P_{i1:i2, i2:}                (lazy batch)

  where W1 is the block's columns at the end of the block: each has received its own update
  e_j U_jj, so it holds ŵ_j up to rounding — the reference multiplies P by that, not by the
  w_j of the in-block line (so, unlike plain GPTQ, the block size changes the result).
  X̃ = X gives ΔXX̃ᵀ = 0, P = 0: plain GPTQ.

This module is layer level: arrays in, arrays out, no model. ``refquant.blockwise`` walks a
model's blocks, builds one ``Hessian`` and one ``prepare_hessian`` per shared input and calls
``gptq_quantize`` on each linear.

Symbols: W (out, in) weights; H (in, in) Hessian; U upper Cholesky factor of H⁻¹; B block
size; G group size; b bits; q_max = 2**b - 1; s, z per (row, group) scale and zero-point.

Ref: Frantar, Ashkboos, Hoefler, Alistarh, "GPTQ: Accurate Post-Training Quantization for
Generative Pre-trained Transformers", ICLR 2023, Algorithm 1; reference code
IST-DASLab/gptq ``gptq.py`` (``GPTQ.add_batch``, ``GPTQ.fasterquant``) and ``quant.py``
(``Quantizer.find_params``, ``quantize``); llm-compressor ``modifiers/gptq/gptq_quantize.py``
(``quantize_weight``) and ``helpers.py`` (``accumulate_hessian``, ``factorize_hessian``).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, NamedTuple

from ._backend import device, namespace, to_numpy
from ._checks import check_bits, check_float, check_finite, check_number, check_weight_matrix
from ._rounding import round_half_even
from .uniform import dequantize_codes, quantize_codes

__all__ = [
    "PERCDAMP", "BLOCKSIZE", "Hessian", "GPTQResult", "hessian_factor", "minmax_params",
    "quantize_column", "PreparedHessian", "prepare_hessian", "gptq_quantize", "rtn_quantize",
    "layer_loss", "tutorial_update", "MSE_GRID", "MSE_MAXSHRINK", "GPTAQ_ALPHA", "MSEGrid", "mse_params",
    "act_group_aware_perm", "AsymmetricHessian", "asymmetric_layer_loss",
]

PERCDAMP = 0.01   # λ = 1 % of the mean diagonal of H (reference default)
BLOCKSIZE = 128   # B, columns per lazy batch (reference default)
MAX_DAMP_TRIES = 8  # each failed Cholesky multiplies the damping by 10
# H must be symmetric up to the rounding of a matrix product summed in another order:
# max |H - Hᵀ| <= √eps · max |H|  (float32: 3.5e-4, float64: 1.5e-8), far above any BLAS
# reordering and far below a matrix that is not a Hessian at all
SYMMETRY_RTOL_POWER = 0.5
MSE_GRID = 100        # GPTQ quant.py / GPTQModel Quantizer.configure: grid=100 ...
MSE_MAXSHRINK = 0.8   # ... maxshrink=0.8: factors 1.00, 0.99, ..., 0.21
GPTAQ_ALPHA = 0.25    # GPTAQ's α (fasterquant(alpha=0.25); GPTQModel GPTAQConfig.alpha)


# --------------------------------------------------------------------------- Hessian


class Hessian:
    """Streaming H = 2 X Xᵀ / n over calibration batches (GPTQ.add_batch).

        after batches X_1..X_k with n = Σ n_i rows:  H = (2/n) Σ_i X_iᵀ X_i

    Each ``add(X)`` (X: (n_i, in), one calibration vector per row) rescales the running
    H by n/(n + n_i) and adds (√(2/(n+n_i)) X)ᵀ(√(2/(n+n_i)) X), as the reference does, so
    H is always the mean over everything seen so far and never grows with n. The
    reference counts sequences, llm-compressor counts batches; we count rows (tokens). The
    count only scales H, and GPTQ's codes do not depend on H's scale (λ is relative).

    Example: add the rows of I₂ (n = 2), then (2, 0), (0, 2) three times each (n = 8):
    H = (2/8)·(I + 3·4 I) = 3.25 I (numbers whose √(2/n) are exact: 1, then 1/2):
    >>> import numpy as np
    >>> acc = Hessian(2)
    >>> acc.add(np.eye(2, dtype=np.float32)); acc.add(np.array([[2, 0], [0, 2]] * 3, np.float32))
    >>> acc.H.tolist(), acc.n
    ([[3.25, 0.0], [0.0, 3.25]], 8)
    """

    def __init__(self, n_in: int, xp: Any = None, dtype: Any = None, device: Any = None) -> None:
        if isinstance(n_in, bool) or not isinstance(n_in, int) or n_in <= 0:
            raise ValueError(f"n_in: expected a positive number of input features, got {n_in!r}")
        self.xp = xp if xp is not None else namespace()
        self.dtype = dtype if dtype is not None else self.xp.float32
        self.H = self.xp.zeros((n_in, n_in), dtype=self.dtype, device=device)  # (in, in)
        self.n = 0

    def add(self, X: Any) -> None:
        """Fold a batch X: (n_i, in) of calibration inputs into H."""
        xp = self.xp
        check_float(X, "X")
        if X.ndim != 2 or X.shape[1] != self.H.shape[0]:
            raise ValueError(f"X: expected shape (n, {self.H.shape[0]}), got {tuple(X.shape)}")
        check_finite(X, "X")
        n_i = int(X.shape[0])
        if n_i == 0:
            return
        X = xp.astype(X, self.dtype)
        # every entry (and partial sum) of H is at most 2 max|x|² plus the old H's bound: refuse
        # before the product overflows rather than hand GPTQ an inf
        x_absmax = float(xp.max(xp.abs(X)))
        if 4 * x_absmax**2 > float(xp.finfo(self.dtype).max):
            raise ValueError(f"X: the Hessian 2XᵀX/n overflows {self.H.dtype} (max |X| = {x_absmax:.3g}); "
                             "rescale X (GPTQ's codes do not depend on H's scale) or use float64")
        self.H = self.H * (self.n / (self.n + n_i))
        self.n += n_i
        Xs = math.sqrt(2 / self.n) * X      # (n_i, in)
        self.H = self.H + Xs.T @ Xs         # (in, in)


class AsymmetricHessian:
    """GPTAQ's two statistics of one linear input, streamed as ``Hessian`` streams H.

        H     = (2/n) Σ X̃ᵢᵀ X̃ᵢ                 (the quantized model's inputs X̃: what the layer will see)
        ΔXX̃ᵀ = (2/n) Σ (Xᵢ - X̃ᵢ)ᵀ X̃ᵢ           (X: the float model's inputs for the same tokens)

    ``add(X_q, X_fp)``, both (n_i, in), rows the same tokens. Rows layout: ΔXX̃ᵀ[a, b] =
    Σ_t (x_t - x̃_t)_a x̃_t,b, GPTAQ's ``dXXT`` (``(fp_inp - inp) @ inp.T`` in columns layout).
    Both are rescaled by n/(n + n_i) before each batch, as GPTAQ's ``add_batch`` does.
    Example: ``Hessian``'s batches as X̃ (H = 3.25 I); the first with X = X̃ adds nothing to
    ΔXX̃ᵀ, the second, X̃ = 2I three times, with X = 2X̃: ΔXX̃ᵀ = (2/8) · 3 · (2I)(2I) = 3I:
    >>> import numpy as np
    >>> acc = AsymmetricHessian(2)
    >>> X_q = np.array([[2, 0], [0, 2]] * 3, np.float32)
    >>> acc.add(np.eye(2, dtype=np.float32), np.eye(2, dtype=np.float32)); acc.add(X_q, 2 * X_q)
    >>> acc.H.tolist(), acc.dXXt.tolist()
    ([[3.25, 0.0], [0.0, 3.25]], [[3.0, 0.0], [0.0, 3.0]])
    """

    def __init__(self, n_in: int, xp: Any = None, dtype: Any = None, device: Any = None) -> None:
        self.hessian = Hessian(n_in, xp, dtype, device)
        self.dXXt = self.hessian.xp.zeros((n_in, n_in), dtype=self.hessian.dtype, device=device)  # (in, in)

    @property
    def H(self) -> Any:
        return self.hessian.H

    @property
    def n(self) -> int:
        return self.hessian.n

    def add(self, X_q: Any, X_fp: Any) -> None:
        """Fold a batch: X_q (n_i, in) the quantized model's inputs, X_fp (n_i, in) the float model's."""
        xp = self.hessian.xp
        check_float(X_fp, "X_fp")
        if tuple(X_fp.shape) != tuple(X_q.shape):
            raise ValueError(f"X_fp: expected the shape of X_q {tuple(X_q.shape)} (the same tokens), "
                             f"got {tuple(X_fp.shape)}")
        check_finite(X_fp, "X_fp")
        n_old = self.hessian.n
        self.hessian.add(X_q)  # checks X_q, rescales H, adds its batch
        n_i = self.hessian.n - n_old
        if n_i == 0:
            return
        self.dXXt = self.dXXt * (n_old / self.hessian.n)
        c = math.sqrt(2 / self.hessian.n)
        Xq = c * xp.astype(X_q, self.hessian.dtype)                     # (n_i, in)
        dX = c * xp.astype(X_fp, self.hessian.dtype) - Xq               # (n_i, in)
        self.dXXt = self.dXXt + dX.T @ Xq                               # (in, in)


# --------------------------------------------------------------------------- the factor U


def hessian_factor(H: Any, percdamp: float = PERCDAMP) -> Any:
    """Upper Cholesky factor U of (H + λI)⁻¹, λ = percdamp · mean(diag H).

        H + λI = L Lᵀ,   (H + λI)⁻¹ = L⁻ᵀ L⁻¹ = Uᵀ U,   U upper triangular

    H: (in, in) symmetric, dead columns already set to 1 on the diagonal -> U: (in, in).
    If a Cholesky fails (H not positive definite in floating point) the damping is
    multiplied by 10 with a ``RuntimeWarning``, up to ``MAX_DAMP_TRIES`` times; then a
    ValueError. There is no silent fall-back to round-to-nearest.
    Ref: gptq.py ``fasterquant`` (cholesky, cholesky_inverse, cholesky(upper=True));
    llm-compressor helpers.py ``factorize_hessian``.
    """
    xp = namespace(H)
    check_number(percdamp, "percdamp", 0, lo_open=True)
    n = H.shape[0]
    eye = xp.eye(n, dtype=H.dtype, device=device(H))
    mean_diag = xp.mean(xp.linalg.diagonal(H))
    for attempt in range(MAX_DAMP_TRIES):
        damp = percdamp * (10.0 ** attempt) * mean_diag
        U = _upper_factor_of_inverse(H + damp * eye)
        if U is not None:
            return U
        warnings.warn(
            f"H: not positive definite with percdamp={percdamp * 10.0 ** attempt:g}; "
            f"retrying with percdamp={percdamp * 10.0 ** (attempt + 1):g}",
            RuntimeWarning, stacklevel=2,
        )
    raise ValueError(f"H: not positive definite even with percdamp={percdamp * 10.0 ** MAX_DAMP_TRIES:g}")


def _upper_factor_of_inverse(H_damped: Any) -> Any:
    """U with (H_damped)⁻¹ = Uᵀ U, or None when a Cholesky factorization fails."""
    xp = namespace(H_damped)
    try:
        L = xp.linalg.cholesky(H_damped)                           # (in, in) lower
        L_inv = xp.linalg.solve(L, xp.eye(L.shape[0], dtype=L.dtype, device=device(L)))
        H_inv = L_inv.T @ L_inv                                   # (H + λI)⁻¹ = L⁻ᵀ L⁻¹
        H_inv = (H_inv + H_inv.T) / 2                             # exactly symmetric
        U = xp.linalg.cholesky(H_inv, upper=True)                 # (in, in) upper
    except Exception as err:  # NumPy/array-api-strict: LinAlgError; torch: _LinAlgError
        if "LinAlgError" in type(err).__name__:
            return None
        raise
    if not bool(xp.all(xp.isfinite(U))):
        return None
    return U


# --------------------------------------------------------------------------- the quantizer


def minmax_params(Wg: Any, bits: int, symmetric: bool) -> tuple[Any, Any]:
    """Scale and zero of the GPTQ reference quantizer, per row of a group Wg: (out, G).

        x_min = min(min_i w_i, 0),  x_max = max(max_i w_i, 0)
        symmetric:  x_max = max(|x_min|, x_max);  x_min = -x_max if x_min < 0
        x_min = x_max = 0  ->  x_min, x_max = -1, 1
        s = (x_max - x_min) / q_max,   z = round(-x_min / s)  (symmetric: z = (q_max + 1) / 2)

    -> s, z: (out, 1). Codes 0..q_max, ŵ = s (q - z). (An all-non-negative group keeps
    x_min = 0 in symmetric mode, as the reference does.)
    Ref: IST-DASLab/gptq quant.py ``Quantizer.find_params`` (perchannel, weight=True).
    """
    q_max = 2**bits - 1
    x_min, x_max = _minmax_range(Wg, symmetric)                       # (out, 1) each
    return _range_params(x_min, x_max, q_max, symmetric)


def _minmax_range(Wg: Any, symmetric: bool) -> tuple[Any, Any]:
    """The reference quantizer's range per row: widened to hold 0, symmetric if asked, ±1 if empty."""
    xp = namespace(Wg)
    zero = xp.zeros((Wg.shape[0], 1), dtype=Wg.dtype, device=device(Wg))
    x_min = xp.minimum(xp.min(Wg, axis=1, keepdims=True), zero)    # (out, 1)
    x_max = xp.maximum(xp.max(Wg, axis=1, keepdims=True), zero)    # (out, 1)
    if symmetric:
        x_max = xp.maximum(xp.abs(x_min), x_max)
        x_min = xp.where(x_min < 0, -x_max, x_min)
    empty = (x_min == 0) & (x_max == 0)
    x_min = xp.where(empty, -xp.ones_like(x_min), x_min)
    x_max = xp.where(empty, xp.ones_like(x_max), x_max)
    return x_min, x_max


def _range_params(x_min: Any, x_max: Any, q_max: int, symmetric: bool) -> tuple[Any, Any]:
    """s = (x_max - x_min) / q_max, z = round(-x_min / s) (symmetric: (q_max + 1) / 2)."""
    xp = namespace(x_min)
    s = range_scale(x_min, x_max, q_max)                              # (out, 1)
    if symmetric:
        z = xp.full(s.shape, (q_max + 1) / 2, dtype=s.dtype, device=device(s))
    else:
        z = round_half_even(-x_min / s)
    return s, z


class MSEGrid(NamedTuple):
    """The L^p range search of ``mse_params``: the norm p, and factors 1 - i/grid, i < ⌊maxshrink·grid⌋."""

    norm: float
    grid: int = MSE_GRID
    maxshrink: float = MSE_MAXSHRINK

    def factors(self) -> list[float]:
        return [1.0 - i / self.grid for i in range(int(self.maxshrink * self.grid))]


def mse_params(Wg: Any, bits: int, symmetric: bool, search: MSEGrid) -> tuple[Any, Any]:
    """Scale and zero per row of a group Wg: (out, G) by the shrinking-range L^p search.

        f_i = 1 - i / grid,  i = 0 .. ⌊maxshrink · grid⌋ - 1
        (s_i, z_i) = minmax params of the range (f_i x_min, f_i x_max)   (symmetric: z stays (q_max+1)/2)
        err_i = Σ_j |ŵ_j(s_i, z_i) - w_j|^p;    keep the first (s_i, z_i) of least err_i

    -> s, z: (out, 1). f_0 = 1 gives ``minmax_params`` exactly, and a later factor replaces
    it only when strictly better, so the result never has a larger L^p error than min/max.
    Ref: IST-DASLab/gptq quant.py ``Quantizer.find_params`` (mse=True, norm=2.4, grid=100,
    maxshrink=.8); GPTQModel ``quantization/quantizer.py`` (``mse`` = the norm); the same loop
    over refquant.uniform's parameters is ``uniform.range_search``.
    Example: [0, 1, 1, 1, 4] at 2 bits, p = 2. Min/max: s = 4/3, the three 1s land on 4/3,
    error 3 · (1/3)² = 0.333. The search keeps f = 0.94: s = 3.76/3 = 1.2533, the 1s cost
    3 · 0.2533² = 0.193 and the 4, clipped to 3.76, 0.24² = 0.058: 0.250 in all:
    >>> import numpy as np
    >>> s, z = mse_params(np.array([[0.0, 1.0, 1.0, 1.0, 4.0]]), 2, False, MSEGrid(2.0))
    >>> round(float(s[0, 0]) * 3 / 4, 6), float(z[0, 0]) == 0
    (0.94, True)
    """
    xp = namespace(Wg)
    q_max = 2**bits - 1
    x_min, x_max = _minmax_range(Wg, symmetric)                       # (out, 1) each
    s_best, z_best = _range_params(x_min, x_max, q_max, symmetric)
    z_fixed = z_best                                                  # the symmetric zero
    err_best = None
    for f in search.factors():
        s, z = _range_params(f * x_min, f * x_max, q_max, symmetric)
        if symmetric:
            z = z_fixed
        _, w_hat = quantize_column(Wg, s, z, 0, q_max)                  # (out, G)
        err = xp.sum(xp.abs(w_hat - Wg) ** search.norm, axis=1, keepdims=True)  # (out, 1)
        if err_best is None:
            s_best, z_best, err_best = s, z, err
            continue
        better = err < err_best
        s_best, z_best = xp.where(better, s, s_best), xp.where(better, z, z_best)
        err_best = xp.where(better, err, err_best)
    return s_best, z_best


def range_scale(x_min: Any, x_max: Any, q_max: int, min_range: float = 0.0) -> Any:
    """s = max(x_max - x_min, min_range) / q_max, also where x_max - x_min overflows the dtype.

        range <= max/4:  s = max(x_max - x_min, min_range) / q_max      (the references' formula)
        otherwise:       s = 2 · ((x_max/2 - x_min/2) / q_max)

    Halving and doubling are exact (no subnormals at these magnitudes), so the second line
    gives the bits the first gives on W/2, times 2: the power-of-two equivariance holds up to
    the float max (±2e38 weights: finite s, where the plain formula gives inf and then NaN).
    x_min <= 0 <= x_max (a range widened to contain 0) -> s of their shape. Used by GPTQ's
    ``minmax_params`` and AWQ's ``awq_group_quantize``.
    """
    xp = namespace(x_min, x_max)
    half = x_max / 2 - x_min / 2                                      # never overflows
    wide = half > xp.finfo(half.dtype).max / 8
    zero = xp.zeros_like(half)
    span = xp.where(wide, zero, x_max) - xp.where(wide, zero, x_min)  # (x_max - x_min), inf-free
    if min_range > 0:
        span = xp.clip(span, min_range, None)                         # AWQ's floor (pseudo_quantize_tensor)
    return xp.where(wide, 2 * (half / q_max), span / q_max)


def quantize_column(w: Any, s: Any, z: Any, q_min: int, q_max: int, zero_before_round: bool = False) -> tuple[Any, Any]:
    """Codes and dequantized values of one column (or any array) with scale s, zero z.

        zero_before_round=False:  q = clamp(round(w / s) + z, q_min, q_max)   (GPTQ quant.py)
        zero_before_round=True:   q = round(clamp(w / s + z, q_min, q_max))   (compressed-tensors)
        ŵ = s (q - z)

    The two orders differ only on ties (round(2.5) + 1 = 3, round(3.5) = 4) and where
    w/s + z loses low bits; llm-compressor uses the second. Returns (q, ŵ), q as floats.
    """
    xp = namespace(w)
    if zero_before_round:
        q = round_half_even(xp.clip(w / s + z, float(q_min), float(q_max)))
    else:
        q = xp.astype(quantize_codes(w, s, z, q_min, q_max), w.dtype)  # refquant.uniform
    return q, dequantize_codes(q, s, z)


# --------------------------------------------------------------------------- GPTQ


@dataclasses.dataclass
class GPTQResult:
    """What a GPTQ run returns, everything in the *original* column order.

    q: (out, in) integer codes; s, z: (out, n_groups) scale and zero of every group;
    g_idx: (in,) group of every input column (ŵ_ij = s[i, g_idx[j]] (q_ij - z[i, g_idx[j]]));
    perm: (in,) the processing order (act-order) or None; W_hat: (out, in) dequantized;
    loss: Σ_rows Σ_j e_j² / 2 as the reference reports it (e_j = (w_j - q_j)/U_jj).
    """

    q: Any
    s: Any
    z: Any
    g_idx: Any
    perm: Any
    W_hat: Any
    loss: float


def _check_W(W: Any) -> None:
    check_weight_matrix(W, "W")


def _check_layer(W: Any, H: Any) -> None:
    xp = namespace(W, H)
    _check_W(W)
    if not xp.isdtype(W.dtype, (xp.float32, xp.float64)):  # the Cholesky factor: LAPACK has no float16
        raise TypeError(f"W: GPTQ computes in W's dtype and needs float32 or float64, got {W.dtype}; cast W first")
    check_float(H, "H")
    n_in = W.shape[1]
    if tuple(H.shape) != (n_in, n_in):
        raise ValueError(f"H: expected shape ({n_in}, {n_in}) to match W's {n_in} input columns, got {tuple(H.shape)}")
    check_finite(H, "H")
    Hw = xp.astype(H, W.dtype)                                        # as the algorithm will use it
    asym, size = float(xp.max(xp.abs(Hw - Hw.T))), float(xp.max(xp.abs(Hw)))
    rtol = float(xp.finfo(W.dtype).eps) ** SYMMETRY_RTOL_POWER
    if asym > rtol * size:
        raise ValueError(f"H: expected a symmetric matrix (H = 2XXᵀ/n), got max |H - Hᵀ| = {asym:.3g} "
                         f"against max |H| = {size:.3g} (more than {rtol:.2g} of it)")


def _check_given(A: Any, name: str, shape: tuple[int, ...], what: str) -> None:
    """A given s, z or U: floating, of ``shape``, finite (``what`` says what else)."""
    check_float(A, name)
    if tuple(A.shape) != shape:
        raise ValueError(f"{name}: expected shape {shape}, got {tuple(A.shape)}")
    if not bool(namespace(A).all(namespace(A).isfinite(A))):
        raise ValueError(f"{name}: expected {what}; it contains NaN or Inf")


def _group_layout(n_in: int, group_size: int | None, partial_group: bool = False) -> tuple[int, int]:
    """(G, n_groups). G must divide the columns unless ``partial_group``: then the last group
    is the remainder, as the reference code (a group starts at every multiple of G) has it."""
    if group_size is None or (group_size == -1 and not isinstance(group_size, bool)):
        return n_in, 1
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size: expected a positive integer or None, got {group_size!r}")
    if not partial_group and n_in % group_size:
        raise ValueError(f"group_size: W's {n_in} input columns are not a multiple of group_size={group_size} "
                         "(pass partial_group=True for a shorter last group)")
    return group_size, -(-n_in // group_size)


class PreparedHessian(NamedTuple):
    """H as Algorithm 1 uses it, and its factor (``prepare_hessian``).

    H: (in, in) in W's dtype, dead inputs' diagonal set to 1, in processing order;
    dead: (in,) bool, original order; perm: (in,) processing order (act-order) or None;
    U: (in, in) upper Cholesky factor of (H + λI)⁻¹, or None when not asked for.
    """

    H: Any
    dead: Any
    perm: Any
    U: Any


def act_group_aware_perm(diag_H: Any, G: int) -> Any:
    """GAR's processing order of the columns: (in,) -> perm (in,), perm[k] = original column.

        full groups g = 0 .. ⌊in/G⌋ - 1 (columns gG .. gG+G-1):
            local_g = argsort(-diag_H[gG : gG+G])         columns by decreasing H_jj
            score_g = max(diag_H[gG : gG+G])
        order = argsort(-score)                           groups by decreasing score
        perm  = concat(gG + local_g for g in order) ++ the last in mod G columns, in order

    Both sorts stable (ties keep the original order). Ref: GPTQModel ``quantization/gar.py``
    (``compute_local_perms``, ``compute_global_perm`` with metric "max", ``compose_final_perm``,
    ``extend_perm_with_tail``).
    Example: G = 2, diag H = [1, 3, 5, 2, 0.5]: group 1 (max 5) first, its column 2 first;
    group 0 (max 3) next, column 1 first; the tail column 4 last:
    >>> import numpy as np
    >>> act_group_aware_perm(np.array([1.0, 3.0, 5.0, 2.0, 0.5]), 2).tolist()
    [2, 3, 1, 0, 4]
    """
    xp = namespace(diag_H)
    n_in = int(diag_H.shape[0])
    n_groups = n_in // G
    n_full = n_groups * G
    tail = xp.arange(n_full, n_in, device=device(diag_H))               # (in mod G,)
    if n_groups == 0:
        return tail
    D = xp.reshape(diag_H[:n_full], (n_groups, G))                      # (groups, G)
    local = xp.argsort(-D, axis=1, stable=True)                         # (groups, G)
    order = xp.argsort(-xp.max(D, axis=1), stable=True)                 # (groups,)
    base = xp.arange(n_groups, device=device(diag_H)) * G               # (groups,)
    perm = xp.take(local + base[:, None], order, axis=0)                # (groups, G)
    return xp.concat([xp.reshape(perm, (n_full,)), xp.astype(tail, perm.dtype)])  # (in,)


def prepare_hessian(H: Any, act_order: bool = False, percdamp: float | None = PERCDAMP, dtype: Any = None,
                    act_group_aware: bool = False, group_size: int | None = None) -> PreparedHessian:
    """Dead inputs, act-order permutation and factor U of H: everything GPTQ derives from H alone.

        dead_j = (H_jj = 0)  ->  H_jj = 1              (fasterquant: no signal ever reached input j)
        act-order: perm = argsort(-diag H) (stable),   H <- H[perm][:, perm]
        act_group_aware: perm = act_group_aware_perm(diag H, group_size)   (after the dead inputs)
        U = hessian_factor(H, percdamp)                (percdamp=None: U is not computed)

    H: (in, in) -> ``PreparedHessian``. None of it depends on W, so linears reading the same
    input (q, k, v; gate, up) share one: pass ``.U`` to ``gptq_quantize(..., U=)`` and the
    three layers need one Cholesky factorization instead of three, with identical codes.
    Example: H = diag(0, 2) -> dead [True, False]; act-order puts column 1 (H_11 = 2) first:
    >>> import numpy as np
    >>> p = prepare_hessian(np.diag([0.0, 2.0]), act_order=True, percdamp=None)
    >>> p.H.tolist(), p.dead.tolist(), p.perm.tolist()
    ([[2.0, 0.0], [0.0, 1.0]], [True, False], [1, 0])
    """
    xp = namespace(H)
    H = xp.astype(H, dtype if dtype is not None else H.dtype, copy=True)
    dead = xp.linalg.diagonal(H) == 0                                    # (in,)
    if bool(xp.all(dead)):
        warnings.warn("H: all zero — no calibration input reached this layer; every input is dead and GPTQ "
                      "sets the whole layer to 0 (check that the calibration data flows through it)",
                      RuntimeWarning, stacklevel=2)
    eye = xp.eye(H.shape[0], dtype=xp.bool, device=device(H))
    H = xp.where(eye & dead[None, :], xp.ones_like(H), H)
    perm = None
    if act_order and act_group_aware:
        raise ValueError("act_order, act_group_aware: choose one ordering (GPTQModel: act_group_aware needs desc_act=False)")
    if act_order:  # columns by decreasing H_jj; ties keep their order (stable sort)
        perm = xp.argsort(-xp.linalg.diagonal(H), stable=True)            # (in,)
    elif act_group_aware:
        G, _ = _group_layout(H.shape[0], group_size, partial_group=True)
        if group_size is None or group_size == -1:
            raise ValueError("group_size: act_group_aware orders groups; expected a positive group size, got "
                             f"{group_size!r}")
        perm = act_group_aware_perm(xp.linalg.diagonal(H), G)            # (in,)
    if perm is not None:
        H = xp.take(xp.take(H, perm, axis=0), perm, axis=1)
    U = hessian_factor(H, percdamp) if percdamp is not None else None
    return PreparedHessian(H=H, dead=dead, perm=perm, U=U)


@dataclasses.dataclass
class _Layer:
    """One layer set up for Algorithm 1: everything its loop reads, in processing order.

    W (out, in) weights (dead inputs 0, permuted, times 2^-shift); U (in, in); perm or None;
    group_of_pos[k]: the group of the k-th processed column; s, z (out, n_groups) when the
    groups are static (given or from the original W), else None; q_min..q_max the codes.
    """

    W: Any
    U: Any
    perm: Any
    group_of_pos: list[int]
    s: Any
    z: Any
    G: int
    q_min: int
    q_max: int
    shift: int
    w_absmax: float
    H_absmax: float
    group_order: list[int] | None = None  # act_group_aware: original group of the k-th group the loop meets
    mse: MSEGrid | None = None            # the range search of every group's parameters, or None
    P: Any = None                         # GPTAQ: (in, in) α triu₁(ΔXX̃ᵀ Uᵀ) U in processing order, or None


def _group_params(Wg: Any, bits: int, symmetric: bool, signed: bool, mse: MSEGrid | None = None) -> tuple[Any, Any]:
    """minmax_params (or mse_params) of a group, the zero moved to signed codes (compressed-tensors) if asked."""
    xp = namespace(Wg)
    if mse is None:
        s, z = minmax_params(Wg, bits, symmetric)                        # (out, 1) or per group
    else:
        s, z = mse_params(Wg, bits, symmetric, mse)                      # (out, 1)
    if signed:
        z = xp.zeros_like(z) if symmetric else z - 2 ** (bits - 1)
    return s, z


class _Variants(NamedTuple):
    """The newer options, checked (``_check_variants``)."""

    act_group_aware: bool = False
    mse: MSEGrid | None = None
    dXXt: Any = None
    alpha: float = GPTAQ_ALPHA


def _check_variants(W: Any, group_size: int | None, act_order: bool, act_group_aware: Any, mse: Any, mse_grid: Any,
                    mse_maxshrink: Any, dXXt: Any, alpha: Any) -> _Variants:
    """act_group_aware, mse (norm, grid, maxshrink), dXXt and alpha -> ``_Variants``."""
    if not isinstance(act_group_aware, bool):
        raise TypeError(f"act_group_aware: expected True or False, got {act_group_aware!r}")
    if act_group_aware and act_order:
        raise ValueError("act_order, act_group_aware: choose one ordering (GPTQModel: act_group_aware needs desc_act=False)")
    if act_group_aware and (group_size is None or group_size == -1):
        raise ValueError(f"group_size: act_group_aware orders groups; expected a positive group size, got {group_size!r}")
    search = None
    check_number(mse, "mse", 0)
    if mse > 0:
        check_number(mse_grid, "mse_grid", 1, integer=True)
        check_number(mse_maxshrink, "mse_maxshrink", 0, 1, lo_open=True)
        search = MSEGrid(float(mse), int(mse_grid), float(mse_maxshrink))
        if not search.factors():
            raise ValueError(f"mse_maxshrink, mse_grid: ⌊mse_maxshrink · mse_grid⌋ = ⌊{mse_maxshrink} · {mse_grid}⌋ "
                             "is 0 factors; expected at least one (1.0, the min/max grid)")
    check_number(alpha, "alpha", 0)
    if dXXt is not None:
        n_in = W.shape[1]
        _check_given(dXXt, "dXXt", (n_in, n_in), "the finite statistic 2(X - X̃)X̃ᵀ/n (AsymmetricHessian.dXXt)")
    return _Variants(act_group_aware, search, dXXt, float(alpha))


def _check_options(W: Any, H: Any, bits: int, group_size: int | None, blocksize: int, percdamp: float,
                   s: Any, z: Any, partial_group: bool, U: Any) -> tuple[int, int, int]:
    """Every argument of ``gptq_quantize`` checked -> (bits, G, n_groups)."""
    xp = namespace(W, H)
    _check_layer(W, H)
    bits = check_bits(bits)
    check_number(blocksize, "blocksize", 1, integer=True)
    check_number(percdamp, "percdamp", 0, lo_open=True)
    n_out, n_in = W.shape
    G, n_groups = _group_layout(n_in, group_size, partial_group)
    if (s is None) != (z is None):
        raise ValueError("s, z: give both the scales and the zero-points, or neither")
    if s is not None:
        if tuple(s.shape) != (n_out, n_groups) or tuple(z.shape) != (n_out, n_groups):
            raise ValueError(f"s, z: expected shape ({n_out}, {n_groups}) (rows, groups), got {tuple(s.shape)} and {tuple(z.shape)}")
        _check_given(s, "s", (n_out, n_groups), "finite positive scales")
        _check_given(z, "z", (n_out, n_groups), "finite zero-points")
        if not bool(xp.all(s > 0)):
            raise ValueError(f"s: expected finite positive scales, got a minimum of {float(xp.min(s)):g}")
    if U is not None:
        _check_given(U, "U", (n_in, n_in), "an upper Cholesky factor with a finite positive diagonal")
        if not bool(xp.all(xp.linalg.diagonal(U) > 0)):
            raise ValueError("U: expected an upper Cholesky factor with a finite positive diagonal (U = hessian_factor(H)), "
                             f"got a diagonal entry {float(xp.min(xp.linalg.diagonal(U))):g}")
    return bits, G, n_groups


def _set_up(W: Any, H: Any, bits: int, G: int, n_groups: int, symmetric: bool, act_order: bool, static_groups: bool,
            percdamp: float, s: Any, z: Any, signed: bool, U: Any, v: _Variants = _Variants()) -> _Layer:
    """Scale shift, dead inputs, static groups, act-order (or GAR), the factor U and GPTAQ's P
    (before the loop)."""
    xp = namespace(W, H)
    dtype = W.dtype
    # GPTQ is equivariant under W -> 2^-k W (s, ŵ and e scale by 2^-k, the loss by 4^-k, codes
    # stay), so weights too large for the squared errors e² of the loop run on W·2^-k and are
    # scaled back; ordinary weights (max |W| <= 2^(emax/4): 2^32 for float32) are untouched
    w_absmax = float(xp.max(xp.abs(W)))
    max_exp = math.frexp(float(xp.finfo(dtype).max))[1]                  # 128 (float32), 1024 (float64)
    shift = max(0, math.frexp(w_absmax)[1] - max_exp // 4)
    W = xp.asarray(W, copy=True) if shift == 0 else W * (2.0 ** -shift)
    if s is not None:  # given parameters: static groups
        s, z = xp.astype(s, dtype), xp.astype(z, dtype)
        s = s * (2.0 ** -shift) if shift else s
    prepared = prepare_hessian(H, act_order, percdamp if U is None else None, dtype, v.act_group_aware, G)
    W = xp.where(prepared.dead[None, :], xp.zeros_like(W), W)            # their weight cannot matter
    if static_groups and s is None:  # from the original weights, original column groups
        params = [_group_params(W[:, g * G:(g + 1) * G], bits, symmetric, signed, v.mse) for g in range(n_groups)]
        s = xp.concat([p[0] for p in params], axis=1)                    # (out, n_groups)
        z = xp.concat([p[1] for p in params], axis=1)                    # (out, n_groups)
    perm = prepared.perm
    if perm is not None:
        W = xp.take(W, perm, axis=1)
    # group of the k-th processed column: static groups follow the original columns, and so do
    # GAR's (its groups are the original ones, met in another order); act-order's dynamic groups
    # are runs of the processing order
    cols = xp.arange(W.shape[1], device=device(W))
    original = (xp.take(cols, perm) if perm is not None else cols) // G
    group_of_pos = [int(g) for g in to_numpy(original if s is not None or v.act_group_aware else cols // G)]
    group_order = group_of_pos[::G] if v.act_group_aware and s is None else None
    q_min, q_max = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    U = prepared.U if U is None else xp.astype(U, dtype)
    P = None
    if v.dXXt is not None:  # GPTAQ: dead inputs' columns of ΔXX̃ᵀ zeroed, permuted like H, then P
        dXXt = xp.where(prepared.dead[None, :], xp.zeros((), dtype=dtype), xp.astype(v.dXXt, dtype))
        if perm is not None:
            dXXt = xp.take(xp.take(dXXt, perm, axis=0), perm, axis=1)
        P = v.alpha * (xp.triu(dXXt @ U.T, k=1) @ U)                     # (in, in) strictly upper
    return _Layer(W=W, U=U, perm=perm, group_of_pos=group_of_pos, s=s, z=z, G=G, q_min=q_min, q_max=q_max,
                  shift=shift, w_absmax=w_absmax, H_absmax=float(xp.max(xp.abs(prepared.H))),
                  group_order=group_order, mse=v.mse, P=P)


def _algorithm1(L: _Layer, bits: int, symmetric: bool, signed: bool, blocksize: int,
                zero_before_round: bool) -> tuple[Any, Any, Any, Any, Any]:
    """The column loop with lazy batches (Algorithm 1) -> Q, Ŵ (out, in) in processing order,
    the loss of every row (out,), and s, z (out, n_groups) (found in the loop unless static)."""
    xp = namespace(L.W)
    W, U, G = L.W, L.U, L.G
    n_out, n_in = W.shape
    Q = xp.zeros_like(W)                                                  # (out, in) codes
    W_hat = xp.zeros_like(W)                                              # (out, in) dequantized
    loss = xp.zeros((n_out,), dtype=W.dtype, device=device(W))
    s_dyn, z_dyn = [], []
    s_cur = z_cur = None
    for i1 in range(0, n_in, blocksize):
        i2 = min(i1 + blocksize, n_in)
        W1 = xp.asarray(W[:, i1:i2], copy=True)                           # (out, B)
        E1 = xp.zeros_like(W1)                                            # (out, B) errors e_j
        Q1 = xp.zeros_like(W1)                                            # (out, B) codes
        Wh1 = xp.zeros_like(W1)                                           # (out, B) dequantized
        for i in range(i2 - i1):
            j = i1 + i
            if L.s is not None:
                g = L.group_of_pos[j]
                s_cur, z_cur = L.s[:, g:g + 1], L.z[:, g:g + 1]           # (out, 1)
            elif j % G == 0:  # a new group starts: parameters from its current weights
                Wg = _current_group(W, W1, E1, U, i1, i, i2, G, L.P)      # (out, G)
                s_cur, z_cur = _group_params(Wg, bits, symmetric, signed, L.mse)
                s_dyn.append(s_cur)
                z_dyn.append(z_cur)
            w = W1[:, i:i + 1]                                            # (out, 1)
            q, w_hat = quantize_column(w, s_cur, z_cur, L.q_min, L.q_max, zero_before_round)
            d = U[j, j]
            e = (w - w_hat) / d                                           # (out, 1)  Alg. 1 l. 8
            Q1[:, i:i + 1] = q                                            # block buffers: a column of
            Wh1[:, i:i + 1] = w_hat                                       # (out, B) is cheaper to write
            E1[:, i:i + 1] = e
            loss = loss + e[:, 0] ** 2 / 2
            if L.P is None:
                W1[:, i:] = W1[:, i:] - e * U[j:j + 1, j:i2]              # (out, B-i)  Alg. 1 l. 9
            else:  # GPTAQ: the asymmetric term w_j P_{j, j:i2}, w_j the column before rounding
                W1[:, i:] = W1[:, i:] - (e * U[j:j + 1, j:i2] - w * L.P[j:j + 1, j:i2])
        Q[:, i1:i2] = Q1
        W_hat[:, i1:i2] = Wh1
        if i2 < n_in:
            if L.P is None:
                W[:, i2:] = W[:, i2:] - E1 @ U[i1:i2, i2:]                # (out, in-i2) Alg. 1 l. 12
            else:  # GPTAQ: W1 now holds each column after its own update (≈ ŵ_j), as the reference has it
                W[:, i2:] = W[:, i2:] - (E1 @ U[i1:i2, i2:] - W1 @ L.P[i1:i2, i2:])
    if L.s is not None:
        return Q, W_hat, loss, L.s, L.z
    s, z = xp.concat(s_dyn, axis=1), xp.concat(z_dyn, axis=1)             # (out, n_groups) as met
    if L.group_order is not None:  # GAR met the groups out of order: back to the original order
        back = xp.argsort(xp.asarray(L.group_order, device=device(s)))
        s, z = xp.take(s, back, axis=1), xp.take(z, back, axis=1)
    return Q, W_hat, loss, s, z


def _un_permute(L: _Layer, Q: Any, W_hat: Any, loss_rows: Any, s: Any, z: Any) -> GPTQResult:
    """Back to the original column order and scale; refuse a result that overflowed."""
    xp = namespace(Q)
    g_pos = xp.asarray(L.group_of_pos, dtype=xp.int64, device=device(Q))  # group of each position
    if L.perm is not None:
        inv = xp.argsort(L.perm)
        Q, W_hat, g_pos = xp.take(Q, inv, axis=1), xp.take(W_hat, inv, axis=1), xp.take(g_pos, inv)
    loss = float(xp.sum(loss_rows))
    if L.shift:
        s, W_hat = s * (2.0 ** L.shift), W_hat * (2.0 ** L.shift)
        try:
            loss = math.ldexp(loss, 2 * L.shift)
        except OverflowError:  # float64 weights near 1e308: the loss itself is not representable
            loss = math.inf
    if not (math.isfinite(loss) and bool(xp.all(xp.isfinite(W_hat)))):
        raise ValueError(f"W, H: GPTQ's error updates overflow {Q.dtype} (max |W| = {L.w_absmax:.3g}, max |H| = "
                         f"{L.H_absmax:.3g}); the range is too large — rescale W, or H (the codes "
                         "do not depend on H's scale)")
    return GPTQResult(q=xp.astype(Q, xp.int32), s=s, z=z, g_idx=g_pos, perm=L.perm, W_hat=W_hat, loss=loss)


def gptq_quantize(
    W: Any,
    H: Any,
    bits: int = 4,
    group_size: int | None = 128,
    symmetric: bool = False,
    act_order: bool = False,
    static_groups: bool = False,
    blocksize: int = BLOCKSIZE,
    percdamp: float = PERCDAMP,
    s: Any = None,
    z: Any = None,
    signed: bool = False,
    zero_before_round: bool = False,
    partial_group: bool = False,
    U: Any = None,
    act_group_aware: bool = False,
    mse: float = 0.0,
    mse_grid: int = MSE_GRID,
    mse_maxshrink: float = MSE_MAXSHRINK,
    dXXt: Any = None,
    alpha: float = GPTAQ_ALPHA,
) -> GPTQResult:
    """GPTQ (Algorithm 1) of one linear layer: codes, scales, zeros, g_idx, ŵ and the loss.

        for each block [i1, i2) of B columns (in act-order if asked):
            for j in i1..i2-1:
                (new group starts at j) -> s, z from the current weights of the group
                q_j = quant(w_j);  e_j = (w_j - q_j) / U_jj
                W_{:, j:i2} -= e_j U_{j, j:i2}                          (in-block update)
            W_{:, i2:} -= E_{:, i1:i2} U_{i1:i2, i2:}                   (lazy batch update)

    W: (out, in) float; H: (in, in) (``Hessian``) -> ``GPTQResult``. Arithmetic is in W's
    dtype (float32 as the reference; float64 for an exact-math check).
    group_size: G columns per group (None: one group per row). static_groups: compute
    every group's s, z from the original W up front (with act-order, groups stay the
    original consecutive columns). s, z: (out, n_groups) given parameters (implies static).
    signed: codes in -2^(b-1)..2^(b-1)-1 (compressed-tensors) instead of 0..2^b-1.
    partial_group: allow G not dividing the columns (the last group is the remainder).
    U: the factor ``prepare_hessian(H, act_order, percdamp).U`` if already computed (of H in
    processing order) — q, k, v share one H, so one factor serves three.
    zero_before_round: see ``quantize_column``.
    act_group_aware: GAR ordering (``act_group_aware_perm``; needs a group size, not with act_order).
    mse: the norm p of the range search of every group's s, z (0: min/max; the reference uses
    2.4), over the factors 1 - i/mse_grid, i < ⌊mse_maxshrink · mse_grid⌋ (``mse_params``).
    dXXt: GPTAQ's 2(X - X̃)X̃ᵀ/n (``AsymmetricHessian``; H then is X̃'s), alpha its α.
    Bound: the loss is GPTQ's greedy OBS
    objective; with H diagonal GPTQ is exactly round-to-nearest.
    Steps: ``_set_up`` (scale shift, dead inputs, static groups, act-order, U), ``_algorithm1``
    (the column loop), ``_un_permute`` (original column order and scale).
    Example: H = I (no correlation): every update row U_{j, j+1:} is 0, so q = RTN codes:
    >>> import numpy as np
    >>> r = gptq_quantize(np.array([[0.0, 1.0, 2.0, 3.0]]), np.eye(4), bits=2, group_size=None)
    >>> r.q.tolist(), r.W_hat.tolist()
    ([[0, 1, 2, 3]], [[0.0, 1.0, 2.0, 3.0]])
    """
    bits, G, n_groups = _check_options(W, H, bits, group_size, blocksize, percdamp, s, z, partial_group, U)
    v = _check_variants(W, group_size, act_order, act_group_aware, mse, mse_grid, mse_maxshrink, dXXt, alpha)
    L = _set_up(W, H, bits, G, n_groups, symmetric, act_order, static_groups or s is not None, percdamp, s, z, signed, U, v)
    Q, W_hat, loss_rows, s, z = _algorithm1(L, bits, symmetric, signed, blocksize, zero_before_round)
    return _un_permute(L, Q, W_hat, loss_rows, s, z)


def _current_group(W: Any, W1: Any, E1: Any, U: Any, i1: int, i: int, i2: int, G: int, P: Any = None) -> Any:
    """The group starting at column i1+i as Algorithm 1 sees it: every earlier update applied.

    Inside the block the weights are current (W1). Columns right of the block have not
    yet received this block's errors E1[:, :i] (lazy batch), so add them here:
        W_{:, i2:end} - E1_{:, :i} U_{i1:i1+i, i2:end}
    (The reference takes W[:, j:j+G] for the whole group, i.e. it misses the in-block
    updates when a group starts mid-block; with G a multiple of B both agree.) With GPTAQ's P
    the lazy term is E1_{:, :i} U_{..} - W1_{:, :i} P_{..} (W1's first i columns are final).
    """
    xp = namespace(W)
    j, end = i1 + i, min(i1 + i + G, W.shape[1])
    inside = W1[:, i:min(end, i2) - i1]                                    # (out, ≤G)
    if end <= i2:
        return inside
    right = W[:, i2:end]
    if i > 0 and P is None:
        right = right - E1[:, :i] @ U[i1:j, i2:end]
    elif i > 0:
        right = right - (E1[:, :i] @ U[i1:j, i2:end] - W1[:, :i] @ P[i1:j, i2:end])
    return xp.concat([inside, right], axis=1)                              # (out, G)


# --------------------------------------------------------------------------- baselines


def rtn_quantize(W: Any, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                 partial_group: bool = False) -> GPTQResult:
    """Round-to-nearest with the same group quantizer: GPTQ without error feedback.

    W: (out, in) -> GPTQResult (loss is 0.0: RTN does not measure one; use ``layer_loss``).
    """
    xp = namespace(W)
    _check_W(W)
    bits = check_bits(bits)
    n_out, n_in = W.shape
    G, n_groups = _group_layout(n_in, group_size, partial_group)
    s, z, q, W_hat = [], [], [], []
    for g in range(n_groups):
        Wg = W[:, g * G:(g + 1) * G]                                       # (out, ≤G)
        s_g, z_g = minmax_params(Wg, bits, symmetric)                      # (out, 1)
        q_g, w_g = quantize_column(Wg, s_g, z_g, 0, 2**bits - 1)
        s, z, q, W_hat = s + [s_g], z + [z_g], q + [q_g], W_hat + [w_g]
    return GPTQResult(q=xp.astype(xp.concat(q, axis=1), xp.int32), s=xp.concat(s, axis=1), z=xp.concat(z, axis=1),
                      g_idx=xp.arange(n_in, device=device(W)) // G, perm=None, W_hat=xp.concat(W_hat, axis=1), loss=0.0)


def layer_loss(W: Any, W_hat: Any, H: Any) -> float:
    """Output error of the layer on the calibration data: tr((W - Ŵ) H (W - Ŵ)ᵀ).

    With H = 2XXᵀ/n this is (2/n) ‖(W - Ŵ) X‖²_F. W, W_hat: (out, in), H: (in, in).
    """
    xp = namespace(W, W_hat, H)
    D = W - W_hat                                                          # (out, in)
    return float(xp.sum((D @ H) * D))


def asymmetric_layer_loss(W: Any, W_hat: Any, X_q: Any, X_fp: Any) -> float:
    """GPTAQ's objective: ‖X W ᵀ - X̃ Ŵᵀ‖²_F · 2/n, the float layer on the float input against
    the quantized layer on the quantized input. X_q, X_fp: (n, in); W, W_hat: (out, in)."""
    xp = namespace(W, W_hat, X_q, X_fp)
    D = X_fp @ W.T - X_q @ W_hat.T                                         # (n, out)
    return float(2 * xp.sum(D * D) / X_q.shape[0])


def tutorial_update(W: Any, H: Any, bits: int = 4, group_size: int = 128) -> Any:
    """The erratum: the GPTQ snippet as a popular tutorial writes it. Do not use.

        H_inv = (H + 1e-6 I)⁻¹                     (no damping relative to H, no Cholesky)
        for j: q_j = RTN(w_j);  W_{:, j+1:} -= (w_j - q_j) H_inv_{j, j+1:}
                                        (error not divided by [H⁻¹]_jj, H⁻¹ never downdated)
        groups of G consecutive *rows* share a scale          (the wrong axis)

    W: (out, in), H: (in, in) -> Ŵ: (out, in). Kept to show, next to ``gptq_quantize``,
    what each of those mistakes costs (tests/test_gptq.py, notebooks/05_gptq.ipynb).
    """
    xp = namespace(W, H)
    n_out, n_in = W.shape
    H_inv = xp.linalg.inv(H + 1e-6 * xp.eye(n_in, dtype=W.dtype, device=device(W)))         # (in, in)
    W = xp.asarray(W, copy=True)
    G = min(group_size, n_out)
    Q = xp.zeros_like(W)
    for j in range(n_in):
        w = W[:, j]                                                        # (out,)
        q_cols = []
        for r in range(0, n_out, G):  # groups along the output axis
            wg = w[r:r + G]
            s, z = minmax_params(xp.reshape(wg, (1, -1)), bits, False)
            q_cols.append(quantize_column(wg, s[0, 0], z[0, 0], 0, 2**bits - 1)[1])
        q = xp.concat(q_cols)
        Q[:, j] = q
        if j + 1 < n_in:
            W[:, j + 1:] = W[:, j + 1:] - (w - q)[:, None] * H_inv[j:j + 1, j + 1:]
    return Q
