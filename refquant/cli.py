"""The ``refquant`` command line.

    refquant report                       the main job: every method on SmolLM2-135M, measured
    refquant quantize IN.gguf OUT.gguf --type Q4_K_M
    refquant inspect FILE.gguf
    refquant verify                       refquant's parity checks against the installed oracles

Each command lives in its own module, which defines ``add_arguments(parser)`` and
``run(args) -> int``. A user mistake (missing file, unknown type) raises ``UserError``
and is printed as one line, with exit status 2 — no traceback. So is any OSError that
escapes a command (a full disk, a read-only folder): ``PATH: strerror``, exit status 2.

Path arguments are checked before any work with ``input_file``, ``output_file`` and
``output_folder``: an input must be a regular file (a FIFO would block open(), a device
would read forever), an output file's folder must exist, and an existing output that is
not a regular file (a device, a FIFO, a folder) is refused rather than replaced.
"""

from __future__ import annotations

import argparse
import importlib
import os
import stat
import sys

__all__ = ["main", "UserError", "COMMANDS", "input_file", "output_file", "output_folder"]


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


def _kind(mode: int) -> str:
    from .gguf.file import file_kind

    return file_kind(mode)


def input_file(path: str, arg: str) -> str:
    """``path`` (argument ``arg``) must be an existing regular file, or a symlink to one."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{arg}: no such file {path!r}") from None
    except OSError as e:
        raise UserError(f"{arg}: cannot read {path!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{arg}: {path!r} is {_kind(st.st_mode)}, expected a regular file")
    return path


def output_file(path: str, arg: str) -> str:
    """``path`` may be written (atomically): its folder exists, and it is absent or a regular file."""
    folder = os.path.dirname(os.path.abspath(path))
    try:
        st = os.stat(folder)
    except FileNotFoundError:
        raise UserError(f"{arg}: no such folder {folder!r} (for {path!r})") from None
    except OSError as e:
        raise UserError(f"{arg}: cannot write {path!r}: {e.strerror or e}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{arg}: cannot write {path!r}: {folder!r} is {_kind(st.st_mode)}, not a folder")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise UserError(f"{arg}: cannot write {path!r}: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise UserError(f"{arg}: {path!r} is {_kind(st.st_mode)}; refusing to replace it with a file")
    return path


def output_folder(path: str, arg: str) -> str:
    """``path`` is a folder, or absent (it will be created); anything else is refused."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return path
    except OSError as e:
        raise UserError(f"{arg}: cannot write into {path!r} ({e.strerror or e})") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UserError(f"{arg}: {path!r} is {_kind(st.st_mode)}, expected a folder")
    return path


def _os_error(e: OSError) -> str:
    """One line for an OSError: 'PATH: strerror' (both paths of a rename)."""
    what = e.strerror or str(e)
    if e.filename is not None and e.filename2 is not None:
        return f"{e.filename!r} -> {e.filename2!r}: {what}"
    return f"{e.filename!r}: {what}" if e.filename is not None else what


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
    except OSError as e:  # the file system said no (disk full, read-only, ...): one line, as promised
        print(f"refquant {args.command}: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"refquant {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # `python -m refquant.cli`: run the imported module's main, so that the UserError the
    # commands raise (refquant.cli.UserError) is the class caught there, not __main__'s copy
    from refquant.cli import main as _main

    raise SystemExit(_main())
