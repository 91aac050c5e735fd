"""INT8 per channel / per tensor, a worked solution (see README.md)."""

import numpy as np

from refquant.model import perplexity

Q_MAX = 127  # 2^(8-1) - 1, the restricted symmetric range


def _codes(W: np.ndarray, absmax: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = absmax / float(Q_MAX)                                     # float32 / Python float: float32
    s = np.where(s == 0, np.float32(1), s)                        # an all-zero row: s = 1
    q = np.clip(np.round(W / s), -Q_MAX, Q_MAX).astype(np.int8)   # true division, half to even
    return q, s


def quantize_per_channel(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _codes(W, np.max(np.abs(W), axis=1, keepdims=True))    # absmax: (out, 1)


def quantize_per_tensor(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return _codes(W, np.max(np.abs(W), keepdims=True))            # absmax: (1, 1)


def dequantize(q: np.ndarray, s: np.ndarray) -> np.ndarray:
    return s * q.astype(np.float32)                               # (out, in) float32


def perplexities(model, tokens: np.ndarray, window: int) -> dict[str, float]:
    result = {}
    for label, quantizer in (("per_channel", quantize_per_channel), ("per_tensor", quantize_per_tensor)):
        W_hat = {name: dequantize(*quantizer(model.weights[name])) for name in model.linear_names()}
        result[label] = perplexity(model.with_weights(W_hat), tokens, window=window).ppl
    return result
