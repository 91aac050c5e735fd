"""The ``refquant`` command line.

    refquant report                       the main job: every method on SmolLM2-135M, measured
    refquant quantize IN.gguf OUT.gguf --type Q4_K_M
    refquant inspect FILE.gguf
    refquant verify                       refquant's parity checks against the installed oracles
    refquant exercises                    the practice exercises; `exercises check NAME` runs one

Each command lives in its own module of this package (``refquant.cli.report`` ...), which
defines ``add_arguments(parser)`` and ``run(args) -> int`` over the library's functions;
the library never imports this package. A user mistake (missing file, unknown type) raises
``UserError`` (``refquant._errors``, re-exported here) and is printed as one line, with exit
status 2 — no traceback. So is a missing optional package (``MissingDependency``, with how
to install it) and any OSError that escapes a command (a full disk, a read-only folder):
``PATH: strerror``, exit status 2.

Path arguments are checked before any work with ``input_file``, ``output_file`` and
``output_folder``: an input must be a regular file (a FIFO would block open(), a device
would read forever), an output file's folder must exist, and an existing output that is
not a regular file (a device, a FIFO, a folder) is refused rather than replaced.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from .._errors import MissingDependency, UserError
from ._paths import input_file, output_file, output_folder

__all__ = ["main", "build_parser", "UserError", "COMMANDS", "input_file", "output_file", "output_folder"]

# command -> (module, one-line help)
COMMANDS = {
    "report": ("refquant.cli.report", "quantize a model with every method and print the measured tables"),
    "quantize": ("refquant.cli.quantize", "quantize a GGUF model file to a llama.cpp type or mixture"),
    "inspect": ("refquant.cli.inspect", "print a GGUF file's tensor table and metadata"),
    "verify": ("refquant.cli.verify", "run refquant's parity checks against the oracles installed here"),
    "exercises": ("refquant.cli.exercises", "list the practice exercises, or check an attempt at one"),
    "imatrix": ("refquant.cli.imatrix", "compute an importance matrix (llama-imatrix's GGUF file) with refquant's runtime"),
    "finetune": ("refquant.cli.finetune", "QLoRA: train LoRA adapters on a frozen 4-bit SmolLM2, report perplexity before/after"),
}

# command -> example lines for --help, used when the command's module sets no epilog itself
EXAMPLES = {
    "report": ["refquant report --quick", "refquant report --methods INT8,GPTQ-4-G128,Q4_K_M --out results/"],
    "quantize": ["refquant quantize model-f16.gguf model-Q4_K_M.gguf --type Q4_K_M",
                 "refquant quantize model-f16.gguf model-IQ4_XS.gguf --type IQ4_XS --imatrix imatrix.gguf"],
    "inspect": ["refquant inspect model.gguf", "refquant inspect model.gguf --no-metadata"],
    "verify": ["refquant verify", "refquant verify --formats Q4_K,NF4,GPTQ"],
    "exercises": ["refquant exercises", "refquant exercises check group_quant --file my_attempt"],
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (no usage dump), exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command. A command module that fails to import raises: a broken
    or mistyped import is a bug to see, never a command that silently goes missing."""
    parser = _Parser(prog="refquant", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        mod = importlib.import_module(module)
        p = sub.add_parser(name, help=help_, description=getattr(mod, "DESCRIPTION", mod.__doc__),
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        mod.add_arguments(p)
        if not p.epilog and name in EXAMPLES:
            p.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
        p.set_defaults(_run=mod.run)
    return parser


def _os_error(e: OSError) -> str:
    """One line for an OSError: 'PATH: strerror' (both paths of a rename)."""
    what = e.strerror or str(e)
    if e.filename is not None and e.filename2 is not None:
        return f"{e.filename!r} -> {e.filename2!r}: {what}"
    return f"{e.filename!r}: {what}" if e.filename is not None else what


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except (UserError, MissingDependency) as e:
        print(f"refquant {args.command}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # the file system said no (disk full, read-only, ...): one line, as promised
        print(f"refquant {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"refquant {args.command}: interrupted", file=sys.stderr)
        return 130
