"""Ternary (TQ1_0, TQ2_0), microscaled floats (MXFP4, NVFP4) and Q1_0 / Q2_0.

Ref: ggml-quants.c (quantize_row_tq1_0_ref, quantize_row_tq2_0_ref, quantize_row_mxfp4_ref, ...).
"""

from __future__ import annotations

__all__ = ["CODECS"]

# {type name: (quantize_<t>, dequantize_<t>, imatrix use)}: registered in refquant.gguf.CODECS
CODECS: dict = {}
