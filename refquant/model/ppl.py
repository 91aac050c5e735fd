"""Perplexity over non-overlapping windows, in the two protocols of the literature.

    PPL = exp( (1/N) Σ_scored −log p(t_{j+1} | t_0..t_j) ),   log p = logit_t − logsumexp(logits)

The token stream is cut into ⌊len/W⌋ windows of W tokens (the remainder is dropped),
each evaluated from an empty context. Which predictions count:

    protocol="all"        positions 0..W−2 predict tokens 1..W−1: W−1 per window.
                          GPTQ's and AWQ's evaluation (their ``ppl`` on WikiText-2,
                          with W = 2048; HF ``labels`` shifted by one).
    protocol="llama.cpp"  only the second half: positions ⌊W/2⌋..W−2 predict tokens
                          ⌊W/2⌋+1..W−1, so every scored token sees at least W/2 tokens of
                          context: W − ⌊W/2⌋ − 1 per window. llama.cpp's
                          ``llama-perplexity`` (tools/perplexity/perplexity.cpp,
                          ``perplexity()``: ``first = n_ctx/2``); when the vocabulary adds
                          BOS it also overwrites each window's first token with BOS.

The log-sum-exp is taken in float32 over the vocabulary after subtracting the row
maximum; the per-token NLLs are summed in float64 (as llama.cpp sums them in double).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np

from .._backend import namespace, to_numpy

__all__ = ["perplexity", "PerplexityResult", "token_nll", "windows", "PROTOCOLS"]

PROTOCOLS = ("all", "llama.cpp")


@dataclasses.dataclass
class PerplexityResult:
    """ppl = exp(nll); nll the mean over n_tokens scored tokens in n_windows windows."""

    ppl: float
    nll: float
    n_tokens: int
    n_windows: int
    window: int
    protocol: str
    window_nll: np.ndarray  # (n_windows,) mean NLL of each window's scored tokens

    def __float__(self) -> float:
        return self.ppl


def token_nll(logits: Any, targets: Any) -> np.ndarray:
    """−log softmax(logits)[target] per row.   logits: (T, V), targets: (T,) ints -> (T,) float64

    nll = logsumexp(l) − l_t = (m + log Σ exp(l − m)) − l_t,   m = max l.
    """
    xp = namespace(logits)
    T, V = logits.shape
    targets_np = np.asarray(to_numpy(targets) if not isinstance(targets, (list, tuple)) else targets, dtype=np.int64)
    m = xp.max(logits, axis=-1, keepdims=True)  # (T, 1)
    lse = m[:, 0] + xp.log(xp.sum(xp.exp(logits - m), axis=-1))  # (T,)
    flat = np.arange(T, dtype=np.int64) * V + targets_np  # (T,) index into the flattened logits
    picked = xp.take(xp.reshape(logits, (T * V,)), _like(flat, logits), axis=0)  # (T,)
    return to_numpy(lse).astype(np.float64) - to_numpy(picked).astype(np.float64)


def _like(a: np.ndarray, x: Any) -> Any:
    from .._backend import from_numpy

    return from_numpy(a, like=x)


def windows(tokens: Any, window: int, max_windows: int | None = None) -> np.ndarray:
    """Non-overlapping windows of the token stream: (n_windows, window) int64, remainder dropped."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ValueError(f"window: expected an integer >= 2, got {window!r}")
    ids = np.asarray(to_numpy(tokens) if not isinstance(tokens, (list, tuple)) else tokens)
    if ids.ndim != 1 or ids.dtype.kind not in "iu":
        raise ValueError(f"tokens: expected a 1-D sequence of integer ids, got shape {ids.shape} dtype {ids.dtype}")
    n = len(ids) // window
    if n == 0:
        raise ValueError(f"tokens: {len(ids)} tokens are fewer than one window of {window}")
    if max_windows is not None:
        if isinstance(max_windows, bool) or not isinstance(max_windows, int) or max_windows < 1:
            raise ValueError(f"max_windows: expected a positive integer or None, got {max_windows!r}")
        n = min(n, max_windows)
    return ids[: n * window].astype(np.int64).reshape(n, window)  # (n_windows, window)


def perplexity(model: Any, tokens: Any, window: int = 512, protocol: str = "all",
               max_windows: int | None = None) -> PerplexityResult:
    """Perplexity of ``model`` on ``tokens`` (see the module docstring for the protocols).

    model: a ``LlamaModel`` or any callable mapping a window (W,) of token ids to logits
    (W, vocab) — e.g. ``refquant.testing.llama.LlamaCpp.logits`` — so two runtimes are
    scored on the same windows by the same code.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol: expected one of {PROTOCOLS}, got {protocol!r}")
    forward: Callable[[Any], Any] = getattr(model, "forward", model)
    if not callable(forward):
        raise TypeError(f"model: expected a LlamaModel or a callable tokens -> logits, got {type(model).__name__}")
    chunks = windows(tokens, window, max_windows)  # (n_windows, W)
    first = 0 if protocol == "all" else window // 2  # first scored logit position
    if window - first - 1 < 1:
        raise ValueError(f"window: the llama.cpp protocol scores window - window//2 - 1 tokens; "
                         f"window={window} scores none (use window >= 3)")
    bos = _bos_to_insert(model) if protocol == "llama.cpp" else None
    per_window = []
    for chunk in chunks:
        chunk = chunk.copy()
        if bos is not None:
            chunk[0] = bos
        logits = forward(chunk)  # (W, vocab)
        nll = token_nll(logits[first : window - 1, :], chunk[first + 1 :])  # (W − first − 1,)
        per_window.append(nll)
    all_nll = np.concatenate(per_window)
    mean = float(np.sum(all_nll) / all_nll.size)
    return PerplexityResult(ppl=math.exp(mean), nll=mean, n_tokens=int(all_nll.size), n_windows=len(chunks),
                            window=window, protocol=protocol,
                            window_nll=np.array([float(np.mean(w)) for w in per_window]))


def _bos_to_insert(model: Any) -> int | None:
    tok = getattr(model, "tokenizer", None)
    if tok is not None and getattr(tok, "add_bos", False) and tok.bos_id is not None:
        return int(tok.bos_id)
    return None
