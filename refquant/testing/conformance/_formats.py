"""The formats the conformance kit knows: refquant's encoder and decoder for each, and the
natural signature of a caller's function, both directions.

Every encoding is compared as named *fields* (``Field``: flat values, how many of them one
block holds, how to show one), so that a difference is reported as "block 3, field d, bit 15"
rather than "byte 57". A GGUF type's fields are its ``struct block_<t>`` fields, read from the
``Layout`` its refquant module declares; a type added to ``refquant.gguf.CODECS`` is covered
without a change here (without a ``Layout`` it is compared as one field of bytes).

| format            | quantize: impl(x) returns                      | dequantize: impl(...) takes     |
|-------------------|------------------------------------------------|---------------------------------|
| GGUF types        | (rows, row_bytes) uint8 (``impl(x, imatrix)``) | raw (rows, row_bytes) uint8     |
| NF4, FP4          | packed uint8 (n/2 bytes, first code high), absmax (n/64,) float32 | packed, absmax, shape |
| INT8-BLOCKWISE    | q uint8 (x's shape), absmax (n/256,) float32   | q, absmax                       |
| LLM.INT8          | Q int8 (rows, n), s (rows,) float32 row absmax | Q, s                            |
| INT4-G32, INT8-CHANNEL | q int codes (rows, n), s, z (rows, n/G)   | q, s, z                         |
| FP8-E4M3, FP8-E5M2 | uint8 bit patterns (x's shape)                | codes                           |
| MX-FP4, MX-FP8-E4M3 (OCP MX) | codes uint8 (rows, n), E8M0 bytes (rows, n/32) | codes, scales        |
| NVFP4-TORCHAO     | codes uint8 (rows, n), E4M3 bytes (rows, n/16) | codes, scales                   |
| HQQ-4             | q (rows, n) codes, s, z (rows, n/64) float32   | q, s, z                         |

x is float32 (rows, n) in the caller's array library (NumPy, torch, CuPy); every output
is read back with NumPy. A decoder returns float32 values of x's shape.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, NamedTuple

import numpy as np

from ..strategies import EDGE_KINDS, KINDS

__all__ = ["Field", "Format", "get_format", "format_names", "ShapeMismatch", "tie_rows", "seeded_tie_row"]


class Field(NamedTuple):
    """One named part of an encoding: flat ``values``, ``per_block`` of them in each block
    (the last block may hold fewer), shown as ``kind`` ('bytes', 'fp16', 'f32', 'int', 'code')."""

    values: np.ndarray
    per_block: int
    kind: str


class ShapeMismatch(ValueError):
    """The implementation's output does not have the format's shape (block size or layout mix-up)."""


Encoded = dict  # field name -> Field, in the order of the block's struct


@dataclasses.dataclass(frozen=True)
class Format:
    """One format: refquant's two directions and the adapters of a caller's function."""

    name: str
    family: str
    block: int                 # weights per block: drawn rows are a multiple of it
    any_length: bool           # rows of any length (the last block short) are valid input
    imatrix: str               # 'none', 'optional' or 'required'
    kinds: tuple               # block kinds of refquant.testing.strategies its inputs are drawn from
    encode: Callable           # refquant: x (rows, n) float32, imatrix | None -> Encoded
    decode: Callable           # refquant: Encoded, (rows, n) -> (rows, n) float32
    read: Callable             # the impl's quantize output, (rows, n) -> Encoded (ShapeMismatch if it cannot)
    args: Callable             # Encoded, (rows, n) -> the positional arguments of the impl's dequantize
    random: Callable           # draw, (rows, n) -> a random valid Encoded (decode parity on random bytes)
    bits: int                  # bits of a code: the a-priori bound is 2·amax/(2^bits − 1) per block
    quantize_doc: str
    dequantize_doc: str
    codes: str = "qs"          # the field holding the codes (cause guesses read it)
    tie: tuple | None = None   # how to build blocks of exact rounding midpoints (see ``tie_rows``)


def _np(a: Any) -> np.ndarray:
    """Any array (NumPy, torch, CuPy, a list) as a NumPy array."""
    if hasattr(a, "detach"):
        a = a.detach().cpu()
        if str(a.dtype) == "torch.bfloat16":
            a = a.float()
        return a.numpy()
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def _flat(a: Any, dtype: Any, n: int, what: str) -> np.ndarray:
    """The impl's array ``a`` as ``n`` flat values of ``dtype`` (exact cast), or ShapeMismatch."""
    v = _np(a)
    if v.size != n:
        raise ShapeMismatch(f"{what}: {v.size} values returned, expected {n}")
    if np.dtype(dtype).kind in "iu" and v.dtype.kind == "f":
        if not np.all(np.isfinite(v)) or np.any(v != np.round(v)):
            raise ShapeMismatch(f"{what}: non-integer codes returned")
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(v.reshape(-1)).astype(dtype) if v.dtype != np.dtype(dtype) else v.reshape(-1)


# ---------------------------------------------------------------------------------------
# GGUF: every type of refquant.gguf.CODECS, fields from its module's Layout
# ---------------------------------------------------------------------------------------

_GGUF_MODULES = ("legacy", "kquants", "iquants", "iq1", "iq2", "iq3", "lowbit")
_FP16_NAMES = ("d", "dmin", "m", "s")        # the float16 scalars of ggml's block structs


def _layouts() -> dict:
    """{qtype: Layout} declared by refquant's GGUF modules (a module not yet there is skipped)."""
    from ...gguf._bytes import Layout

    out = {}
    for name in _GGUF_MODULES:
        try:
            mod = importlib.import_module(f"refquant.gguf.{name}")
        except ImportError:
            continue
        out.update({v.qtype: v for v in vars(mod).values() if isinstance(v, Layout)})
    return out


def _gguf_fields(raw: np.ndarray, qtype: str, layouts: dict) -> Encoded:
    """(n_blocks, type_size) uint8 -> its named fields (float16 scalars as fp16, the rest as bytes)."""
    layout = layouts.get(qtype)
    if layout is None:
        return {"bytes": Field(raw.reshape(-1), raw.shape[1], "bytes")}
    out, off = {}, 0
    for name, width in layout.widths.items():
        part = np.ascontiguousarray(raw[:, off:off + width])                # (n_blocks, width)
        off += width
        if name in _FP16_NAMES and width == 2 or (qtype in ("F16", "BF16") and name == "value"):
            out[name] = Field(part.view("<u2").reshape(-1), 1, "bf16" if qtype == "BF16" else "fp16")
        elif width == 4 and (name == "d" or qtype == "F32"):
            out[name] = Field(part.view("<u4").reshape(-1), 1, "f32")
        else:
            out[name] = Field(part.reshape(-1), width, "bytes")
    return out


def _gguf_join(enc: Encoded, rows: int) -> np.ndarray:
    """Fields back to (rows, row_bytes) uint8."""
    parts = [np.ascontiguousarray(f.values).view(np.uint8).reshape(-1, f.per_block * f.values.itemsize)
             for f in enc.values()]
    n_blocks = parts[0].shape[0]
    return np.concatenate(parts, axis=1).reshape(rows, -1) if n_blocks else np.zeros((rows, 0), np.uint8)


def _gguf_format(name: str) -> Format:
    from ... import gguf

    t = gguf.ggml_type(name)
    layouts = _layouts()
    use = gguf.codec(t).imatrix
    imatrix = "none" if use == gguf.IGNORED else ("required" if use == gguf.REQUIRED else "optional")
    bpw = t.bits_per_weight

    def encode(x, imat):
        raw = np.asarray(gguf.quantize(x, t.name, imatrix=imat))           # (rows, row_bytes)
        return _gguf_fields(raw.reshape(-1, t.type_size), t.name, layouts)

    def read(out, shape):
        rows, n = shape
        expected = rows * gguf.row_bytes(t, n)
        v = _np(out)
        if v.dtype != np.uint8:
            raise ShapeMismatch(f"returned dtype {v.dtype}, expected uint8 bytes")
        if v.size != expected:
            raise ShapeMismatch(f"{v.size // max(rows, 1)} bytes per row returned, expected {expected // rows} "
                                f"({n // t.block_size} blocks of {t.type_size} bytes)")
        return _gguf_fields(np.ascontiguousarray(v).reshape(-1, t.type_size), t.name, layouts)

    def decode(enc, shape):
        return np.asarray(gguf.dequantize(_gguf_join(enc, shape[0]), t.name)).reshape(shape)

    def random(draw, shape):
        from hypothesis.extra import numpy as hnp

        rows, n = shape
        raw = draw(hnp.arrays(np.uint8, (rows * (n // t.block_size), t.type_size)))
        return _gguf_fields(raw, t.name, layouts)

    codes = "qs" if "qs" in getattr(layouts.get(t.name), "widths", {}) else next(iter(_fields_of(layouts, t.name)))
    return Format(
        name=t.name, family="gguf", block=t.block_size, any_length=False, imatrix=imatrix,
        kinds=("zeros",) + EDGE_KINDS + tuple(k for k in KINDS if k != "zeros"),
        encode=encode, decode=decode, read=read, args=lambda enc, shape: (_gguf_join(enc, shape[0]),),
        random=random, bits=max(1, min(int(bpw), 16)), codes=codes, tie=_TIES.get(t.name),
        quantize_doc=f"impl(x: float32 (rows, n), n % {t.block_size} == 0{', imatrix: (n,)' if imatrix != 'none' else ''})"
                     f" -> uint8 (rows, n/{t.block_size}*{t.type_size})",
        dequantize_doc=f"impl(raw: uint8 (rows, n/{t.block_size}*{t.type_size})) -> float32 (rows, n)")


_TIES = {"Q4_0": ("signed", 8), "Q5_0": ("signed", 16), "Q8_0": ("absmax", 127), "Q8_1": ("absmax", 127),
         "Q4_1": ("range", 15), "Q5_1": ("range", 31)}


def tie_rows(tie: tuple, block: int):
    """Rows whose blocks sit on exact rounding midpoints of the format's grid (scale a power of two).

    ('signed', L): one lane ±L·2^p (ggml's d = max/−L = ∓2^p), the others (k + ½)·2^p;
    ('absmax', L): one lane ±L·2^p (d = amax/L = 2^p), the others (k + ½)·2^p;
    ('range', L): lanes 0 and L·2^p (d = 2^p, min 0), the others (k + ½)·2^p;
    ('table', c): one lane ±2^p (absmax), the others 2^p times midpoints of the code book c;
    ('grid', g): midpoints of adjacent values of the element grid g, either sign.
    """
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    n_mid, lo, hi = _tie_draw_range(tie)

    @st.composite
    def one_block(draw):
        e = draw(st.integers(-10, 4))
        idx = draw(hnp.arrays(np.int32, block, elements=st.integers(lo, hi)))
        signs = draw(hnp.arrays(np.bool_, block))
        return _tie_block(tie, e, idx, signs, draw(st.integers(0, block - 1)), draw(st.booleans()))

    @st.composite
    def rows(draw):
        n_rows, n_blocks = draw(st.integers(1, 2)), draw(st.integers(1, 2))
        return np.concatenate([draw(one_block()) for _ in range(n_rows * n_blocks)]).reshape(n_rows, -1)

    return rows()


def seeded_tie_row(tie: tuple, block: int, rng: np.random.Generator, n_blocks: int = 2) -> np.ndarray:
    """(1, n_blocks·block) float32: ``tie_rows``' blocks from a NumPy generator (a fixed first example)."""
    _, lo, hi = _tie_draw_range(tie)
    return np.concatenate([_tie_block(tie, int(rng.integers(-10, 5)), rng.integers(lo, hi + 1, block),
                                      rng.random(block) < 0.5, int(rng.integers(block)), bool(rng.random() < 0.5))
                           for _ in range(n_blocks)]).reshape(1, -1)


def _grid_midpoints(tie: tuple) -> np.ndarray:
    kind, L = tie
    if kind == "grid":
        g = np.unique(np.abs(np.asarray(L, np.float64)[np.isfinite(L)]))
        return (g[1:] + g[:-1]) / 2
    c = np.sort(np.asarray(L, np.float32))
    return ((c[1:] + c[:-1]) / np.float32(2)).astype(np.float32)


def _tie_draw_range(tie: tuple) -> tuple:
    """(number of midpoints or None, lo, hi): the integers a tie block's lanes are drawn from."""
    kind, L = tie
    if kind in ("grid", "table"):
        n = len(_grid_midpoints(tie))
        return n, 0, n - 1
    return None, *((-L, L - 2) if kind != "range" else (0, L - 1))


def _tie_block(tie: tuple, e: int, idx, signs, j: int, negative: bool) -> np.ndarray:
    """One block of ``tie_rows`` from its drawn parts: the scale 2^e, lane indices ``idx``, lane signs
    (grid only), the lane j that sets the scale and its sign."""
    kind, L = tie
    p = 2.0 ** e
    if kind == "grid":
        return (np.where(signs, -1.0, 1.0) * _grid_midpoints(tie)[idx]).astype(np.float32)
    if kind == "table":
        v = _grid_midpoints(tie)[idx] * np.float32(p)
    else:
        v = (np.asarray(idx, np.int64) + 0.5) * p
    v = np.array(v)
    sign = -1.0 if negative else 1.0
    v[j] = sign * (L * p if kind in ("signed", "absmax") else p) if kind != "range" else L * p
    if kind == "range":
        v[(j + 1) % len(v)] = 0.0
    return v.astype(np.float32)


def _fields_of(layouts: dict, qtype: str) -> tuple:
    layout = layouts.get(qtype)
    return tuple(layout.widths) if layout is not None else ("bytes",)


# ---------------------------------------------------------------------------------------
# bitsandbytes: NF4 / FP4 (blocks of 64), blockwise 8-bit (blocks of 256), LLM.int8()
# ---------------------------------------------------------------------------------------

_BNB_KINDS = ("zeros", "signed_zeros", "all_signed_zeros", "zero_extreme", "subnormal", "fp16_overflow",
              "ties", "constant", "outlier", "normal", "same_sign", "heavy_tails", "fp16_edge", "uniform_int")
NF4_BLOCK = 64
INT8_BLOCK = 256


def _f32_field(a: np.ndarray, per_block: int = 1) -> Field:
    return Field(np.ascontiguousarray(a, dtype=np.float32).reshape(-1).view(np.uint32), per_block, "f32")


def _as_f32(field: Field) -> np.ndarray:
    return field.values.view(np.float32) if field.kind == "f32" else field.values.astype(np.float32)


def _random_f32(draw, size: int, lo: float = 2.0**-20, hi: float = 2.0**20, zero: bool = True) -> np.ndarray:
    """(size,) non-negative finite float32 scales, drawn by Hypothesis (0 too where ``zero``)."""
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    positive = st.floats(lo, hi, width=32)
    return draw(hnp.arrays(np.float32, size, elements=st.one_of(st.just(0.0), positive) if zero else positive))


def _nf4_format(quant_type: str) -> Format:
    from ... import nf4

    def state(absmax, shape):
        return nf4.QuantState(absmax=absmax, shape=tuple(shape), code=nf4.CODES[quant_type], blocksize=NF4_BLOCK,
                              quant_type=quant_type, dtype=np.float32)

    def fields(packed, absmax):
        return {"code": Field(np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1), NF4_BLOCK // 2, "nibbles"),
                "absmax": _f32_field(absmax)}

    def encode(x, imat):
        packed, st_ = nf4.quantize_4bit(x, blocksize=NF4_BLOCK, quant_type=quant_type)
        return fields(packed, st_.absmax)

    def read(out, shape):
        packed, absmax = out
        n = shape[0] * shape[1]
        return fields(_flat(packed, np.uint8, (n + 1) // 2, "packed"), _flat(absmax, np.float32, -(-n // NF4_BLOCK), "absmax"))

    def decode(enc, shape):
        return np.asarray(nf4.dequantize_4bit(enc["code"].values, state(_as_f32(enc["absmax"]), shape)))

    def random(draw, shape):
        from hypothesis.extra import numpy as hnp

        n = shape[0] * shape[1]
        return fields(draw(hnp.arrays(np.uint8, (n + 1) // 2)), _random_f32(draw, -(-n // NF4_BLOCK)))

    return Format(
        name=quant_type.upper(), family="bitsandbytes", block=NF4_BLOCK, any_length=True, imatrix="none",
        kinds=_BNB_KINDS, encode=encode, decode=decode, read=read,
        args=lambda enc, shape: (enc["code"].values, _as_f32(enc["absmax"]), tuple(shape)), random=random, bits=4,
        codes="code", tie=("table", nf4.CODES[quant_type]),
        quantize_doc="impl(x: float32 (rows, n)) -> (packed uint8 (ceil(n·rows/2),), absmax float32 "
                                   "(ceil(n·rows/64),)); first code in the high nibble, blocks of 64 over the flat x",
        dequantize_doc="impl(packed, absmax, shape) -> float32 of shape")


def _int8_blockwise_format() -> Format:
    from ... import int8

    def fields(q, absmax):
        return {"code": Field(np.ascontiguousarray(q, dtype=np.uint8).reshape(-1), INT8_BLOCK, "bytes"),
                "absmax": _f32_field(absmax)}

    def encode(x, imat):
        q, st_ = int8.quantize_blockwise(x, blocksize=INT8_BLOCK)
        return fields(q, st_.absmax)

    def read(out, shape):
        q, absmax = out
        n = shape[0] * shape[1]
        return fields(_flat(q, np.uint8, n, "q"), _flat(absmax, np.float32, -(-n // INT8_BLOCK), "absmax"))

    def decode(enc, shape):
        st_ = int8.BlockwiseState(absmax=_as_f32(enc["absmax"]), code=int8.create_dynamic_map(), blocksize=INT8_BLOCK,
                                  dtype=np.float32, shape=tuple(shape))
        return np.asarray(int8.dequantize_blockwise(enc["code"].values.reshape(shape), st_))

    def random(draw, shape):
        from hypothesis.extra import numpy as hnp

        n = shape[0] * shape[1]
        return fields(draw(hnp.arrays(np.uint8, n)), _random_f32(draw, -(-n // INT8_BLOCK)))

    return Format(
        name="INT8-BLOCKWISE", family="bitsandbytes", block=INT8_BLOCK // 4, any_length=True, imatrix="none",
        kinds=_BNB_KINDS, encode=encode, decode=decode, read=read,
        args=lambda enc, shape: (enc["code"].values.reshape(shape), _as_f32(enc["absmax"])), random=random, bits=7,
        codes="code", quantize_doc="impl(x: float32 (rows, n)) -> (q uint8 (rows, n), absmax float32 (ceil(rows·n/256),)):"
                                   " bitsandbytes' dynamic map, blocks of 256 over the flat x",
        dequantize_doc="impl(q, absmax) -> float32 of q's shape")


def _llm_int8_format() -> Format:
    from ... import int8

    def fields(Q, s, rows):
        Q = np.ascontiguousarray(Q, dtype=np.int8).reshape(rows, -1)
        return {"s": _f32_field(s), "Q": Field(Q.reshape(-1), Q.shape[1], "int")}

    def encode(x, imat):
        Q, s, _ = int8.int8_vectorwise_quant(x, threshold=0.0)
        return fields(Q, s, x.shape[0])

    def read(out, shape):
        Q, s = out[0], out[1]
        return fields(_flat(Q, np.int8, shape[0] * shape[1], "Q"), _flat(s, np.float32, shape[0], "s"), shape[0])

    def decode(enc, shape):
        return np.asarray(int8.int8_vectorwise_dequant(enc["Q"].values.reshape(shape), _as_f32(enc["s"])))

    def random(draw, shape):
        from hypothesis.extra import numpy as hnp

        Q = draw(hnp.arrays(np.int8, shape)).clip(-127, 127)
        return fields(Q, _random_f32(draw, shape[0]), shape[0])

    return Format(
        name="LLM.INT8", family="bitsandbytes", block=32, any_length=True, imatrix="none",
        kinds=tuple(k for k in _BNB_KINDS if k not in ("fp16_overflow", "subnormal")), encode=encode, decode=decode,
        read=read, args=lambda enc, shape: (enc["Q"].values.reshape(shape), _as_f32(enc["s"])), random=random, bits=8,
        codes="Q", tie=("absmax", 127), quantize_doc="impl(A: float32 (rows, K)) -> (Q int8 (rows, K), s float32 (rows,)): row absmax, "
                                "round(A·(127/s)), no outlier threshold",
        dequantize_doc="impl(Q, s) -> float32 (rows, K)")


# ---------------------------------------------------------------------------------------
# uniform (refquant.uniform), FP8 (refquant.fp8), MX / NVFP4 (refquant.mx), HQQ
# ---------------------------------------------------------------------------------------

_UNIFORM = {"INT4-G32": dict(bits=4, symmetric=False, granularity="group", group_size=32),
            "INT8-CHANNEL": dict(bits=8, symmetric=True, granularity="channel", axis=0)}
_MODERATE = ("zeros", "signed_zeros", "all_signed_zeros", "zero_extreme", "ties", "constant", "outlier", "normal",
             "same_sign", "heavy_tails", "uniform_int")


def _uniform_format(name: str) -> Format:
    from ... import uniform as U

    cfg = _UNIFORM[name]
    G = cfg.get("group_size")

    def n_params(shape):
        return shape[0] * (shape[1] // G if G else 1)

    def fields(q, s, z, shape):
        per = G if G else shape[1]
        return {"s": _f32_field(s), "z": _f32_field(z), "q": Field(np.asarray(q, np.int32).reshape(-1), per, "int")}

    def qt(enc, shape):
        rows, n = shape
        p_shape = (rows, n // G, 1) if G else (rows, 1)
        q = enc["q"].values.reshape((rows, n // G, G) if G else shape)
        q_min, q_max = U.code_range(cfg["bits"], cfg["symmetric"])
        return U.UniformQuantized(q=q, s=_as_f32(enc["s"]).reshape(p_shape), z=_as_f32(enc["z"]).reshape(p_shape),
                                  bits=cfg["bits"], q_min=q_min, q_max=q_max, symmetric=cfg["symmetric"], signed=True,
                                  granularity=cfg["granularity"], axis=1 if G else 0, group_size=G, shape=tuple(shape))

    def encode(x, imat):
        r = U.quantize(x, **cfg)
        return fields(np.asarray(r.q), np.asarray(r.s), np.asarray(r.z), x.shape)

    def read(out, shape):
        q, s, z = out
        k = n_params(shape)
        return fields(_flat(q, np.int32, shape[0] * shape[1], "q"), _flat(s, np.float32, k, "s"),
                      _flat(z, np.float32, k, "z"), shape)

    def decode(enc, shape):
        return np.asarray(U.dequantize(qt(enc, shape))).reshape(shape)

    def random(draw, shape):
        from hypothesis.extra import numpy as hnp
        from hypothesis import strategies as st

        q_min, q_max = U.code_range(cfg["bits"], cfg["symmetric"])
        k = n_params(shape)
        q = draw(hnp.arrays(np.int32, shape[0] * shape[1], elements=st.integers(q_min, q_max)))
        z = np.zeros(k, np.float32) if cfg["symmetric"] else draw(
            hnp.arrays(np.int32, k, elements=st.integers(q_min, q_max))).astype(np.float32)
        return fields(q, _random_f32(draw, k, zero=False), z, shape)  # refquant.uniform refuses s = 0

    per = f"(rows, n/{G})" if G else "(rows,)"
    return Format(
        name=name, family="uniform", block=G or 32, any_length=False, imatrix="none", kinds=_MODERATE,
        encode=encode, decode=decode, read=read, random=random, bits=cfg["bits"], codes="q",
        tie=("range", 15) if not cfg["symmetric"] else ("absmax", 127),
        args=lambda enc, shape: (enc["q"].values.reshape(shape), _as_f32(enc["s"]), _as_f32(enc["z"])),
        quantize_doc=f"impl(x: float32 (rows, n)) -> (q int codes (rows, n), s float32 {per}, z {per}): "
                     f"{cfg['bits']}-bit {'symmetric' if cfg['symmetric'] else 'asymmetric'} per-{cfg['granularity']}",
        dequantize_doc=f"impl(q (rows, n), s {per}, z {per}) -> float32 (rows, n): (q − z)·s")


def _elementwise_fields(codes: np.ndarray, per_block: int = 32) -> Encoded:
    return {"code": Field(np.ascontiguousarray(codes, dtype=np.uint8).reshape(-1), per_block, "bytes")}


def _fp8_format(name: str) -> Format:
    from ... import fp8

    fmt = fp8.get_format(name.split("-")[1].lower())

    def read(out, shape):
        return _elementwise_fields(_flat(out, np.uint8, shape[0] * shape[1], "codes"))

    def random(draw, shape):
        from hypothesis.extra import numpy as hnp

        return _elementwise_fields(draw(hnp.arrays(np.uint8, shape)))

    kinds = ("zeros", "signed_zeros", "subnormal", "fp16_overflow", "ties", "normal", "outlier", "fp16_edge",
             "heavy_tails", "uniform_int", "huge")
    return Format(
        name=name, family="fp8", block=32, any_length=True, imatrix="none", kinds=kinds,
        encode=lambda x, imat: _elementwise_fields(fp8.encode(x, fmt)),
        decode=lambda enc, shape: fp8.decode(enc["code"].values, fmt).reshape(shape), read=read,
        args=lambda enc, shape: (enc["code"].values.reshape(shape),), random=random, bits=fmt.man_bits + 1,
        codes="code", tie=("grid", fp8.value_table(fmt)), quantize_doc=f"impl(x: float32, any shape) -> uint8 {fmt.name} bit patterns (saturating, "
                                   "round to nearest even)",
        dequantize_doc="impl(codes: uint8) -> float32 of codes' shape")


_MX = {"MX-FP4": "fp4_e2m1", "MX-FP8-E4M3": "fp8_e4m3"}


def _mx_format(name: str) -> Format:
    from ... import fp8, mx

    if name == "NVFP4-TORCHAO":
        element, block = fp8.E2M1, mx.NVFP4_BLOCK if hasattr(mx, "NVFP4_BLOCK") else 16
    else:
        element, block = mx.ELEMENTS[_MX[name]], mx.MX_BLOCK

    def fields(codes, scales, shape):
        return {"scale": Field(np.ascontiguousarray(scales, dtype=np.uint8).reshape(-1), 1, "bytes"),
                "code": _elementwise_fields(codes, block)["code"]}

    def encode(x, imat):
        if name == "NVFP4-TORCHAO":
            r = mx.nvfp4_quantize(x)
            return fields(fp8.encode(np.asarray(r.q), element).reshape(x.shape), mx.nvfp4_scale_bytes(r), x.shape)
        r = mx.mx_quantize(x, _MX[name])
        return fields(fp8.encode(np.asarray(r.q), element).reshape(x.shape), mx.e8m0_bytes(r), x.shape)

    def decode(enc, shape):
        rows, n = shape
        q = fp8.decode(enc["code"].values, element).reshape(rows, n // block, block)
        s = enc["scale"].values.reshape(rows, n // block, 1)
        if name == "NVFP4-TORCHAO":
            return np.asarray(mx.nvfp4_dequantize(mx.NVFP4Quantized(q, fp8.decode(s, fp8.E4M3), np.float32(1.0))))
        X = s.astype(np.float32) - mx.E8M0_BIAS
        return np.asarray(mx.mx_dequantize(mx.MXQuantized(q, X, element, block, "floor")))

    def read(out, shape):
        codes, scales = out
        n = shape[0] * shape[1]
        return fields(_flat(codes, np.uint8, n, "codes"), _flat(scales, np.uint8, n // block, "scales"), shape)

    def random(draw, shape):
        from hypothesis import strategies as st
        from hypothesis.extra import numpy as hnp

        n = shape[0] * shape[1]
        codes = draw(hnp.arrays(np.uint8, n, elements=st.integers(0, 2**element.n_bits - 1)))
        # E8M0 0xFF is NaN; NVFP4's block scale is a non-negative finite E4M3 (0x00 … 0x7E)
        scales = draw(hnp.arrays(np.uint8, n // block, elements=st.integers(0, 0x7E if name == "NVFP4-TORCHAO" else 254)))
        return fields(codes, scales, shape)

    scale = "E4M3" if name == "NVFP4-TORCHAO" else "E8M0"
    return Format(
        name=name, family="mx", block=block, any_length=False, imatrix="none",
        kinds=("zeros", "signed_zeros", "subnormal", "ties", "constant", "outlier", "normal", "fp16_edge",
               "heavy_tails", "uniform_int"),
        encode=encode, decode=decode, read=read, random=random, bits=element.man_bits + 1, codes="code",
        args=lambda enc, shape: (enc["code"].values.reshape(shape), enc["scale"].values.reshape(shape[0], -1)),
        quantize_doc=f"impl(x: float32 (rows, n)) -> (codes uint8 {element.name} patterns (rows, n), "
                     f"scales uint8 {scale} (rows, n/{block}))",
        dequantize_doc=f"impl(codes (rows, n), scales (rows, n/{block})) -> float32 (rows, n)")


def _hqq_format() -> Format:
    from ... import hqq

    G = hqq.GROUP_SIZE

    def fields(q, s, z):
        return {"s": _f32_field(s), "z": _f32_field(z), "q": Field(np.asarray(q, np.float32).reshape(-1).astype(np.int32), G, "int")}

    def encode(x, imat):
        r = hqq.hqq_quantize(x, bits=4)
        return fields(np.asarray(r.q), np.asarray(r.s), np.asarray(r.z))

    def read(out, shape):
        q, s, z = out[0], out[1], out[2]
        k = shape[0] * shape[1] // G
        return fields(_flat(q, np.int32, shape[0] * shape[1], "q"), _flat(s, np.float32, k, "s"), _flat(z, np.float32, k, "z"))

    def decode(enc, shape):
        rows, n = shape
        r = hqq.HQQQuantized(enc["q"].values.astype(np.float32).reshape(rows, n // G, G),
                             _as_f32(enc["s"]).reshape(rows, n // G, 1), _as_f32(enc["z"]).reshape(rows, n // G, 1), 4, G, 0)
        return np.asarray(hqq.hqq_dequantize(r)).reshape(shape)

    def random(draw, shape):
        from hypothesis import strategies as st
        from hypothesis.extra import numpy as hnp

        k = shape[0] * shape[1] // G
        q = draw(hnp.arrays(np.int32, shape[0] * shape[1], elements=st.integers(0, 15)))
        z = draw(hnp.arrays(np.float32, k, elements=st.floats(0, 15, width=32)))
        return fields(q, _random_f32(draw, k), z)

    return Format(
        name="HQQ-4", family="hqq", block=G, any_length=False, imatrix="none",
        kinds=("zeros", "ties", "constant", "outlier", "normal", "same_sign", "heavy_tails", "uniform_int"),
        encode=encode, decode=decode, read=read, random=random, bits=4, codes="q",
        args=lambda enc, shape: (enc["q"].values.reshape(shape), _as_f32(enc["s"]), _as_f32(enc["z"])),
        quantize_doc=f"impl(W: float32 (rows, n)) -> (q codes 0..15 (rows, n), s, z float32 (rows, n/{G})): "
                     "HQQ 4-bit, group 64, hqq's solver",
        dequantize_doc="impl(q, s, z) -> float32 (rows, n): (q − z) · s")


# ---------------------------------------------------------------------------------------
# the registry: built on demand, so a new CODECS entry is a new format
# ---------------------------------------------------------------------------------------

_OTHERS: dict[str, Callable[[], Format]] = {
    "NF4": lambda: _nf4_format("nf4"), "FP4": lambda: _nf4_format("fp4"),
    "INT8-BLOCKWISE": _int8_blockwise_format, "LLM.INT8": _llm_int8_format,
    "INT4-G32": lambda: _uniform_format("INT4-G32"), "INT8-CHANNEL": lambda: _uniform_format("INT8-CHANNEL"),
    "FP8-E4M3": lambda: _fp8_format("FP8-E4M3"), "FP8-E5M2": lambda: _fp8_format("FP8-E5M2"),
    "MX-FP4": lambda: _mx_format("MX-FP4"), "MX-FP8-E4M3": lambda: _mx_format("MX-FP8-E4M3"),
    "NVFP4-TORCHAO": lambda: _mx_format("NVFP4-TORCHAO"), "HQQ-4": _hqq_format,
}
_CACHE: dict[str, Format] = {}


def format_names() -> tuple:
    """Every format the kit checks: the GGUF types of refquant.gguf.CODECS, then the others."""
    from ... import gguf

    return tuple(gguf.CODECS) + tuple(_OTHERS)


def get_format(name: Any) -> Format:
    """The ``Format`` named ``name`` (case-insensitive), or ValueError naming the known ones."""
    if isinstance(name, Format):
        return name
    key = str(name).upper()
    if key not in _CACHE:
        from ... import gguf

        if key in gguf.CODECS:
            _CACHE[key] = _gguf_format(key)
        elif key in _OTHERS:  # (ggml's own MXFP4 / NVFP4 block types are GGUF types above)
            _CACHE[key] = _OTHERS[key]()
        else:
            raise ValueError(f"fmt: unknown format {name!r}; known: {', '.join(format_names())}")
    return _CACHE[key]
