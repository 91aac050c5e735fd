"""refquant verify — check refquant against the real libraries installed on this machine.

    refquant verify                      # every format whose oracle is installed
    refquant verify --formats Q4_K,NF4   # some formats
    refquant verify --list               # the checks, without running them

Each check quantizes (or decodes) a small fixed input with refquant and with the oracle
— libggml's ``ggml_quantize_chunk`` / ``to_float``, gguf-py's ``quants.dequantize``,
bitsandbytes' ``quantize_4bit`` / ``dequantize_4bit``, torch's observers and
``fake_quantize_per_channel_affine``, llm-compressor's GPTQ ``quantize_weight`` — and
compares the results bit for bit: bytes for encoders, float32 bit patterns for decoders
(two NaNs count as equal). The input mixes the blocks that break real kernels (zeros,
constants, outliers, exact rounding midpoints, one-signed blocks, heavy tails, values at
the float16 limits; see ``refquant.testing.strategies``) from a fixed seed.

A check whose oracle is not installed is shown as "skip", with the package to install;
any other error (a refquant module that fails to import included) is an "ERROR" row.
Exit status 0 when every check that ran passed, 1 when any differed.
This is a fixed sample; the test suite (``pytest``) explores far more inputs.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable, NamedTuple

import numpy as np

__all__ = ["CHECKS", "Check", "Outcome", "Result", "run_checks", "format_table", "summary", "sample_rows",
           "select"]

SEED = 20240501


class Outcome(NamedTuple):
    """What one check compared: ``compared`` items of kind ``unit``, ``mismatched`` of them differing."""

    compared: int
    mismatched: int
    unit: str


@dataclasses.dataclass(frozen=True)
class Check:
    format: str   # the format or algorithm checked ('Q4_K', 'NF4', 'INT8 per-channel', 'GPTQ')
    what: str     # the operation ('quantize', 'dequantize', 'quantize + imatrix' ...)
    oracle: str   # the library and function it is compared with
    fn: Callable[[], Outcome]


@dataclasses.dataclass
class Result:
    check: Check
    status: str            # 'pass', 'FAIL', 'skip' or 'ERROR'
    outcome: Outcome | None = None
    note: str = ""
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------
# inputs and comparisons
# ---------------------------------------------------------------------------------------

def sample_rows(n_rows: int, n_per_row: int, block: int, seed: int = SEED) -> np.ndarray:
    """(n_rows, n_per_row) float32: consecutive blocks of ``block`` values cycle through every
    kind of ``refquant.testing.strategies.KINDS`` (zeros, outliers, ties ...), scales 10^-3..10^1."""
    from .testing.strategies import KINDS, seeded_block

    rng = np.random.default_rng(seed)
    n_blocks = n_rows * n_per_row // block
    blocks = [seeded_block(KINDS[i % len(KINDS)], rng, block, float(10.0 ** rng.uniform(-3, 1))) for i in range(n_blocks)]
    return np.concatenate(blocks).astype(np.float32).reshape(n_rows, n_per_row)


def same_bytes(a: np.ndarray, b: np.ndarray, unit_bytes: int) -> Outcome:
    """Compare two byte arrays in units of ``unit_bytes`` (one block each)."""
    a = np.ascontiguousarray(a, dtype=np.uint8).reshape(-1, unit_bytes)
    b = np.ascontiguousarray(b, dtype=np.uint8).reshape(-1, unit_bytes)
    if a.shape != b.shape:
        return Outcome(max(a.shape[0], b.shape[0]), max(a.shape[0], b.shape[0]), "blocks")
    return Outcome(a.shape[0], int(np.sum(np.any(a != b, axis=1))), "blocks")


def same_floats(a: np.ndarray, b: np.ndarray, unit: str = "values") -> Outcome:
    """Compare float32 arrays bit for bit (NaN equals NaN)."""
    a = np.ascontiguousarray(a, dtype=np.float32).reshape(-1)
    b = np.ascontiguousarray(b, dtype=np.float32).reshape(-1)
    if a.shape != b.shape:
        return Outcome(max(a.size, b.size), max(a.size, b.size), unit)
    equal = (a.view(np.uint32) == b.view(np.uint32)) | (np.isnan(a) & np.isnan(b))
    return Outcome(a.size, int(np.sum(~equal)), unit)


# ---------------------------------------------------------------------------------------
# GGUF block formats: libggml and gguf-py
# ---------------------------------------------------------------------------------------

GGUF_TYPES = ("F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0",
              "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS")
GGUF_ROWS, GGUF_N_PER_ROW = 8, 512  # 8 rows of 2 super-blocks (16 blocks of 32)


def _gguf_input(qtype: str) -> np.ndarray:
    """The same rows for every type: kinds change every 32 values (a legacy block, a K sub-block)."""
    return sample_rows(GGUF_ROWS, GGUF_N_PER_ROW, 32)


def _imatrix(n: int) -> np.ndarray:
    """A fixed positive importance vector, like llama-imatrix's mean squared activations."""
    rng = np.random.default_rng(SEED + 1)
    return (rng.gamma(0.8, 1.0, n) + 1e-3).astype(np.float32)


def _gguf_quantize(qtype: str, imatrix: bool) -> Outcome:
    from . import gguf
    from .gguf.types import ggml_type
    from .testing.ggml import ggml_quantize

    x = _gguf_input(qtype)
    qw = _imatrix(x.shape[1]) if imatrix else None
    ours = np.asarray(gguf.quantize(x, qtype, imatrix=qw))
    theirs = ggml_quantize(x, qtype, imatrix=qw)
    return same_bytes(ours, theirs, ggml_type(qtype).type_size)


def _gguf_dequantize_ggml(qtype: str) -> Outcome:
    from . import gguf
    from .testing.ggml import ggml_dequantize, ggml_quantize

    raw = ggml_quantize(_gguf_input(qtype), qtype)  # the oracle's own bytes, decoded by both
    return same_floats(np.asarray(gguf.dequantize(raw, qtype)), ggml_dequantize(raw, qtype))


def _gguf_dequantize_ggufpy(qtype: str) -> Outcome:
    from . import gguf
    from .testing import OracleUnavailable
    from .testing.ggml import ggml_quantize

    try:
        import gguf as gguf_py
        from gguf import quants
    except ImportError as e:
        raise OracleUnavailable("the gguf-py oracle needs `pip install gguf`") from e
    raw = ggml_quantize(_gguf_input(qtype), qtype)
    theirs = quants.dequantize(raw, gguf_py.GGMLQuantizationType[qtype])
    return same_floats(np.asarray(gguf.dequantize(raw, qtype)), theirs)


def _gguf_checks() -> list[Check]:
    checks = []
    for t in GGUF_TYPES:
        checks.append(Check(t, "quantize", "libggml ggml_quantize_chunk", lambda t=t: _gguf_quantize(t, False)))
        if t not in ("F16", "BF16"):
            checks.append(Check(t, "quantize + imatrix", "libggml ggml_quantize_chunk",
                                lambda t=t: _gguf_quantize(t, True)))
        checks.append(Check(t, "dequantize", "libggml to_float", lambda t=t: _gguf_dequantize_ggml(t)))
        checks.append(Check(t, "dequantize", "gguf-py quants.dequantize", lambda t=t: _gguf_dequantize_ggufpy(t)))
    return checks


# ---------------------------------------------------------------------------------------
# uniform INT: torch's observers and fake-quant kernels
# ---------------------------------------------------------------------------------------

def _uniform_torch(granularity: str, bits: int, symmetric: bool) -> Outcome:
    """refquant.uniform's "torch" convention: (s, z) and x̂ against torch, bit for bit."""
    from . import uniform as U
    from .testing import torch_oracles as T

    x = sample_rows(16, 256, 32)
    q_min, q_max = U.torch_code_range(bits, signed=True)
    qt = U.quantize(x, bits, symmetric, granularity, axis=0 if granularity == "channel" else None,
                    signed=True, convention="torch")
    ours = U.fake_quantize(x, bits, symmetric, granularity, axis=0 if granularity == "channel" else None,
                           signed=True, convention="torch")
    if granularity == "channel":
        ts, tz = T.per_channel_observer_qparams(x, 0, q_min, q_max, symmetric=symmetric, signed=True)
        theirs = T.fake_quantize_per_channel(x, ts, tz, 0, q_min, q_max)
    else:
        ts, tz = T.minmax_observer_qparams(x, q_min, q_max, symmetric=symmetric, signed=True)
        theirs = T.fake_quantize_per_tensor(x, float(ts[0]), int(tz[0]), q_min, q_max)
    params = same_floats(np.concatenate([np.reshape(qt.s, -1), np.reshape(qt.z, -1)]), np.concatenate([ts, tz]))
    values = same_floats(ours, theirs)
    return Outcome(values.compared, values.mismatched + params.mismatched, "values")


def _uniform_checks() -> list[Check]:
    checks = []
    for gran, bits, sym in (("channel", 8, True), ("channel", 4, False), ("tensor", 8, False)):
        kind = "symmetric" if sym else "asymmetric"
        oracle = ("torch PerChannelMinMaxObserver + fake_quantize_per_channel_affine" if gran == "channel"
                  else "torch MinMaxObserver + fake_quantize_per_tensor_affine")
        checks.append(Check(f"INT{bits} per-{gran}", f"qparams + fake-quant, {kind}", oracle,
                            lambda g=gran, b=bits, s=sym: _uniform_torch(g, b, s)))
    return checks


# ---------------------------------------------------------------------------------------
# bitsandbytes: NF4 / FP4, double quantization, blockwise 8-bit, LLM.int8() row scaling
# ---------------------------------------------------------------------------------------

BNB_SHAPE = (16, 256)  # rows a multiple of every block size: every CPU decoder path aligned


def _bnb_4bit(quant_type: str, double_quant: bool, what: str) -> Outcome:
    from . import nf4
    from .testing.bnb import bnb_quantize_4bit, dequantize_4bit_path

    x = sample_rows(*BNB_SHAPE, 64)
    ref = bnb_quantize_4bit(x, blocksize=64, quant_type=quant_type, double_quant=double_quant)
    packed, state = nf4.quantize_4bit(x, blocksize=64, quant_type=quant_type, double_quant=double_quant)
    if what == "quantize":
        codes = same_bytes(packed, ref["packed"], 32)  # 32 bytes = one block of 64 codes
        if double_quant:  # the 8-bit codes of absmax − μ and the nested absmax
            stats = same_bytes(np.asarray(state.absmax), ref["absmax"], 1)
            nested = same_floats(np.asarray(state.state2.absmax), ref["nested_absmax"])
            return Outcome(codes.compared, codes.mismatched + stats.mismatched + nested.mismatched, "blocks")
        absmax = same_floats(np.asarray(state.absmax), ref["absmax"])
        return Outcome(codes.compared, codes.mismatched + absmax.mismatched, "blocks")
    ours = np.asarray(nf4.dequantize_4bit(packed, state), dtype=np.float32)
    theirs = np.asarray(ref["dequantized"], dtype=np.float32)
    if quant_type == "fp4" and dequantize_4bit_path(64, BNB_SHAPE) == "scalar":
        # on a CPU without AVX-512 bitsandbytes decodes with its portable C++ loop, whose
        # fp4_lut holds -0.0 for pattern 8 where refquant (like bitsandbytes' Python table,
        # its torch and AVX-512 paths) has +0.0: zeros are compared by value, all else by bits
        zero = (theirs == 0) & (ours == 0)
        ours, theirs = np.where(zero, np.float32(0), ours), np.where(zero, np.float32(0), theirs)
    return same_floats(ours, theirs)


def _bnb_blockwise() -> Outcome:
    from . import int8
    from .testing.bnb import bnb_quantize_blockwise

    x = sample_rows(*BNB_SHAPE, 64)
    ref = bnb_quantize_blockwise(x, blocksize=256)
    q, state = int8.quantize_blockwise(x, blocksize=256)
    codes = same_bytes(np.asarray(q), ref["q"], 256)
    absmax = same_floats(np.asarray(state.absmax), ref["absmax"])
    values = same_floats(np.asarray(int8.dequantize_blockwise(q, state)), ref["dequantized"])
    return Outcome(values.compared, values.mismatched + codes.mismatched + absmax.mismatched, "values")


def _bnb_vectorwise() -> Outcome:
    from . import int8
    from .testing.bnb import bnb_int8_vectorwise_quant

    x = sample_rows(*BNB_SHAPE, 64)
    ref = bnb_int8_vectorwise_quant(x, threshold=0.0)
    Q, s_rows, _ = int8.int8_vectorwise_quant(x, threshold=0.0)
    codes = same_bytes(np.asarray(Q).view(np.uint8), ref["Q"].view(np.uint8), BNB_SHAPE[1])
    scales = same_floats(np.asarray(s_rows), ref["s"])
    return Outcome(codes.compared, codes.mismatched + scales.mismatched, "rows")


def _bnb_checks() -> list[Check]:
    checks = []
    for qt in ("nf4", "fp4"):
        name = qt.upper()
        checks.append(Check(name, "quantize (codes, absmax)", "bitsandbytes quantize_4bit",
                            lambda qt=qt: _bnb_4bit(qt, False, "quantize")))
        checks.append(Check(name, "dequantize", "bitsandbytes dequantize_4bit",
                            lambda qt=qt: _bnb_4bit(qt, False, "dequantize")))
    checks.append(Check("NF4-DQ", "quantize (codes, 8-bit absmax)", "bitsandbytes quantize_4bit(compress_statistics)",
                        lambda: _bnb_4bit("nf4", True, "quantize")))
    checks.append(Check("INT8 blockwise", "quantize + dequantize", "bitsandbytes quantize_blockwise (dynamic map)",
                        _bnb_blockwise))
    checks.append(Check("LLM.int8()", "row-wise int8 codes and scales", "bitsandbytes int8_vectorwise_quant",
                        _bnb_vectorwise))
    return checks


# ---------------------------------------------------------------------------------------
# GPTQ: llm-compressor's quantize_weight
# ---------------------------------------------------------------------------------------

def _gptq_llmcompressor(act_order: bool) -> Outcome:
    """One 64×512 layer, 4-bit, G=128, its Hessian from 2048 correlated inputs; codes compared."""
    from . import gptq
    from .testing import llmcompressor as L

    rng = np.random.default_rng(SEED + 2)
    n_out, n_in, n_tokens = 64, 512, 2048
    mix = rng.standard_normal((n_in, n_in)).astype(np.float32) / np.sqrt(n_in)
    X = (rng.standard_normal((n_tokens, n_in)).astype(np.float32) @ (np.eye(n_in, dtype=np.float32) + mix))
    H = (2.0 / n_tokens) * (X.T @ X)                                             # (in, in) = 2XᵀX/n
    W = sample_rows(n_out, n_in, 32) * np.float32(0.01)
    W = np.clip(W, -10, 10).astype(np.float32)
    s, z = L.observer_qparams(W, 4, 128, False)
    W_llmc, _ = L.llmc_gptq(W, H.astype(np.float32), s, z, 4, 128, False, act_order, 128)
    ours = gptq.gptq_quantize(W, H.astype(np.float32), 4, 128, False, act_order=act_order, blocksize=128,
                              s=s, z=z, signed=True, zero_before_round=True)
    return same_floats(np.asarray(ours.W_hat), W_llmc, "weights")


def _gptq_checks() -> list[Check]:
    return [Check("GPTQ", f"4-bit G=128{', act-order' if a else ''}", "llm-compressor quantize_weight",
                  lambda a=a: _gptq_llmcompressor(a)) for a in (False, True)]


# ---------------------------------------------------------------------------------------
# the registry
# ---------------------------------------------------------------------------------------

CHECKS: list[Check] = [*_uniform_checks(), *_bnb_checks(), *_gptq_checks(), *_gguf_checks()]


def _is_missing(err: BaseException) -> str | None:
    """The reason to skip when ``err`` says an oracle's package is not installed: the adapters
    of ``refquant.testing`` raise ``OracleUnavailable`` naming the package to install. Any other
    error, a refquant module that fails to import included, is an ERROR row, never a skip."""
    from .testing import OracleUnavailable

    return str(err) if isinstance(err, OracleUnavailable) else None


def run_checks(checks: list[Check], on_result: Callable[[Result], None] | None = None) -> list[Result]:
    """Run each check; a missing oracle gives 'skip', any other exception 'ERROR'."""
    results = []
    for check in checks:
        t0 = time.perf_counter()
        try:
            out = check.fn()
            res = Result(check, "pass" if out.mismatched == 0 else "FAIL", out)
        except Exception as e:  # noqa: BLE001 - report every check, whatever one of them does
            reason = _is_missing(e)
            res = Result(check, "skip", note=reason) if reason else Result(check, "ERROR", note=f"{type(e).__name__}: {e}")
        res.seconds = time.perf_counter() - t0
        if res.status == "FAIL":
            res.note = f"{res.outcome.mismatched} of {res.outcome.compared} {res.outcome.unit} differ"
        results.append(res)
        if on_result is not None:
            on_result(res)
    return results


def format_table(results: list[Result]) -> str:
    """A plain-text table, one line per check, grouped by format, and a summary line."""
    header = ("format", "check", "oracle", "compared", "result")
    lines = [header]
    for r in results:
        compared = f"{r.outcome.compared} {r.outcome.unit}" if r.outcome else "—"
        result = r.status + (f" ({r.note})" if r.note else "")
        lines.append((r.check.format, r.check.what, r.check.oracle, compared, result))
    widths = [max(len(row[i]) for row in lines) for i in range(4)]
    out = []
    for k, row in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4])
        if k == 0:
            out.append("  ".join("-" * w for w in widths) + "  " + "-" * 6)
    out.append(summary(results))
    return "\n".join(out)


def summary(results: list[Result]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("pass", "FAIL", "ERROR", "skip")}
    compared = sum(r.outcome.compared for r in results if r.outcome and r.status == "pass")
    return (f"{counts['pass']} passed, {counts['FAIL']} failed, {counts['ERROR']} errors, "
            f"{counts['skip']} skipped ({compared} blocks/values compared bit-exact)")


def select(spec: str | None) -> list[Check]:
    """The checks of the comma-separated formats in ``spec`` (case-insensitive), in registry
    order; every check when ``spec`` is empty. ValueError naming an unknown format and the known ones."""
    if not spec:
        return list(CHECKS)
    known = {c.format.lower(): c.format for c in CHECKS}
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in wanted if s.lower() not in known]
    if unknown or not wanted:
        raise ValueError(f"unknown format {', '.join(unknown) or repr(spec)}; known: {', '.join(dict.fromkeys(known.values()))}")
    chosen = {known[s.lower()] for s in wanted}
    return [c for c in CHECKS if c.format in chosen]
