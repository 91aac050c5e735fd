"""K-quants Q2_K … Q8_K on one 4096×4096 float32 matrix: refquant vs libggml's C and gguf-py.

    python benchmarks/run.py gguf_kquants

Quantize: refquant.gguf.kquants vs ``ggml_quantize_chunk`` (single-threaded C), without
and with an importance matrix (Q8_K: vs ``quantize_row_q8_K_ref``; it has no imatrix path).
Dequantize: vs gguf-py's ``gguf.quants.dequantize`` (NumPy) and libggml's ``to_float``.
The matrix is Student-t (ν = 5) times 0.02, shaped like LLM weights.
"""

from __future__ import annotations

import numpy as np
from run import Case

from refquant.gguf import kquants as K
from refquant.testing.ggml import ggml_dequantize, ggml_dequantize_row, ggml_quantize, ggml_quantize_row_ref

ROWS = COLS = 4096
TYPES = ("Q4_K", "Q6_K", "Q5_K", "Q3_K", "Q2_K", "Q8_K")


def cases():
    import gguf

    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, (ROWS, COLS)) * 0.02).astype(np.float32)
    imatrix = rng.gamma(0.5, 2.0, COLS).astype(np.float32)
    blocks = x.reshape(-1, K.QK_K)                                      # (65536, 256)
    qw = np.broadcast_to(imatrix, x.shape).reshape(-1, K.QK_K)
    for t in TYPES:
        quantize = getattr(K, f"quantize_{t.lower()}")
        dequantize = getattr(K, f"dequantize_{t.lower()}")
        if t == "Q8_K":
            yield Case("gguf", f"quantize {t} 4096²", lambda q=quantize: q(blocks),
                       "libggml quantize_row_q8_K_ref", lambda: ggml_quantize_row_ref(x, t))
            raw = ggml_quantize_row_ref(x, t)
            yield Case("gguf", f"dequantize {t} 4096²", lambda d=dequantize, r=raw.reshape(-1, K.BLOCK_BYTES[t]): d(r),
                       "libggml dequantize_row_q8_K", lambda r=raw: ggml_dequantize_row(r, "Q8_K"))
            continue
        yield Case("gguf", f"quantize {t} 4096²", lambda q=quantize: q(blocks),
                   "libggml C (1 thread)", lambda t=t: ggml_quantize(x, t))
        yield Case("gguf", f"quantize {t} 4096² imatrix", lambda q=quantize: q(blocks, qw),
                   "libggml C (1 thread)", lambda t=t: ggml_quantize(x, t, imatrix))
        raw = ggml_quantize(x, t)
        flat = raw.reshape(-1, K.BLOCK_BYTES[t])
        gtype = gguf.GGMLQuantizationType[t]
        yield Case("gguf", f"dequantize {t} 4096²", lambda d=dequantize, f=flat: d(f),
                   "gguf-py dequantize", lambda r=raw, g=gtype: gguf.quants.dequantize(r, g))
        yield Case("gguf", f"dequantize {t} 4096²", lambda d=dequantize, f=flat: d(f),
                   "libggml to_float", lambda r=raw, t=t: ggml_dequantize(r, t))
