"""What the report's i-quant rows (``refquant report --iquants``) cost on SmolLM2-135M.

    python benchmarks/report_iquants.py            # a few minutes on 2 cores

1. Encoders, one real tensor each with the calibration text's imatrix (``refquant.imatrix``,
   1024 tokens, chunks of 512): ``refquant.gguf.quantize`` against libggml's
   ``ggml_quantize_chunk`` (single-threaded C) on the same input, bytes asserted equal first;
   a warm-up run of each side (the neighbour maps are built there), then one timed run.
2. Whole rows: ``report.METHODS[name](model, ctx)`` for every tensor, the imatrix already
   computed (its own time is printed once), against the Q4_K_M row timed in the same run.
The load average (``os.getloadavg``) is printed before and after each part.
"""

from __future__ import annotations

import os
import time

import numpy as np

from refquant import gguf, report
from refquant._data import smollm2_path
from refquant.model import data, load_model
from refquant.testing.ggml import ggml_quantize

# (type, tensor): each type on a tensor the mixtures give it (SmolLM2's 576-wide rows take IQ4_NL)
ENCODERS = (("IQ3_S", "blk.20.ffn_down.weight"), ("IQ2_S", "blk.20.ffn_down.weight"),
            ("IQ1_M", "blk.20.ffn_down.weight"), ("TQ2_0", "blk.20.ffn_down.weight"),
            ("Q2_K", "blk.1.ffn_down.weight"), ("IQ4_NL", "blk.20.ffn_up.weight"), ("Q4_K", "blk.20.ffn_down.weight"))
ROWS = ("Q4_K_M", "TQ2_0", "IQ3_M", "IQ2_M", "IQ1_M")
CALIB_TOKENS = 1024  # the default report protocol's calibration tokens (refquant.cli.report.PROTOCOLS)


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _load() -> str:
    return "load " + " ".join(f"{v:.1f}" for v in os.getloadavg())


def main() -> None:
    model = load_model(smollm2_path())
    calib = list(model.tokenize(data.calibration_text()))[:CALIB_TOKENS]
    ctx = report.Context(calib_tokens=calib)
    qw, t_im = _timed(lambda: report.calibration_imatrix(model, ctx))
    print(f"# {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} cores; imatrix of "
          f"{len(calib)} tokens {t_im:.1f} s; {_load()}")
    print("| type | tensor | refquant (s) | libggml C, 1 thread (s) | C/refquant |\n|---|---|---:|---:|---:|")
    for qtype, name in ENCODERS:
        W = np.ascontiguousarray(np.asarray(model.weights[name], dtype=np.float32))
        imatrix = None if qtype == "TQ2_0" else qw[name]
        ours, theirs = gguf.quantize(W, qtype, imatrix=imatrix), ggml_quantize(W, qtype, imatrix)
        assert np.array_equal(ours, theirs), qtype  # the same bytes, or no timing
        _, t_rq = _timed(lambda: gguf.quantize(W, qtype, imatrix=imatrix))
        _, t_c = _timed(lambda: ggml_quantize(W, qtype, imatrix))
        print(f"| {qtype} | {name} {W.shape[0]}×{W.shape[1]} | {t_rq:.2f} | {t_c:.2f} | {t_c / t_rq:.2f} |", flush=True)
    print(f"# {_load()}")
    print("| row | seconds | × the Q4_K_M row |\n|---|---:|---:|")
    anchor = None
    for name in ROWS:
        _, t = _timed(lambda: report.METHODS[name](model, ctx))
        anchor = anchor or t
        print(f"| {name} | {t:.1f} | {t / anchor:.2f} |", flush=True)
    print(f"# {_load()}")


if __name__ == "__main__":
    main()
