"""refquant — the readable reference for LLM weight quantization.

Modules (imported on first use):

    refquant.uniform   affine / symmetric INT2..INT8, per-tensor / per-channel / per-group
    refquant.nf4       bitsandbytes' NF4 / FP4 4-bit, double quantization, blockwise 8-bit
    refquant.int8      LLM.int8(): vector-wise int8 with outlier decomposition
    refquant.gguf      llama.cpp's GGUF block formats (Q4_0 ... Q8_0, Q2_K ... Q8_K, IQ4_NL/XS)
                       and a hardened GGUF reader/writer (refquant.gguf.file)
    refquant.gptq      GPTQ (Frantar et al. 2023)
    refquant.awq       AWQ (Lin et al. 2024)
    refquant.model     a NumPy Llama runtime for GGUF models (SmolLM2-135M), perplexity
    refquant.testing   Hypothesis strategies and oracle adapters for verifying other kernels
    refquant.report    every method on one model, measured (bytes through the library, perplexity)
    refquant.verify    refquant's parity checks against the oracles installed here
    refquant.exercises the practice exercises and their checkers
    refquant.cli       the ``refquant`` command (report, quantize, inspect, verify, exercises)

Every numeric function takes arrays of any array-API library (NumPy, CuPy, torch,
array-api-strict) and returns arrays of the same library.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("uniform", "nf4", "int8", "gguf", "gptq", "awq", "model", "testing", "report", "verify",
               "exercises", "cli")

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'refquant' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))
