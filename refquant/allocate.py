"""Mixed precision: what quantizing each tensor costs, and the best type per tensor under a budget.

1. Curvature (``curvature``): one forward and backward pass of ``refquant.model`` per
   calibration window (``refquant.model.backward``'s ops) records, for every linear y = x Wᵀ,

       h_j = mean_t x_tj²           the input's second moment: the importance matrix
       G_i = mean_t g_ti²           g_t = ∂(Σ_s ℓ_s)/∂y_t, the output gradient's second moment

   (the tied embedding as the output head, and ē_j = mean_t (∂Σℓ/∂h⁰_tj)² for its input role).

2. Proxy (``predicted_delta``): a second-order Taylor expansion of the summed loss S with the
   diagonal empirical Fisher for its Hessian, and x and g taken independent (K-FAC):

       ΔS ≈ ½ Σ_t Σ_i g_ti² δy_ti²,   δy_t = x_t ΔWᵀ,   ΔW = W − Ŵ
       Δ(mean NLL) ≈ ½ (T/N) Σ_i G_i Σ_j h_j ΔW_ij²        (nats per scored token)
       token_embd input role:  + ½ (T/N) Σ_j ē_j · mean_v ΔE_vj²

   T rows, N = T − n_windows scored tokens. ``imatrix_error`` = Σ_ij h_j ΔW_ij² is the
   cheaper proxy without the gradient side (the output error per token; not comparable
   across tensors, whose outputs matter differently). ``measure_deltas`` measures the real
   Δ(mean NLL) of quantizing one tensor alone; ``spearman`` says how well a proxy ranks them.

3. Allocation (``knapsack``, ``allocate``): a multiple-choice knapsack, one option per tensor,

       minimise Σ_n Δ_n(t_n)   subject to   Σ_n bytes_n(t_n) ≤ budget,

   solved exactly by dynamic programming over the budget in units of g = gcd of every
   (cost − the tensor's cheapest cost): every sum of costs is a multiple of g, so the
   capacity ⌊(budget − Σ min)/g⌋ loses nothing. (When that capacity exceeds ``max_states``
   the costs are rounded *up* to a coarser unit: still within budget, no longer certified
   optimal; ``Solution.exact`` says which.)

llama.cpp's constraints: a type is a candidate for a tensor only if its block divides the
row (SmolLM2's 576-wide rows take 32-blocks only: Q4_0 … Q8_0, IQ4_NL; the 1536-wide
ffn_down rows take the k-quants too); only the tensors llama-quantize quantizes are
allocated (``recipes.allows_quantization``: no norms); a tied ``token_embd.weight`` is the
output head as well as the embedding, and its proxy counts both roles.

Ref: llama.cpp src/llama-quant.cpp (tensor_type_fallback; ``--target-bpw``); Dong et al. 2019
(HAWQ: Hessian-aware mixed precision); Martens & Grosse 2015 (K-FAC); Kim et al. 2024
(SqueezeLLM: Fisher-weighted error); Kellerer, Pferschy & Pisinger 2004 (multiple-choice knapsack).
"""

from __future__ import annotations

import dataclasses
import math
import re
import time
import weakref
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from ._backend import namespace, to_numpy

__all__ = ["GGUF_CANDIDATES", "Candidate", "gguf_candidate", "uniform_candidate", "Curvature", "curvature",
           "predicted_delta", "imatrix_error", "Option", "sensitivities", "fair_options", "measure_deltas",
           "spearman", "Solution", "knapsack", "Allocation", "allocate", "quantizable", "quantized_weights",
           "tensor_nbytes", "mixture_bytes", "parse_size", "mix_method", "ftype_for", "MAX_STATES"]

# the llama.cpp types refquant quantizes and llama.cpp loads that a tensor may get (no imatrix required)
GGUF_CANDIDATES = ("Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL",
                   "Q8_0")
MAX_STATES = 4_000_000  # DP cells (items × capacity) before the costs are coarsened


# --------------------------------------------------------------------------- candidates

class Candidate(NamedTuple):
    """A way to store a weight matrix: its bytes for a shape and its fake quantization."""

    name: str
    fits: Callable[[tuple[int, ...]], bool]                    # shape (out, in) -> can it be stored so
    nbytes: Callable[[tuple[int, ...]], int]                   # shape -> bytes
    fake_quantize: Callable[[np.ndarray, np.ndarray | None], np.ndarray]  # W (out, in), imatrix (in,) -> Ŵ


def tensor_nbytes(shape: Sequence[int], qtype: str) -> int:
    """Bytes of a GGUF tensor of ``shape`` (NumPy order) stored as ``qtype``: rows · row_bytes."""
    from .gguf.types import row_bytes

    rows = math.prod(int(s) for s in shape[:-1])
    return rows * row_bytes(qtype, int(shape[-1]))


def gguf_candidate(qtype: str) -> Candidate:
    """A llama.cpp block type: fits when its block divides the row; Ŵ = dequantize(quantize(W))."""
    from . import gguf
    from .gguf.types import ggml_type

    t = ggml_type(qtype)

    def fake(W: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        raw = gguf.quantize(np.ascontiguousarray(W, dtype=np.float32), t.name, imatrix=imatrix)
        return np.asarray(gguf.dequantize(raw, t.name), dtype=np.float32).reshape(W.shape)

    return Candidate(t.name, lambda shape: int(shape[-1]) % t.block_size == 0,
                     lambda shape: tensor_nbytes(shape, t.name), fake)


def uniform_candidate(bits: int, group_size: int) -> Candidate:
    """Asymmetric round-to-nearest, groups of G inputs (the mixed_precision exercise's format):
    bytes = ⌈n b/8⌉ + 2 n_groups + ⌈n_groups b/8⌉ (codes, fp16 scales, b-bit zero-points)."""
    from . import uniform

    def nbytes(shape: tuple[int, ...]) -> int:
        n = math.prod(int(s) for s in shape)
        n_groups = n // group_size
        return -(-n * bits // 8) + 2 * n_groups + -(-n_groups * bits // 8)

    def fake(W: np.ndarray, imatrix: np.ndarray | None) -> np.ndarray:
        return np.asarray(uniform.fake_quantize(W, bits, symmetric=False, granularity="group", group_size=group_size,
                                                signed=False), dtype=np.float32)

    return Candidate(f"INT{bits}-G{group_size}", lambda shape: int(shape[-1]) % group_size == 0, nbytes, fake)


def quantizable(weights: Mapping[str, Any]) -> list[str]:
    """The tensors llama-quantize quantizes (``recipes.allows_quantization``), in llama.cpp's order."""
    from .gguf import recipes

    return [n for n in recipes.llama_order(weights) if recipes.allows_quantization(n, tuple(weights[n].shape))]


# --------------------------------------------------------------------------- curvature

class Curvature(NamedTuple):
    """Second moments per linear (module docstring): h (n_in,), G (n_out,); ē (d,) for token_embd."""

    h: dict[str, np.ndarray]
    G: dict[str, np.ndarray]
    embed: np.ndarray
    n_rows: int       # T summed over the windows
    n_scored: int     # N: rows that predict a token
    loss: float       # mean NLL of the calibration windows


class _Recorder:
    """A ``backward.Linear`` y = x Wᵀ that adds Σ_t x_t² and Σ_t g_t² (g = N·dy) to ``sums``; no dW."""

    def __init__(self, W: Any, name: str, sums: dict, n_scored: int):
        self.W, self.name, self.sums, self.N = W, name, sums, n_scored

    def forward(self, x: Any) -> tuple[Any, Any]:
        from .model.backward import linear_forward

        _add(self.sums, ("h", self.name), x)
        return linear_forward(x, self.W)

    def backward(self, dy: Any, cache: Any) -> tuple[Any, None]:
        _add(self.sums, ("G", self.name), dy, self.N)
        return namespace(dy).matmul(dy, self.W), None  # dx = dy W


def _add(sums: dict, key: tuple, x: Any, scale: float = 1.0) -> None:
    x64 = to_numpy(x).astype(np.float64) * scale
    sq = np.sum(x64 * x64, axis=0)  # (width,)
    sums[key] = sq if key not in sums else sums[key] + sq


def curvature(model: Any, tokens: Any, window: int = 256, max_windows: int | None = 4) -> Curvature:
    """h, G (and ē) of every linear of ``model`` on calibration ``tokens``, ⌊n/window⌋ windows.

    Each window: the forward pass op by op (``backward.block_forward`` over recording linears),
    the loss, and the backward pass to the embedding; no weight gradient is formed.
    """
    from .model import backward as B
    from .model.loader import LINEAR_NAMES
    from .model.ppl import windows as cut

    c, w = model.config, model.weights
    chunks = cut(np.asarray(tokens, dtype=np.int64), window, max_windows)  # (n_windows, window)
    head = "output.weight" if "output.weight" in w else "token_embd.weight"
    sums: dict = {}
    losses = []
    cos, sin = model.angles(window)
    for ids in chunks:
        N = len(ids) - 1
        h, _ = B.embedding_forward(w["token_embd.weight"], ids)  # (T, d)
        caches, layers = [], []
        for i in range(c.n_layer):
            layers.append({k: _Recorder(w[f"blk.{i}.{k}.weight"], f"blk.{i}.{k}.weight", sums, N)
                           for k in LINEAR_NAMES})
            h, cache = B.block_forward(h, w[f"blk.{i}.attn_norm.weight"], w[f"blk.{i}.ffn_norm.weight"], layers[i],
                                       c.n_head, c.n_head_kv, c.rms_eps, cos, sin)
            caches.append(cache)
        z, head_cache = B.head_forward(h, w["output_norm.weight"], w[head], c.rms_eps)  # (T, vocab)
        loss, ce = B.cross_entropy_forward(z, ids)
        losses.append(loss)
        dz = B.cross_entropy_backward(ce)  # (T, vocab), of the mean over N
        _add(sums, ("h", head), head_cache.x)
        _add(sums, ("G", head), dz, N)
        dh = B.head_backward(dz, head_cache, weight_grad=False).dh  # (T, d)
        for i in reversed(range(c.n_layer)):
            dh = B.block_backward(dh, caches[i], layers[i]).dh
            caches[i] = None  # free block i's activations once used
        _add(sums, ("embed",), dh, N)
    T = int(chunks.size)
    N_all = T - len(chunks)
    names = sorted({k[1] for k in sums if k[0] == "h"})
    return Curvature({n: sums["h", n] / T for n in names}, {n: sums["G", n] / T for n in names},
                     sums["embed",] / T, T, N_all, float(np.mean(losses)))


def imatrix_error(W: Any, W_hat: Any, h: np.ndarray) -> float:
    """Σ_ij h_j (w_ij − ŵ_ij)²: the output's squared error per token if inputs were uncorrelated."""
    D = (np.asarray(W, np.float64) - np.asarray(W_hat, np.float64)) ** 2  # (out, in)
    return float(np.sum(D @ h))


def predicted_delta(name: str, W: Any, W_hat: Any, curv: Curvature) -> float:
    """½ (T/N) [Σ_i G_i Σ_j h_j ΔW_ij²  (+ Σ_j ē_j mean_v ΔE_vj² for token_embd)]: Δ mean NLL, nats.

    >>> curv = Curvature({"w": np.array([1.0, 4.0])}, {"w": np.array([2.0])}, np.zeros(2), 4, 4, 0.0)
    >>> predicted_delta("w", np.array([[1.0, 1.0]]), np.array([[0.0, 0.5]]), curv)  # ½ · 2 · (1·1 + 4·0.25)
    2.0
    """
    D = (np.asarray(W, np.float64) - np.asarray(W_hat, np.float64)) ** 2  # (out, in)
    total = 0.0
    if name in curv.h:
        total += float(curv.G[name] @ (D @ curv.h[name]))
    if name == "token_embd.weight":
        total += float(curv.embed @ np.mean(D, axis=0))
    return 0.5 * curv.n_rows / curv.n_scored * total


# --------------------------------------------------------------------------- sensitivities

class Option(NamedTuple):
    """One way to store one tensor: its type, bytes, predicted Δ mean NLL and Σ h ΔW²;
    lossless: Ŵ == W bit for bit (the weights already lie on this type's grid)."""

    qtype: str
    nbytes: int
    predicted: float
    imatrix_err: float
    lossless: bool = False


def sensitivities(model: Any, curv: Curvature, candidates: Iterable[str | Candidate] = GGUF_CANDIDATES,
                  names: Iterable[str] | None = None, imatrix: Mapping[str, np.ndarray] | None = None,
                  progress: Callable[..., Iterable] | None = None) -> dict[str, list[Option]]:
    """{tensor: [Option per candidate that fits its rows]} for the quantizable tensors of ``model``.

    candidates: GGUF type names or ``Candidate``s; imatrix: {name: (n_in,)} passed to the
    quantizers (the weighted searches), as ``quantize_file`` will. A tensor no candidate fits
    gets F16 (llama.cpp's last fallback).
    """
    cands = [c if isinstance(c, Candidate) else gguf_candidate(c) for c in candidates]
    names = quantizable(model.weights) if names is None else list(names)
    out: dict[str, list[Option]] = {}
    loop = progress(names, desc="sensitivity", total=len(names)) if progress else names
    for name in loop:
        W = np.asarray(to_numpy(model.weights[name]), dtype=np.float32)  # (out, in)
        shape = tuple(W.shape)
        fits = [c for c in cands if c.fits(shape)] or [gguf_candidate("F16")]
        qw = None if imatrix is None or name not in imatrix else np.asarray(imatrix[name], np.float32)
        h = curv.h.get(name, np.ones(shape[-1]))
        opts = []
        for c in fits:
            W_hat = c.fake_quantize(W, qw)
            opts.append(Option(c.name, int(c.nbytes(shape)), predicted_delta(name, W, W_hat, curv),
                               imatrix_error(W, W_hat, h), bool(np.array_equal(W_hat, W))))
        out[name] = opts
    return out


def fair_options(options: Mapping[str, Sequence[Option]],
                 allowed: Mapping[str, str] | None = None) -> dict[str, list[Option]]:
    """The options without the lossless ones, except the (tensor, type) pairs in ``allowed``.

    Why: a model read from a quantized file (SmolLM2's is Q4_1, its token_embd Q8_0) holds
    weights already on that type's grid, so re-encoding a tensor in its own type returns it
    exactly: predicted Δ = 0 at that type's bytes, a free option no float model offers. An
    allocation that takes it "beats" a mixture only because the mixture's types differ from the
    source's. Pass the mixture's types as ``allowed`` (``recipes.tensor_types``) so that both
    sides get the same lossless pairs: the mixture's own (SmolLM2's Q4_K_M and Q3_K_M keep
    token_embd at its source Q8_0, and give no linear Q4_1). A tensor whose every option is
    lossless keeps them all.

    >>> opts = {"w": [Option("Q4_1", 20, 0.0, 0.0, True), Option("Q5_0", 22, 1e-3, 2.0)]}
    >>> [o.qtype for o in fair_options(opts)["w"]], [o.qtype for o in fair_options(opts, {"w": "Q4_1"})["w"]]
    (['Q5_0'], ['Q4_1', 'Q5_0'])
    """
    allowed = {} if allowed is None else allowed
    out = {}
    for name, opts in options.items():
        kept = [o for o in opts if not o.lossless or allowed.get(name) == o.qtype]
        out[name] = kept or list(opts)
    return out


def _nll(model: Any, chunks: np.ndarray, hs: list | None = None, first: int = 0) -> float:
    """Mean NLL (protocol "all") of the windows, starting from block ``first`` with inputs hs."""
    from .model.ppl import token_nll

    total = n = 0
    for k, ids in enumerate(chunks):
        h = model.embed(ids) if hs is None else hs[k]
        for i in range(first, model.config.n_layer):
            h = model.block(i, h)
        nll = token_nll(model.head(h)[:-1], ids[1:])
        total, n = total + float(np.sum(nll)), n + nll.size
    return total / n


def measure_deltas(model: Any, tokens: Any, pairs: Iterable[tuple[str, str | Candidate]], window: int = 256,
                   max_windows: int | None = 2, imatrix: Mapping[str, np.ndarray] | None = None) -> dict[tuple, float]:
    """Measured Δ mean NLL of quantizing one tensor alone: {(name, type): nll(Ŵ) − nll(W)}.

    The calibration windows' hidden states entering every block are computed once; a tensor of
    block i is measured by running blocks i.. only (token_embd and the head: the whole model).
    """
    from .model.ppl import windows as cut

    chunks = cut(np.asarray(tokens, dtype=np.int64), window, max_windows)
    inputs = [[model.embed(ids) for ids in chunks]]  # inputs[i]: the windows' hidden states entering block i
    for i in range(model.config.n_layer):
        inputs.append([model.block(i, h) for h in inputs[-1]])
    base = _nll(model, chunks, inputs[0])
    out = {}
    for name, cand in pairs:
        c = cand if isinstance(cand, Candidate) else gguf_candidate(cand)
        W = np.asarray(to_numpy(model.weights[name]), dtype=np.float32)
        qw = None if imatrix is None or name not in imatrix else np.asarray(imatrix[name], np.float32)
        swapped = model.with_weights({name: c.fake_quantize(W, qw)})
        m = re.match(r"blk\.(\d+)\.", name)
        if m:
            out[name, c.name] = _nll(swapped, chunks, inputs[int(m.group(1))], int(m.group(1))) - base
        else:
            out[name, c.name] = _nll(swapped, chunks) - base
    return out


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (average ranks for ties).

    >>> spearman([1, 2, 3, 4], [10, 20, 40, 30])
    0.8
    """
    def ranks(x):
        x = np.asarray(x, np.float64)
        order = np.argsort(x, kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x), dtype=np.float64)
        for v in np.unique(x):  # ties share their mean rank
            r[x == v] = r[x == v].mean()
        return r

    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return round(float(ra @ rb) / den, 12) if den > 0 else math.nan


# --------------------------------------------------------------------------- the knapsack

class Solution(NamedTuple):
    """choice[k]: the option picked for item k; its total cost and value; exact: certified optimal."""

    choice: list[int]
    cost: int
    value: float
    exact: bool


def knapsack(costs: Sequence[Sequence[int]], values: Sequence[Sequence[float]], budget: int,
             max_states: int = MAX_STATES) -> Solution:
    """Multiple-choice knapsack: one option per item, Σ cost ≤ budget, Σ value minimal.

    DP over the extra cost above each item's cheapest option, in units of their gcd (module
    docstring): best[c] = the least value of the items so far with extra cost exactly c units.
    ValueError when even the cheapest options exceed the budget.

    >>> knapsack([[1, 3], [1, 2]], [[5.0, 1.0], [4.0, 2.0]], 4)  # 3 + 1 (1 + 4) beats 1 + 2 (5 + 2)
    Solution(choice=[1, 0], cost=4, value=5.0, exact=True)
    """
    costs = [np.asarray(c, np.int64) for c in costs]
    values = [np.asarray(v, np.float64) for v in values]
    if not costs or any(len(c) == 0 or len(c) != len(v) for c, v in zip(costs, values, strict=True)):
        raise ValueError("costs: expected one non-empty list of options per item, as many values as costs")
    base = int(sum(int(c.min()) for c in costs))
    if base > budget:
        raise ValueError(f"budget: {budget} bytes is below the smallest allocation ({base} bytes)")
    extra = [c - c.min() for c in costs]
    g = math.gcd(*[int(e) for ex in extra for e in ex]) or 1
    unit, exact = g, True
    capacity = (budget - base) // unit
    if capacity * len(costs) > max_states:  # coarsen: costs rounded up stay within the budget
        unit = -(-(budget - base) * len(costs) // max_states)
        unit = -(-unit // g) * g
        capacity, exact = (budget - base) // unit, False
    capacity = min(capacity, int(sum(int(-(-e.max() // unit)) for e in extra)))  # no more than every maximum
    units = [-(-e // unit) for e in extra]  # ceil: exact when unit divides every extra cost
    best = np.full(capacity + 1, np.inf)
    best[0] = 0.0
    picks = np.zeros((len(costs), capacity + 1), np.int16)
    for k, (u, v) in enumerate(zip(units, values)):
        new = np.full(capacity + 1, np.inf)
        for o in range(len(u)):  # option o shifts every state by its units
            s = int(u[o])
            if s > capacity:
                continue
            cand = best[: capacity + 1 - s] + v[o]
            better = cand < new[s:]
            new[s:][better] = cand[better]
            picks[k, s:][better] = o
        best = new
    c = int(np.argmin(best))  # the least value over every reachable extra cost ≤ capacity
    choice = []
    for k in reversed(range(len(costs))):
        o = int(picks[k, c])
        choice.append(o)
        c -= int(units[k][o])
    choice.reverse()
    cost = int(sum(int(cs[o]) for cs, o in zip(costs, choice)))
    value = float(sum(float(vs[o]) for vs, o in zip(values, choice)))
    return Solution(choice, cost, value, exact)


# --------------------------------------------------------------------------- the plan

class AllocationRow(NamedTuple):
    name: str
    qtype: str
    nbytes: int
    predicted: float


@dataclasses.dataclass
class Allocation:
    """types {tensor: type}; nbytes = allocated + fixed bytes ≤ budget; predicted = Σ Δ (nats)."""

    types: dict[str, str]
    nbytes: int
    budget: int
    predicted: float
    rows: list[AllocationRow]
    exact: bool
    seconds: float
    fixed_bytes: int = 0

    def table(self) -> str:
        """The allocation as text: one line per tensor, then the totals."""
        lines = [f"{'tensor':<28} {'type':<7} {'bytes':>11} {'predicted Δ':>12}"]
        lines += [f"{r.name:<28} {r.qtype:<7} {r.nbytes:>11,} {r.predicted:>12.3e}" for r in self.rows]
        lines.append(f"{'total':<28} {'':<7} {self.nbytes:>11,} {self.predicted:>12.3e}  "
                     f"(budget {self.budget:,} bytes; {'optimal' if self.exact else 'coarsened DP'}, "
                     f"{self.seconds:.2f} s)")
        return "\n".join(lines)


def allocate(options: Mapping[str, Sequence[Option]], budget: int, fixed_bytes: int = 0,
             max_states: int = MAX_STATES) -> Allocation:
    """The type per tensor minimising Σ predicted Δ with Σ bytes + fixed_bytes ≤ budget (``knapsack``).

    fixed_bytes: the bytes of tensors that are not allocated (norms), counted in the budget.
    """
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)):
        raise TypeError(f"budget: expected a whole number of bytes, got {budget!r}")
    names = list(options)
    t0 = time.perf_counter()
    sol = knapsack([[o.nbytes for o in options[n]] for n in names], [[o.predicted for o in options[n]] for n in names],
                   int(budget) - int(fixed_bytes), max_states)
    seconds = time.perf_counter() - t0
    picked = [options[n][k] for n, k in zip(names, sol.choice)]
    rows = [AllocationRow(n, o.qtype, o.nbytes, o.predicted) for n, o in zip(names, picked)]
    return Allocation({r.name: r.qtype for r in rows}, sol.cost + int(fixed_bytes), int(budget), sol.value, rows,
                      sol.exact, seconds, int(fixed_bytes))


def quantized_weights(model: Any, types: Mapping[str, str],
                      imatrix: Mapping[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """{tensor: dequantize(quantize(W, type))} for every tensor in ``types`` (an allocation's or a
    mixture's ``recipes.tensor_types`` restricted to the tensors it quantizes): ``model.with_weights``'s input."""
    out = {}
    for name, qtype in types.items():
        W = np.asarray(to_numpy(model.weights[name]), dtype=np.float32)  # (out, in)
        qw = None if imatrix is None or name not in imatrix else np.asarray(imatrix[name], np.float32)
        out[name] = gguf_candidate(qtype).fake_quantize(W, qw)
    return out


def mixture_bytes(model: Any, ftype: str, names: Iterable[str] | None = None) -> int:
    """Bytes of the tensors ``names`` (default: the quantizable ones) under llama.cpp's ``ftype`` mixture."""
    from .gguf import recipes

    types = recipes.tensor_types(model, ftype)
    names = quantizable(model.weights) if names is None else names
    return sum(tensor_nbytes(tuple(model.weights[n].shape), types[n]) for n in names)


_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "K": 10**3,
          "M": 10**6, "G": 10**9}


def parse_size(text: str, what: str = "size") -> int:
    """A byte count from '123456', '90MB', '1.5 GiB' (kB/MB/GB powers of 10, KiB/MiB/GiB of 2).

    >>> parse_size("90MB"), parse_size("1.5 KiB"), parse_size("4096")
    (90000000, 1536, 4096)
    """
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2).upper() not in _UNITS:
        raise ValueError(f"{what}: expected a byte count or a size with a unit (90MB, 1.5GiB), got {text!r}")
    n = math.floor(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"{what}: expected a positive size, got {text!r}")
    return n


# the file type recorded in general.file_type: the one whose default type the allocation uses most
_FTYPE_OF = {"Q2_K": "Q2_K", "Q3_K": "Q3_K_M", "Q4_K": "Q4_K_M", "Q5_K": "Q5_K_M", "Q6_K": "Q6_K", "Q4_0": "Q4_0",
             "Q4_1": "Q4_1", "Q5_0": "Q5_0", "Q5_1": "Q5_1", "Q8_0": "Q8_0", "IQ4_NL": "IQ4_NL", "IQ4_XS": "IQ4_XS",
             "F16": "F16"}


def ftype_for(alloc: Allocation) -> str:
    """The llama.cpp file type to record for an allocation: that of the type holding most bytes."""
    share: dict[str, int] = {}
    for r in alloc.rows:
        share[r.qtype] = share.get(r.qtype, 0) + r.nbytes
    return next((_FTYPE_OF[t] for t in sorted(share, key=lambda t: -share[t]) if t in _FTYPE_OF), "Q8_0")


# --------------------------------------------------------------------------- report rows

_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()  # per model, for its lifetime


def _options_for(model: Any, tokens: Any, window: int, max_windows: int, progress: Any) -> dict[str, list[Option]]:
    """Sensitivities of ``model`` on ``tokens``, computed once per model and token content."""
    key = (np.asarray(tokens, dtype=np.int64).tobytes(), window, max_windows)
    per_model = _CACHE.setdefault(model, {})
    if key not in per_model:
        curv = curvature(model, tokens, window, max_windows)
        per_model[key] = sensitivities(model, curv, progress=progress)
    return per_model[key]


def mix_method(ftype: str) -> Callable[[Any, Any], Any]:
    """A ``refquant.report`` method: refquant's allocation at the bytes of llama.cpp's ``ftype`` mixture."""

    def method(model: Any, ctx: Any) -> Any:
        from . import report

        window, n = (128, 2) if ctx.quick else (256, 4)
        from .gguf import recipes

        options = _options_for(model, ctx.calib_tokens, window, n, ctx.progress)
        options = {k: v for k, v in options.items() if k in set(ctx.select(options))}
        options = fair_options(options, recipes.tensor_types(model, ftype))  # no lossless re-encoding the mixture lacks
        budget = mixture_bytes(model, ftype, options)
        alloc = allocate(options, budget)
        return report.Quantized(quantized_weights(model, alloc.types), alloc.nbytes)

    method.__doc__ = (f"refquant's allocation at llama.cpp {ftype}'s bytes: one GGUF type per tensor by an exact "
                      f"knapsack over a Fisher-weighted error proxy (calibration text); lossless re-encodings "
                      f"of the source only where {ftype} has them too (fair_options)")
    return method
