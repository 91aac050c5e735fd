"""Decoding a Q4_K super-block, your version. See README.md; check with

    EXERCISE=starter python -m pytest exercises/q4k_superblock -q
"""

import numpy as np


def fields(raw: np.ndarray) -> tuple[np.float32, np.float32, np.ndarray, np.ndarray]:
    """(144,) uint8 -> d, dmin (float32), scales (12,) uint8, qs (128,) uint8."""
    raise NotImplementedError("fields: two fp16 numbers, then 12 scale bytes, then 128 code bytes")


def scale_min(scales: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(12,) uint8 -> sc, m: (8,) integers 0..63 each (get_scale_min_k4)."""
    raise NotImplementedError("scale_min: 6 bits each; sub-blocks 4..7 borrow their top 2 bits")


def codes(qs: np.ndarray) -> np.ndarray:
    """(128,) uint8 -> (256,) codes 0..15 in weight order."""
    raise NotImplementedError("codes: per chunk of 32 bytes, the low nibbles then the high nibbles")


def decode(raw: np.ndarray) -> np.ndarray:
    """(144,) uint8 -> (256,) float32 weights."""
    raise NotImplementedError("decode: (d * sc_j) * q - (dmin * m_j) per sub-block j")
