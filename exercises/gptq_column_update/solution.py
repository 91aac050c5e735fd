"""GPTQ's column loop, fixed (see README.md). The four fixes, against the tutorial snippet:

1. damping relative to H and the Cholesky factor U of H⁻¹ (hessian_factor), not inv(H + 1e-6 I);
2. the error divided by U_jj (the OBS step size), not the raw error;
3. the row U[j, j:] of the *downdated* inverse, not row j of the full H⁻¹;
4. groups of input columns of each row, not groups of output rows.
"""

import numpy as np

from refquant.gptq import hessian_factor, minmax_params, quantize_column


def gptq_update(W: np.ndarray, H: np.ndarray, bits: int = 4, group_size: int = 64) -> np.ndarray:
    n_out, n_in = W.shape
    q_max = 2**bits - 1
    U = hessian_factor(H)                                              # (in, in) upper, H⁻¹ = UᵀU
    W = W.copy()
    W_hat = np.zeros_like(W)
    for j in range(n_in):
        if j % group_size == 0:                                        # a group starts: from current W
            s, z = minmax_params(W[:, j:j + group_size], bits, False)  # (out, 1) each
        w = W[:, j:j + 1]                                              # (out, 1)
        _, w_hat = quantize_column(w, s, z, 0, q_max)
        W_hat[:, j:j + 1] = w_hat
        e = (w - w_hat) / U[j, j]                                      # (out, 1)  Algorithm 1, l. 8
        W[:, j:] -= e * U[j:j + 1, j:]                                 # (out, in-j) l. 9
    return W_hat
