"""The IQ3 i-quants (IQ3_XXS, IQ3_S): 3-bit codes from lattice code books of 4 values.

Ref: ggml-quants.c (quantize_row_iq3_xxs_impl, quantize_row_iq3_s_impl, iq3xs_init_impl).
"""

from __future__ import annotations

__all__ = ["CODECS"]

# {type name: (quantize_<t>, dequantize_<t>, imatrix use)}: registered in refquant.gguf.CODECS
CODECS: dict = {}
