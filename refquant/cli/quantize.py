"""``refquant quantize``: a GGUF model file to a llama.cpp type or mixture (``refquant.gguf.recipes``)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

from .._errors import UserError
from ..gguf import convert, recipes
from ..gguf.imatrix import load_imatrix
from ..gguf.file import GGUFFormatError
from ._paths import input_file, output_file

__all__ = ["add_arguments", "run", "DESCRIPTION"]

DESCRIPTION = recipes.__doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", help="GGUF model file to quantize (F32/F16/BF16 or already quantized)")
    parser.add_argument("output", help="where to write the quantized GGUF file (written atomically)")
    parser.add_argument("--type", metavar="T",
                        help=f"llama.cpp file type: {', '.join(recipes.FTYPES)} (Q4_K = Q4_K_M ...); "
                             f"not needed with --target-bpw / --target-size")
    parser.add_argument("--imatrix", metavar="FILE", help="importance matrix from llama-imatrix (.gguf or legacy .dat)")
    parser.add_argument("--target-bpw", type=float, metavar="B",
                        help="refquant's allocation: one type per tensor, at most B bits per weight (refquant.allocate)")
    parser.add_argument("--target-size", metavar="SIZE", help="the same under a file size: bytes, or 90MB, 1.5GiB ...")
    parser.add_argument("--dry-run", action="store_true", help="with a target: print the allocation, write nothing")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help=f"worker threads (default: the machine's {os.cpu_count()} cores); the bytes are the same for every N")
    parser.add_argument("--scheduler", choices=("threads", "dask"), default="threads",
                        help="threads in this process (default), or tasks on a Dask cluster (pip install refquant[dask])")
    parser.add_argument("--address", metavar="URL", help="with --scheduler dask: the scheduler, e.g. tcp://host:8786")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="with --scheduler dask: start a local cluster of N worker processes instead")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (shown on a terminal's stderr)")


def _check_paths(args: argparse.Namespace) -> None:
    """Every path checked before any work: a FIFO is never opened, a device never replaced."""
    input_file(args.input, "input")
    output_file(args.output, "output")
    if args.imatrix:
        input_file(args.imatrix, "--imatrix")
    if os.path.abspath(args.input) == os.path.abspath(args.output) or (
            os.path.exists(args.output) and os.path.samefile(args.input, args.output)):
        raise UserError("output: must differ from the input file")


def _load_imatrix(path: str):
    try:
        return load_imatrix(path)
    except GGUFFormatError as e:
        raise UserError(f"--imatrix: {path!r}: not a valid GGUF file: {e}") from None
    except (ValueError, TypeError) as e:
        raise UserError(f"--imatrix: {e}") from None
    except OSError as e:
        raise UserError(f"--imatrix: cannot read {path!r}: {e.strerror or e}") from None


def _progress(enabled: bool):
    """A bar over the tensors on stderr, when stderr is a terminal (pipes and logs stay clean)."""
    if not enabled or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return lambda names: tqdm(names, desc="tensors", unit="tensor", file=sys.stderr, dynamic_ncols=True)


def _check_scheduler(args: argparse.Namespace) -> None:
    if args.scheduler != "dask":
        if args.address is not None or args.workers is not None:
            raise UserError("--address/--workers: only with --scheduler dask")
        return
    if (args.address is None) == (args.workers is None):
        raise UserError("--scheduler dask: give --address URL (a running scheduler) or --workers N (a local cluster)")
    if args.workers is not None and args.workers < 1:
        raise UserError(f"--workers: expected a positive number of worker processes, got {args.workers}")
    if args.threads is not None:
        raise UserError("--threads: not with --scheduler dask (each worker process runs one piece at a time)")
    if args.type is None or args.target_bpw is not None or args.target_size is not None or args.dry_run:
        raise UserError("--scheduler dask: quantizes with a --type mixture; not with --target-bpw/--target-size/--dry-run")


@contextlib.contextmanager
def _executor(args: argparse.Namespace):
    """None (quantize_file's threads), or a Dask executor on the cluster the flags name."""
    if args.scheduler != "dask":
        yield None
        return
    from .. import distributed  # dask itself is imported (or reported missing) only here

    with contextlib.ExitStack() as stack:
        try:  # only the connection's own errors are the flags' fault; the run's pass through
            client = stack.enter_context(distributed.connect(args.address, args.workers))
        except (ConnectionError, ValueError, TypeError) as e:
            raise UserError(f"--{e}") from None  # "address: ..." -> "--address: ..."
        yield distributed.executor(client)


def run(args: argparse.Namespace) -> int:
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads: expected a positive number of threads, got {args.threads}")
    _check_scheduler(args)
    if args.type is None or args.target_bpw is not None or args.target_size is not None or args.dry_run:
        from ._target import run_target  # refquant's allocation (refquant.allocate) instead of a mixture

        return run_target(args, _check_paths, _load_imatrix)
    try:
        ftype = recipes._ftype_name(args.type)  # "q4_k" -> "Q4_K_M"; an unknown type names the known ones
    except ValueError as e:
        raise UserError(str(e)) from None
    _check_paths(args)
    imatrix = _load_imatrix(args.imatrix) if args.imatrix else None
    try:
        with _executor(args) as executor:
            summary = convert.quantize_file(args.input, args.output, ftype, imatrix,
                                            _progress(not args.no_progress), threads=args.threads, executor=executor)
    except GGUFFormatError as e:
        raise UserError(f"input: {args.input!r}: not a valid GGUF file: {e}") from None
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    except OSError as e:  # reading the input; a failed write (disk full) names the output itself
        if e.filename is not None and os.path.abspath(e.filename) == os.path.abspath(args.input):
            raise UserError(f"input: cannot read {args.input!r}: {e.strerror or e}") from None
        raise
    print(f"{args.output}: {ftype}: {summary.table()}")
    return 0
