"""Legacy GGUF types, IQ4 and plain floats on one 4096×4096 float32 matrix, through the public API.

    python benchmarks/run.py gguf

Quantize: ``refquant.gguf.quantize`` vs gguf-py's ``gguf.quants.quantize`` (the legacy
types and BF16/F16, the ones gguf-py can encode) and vs libggml's ``ggml_quantize_chunk``
(single-threaded C), with and without an importance matrix.
Dequantize: ``refquant.gguf.dequantize`` vs gguf-py's ``gguf.quants.dequantize`` and
libggml's ``to_float``. (The k-quants are in bench_gguf_kquants.py.)
The matrix is Student-t (ν = 5) times 0.02, shaped like LLM weights.
"""

from __future__ import annotations

import numpy as np
from run import Case

import refquant.gguf as rg
from refquant.testing.ggml import ggml_dequantize, ggml_quantize

ROWS = COLS = 4096
GGUF_PY_ENCODES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16", "F16")
TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "IQ4_XS", "BF16", "F16")
WEIGHTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS")


def cases():
    import gguf
    from gguf import quants

    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, (ROWS, COLS)) * 0.02).astype(np.float32)
    imatrix = rng.gamma(0.5, 2.0, COLS).astype(np.float32)
    shape = f"{ROWS}²"
    for t in TYPES:
        g = gguf.GGMLQuantizationType[t]
        if t in GGUF_PY_ENCODES:
            yield Case("gguf", f"quantize {t} {shape}", lambda t=t: rg.quantize(x, t),
                       "gguf-py quantize", lambda g=g: quants.quantize(x, g))
        yield Case("gguf", f"quantize {t} {shape}", lambda t=t: rg.quantize(x, t),
                   "libggml C (1 thread)", lambda t=t: ggml_quantize(x, t))
        if t in WEIGHTED:
            yield Case("gguf", f"quantize {t} {shape} imatrix", lambda t=t: rg.quantize(x, t, imatrix),
                       "libggml C (1 thread)", lambda t=t: ggml_quantize(x, t, imatrix))
    for t in TYPES:
        raw = ggml_quantize(x, t)
        g = gguf.GGMLQuantizationType[t]
        yield Case("gguf", f"dequantize {t} {shape}", lambda r=raw, t=t: rg.dequantize(r, t),
                   "gguf-py dequantize", lambda r=raw, g=g: quants.dequantize(r, g))
        yield Case("gguf", f"dequantize {t} {shape}", lambda r=raw, t=t: rg.dequantize(r, t),
                   "libggml to_float", lambda r=raw, t=t: ggml_dequantize(r, t))
