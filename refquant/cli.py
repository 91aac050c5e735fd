"""The ``refquant`` command line.

    refquant report                       the main job: every method on SmolLM2-135M, measured
    refquant quantize IN.gguf OUT.gguf --type Q4_K_M
    refquant inspect FILE.gguf
    refquant verify                       refquant's parity checks against the installed oracles

Each command lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``. A user mistake (missing file, unknown type) raises ``UserError``
and is printed as one line, with exit status 2 — no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

__all__ = ["main", "UserError", "COMMANDS"]


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


# command -> (module, one-line help)
COMMANDS = {
    "report": ("refquant.report", "quantize a model with every method and print the measured tables"),
    "quantize": ("refquant.gguf.recipes", "quantize a GGUF model file to a llama.cpp type or mixture"),
    "inspect": ("refquant.gguf.inspect", "print a GGUF file's tensor table and metadata"),
    "verify": ("refquant.verify", "run refquant's parity checks against the oracles installed here"),
}

# command -> example lines for --help, used when the command's module sets no epilog itself
EXAMPLES = {
    "report": ["refquant report --quick", "refquant report --methods INT8,GPTQ-4-G128,Q4_K_M --out results/"],
    "quantize": ["refquant quantize model-f16.gguf model-Q4_K_M.gguf --type Q4_K_M",
                 "refquant quantize model-f16.gguf model-IQ4_XS.gguf --type IQ4_XS --imatrix imatrix.gguf"],
    "inspect": ["refquant inspect model.gguf", "refquant inspect model.gguf --no-metadata"],
    "verify": ["refquant verify", "refquant verify --formats Q4_K,NF4,GPTQ"],
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (no usage dump), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="refquant", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith("refquant"):
                continue  # command not built yet
            raise
        p = sub.add_parser(name, help=help_, description=mod.__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        if not p.epilog and name in EXAMPLES:
            p.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except UserError as e:
        print(f"refquant {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"refquant {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m refquant.cli`: run the imported module's main, so that the UserError the
    # commands raise (refquant.cli.UserError) is the class caught there, not __main__'s copy
    from refquant.cli import main as _main

    raise SystemExit(_main())
