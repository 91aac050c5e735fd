"""``refquant inspect``: print a GGUF file's header, metadata and tensor table (``refquant.gguf.inspect``)."""

from __future__ import annotations

import argparse

from .._errors import UserError
from ..gguf import file as gguf_file
from ..gguf import inspect as gguf_inspect
from ._paths import input_file

__all__ = ["add_arguments", "run", "DESCRIPTION"]

DESCRIPTION = gguf_inspect.__doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="FILE.gguf", help="the GGUF file to inspect")
    parser.add_argument("--no-metadata", action="store_true", help="leave out the metadata")
    parser.add_argument("--no-tensors", action="store_true", help="leave out the tensor table")
    parser.add_argument("--items", type=int, default=4, metavar="N",
                        help="array elements shown per metadata key (default 4)")


def run(args: argparse.Namespace) -> int:
    path = args.path
    if args.items < 0:
        raise UserError(f"--items: expected a count >= 0, got {args.items}")
    input_file(path, "FILE.gguf")  # a FIFO or a device is named as such, never opened
    try:
        f = gguf_file.read(path)
    except gguf_file.GGUFFormatError as e:
        raise UserError(f"{path}: not a valid GGUF file: {e}") from None
    except gguf_file.NotAFileError as e:  # swapped for a FIFO or device since the check
        raise UserError(f"FILE.gguf: {e}") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    with f:
        print(gguf_inspect.format_file(f, path, metadata=not args.no_metadata, tensors=not args.no_tensors,
                                       items=args.items))
    return 0
