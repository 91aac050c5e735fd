"""``refquant verify``: refquant's parity checks against the oracles installed here (``refquant.verify``),
or, with ``--impl package.module:function --format TYPE``, the conformance kit on *your* function
(``refquant.testing.conformance``): exit 0 when it conforms, 1 when it does not, 2 for a usage error."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from .. import verify
from .._errors import UserError

__all__ = ["add_arguments", "run", "DESCRIPTION"]

DESCRIPTION = verify.__doc__ + """
Your own implementation (the conformance kit, refquant.testing.conformance):

    refquant verify --impl mypkg.kernels:quantize_q4_k --format Q4_K
    refquant verify --impl mypkg.kernels:dequantize_q4_k --format Q4_K --direction dequantize --json

The function is imported from the current PYTHONPATH and called with the natural signature of
the format (``refquant verify --format Q4_K --signature`` prints it). Exit status 0 when it
conforms, 1 when a property fails, 2 for a usage error (the module does not import, the
function is missing, an unknown format).
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("example:\n  refquant verify\n  refquant verify --formats Q4_K,Q6_K,NF4\n"
                     f"formats: {', '.join(dict.fromkeys(c.format for c in verify.CHECKS))}")
    parser.add_argument("--formats", metavar="LIST", help="comma-separated formats to check (default: all)")
    parser.add_argument("--list", action="store_true", help="list the checks without running them")
    parser.add_argument("--impl", metavar="MODULE:FUNCTION", help="check your function with the conformance kit")
    parser.add_argument("--format", metavar="TYPE", help="the format --impl implements (Q4_K, NF4, INT4-G32 ...)")
    parser.add_argument("--direction", choices=("quantize", "dequantize"), default="quantize",
                        help="what --impl does (default: quantize)")
    parser.add_argument("--examples", type=int, default=40, metavar="N", help="Hypothesis examples per property")
    parser.add_argument("--imatrix", action="store_true", help="also check impl(x, imatrix) with drawn importance vectors")
    parser.add_argument("--backend", choices=("numpy", "torch", "cupy"), default="numpy",
                        help="the array type --impl receives")
    parser.add_argument("--json", action="store_true", help="print the report as JSON (for CI)")
    parser.add_argument("--signature", action="store_true", help="print the signature --format expects and exit")


def _quiet_oracle_logs() -> None:
    """llm-compressor logs a warning through loguru on import when no GPU is present; the
    table is the output here. loguru comes with llm-compressor: nothing to quiet without it."""
    if importlib.util.find_spec("loguru") is None:
        return
    from loguru import logger

    logger.disable("llmcompressor")
    logger.disable("compressed_tensors")


def _load_impl(spec: str):
    """``package.module:function`` -> the callable, or UserError naming what is wrong."""
    import os

    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise UserError(f"--impl: expected package.module:function, got {spec!r}")
    if os.getcwd() not in sys.path and "" not in sys.path:  # the console script: the current folder too, as python -m
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except Exception as e:  # noqa: BLE001 - any import failure of the user's module is a usage error
        raise UserError(f"--impl: module {module_name!r} does not import ({type(e).__name__}: {e})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise UserError(f"--impl: {module_name} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise UserError(f"--impl: {spec} is not callable ({type(obj).__name__})")
    return obj


def _run_impl(args: argparse.Namespace) -> int:
    from ..testing import conformance

    if not args.format:
        raise UserError("--format: which format does --impl implement? (e.g. --format Q4_K)")
    try:
        conformance.get_format(args.format)
    except ValueError as e:
        raise UserError(f"--format: {e}") from None
    if args.signature:
        print(conformance.signature(args.format, args.direction))
        return 0
    if not args.impl:
        raise UserError("--impl: give the function to check as package.module:function")
    if args.examples < 1:
        raise UserError(f"--examples: expected a positive number, got {args.examples}")
    impl = _load_impl(args.impl)
    report = conformance.check(impl, args.format, args.direction, examples=args.examples, backend=args.backend,
                               imatrix="draw" if args.imatrix else None)
    report.impl = args.impl
    print(report.to_json() if args.json else report.table())
    return 0 if report.ok else 1


def run(args: argparse.Namespace) -> int:
    """The table of every selected check; exit status 0 when all that ran passed, 1 otherwise."""
    if args.impl or args.format or args.signature:
        return _run_impl(args)
    try:
        checks = verify.select(args.formats)
    except ValueError as e:
        raise UserError(f"--formats: {e}") from None
    if args.list:
        for c in checks:
            print(f"{c.format:18s} {c.what:20s} {c.oracle}")
        return 0

    _quiet_oracle_logs()
    done: list[verify.Result] = []

    def progress(res: verify.Result) -> None:
        if sys.stderr.isatty():
            print(f"\r{len(done) + 1}/{len(checks)} {res.check.format} {res.check.what}".ljust(60), end="",
                  file=sys.stderr, flush=True)
        done.append(res)

    results = verify.run_checks(checks, on_result=progress)
    if sys.stderr.isatty():
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    print(verify.format_table(results))
    from ..testing.conformance import oracle_versions

    # on stderr: stdout stays the table and its summary line (scripts read its last line)
    print("proven against: " + ", ".join(f"{k} {v}" for k, v in oracle_versions().items()), file=sys.stderr)
    return 0 if all(r.status in ("pass", "skip") for r in results) else 1
