"""AWQ: activation-aware weight quantization (scale search, folding, clip search).

Not all weights matter alike: an input channel with large activations carries more of the
output, so its weights' rounding errors cost more. AWQ protects those channels by scaling
them up before quantization and folding the inverse scale into whatever produces the
input (the preceding RMSNorm's gain, or the preceding linear's rows), so the float model
is unchanged:

    y = W x = (W diag(s)) (diag(s)⁻¹ x)        quantize  W diag(s),  fold  diag(s)⁻¹  upstream

The scale is a power of the mean activation magnitude, searched on a grid (paper §3.2):

    s_X = mean_t |x_t|  (per input channel),   s(α) = max(s_X^α, 1e-4),   s ← s / √(max s · min s)
    α* = argmin_{α ∈ {0, 1/n, ..., (n-1)/n}}  mean ‖ Y - X (Q(W diag(s)) diag(s)⁻¹)ᵀ ‖²    (n_grid = 20)

over the layers that share the input (q/k/v after the attention norm, gate/up after the
MLP norm, down after up; o after v only when v's outputs and o's inputs match one to one,
which grouped-query attention as in SmolLM2 breaks — the reference skips it then too).
α = 0 gives s = 1: plain round-to-nearest, so the search can only do as well or better.

Then a clip search per group (§3.3 in the code, not the paper): shrink each group's range
to ±(1 - i/n_grid)·max|w|, i = 0..max_shrink·n_grid - 1, keeping the one that minimises the
group's own output error  mean_t (Σ_{k∈g} x_tk (ŵ_k - w_k))²  (q and k are not clipped).

Finally every weight is quantized with AWQ's group quantizer (asymmetric, INT4/INT3, G=128):

    w_max = max(max w, 0),  w_min = min(min w, 0)        (the range widened to contain 0)
    s_g = max(w_max - w_min, 1e-5) / (2^b - 1),  z_g = clamp(-round(w_min / s_g), 0, 2^b - 1)
    q = clamp(round(w / s_g) + z_g, 0, 2^b - 1),   ŵ = s_g (q - z_g)

The widening is ours, not llm-awq's: its ``pseudo_quantize_tensor`` takes [min w, max w] as
it is and clamps z to the 4-bit codes, so the grid s(q - z) always contains 0 but spans only
max - min. A group on one side of 0 then falls off it: a constant group 0.37 has s = 1e-5/15,
z = clamp(-554 999) = 0 and decodes to 15 s = 1e-5; a group in [1, 2] decodes into [0, 1].
With the range widened the clamp never acts and |w - ŵ| <= s/2 holds for every group; on a
group that contains 0 (nearly every real group of 128 weights) nothing changes, bit for bit.

This module is layer level: arrays in, arrays out, no model. ``refquant.blockwise`` walks a
model's blocks, captures each linear's input and folds every s with ``fold_norm``/``fold_linear``.

Symbols: X (T, in) layer input, one token per row; W (out, in); s (in,) per-input-channel
scale; α exponent; G group size; b bits.

Ref: Lin, Tang, Tang, Yang, Xiao, Dang, Gan, Han, "AWQ: Activation-aware Weight
Quantization for LLM Compression and Acceleration", MLSys 2024; mit-han-lab/llm-awq
``awq/quantize/auto_scale.py`` (``get_act_scale``, ``_search_module_scale``,
``scale_ln_fcs``, ``scale_fc_fc``, ``auto_scale_block``), ``auto_clip.py``
(``auto_clip_layer``, ``apply_clip``), ``quantizer.py`` (``pseudo_quantize_tensor``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, NamedTuple

from ._backend import device, namespace
from ._checks import check_bits, check_float, check_finite, check_nonempty, check_number, check_weight_matrix
from ._rounding import round_half_even
from .gptq import range_scale
from .uniform import dequantize_codes, quantize_codes

__all__ = [
    "N_GRID", "MAX_SHRINK", "N_SAMPLE_TOKEN", "act_scale", "GroupQuantized", "awq_group_quantize", "scales_for",
    "ScaleSearch", "search_scale", "ClipSearch", "search_clip", "apply_clip", "clip_and_quantize",
    "scale_and_clip", "fold_norm", "fold_linear",
]

N_GRID = 20            # grid points for α and for the clip shrink
MAX_SHRINK = 0.5       # the clip search tries ranges down to (1 - 0.5)·max|w|
N_SAMPLE_TOKEN = 512   # tokens the clip search looks at (a strided subsample)
MIN_SCALE = 1e-4       # floor of s_X^α (auto_scale.py)
MIN_RANGE = 1e-5       # floor of max - min in the group quantizer (pseudo_quantize_tensor)


def _check_X(X: Any, n_in: int | None = None, name: str = "X") -> None:
    check_float(X, name)
    check_nonempty(X, name)
    if X.ndim != 2 or (n_in is not None and X.shape[1] != n_in):
        want = f"(T, {n_in})" if n_in is not None else "(T, in)"
        raise ValueError(f"{name}: expected shape {want}, got {tuple(X.shape)}")
    check_finite(X, name)


def _check_W(W: Any, name: str = "W") -> None:
    check_weight_matrix(W, name)


def _check_output_range(X: Any, Ws: list[Any], names: str) -> None:
    """Refuse a layer whose searched losses would overflow, before computing them.

    Every output error of the searches is a sum over the inputs of x (ŵ - w) with |ŵ - w| <=
    2 |w| (a clip, a rounding), so |error| <= b = 2 max|x| · n_in max|w|; the loss sums T
    squares of it. Require T b² <= max/4 (for float32: b up to 1e18 over 1e3 tokens — real
    activations and weights are many orders below). Else the mean is inf and the search
    would keep whatever point it started with, silently.
    """
    xp = namespace(X)
    x_absmax = float(xp.max(xp.abs(X)))
    w_absmax = max(float(xp.max(xp.abs(W))) for W in Ws)                  # (no sum: it could overflow)
    bound = 2 * x_absmax * X.shape[1] * w_absmax
    limit = math.sqrt(float(xp.finfo(X.dtype).max) / (4 * X.shape[0]))
    if not bound <= limit:
        raise ValueError(f"{names}: the layer's output errors (up to 2·max|x|·n_in·max|w| = {bound:.3g}) would overflow "
                         f"{X.dtype} when squared over {X.shape[0]} tokens (limit {limit:.3g}); the range is too large "
                         "— rescale X or W")


def _check_scale(s: Any, n: int, name: str = "s") -> None:
    """A per-channel scale that is folded (divided by): (n,), finite, positive — a zero or a
    negative one would turn the folded gain or weight into inf, or flip signs."""
    check_float(s, name)
    if tuple(s.shape) != (n,):
        raise ValueError(f"{name}: expected shape ({n},) (one scale per channel), got {tuple(s.shape)}")
    xp = namespace(s)
    if not bool(xp.all(xp.isfinite(s) & (s > 0))):
        raise ValueError(f"{name}: expected finite positive scales, got values in "
                         f"[{float(xp.min(s)):g}, {float(xp.max(s)):g}]")


# --------------------------------------------------------------------------- pieces


def act_scale(X: Any) -> Any:
    """s_X = mean_t |x_t|, the activation magnitude of each input channel.

    X: (T, in) -> (in,). Ref: auto_scale.py ``get_act_scale``.
    """
    xp = namespace(X)
    _check_X(X)
    return xp.mean(xp.abs(X), axis=0)  # (in,)


def _segments(n_in: int, group_size: int, partial: bool) -> list[tuple[int, int, int]]:
    """(lo, hi, G) column ranges cut into whole groups: [0, n_full) in groups of G, then
    the remainder as one shorter group when ``partial`` (SmolLM2's 576 = 4·128 + 64)."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size: expected a positive integer, got {group_size!r}")
    if not partial and n_in % group_size:
        raise ValueError(f"group_size: W's {n_in} input columns are not a multiple of group_size={group_size} "
                         "(pass partial_group=True for a shorter last group)")
    n_full = n_in // group_size * group_size
    segs = [(0, n_full, group_size)] if n_full else []
    return segs + ([(n_full, n_in, n_in - n_full)] if n_full < n_in else [])


class GroupQuantized(NamedTuple):
    """``awq_group_quantize``'s result: q (out, in) int32 codes, s, z (out, n_groups) scale and
    zero-point of every group, W_hat (out, in) = s (q - z)."""

    q: Any
    s: Any
    z: Any
    W_hat: Any


def awq_group_quantize(W: Any, bits: int = 4, group_size: int = 128, partial_group: bool = False) -> GroupQuantized:
    """AWQ's asymmetric group quantizer -> ``GroupQuantized`` (q, s, z, Ŵ).

        s = max(max_g w - min_g w, 1e-5) / (2^b - 1),   z = clamp(-round(min_g w / s), 0, 2^b - 1)
        q = clamp(round(w / s) + z, 0, 2^b - 1),         ŵ = s (q - z)

    W: (out, in) -> q (out, in) int32, s, z (out, n_groups), Ŵ (out, in). Bound: |w - ŵ| ≤ s/2.
    G must divide ``in`` unless partial_group=True (then the last group is the remainder).
    Example: a group [-1, 0, 2] at 2 bits: s = 3/3 = 1, z = 1, q = [0, 1, 3], ŵ = [-1, 0, 2];
    a constant group [0.5, 0.5] at 4 bits: range [0, 0.5], s = 0.5/15, z = 0, q = 15, ŵ = 15 s = 0.5.
    >>> import numpy as np
    >>> r = awq_group_quantize(np.array([[-1.0, 0.0, 2.0]]), bits=2, group_size=3)
    >>> r.q.tolist(), r.s.tolist(), r.z.tolist(), r.W_hat.tolist()
    ([[0, 1, 3]], [[1.0]], [[1.0]], [[-1.0, 0.0, 2.0]])
    >>> awq_group_quantize(np.array([[0.5, 0.5]]), bits=4, group_size=2).q.tolist()
    [[15, 15]]

    Ref: llm-awq quantizer.py ``pseudo_quantize_tensor`` (zero_point=True), with the range
    widened to contain 0 (module docstring: why).
    """
    xp = namespace(W)
    _check_W(W)
    bits = check_bits(bits)
    n_out, n_in = W.shape
    q_max = 2**bits - 1
    parts = []
    for lo, hi, G in _segments(n_in, group_size, partial_group):
        Wg = xp.reshape(W[:, lo:hi], (n_out, (hi - lo) // G, G))          # (out, n_groups, G)
        zero = xp.zeros((n_out, (hi - lo) // G, 1), dtype=W.dtype, device=device(W))
        w_max = xp.maximum(xp.max(Wg, axis=2, keepdims=True), zero)       # (out, n_groups, 1)
        w_min = xp.minimum(xp.min(Wg, axis=2, keepdims=True), zero)       # widened to contain 0
        # max(w_max - w_min, 1e-5) / q_max; the range is taken without overflow (±2e38 weights)
        s = range_scale(w_min, w_max, q_max, MIN_RANGE)
        z = xp.clip(-round_half_even(w_min / s), 0.0, float(q_max))       # in 0..q_max already
        q = quantize_codes(Wg, s, z, 0, q_max)                             # (out, n_groups, G)
        parts.append((xp.reshape(q, (n_out, hi - lo)), s[..., 0], z[..., 0],
                      xp.reshape(dequantize_codes(q, s, z), (n_out, hi - lo))))
    return GroupQuantized(*(xp.concat([p[k] for p in parts], axis=1) for k in range(4)))


def scales_for(s_X: Any, alpha: float) -> Any:
    """s(α) = max(s_X^α, 1e-4) / √(max s · min s)   — normalised so that max·min = 1.

    s_X: (in,) mean |x| >= 0, α in [0, 1] -> (in,). α = 0 gives exactly 1 everywhere (no
    scaling). (A negative s_X has no real power s_X^α; a negative α sends s_X = 0 to inf.)
    """
    xp = namespace(s_X)
    check_float(s_X, "s_X")
    check_nonempty(s_X, "s_X")
    if s_X.ndim != 1:
        raise ValueError(f"s_X: expected one activation magnitude per input channel, shape (in,), got {tuple(s_X.shape)}")
    if not bool(xp.all(xp.isfinite(s_X) & (s_X >= 0))):
        raise ValueError(f"s_X: expected finite non-negative activation magnitudes (mean |x|), got values in "
                         f"[{float(xp.min(s_X)):g}, {float(xp.max(s_X)):g}]")
    check_number(alpha, "alpha", 0, 1)
    s = xp.clip(s_X ** alpha, MIN_SCALE, None)                             # (in,)
    return s / xp.sqrt(xp.max(s) * xp.min(s))


def _scaled_quantized(W: Any, s: Any, bits: int, group_size: int, partial_group: bool) -> Any:
    """Q(W diag(s)) diag(s)⁻¹: the effective weight the unscaled input sees."""
    return awq_group_quantize(W * s[None, :], bits, group_size, partial_group).W_hat / s[None, :]


# --------------------------------------------------------------------------- scale search


@dataclasses.dataclass
class ScaleSearch:
    """Result of ``search_scale``: s (in,), the chosen α, and the loss of every grid point
    (losses[0] is α = 0, i.e. round-to-nearest)."""

    s: Any
    alpha: float
    losses: list[float]

    @property
    def loss(self) -> float:
        return min(self.losses)


def search_scale(X: Any, Ws: Iterable[Any], bits: int = 4, group_size: int = 128, n_grid: int = N_GRID,
                 partial_group: bool = False) -> ScaleSearch:
    """Grid search of α for the layers sharing input X (auto_scale.py ``_search_module_scale``).

        Y = X [W_1; ...; W_k]ᵀ,   loss(α) = mean (Y - X [Ŵ_1(α); ...]ᵀ)²,   Ŵ(α) = Q(W s(α)) / s(α)

    X: (T, in); Ws: weights (out_k, in) -> ``ScaleSearch``. The first strictly smallest
    loss wins, as in the reference.
    """
    xp = namespace(X)
    _check_X(X)
    Ws = list(Ws)
    if not Ws:
        raise ValueError("Ws: expected at least one weight sharing the input X")
    for k, W in enumerate(Ws):
        _check_W(W, f"Ws[{k}]")
        if W.shape[1] != X.shape[1]:
            raise ValueError(f"Ws[{k}]: expected {X.shape[1]} input columns to match X, got shape {tuple(W.shape)}")
    check_number(n_grid, "n_grid", 1, integer=True)
    bits = check_bits(bits)
    _segments(X.shape[1], group_size, partial_group)                     # G checked before the search
    _check_output_range(X, Ws, "X, Ws")
    W_all = xp.concat(Ws, axis=0)                                          # (Σ out, in)
    Y = X @ W_all.T                                                        # (T, Σ out)
    s_X = act_scale(X)                                                     # (in,)
    losses, best, best_s, best_alpha = [], math.inf, None, 0.0
    for i in range(n_grid):
        alpha = i / n_grid
        s = scales_for(s_X, alpha)
        W_hat = xp.concat([_scaled_quantized(W, s, bits, group_size, partial_group) for W in Ws], axis=0)
        loss = float(xp.mean((Y - X @ W_hat.T) ** 2))
        losses.append(loss)
        if loss < best:
            best, best_s, best_alpha = loss, s, alpha
    if best_s is None:
        raise ValueError(f"X, Ws: no finite loss on the α grid (losses {losses}): X Wᵀ overflows {X.dtype} "
                         "(max |X| = {:.3g}); the range is too large — rescale X".format(float(xp.max(xp.abs(X)))))
    return ScaleSearch(s=best_s, alpha=best_alpha, losses=losses)


# --------------------------------------------------------------------------- clip search


@dataclasses.dataclass
class ClipSearch:
    """Result of ``search_clip``: max_val (out, n_groups) the clip bound of each group, and
    err (out, n_groups) / err_unclipped: each group's output error with and without it."""

    max_val: Any
    err: Any
    err_unclipped: Any


def search_clip(W: Any, X: Any, bits: int = 4, group_size: int = 128, n_grid: int = N_GRID,
                max_shrink: float = MAX_SHRINK, n_sample_token: int = N_SAMPLE_TOKEN,
                partial_group: bool = False) -> ClipSearch:
    """Per-group clip range search (auto_clip.py ``auto_clip_layer``).

        for i = 0 .. max_shrink·n_grid - 1:   m = (1 - i/n_grid) · max_k |w_gk|
            err_g(m) = mean_t (Σ_{k∈g} x_tk (Q(clamp(w_g, -m, m))_k - w_gk))²
        keep, per (row, group), the m of the smallest err (i = 0: no clipping)

    W: (out, in), X: (T, in) (every ⌊T / n_sample_token⌋-th token is used) -> ``ClipSearch``.
    n_grid >= 1, 0 < max_shrink <= 1 (a larger shrink would clip to a negative bound), and
    their product must leave at least the point i = 0.
    """
    xp = namespace(W, X)
    _check_W(W)
    _check_X(X, W.shape[1])
    bits = check_bits(bits)
    check_number(n_grid, "n_grid", 1, integer=True)
    check_number(max_shrink, "max_shrink", 0, 1, lo_open=True)
    check_number(n_sample_token, "n_sample_token", 1, integer=True)
    n_points = int(max_shrink * n_grid)
    if n_points < 1:
        raise ValueError(f"n_grid, max_shrink: int(max_shrink · n_grid) = int({max_shrink:g} · {n_grid}) = 0 leaves "
                         f"no grid point; need max_shrink · n_grid >= 1 (e.g. n_grid >= {math.ceil(1 / max_shrink)})")
    n_out, n_in = W.shape
    segs = _segments(n_in, group_size, partial_group)
    Xs = X[::max(1, X.shape[0] // n_sample_token), :]                      # (T', in)
    _check_output_range(Xs, [W], "X, W")
    bounds = [(lo + k * G, lo + (k + 1) * G) for lo, hi, G in segs for k in range((hi - lo) // G)]
    w_absmax = xp.concat([xp.max(xp.abs(xp.reshape(W[:, lo:hi], (n_out, (hi - lo) // G, G))), axis=2)
                          for lo, hi, G in segs], axis=1)                  # (out, n_groups)

    def group_errors(W_try: Any) -> Any:
        D = W_try - W                                                      # (out, in)
        errs = []
        for g in range(w_absmax.shape[1]):
            lo, hi = bounds[g]
            out_g = Xs[:, lo:hi] @ D[:, lo:hi].T                           # (T', out) this group's part of y
            errs.append(xp.mean(out_g**2, axis=0))                         # (out,)
        return xp.stack(errs, axis=1)                                      # (out, n_groups)

    best_err = best_max = err0 = None
    for i in range(n_points):
        m = w_absmax * (1 - i / n_grid)                                    # (out, n_groups)
        err = group_errors(awq_group_quantize(apply_clip(W, m, group_size), bits, group_size, partial_group).W_hat)
        if best_err is None:
            best_err, best_max, err0 = err, m, err
        else:
            better = err < best_err
            best_err = xp.where(better, err, best_err)
            best_max = xp.where(better, m, best_max)
    return ClipSearch(max_val=best_max, err=best_err, err_unclipped=err0)


def apply_clip(W: Any, max_val: Any, group_size: int) -> Any:
    """clamp every group of W to ±max_val (auto_clip.py ``apply_clip``).

    W: (out, in), max_val: (out, n_groups) >= 0 -> (out, in); a shorter last group if G ∤ in.
    """
    xp = namespace(W)
    _check_W(W)
    n_out, n_in = W.shape
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size <= 0:
        raise ValueError(f"group_size: expected a positive integer, got {group_size!r}")
    n_groups = -(-n_in // group_size)
    check_float(max_val, "max_val")
    if tuple(max_val.shape) != (n_out, n_groups):
        raise ValueError(f"max_val: expected shape ({n_out}, {n_groups}) (rows, groups of {group_size}), got {tuple(max_val.shape)}")
    if not bool(xp.all(xp.isfinite(max_val) & (max_val >= 0))):
        raise ValueError("max_val: expected finite non-negative clip bounds")
    cols = xp.arange(n_in, device=device(W)) // group_size                                   # group of each column
    m = xp.take(max_val, cols, axis=1)                                     # (out, in)
    return xp.clip(W, -m, m)


def clip_and_quantize(W: Any, X: Any, bits: int = 4, group_size: int = 128, clip: bool = True, n_grid: int = N_GRID,
                      partial_group: bool = False) -> GroupQuantized:
    """AWQ's last step on one linear whose scale is already in W: clip search, then quantize.

        W' = apply_clip(W, search_clip(W, X).max_val)   (clip=False: W' = W),   -> Q(W')

    W: (out, in) the scaled weight W diag(s); X: (T, in) the input it sees, X diag(s)⁻¹
    -> ``GroupQuantized`` of W'. (llm-awq ``auto_clip_block``, ``apply_clip``, then
    ``pseudo_quantize_tensor``.)
    """
    if clip:
        W = apply_clip(W, search_clip(W, X, bits, group_size, n_grid, partial_group=partial_group).max_val, group_size)
    return awq_group_quantize(W, bits, group_size, partial_group)


def scale_and_clip(W: Any, X: Any, s: Any, bits: int = 4, group_size: int = 128, clip: bool = True,
                   n_grid: int = N_GRID, partial_group: bool = False) -> Any:
    """The effective weight of one linear after AWQ: Q(clip(W diag(s))) diag(s)⁻¹.

    W: (out, in), X: (T, in) its (unscaled) input, s: (in,) a searched scale -> Ŵ (out, in),
    what the unchanged input x is multiplied by. s = 1 gives round-to-nearest (with clipping).
    Example: s = 1, no clip: the group quantizer itself.
    >>> import numpy as np
    >>> W, X = np.array([[-1.0, 0.0, 2.0]]), np.ones((4, 3))
    >>> scale_and_clip(W, X, np.ones(3), bits=2, group_size=3, clip=False).tolist()
    [[-1.0, 0.0, 2.0]]
    """
    _check_scale(s, W.shape[1])
    W_scaled = W * s[None, :]                                              # W diag(s)
    X_seen = X / s[None, :]                                                # X diag(s)⁻¹
    return clip_and_quantize(W_scaled, X_seen, bits, group_size, clip, n_grid, partial_group).W_hat / s[None, :]


# --------------------------------------------------------------------------- folding


def fold_norm(g: Any, Ws: Iterable[Any], s: Any) -> tuple[Any, list[Any]]:
    """RMSNorm gain g ← g / s and following linears W ← W diag(s) (``scale_ln_fcs``).

    y = W (g ⊙ n(h)) = (W diag(s)) ((g / s) ⊙ n(h)): the float model is unchanged.
    g: (in,), Ws: (out_k, in), s: (in,) finite and positive -> (g', [W'_k]).
    """
    check_float(g, "g")
    if g.ndim != 1:
        raise ValueError(f"g: expected a norm gain of shape (in,), got {tuple(g.shape)}")
    _check_scale(s, g.shape[0])
    Ws = list(Ws)
    for k, W in enumerate(Ws):
        _check_W(W, f"Ws[{k}]")
        if W.shape[1] != g.shape[0]:
            raise ValueError(f"Ws[{k}]: expected {g.shape[0]} input columns to match g, got shape {tuple(W.shape)}")
    return g / s, [W * s[None, :] for W in Ws]


def fold_linear(W_prev: Any, W_next: Any, s: Any) -> tuple[Any, Any]:
    """Rows of the producing linear ÷ s, columns of the consuming linear × s (``scale_fc_fc``).

    Exact through anything elementwise-linear in W_prev's output (up in SwiGLU: silu(gate)·up).
    W_prev: (in_next, in_prev), W_next: (out, in_next), s: (in_next,) finite and positive
    -> (W_prev', W_next').
    """
    _check_W(W_prev, "W_prev")
    _check_W(W_next, "W_next")
    if W_next.shape[1] != W_prev.shape[0]:
        raise ValueError(f"W_next: expected {W_prev.shape[0]} input columns (W_prev's rows), got shape {tuple(W_next.shape)}")
    _check_scale(s, W_prev.shape[0])
    return W_prev / s[:, None], W_next * s[None, :]
