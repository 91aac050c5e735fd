"""llama.cpp as an oracle for the whole model, through ``llama-cpp-python``.

    oracle = LlamaCpp(path)                 # the same GGUF file refquant.model loads
    oracle.tokenize(text)                   # llama_tokenize(add_special=True, parse_special=False)
    oracle.logits(tokens)                   # (T, vocab) float32, every position, fresh context

``logits`` evaluates one window from an empty KV cache (positions 0..T−1), like
``refquant.model.LlamaModel.forward``, so ``refquant.model.perplexity(oracle.logits, ...)``
scores llama.cpp on exactly the windows refquant is scored on. llama.cpp multiplies the
quantized weights with activations it quantizes to 8 bits per block of 32 (Q8_1 for
Q4_1 weights, Q8_0 for the Q8_0 output matrix) and keeps K and V in float16, so its
logits are close to, not equal to, a float32 forward pass.
"""

from __future__ import annotations

import atexit
import functools
import os
from typing import Sequence

import numpy as np

from . import OracleUnavailable

__all__ = ["LlamaCpp", "llama_cpp_oracle"]


class LlamaCpp:
    """One llama.cpp context over a GGUF file: tokenizer and all-position logits."""

    def __init__(self, path: str | None = None, n_ctx: int = 512, n_threads: int = 2):
        try:
            import llama_cpp
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise OracleUnavailable("the llama.cpp oracle needs `pip install llama-cpp-python`") from e
        if path is None:
            from .._data import smollm2_path

            path = smollm2_path()
        self.path = os.fspath(path)
        self.n_ctx = n_ctx
        self.llm = llama_cpp.Llama(model_path=self.path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                   n_threads=n_threads, n_threads_batch=n_threads, logits_all=True,
                                   verbose=False)
        atexit.register(self.llm.close)  # free the context before the interpreter tears down ctypes

    def tokenize(self, text: str) -> list[int]:
        """Token ids as ``llama_tokenize(text, add_special=True, parse_special=False)``."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize([int(t) for t in tokens]).decode("utf-8", errors="replace")

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits of every position of one window, from an empty context: (T, vocab) float32."""
        ids = [int(t) for t in np.asarray(tokens).reshape(-1)]
        if not 0 < len(ids) <= self.n_ctx:
            raise ValueError(f"tokens: expected 1..{self.n_ctx} tokens (n_ctx), got {len(ids)}")
        self.llm.reset()  # drop the KV cache: positions restart at 0
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)  # (T, vocab), a copy

    forward = logits


@functools.lru_cache(maxsize=2)
def llama_cpp_oracle(path: str | None = None, n_ctx: int = 512, n_threads: int = 2) -> LlamaCpp:
    """A cached ``LlamaCpp`` (building a context takes a moment)."""
    return LlamaCpp(path, n_ctx=n_ctx, n_threads=n_threads)
