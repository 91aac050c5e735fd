"""Conformance kit: point refquant at *your* quantization kernel and get a byte-level verdict.

    from refquant.testing import conformance
    report = conformance.check(my_q4_0, "Q4_0")          # or direction="dequantize"
    print(report.table()); assert report.ok

``impl`` is any callable with the natural signature of the format (see ``signature(fmt)``
and the table in ``refquant.testing.conformance._formats``): float32 rows in, block bytes out
for GGUF types; (packed, absmax) for NF4/FP4; (codes, scales, zero-points) for uniform ...
It receives NumPy arrays, or torch / CuPy ones with ``backend=``.

The battery — each property a Hypothesis search, the edge cases drawn first:

| property      | quantize: impl(x) must …                          | dequantize: impl(enc) must …            |
|---------------|---------------------------------------------------|-----------------------------------------|
| edge parity   | equal refquant byte for byte on ±0, ties at k+½, all-zero, constant, one outlier, subnormal, fp16-overflowing and huge blocks | decode refquant's encodings of those blocks bit for bit |
| bulk parity   | … on ordinary blocks (normal, heavy tails, outliers) | decode random bytes bit for bit (NaN = NaN) |
| shapes        | … on one block, many rows, odd lengths where the format allows them | the same                 |
| idempotence   | Q(D(Q(x))) == Q(x): parity on points of the grid   | Q(D(b)) == Q(D_ref(b))                 |
| error bound   | max |x − D(Q(x))| ≤ max(2·amax/(2^b − 1), refquant's) per block | the same for D(Q_ref(x)) |
| non-finite    | refuse NaN/±inf (raise) or let it through as NaN/inf, never as finite bytes | —         |
| imatrix       | equal refquant with an importance matrix (types that take one) | —                          |

A failure is reported with the shrunk input, the block, the field (``d``, ``dmin``, ``scales``,
``qs``, ``qh``, ``absmax``, ``code`` …), the element and the highest bit that differ, both values,
and a guess at the cause from ``CAUSES`` (the table of known causes).
"""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Callable

import numpy as np

from ._causes import CAUSES, UNKNOWN, Cause, Evidence, guess
from ._formats import Field, Format, ShapeMismatch, format_names, get_format

__all__ = ["check", "reference", "Report", "PropertyResult", "Failure", "PROPERTIES", "CAUSES", "Cause", "signature",
           "format_names", "get_format", "oracle_versions"]

DIRECTIONS = ("quantize", "dequantize")
PROPERTIES = {"quantize": ("edge parity", "imatrix", "bulk parity", "shapes", "idempotence", "error bound", "non-finite"),
              "dequantize": ("edge parity", "bulk parity", "shapes", "idempotence", "error bound")}
DEFAULT_EXAMPLES = 40


@dataclasses.dataclass
class Failure:
    """The first difference of a failing property, on the shrunk input."""

    input: Any             # the shrunk input: x (rows, n) float32, or the encoding's arguments
    block: int             # index of the first differing block (row-major over the rows)
    field: str             # 'd', 'qs', 'absmax', 'code', 'decoded' (decoded floats), 'shape', 'exception' ...
    element: int           # index inside the field of that block
    bit: int | None        # the highest bit that differs in that element
    ours: str              # refquant's value
    theirs: str            # the implementation's value
    cause: str             # a name from CAUSES, 'unknown', or 'shape' / 'raised'
    hint: str
    imatrix: Any = None

    def line(self) -> str:
        bit = "" if self.bit is None else f" bit {self.bit}"
        return (f"block {self.block}, {self.field}[{self.element}]{bit}: refquant {self.ours}, yours {self.theirs} "
                f"-> {self.cause}: {self.hint}")


@dataclasses.dataclass
class PropertyResult:
    name: str
    status: str            # 'pass', 'FAIL', 'n/a'
    examples: int
    seconds: float
    failure: Failure | None = None
    note: str = ""


@dataclasses.dataclass
class Report:
    impl: str
    format: str
    direction: str
    properties: list
    versions: dict

    @property
    def ok(self) -> bool:
        """True when no property failed (and at least one ran)."""
        ran = [p for p in self.properties if p.status != "n/a"]
        return bool(ran) and all(p.status == "pass" for p in ran)

    @property
    def first_failure(self) -> PropertyResult | None:
        return next((p for p in self.properties if p.status == "FAIL"), None)

    def table(self) -> str:
        """The report as a plain-text table: one line per property, the failures explained below."""
        head = f"{self.impl} as {self.format} {self.direction}: {'CONFORMS' if self.ok else 'DOES NOT CONFORM'}"
        lines = [head, f"  {'property':14s} {'result':6s} {'examples':>8s} {'seconds':>8s}"]
        for p in self.properties:
            lines.append(f"  {p.name:14s} {p.status:6s} {p.examples:8d} {p.seconds:8.2f}" + (f"  {p.note}" if p.note else ""))
        for p in self.properties:
            if p.failure is not None:
                f = p.failure
                lines.append(f"  {p.name}: {f.line()}")
                lines.append(f"    input: {_short(f.input)}")
        lines.append("  proven against: " + ", ".join(f"{k} {v}" for k, v in self.versions.items()))
        return "\n".join(lines)

    def to_json(self) -> str:
        def prop(p):
            d = {"name": p.name, "status": p.status, "examples": p.examples, "seconds": round(p.seconds, 3), "note": p.note}
            if p.failure is not None:
                f = dataclasses.asdict(p.failure)
                f["input"] = _jsonable(f["input"])
                f["imatrix"] = _jsonable(f["imatrix"])
                d["failure"] = f
            return d

        return json.dumps({"impl": self.impl, "format": self.format, "direction": self.direction, "ok": self.ok,
                           "properties": [prop(p) for p in self.properties], "versions": self.versions}, indent=1)


def _jsonable(a: Any) -> Any:
    if a is None:
        return None
    if isinstance(a, tuple):
        return [_jsonable(v) for v in a]
    if isinstance(a, np.ndarray):
        return a.tolist() if a.dtype.kind != "f" else [None if not np.isfinite(v) else float(v) for v in a.ravel()]
    return a


def _short(a: Any, limit: int = 160) -> str:
    if isinstance(a, tuple):
        return "(" + ", ".join(_short(v, limit // 2) for v in a) + ")"
    if isinstance(a, np.ndarray):
        s = np.array2string(a.ravel()[:48], precision=6, separator=", ", max_line_width=10**6)
        return f"{a.dtype} {a.shape} {s[:limit]}{' …' if a.size > 48 or len(s) > limit else ''}"
    return repr(a)[:limit]


def oracle_versions() -> dict:
    """The installed versions of the libraries refquant's parity was proven against (importlib.metadata)."""
    from importlib import metadata

    out = {}
    for pkg in ("refquant", "bitsandbytes", "libggml-python", "gguf", "torch", "torchao", "hqq"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "not installed"
    return out


def signature(fmt: Any, direction: str = "quantize") -> str:
    """The natural signature ``impl`` must have for ``fmt`` in ``direction``.

    >>> signature("Q8_0")
    'impl(x: float32 (rows, n), n % 32 == 0) -> uint8 (rows, n/32*34)'
    """
    f = get_format(fmt)
    return f.quantize_doc if direction == "quantize" else f.dequantize_doc


# ---------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------

def _to_backend(a: Any, backend: str) -> Any:
    if not isinstance(a, np.ndarray) or backend == "numpy":
        return a
    if backend == "torch":
        import torch

        return torch.from_numpy(np.ascontiguousarray(a).copy())
    if backend == "cupy":
        import cupy

        return cupy.asarray(a)
    raise ValueError(f"backend: expected 'numpy', 'torch' or 'cupy', got {backend!r}")


# ---------------------------------------------------------------------------------------
# comparing encodings
# ---------------------------------------------------------------------------------------

_NAN_MASK = {"fp16": (0x7FFF, 0x7C00), "bf16": (0x7FFF, 0x7F80), "f32": (0x7FFFFFFF, 0x7F800000)}


def _differs(a: Field, b: Field) -> np.ndarray:
    """Element-wise 'differ' of two fields, bitwise (two NaNs of a float field are equal)."""
    x, y = np.asarray(a.values), np.asarray(b.values)
    ne = x != y
    if a.kind in _NAN_MASK:
        mask, inf = _NAN_MASK[a.kind]
        ne &= ~(((x.astype(np.int64) & mask) > inf) & ((y.astype(np.int64) & mask) > inf))
    return ne


def _show(v: int, kind: str) -> str:
    if kind == "fp16":
        return f"{float(np.uint16(v).view(np.float16))!r} (0x{v:04x})"
    if kind == "bf16":
        return f"{float(np.uint32(v << 16).view(np.float32))!r} (0x{v:04x})"
    if kind == "f32":
        return f"{float(np.uint32(v).view(np.float32))!r} (0x{v:08x})"
    if kind in ("bytes", "nibbles"):
        return f"0x{v:02x}"
    return str(v)


class _Diff:
    def __init__(self, block, field, element, index, ours, theirs):
        self.block, self.field, self.element, self.index, self.ours, self.theirs = block, field, element, index, ours, theirs


def _first_difference(ours: dict, theirs: dict) -> _Diff | None:
    """The first differing element: the lowest block, then the first field of the block's struct."""
    best = None
    for name, f in ours.items():
        g = theirs[name]
        ne = _differs(f, g)
        if ne.any():
            i = int(np.flatnonzero(ne)[0])
            block = i // f.per_block
            if best is None or block < best.block:
                best = _Diff(block, name, i - block * f.per_block, i, int(f.values[i]) if f.kind != "int" else int(f.values[i]),
                             int(g.values[i]))
    return best


def _value_fields(v: np.ndarray, per_block: int) -> dict:
    return {"decoded": Field(np.ascontiguousarray(v, dtype=np.float32).reshape(-1).view(np.uint32), per_block, "f32")}


# ---------------------------------------------------------------------------------------
# the battery
# ---------------------------------------------------------------------------------------

class _Mismatch(AssertionError):
    pass


class _Case:
    """What one property needs to run on one input."""

    def __init__(self, fmt: Format, impl: Callable, direction: str, backend: str):
        self.fmt, self.impl, self.direction, self.backend = fmt, impl, direction, backend

    def call_quantize(self, x: np.ndarray, imat: np.ndarray | None) -> Any:
        args = (_to_backend(x, self.backend),) + (() if imat is None else (_to_backend(imat, self.backend),))
        with np.errstate(all="ignore"):
            return self.impl(*args)

    def call_dequantize(self, enc: dict, shape: tuple) -> np.ndarray:
        from ._formats import _np

        args = tuple(_to_backend(a, self.backend) for a in self.fmt.args(enc, shape))
        with np.errstate(all="ignore"):
            out = _np(self.impl(*args))
        if out.size != shape[0] * shape[1]:
            raise ShapeMismatch(f"{out.size} values returned, expected {shape[0] * shape[1]}")
        return np.ascontiguousarray(out, dtype=np.float32).reshape(shape)


def _ref_encode(fmt: Format, x: np.ndarray, imat: np.ndarray | None) -> dict:
    """refquant's encoding, or a Hypothesis rejection when refquant refuses the input (out of its domain)."""
    from hypothesis import reject

    try:
        with np.errstate(all="ignore"):
            return fmt.encode(x, imat)
    except (ValueError, OverflowError, FloatingPointError):
        reject()


def _decode_side_imatrix(fmt: Format, n: int) -> np.ndarray | None:
    """The importance matrix refquant encodes with on the dequantize side: ones (n,) for the types that
    require one (IQ2_XXS, IQ2_XS, IQ1_S refuse to encode without), else None."""
    return np.ones(n, np.float32) if fmt.imatrix == "required" else None


def _block_of(a: np.ndarray, block: int, fmt: Format) -> np.ndarray:
    flat = np.asarray(a, np.float32).reshape(-1)
    return flat[block * fmt.block:(block + 1) * fmt.block]


def _bound(fmt: Format, xb: np.ndarray) -> float:
    amax = float(np.max(np.abs(xb))) if xb.size else 0.0
    return 2.0 * amax / (2.0**fmt.bits - 1)


def _failure_from_diff(case: _Case, prop: str, diff: _Diff, ours: dict, theirs: dict, inp: Any,
                       x: np.ndarray | None, ours_dec: np.ndarray | None, theirs_dec: np.ndarray | None,
                       imat: Any, same_without: bool) -> Failure:
    fmt = case.fmt
    f, g = ours[diff.field], theirs[diff.field]
    lo, hi = diff.block * f.per_block, (diff.block + 1) * f.per_block
    # the block of decoded values that holds the first difference (fields of one block = values of one block)
    vblock = diff.block
    xb = None if x is None else _block_of(x, vblock, fmt)
    ob = None if ours_dec is None else _block_of(ours_dec, vblock, fmt)
    tb = None if theirs_dec is None else _block_of(theirs_dec, vblock, fmt)
    kind = "decoded" if diff.field == "decoded" else f.kind
    ev = Evidence(case.direction, prop, diff.field, kind, f.values[lo:hi], g.values[lo:hi], diff.element,
                  xb, ob, tb, _bound(fmt, xb) if xb is not None else 0.0, same_without)
    cause = guess(ev)
    x_bits = int(diff.ours) ^ int(diff.theirs)
    bit = x_bits.bit_length() - 1 if x_bits > 0 else None
    return Failure(inp, diff.block, diff.field, diff.element, bit, _show(diff.ours, f.kind), _show(diff.theirs, f.kind),
                   cause.name, cause.hint, imat)


def _exception_failure(inp: Any, e: BaseException, imat: Any = None) -> Failure:
    if isinstance(e, ShapeMismatch):
        return Failure(inp, 0, "shape", 0, None, "", str(e), "block size or layout",
                       "the output does not have the format's shape: a block size or block bytes mix-up", imat)
    return Failure(inp, 0, "exception", 0, None, "returns", f"{type(e).__name__}: {e}"[:200], "raised",
                   "the implementation raised on an input refquant accepts", imat)


def _check_quantize(case: _Case, prop: str, x: np.ndarray, imat: np.ndarray | None) -> Failure | None:
    fmt = case.fmt
    shape = x.shape
    ours = _ref_encode(fmt, x, imat)
    try:
        theirs = fmt.read(case.call_quantize(x, imat), shape)
    except Exception as e:  # noqa: BLE001 - any exception of the implementation is a finding
        return _exception_failure(x, e, imat)
    decode = _safe_decode(fmt, shape)
    if prop == "error bound":
        ours_dec, theirs_dec = decode(ours), decode(theirs)
        if theirs_dec is None:
            return None
        err_t = np.abs(theirs_dec.astype(np.float64) - x).reshape(-1, fmt.block)       # (n_blocks, B)
        err_o = np.abs(ours_dec.astype(np.float64) - x).reshape(-1, fmt.block)
        xb = x.reshape(-1, fmt.block)
        limit = np.maximum(2.0 * np.max(np.abs(xb), axis=1) / (2.0**fmt.bits - 1), np.nanmax(err_o, axis=1))
        bad = np.flatnonzero(~(np.nanmax(err_t, axis=1) <= limit * (1 + 2.0**-20)))
        if not bad.size:
            return None
        b = int(bad[0])
        j = int(np.nanargmax(err_t[b]))
        diff = _Diff(b, "decoded", j, b * fmt.block + j, int(np.float32(ours_dec.reshape(-1)[b * fmt.block + j]).view(np.uint32)),
                     int(np.float32(theirs_dec.reshape(-1)[b * fmt.block + j]).view(np.uint32)))
        vo, vt = _value_fields(ours_dec, fmt.block), _value_fields(theirs_dec, fmt.block)
        return _failure_from_diff(case, prop, diff, vo, vt, x, x, ours_dec, theirs_dec, imat, False)
    for name, f in ours.items():
        if name not in theirs or theirs[name].values.size != f.values.size:
            return _exception_failure(x, ShapeMismatch(f"field {name}: layout differs"), imat)
    diff = _first_difference(ours, theirs)
    if diff is None:
        return None
    same_without = False
    if imat is not None:
        plain = _ref_encode(fmt, x, None)
        same_without = _first_difference(plain, theirs) is None
    return _failure_from_diff(case, prop, diff, ours, theirs, x, x, decode(ours), decode(theirs), imat, same_without)


def _safe_decode(fmt: Format, shape: tuple) -> Callable:
    def decode(enc):
        try:
            with np.errstate(all="ignore"):
                return np.asarray(fmt.decode(enc, shape), np.float32).reshape(shape)
        except Exception:  # noqa: BLE001 - an encoding refquant cannot decode has no decoded evidence
            return None
    return decode


def _check_nonfinite(case: _Case, x: np.ndarray) -> Failure | None:
    """refquant's policy is the reference: where refquant encodes NaN/±inf (FP8 saturates ±inf,
    as satfinite casts do) the bytes must match; where it refuses, the implementation must
    refuse, or let the non-finite value through to its decoding — never hide it in finite bytes."""
    fmt = case.fmt
    try:
        with np.errstate(all="ignore"):
            fmt.encode(x, None)
        return _check_quantize(case, "edge parity", x, None)
    except (ValueError, OverflowError, FloatingPointError):
        pass
    try:
        out = case.call_quantize(x, None)
        theirs = fmt.read(out, x.shape)
    except Exception:  # noqa: BLE001 - refusing NaN/inf is a conforming answer
        return None
    dec = _safe_decode(fmt, x.shape)(theirs)
    bad = np.flatnonzero(~np.isfinite(x.reshape(-1)))
    block = int(bad[0]) // fmt.block
    if dec is not None and not np.all(np.isfinite(_block_of(dec, block, fmt))):
        return None
    lane = int(bad[0]) - block * fmt.block
    return Failure(x, block, "decoded", lane, None, "ValueError (refuses non-finite input)",
                   "finite bytes" if dec is None else f"decodes to {float(dec.reshape(-1)[bad[0]])!r}",
                   "non-finite accepted", "NaN/±inf in the input was quantized to finite bytes without an error", None)


def _check_dequantize(case: _Case, prop: str, enc: dict, shape: tuple, x: np.ndarray | None) -> Failure | None:
    fmt = case.fmt
    args_np = fmt.args(enc, shape)
    try:
        theirs = case.call_dequantize(enc, shape)
    except Exception as e:  # noqa: BLE001
        return _exception_failure(args_np, e)
    try:
        with np.errstate(all="ignore"):
            ours = np.asarray(fmt.decode(enc, shape), np.float32).reshape(shape)
    except (ValueError, OverflowError):
        from hypothesis import reject

        reject()
    if prop == "idempotence":
        imat = _decode_side_imatrix(fmt, shape[1])
        a, b = _ref_encode(fmt, np.nan_to_num(ours), imat), _ref_encode(fmt, np.nan_to_num(theirs), imat)
        diff = _first_difference(a, b)
        if diff is None:
            return None
        return _failure_from_diff(case, prop, diff, a, b, args_np, x, ours, theirs, None, False)
    if prop == "error bound" and x is not None:
        err_t = np.abs(theirs.astype(np.float64) - x).reshape(-1, fmt.block)
        err_o = np.abs(ours.astype(np.float64) - x).reshape(-1, fmt.block)
        limit = np.maximum(2.0 * np.max(np.abs(x.reshape(-1, fmt.block)), axis=1) / (2.0**fmt.bits - 1),
                           np.nanmax(err_o, axis=1))
        if np.all(np.nanmax(err_t, axis=1) <= limit * (1 + 2.0**-20)):
            return None
    vo, vt = _value_fields(ours, fmt.block), _value_fields(theirs, fmt.block)
    diff = _first_difference(vo, vt)
    if diff is None:
        return None
    return _failure_from_diff(case, prop, diff, vo, vt, args_np, ours, ours, theirs, None, False)


# ---------------------------------------------------------------------------------------
# strategies per property
# ---------------------------------------------------------------------------------------

def _imatrix_strategy(n: int):
    from hypothesis import strategies as st
    from hypothesis.extra import numpy as hnp

    # importance values: mostly ordinary, some tiny or zero lanes (the weighted searches' edge)
    return hnp.arrays(np.float32, n, elements=st.one_of(st.floats(2.0**-10, 16.0, width=32), st.just(0.0),
                                                        st.floats(2.0**-100, 2.0**-66, width=32)))


def _x_strategy(fmt: Format, prop: str, fixed_n: int | None):
    from hypothesis import strategies as st

    from .. import strategies as rq

    edge = tuple(k for k in fmt.kinds)
    ordinary = tuple(k for k in fmt.kinds if k in rq.KINDS)
    B = fmt.block
    if fixed_n is not None:
        return rq.rows(B, max_rows=2, max_blocks=1, kinds=edge).map(lambda a: a) if fixed_n == B else \
            st.integers(1, 2).flatmap(lambda r: rq.block_values(r * fixed_n // B, B, kinds=edge).map(
                lambda v: v.reshape(r, fixed_n)))
    if prop == "edge parity" and fmt.tie is not None:     # exact midpoints first: they shrink to few lanes
        from ._formats import tie_rows

        return st.one_of(tie_rows(fmt.tie, B), rq.rows(B, max_rows=2, max_blocks=2, kinds=edge))
    if prop == "edge parity" or prop == "non-finite":
        return rq.rows(B, max_rows=2, max_blocks=2, kinds=edge)
    if prop in ("bulk parity", "idempotence", "error bound", "imatrix"):
        return rq.rows(B, max_rows=3, max_blocks=3, kinds=ordinary)
    # shapes: one block, many rows of many blocks, and odd lengths where allowed
    many = rq.rows(B, max_rows=6, max_blocks=6, kinds=("normal", "zeros", "outlier"))
    if not fmt.any_length:
        return st.one_of(rq.rows(B, max_rows=1, max_blocks=1, kinds=edge), many)

    @st.composite
    def odd(draw):
        rows = draw(st.integers(1, 3))
        n = draw(st.integers(1, 3 * B))
        v = draw(rq.block_values(-(-rows * n // B), B, kinds=ordinary))
        return v[: rows * n].reshape(rows, n)

    return st.one_of(rq.rows(B, max_rows=1, max_blocks=1, kinds=edge), many, odd())


def _fixed_edge_rows(fmt: Format, fixed_n: int | None) -> list:
    """One row per failure class the format draws (a tie row first, where it has one), from a fixed seed.

    Hypothesis draws from a pool that includes constants found in the modules a process has
    imported, so what it generates depends on the caller's imports; these rows make every edge
    class part of every run, whatever it draws, and the verdict the same in any process.
    """
    from .. import strategies as rq
    from ._formats import seeded_tie_row

    rng = np.random.default_rng(20240607)
    B = fmt.block
    n = fixed_n if fixed_n is not None else B * max(2, -(-64 // B))     # two blocks, and 64 values at least
    rows = [seeded_tie_row(fmt.tie, B, rng, n // B)] if fmt.tie is not None else []
    # the ordinary kinds before the extremes: a bug that shows on ordinary weights is reported there
    for kind in sorted(fmt.kinds, key=lambda k: k in rq.EDGE_KINDS):
        if kind in rq.EDGE_KINDS:
            rows.append(rq.seeded_edge_block(kind, rng, n).reshape(1, n))
        else:
            rows.append(rq.seeded_block(kind, rng, n, 1.0).astype(np.float32).reshape(1, n))
    return rows


def _with_examples(test: Callable, case: _Case, prop: str, fixed: np.ndarray | None, wants_imatrix: bool,
                   pinned: tuple) -> Callable:
    """``test`` with Hypothesis examples: the caller's ``pinned`` inputs first, then (edge parity) the
    seeded edge rows; on the decode side each is encoded by refquant (skipped outside its domain)."""
    from hypothesis import example

    fmt = case.fmt
    fixed_n = None if fixed is None else int(fixed.shape[0])
    fixed_rows = _fixed_edge_rows(fmt, fixed_n) if prop == "edge parity" else []
    for x in reversed(list(pinned if prop != "non-finite" else ()) + fixed_rows):  # the caller's inputs first
        x = np.asarray(x, np.float32).reshape(-1, np.shape(x)[-1])
        if case.direction == "quantize":
            imat = (fixed if fixed is not None else np.ones(x.shape[1], np.float32)) if wants_imatrix else None
            test = example((x, imat))(test)
        elif prop != "bulk parity":
            imat = _decode_side_imatrix(fmt, x.shape[1])
            try:
                with np.errstate(all="ignore"):
                    enc = fmt.encode(x, imat)
            except (ValueError, OverflowError, FloatingPointError):
                continue                                 # out of refquant's domain: nothing to decode
            test = example((x, enc, x.shape))(test)
    return test


def _run(case: _Case, prop: str, examples: int, shrink: bool, imatrix: Any, pinned: tuple = ()) -> PropertyResult:
    """One property as a Hypothesis search; the failure kept is the last one seen (the shrunk one)."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from hypothesis.errors import Unsatisfiable

    fmt = case.fmt
    fixed = None if imatrix is None or isinstance(imatrix, str) else np.asarray(imatrix, np.float32)
    fixed_n = None if fixed is None else int(fixed.shape[0])
    wants_imatrix = prop == "imatrix" or (fmt.imatrix == "required" and case.direction == "quantize")
    failures: list[Failure] = []
    count = [0]

    if case.direction == "quantize":
        xs = _x_strategy(fmt, prop, fixed_n)

        @st.composite
        def inputs(draw):
            x = draw(xs)
            imat = None
            if wants_imatrix:
                imat = fixed if fixed is not None else draw(_imatrix_strategy(x.shape[1]))
            if prop == "non-finite":
                x = x.copy()
                lane = draw(st.integers(0, x.size - 1))
                x.reshape(-1)[lane] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
            return x, imat

        def body(case_input):
            x, imat = case_input
            count[0] += 1
            f = _check_nonfinite(case, x) if prop == "non-finite" else _check_quantize(case, prop, x, imat)
            if f is not None:
                failures.append(f)
                raise _Mismatch(f.line())
    else:
        xs = _x_strategy(fmt, "edge parity" if prop == "edge parity" else "shapes" if prop == "shapes" else "bulk parity",
                         fixed_n)

        @st.composite
        def inputs(draw):
            if prop == "bulk parity":     # random bytes: shapes drawn as for x, the encoding drawn field by field
                x = draw(_x_strategy(fmt, "shapes", None))
                return draw(st.just(None)), fmt.random(draw, x.shape), x.shape
            x = draw(xs)
            return x, _ref_encode(fmt, x, _decode_side_imatrix(fmt, x.shape[1])), x.shape

        def body(case_input):
            x, enc, shape = case_input
            count[0] += 1
            f = _check_dequantize(case, prop, enc, shape, x)
            if f is not None:
                failures.append(f)
                raise _Mismatch(f.line())

    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    test = _with_examples(given(inputs())(body), case, prop, fixed, wants_imatrix, pinned)
    test = settings(max_examples=examples, derandomize=True, database=None, deadline=None, phases=phases,
                    suppress_health_check=list(HealthCheck), report_multiple_bugs=False, print_blob=False)(test)
    t0 = time.perf_counter()
    try:
        test()
    except Unsatisfiable:
        return PropertyResult(prop, "n/a", count[0], time.perf_counter() - t0, note="no input in refquant's domain")
    except Exception as e:  # noqa: BLE001 - a failure of the implementation, whatever it raised
        if not failures:
            raise
        del e
    seconds = time.perf_counter() - t0
    if failures:
        return PropertyResult(prop, "FAIL", count[0], seconds, failures[-1])
    return PropertyResult(prop, "pass", count[0], seconds)


def check(impl: Callable, fmt: Any, direction: str = "quantize", *, imatrix: Any = None,
          examples: int = DEFAULT_EXAMPLES, backend: str = "numpy", properties: Any = None, shrink: bool = True,
          fail_fast: bool = False, inputs: Any = ()) -> Report:
    """Run the battery on ``impl`` for ``fmt`` in ``direction`` and return the ``Report``.

    imatrix: None (no importance matrix, except for the types that require one: they get
    drawn ones), 'draw' (the 'imatrix' property calls ``impl(x, imatrix)`` with drawn vectors),
    or a fixed (n,) vector (rows of n are drawn).
    examples: Hypothesis examples per property. backend: 'numpy', 'torch' or 'cupy' (what
    ``impl`` receives). properties: a subset of ``PROPERTIES[direction]``. shrink: minimise
    a failing input (off: faster, the first failing input is kept). fail_fast: stop at the
    first failing property. inputs: arrays x (rows, n) tried before the drawn ones (a
    failure found once, pinned).
    """
    f = get_format(fmt)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction: expected 'quantize' or 'dequantize', got {direction!r}")
    if not callable(impl):
        raise TypeError(f"impl: expected a callable, got {type(impl).__name__}")
    if backend not in ("numpy", "torch", "cupy"):
        raise ValueError(f"backend: expected 'numpy', 'torch' or 'cupy', got {backend!r}")
    if not isinstance(examples, int) or examples < 1:
        raise ValueError(f"examples: expected a positive int, got {examples!r}")
    if isinstance(imatrix, str) and imatrix != "draw":
        raise ValueError(f"imatrix: expected None, 'draw' or an (n,) vector, got {imatrix!r}")
    if imatrix is not None and not isinstance(imatrix, str):
        imat = np.asarray(imatrix)
        if imat.ndim != 1 or imat.shape[0] % f.block or not np.all(np.isfinite(imat)) or np.any(imat < 0):
            raise ValueError(f"imatrix: expected a finite, non-negative (n,) vector with n a multiple of {f.block}")
    names = PROPERTIES[direction] if properties is None else tuple(properties)
    unknown = [p for p in names if p not in PROPERTIES[direction]]
    if unknown:
        raise ValueError(f"properties: unknown {unknown}; {direction} has {PROPERTIES[direction]}")
    case = _Case(f, impl, direction, backend)
    results = []
    for prop in names:
        if prop == "imatrix" and (f.imatrix == "none" or imatrix is None):
            note = (f"{f.name} takes no importance matrix" if f.imatrix == "none"
                    else "pass imatrix='draw' (or a vector) to check impl(x, imatrix)")
            results.append(PropertyResult(prop, "n/a", 0, 0.0, note=note))
            continue
        r = _run(case, prop, examples, shrink, imatrix, tuple(inputs))
        results.append(r)
        if fail_fast and r.status == "FAIL":
            break
    name = getattr(impl, "__qualname__", None) or type(impl).__name__
    module = getattr(impl, "__module__", None)
    return Report(f"{module}.{name}" if module else name, f.name, direction, results, oracle_versions())


def reference(fmt: Any, direction: str = "quantize") -> Callable:
    """refquant's own codec with the natural signature of ``fmt`` (what ``check`` expects of yours).

    >>> q = reference("Q8_0"); raw = q(np.full((1, 32), 2.0, np.float32)); raw.shape
    (1, 34)
    >>> check(q, "Q8_0", examples=2, properties=["edge parity"]).ok
    True
    """
    f = get_format(fmt)

    def natural(enc: dict, shape: tuple) -> Any:
        out = tuple(a for a in f.args(enc, shape) if isinstance(a, np.ndarray))
        return out[0] if len(out) == 1 else out

    if direction == "quantize":
        def quantize(x, imatrix=None):
            x = np.asarray(x, np.float32)
            return natural(f.encode(x, imatrix), x.shape)
        quantize.__qualname__ = f"reference_quantize_{f.name}"
        return quantize

    def dequantize(*args):
        from ._formats import _np

        args = tuple(_np(a) if not isinstance(a, tuple) else a for a in args)
        if f.family == "gguf":
            from ... import gguf

            t = gguf.ggml_type(f.name)
            shape = (args[0].shape[0], args[0].shape[-1] // t.type_size * t.block_size)
        elif f.name in ("NF4", "FP4"):
            shape = tuple(args[2])
        else:
            shape = args[0].shape
        out = args[:2] if f.name in ("NF4", "FP4") else args
        return f.decode(f.read(out[0] if len(out) == 1 else out, shape), shape)
    dequantize.__qualname__ = f"reference_dequantize_{f.name}"
    return dequantize
