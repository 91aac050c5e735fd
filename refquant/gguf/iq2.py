"""The IQ2 i-quants (IQ2_XXS, IQ2_XS, IQ2_S): 2-bit codes from E8-lattice code books.

Ref: ggml-quants.c (quantize_row_iq2_xxs_impl, quantize_row_iq2_xs_impl, quantize_row_iq2_s_impl, iq2xs_init_impl).
"""

from __future__ import annotations

__all__ = ["CODECS"]

# {type name: (quantize_<t>, dequantize_<t>, imatrix use)}: registered in refquant.gguf.CODECS
CODECS: dict = {}
