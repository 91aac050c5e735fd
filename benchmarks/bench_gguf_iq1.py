"""IQ1_S and IQ1_M on one 64×4096 float32 matrix: refquant vs libggml's C and gguf-py.

    python benchmarks/run.py gguf_iq1 --repeat 1

Quantize (with a flat-plus-noise imatrix: IQ1_S needs one; IQ1_M also without):
``refquant.gguf.quantize`` vs ``ggml_quantize_chunk`` (single-threaded C). The matrix is small
(1024 super-blocks) because the NumPy searches run seconds per thousand super-blocks. Dequantize:
``refquant.gguf.dequantize`` vs libggml's ``to_float`` and gguf-py's ``gguf.quants.dequantize``.
The neighbour maps (ours from refquant.gguf._lattice, libggml's iq2xs_init_impl) are built in
the untimed warm-up. The matrix is Student-t (ν = 5) times 0.02.
"""

from __future__ import annotations

import numpy as np
from run import Case

import refquant.gguf as rg
from refquant.gguf import iq1
from refquant.testing.ggml import ggml_dequantize, ggml_quantize

ROWS, COLS = 64, 4096


def cases():
    import gguf

    rng = np.random.default_rng(0)
    x = (rng.standard_t(5, (ROWS, COLS)) * 0.02).astype(np.float32)
    imatrix = (1 + 0.5 * rng.random(COLS)).astype(np.float32)
    for t in iq1.CODECS:
        tid = rg.ggml_type(t).id
        runs = [("imatrix", imatrix)] + ([("no imatrix", None)] if t == "IQ1_M" else [])
        for label, im in runs:
            raw = ggml_quantize(x, tid, im)
            assert np.array_equal(rg.quantize(x, t, im), raw), t      # the same bytes, or no timing
            yield Case("gguf", f"quantize {t} 64×4096, {label}", lambda t=t, im=im: rg.quantize(x, t, im),
                       "libggml C (1 thread)", lambda tid=tid, im=im: ggml_quantize(x, tid, im))
        yield Case("gguf", f"dequantize {t} 64×4096", lambda r=raw, t=t: rg.dequantize(r, t),
                   "libggml to_float", lambda r=raw, tid=tid: ggml_dequantize(r, tid))
        yield Case("gguf", f"dequantize {t} 64×4096", lambda r=raw, t=t: rg.dequantize(r, t),
                   "gguf-py dequantize", lambda r=raw, g=gguf.GGMLQuantizationType[t]: gguf.quants.dequantize(r, g))
