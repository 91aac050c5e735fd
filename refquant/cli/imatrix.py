"""``refquant imatrix``: an importance matrix of a GGUF model, computed by refquant's runtime.

    refquant imatrix MODEL.gguf -o imatrix.gguf [--text FILE] [--tokens N] [--chunk 512]

The model is run on the calibration text (default: refquant's calibration split of Python's
pydoc topics) in chunks of ``--chunk`` tokens; for every linear of the blocks the sums of
squared input activations per column and the rows summed are written in llama-imatrix's
GGUF format (``refquant.imatrix``, ``refquant.gguf.imatrix``), which ``refquant quantize
--imatrix`` and llama-quantize read.
"""

from __future__ import annotations

import argparse
import os

from .._errors import UserError
from ._paths import input_file, output_file

__all__ = ["add_arguments", "run", "DESCRIPTION"]

DESCRIPTION = __doc__


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="GGUF Llama model file (with its tokenizer)")
    parser.add_argument("-o", "--output", required=True, metavar="FILE", help="where to write the imatrix GGUF file")
    parser.add_argument("--text", metavar="FILE", help="calibration text, UTF-8 (default: refquant's calibration split)")
    parser.add_argument("--tokens", type=int, metavar="N", help="use the first N tokens of the text (default: all)")
    parser.add_argument("--chunk", type=int, default=512, metavar="N", help="tokens per chunk (default 512)")
    parser.add_argument("--process-output", action="store_true",
                        help="collect the output projection too (llama-imatrix --process-output)")
    parser.epilog = ("examples:\n  refquant imatrix model.gguf -o imatrix.gguf\n"
                     "  refquant imatrix model.gguf -o imatrix.gguf --text wiki.train.raw --tokens 65536")


def _positive(value, arg: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{arg}: expected a positive number of tokens, got {value}")


def run(args: argparse.Namespace) -> int:
    from ..imatrix import compute_imatrix
    from ..model import data, load_model

    input_file(args.model, "model")
    output_file(args.output, "--output")
    if args.text:
        input_file(args.text, "--text")
    _positive(args.tokens, "--tokens")
    _positive(args.chunk, "--chunk")
    try:
        model = load_model(args.model)
    except (ValueError, KeyError) as e:
        raise UserError(f"model: {args.model!r}: {e}") from None
    if model.tokenizer is None:
        raise UserError(f"model: {args.model!r} has no tokenizer (tokenizer.ggml.* metadata): cannot read text")
    if args.text:
        try:
            with open(args.text, encoding="utf-8") as fh:
                text = fh.read()
        except UnicodeDecodeError as e:
            raise UserError(f"--text: {args.text!r} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        source = os.path.basename(args.text)
    else:
        text, source = data.calibration_text(), data.source()
    tokens = model.tokenize(text)[: args.tokens]
    if len(tokens) < args.chunk:
        raise UserError(f"--text: {len(tokens)} tokens are fewer than one chunk of {args.chunk} (--chunk)")
    im = compute_imatrix(model, tokens, chunk_size=args.chunk, process_output=args.process_output, datasets=[source])
    im.save(args.output)
    print(f"{args.output}: {len(im.sums)} matrices, {im.chunk_count} chunks of {im.chunk_size} tokens ({source})")
    return 0
