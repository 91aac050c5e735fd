"""The NF4 code book, a worked solution (see README.md)."""

import numpy as np
from scipy.stats import norm

NF4_OFFSET = 0.9677083
TINY = np.float32(1e-38)  # bitsandbytes clamps absmax to this before the reciprocal


def probabilities(offset: float, n: int) -> np.ndarray:
    start, stop = np.float32(offset), np.float32(0.5)
    d = (stop - start) / np.float32(n - 1)                       # float32 step
    i = np.arange(n, dtype=np.float64)
    # one rounding each (a fused multiply-add): float64 holds the float32 product exactly
    lower = np.float64(start) + np.float64(d) * i
    upper = np.float64(stop) - np.float64(d) * (n - 1 - i)
    return np.where(i < n // 2, lower, upper).astype(np.float32)


def normal_map(offset: float = NF4_OFFSET) -> np.ndarray:
    positive = norm.ppf(probabilities(offset, 9)[:-1])           # (8,) float64
    negative = -norm.ppf(probabilities(offset, 8)[:-1])          # (7,)
    levels = np.sort(np.concatenate([positive, [0.0], negative]).astype(np.float32))
    return levels / levels.max()                                 # float32 division


def quantize_block(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    levels = normal_map()
    midpoints = (levels[1:] + levels[:-1]) / np.float32(2)       # (15,) decision boundaries
    absmax = np.max(np.abs(x))
    y = x * (np.float32(1) / np.maximum(absmax, TINY))           # (64,) float32
    codes = np.sum(y[:, None] > midpoints[None, :], axis=1)      # midpoints strictly below y
    return codes.astype(np.uint8), absmax
