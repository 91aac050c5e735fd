"""The table of known causes: what a first differing byte usually means.

Each ``Cause`` has a name, a one-line explanation and a test over the ``Evidence`` of a
failure (the block as refquant and as the implementation wrote it, the input, both decodings).
``guess`` returns the first cause whose test holds, in the order of ``CAUSES`` (the most
specific first). Every cause has a mutant in tests/mutants/ that shows it.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

__all__ = ["Evidence", "Cause", "CAUSES", "guess", "UNKNOWN"]


class Evidence(NamedTuple):
    """What is known about the first differing block (NumPy arrays; None where it does not apply)."""

    direction: str              # 'quantize' | 'dequantize'
    property: str
    field: str                  # the first differing field ('decoded' for decoded floats)
    kind: str                   # its kind ('fp16', 'f32', 'bytes', 'nibbles', 'int', 'decoded' ...)
    ours_field: Any             # (per_block,) that field of the block, refquant's
    theirs_field: Any           # (per_block,) the implementation's
    element: int                # index of the first difference inside the field
    x: Any                      # (block,) the input block (quantize) or refquant's decoding (dequantize)
    ours_dec: Any               # (block,) refquant's decoding of its own encoding
    theirs_dec: Any             # (block,) decoding of the implementation's encoding (or its output)
    bound: float                # the a-priori error bound of the block
    same_without_imatrix: bool  # the implementation's bytes equal refquant's with the imatrix left out


class Cause(NamedTuple):
    name: str
    hint: str
    test: Callable[[Evidence], bool]


_SIGN = {"fp16": 0x8000, "bf16": 0x8000, "f32": 0x80000000}


def _floats(v: Any, kind: str) -> np.ndarray:
    v = np.asarray(v)
    if kind == "fp16":
        return v.astype(np.uint16).view(np.float16).astype(np.float64)
    if kind == "bf16":
        return (v.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    if kind == "f32":
        return v.astype(np.uint32).view(np.float32).astype(np.float64)
    return v.astype(np.float64)


def _pair(e: Evidence) -> tuple[int, int]:
    return int(np.asarray(e.ours_field)[e.element]), int(np.asarray(e.theirs_field)[e.element])


def _signed_zero(e: Evidence) -> bool:
    if e.kind in _SIGN:
        a, b = _pair(e)
        return (a ^ b) == _SIGN[e.kind] and _floats([a], e.kind)[0] == 0
    if e.kind == "decoded":
        a, b = float(e.ours_dec[e.element]), float(e.theirs_dec[e.element])
        return a == 0 and b == 0 and np.signbit(a) != np.signbit(b)
    return False


def _sign_flipped(e: Evidence) -> bool:
    if e.kind not in _SIGN:
        return False
    a, b = _pair(e)
    return (a ^ b) == _SIGN[e.kind]


def _swap(v: np.ndarray) -> np.ndarray:
    return ((v & 0x0F) << 4) | (v >> 4)


def _nibble_halves(e: Evidence) -> bool:
    if e.kind not in ("bytes", "nibbles") or e.field not in ("qs", "ql", "code"):
        return False
    ours, theirs = np.asarray(e.ours_field, np.uint8), np.asarray(e.theirs_field, np.uint8)
    return bool(np.array_equal(_swap(ours), theirs))


def _interleaved(e: Evidence) -> bool:
    """ggml's order (code j low, code j + h high, per run of 2h codes) written as pairs (2j, 2j+1), or back."""
    if e.kind not in ("bytes", "nibbles") or e.field not in ("qs", "ql", "code"):
        return False
    ours, theirs = np.asarray(e.ours_field, np.uint8), np.asarray(e.theirs_field, np.uint8)
    for run in (16, 32):
        if ours.size % run:
            continue
        o = ours.reshape(-1, run)
        codes = np.concatenate([o & 0x0F, o >> 4], axis=1)                   # (runs, 2·run) in ggml's order
        pairs = (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)
        if np.array_equal(pairs.reshape(-1), theirs):
            return True
    return False


def _dropped_high_bits(e: Evidence) -> bool:
    return e.field in ("qh", "hmask") and not np.any(e.theirs_field) and bool(np.any(e.ours_field))


def _sub_block_order(e: Evidence) -> bool:
    """The implementation's decoded sub-blocks are refquant's, in another order."""
    if e.ours_dec is None or e.theirs_dec is None:
        return False
    a, b = np.asarray(e.ours_dec, np.float32), np.asarray(e.theirs_dec, np.float32)
    for size in (16, 32):
        if a.size % size or a.size <= 32:      # sub-blocks of a super-block (the 256 weights of a K-quant)
            continue
        sa, sb = a.reshape(-1, size).view(np.uint32), b.reshape(-1, size).view(np.uint32)
        rows_a = {r.tobytes() for r in sa}
        if len(rows_a) == sa.shape[0] and all(r.tobytes() in rows_a for r in sb) and not np.array_equal(sa, sb):
            return True
    return False


def _lane(e: Evidence) -> int | None:
    """The first lane where the two decodings differ."""
    if e.ours_dec is None or e.theirs_dec is None or e.x is None:
        return None
    a = np.asarray(e.ours_dec, np.float32).view(np.uint32)
    b = np.asarray(e.theirs_dec, np.float32).view(np.uint32)
    lanes = np.flatnonzero(a != b)
    return int(lanes[0]) if lanes.size else None


def _tie_distance(e: Evidence) -> float | None:
    """How far x lies from the midpoint of the two decoded values, in units of their distance."""
    if e.direction != "quantize":
        return None
    j = _lane(e)
    if j is None:
        return None
    x, a, b = float(e.x[j]), float(e.ours_dec[j]), float(e.theirs_dec[j])
    if not all(np.isfinite([x, a, b])) or a == b:
        return None
    return abs(abs(x - a) - abs(x - b)) / abs(a - b)


def _exact_tie(e: Evidence) -> bool:
    t = _tie_distance(e)
    return t is not None and t == 0.0


def _ulp_tie(e: Evidence) -> bool:
    t = _tie_distance(e)
    return t is not None and t < 2.0**-16


def _fp16_tie(e: Evidence) -> bool:
    t = _tie_distance(e)
    return t is not None and t < 2.0**-6


def _scale_ulp(e: Evidence) -> bool:
    if e.kind not in _SIGN:
        return False
    a, b = _pair(e)
    return (a ^ b) & _SIGN[e.kind] == 0 and 0 < abs(a - b) <= 2


def _fp16_overflow(e: Evidence) -> bool:
    if e.kind != "fp16":
        return False
    a, b = _pair(e)
    return ((a & 0x7FFF) == 0x7C00) != ((b & 0x7FFF) == 0x7C00)


def _flushed(e: Evidence) -> bool:
    if e.kind in _SIGN:
        a, b = _floats(_pair(e), e.kind)
        tiny = {"fp16": 2.0**-14, "bf16": 2.0**-126, "f32": 2.0**-126}[e.kind]
        return b == 0 and 0 < abs(a) < tiny
    j = _lane(e)
    if j is None:
        return False
    a, b = float(e.ours_dec[j]), float(e.theirs_dec[j])
    return b == 0 and 0 < abs(a) < 2.0**-126 or (e.kind == "decoded" and b == 0 and 0 < abs(a) < 2.0**-14)


def _off_by_one(e: Evidence) -> bool:
    if e.kind not in ("int", "f32") or e.field not in ("z", "q", "Q"):
        return False
    d = _floats(e.theirs_field, e.kind) - _floats(e.ours_field, e.kind)
    if e.field == "z":
        return abs(int(d[e.element])) == 1
    return bool(np.all(d == d[0]) and abs(int(d[0])) == 1)


def _beyond_range(e: Evidence) -> bool:
    j = _lane(e)
    if j is None or e.direction != "quantize":
        return False
    x, a, b = float(e.x[j]), float(e.ours_dec[j]), float(e.theirs_dec[j])
    return abs(x - a) <= e.bound < abs(x - b)


def _subnormal_block(e: Evidence) -> bool:
    """Quantizing a block of only subnormals (and zeros): its scale's inverse overflows float32."""
    if e.direction != "quantize" or e.x is None:
        return False
    a = np.abs(np.asarray(e.x, np.float64))
    return bool(np.any(a > 0) and np.all(a < 2.0**-126))


def _one_level(e: Evidence) -> bool:
    """Decoding: the differing weights (two or more) are off by one common factor, and some
    non-zero weights of the block agree."""
    if e.direction != "dequantize" or e.ours_dec is None:
        return False
    a, b = np.asarray(e.ours_dec, np.float64), np.asarray(e.theirs_dec, np.float64)
    diff = (a != b) & np.isfinite(a) & np.isfinite(b) & (a != 0)
    agree = (a == b) & (a != 0)
    if not diff.any() or not (agree.any() or (diff.sum() >= 2 and np.all(a[diff] == a[diff][0]))):
        return False
    r = b[diff] / a[diff]
    return bool(np.all(np.abs(r - r[0]) <= 1e-6 * abs(r[0])))


CAUSES: tuple[Cause, ...] = (
    Cause("imatrix ignored", "the bytes are refquant's without the importance matrix: the imatrix is not used", lambda e: e.same_without_imatrix),
    Cause("signed zero", "only the sign of a zero differs: C keeps the first ±0 of a running min/max (NumPy's min/max, abs() or x + 0.0 do not)", _signed_zero),
    Cause("sign flipped", "a scale or minimum of the wrong sign (max taken of |x| not the signed extreme, or a min negated twice)", _sign_flipped),
    Cause("fp16 overflow", "one side stores ±inf in a float16 field: saturating vs overflowing fp16 conversion of a large scale", _fp16_overflow),
    Cause("subnormal flushed", "a subnormal became 0 (flush-to-zero / denormals-are-zero, or a guard like max(d, FLT_MIN))", _flushed),
    Cause("nibble order (halves)", "the high and low nibble of each byte are swapped", _nibble_halves),
    Cause("nibble order (pairs)", "codes packed as adjacent pairs (2j, 2j+1) instead of ggml's (j, j + 16) halves", _interleaved),
    Cause("dropped high bits", "the high bits (qh / hmask) are not stored: a dropped fifth or high bit", _dropped_high_bits),
    Cause("sub-block order", "the sub-blocks are right but in another order (sub-block loop or scale packing order)", _sub_block_order),
    Cause("zero-point off by one", "a zero-point or code offset differs by one (z = round(−min/s) vs −round(min/s), or 8 vs 7.5)", _off_by_one),
    Cause("subnormal block", "a block of subnormals: 1/d overflows to inf in float32, and C's (int) cast of inf (INT_MIN, code 0 "
          "once masked) differs from a saturating or NumPy cast", _subnormal_block),
    Cause("tie rounding", "x lies exactly on k + 1/2 and was rounded the other way: round-half-even vs half-away (or trunc(x + 0.5))", _exact_tie),
    Cause("float order", "a near-tie at float32 precision: x/d vs x·(1/d), an FMA, or another summation order", _ulp_tie),
    Cause("scale rounding step", "a near-tie at float16 precision: the scale rounded to fp16 before vs after the codes were computed", _fp16_tie),
    Cause("scale last bits", "a scale differs in its last bit(s): another operation order (max/−8 vs −max/8, a mean summed pairwise), or rounding mode", _scale_ulp),
    Cause("one table level", "decoding: every weight of one code is off by one factor: one entry of the value table differs", _one_level),
    Cause("beyond the range", "a weight decodes outside its error bound: a missing clamp, or a code that wrapped around", _beyond_range),
)
UNKNOWN = Cause("unknown", "no known cause matched: compare the two values shown", lambda e: True)


def guess(e: Evidence) -> Cause:
    """The first cause of ``CAUSES`` whose test holds for ``e`` (``UNKNOWN`` if none)."""
    for cause in CAUSES:
        try:
            if cause.test(e):
                return cause
        except (ValueError, IndexError, TypeError):  # a test that does not apply to this field's shape
            continue
    return UNKNOWN
