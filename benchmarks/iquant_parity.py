"""Per-type parity counts for the 13 types of ggml's low-bit families, against libggml 0.20.2.

For each type, with and without an importance matrix (the three that require one get one in
both runs' place), quantize:

* real-looking rows: Student-t (ν = 5) × 0.02, the shape of LLM weights;
* edge rows: ``refquant.testing.strategies.seeded_edge_block`` of every edge kind (signed zeros,
  all ±0, a zero at the extreme, subnormals, fp16-overflowing scales, huge magnitudes), each
  block drawn afresh;

and count the blocks whose bytes equal ``ggml_quantize_chunk``'s, the decoded floats that equal
``to_float``'s bit for bit, and — for the lattice types, where libggml aborts on weights whose
weighted errors overflow float32 — the rows refquant refuses exactly where libggml aborts (run in
a forked child). Prints a Markdown table.

    python benchmarks/iquant_parity.py [--rows N] [--seed S]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

import refquant.gguf as rg
from refquant.testing import strategies as rst
from refquant.testing.ggml import ggml_dequantize, ggml_quantize_or_abort

TYPES = ("IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M", "TQ1_0", "TQ2_0", "MXFP4", "NVFP4",
         "Q1_0", "Q2_0")


def rows_for(rng: np.random.Generator, n_rows: int, width: int, block: int) -> list[np.ndarray]:
    """(1, width) rows: n_rows Student-t rows, then one row per edge kind of width // block fresh blocks."""
    out = [(rng.standard_t(5, (1, width)) * 0.02).astype(np.float32) for _ in range(n_rows)]
    for kind in rst.EDGE_KINDS:
        for _ in range(max(1, n_rows // 4)):
            out.append(np.concatenate([rst.seeded_edge_block(kind, rng, block) for _ in range(width // block)])[None])
    return out


def count(qtype: str, rows: list[np.ndarray], imatrix: np.ndarray | None) -> dict[str, int]:
    c = dict(rows=0, blocks=0, equal=0, decoded_equal=0, refused=0, refused_where_aborts=0)
    for x in rows:
        c["rows"] += 1
        theirs = ggml_quantize_or_abort(x, qtype, imatrix)
        try:
            ours = np.asarray(rg.quantize(x, qtype, imatrix=imatrix))
        except ValueError:
            c["refused"] += 1
            c["refused_where_aborts"] += theirs is None
            continue
        size = rg.ggml_type(qtype).type_size
        nb = ours.size // size
        c["blocks"] += nb
        if theirs is None:
            continue  # libggml aborted where refquant did not: counted as blocks that differ
        c["equal"] += int((ours.reshape(nb, size) == theirs.reshape(nb, size)).all(axis=1).sum())
        dec = np.asarray(rg.dequantize(ours, qtype)).view(np.uint32)
        ref = ggml_dequantize(ours, qtype).view(np.uint32)
        c["decoded_equal"] += int(np.array_equal(dec, ref)) * nb
    return c


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=16, help="Student-t rows per type and imatrix setting")
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}, "
          f"{a.rows} Student-t rows of {a.width} + {max(1, a.rows // 4)} rows per edge kind, seed {a.seed}")
    print("| type | imatrix | rows | blocks | bytes equal | decoded equal | refused (= libggml aborts) | s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    total_bad = 0
    for qtype in TYPES:
        block = rg.ggml_type(qtype).block_size
        required = rg.codec(qtype).imatrix == rg.REQUIRED
        for with_imatrix in (False, True):
            rng = np.random.default_rng([a.seed, TYPES.index(qtype), with_imatrix])
            rows = rows_for(rng, a.rows, a.width, block)
            imatrix = None
            if with_imatrix or required:  # required types: ones in the "no imatrix" run (llama.cpp refuses none)
                imatrix = (np.ones(a.width) if not with_imatrix else 1 + rng.random(a.width)).astype(np.float32)
            t0 = time.perf_counter()
            c = count(qtype, rows, imatrix)
            label = ("ones" if required else "none") if not with_imatrix else "1 + U(0,1)"
            print(f"| {qtype} | {label} | {c['rows']} | {c['blocks']} | {c['equal']} | {c['decoded_equal']} | "
                  f"{c['refused']} ({c['refused_where_aborts']}) | {time.perf_counter() - t0:.1f} |", flush=True)
            total_bad += (c["blocks"] - c["equal"]) + (c["blocks"] - c["decoded_equal"]) + (
                c["refused"] - c["refused_where_aborts"])
    print(f"mismatches: {total_bad}")
    return 1 if total_bad else 0


if __name__ == "__main__":
    sys.exit(main())
