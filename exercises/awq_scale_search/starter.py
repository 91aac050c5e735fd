"""AWQ's scale search, your version. See README.md; check with

    EXERCISE=starter python -m pytest exercises/awq_scale_search -q
"""

import numpy as np

from refquant.awq import awq_group_quantize  # noqa: F401  (the quantizer Q of README step 3)

N_GRID = 20


def act_scale(X: np.ndarray) -> np.ndarray:
    """X: (T, in) -> (in,) mean |x| per input channel."""
    raise NotImplementedError("act_scale: mean magnitude over the tokens")


def scales_for(s_X: np.ndarray, alpha: float) -> np.ndarray:
    """s_X: (in,) -> (in,) the floored power, normalised so that max · min = 1."""
    raise NotImplementedError("scales_for: power, floor at 1e-4, normalise")


def search_scale(X: np.ndarray, Ws: list[np.ndarray], bits: int = 4, group_size: int = 128
                 ) -> tuple[np.ndarray, float, list[float]]:
    """-> (s (in,), α, losses: the 20 losses in grid order)."""
    raise NotImplementedError("search_scale: for every α, quantize W·s, divide by s, compare the outputs")


def fold_norm(g: np.ndarray, Ws: list[np.ndarray], s: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """-> (g', [W'_k]) with the float model unchanged."""
    raise NotImplementedError("fold_norm: one side divided by s, the other multiplied")
