"""refquant report — quantize one model with every method and measure what each keeps.

    refquant report                                   # SmolLM2-135M, every method (a few minutes)
    refquant report --quick                           # about a minute on 2 CPU cores
    refquant report --methods baseline,INT8,Q4_K_M,NF4 --out results/
    refquant report --model other-llama.gguf --backend torch
    refquant report --quick --speed                   # + tokens/s of llama.cpp and bitsandbytes here
    refquant report --iquants                         # + IQ3_M, IQ2_M, IQ1_M (with an imatrix), TQ2_0

Every method starts from the same baseline — the model file's weights decoded to
float32 — and hands back the dequantized weights Ŵ it would store, which the same
forward pass then evaluates. The columns:

    bpw      bits per parameter of the whole model: 8 · (model bytes) / (every parameter),
             the plot's x axis; every row counts the same tensor set, so a smaller model
             is always a smaller bpw
    MB       those model bytes: quantized tensors at their stored size (codes, scales and
             zero-points, as the library counts them: ``uniform.stored_bytes``,
             ``nf4.stored_bytes``, ``hqq.hqq_stored_bytes``, ``mx.mx_stored_bytes``,
             ``mx.nvfp4_stored_bytes``, ``fp8.stored_bytes``, the bytes ``gguf.quantize``
             writes), tensors the method leaves alone at float16 (matrices) or float32
             (norm vectors), 1 MB = 10⁶ B
    q.bpw    bits per weight over the tensors the method quantizes only, named in the next
             column: the block linears for INT / NF4 / GPTQ / AWQ / HQQ / MXFP4 / NVFP4 /
             FP8, and for the llama.cpp mixtures the token embedding too (tied to the
             output, llama-quantize gives it Q8_0 or Q6_K), so q.bpw of two families
             compare different tensor sets
    tensors  that tensor set
    rel.err  ‖W − Ŵ‖_F / ‖W‖_F summed over every tensor the method changed
    ppl      perplexity exp(−mean log p(token | context)) on the evaluation text
    Δppl     ppl − baseline ppl
    time     seconds to quantize (calibration included: GPTQ, AWQ, the mixes, the imatrix rows)
    pp, tg   with --speed: tokens/s of the kernel a user would run for the row on this machine
             (``refquant.speed``): llama.cpp on the GGUF file ``gguf.convert.quantize_file``
             writes, prompt processing of 512 tokens and generation of 64 (128 and 16 with --quick),
             best of 3, 2 threads,
             against the F32 / F16 / BF16 files; bitsandbytes' Linear4bit / Linear8bitLt on the
             first blocks' linears against torch float32 / bfloat16 linears; "n/a" and the reason
             where no kernel runs here (GPTQ's and AWQ's are CUDA kernels)

Outputs: the table on the terminal, and report.md, report.csv and report.png (perplexity
against whole-model bits per parameter, the Pareto front drawn) in --out (default
./refquant-report). The command (``refquant report``: arguments, protocol, exit status)
is ``refquant.cli.report``; this module measures and writes.

A method is a plain function ``fn(model, ctx) -> Quantized(weights, nbytes)`` in the
``METHODS`` dict; its docstring's first line describes it in the report.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import io
import math
import os
import re
import sys
import time
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, NamedTuple

import numpy as np

from ._backend import from_numpy, namespace, to_numpy
from ._errors import require
from ._rounding import to_fp16
from . import allocate as _allocate

__all__ = [
    "METHODS", "QUICK_METHODS", "DEFAULT_METHODS", "Quantized", "Context", "Row",
    "measure", "run_methods", "pareto_front", "to_markdown", "to_csv", "plot", "print_table",
    "write_outputs", "parse_methods", "block_linear_names", "tensor_set", "relative_error", "model_bytes",
    "CALIBRATED", "COLUMNS", "INSTALL_MODEL_EXTRA", "IQUANT_METHODS", "calibration_imatrix", "SpeedReport", "measure_speed", "speed_kernel", "SPEED_COLUMNS",
]

# The linear layers of a Llama block, by GGUF name: the tensors GPTQ, AWQ, bitsandbytes
# and the uniform methods quantize (embeddings and norms stay in float16 / float32).
LINEAR_KINDS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
_BLOCK_RE = re.compile(r"^blk\.(\d+)\.")

BYTES_KEPT_MATRIX = 2  # a tensor a method leaves alone is stored as float16 ...
BYTES_KEPT_VECTOR = 4  # ... or, for a 1-D norm weight, float32 (as llama.cpp keeps norms)
SCALE_BITS = 16        # a scale is stored as float16 (what a checkpoint holds and a kernel reads)
INSTALL_MODEL_EXTRA = "pip install 'refquant[model]'"  # tokenizers and matplotlib


class Quantized(NamedTuple):
    """What a method returns: the dequantized weights it changed and their stored size.

    weights: GGUF name -> float32 Ŵ, same shape and namespace as the model's W
    nbytes:  bytes those tensors take in the method's format (codes + scales + zero-points)
    """

    weights: dict[str, Any]
    nbytes: int


@dataclasses.dataclass
class Context:
    """Everything a method may need besides the model.

    calib_tokens: token ids for methods that calibrate on activations (``CALIBRATED``)
    progress:     progress(iterable, desc, total=None) -> iterable, a progress bar or a no-op
    tensors:      a regular expression: only tensors whose GGUF name it matches (re.search)
                  are quantized, the others keep their baseline weights (None: no filter)
    """

    calib_tokens: Any = None
    progress: Callable[..., Iterable] = lambda it, desc="", total=None: it
    quick: bool = False
    tensors: re.Pattern | None = None

    def select(self, names: Iterable[str]) -> list[str]:
        """The names the --tensors filter lets through, in order."""
        return [n for n in names if self.tensors is None or self.tensors.search(n)]


@dataclasses.dataclass
class Row:
    """One line of the report. ``status`` is 'ok' or 'failed: <why>'.

    model_bits_per_weight: 8 · model bytes / every parameter of the model (the plot's x);
    bits_per_weight: 8 · bytes / weights over the tensors the method quantized, ``tensors``.
    """

    method: str
    description: str
    model_bits_per_weight: float = math.nan
    bits_per_weight: float = math.nan
    tensors: str = ""
    memory_mb: float = math.nan
    rel_error: float = math.nan
    perplexity: float = math.nan
    delta_perplexity: float = math.nan
    seconds: float = math.nan
    status: str = "ok"


# ---------------------------------------------------------------------------------------
# helpers the methods share
# ---------------------------------------------------------------------------------------

def block_linear_names(weights: dict[str, Any]) -> list[str]:
    """The 2-D linear weights of every block, in block order: blk.{i}.{attn_q,...}.weight."""
    names = [n for n in weights if _BLOCK_RE.match(n) and n.split(".")[2] in LINEAR_KINDS
             and n.endswith(".weight") and getattr(weights[n], "ndim", 0) == 2]
    return sorted(names, key=lambda n: (int(_BLOCK_RE.match(n).group(1)), LINEAR_KINDS.index(n.split(".")[2])))


def _numel(x: Any) -> int:
    return int(math.prod(int(n) for n in x.shape))


def _by_block(names: list[str]) -> list[list[str]]:
    """Group tensor names by their block index (tensors outside blocks form one group)."""
    groups: dict[Any, list[str]] = {}
    for n in names:
        m = _BLOCK_RE.match(n)
        groups.setdefault(int(m.group(1)) if m else -1, []).append(n)
    return [groups[k] for k in sorted(groups)]


def _per_tensor(model: Any, ctx: Context, names: list[str], desc: str,
                quantize_one: Callable[[str, Any], tuple[Any, int]], threads: int = 1) -> Quantized:
    """Apply ``quantize_one(name, W) -> (Ŵ, nbytes)`` to each tensor, block by block; with
    ``threads`` > 1 a block's tensors are quantized by that many threads (NumPy releases the
    GIL in its kernels; each tensor's result does not depend on the others')."""
    out: dict[str, Any] = {}
    nbytes = 0
    pool = ThreadPoolExecutor(threads, thread_name_prefix="refquant-report") if threads > 1 else None
    try:
        for group in ctx.progress(_by_block(ctx.select(names)), desc=desc):
            run = pool.map if pool is not None else map
            for name, (w_hat, nb) in zip(group, run(lambda n: quantize_one(n, model.weights[n]), group)):
                out[name] = w_hat
                nbytes += int(nb)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return Quantized(out, nbytes)


# ---------------------------------------------------------------------------------------
# the methods: each a few lines over its family's public API
# ---------------------------------------------------------------------------------------

def _baseline(model: Any, ctx: Context) -> Quantized:
    """the file's weights decoded to float32 (the reference every row is compared with)"""
    weights = dict(model.weights)
    return Quantized(weights, 4 * sum(_numel(w) for w in weights.values()))


def _rtn_channel(W: Any, bits: int) -> tuple[Any, int]:
    """Symmetric per-output-channel RTN: codes from the float32 scale, the scale stored as float16.

    s_r = max_j |w_rj| / q_max,  q = round(w / s_r),  ŵ = fp16(s_r) · q
    bytes: ``uniform.stored_bytes``, out·in·b/8 codes + 2 per row (z = 0 is not stored)
    """
    from . import uniform

    qt = uniform.quantize(W, bits=bits, symmetric=True, granularity="channel", axis=0)
    qt = dataclasses.replace(qt, s=to_fp16(qt.s))  # what a checkpoint holds and a kernel reads
    return uniform.dequantize(qt), uniform.stored_bytes(qt, scale_bits=SCALE_BITS)


def _group_spans(n_in: int, G: int) -> list[tuple[int, int, int]]:
    """(lo, hi, group size) column spans: full groups of G, then the remaining columns as one
    last, shorter group, as GPTQ's reference code groups them (SmolLM2's 576 = 4·128 + 64)."""
    n_full = n_in // G * G
    spans = [(0, n_full, G)] if n_full else []
    return spans + ([(n_full, n_in, n_in - n_full)] if n_in > n_full else [])


def _rtn_group(W: Any, bits: int, G: int) -> tuple[Any, int]:
    """Asymmetric RTN per group of G input columns (unsigned codes 0..2^b-1, a zero-point per group).

    Scales are stored as float16, zero-points as b-bit integers: b + (16 + b)/G bits per
    weight, counted by ``uniform.stored_bytes`` on the codes of each span (``_group_spans``).
    """
    from . import uniform

    xp = namespace(W)
    parts, nbytes = [], 0
    for lo, hi, g in _group_spans(int(W.shape[1]), G):
        qt = uniform.quantize(W[:, lo:hi], bits=bits, symmetric=False, granularity="group", group_size=g,
                              signed=False)
        qt = dataclasses.replace(qt, s=to_fp16(qt.s))
        parts.append(uniform.dequantize(qt))  # (out, hi - lo)
        nbytes += uniform.stored_bytes(qt, scale_bits=SCALE_BITS)
    W_hat = xp.concat(parts, axis=1) if len(parts) > 1 else parts[0]  # (out, in)
    return W_hat, nbytes


def _group_bytes(W: Any, bits: int, G: int) -> int:
    """What ``_rtn_group`` stores for an (out, in) weight, from its shape, for methods that hand
    back Ŵ only (GPTQ, AWQ): ``uniform.model_size_bytes`` of each span, b-bit codes, a float16
    scale and a b-bit zero-point per group. AWQ's scales fold into the preceding norm or
    linear: no extra bytes."""
    from . import uniform

    n_out = int(W.shape[0])
    return sum(math.ceil(uniform.model_size_bytes(n_out * (hi - lo), bits, g, SCALE_BITS, zero_bits=bits))
               for lo, hi, g in _group_spans(int(W.shape[1]), G))


def _uniform(bits: int, group_size: int | None) -> Callable[[Any, Context], Quantized]:
    def method(model: Any, ctx: Context) -> Quantized:
        if group_size is None:
            one = lambda name, W: _rtn_channel(W, bits)  # noqa: E731
        else:
            one = lambda name, W: _rtn_group(W, bits, group_size)  # noqa: E731
        return _per_tensor(model, ctx, block_linear_names(model.weights), f"INT{bits}", one)

    if group_size is None:
        method.__doc__ = f"round-to-nearest INT{bits}, symmetric, a float16 scale per output channel"
        if bits == 8:  # row-wise absmax int8 codes: LLM.int8()'s weights, which Linear8bitLt runs
            method.bnb_kind = "int8"
    else:
        method.__doc__ = (f"round-to-nearest INT{bits}, asymmetric, a float16 scale and {bits}-bit zero-point "
                          f"per group of {group_size} inputs")
    return method


def _nf4(double_quant: bool) -> Callable[[Any, Context], Quantized]:
    def method(model: Any, ctx: Context) -> Quantized:
        from . import nf4

        def one(name, W):
            packed, state = nf4.quantize_4bit(W, blocksize=64, quant_type="nf4", double_quant=double_quant)
            return nf4.dequantize_4bit(packed, state), nf4.stored_bytes(packed, state)

        return _per_tensor(model, ctx, block_linear_names(model.weights), "NF4-DQ" if double_quant else "NF4", one)

    method.__doc__ = ("bitsandbytes NF4, blocks of 64, absmax scales "
                      + ("8-bit double-quantized (blocks of 256)" if double_quant else "in float32"))
    method.bnb_kind = "nf4-dq" if double_quant else "nf4"  # its kernel for --speed: Linear4bit
    return method


def _hqq(bits: int, G: int) -> Callable[[Any, Context], Quantized]:
    def method(model: Any, ctx: Context) -> Quantized:
        from . import hqq

        def one(name, W):
            r = hqq.hqq_quantize(W, bits, G)
            # hqq keeps s and z in the compute dtype (float16) once quantized, and its kernel reads
            # those; the codes are chosen with the float32 values, as hqq does before the cast
            r = r._replace(s=to_fp16(r.s), z=to_fp16(r.z))
            return hqq.hqq_dequantize(r), hqq.hqq_stored_bytes(r)

        return _per_tensor(model, ctx, block_linear_names(model.weights), f"HQQ-{bits}-G{G}", one)

    method.__doc__ = (f"HQQ {bits}-bit, asymmetric, groups of {G}, zero-points by the half-quadratic lp solver "
                      f"(no calibration), float16 scale and zero")
    return method


def _mxfp4(model: Any, ctx: Context) -> Quantized:
    """OCP MXFP4: E2M1 elements, an E8M0 power-of-two scale per 32 inputs (floor rounding, the spec's)"""
    from . import mx

    def one(name, W):
        r = mx.mx_quantize(W, "fp4_e2m1", "floor", mx.MX_BLOCK)
        return mx.mx_dequantize(r), mx.mx_stored_bytes(r)

    return _per_tensor(model, ctx, block_linear_names(model.weights), "MXFP4", one)


def _nvfp4(model: Any, ctx: Context) -> Quantized:
    """NVFP4: E2M1 elements, an E4M3 scale per 16 inputs and a float32 scale per tensor (torchao's rounding)"""
    from . import mx

    def one(name, W):
        r = mx.nvfp4_quantize(W, tensor_scale="amax", scale_mode="torchao")
        return mx.nvfp4_dequantize(r), mx.nvfp4_stored_bytes(r)

    return _per_tensor(model, ctx, block_linear_names(model.weights), "NVFP4", one)


def _fp8_row(model: Any, ctx: Context) -> Quantized:
    """FP8 E4M3 (OCP, saturating), a float32 scale amax/448 per output row"""
    from . import fp8

    def one(name, W):
        r = fp8.quantize(W, "e4m3", "row")
        return fp8.dequantize(r), fp8.stored_bytes(r)

    return _per_tensor(model, ctx, block_linear_names(model.weights), "FP8-E4M3", one)


def _selected_blocks(model: Any, ctx: Context) -> list[int]:
    """Indices of the blocks holding a linear weight that --tensors lets through."""
    return sorted({int(_BLOCK_RE.match(n).group(1)) for n in ctx.select(block_linear_names(model.weights))})


def _gptq(model: Any, ctx: Context) -> Quantized:
    """GPTQ 4-bit, asymmetric, groups of 128, Hessians from the calibration text, block by block"""
    from . import blockwise

    weights = blockwise.gptq_quantize_model(model, ctx.calib_tokens, bits=4, group_size=128, act_order=False,
                                            blocks=_selected_blocks(model, ctx), progress=ctx.progress).weights
    weights = {n: weights[n] for n in ctx.select(weights)}
    return Quantized(weights, sum(_group_bytes(W, bits=4, G=128) for W in weights.values()))


def _awq(model: Any, ctx: Context) -> Quantized:
    """AWQ 4-bit, asymmetric, groups of 128, activation-aware scales and clipping searched on the calibration text"""
    from . import blockwise

    weights = blockwise.awq_quantize_model(model, ctx.calib_tokens, bits=4, group_size=128,
                                           blocks=_selected_blocks(model, ctx), progress=ctx.progress).weights
    weights = {n: weights[n] for n in ctx.select(weights)}
    return Quantized(weights, sum(_group_bytes(W, bits=4, G=128) for W in weights.values()))


def _gguf(ftype: str, imatrix: bool = False) -> Callable[[Any, Context], Quantized]:
    def method(model: Any, ctx: Context) -> Quantized:
        from . import gguf
        from .gguf import recipes

        qw = calibration_imatrix(model, ctx) if imatrix else {}  # name -> (in,) mean x², as llama-quantize reads it
        types = recipes.tensor_types(model, ftype, has_imatrix=imatrix)  # name -> ggml type, as llama-quantize assigns
        changed = [n for n, t in types.items() if t != "F32"]

        def one(name, W):
            w_np = np.ascontiguousarray(to_numpy(W), dtype=np.float32)
            raw = gguf.quantize(w_np, types[name], imatrix=qw.get(name))
            return from_numpy(np.asarray(gguf.dequantize(raw, types[name]), dtype=np.float32).reshape(w_np.shape), like=W), raw.nbytes

        return _per_tensor(model, ctx, changed, ftype, one, threads=os.cpu_count() if imatrix else 1)

    method.__doc__ = f"llama.cpp {ftype}: every tensor's type as llama-quantize assigns it for {ftype}" + (
        ", with an importance matrix of the calibration text" if imatrix else "")
    method.gguf_ftype = ftype  # its kernel for --speed: llama.cpp on the file quantize_file writes,
    method.gguf_imatrix = imatrix  # with the same calibration imatrix as the row (IQ2_M, IQ1_M need one)
    return method


# the i-quant and ternary rows (``--iquants``): not in the default run, whose time goal they would break
# (IQ1_M's search alone is ~1 min of the 2 on 2 cores; benchmarks/RESULTS.md, "gguf i-quants in the report")
IQUANT_METHODS = ("IQ3_M", "IQ2_M", "IQ1_M", "TQ2_0")
_IMATRIX_CACHE: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()  # per model, for its lifetime


def calibration_imatrix(model: Any, ctx: Context) -> dict[str, np.ndarray]:
    """{name: (in,) float32} the importance matrix of ``ctx.calib_tokens``: ``refquant.imatrix.compute_imatrix``
    (llama-imatrix's statistics) in chunks of 512 tokens, or one chunk of the whole text when it is
    shorter; computed once per model and token content."""
    from .imatrix import DEFAULT_CHUNK, compute_imatrix

    tokens = np.asarray(ctx.calib_tokens if ctx.calib_tokens is not None else [], dtype=np.int64)
    if tokens.size < 2:
        raise ValueError(f"calib_tokens: an importance matrix needs calibration tokens, got {tokens.size}")
    key = (tokens.tobytes(), DEFAULT_CHUNK)
    per_model = _IMATRIX_CACHE.setdefault(model, {})
    if key not in per_model:
        chunk = min(DEFAULT_CHUNK, int(tokens.size))
        per_model[key] = compute_imatrix(model, tokens, chunk_size=chunk, progress=ctx.progress).values()
    return per_model[key]


METHODS: dict[str, Callable[[Any, Context], Quantized]] = {
    "baseline": _baseline,
    "INT8": _uniform(8, None),
    "INT4-G128": _uniform(4, 128),
    "GPTQ-4-G128": _gptq,
    "AWQ-4-G128": _awq,
    "NF4": _nf4(False),
    "NF4-DQ": _nf4(True),
    "HQQ-4-G64": _hqq(4, 64),
    "MXFP4": _mxfp4,
    "NVFP4": _nvfp4,
    "FP8-E4M3": _fp8_row,
    "Q8_0": _gguf("Q8_0"),
    "Q6_K": _gguf("Q6_K"),
    "Q5_K_M": _gguf("Q5_K_M"),
    "Q4_K_M": _gguf("Q4_K_M"),
    "Q4_0": _gguf("Q4_0"),
    "Q3_K_M": _gguf("Q3_K_M"),
    "Q2_K": _gguf("Q2_K"),
    "mix @ Q4_K_M size": _allocate.mix_method("Q4_K_M"),  # refquant.allocate: an exact knapsack at that size
    "mix @ Q3_K_M size": _allocate.mix_method("Q3_K_M"),
    "IQ3_M": _gguf("IQ3_M", imatrix=True),
    "IQ2_M": _gguf("IQ2_M", imatrix=True),
    "IQ1_M": _gguf("IQ1_M", imatrix=True),
    "TQ2_0": _gguf("TQ2_0"),  # ternary: TQ2_0 has no weighted search, and no tensor of the mixture needs one
}
# the rows that read ctx.calib_tokens: GPTQ's Hessians, AWQ's activations, the allocator's Fisher proxy, the imatrix
CALIBRATED = "GPTQ, AWQ, the mix rows, the imatrix of IQ3_M, IQ2_M, IQ1_M"
DEFAULT_METHODS = tuple(m for m in METHODS if m not in IQUANT_METHODS)
QUICK_METHODS = ("baseline", "INT8", "INT4-G128", "NF4", "Q8_0", "Q4_K_M", "Q2_K")


def parse_methods(spec: str | None, quick: bool, iquants: bool = False) -> list[str]:
    """The method names of a comma-separated ``spec`` (case-insensitive), or the default set
    (``QUICK_METHODS`` when ``quick``), then ``IQUANT_METHODS`` when ``iquants``; ValueError
    naming an unknown method and the known ones."""
    extra = list(IQUANT_METHODS) if iquants else []
    if not spec:
        return list(dict.fromkeys([*(QUICK_METHODS if quick else DEFAULT_METHODS), *extra]))
    lookup = {m.lower(): m for m in METHODS}
    names = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in names if s.lower() not in lookup]
    if unknown or not names:
        raise ValueError(f"unknown method {', '.join(unknown) or repr(spec)}; known: {', '.join(METHODS)}")
    return list(dict.fromkeys([*(lookup[s.lower()] for s in names), *extra]))


def describe(method: Callable) -> str:
    return (method.__doc__ or "").strip().splitlines()[0] if method.__doc__ else ""


# ---------------------------------------------------------------------------------------
# measuring
# ---------------------------------------------------------------------------------------

def relative_error(weights: dict[str, Any], changed: dict[str, Any]) -> float:
    """‖W − Ŵ‖_F / ‖W‖_F over every changed tensor together (sums of squares in float64)."""
    num = den = 0.0
    for name, w_hat in changed.items():
        W = weights[name]
        xp = namespace(W)
        W64 = xp.astype(W, xp.float64)
        diff = W64 - xp.astype(w_hat, xp.float64)
        num += float(xp.sum(diff * diff))
        den += float(xp.sum(W64 * W64))
    return math.sqrt(num / den) if den > 0 else 0.0


def model_bytes(weights: dict[str, Any], q: Quantized) -> int:
    """Whole-model bytes: the method's tensors as stored, the rest at float16 / float32."""
    kept = sum(_numel(W) * (BYTES_KEPT_VECTOR if W.ndim == 1 else BYTES_KEPT_MATRIX)
               for name, W in weights.items() if name not in q.weights)
    return int(q.nbytes) + kept


def tensor_set(weights: dict[str, Any], names: Iterable[str]) -> str:
    """The tensors ``names`` of a model's ``weights`` in a few words: the block linears (all, or
    how many of them) and any other tensor by its short name.

    Example:
        >>> W = {"token_embd.weight": np.zeros((4, 2)), "output_norm.weight": np.ones(2),
        ...      "blk.0.attn_q.weight": np.zeros((2, 2)), "blk.0.ffn_up.weight": np.zeros((3, 2))}
        >>> linears = ["blk.0.attn_q.weight", "blk.0.ffn_up.weight"]
        >>> print([tensor_set(W, W), tensor_set(W, linears), tensor_set(W, linears[:1]),
        ...        tensor_set(W, [*linears, "token_embd.weight"])])
        ['all tensors', 'block linears', '1 of 2 block linears', 'block linears + token_embd']
    """
    names = set(names)
    if names == set(weights):
        return "all tensors"
    linear = set(block_linear_names(weights))
    n_linear = len(names & linear)
    parts = ["block linears" if n_linear == len(linear) else f"{n_linear} of {len(linear)} block linears"] \
        if n_linear else []
    others = sorted(n.removesuffix(".weight") for n in names - linear)
    parts += others if len(others) <= 3 else [*others[:2], f"{len(others) - 2} other tensors"]
    return " + ".join(parts) or "none"


def measure(name: str, method: Callable, model: Any, ctx: Context, evaluate: Callable[[Any], float],
            baseline_ppl: float | None) -> Row:
    """Run one method and evaluate its weights: a filled Row. Whatever the method raises
    propagates (``run_methods`` makes it a 'failed' row): a module that fails to import is a
    bug to see, not a method to skip."""
    row = Row(name, describe(method))
    t0 = time.perf_counter()
    q = method(model, ctx)
    row.seconds = time.perf_counter() - t0
    n_weights = sum(_numel(model.weights[n]) for n in q.weights)
    n_params = sum(_numel(W) for W in model.weights.values())
    nbytes = model_bytes(model.weights, q)
    row.model_bits_per_weight = 8.0 * nbytes / n_params
    row.bits_per_weight = 8.0 * q.nbytes / n_weights if n_weights else math.nan
    row.tensors = tensor_set(model.weights, q.weights)
    row.memory_mb = nbytes / 1e6
    row.rel_error = relative_error(model.weights, q.weights)
    row.perplexity = float(evaluate(model.with_weights(q.weights)))
    if baseline_ppl is not None:
        row.delta_perplexity = row.perplexity - baseline_ppl
    return row


def run_methods(names: Iterable[str], model: Any, ctx: Context, evaluate: Callable[[Any], float],
                methods: dict[str, Callable] | None = None, keep_going: bool = True) -> list[Row]:
    """Measure every named method; the baseline is measured first (Δppl needs it) and always.

    keep_going: a method that raises is reported as 'failed: ...' instead of stopping the run.
    """
    methods = METHODS if methods is None else methods
    names = list(dict.fromkeys(["baseline", *names]))
    rows: list[Row] = []
    baseline_ppl = None
    for name in ctx.progress(names, desc="methods"):
        try:
            row = measure(name, methods[name], model, ctx, evaluate, baseline_ppl)
        except Exception as e:  # noqa: BLE001 - one broken method must not lose the others' rows
            if not keep_going or name == "baseline":
                raise
            row = Row(name, describe(methods[name]), status=f"failed: {type(e).__name__}: {e}")
        if name == "baseline":
            baseline_ppl = row.perplexity
            row.delta_perplexity = 0.0
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------
# speed (--speed): the kernels users run, on this machine
# ---------------------------------------------------------------------------------------

# the files every GGUF row is compared with: llama-quantize's unquantized file types
SPEED_GGUF_BASELINES = ("F32", "F16", "BF16")
SPEED_BNB_BASELINES = ("float32", "bfloat16")
SPEED_GGUF_REFERENCE = "llama.cpp F16"    # the ×base column of llama.cpp rows ...
SPEED_BNB_REFERENCE = "torch bfloat16"    # ... and of bitsandbytes rows
# why a row has no speed figure: the families whose kernels do not run on this CPU
SPEED_MISSING = {
    "INT4-G128": "no CPU kernel here for groups of 128 with zero-points (GPTQ/AWQ checkpoints run on "
                 "CUDA kernels: ExLlama, Marlin)",
    "GPTQ-4-G128": "GPTQ's kernels (ExLlama, Marlin) are CUDA kernels; none runs on this CPU",
    "AWQ-4-G128": "AWQ's kernels (AutoAWQ GEMM/GEMV, Marlin) are CUDA kernels; none runs on this CPU",
}
SPEED_MISSING_DEFAULT = "no CPU kernel for this format is installed here (measured: llama.cpp's GGUF types, " \
                        "bitsandbytes' NF4 and LLM.int8())"


class SpeedReport(NamedTuple):
    """What --speed measured.

    rows:      method name -> its kernel's Speed (``missing`` says why when there is no kernel)
    baselines: 'llama.cpp F32' ... 'torch bfloat16' -> Speed, the unquantized references
    protocol:  the ``speed.SpeedProtocol`` used
    notes:     the speed footer: machine, threads, load averages, package versions
    file_mb:   row or baseline name -> size of the GGUF file llama.cpp ran, 1 MB = 10⁶ B
    """

    rows: dict[str, Any]
    baselines: dict[str, Any]
    protocol: Any
    notes: dict[str, str]
    file_mb: dict[str, float] = {}

    def reference(self, name: str) -> Any:
        """The baseline a row's ×base column divides by (None when the row has no figures)."""
        s = self.rows.get(name)
        if s is None or not s.ok:
            return None
        key = SPEED_GGUF_REFERENCE if s.kernel.startswith("llama.cpp") else SPEED_BNB_REFERENCE
        return self.baselines.get(key)


def speed_kernel(method: Callable) -> tuple[str, str] | None:
    """('gguf', ftype) or ('bnb', kind) for a method that a real kernel runs, else None."""
    if getattr(method, "gguf_ftype", None):
        return "gguf", method.gguf_ftype
    if getattr(method, "bnb_kind", None):
        return "bnb", method.bnb_kind
    return None


def _speed_file(src: str, dst: str, ftype: str, ctx: Context, imatrix: dict[str, np.ndarray] | None = None) -> None:
    """The GGUF file llama.cpp times for ``ftype``: ``gguf.convert.quantize_file`` of the model file, with
    the row's ``imatrix`` if it has one; under --tensors the tensors left out stay F32, as the row
    evaluated them (the baseline's float32)."""
    from .gguf import recipes
    from .gguf.convert import quantize_file
    from .gguf.file import read

    with read(src) as f:
        types = recipes.tensor_types(f, ftype, has_imatrix=imatrix is not None)
    keep = {n: "F32" for n in types if ctx.tensors is not None and not ctx.tensors.search(n)}
    quantize_file(src, dst, ftype, imatrix=imatrix, types_override=keep or None)


def _stack_weights(model: Any, n_blocks: int) -> list[np.ndarray]:
    """The block linears of the first ``n_blocks`` blocks, baseline float32, in block order."""
    names = [n for n in block_linear_names(model.weights) if int(_BLOCK_RE.match(n).group(1)) < n_blocks]
    return [np.asarray(to_numpy(model.weights[n]), dtype=np.float32) for n in names]


def measure_speed(names: Iterable[str], model: Any, ctx: Context, src: str, protocol: Any = None,
                  methods: dict[str, Callable] | None = None, workdir: str | None = None) -> SpeedReport:
    """Tokens/s of each named method's kernel (``speed_kernel``) and of the unquantized baselines.

    GGUF rows: llama.cpp on the file ``gguf.convert.quantize_file`` writes from the model file
    ``src`` (one at a time in ``workdir``, a temporary folder by default, each deleted once
    timed), with the F32 / F16 / BF16 files of the same model. NF4 and INT8 rows: bitsandbytes'
    Linear4bit / Linear8bitLt on the first ``protocol.stack_blocks`` blocks' linears, with torch
    float32 / bfloat16 linears of the same weights. A row without a kernel gets its reason.
    """
    import tempfile

    from . import speed

    methods = METHODS if methods is None else methods
    protocol = speed.QUICK_PROTOCOL if protocol is None and ctx.quick else (protocol or speed.PROTOCOL)
    n_blocks = len({int(_BLOCK_RE.match(n).group(1)) for n in block_linear_names(model.weights)})
    protocol = protocol._replace(stack_blocks=min(protocol.stack_blocks, max(n_blocks, 1)))
    kinds = {n: speed_kernel(methods[n]) for n in dict.fromkeys(names)}
    gguf_jobs = [(f"llama.cpp {ft}", ft) for ft in SPEED_GGUF_BASELINES] if "baseline" in kinds or any(
        k and k[0] == "gguf" for k in kinds.values()) else []
    gguf_jobs += [(n, k[1]) for n, k in kinds.items() if k and k[0] == "gguf"]
    bnb_jobs = [(f"torch {kind}", kind) for kind in SPEED_BNB_BASELINES] if any(
        k and k[0] == "bnb" for k in kinds.values()) else []
    bnb_jobs += [(n, k[1]) for n, k in kinds.items() if k and k[0] == "bnb"]

    load_before = speed.load_average()
    measured: dict[str, Any] = {}
    file_mb: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=workdir, prefix="refquant-speed-") as tmp:
        for key, ftype in ctx.progress(gguf_jobs, desc="speed: llama.cpp"):
            path = os.path.join(tmp, f"{ftype}.gguf")
            uses_imatrix = key in methods and getattr(methods[key], "gguf_imatrix", False)
            _speed_file(src, path, ftype, ctx, calibration_imatrix(model, ctx) if uses_imatrix else None)
            measured[key] = speed.llama_cpp_speed(path, f"llama.cpp {ftype} file", protocol)
            file_mb[key] = os.path.getsize(path) / 1e6
            os.remove(path)  # the F32 file alone is 4 bytes a parameter
    if bnb_jobs:
        weights = _stack_weights(model, protocol.stack_blocks)
        for key, kind in ctx.progress(bnb_jobs, desc="speed: bitsandbytes"):
            s = speed.linear_stack_speed(weights, kind, protocol)
            blocks = "block 0" if protocol.stack_blocks == 1 else f"blocks 0-{protocol.stack_blocks - 1}"
            measured[key] = s._replace(kernel=f"{s.kernel} of {blocks}")
    measured.setdefault("baseline", measured.get(f"llama.cpp {SPEED_GGUF_BASELINES[0]}"))  # float32 weights: F32
    rows = {n: measured.get(n) or speed.unavailable("none", SPEED_MISSING.get(n, SPEED_MISSING_DEFAULT))
            for n in kinds}
    baselines = {k: measured[k] for k, _ in [*gguf_jobs, *bnb_jobs] if k not in kinds}
    notes = {"machine": speed.machine(), "threads": str(protocol.threads),
             "protocol": protocol.describe(),
             "load": f"1-minute load average {load_before:.2f} before, {speed.load_average():.2f} after "
                     f"(uptime's first figure; each figure's own in its row)",
             "kernels": speed.versions()}
    return SpeedReport(rows, baselines, protocol, notes, file_mb)


# ---------------------------------------------------------------------------------------
# outputs
# ---------------------------------------------------------------------------------------

COLUMNS = ("method", "bpw", "MB", "q.bpw", "tensors", "rel.err", "ppl", "Δppl", "time (s)")
COLUMN_NOTE = ("bpw: bits per parameter of the whole model, 8 · model bytes / all parameters (the plot's x); "
               "MB: those bytes, unquantized tensors at float16 (norms float32); q.bpw: bits per weight "
               "of the quantized tensors only, the set named in 'tensors' (the llama.cpp mixtures "
               "quantize the tied token embedding too, the other methods keep it at float16).")


SPEED_COLUMNS = ("pp t/s", "tg t/s")  # with --speed, before "time (s)"
STACK_MARK = "‡"  # a bitsandbytes figure: a stack of linear layers, not a whole model
SPEED_NOTE = ("pp t/s, tg t/s: prompt processing and generation tokens per second of the row's kernel on "
              f"this machine (Speed, below); {STACK_MARK}: bitsandbytes, the first blocks' linear layers only "
              "(compare with the torch rows of Speed), not a whole model; n/a: no kernel here (reason below).")


def columns(speed: SpeedReport | None = None) -> tuple[str, ...]:
    """The table's columns: ``COLUMNS``, with ``SPEED_COLUMNS`` before the time when speed was measured."""
    return COLUMNS if speed is None else (*COLUMNS[:-1], *SPEED_COLUMNS, COLUMNS[-1])


def _tps(x: float) -> str:
    """Tokens per second to 3 significant figures (a shared machine's timings hold no more)."""
    return "n/a" if not math.isfinite(x) else f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


def _speed_cells(s: Any) -> list[str]:
    if s is None or not s.ok:
        return ["n/a", "n/a"]
    mark = "" if s.kernel.startswith("llama.cpp") else STACK_MARK
    return [_tps(s.prompt) + mark, _tps(s.generation) + mark]


def _cells(r: Row, speed: SpeedReport | None = None) -> list[str]:
    n = len(columns(speed))
    if r.status != "ok":
        return [r.method, *["—"] * (n - 2), r.status]
    cells = [r.method, f"{r.model_bits_per_weight:.2f}", f"{r.memory_mb:.1f}", f"{r.bits_per_weight:.2f}",
             r.tensors, f"{r.rel_error:.4f}", f"{r.perplexity:.3f}", f"{r.delta_perplexity:+.3f}"]
    if speed is not None:
        cells += _speed_cells(speed.rows.get(r.method))
    return [*cells, f"{r.seconds:.1f}"]


def _ratio(s: Any, ref: Any, which: str) -> str:
    from . import speed as speed_mod

    x = speed_mod.ratio(s, ref, which) if s is not None and ref is not None else math.nan
    return f"{x:.2f}×" if math.isfinite(x) else ""


def speed_markdown(speed: SpeedReport) -> str:
    """The Speed section: every kernel timed, its ×base against llama.cpp F16 or torch bfloat16,
    the load it was timed under, then the rows without a kernel and why."""
    p = speed.protocol
    lines = [f"Speed on this machine: tokens/s, best of {p.repeats}, {p.threads} threads; pp: {p.n_prompt} "
             f"tokens in one batch, tg: {p.n_gen} tokens one at a time; ×base: against {SPEED_GGUF_REFERENCE} "
             f"(llama.cpp rows) or {SPEED_BNB_REFERENCE} (bitsandbytes rows); load: the 1-minute load average "
             "as the figure was measured.", "",
             "| for | kernel | pp t/s | tg t/s | pp ×base | tg ×base | load |", "|---|---|---:|---:|---:|---:|---:|"]
    ref_of = {k: speed.baselines.get(SPEED_GGUF_REFERENCE if k.startswith("llama.cpp") else SPEED_BNB_REFERENCE)
              for k in speed.baselines}
    entries = [(k.split(" ", 1)[1] + " baseline", s, ref_of[k]) for k, s in speed.baselines.items()]
    entries += [(n, s, speed.reference(n)) for n, s in speed.rows.items() if s.ok and n != "baseline"]
    for label, s, ref in entries:
        if s.ok:
            lines.append(f"| {label} | {s.kernel} | {_tps(s.prompt)} | {_tps(s.generation)} | "
                         f"{_ratio(s, ref, 'prompt')} | {_ratio(s, ref, 'generation')} | {s.load:.2f} |")
        else:
            lines.append(f"| {label} | {s.kernel} | n/a | n/a | | | |")
    missing = [(n, s) for n, s in [*speed.baselines.items(), *speed.rows.items()] if not s.ok and n != "baseline"]
    if missing:
        lines += ["", "No figure:", ""] + [f"- **{n}**: n/a, {s.missing}" for n, s in missing]
    lines += ["", "Speed: " + "; ".join(f"{k} {v}" for k, v in speed.notes.items()) + "."]
    return "\n".join(lines) + "\n"


def pareto_front(rows: list[Row]) -> list[Row]:
    """The rows no other row beats on both axes (fewer whole-model bits per parameter and lower
    perplexity), by bits."""
    ok = sorted((r for r in rows if r.status == "ok" and math.isfinite(r.perplexity)),
                key=lambda r: (r.model_bits_per_weight, r.perplexity))
    front: list[Row] = []
    for r in ok:
        if not front or r.perplexity < front[-1].perplexity:
            front.append(r)
    return front


def to_markdown(rows: list[Row], protocol: dict[str, str], speed: SpeedReport | None = None) -> str:
    cols = columns(speed)
    align = ["---" if c in ("method", "tensors") else "---:" for c in cols]  # text left, numbers right
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(_cells(r, speed)) + " |" for r in rows]
    lines += ["", footer(protocol), "", COLUMN_NOTE]
    if speed is not None:
        lines += ["", SPEED_NOTE, "", speed_markdown(speed).rstrip("\n")]
    lines += ["", "Methods:", ""]
    lines += [f"- **{r.method}**: {r.description}" for r in rows]
    return "\n".join(lines) + "\n"


# with --speed, report.csv gains these columns (NaN and the reason in speed_kernel where no kernel ran)
SPEED_CSV_FIELDS = ("prompt_tokens_per_s", "generation_tokens_per_s", "speed_load", "speed_kernel")


def to_csv(rows: list[Row], speed: SpeedReport | None = None) -> str:
    buf = io.StringIO()
    fields = [f.name for f in dataclasses.fields(Row)] + (list(SPEED_CSV_FIELDS) if speed is not None else [])
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in rows:
        values = dataclasses.asdict(r)
        if speed is not None:
            s = speed.rows.get(r.method)
            values.update(zip(SPEED_CSV_FIELDS, (math.nan, math.nan, math.nan, "n/a: not measured") if s is None else
                              (s.prompt, s.generation, s.load, s.kernel if s.ok else f"n/a: {s.missing}")))
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in values.items()})
    return buf.getvalue()


def footer(protocol: dict[str, str]) -> str:
    return "Protocol: " + "; ".join(f"{k} {v}" for k, v in protocol.items()) + "."


# label positions tried in turn around a point, in points: (dx, dy, horizontal, vertical alignment)
_LABEL_SPOTS = ((5, 4, "left", "bottom"), (5, -4, "left", "top"), (-5, 4, "right", "bottom"),
                (-5, -4, "right", "top"), (5, 14, "left", "bottom"), (5, -14, "left", "top"),
                (-5, 14, "right", "bottom"), (-5, -14, "right", "top"))


def _place_labels(ax: Any, renderer: Any, points: list[tuple[float, float, str]]) -> None:
    """Each label at the first spot around its point that overlaps no label placed before it
    (the axes' limits frozen first, so that label extents are final)."""
    from matplotlib.transforms import Bbox

    ax.set_xlim(ax.get_xlim())
    ax.set_ylim(ax.get_ylim())
    frame = ax.get_window_extent(renderer)
    marker = 4 * ax.figure.dpi / 72  # the markers' half width in pixels (s=36 -> 6 points wide)
    placed = [Bbox.from_extents(px - marker, py - marker, px + marker, py + marker)
              for px, py in ax.transData.transform([(x, y) for x, y, _ in points])] if points else []
    for x, y, text in points:
        for k, (dx, dy, ha, va) in enumerate(_LABEL_SPOTS):
            label = ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va, fontsize=8)
            box = label.get_window_extent(renderer)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            if (inside and not any(box.overlaps(b) for b in placed)) or k == len(_LABEL_SPOTS) - 1:
                placed.append(box)
                break
            label.remove()


def _speed_points(speed: SpeedReport) -> list[tuple[float, float, float, str]]:
    """(file MB, pp t/s, tg t/s, label) of every llama.cpp file timed: the baselines and the GGUF rows."""
    named = [(k.split(" ", 1)[1], k, s) for k, s in speed.baselines.items()] + \
        [(n, n, s) for n, s in speed.rows.items() if n != "baseline"]
    return [(speed.file_mb[k], s.prompt, s.generation, label) for label, k, s in named
            if s.ok and k in speed.file_mb and s.kernel.startswith("llama.cpp")]


def plot(rows: list[Row], path: str, title: str = "", speed: SpeedReport | None = None) -> None:
    """Perplexity against whole-model bits per parameter, one labelled point per method, the
    Pareto front drawn (needs matplotlib: ``MissingDependency`` saying how to install it); with
    ``speed``, a second panel: llama.cpp's tokens/s against the size of the file it ran.

    x is log₂-scaled so that 5 … 10 bits spread out next to the 32-bit baseline; each label goes
    to the first spot around its point that overlaps no label placed before it.
    """
    require("matplotlib", INSTALL_MODEL_EXTRA)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    ok = sorted((r for r in rows if r.status == "ok" and math.isfinite(r.perplexity)),
                key=lambda r: (r.model_bits_per_weight, r.perplexity))
    front = pareto_front(ok)
    fig = Figure(figsize=(8, 5) if speed is None else (15, 5.5), dpi=120)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1 if speed is None else 2, 1)
    ax.plot([r.model_bits_per_weight for r in front], [r.perplexity for r in front], "-", color="tab:orange",
            lw=2, alpha=0.6, zorder=1, label="Pareto front")
    ax.scatter([r.model_bits_per_weight for r in ok], [r.perplexity for r in ok], s=36, zorder=2,
               color=["tab:orange" if r in front else "tab:blue" for r in ok])
    base = next((r for r in ok if r.method == "baseline"), None)
    if base is not None:
        ax.axhline(base.perplexity, color="gray", ls="--", lw=1, label=f"baseline ppl {base.perplexity:.2f}")
    ax.set_xscale("log", base=2)
    ticks = [2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32]
    ax.set_xticks(ticks, [str(t) for t in ticks])
    ax.set_xlabel("bits per parameter, whole model (scales, zero-points and unquantized tensors included)")
    ax.set_ylabel("perplexity (lower is better)")
    ax.set_title(title or "perplexity against whole-model bits per parameter", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.margins(x=0.08, y=0.1)
    ax.legend(loc="upper right", fontsize=8)
    points = _speed_points(speed) if speed is not None else []
    if speed is not None:
        ax2 = fig.add_subplot(1, 2, 2)
        ax2.scatter([p[0] for p in points], [p[2] for p in points], s=36, color="tab:green", zorder=2,
                    label=f"generation ({speed.protocol.n_gen} tokens)")
        ax2.scatter([p[0] for p in points], [p[1] for p in points], s=36, facecolors="none",
                    edgecolors="tab:purple", zorder=2, label=f"prompt processing ({speed.protocol.n_prompt} tokens)")
        ax2.set_xscale("log", base=2)
        ax2.set_yscale("log")
        ax2.set_xlabel("GGUF file size (MB)")
        ax2.set_ylabel("tokens/s (higher is better)")
        ax2.set_title(f"llama.cpp on this machine, {speed.protocol.threads} threads, best of "
                      f"{speed.protocol.repeats}", fontsize=10)
        ax2.grid(True, alpha=0.3, which="both")
        ax2.margins(x=0.12, y=0.15)
        ax2.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    renderer = canvas.get_renderer()
    _place_labels(ax, renderer, [(r.model_bits_per_weight, r.perplexity, r.method) for r in ok])
    if speed is not None and points:
        _place_labels(ax2, renderer, [(mb, tg, label) for mb, _, tg, label in points])
    fig.savefig(path, format="png")  # a file name or a binary file object


def print_table(rows: list[Row], protocol: dict[str, str], file=None, speed: SpeedReport | None = None) -> None:
    """The table on the terminal: rich when it is installed (an optional package, checked by
    name) and writing to a terminal, else Markdown."""
    file = sys.stdout if file is None else file
    if importlib.util.find_spec("rich") is None or not _is_terminal(file):
        file.write(to_markdown(rows, protocol, speed))
        return
    from rich.console import Console
    from rich.table import Table

    note = COLUMN_NOTE if speed is None else f"{COLUMN_NOTE}\n{SPEED_NOTE}"
    table = Table(*columns(speed), caption=f"{footer(protocol)}\n{note}", caption_justify="left")
    for c in table.columns:
        c.justify = "left" if c.header in ("method", "tensors") else "right"
    for r in rows:
        table.add_row(*_cells(r, speed))
    Console(file=file).print(table)
    if speed is not None:
        Console(file=file).print(speed_markdown(speed), highlight=False, markup=False)
    for r in rows:
        Console(file=file).print(f"[bold]{r.method}[/bold]: {r.description}", highlight=False)


def _is_terminal(file) -> bool:
    try:
        return bool(file.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


def write_outputs(rows: list[Row], protocol: dict[str, str], out_dir: str,
                  speed: SpeedReport | None = None) -> dict[str, str]:
    """report.md, report.csv, report.png in ``out_dir``, each written atomically
    (``refquant.gguf.file.atomic_write``: a killed run leaves the old file or the new one, no part file)."""
    from .gguf.file import atomic_write

    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"report.{ext}") for ext in ("md", "csv", "png")}
    png = io.BytesIO()
    plot(rows, png, title=f"perplexity against whole-model bits per parameter — {protocol.get('model', '')}",
         speed=speed)
    for ext, data in (("md", to_markdown(rows, protocol, speed).encode("utf-8")),
                      ("csv", to_csv(rows, speed).encode("utf-8")),
                      ("png", png.getvalue())):
        atomic_write(paths[ext], [data])
    return paths
