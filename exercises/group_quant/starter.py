"""Group quantization, your version. See README.md for the formulas; run the checker with

    EXERCISE=starter python -m pytest exercises/group_quant -q
"""

import numpy as np


def group_qparams(w: np.ndarray, bits: int, G: int) -> tuple[np.ndarray, np.ndarray]:
    """Scales and zero-points of every group.

    w: (rows, n) float32, n a multiple of G -> s, z: (rows, n // G, 1) float32
    (z holds integers 0 .. 2^bits - 1, stored as float32).

    Steps: reshape w to (rows, n // G, G); take min and max over the last axis
    (keepdims=True); widen the range to contain 0; s = (hi - lo) / (2^bits - 1), computed
    in float32 (divide by a Python float); replace s == 0 by 1; z = -round(lo / s),
    clipped to 0 .. 2^bits - 1.
    """
    raise NotImplementedError("group_qparams: reshape to groups, min/max per group, then s and z (README.md)")


def quantize_groups(w: np.ndarray, s: np.ndarray, z: np.ndarray, bits: int) -> np.ndarray:
    """Codes of every value: q = clip(round(w / s) + z, 0, 2^bits - 1).

    w: (rows, n) float32; s, z: (rows, n // G, 1) -> q: (rows, n // G, G) int32.
    Round with np.round (half to even) *before* adding z.
    """
    raise NotImplementedError("quantize_groups: reshape w like s, divide, round, add z, clip, cast to int32")


def dequantize_groups(q: np.ndarray, s: np.ndarray, z: np.ndarray) -> np.ndarray:
    """ŵ = s (q - z), back to (rows, n) float32."""
    raise NotImplementedError("dequantize_groups: s * (q - z) in float32, then reshape to (rows, n)")


def bits_per_weight(bits: int, G: int, scale_bits: int = 16, zero_bits: int = 0) -> float:
    """Storage per weight including the group's scale and zero-point."""
    raise NotImplementedError("bits_per_weight: bits plus the parameters' bits shared by G weights")
