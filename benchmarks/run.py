"""One runner for every benchmark: refquant against its anchor, timed in the same process.

    python benchmarks/run.py                 # every family
    python benchmarks/run.py uniform gguf    # some families (benchmarks/bench_<family>.py)
    python benchmarks/run.py --repeat 5

Each ``bench_<family>.py`` defines ``cases()`` yielding ``Case`` objects: a refquant
callable and an anchor callable (torch, bitsandbytes, gguf-py, libggml, llama.cpp ...)
doing the same work on the same input. We print best-of-``repeat`` wall times and the
ratio anchor/refquant (> 1 means refquant is faster). Set-up (input creation, warm-up)
is not timed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import platform
import sys
import time
from typing import Callable

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass
class Case:
    family: str
    name: str
    refquant: Callable[[], object]
    anchor_name: str
    anchor: Callable[[], object] | None
    note: str | Callable[[], str] = ""  # printed under the table; a callable is asked after the case ran


def best_time(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up: first-call costs (imports, caches, thread pools) are not the kernel
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def machine() -> str:
    try:
        import numpy as np

        npv = np.__version__
    except ImportError:  # pragma: no cover
        npv = "?"
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, NumPy {npv}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("families", nargs="*", help="families to run (default: all bench_*.py)")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    here = os.path.dirname(os.path.abspath(__file__))
    fams = args.families or sorted(f[6:-3] for f in os.listdir(here) if f.startswith("bench_") and f.endswith(".py"))
    print(f"# {time.strftime('%Y-%m-%d')} — {machine()}")
    print(f"| family | case | refquant (ms) | anchor | anchor (ms) | anchor/refquant |")
    print(f"|---|---|---:|---|---:|---:|")
    notes = []
    for fam in fams:
        mod = importlib.import_module(f"bench_{fam}")
        for case in mod.cases():
            t_rq = best_time(case.refquant, args.repeat)
            if case.anchor is None:
                print(f"| {case.family} | {case.name} | {t_rq*1e3:.1f} | {case.anchor_name} | — | — |", flush=True)
                continue
            t_an = best_time(case.anchor, args.repeat)
            print(f"| {case.family} | {case.name} | {t_rq*1e3:.1f} | {case.anchor_name} | {t_an*1e3:.1f} | {t_an/t_rq:.2f} |", flush=True)
            if callable(case.note):
                notes.append(case.note())
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
