"""Calibration capture: statistics of every linear layer's inputs, block by block.

GPTQ needs, per linear layer, the Hessian of the layer-wise squared error; AWQ needs the
mean magnitude of each input channel. Both are sums over the calibration rows x (the
layer's inputs, one row per token), so they are accumulated as the rows stream by:

    n        = number of rows seen
    xtx      = Σ xᵀx                  (in, in)     H_GPTQ = 2 xtx / n   (Frantar et al. 2022, eq. 1)
    abs_sum  = Σ |x|                  (in,)        s_AWQ  = abs_sum / n (Lin et al. 2023, §3.2)

Block by block (the sequential scheme of the GPTQ reference, ``llama_sequential``):

    h_w = embed(window_w) for every calibration window w              (n_windows, T, d)
    for block i = 0 .. n_layer−1:
        run block i on every h_w, adding each linear's inputs into its statistics
        on_block(i, stats_i, h)  -> {name: new weight} or None        e.g. quantize block i
        h_w = block_i(h_w) with the new weights (propagate="quantized") or the original
              ones (propagate="original")

so block i sees the outputs of the already-quantized blocks 0..i−1 when asked to. Only
the current block's activations are held (n_windows × T × d floats), never all of them;
q, k and v share one statistics object (same input), as do gate and up.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

from .._backend import namespace
from .loader import LINEAR_NAMES

__all__ = ["LinearStats", "CalibrationResult", "calibrate", "embedded_windows", "SHARED_INPUTS"]

# linears reading the same input array inside a block
SHARED_INPUTS = {"attn_q": "attn_q", "attn_k": "attn_q", "attn_v": "attn_q", "attn_output": "attn_output",
                 "ffn_gate": "ffn_gate", "ffn_up": "ffn_gate", "ffn_down": "ffn_down"}


@dataclasses.dataclass
class LinearStats:
    """Running sums over the input rows x (in_features,) of one linear layer (arrays of xp)."""

    n: int = 0
    xtx: Any = None  # (in, in) Σ xᵀx, float32
    abs_sum: Any = None  # (in,) Σ |x|, float32

    def add(self, x: Any) -> None:
        """Accumulate rows x: (T, in)."""
        xp = namespace(x)
        gram = xp.matmul(xp.matrix_transpose(x), x)  # (in, in)
        mags = xp.sum(xp.abs(x), axis=0)  # (in,)
        self.xtx = gram if self.xtx is None else self.xtx + gram
        self.abs_sum = mags if self.abs_sum is None else self.abs_sum + mags
        self.n += int(x.shape[0])

    def hessian(self) -> Any:
        """GPTQ's H = (2/n) Σ xᵀx   (in, in)."""
        self._check()
        return self.xtx * (2.0 / self.n)

    def mean_abs(self) -> Any:
        """AWQ's per-channel activation magnitude  mean |x|   (in,)."""
        self._check()
        return self.abs_sum / self.n

    def _check(self) -> None:
        if self.n == 0:
            raise ValueError("stats: no rows were accumulated (empty calibration set?)")


@dataclasses.dataclass
class CalibrationResult:
    """The model after calibration (weights replaced by ``on_block``) and the statistics."""

    model: Any
    stats: dict[str, LinearStats]  # GGUF weight name -> its input statistics (empty if keep=False)


def calibrate(model: Any, windows: Iterable[Any],
              on_block: Callable[[int, Mapping[str, LinearStats], list], Mapping[str, Any] | None] | None = None,
              propagate: str = "quantized", keep: bool = True) -> CalibrationResult:
    """Stream the calibration windows through the model block by block (module docstring).

    model: a LlamaModel; windows: token-id windows, each (T,) (e.g. ``ppl.windows(tokens, 512)``).
    on_block(i, stats_i, inputs): called once block i's statistics are complete, with
        stats_i {GGUF name: LinearStats} for block i's seven linears and inputs the list of
        block i's input activations (T, d); may return replacement weights for block i.
    propagate: "quantized" — later blocks see the replaced block's outputs;
               "original"  — they see the unmodified model's outputs.
    keep: keep every block's statistics in the result (False frees them after on_block).
    """
    if propagate not in ("quantized", "original"):
        raise ValueError(f"propagate: expected 'quantized' or 'original', got {propagate!r}")
    windows = list(windows)
    if not windows:
        raise ValueError("windows: expected at least one window of token ids")
    h = [model.embed(w) for w in windows]  # n_windows × (T, d)
    kept: dict[str, LinearStats] = {}
    for i in range(model.config.n_layer):
        shared = {role: LinearStats() for role in set(SHARED_INPUTS.values())}
        stats_i = {f"blk.{i}.{n}.weight": shared[SHARED_INPUTS[n]] for n in LINEAR_NAMES}
        owner = {f"blk.{i}.{n}.weight": n == SHARED_INPUTS[n] for n in LINEAR_NAMES}

        def record(name: str, x: Any) -> None:
            if owner[name]:  # the first of the linears sharing this input adds it once
                stats_i[name].add(x)

        outputs = [model.block(i, h_w, capture=record) for h_w in h]  # n_windows × (T, d)
        new = on_block(i, stats_i, h) if on_block is not None else None
        if new:
            model = model.with_weights(new)
            if propagate == "quantized":  # otherwise keep the outputs of the original block i
                outputs = [model.block(i, h_w) for h_w in h]
        h = outputs
        if keep:
            kept.update(stats_i)
    return CalibrationResult(model=model, stats=kept)


def embedded_windows(model: Any, calib_tokens: Any, window: int) -> list[Any]:
    """Calibration tokens cut into non-overlapping windows and embedded: [(window, d), ...].

    Fewer tokens than a window make one shorter window of them all; a remainder shorter
    than a window is dropped (as GPTQ's and AWQ's reference loaders do).
    """
    if len(calib_tokens) < 2:
        raise ValueError(f"calib_tokens: need at least 2 calibration tokens, got {len(calib_tokens)}")
    window = min(window, len(calib_tokens))
    n = (len(calib_tokens) // window) * window
    return [model.embed(calib_tokens[k:k + window]) for k in range(0, n, window)]
