"""Single-threaded GGUF encoders: libggml's C, refquant at an earlier commit, refquant now — one process.

    python benchmarks/encoders_before_after.py --before b7ffda2 [--rows 1024 --cols 4096 --repeat 3]

The earlier tree's ``refquant`` package is taken from git (``git archive``) into a temporary
directory as ``refquant_before`` (its absolute imports renamed), so both versions and the C
anchor run side by side on the same matrix, interleaved (C, before, now; ``repeat`` rounds),
and each keeps its best time. Times are CPU seconds of this process (``time.process_time``):
on a shared machine wall time mostly measures the other jobs. Ratios are C/refquant
(1.0 = C speed). Every output is compared with libggml's bytes.
The matrix is Student-t (ν = 5) × 0.02; imatrix cases pass one gamma(0.5, 2) vector.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import re
import subprocess
import sys
import tarfile
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

TYPES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
WEIGHTED = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")
_IMPORT = re.compile(r"^(\s*)(from|import) refquant\b", re.MULTILINE)


def load_before(commit: str, where: str):
    """The ``refquant`` package of ``commit``, importable as ``refquant_before``."""
    tar = subprocess.run(["git", "-C", ROOT, "archive", commit, "refquant"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(tar)) as t:
        t.extractall(where, filter="data")
    os.rename(os.path.join(where, "refquant"), os.path.join(where, "refquant_before"))
    for folder, _, files in os.walk(os.path.join(where, "refquant_before")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    text = f.read()
                with open(path, "w", encoding="utf-8") as f:
                    f.write(_IMPORT.sub(r"\1\2 refquant_before", text))
    sys.path.insert(0, where)
    return importlib.import_module("refquant_before.gguf")


def cpu_time(fn) -> tuple[float, object]:
    t0 = time.process_time()
    out = fn()
    return time.process_time() - t0, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", default="b7ffda2")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=4096)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--types", default=",".join(TYPES))
    args = ap.parse_args()

    import refquant.gguf as now
    from refquant.testing.ggml import ggml_quantize

    with tempfile.TemporaryDirectory() as tmp:
        before = load_before(args.before, tmp)
        rng = np.random.default_rng(0)
        x = (rng.standard_t(5, (args.rows, args.cols)) * 0.02).astype(np.float32)
        imatrix = rng.gamma(0.5, 2.0, args.cols).astype(np.float32)
        print(f"{args.rows}x{args.cols} float32, best of {args.repeat}, CPU ms; ratio = C / refquant")
        print("| case | C (ms) | before (ms) | now (ms) | before ratio | now ratio | bytes = C |")
        print("|---|---:|---:|---:|---:|---:|---|")
        for t in args.types.split(","):
            for im in (None, imatrix) if t in WEIGHTED else (None,):
                runs = {"C": lambda: ggml_quantize(x, t, im),
                        "before": lambda: np.asarray(before.quantize(x, t, im)),
                        "now": lambda: np.asarray(now.quantize(x, t, im))}
                best = {k: np.inf for k in runs}
                outs = {}
                for k, fn in runs.items():                             # warm-up
                    outs[k] = fn()
                for _ in range(args.repeat):
                    for k, fn in runs.items():
                        dt, _ = cpu_time(fn)
                        best[k] = min(best[k], dt)
                same = all(np.array_equal(outs[k].reshape(outs["C"].shape), outs["C"]) for k in ("before", "now"))
                name = f"quantize {t}" + (" imatrix" if im is not None else "")
                print(f"| {name} | {best['C'] * 1e3:.1f} | {best['before'] * 1e3:.1f} | {best['now'] * 1e3:.1f} "
                      f"| {best['C'] / best['before']:.2f} | {best['C'] / best['now']:.2f} | {same} |", flush=True)


if __name__ == "__main__":
    main()
