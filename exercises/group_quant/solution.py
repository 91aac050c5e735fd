"""Group quantization, a worked solution (see README.md)."""

import numpy as np


def group_qparams(w: np.ndarray, bits: int, G: int) -> tuple[np.ndarray, np.ndarray]:
    rows, n = w.shape
    groups = w.reshape(rows, n // G, G)                             # (rows, n/G, G)
    lo = np.minimum(groups.min(axis=-1, keepdims=True), 0)          # (rows, n/G, 1)
    hi = np.maximum(groups.max(axis=-1, keepdims=True), 0)
    q_max = 2**bits - 1
    s = (hi - lo) / float(q_max)
    s = np.where(s == 0, np.float32(1), s)
    z = np.clip(-np.round(lo / s), 0, q_max)
    return s, z


def quantize_groups(w: np.ndarray, s: np.ndarray, z: np.ndarray, bits: int) -> np.ndarray:
    groups = w.reshape(*s.shape[:2], -1)                            # (rows, n/G, G)
    q = np.clip(np.round(groups / s) + z, 0, 2**bits - 1)
    return q.astype(np.int32)


def dequantize_groups(q: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    w_hat = s * (q.astype(np.float32) - z)                          # (rows, n/G, G)
    return w_hat.reshape(q.shape[0], -1)                            # (rows, n)


def bits_per_weight(bits: int, G: int, scale_bits: int = 16, zero_bits: int = 0) -> float:
    return bits + (scale_bits + zero_bits) / G
