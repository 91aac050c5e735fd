"""TQ1_0, TQ2_0, MXFP4, NVFP4, Q1_0, Q2_0 on one 4096×4096 float32 matrix: refquant vs libggml's C and gguf-py.

    python benchmarks/run.py gguf_lowbit --repeat 1

Quantize: ``refquant.gguf.quantize`` (its cache-sized chunks included) vs ``ggml_quantize_chunk``
(single-threaded C; these types have no imatrix path, so one case each). Dequantize:
``refquant.gguf.dequantize`` vs libggml's ``to_float`` and, for the four types it knows,
gguf-py's ``gguf.quants.dequantize`` (NumPy). The matrix is Student-t (ν = 5) times 0.02.
"""

from __future__ import annotations

import numpy as np
from run import Case

import refquant.gguf as rg
from refquant.gguf import lowbit
from refquant.testing.ggml import ggml_dequantize, ggml_quantize

ROWS = COLS = 4096
GGUF_PY = ("TQ1_0", "TQ2_0", "MXFP4", "NVFP4")   # gguf-py 0.19 decodes these (not Q1_0, Q2_0)


def cases():
    import gguf

    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, (ROWS, COLS)) * 0.02).astype(np.float32)
    for t in lowbit.CODECS:
        tid = rg.ggml_type(t).id
        yield Case("gguf", f"quantize {t} 4096²", lambda t=t: rg.quantize(x, t),
                   "libggml C (1 thread)", lambda tid=tid: ggml_quantize(x, tid))
        raw = ggml_quantize(x, tid)
        assert np.array_equal(rg.quantize(x, t), raw), t          # the same bytes, or no timing
        if t in GGUF_PY:
            yield Case("gguf", f"dequantize {t} 4096²", lambda r=raw, t=t: rg.dequantize(r, t),
                       "gguf-py dequantize", lambda r=raw, g=gguf.GGMLQuantizationType[t]: gguf.quants.dequantize(r, g))
        yield Case("gguf", f"dequantize {t} 4096²", lambda r=raw, t=t: rg.dequantize(r, t),
                   "libggml to_float", lambda r=raw, tid=tid: ggml_dequantize(r, tid))
