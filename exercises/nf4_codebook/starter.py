"""The NF4 code book, your version. See README.md; check with

    EXERCISE=starter python -m pytest exercises/nf4_codebook -q
"""

import numpy as np

NF4_OFFSET = 0.9677083


def probabilities(offset: float, n: int) -> np.ndarray:
    """torch.linspace(offset, 0.5, n) in float32, bit for bit -> (n,) float32."""
    raise NotImplementedError("probabilities: a float32 linspace from offset down to 0.5")


def normal_map(offset: float = NF4_OFFSET) -> np.ndarray:
    """The 16 NF4 levels, sorted, float32, in [-1, 1]."""
    raise NotImplementedError("normal_map: quantiles of the probabilities, a zero, sort, divide by the max")


def quantize_block(x: np.ndarray) -> tuple[np.ndarray, np.float32]:
    """One block (64,) float32 -> (codes (64,) uint8 in 0..15, absmax float32)."""
    raise NotImplementedError("quantize_block: scale by 1/absmax, then the nearest level")
