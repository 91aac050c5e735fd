"""LoRA's gradients by hand: a solution. The operation order is refquant.qlora.LoraLinear's
(without dropout), so every result is bit-exact with it."""

import math
from typing import NamedTuple

import numpy as np


class LoraGrads(NamedTuple):
    """The gradients of one LoRA layer. There is no dW: the base W is frozen."""

    dx: np.ndarray  # (T, n_in)
    dA: np.ndarray  # (r, n_in)
    dB: np.ndarray  # (n_out, r)


def lora_scale(alpha: float, r: int, rslora: bool = False) -> float:
    """s = α/r, or α/√r with rsLoRA (Kalajdzievski 2023: keeps the branch's scale as r grows)."""
    return alpha / (math.sqrt(r) if rslora else r)


def lora_forward(x: np.ndarray, W: np.ndarray, A: np.ndarray, B: np.ndarray, s: float) -> np.ndarray:
    """y = x Wᵀ + (u Bᵀ)·s with u = x Aᵀ.   x: (T, n_in) -> y: (T, n_out)"""
    u = x @ A.T                                  # (T, r)
    return x @ W.T + (u @ B.T) * np.float32(s)   # (T, n_out)


def lora_backward(dy: np.ndarray, x: np.ndarray, W: np.ndarray, A: np.ndarray, B: np.ndarray,
                  s: float) -> LoraGrads:
    """dx = dy W + ((dy B) A)·s,  dA = ((dy B)ᵀ x)·s,  dB = (dyᵀ u)·s."""
    s = np.float32(s)
    u = x @ A.T                                  # (T, r), recomputed: the same bits as the forward's
    dyB = dy @ B                                 # (T, r)
    dx = dy @ W + (dyB @ A) * s                  # (T, n_in); W gets no gradient
    dA = (dyB.T @ x) * s                         # (r, n_in)
    dB = (dy.T @ u) * s                          # (n_out, r)
    return LoraGrads(dx, dA, dB)
