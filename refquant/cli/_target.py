"""``refquant quantize --target-bpw / --target-size [--dry-run]``: refquant's allocation as a file.

The model is loaded by refquant's runtime, its curvature measured on the calibration split
(``refquant.allocate.curvature``), every quantizable tensor's predicted cost computed for every
type that fits its rows (``sensitivities``, quantized with ``--imatrix`` when given, as the file
will be), and the exact knapsack picks one type per tensor (``allocate``). The budget:

    --target-bpw B     8 · (every tensor's bytes) / (every parameter) ≤ B   (QuantizeSummary.bpw_out)
    --target-size S    the whole file ≤ S bytes: S minus the header (the input's, plus the keys
                       quantize_file adds, padded) and the alignment padding any tensor may need

The file is written by ``refquant.gguf.convert.quantize_file(types_override=...)``; --dry-run
prints the allocation table (tensor, type, bytes, predicted Δ) and writes nothing.

Lossless re-encodings (``Option.lossless``: a tensor of an already quantized input kept in its
own type) stay candidates here: for someone shrinking that file they are the best buy. Only a
comparison against a mixture removes them (``allocate.fair_options``, the report rows).
"""

from __future__ import annotations

import argparse
import math
import os

from .._errors import UserError

__all__ = ["run_target", "CALIB_WINDOW", "CALIB_WINDOWS"]

CALIB_WINDOW, CALIB_WINDOWS = 256, 4  # calibration: 4 windows of 256 tokens of the calibration split
_HEADER_SLACK = 2 * (8 + 32 + 4 + 4)  # two uint32 keys quantize_file may add (key length, name, type, value)


def _budget(args: argparse.Namespace, src) -> int:
    """Bytes the allocated and fixed tensors may take together."""
    n_params = sum(t.n_elements for t in src.tensors.values())
    if args.target_bpw is not None:
        if not math.isfinite(args.target_bpw) or args.target_bpw <= 0:
            raise UserError(f"--target-bpw: expected a positive number of bits per weight, got {args.target_bpw}")
        return math.floor(args.target_bpw * n_params / 8)
    from ..allocate import parse_size

    try:
        size = parse_size(args.target_size, "--target-size")
    except ValueError as e:
        raise UserError(str(e)) from None
    a = src.alignment
    header = -(-(src.data_offset + _HEADER_SLACK) // a) * a
    return size - header - (a - 1) * len(src.tensors)


def run_target(args: argparse.Namespace, check_paths, load_imatrix) -> int:
    from .. import allocate as A
    from ..gguf import convert, file
    from ..gguf.file import GGUFFormatError
    from ..model import data, load_model

    if args.target_bpw is None and args.target_size is None:
        raise UserError("--type: required unless --target-bpw or --target-size is given"
                        + (" (--dry-run prints an allocation)" if args.dry_run else ""))
    if args.target_bpw is not None and args.target_size is not None:
        raise UserError("--target-bpw, --target-size: give one budget, not both")
    if args.type is not None:
        raise UserError("--type: a target allocates one type per tensor; drop --type or the target")
    check_paths(args)
    imatrix = load_imatrix(args.imatrix) if args.imatrix else None
    try:
        with file.read(args.input) as src:
            budget = _budget(args, src)
        model = load_model(args.input)
    except GGUFFormatError as e:
        raise UserError(f"input: {args.input!r}: not a valid GGUF file: {e}") from None
    except (ValueError, KeyError) as e:
        raise UserError(f"input: {args.input!r}: {e}") from None
    if model.tokenizer is None:
        raise UserError(f"input: {args.input!r} has no tokenizer: the calibration text cannot be read")
    tokens = model.tokenize(data.calibration_text())
    window = min(CALIB_WINDOW, len(tokens))
    curv = A.curvature(model, tokens, window, CALIB_WINDOWS)
    options = A.sensitivities(model, curv, imatrix=imatrix)
    fixed = sum(4 * int(w.size) for n, w in model.weights.items() if n not in options)  # norms: F32 in the file
    try:
        alloc = A.allocate(options, budget, fixed_bytes=fixed)
    except ValueError as e:
        smallest = sum(min(o.nbytes for o in opts) for opts in options.values()) + fixed
        raise UserError(f"--target-{'bpw' if args.target_bpw is not None else 'size'}: too small; the smallest "
                        f"allocation takes {smallest:,} bytes of tensors ({e})") from None
    if args.dry_run:
        print(alloc.table())
        return 0
    try:
        summary = convert.quantize_file(args.input, args.output, A.ftype_for(alloc), imatrix,
                                        types_override=alloc.types, threads=args.threads)
    except (ValueError, TypeError) as e:
        raise UserError(str(e)) from None
    print(f"{args.output}: refquant allocation (predicted Δ mean NLL {alloc.predicted:.4f}, knapsack "
          f"{alloc.seconds:.2f} s): {summary.table()}; file {os.path.getsize(args.output):,} bytes")
    return 0
