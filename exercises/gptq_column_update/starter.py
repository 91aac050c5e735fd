"""The tutorial's GPTQ snippet — it has bugs. Find and fix them (README.md); check with

    EXERCISE=starter python -m pytest exercises/gptq_column_update -q     (fails: the bugs)
    cp starter.py my_attempt.py; EXERCISE=my_attempt python -m pytest exercises/gptq_column_update -q
"""

import numpy as np

from refquant.gptq import minmax_params, quantize_column


def gptq_update(W: np.ndarray, H: np.ndarray, bits: int = 4, group_size: int = 64) -> np.ndarray:
    """GPTQ of one layer, one column at a time.

    W: (out, in) weights, H: (in, in) Hessian 2XᵀX/n -> Ŵ: (out, in) dequantized weights.
    Codes 0..2^bits-1, one (s, z) per row and group of ``group_size`` input columns.
    """
    n_out, n_in = W.shape
    q_max = 2**bits - 1
    H_inv = np.linalg.inv(H + 1e-6 * np.eye(n_in))
    W = W.copy()
    W_hat = np.zeros_like(W)
    for j in range(n_in):
        w = W[:, j]
        col = np.zeros_like(w)
        for r in range(0, n_out, group_size):          # a scale for every group_size rows
            s, z = minmax_params(w[r:r + group_size].reshape(1, -1), bits, False)
            col[r:r + group_size] = quantize_column(w[r:r + group_size], s[0, 0], z[0, 0], 0, q_max)[1]
        W_hat[:, j] = col
        if j + 1 < n_in:
            W[:, j + 1:] -= (w - col)[:, None] * H_inv[j, j + 1:][None, :]
    return W_hat
