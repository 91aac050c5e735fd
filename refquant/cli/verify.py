"""``refquant verify``: refquant's parity checks against the oracles installed here (``refquant.verify``)."""

from __future__ import annotations

import argparse
import importlib.util
import sys

from .. import verify
from .._errors import UserError

__all__ = ["add_arguments", "run", "DESCRIPTION"]

DESCRIPTION = verify.__doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("example:\n  refquant verify\n  refquant verify --formats Q4_K,Q6_K,NF4\n"
                     f"formats: {', '.join(dict.fromkeys(c.format for c in verify.CHECKS))}")
    parser.add_argument("--formats", metavar="LIST", help="comma-separated formats to check (default: all)")
    parser.add_argument("--list", action="store_true", help="list the checks without running them")


def _quiet_oracle_logs() -> None:
    """llm-compressor logs a warning through loguru on import when no GPU is present; the
    table is the output here. loguru comes with llm-compressor: nothing to quiet without it."""
    if importlib.util.find_spec("loguru") is None:
        return
    from loguru import logger

    logger.disable("llmcompressor")
    logger.disable("compressed_tensors")


def run(args: argparse.Namespace) -> int:
    """The table of every selected check; exit status 0 when all that ran passed, 1 otherwise."""
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
    return 0 if all(r.status in ("pass", "skip") for r in results) else 1
