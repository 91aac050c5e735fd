"""Mixed-precision bit allocation, a worked solution (see README.md).

Sensitivity proxy: the output error of each linear if its inputs were uncorrelated,
    err(W, b) = Σ_ij h_j (w_ij − ŵ_ij(b))²,   h_j = mean_t x_tj²   (the diagonal of H/2)
from one forward pass over calibration tokens; then a greedy allocation: start every
tensor at the fewest bits and keep buying the upgrade with the largest error reduction
per byte that still fits the budget (a discrete Lagrangian / knapsack heuristic).
"""

import heapq

import numpy as np

from refquant import uniform as U

BITS = (3, 4, 5, 6, 8)      # candidate widths (README.md)
G = 64                      # group size: divides 576 and 1536
CALIB_TOKENS = 128          # tokens of the sensitivity pass


def _ceil_div(a, b):
    return -(-a // b)


def tensor_bytes(shape, bits):
    rows, cols = shape
    n, n_groups = rows * cols, rows * (cols // G)
    return _ceil_div(n * bits, 8) + 2 * n_groups + _ceil_div(n_groups * bits, 8)


def quantize(W, bits):
    return U.fake_quantize(W, bits, symmetric=False, granularity="group", group_size=G, signed=False)


def sensitivities(model, calib_tokens):
    """{name: {bits: err}} with the proxy of the module docstring."""
    h = {}
    model.forward(np.asarray(calib_tokens[:CALIB_TOKENS]),
                  capture=lambda name, x: h.setdefault(name, np.mean(x.astype(np.float64) ** 2, axis=0)))
    err = {}
    for name in model.linear_names():
        W = model.weights[name]
        signal = float(np.sum(h[name][None, :] * W.astype(np.float64) ** 2))     # Σ_ij h_j w_ij²
        err[name] = {b: float(np.sum(h[name][None, :] * (W - quantize(W, b)).astype(np.float64) ** 2)) / signal
                     for b in BITS}
    return err


def allocate(model, calib_tokens, budget_bytes):
    err = sensitivities(model, calib_tokens)
    shape = {n: tuple(model.weights[n].shape) for n in err}
    bits = {n: BITS[0] for n in err}
    spent = sum(tensor_bytes(shape[n], bits[n]) for n in err)
    if spent > budget_bytes:
        raise ValueError(f"budget_bytes: {budget_bytes} is below the smallest allocation ({spent} bytes)")

    def offer(n):  # the next upgrade of tensor n: (−gain per byte, name, new bits, extra bytes)
        k = BITS.index(bits[n])
        if k + 1 < len(BITS):
            b = BITS[k + 1]
            extra = tensor_bytes(shape[n], b) - tensor_bytes(shape[n], bits[n])
            heapq.heappush(heap, (-(err[n][bits[n]] - err[n][b]) / extra, n, b, extra))

    heap = []
    for n in err:
        offer(n)
    while heap:
        _, n, b, extra = heapq.heappop(heap)
        if spent + extra <= budget_bytes:
            bits[n], spent = b, spent + extra
            offer(n)
    return bits
