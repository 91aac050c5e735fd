"""Time of the conformance battery per format: one ``refquant verify --impl`` run per format and
direction, on refquant's own codec (``conformance.reference``), default examples.

    python benchmarks/conformance_times.py            # every format, both directions
    python benchmarks/conformance_times.py Q4_K NF4   # some formats

Prints one Markdown row per format: examples run, seconds (the sum of the properties' times
in the run's JSON report, and the run's wall time), and the wall time against the Q8_0
quantize run of the same process (the anchor; > 1 means slower than Q8_0's battery).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from refquant import cli  # noqa: E402
from refquant.testing import conformance  # noqa: E402

ANCHOR = ("Q8_0", "quantize")


def _attr(fmt: str, direction: str) -> str:
    """A Python name for ``--impl``: format names hold '-' and '.' (INT4-G32, LLM.INT8)."""
    return f"ref_{direction}_{fmt.replace('-', '_').replace('.', '_')}"


_NAMES = {_attr(f, d): (f, d) for f in conformance.format_names() for d in conformance.DIRECTIONS}


def __getattr__(name: str):
    """``conformance_times:ref_quantize_Q4_K`` -> refquant's Q4_K encoder with the natural signature."""
    if name not in _NAMES:
        raise AttributeError(name)
    return conformance.reference(*_NAMES[name])


def verify_once(fmt: str, direction: str) -> dict:
    """One ``refquant verify --impl ... --json`` run: its exit status, examples, seconds and wall time."""
    out = io.StringIO()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(out):
        rc = cli.main(["verify", "--impl", f"conformance_times:{_attr(fmt, direction)}", "--format", fmt,
                       "--direction", direction, "--json"])
    wall = time.perf_counter() - t0
    report = json.loads(out.getvalue())
    props = report["properties"]
    return {"rc": rc, "examples": sum(p["examples"] for p in props), "seconds": sum(p["seconds"] for p in props),
            "wall": wall}


def main(argv: list[str]) -> int:
    formats = argv or list(conformance.format_names())
    anchor = verify_once(*ANCHOR)
    print("| format | direction | exit | examples | seconds (properties) | seconds (wall) "
          f"| wall / {ANCHOR[0]} {ANCHOR[1]} |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {ANCHOR[0]} (anchor) | {ANCHOR[1]} | {anchor['rc']} | {anchor['examples']} | {anchor['seconds']:.1f} "
          f"| {anchor['wall']:.1f} | 1.00 |", flush=True)
    total = 0.0
    for fmt in formats:
        for direction in conformance.DIRECTIONS:
            try:
                r = verify_once(fmt, direction)
            except Exception as e:  # noqa: BLE001 - a format that cannot run is a row, not the end of the table
                print(f"| {fmt} | {direction} | error | {type(e).__name__}: {e} | | | |", flush=True)
                continue
            total += r["wall"]
            print(f"| {fmt} | {direction} | {r['rc']} | {r['examples']} | {r['seconds']:.1f} | {r['wall']:.1f} "
                  f"| {r['wall'] / anchor['wall']:.2f} |", flush=True)
    print(f"\ntotal wall {total:.0f} s over {len(formats)} formats", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
