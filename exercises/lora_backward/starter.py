"""LoRA's gradients by hand, your version. See README.md; check with

    EXERCISE=starter python -m pytest exercises/lora_backward -q
"""

from typing import NamedTuple

import numpy as np


class LoraGrads(NamedTuple):
    """The gradients of one LoRA layer. There is no dW: the base W is frozen."""

    dx: np.ndarray  # (T, n_in)
    dA: np.ndarray  # (r, n_in)
    dB: np.ndarray  # (n_out, r)


def lora_scale(alpha: float, r: int, rslora: bool = False) -> float:
    """The scale s of the adapter's branch: plain LoRA, or rank-stabilized LoRA (README.md)."""
    raise NotImplementedError("lora_scale: alpha over the rank (or over its square root with rslora)")


def lora_forward(x: np.ndarray, W: np.ndarray, A: np.ndarray, B: np.ndarray, s: float) -> np.ndarray:
    """y = x Wᵀ + s (x Aᵀ) Bᵀ.

    x: (T, n_in), W: (n_out, n_in) frozen, A: (r, n_in), B: (n_out, r), all float32 -> y: (T, n_out).
    Keep the operation order of README.md step 2 (the checker is bit-exact).
    """
    raise NotImplementedError("lora_forward: the base product plus the scaled low-rank branch")


def lora_backward(dy: np.ndarray, x: np.ndarray, W: np.ndarray, A: np.ndarray, B: np.ndarray,
                  s: float) -> LoraGrads:
    """dx, dA, dB from dy = ∂L/∂y (T, n_out), for the y of ``lora_forward`` -> LoraGrads.

    Keep the operation order of README.md step 3 (the checker is bit-exact).
    """
    raise NotImplementedError("lora_backward: the chain rule through both branches; no gradient for W")
