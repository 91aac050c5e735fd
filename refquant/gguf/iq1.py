"""The IQ1 i-quants (IQ1_S, IQ1_M): 1.5- and 1.75-bit codes from a ternary code book.

Ref: ggml-quants.c (quantize_row_iq1_s_impl, quantize_row_iq1_m_impl).
"""

from __future__ import annotations

__all__ = ["CODECS"]

# {type name: (quantize_<t>, dequantize_<t>, imatrix use)}: registered in refquant.gguf.CODECS
CODECS: dict = {}
