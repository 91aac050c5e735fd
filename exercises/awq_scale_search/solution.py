"""AWQ's scale search, a worked solution (see README.md)."""

import numpy as np

from refquant.awq import awq_group_quantize

N_GRID = 20          # α = 0, 1/20, ..., 19/20
MIN_SCALE = 1e-4     # floor of s_X^α (llm-awq auto_scale.py)


def act_scale(X):
    return np.mean(np.abs(X), axis=0)                                    # (in,)


def scales_for(s_X, alpha):
    s = np.clip(s_X ** alpha, MIN_SCALE, None)                           # (in,)
    return s / np.sqrt(np.max(s) * np.min(s))


def search_scale(X, Ws, bits=4, group_size=128):
    Y = X @ np.concatenate(Ws, axis=0).T                                 # (T, Σ out)
    s_X = act_scale(X)
    losses, best, best_s, best_alpha = [], np.inf, None, 0.0
    for i in range(N_GRID):
        alpha = i / N_GRID
        s = scales_for(s_X, alpha)
        W_hat = np.concatenate([awq_group_quantize(W * s[None, :], bits, group_size, partial_group=True)[3] / s[None, :]
                                for W in Ws], axis=0)                    # (Σ out, in)
        loss = float(np.mean((Y - X @ W_hat.T) ** 2))
        losses.append(loss)
        if loss < best:
            best, best_s, best_alpha = loss, s, alpha
    return best_s, best_alpha, losses


def fold_norm(g, Ws, s):
    return g / s, [W * s[None, :] for W in Ws]
