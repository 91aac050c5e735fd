"""INT8 per channel / per tensor, your version. See README.md; check with

    EXERCISE=starter python -m pytest exercises/int8_per_channel -q
"""

import numpy as np


def quantize_per_channel(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax INT8, one scale per output row.

    W: (out, in) float32 -> q: (out, in) int8 in -127..127, s: (out, 1) float32.
    """
    raise NotImplementedError("quantize_per_channel: s per row from max |W|, then q = clip(round(W / s))")


def quantize_per_tensor(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric absmax INT8, one scale for the whole matrix.

    W: (out, in) float32 -> q: (out, in) int8, s: (1, 1) float32.
    """
    raise NotImplementedError("quantize_per_tensor: one s from max |W| over everything")


def dequantize(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Ŵ = s · q in float32 (s broadcasts: (out, 1) or (1, 1))."""
    raise NotImplementedError("dequantize: s times q, in float32")


def perplexities(model, tokens: np.ndarray, window: int) -> dict[str, float]:
    """Perplexity of ``model`` with every block linear replaced by its INT8 reconstruction.

    model: a refquant.model.LlamaModel; tokens: (n,) token ids; window: tokens per window.
    -> {"per_channel": ppl, "per_tensor": ppl} (floats).
    """
    raise NotImplementedError("perplexities: quantize every name in model.linear_names(), with_weights, perplexity")
