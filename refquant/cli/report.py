"""``refquant report``: quantize one model with every method and measure it (``refquant.report``).

This module is the command: its arguments, the checks of every path and number before the
long run, the evaluation protocol (tokens, windows, calibration text), the exit status.
The measuring, the table and the files are ``refquant.report``'s.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import os
import platform
import re
import sys
from typing import Any, Callable, Iterable

from .. import report
from .._errors import UserError, require
from ._paths import input_file, output_folder

__all__ = ["add_arguments", "run", "backend_namespace", "PROTOCOLS", "BACKENDS", "DESCRIPTION"]

DESCRIPTION = report.__doc__

# (evaluation tokens, window, calibration tokens): --quick, and the default
PROTOCOLS = {"quick": (1024, 512, 512), "default": (2048, 512, 1024)}
BACKENDS = ("numpy", "torch", "cupy")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = ("example:\n  refquant report --quick\n"
                     "  refquant report --methods INT8,GPTQ-4-G128,Q4_K_M --out results/\n"
                     f"methods: {', '.join(report.METHODS)}")
    parser.add_argument("--quick", action="store_true",
                        help=f"about a minute on 2 cores: fewer tokens and the methods {','.join(report.QUICK_METHODS)}")
    parser.add_argument("--iquants", action="store_true",
                        help=f"also the rows {','.join(report.IQUANT_METHODS)} (the IQ rows with an importance matrix "
                             "of the calibration text; several minutes more on 2 cores)")
    parser.add_argument("--methods", metavar="LIST",
                        help="comma-separated methods to run (default: all but the --iquants rows; 'baseline' always runs)")
    parser.add_argument("--model", metavar="PATH.gguf",
                        help="a Llama-architecture GGUF file (default: SmolLM2-135M-Instruct, installed with refquant)")
    parser.add_argument("--backend", choices=BACKENDS, default="numpy",
                        help="array library for the forward pass and the quantizers (default: numpy)")
    parser.add_argument("--out", metavar="DIR", default="refquant-report",
                        help="folder for report.md, report.csv and report.png (default: ./refquant-report)")
    parser.add_argument("--tokens", type=int, metavar="N", help="evaluation tokens (default 2048; 1024 with --quick)")
    parser.add_argument("--window", type=int, metavar="N", help="perplexity window in tokens (default 512)")
    parser.add_argument("--calib-tokens", type=int, metavar="N",
                        help=f"calibration tokens ({report.CALIBRATED}), in windows of 512 (default 1024; 512 with --quick)")
    parser.add_argument("--tensors", metavar="REGEX",
                        help="quantize only the tensors whose GGUF name matches (e.g. 'blk\\.0\\.'); "
                             "the others keep their baseline weights")
    parser.add_argument("--speed", action="store_true",
                        help="also time the kernels users run, on this machine: llama.cpp (2 threads) on each GGUF "
                             "row's file and the F32/F16/BF16 files, bitsandbytes' NF4 / LLM.int8() layers against "
                             "torch float32 / bfloat16 (a few minutes more)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars (they go to stderr)")


def backend_namespace(name: str):
    """The array-API namespace for --backend; UserError when its package is not installed
    (checked by name: a broken install still fails loudly on import)."""
    if name not in BACKENDS:
        raise UserError(f"--backend: expected one of {', '.join(BACKENDS)}, got {name!r}")
    if importlib.util.find_spec(name) is None:
        raise UserError(f"--backend {name}: the {name} package is not installed (pip install {name})")
    return importlib.import_module(f"array_api_compat.{name}")


def _progress_factory(enabled: bool) -> Callable[..., Iterable]:
    if not enabled:
        return lambda it, desc="", total=None: it
    from tqdm.auto import tqdm

    depth = [0]

    def progress(it, desc="", total=None):
        depth[0] += 1
        try:
            yield from tqdm(it, desc=desc, total=total, leave=depth[0] == 1, position=depth[0] - 1,
                            file=sys.stderr, dynamic_ncols=True)
        finally:
            depth[0] -= 1

    return progress


def _positive(value: int | None, default: int, name: str) -> int:
    if value is None:
        return default
    if value <= 0:
        raise UserError(f"{name}: expected a positive number of tokens, got {value}")
    return value


def _check_arguments(args: argparse.Namespace) -> tuple[list[str], int, int, int, re.Pattern | None]:
    """(methods, evaluation tokens, window, calibration tokens, --tensors): every argument and
    path checked, and the optional packages the run needs, before any work."""
    try:
        methods = report.parse_methods(args.methods, args.quick, getattr(args, "iquants", False))
    except ValueError as e:
        raise UserError(f"--methods: {e}") from None
    n_eval, window, n_calib = PROTOCOLS["quick" if args.quick else "default"]
    n_eval = _positive(args.tokens, n_eval, "--tokens")
    window = _positive(args.window, window, "--window")
    if window < 2:
        raise UserError(f"--window: expected at least 2 tokens, got {window}")
    n_calib = _positive(args.calib_tokens, n_calib, "--calib-tokens")
    if args.model is not None:
        input_file(args.model, "--model")  # a FIFO or device is named, never opened
    output_folder(args.out, "--out")
    try:
        tensors = re.compile(args.tensors) if args.tensors else None
    except re.error as e:
        raise UserError(f"--tensors: not a regular expression ({e})") from None
    for package in ("tokenizers", "matplotlib"):  # the tokenizer, report.png: fail now, not after the run
        require(package, report.INSTALL_MODEL_EXTRA)
    return methods, n_eval, window, n_calib, tensors


def _load_model(path: str | None, xp: Any) -> Any:
    """``refquant.model.load_model``, every way a file can be wrong said in one line."""
    from ..gguf.file import GGUFFormatError
    from ..model import load_model

    try:
        return load_model(path, xp=xp)
    except FileNotFoundError as e:
        raise UserError(str(e)) from None
    except GGUFFormatError as e:  # truncated, or a count that does not fit the file
        raise UserError(f"--model: {path!r}: not a valid GGUF file: {e}") from None
    except ValueError as e:  # not a GGUF file, not a Llama, a header that disagrees with its tensors
        raise UserError(f"--model: {e}") from None
    except OSError as e:
        raise UserError(f"--model: cannot read {path!r}: {e.strerror or e}") from None


def _check_writable(folder: str) -> None:
    """Fail before the long run, not after it, when the outputs cannot be written: create the
    folder now and write a probe file into it."""
    probe = os.path.join(folder, ".refquant-write-probe")
    try:
        os.makedirs(folder, exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600))
        os.remove(probe)
    except OSError as e:
        raise UserError(f"--out: cannot write into {folder!r} ({e.strerror or e})") from None


def _evaluator(eval_tokens: list[int], window: int, progress: Callable[..., Iterable]) -> Callable[[Any], float]:
    """model -> perplexity over the non-overlapping evaluation windows, a progress tick per window."""
    from ..model import ppl

    n_windows = len(eval_tokens) // window

    def evaluate(m):
        ticks = iter(progress(range(n_windows), desc="perplexity"))

        def forward(window_tokens):
            next(ticks, None)
            return m.forward(window_tokens)

        result = ppl.perplexity(forward, eval_tokens, window=window, protocol="all")
        for _ in ticks:  # close the bar
            pass
        return float(result.ppl)

    return evaluate


def _protocol(args: argparse.Namespace, n_windows: int, window: int, n_calib: int) -> dict[str, str]:
    """The footer: what was measured, on what, where and when."""
    from .._data import smollm2_path

    return {
        "model": os.path.basename(args.model or smollm2_path()),
        "baseline": "the file's weights decoded to float32",
        "evaluation": f"{n_windows * window} tokens of the evaluation split (Python's pydoc topics) "
                      f"in {n_windows} non-overlapping windows of {window}, every next-token prediction scored",
        "calibration": f"{n_calib} tokens of the calibration split ({report.CALIBRATED})",
        **({"tensors quantized": f"only those matching /{args.tensors}/"} if args.tensors else {}),
        "backend": args.backend,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "date": datetime.date.today().isoformat(),
    }


def run(args: argparse.Namespace) -> int:
    """Measure, print, write; exit status 1 when a method failed (its row says why), else 0."""
    from ..model import data

    methods, n_eval, window, n_calib, tensors = _check_arguments(args)
    model = _load_model(args.model, backend_namespace(args.backend))
    if tensors is not None and not any(tensors.search(n) for n, w in model.weights.items() if w.ndim == 2):
        example = next(iter(report.block_linear_names(model.weights)), "blk.0.attn_q.weight")
        raise UserError(f"--tensors: /{args.tensors}/ matches no weight matrix of the model "
                        f"(names look like {example!r})")
    _check_writable(args.out)

    eval_tokens = list(model.tokenize(data.evaluation_text()))[:n_eval]
    calib_tokens = list(model.tokenize(data.calibration_text()))[:n_calib]
    if len(eval_tokens) < 2:
        raise UserError("--tokens: the evaluation text gave fewer than 2 tokens")
    window = min(window, len(eval_tokens))
    progress = _progress_factory(not args.no_progress)
    ctx = report.Context(calib_tokens=calib_tokens, progress=progress, quick=args.quick, tensors=tensors)

    rows = report.run_methods(methods, model, ctx, _evaluator(eval_tokens, window, progress))
    protocol = _protocol(args, len(eval_tokens) // window, window, len(calib_tokens))
    speed = None
    if getattr(args, "speed", False):
        from .._data import smollm2_path

        speed = report.measure_speed([r.method for r in rows if r.status == "ok"], model, ctx,
                                     args.model or smollm2_path())
    report.print_table(rows, protocol, speed=speed)
    paths = report.write_outputs(rows, protocol, args.out, speed=speed)
    print(f"wrote {', '.join(paths.values())}")
    return 1 if any(r.status.startswith("failed") for r in rows) else 0
