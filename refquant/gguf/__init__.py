"""llama.cpp's GGUF block formats, both directions, byte-identical to libggml.

    raw = refquant.gguf.quantize(x, "Q4_K", imatrix=None)   # (..., n) float -> (..., row_bytes) uint8
    x̂   = refquant.gguf.dequantize(raw, "Q4_K")             # (..., row_bytes) uint8 -> (..., n) float32

``qtype`` is a name ("q4_k" works too), a ggml type id, or gguf-py's
``GGMLQuantizationType``. A row of ``n`` weights (the last axis; n a multiple of the
type's block size, 32 or 256) becomes ``n / QK * type_size`` bytes, exactly what
``ggml_quantize_chunk`` writes into a llama.cpp model file; the conventions match
gguf-py's ``gguf.quants.quantize`` / ``dequantize``. Decoding runs on any array-API
namespace (NumPy, CuPy, torch, array-api-strict) and returns arrays of the input's
namespace; quantization returns bytes of the input's namespace too.

| family       | types                                  | module                      |
|--------------|----------------------------------------|-----------------------------|
| plain floats | F32, F16, BF16                         | refquant.gguf.legacy        |
| legacy       | Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q8_1     | refquant.gguf.legacy        |
| k-quants     | Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K     | refquant.gguf.kquants       |
| non-linear   | IQ4_NL, IQ4_XS                         | refquant.gguf.iquants       |
| E8 lattice   | IQ2_XXS, IQ2_XS, IQ2_S                 | refquant.gguf.iq2           |
| D4 lattice   | IQ3_XXS, IQ3_S                         | refquant.gguf.iq3           |
| ternary grid | IQ1_S, IQ1_M                           | refquant.gguf.iq1           |
| 1-2 bit, FP4 | TQ1_0, TQ2_0, Q1_0, Q2_0, MXFP4, NVFP4 | refquant.gguf.lowbit        |

Every codec works on blocks — ``quantize_<t>(x (n_blocks, QK), qw (n_blocks, QK) | None)
-> uint8 (n_blocks, type_size)`` and ``dequantize_<t>(raw (n_blocks, type_size)) ->
float32 (n_blocks, QK)`` — listed per type in the plain table ``CODECS`` — and this module
does the rows: validation, reshaping, and spreading the per-column importance matrix
``imatrix`` (n,) over the blocks of every row.

Which code path libggml takes (ggml_quantize_chunk, ggml.c): Q4_0 … Q5_1 use the
*_ref quantizers when imatrix is NULL and the weighted search (*_impl) otherwise;
Q8_0 always uses quantize_row_q8_0_ref (the imatrix is ignored); the k-quants likewise
switch between *_ref and *_impl; IQ4_NL / IQ4_XS always run quantize_row_iq4_nl_impl; the lattice types run their
weighted searches (IQ2_XXS, IQ2_XS and IQ1_S refuse to run without an imatrix, as
ggml_quantize_requires_imatrix says); TQ1_0 … NVFP4 ignore the imatrix.
Q8_1 and Q8_K are not offered by ggml_quantize_chunk (they are the formats the CPU
kernels quantize activations to); refquant encodes them as their *_ref functions do.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from .._backend import device, from_numpy, namespace, to_numpy
from .._checks import check_finite, check_float, check_nonempty
from . import iq1, iq2, iq3, iquants, kquants, legacy, lowbit
from .types import GGML_TYPES, GGMLType, ggml_type, row_bytes

__all__ = ["quantize", "dequantize", "codec", "ggml_type", "row_bytes", "bits_per_weight", "validate_imatrix",
           "Codec", "CODECS", "SUPPORTED", "GGML_TYPES", "IMATRIX_TYPES"]

# how libggml's ggml_quantize_chunk uses an importance matrix for a type
IGNORED = "ignored"        # no imatrix path: the same bytes with or without one
WEIGHTED = "weighted"      # the weighted search of quantize_row_<t>_impl
WEIGHTED_ROW = "weighted, row σ²"  # the same, with weights qw·sqrt(σ² + x²) over the whole row's σ² (legacy _impl)
REQUIRED = "required"      # weighted, and refused without one (ggml_quantize_requires_imatrix)


class Codec(NamedTuple):
    """A type's block functions and how it takes an imatrix (see the module docstring)."""

    quantize: Callable[..., Any]     # (n_blocks, QK) float32, qw (n_blocks, QK) | None -> (n_blocks, type_size) uint8
    dequantize: Callable[[Any], Any]  # (n_blocks, type_size) uint8 -> (n_blocks, QK) float32
    imatrix: str


# the codec table: every type refquant quantizes and dequantizes itself
CODECS: dict[str, Codec] = {
    "F32": Codec(legacy.quantize_f32, legacy.dequantize_f32, IGNORED),
    "F16": Codec(legacy.quantize_f16, legacy.dequantize_f16, IGNORED),
    "BF16": Codec(legacy.quantize_bf16, legacy.dequantize_bf16, IGNORED),
    "Q4_0": Codec(legacy.quantize_q4_0, legacy.dequantize_q4_0, WEIGHTED_ROW),
    "Q4_1": Codec(legacy.quantize_q4_1, legacy.dequantize_q4_1, WEIGHTED_ROW),
    "Q5_0": Codec(legacy.quantize_q5_0, legacy.dequantize_q5_0, WEIGHTED_ROW),
    "Q5_1": Codec(legacy.quantize_q5_1, legacy.dequantize_q5_1, WEIGHTED_ROW),
    "Q8_0": Codec(legacy.quantize_q8_0, legacy.dequantize_q8_0, IGNORED),
    "Q8_1": Codec(legacy.quantize_q8_1, legacy.dequantize_q8_1, IGNORED),
    "Q2_K": Codec(kquants.quantize_q2_k, kquants.dequantize_q2_k, WEIGHTED),
    "Q3_K": Codec(kquants.quantize_q3_k, kquants.dequantize_q3_k, WEIGHTED),
    "Q4_K": Codec(kquants.quantize_q4_k, kquants.dequantize_q4_k, WEIGHTED),
    "Q5_K": Codec(kquants.quantize_q5_k, kquants.dequantize_q5_k, WEIGHTED),
    "Q6_K": Codec(kquants.quantize_q6_k, kquants.dequantize_q6_k, WEIGHTED),
    "Q8_K": Codec(kquants.quantize_q8_k, kquants.dequantize_q8_k, IGNORED),
    "IQ4_NL": Codec(iquants.quantize_iq4_nl, iquants.dequantize_iq4_nl, WEIGHTED),
    "IQ4_XS": Codec(iquants.quantize_iq4_xs, iquants.dequantize_iq4_xs, WEIGHTED),
}
# the families of their own modules: each lists {type: (quantize_<t>, dequantize_<t>, imatrix use)}
for _family in (iq2, iq3, iq1, lowbit):
    CODECS.update({name: Codec(*row) for name, row in _family.CODECS.items()})
SUPPORTED = tuple(CODECS)
# types whose bytes depend on the importance matrix (the others ignore it, as libggml does)
IMATRIX_TYPES = tuple(name for name, c in CODECS.items() if c.imatrix != IGNORED)


def _supported(qtype: Any) -> GGMLType:
    t = ggml_type(qtype)
    if t.name not in CODECS:
        raise ValueError(f"qtype: refquant has no codec for {t.name}; supported: {', '.join(SUPPORTED)}")
    return t


def codec(qtype: Any) -> Codec:
    """The (quantize_<t>, dequantize_<t>, imatrix use) row of a type in CODECS.

    >>> codec("q4_k").quantize.__name__, codec(8).dequantize.__name__, codec("Q8_0").imatrix
    ('quantize_q4_k', 'dequantize_q8_0', 'ignored')
    """
    return CODECS[_supported(qtype).name]


def bits_per_weight(qtype: Any) -> float:
    """8 · type_size / QK: 4.5 for Q4_0, 4.5 for Q4_K, 6.5625 for Q6_K ...

    >>> bits_per_weight("Q4_0"), bits_per_weight("Q4_K"), bits_per_weight("Q6_K")
    (4.5, 4.5, 6.5625)
    """
    return ggml_type(qtype).bits_per_weight


def quantize(x: Any, qtype: Any, imatrix: Any = None) -> Any:
    """Rows of float weights -> ggml blocks, byte-identical to ``ggml_quantize_chunk``.

    x: (..., n) real floating (cast to float32 first, as llama.cpp does), finite;
    n a multiple of the block size. imatrix: optional (n,) importance per column
    (llama-imatrix's mean squared activations): finite and ≥ 0, else ValueError (see
    validate_imatrix); a block of columns that is all 0 warns (UserWarning) and still
    gives libggml's bytes. Returns uint8 (..., row_bytes) in x's namespace.

    Example: 32 copies of −1.0 in Q4_0 are one 18-byte block: d = −1/−8 = 0.125
    (fp16 bytes 00 30) and 16 bytes of code 0.

        >>> quantize(np.full((1, 32), -1.0, np.float32), "Q4_0").tolist() == [[0x00, 0x30] + [0] * 16]
        True
    """
    t = _supported(qtype)
    if imatrix is None and codec(t).imatrix == REQUIRED:
        raise ValueError(f"imatrix: {t.name} needs an importance matrix (ggml_quantize_requires_imatrix); "
                         "pass imatrix=, an (n,) array of per-column importances (refquant imatrix writes one)")
    rows = _rows(x, t)                                                        # (n_rows, n) float32
    xp = namespace(rows)
    n_rows, n = rows.shape
    blocks = xp.reshape(rows, (-1, t.block_size))                             # (n_rows*n/QK, QK)
    qw = None if imatrix is None else _block_weights(imatrix, t, rows)        # (n_blocks, QK) | None
    sigma2 = _block_sigma2(rows, t) if qw is not None and codec(t).imatrix == WEIGHTED_ROW else None
    parts = []
    for lo, hi in _chunks(blocks.shape[0], t.block_size, xp, t.name):
        check_finite(blocks[lo:hi, ...], "x")  # chunk by chunk, while it is in the cache
        extra = {} if sigma2 is None else {"sigma2": sigma2[lo:hi, ...]}
        # |x| ~ 1e20 (or an imatrix ~ 1e38) overflows x², the weights and the searches' sums
        # to inf and NaN in float32 — in libggml's C as here, on purpose: no NumPy warnings
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            parts.append(codec(t).quantize(blocks[lo:hi, ...], None if qw is None else qw[lo:hi, ...], **extra))
    raw = parts[0] if len(parts) == 1 else xp.concat(parts, axis=0)           # (n_blocks, type_size)
    return xp.reshape(raw, (*tuple(int(s) for s in x.shape[:-1]), row_bytes(t, n)))


def _rows(x: Any, t: GGMLType) -> Any:
    """x: (..., n) real floating, n a multiple of t's block -> float32 rows (n_rows, n), or an error naming x."""
    check_float(x, "x")
    check_nonempty(x, "x")
    n = int(x.shape[-1])
    if n % t.block_size:
        raise ValueError(f"x: row length {n} is not a multiple of {t.name}'s block size {t.block_size}")
    xp = namespace(x)
    return xp.reshape(xp.astype(x, xp.float32, copy=False), (-1, n))         # (n_rows, n)


def _block_weights(imatrix: Any, t: GGMLType, rows: Any) -> Any | None:
    """The (n,) importance vector checked and spread over every row's blocks: (n_blocks, QK), or None
    for a type that ignores it (checked all the same)."""
    xp = namespace(rows)
    n_rows, n = rows.shape
    check_float(imatrix, "imatrix")
    if tuple(imatrix.shape) != (n,):
        raise ValueError(f"imatrix: expected shape ({n},) (one value per column), got {tuple(imatrix.shape)}")
    imat32 = validate_imatrix(to_numpy(imatrix))                              # (n,) float32, finite, >= 0
    if codec(t).imatrix == IGNORED:
        return None
    _warn_zero_blocks(imat32, t)
    imat = from_numpy(imat32, like=rows)                                      # (n,) in x's namespace
    return xp.reshape(xp.broadcast_to(imat, (n_rows, n)), (-1, t.block_size))  # (n_blocks, QK)


def _block_sigma2(rows: Any, t: GGMLType) -> Any:
    """σ², the mean square of each block's whole row (the legacy *_impl weights): (n_blocks, 1)."""
    xp = namespace(rows)
    n_rows, n = rows.shape
    with np.errstate(over="ignore", invalid="ignore"):                        # |x| > 1.8e19: x² is inf, as in C
        sigma2 = legacy.row_mean_square(rows)                                 # (n_rows, 1)
    return xp.reshape(xp.broadcast_to(sigma2, (n_rows, n // t.block_size)), (-1, 1))  # (n_blocks, 1)


def validate_imatrix(imatrix: Any, where: str = "") -> np.ndarray:
    """An importance vector as float32 NumPy, or ValueError naming ``imatrix`` and the first bad column.

    Every entry must be finite and ≥ 0 (llama-imatrix writes mean squared activations) —
    after the cast to float32 that libggml reads (1e39 is +inf there). A negative entry
    is refused rather than reproduced: libggml takes it as a negative least-squares weight,
    and the searches then maximise the error of those weights (the scale and min searches
    of Q2_K … Q5_K and make_qp_quants assume w ≥ 0), which no caller means. ``where``
    prefixes the column (recipes.load_imatrix passes the tensor name).

    Example:
        >>> validate_imatrix(np.array([1.0, -2.0]))
        Traceback (most recent call last):
        ...
        ValueError: imatrix: column 1 is -2.0; importance values must be finite and >= 0 (llama-imatrix writes mean squared activations)
    """
    with np.errstate(over="ignore"):  # a float64 entry beyond FLT_MAX becomes inf, then is refused
        imat = np.asarray(imatrix, dtype=np.float32)
    bad = ~(np.isfinite(imat) & (imat >= 0))                                  # -0.0 is fine: it is 0
    if bad.any():
        j = int(np.flatnonzero(bad.ravel())[0])
        raise ValueError(f"imatrix: {where}column {j} is {float(imat.ravel()[j])}; importance values must be finite "
                         f"and >= 0 (llama-imatrix writes mean squared activations)")
    return imat


def _warn_zero_blocks(imat: np.ndarray, t: GGMLType) -> None:
    """Warn (naming ``imatrix``) when whole blocks of columns have importance 0.

    libggml's weighted searches then weigh every weight of such a block by 0: most types
    store the block as zeros (Q4_1 / Q5_1 keep their first scale), in every row. refquant
    writes the same bytes; the warning says why a tensor decodes to zeros.
    """
    per_block = imat.reshape(-1, t.block_size)                                # (n/QK, QK)
    n_zero = int(np.sum(~per_block.any(axis=1)))
    if n_zero:
        import warnings

        warnings.warn(f"imatrix: {n_zero} of {per_block.shape[0]} blocks of {t.block_size} columns are all 0; "
                      f"{t.name}'s weighted search gives those weights no importance (libggml's bytes, which "
                      f"store most such blocks as 0)", UserWarning, stacklevel=3)


CHUNK_WEIGHTS = 1 << 17  # weights per chunk on NumPy: the temporaries of a chunk stay in the CPU cache


_ONE_PASS = ("F32", "F16")  # a single cast: nothing to gain from chunks


def _chunks(n_blocks: int, block_size: int, xp: Any, qtype: str) -> list[tuple[int, int]]:
    """Block ranges processed one after another. Blocks are independent, so the bytes do not
    depend on the chunking; on NumPy, cache-sized chunks make the many elementwise passes
    of a quantizer 2-3x faster. Other namespaces (a GPU) get the whole array at once."""
    step = CHUNK_WEIGHTS // block_size if "numpy" in xp.__name__ and qtype not in _ONE_PASS else n_blocks
    return [(lo, min(lo + step, n_blocks)) for lo in range(0, n_blocks, step)]


def dequantize(raw: Any, qtype: Any) -> Any:
    """ggml blocks -> float32 weights, identical to libggml's ``to_float`` and gguf-py.

    raw: uint8 (..., row_bytes) with row_bytes a multiple of the type's block bytes
    (for F32 / F16 a float32 / float16 array is taken as its own bytes, as gguf-py does).
    Returns float32 (..., n) in raw's namespace.
    """
    t = _supported(qtype)
    xp = namespace(raw)
    if not hasattr(raw, "dtype"):
        raise TypeError(f"raw: expected a uint8 array of ggml blocks, got {type(raw).__name__}")
    native = getattr(xp, {"F32": "float32", "F16": "float16"}.get(t.name, ""), None)  # array-api-strict has no float16
    if native is not None and raw.dtype == native:
        return xp.astype(raw, xp.float32)
    if raw.dtype != xp.uint8:
        raise TypeError(f"raw: expected dtype uint8 (the bytes of {t.name} blocks), got {raw.dtype}")
    if raw.ndim == 0 or int(raw.shape[-1]) == 0 or int(raw.shape[-1]) % t.type_size:
        last = int(raw.shape[-1]) if raw.ndim else 0
        raise ValueError(f"raw: last dimension {last} is not a positive multiple of {t.name}'s "
                         f"{t.type_size}-byte block")
    lead = tuple(int(s) for s in raw.shape[:-1])
    n = int(raw.shape[-1]) // t.type_size * t.block_size
    dequantize_blocks = codec(t).dequantize
    blocks = xp.reshape(raw, (-1, t.type_size))                                # (n_blocks, type_size)
    chunks = _chunks(blocks.shape[0], t.block_size, xp, t.name)
    # a stored d of ±inf times code 0 is NaN, in libggml's to_float as here: no NumPy warnings
    with np.errstate(over="ignore", invalid="ignore"):
        if len(chunks) == 1:
            return xp.reshape(dequantize_blocks(blocks), (*lead, n))
        out = xp.empty((blocks.shape[0], t.block_size), dtype=xp.float32, device=device(raw))  # (n_blocks, QK)
        for lo, hi in chunks:
            out[lo:hi, ...] = dequantize_blocks(blocks[lo:hi, ...])
    return xp.reshape(out, (*lead, n))
