"""The byte-level helpers of the GGUF codecs, written once and called by name.

Every codec (legacy.py, kquants.py, iquants.py) and the scale searches (_search.py) read
and write their blocks with these:

* block sizes and the "all zero" threshold of ggml-common.h / ggml-quants.c:
  ``QK`` = 32, ``QK_K`` = 256, ``GROUP_MAX_EPS`` = 1e-15f;
* named block fields — ``Layout`` splits a block into its ``struct block_<t>`` fields as
  gguf-py does (``d, qs = Layout("Q4_0", d=2, qs=16).split(raw)``) and joins them back,
  so no byte offset stands bare in a codec;
* fields read in any array namespace (the array API has no bit-cast): ``uint_le``,
  ``float_from_bits``, ``fp16_field``, ``f32_field``; and written at the NumPy edge:
  ``fp16_bytes``;
* bit planes — ``pack_planes`` / ``unpack_planes``: plane k of a byte is its bits
  ``[b·k, b·(k+1))`` (2-bit codes of Q2_K/Q3_K, Q6_K's top bits, the 5th bits of Q5_K,
  Q3_K's hmask) — and the nibble order of the 32-weight blocks (``low_high_nibbles``);
* C's float loops: ``sequential_sum`` (``s = 0; for (j...) s += v[j]``), ``signed_absmax``
  (``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }``), ``first_zero_sign`` (which
  zero a running min/max keeps), ``inverse_or_zero`` (``id = d ? 1.0f/d : 0.0f``).

Ref: ggml/src/ggml-common.h (block_q4_0 … block_iq4_xs, QK_K), ggml/src/ggml-quants.c
(GROUP_MAX_EPS and the loops named above); gguf-py quants.py (np.hsplit of the fields).
"""

from __future__ import annotations

from collections import namedtuple
from typing import Any, NamedTuple

import numpy as np

from .._backend import device, from_numpy, is_numpy, namespace, to_numpy
from .._packing import pack_nibbles
from .types import GGML_TYPES

__all__ = [
    "QK", "QK_K", "GROUP_MAX_EPS", "Layout", "as_f32", "check_blocks",
    "uint_le", "float_from_bits", "fp16_field", "f32_field", "fp16_bytes",
    "pack_planes", "unpack_planes", "low_high_nibbles", "pack_low_high", "u32_bits", "pack_u32_bits",
    "columns", "uncolumns", "column_sum", "sequential_sum", "Absmax", "signed_absmax", "first_zero_sign", "inverse_or_zero",
]

QK = 32                                    # QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK8_1 = QK4_NL (ggml-common.h)
QK_K = 256                                 # weights per k-quant super-block (ggml-common.h)
GROUP_MAX_EPS = float(np.float32(1e-15))   # ggml-quants.c: a block whose max |x| is below it is "all zero"


# ---------------------------------------------------------------------------------------
# Named block fields
# ---------------------------------------------------------------------------------------

class Layout:
    """The fields of one ggml block, in order, with their widths in bytes (``struct block_<t>``).

    ``split`` cuts (n_blocks, type_size) bytes into a named tuple of (n_blocks, width)
    views, in any namespace; ``join`` concatenates NumPy byte fields back into blocks.
    The widths must add up to the type's size in refquant.gguf.types.

    Example:
        >>> Q4_0 = Layout("Q4_0", d=2, qs=16)
        >>> b = Q4_0.split(np.arange(36, dtype=np.uint8).reshape(2, 18))
        >>> b.d.tolist(), b.qs.shape, Q4_0.offset("qs")
        ([[0, 1], [18, 19]], (2, 16), 2)
        >>> Q4_0.join(d=b.d, qs=b.qs)[1].tolist() == list(range(18, 36))
        True
    """

    def __init__(self, qtype: str, **widths: int):
        self.qtype = qtype
        self.widths = widths
        self.type_size = sum(widths.values())
        expected = GGML_TYPES[qtype].type_size
        if self.type_size != expected:
            raise ValueError(f"widths: {qtype}'s fields add up to {self.type_size} bytes, its blocks take {expected}")
        self.fields = namedtuple(f"{qtype}_fields", widths)  # noqa: PYI024 (a tuple type per layout)

    def offset(self, name: str) -> int:
        """Byte offset of field ``name`` inside the block."""
        names = list(self.widths)
        return sum(self.widths[f] for f in names[: names.index(name)])

    def split(self, raw: Any) -> Any:
        """(n_blocks, type_size) uint8 -> the named fields, each (n_blocks, width) (views, no copy)."""
        xp = namespace(raw)
        if not hasattr(raw, "dtype") or raw.dtype != xp.uint8:
            raise TypeError(f"raw: expected a uint8 array of {self.qtype} blocks, "
                            f"got dtype {getattr(raw, 'dtype', type(raw).__name__)}")
        if raw.ndim != 2 or int(raw.shape[-1]) != self.type_size:
            raise ValueError(f"raw: expected {self.qtype} blocks of shape (n_blocks, {self.type_size}), "
                             f"got {tuple(raw.shape)}")
        parts, lo = [], 0
        for width in self.widths.values():
            parts.append(raw[:, lo : lo + width])
            lo += width
        return self.fields(*parts)

    def join(self, **fields: Any) -> np.ndarray:
        """NumPy uint8 fields (n_blocks, width), by name -> (n_blocks, type_size) blocks."""
        parts = []
        for name, width in self.widths.items():
            part = np.asarray(fields[name])
            if part.dtype != np.uint8 or part.ndim != 2 or part.shape[1] != width:
                raise ValueError(f"{name}: expected uint8 (n_blocks, {width}) for {self.qtype}, "
                                 f"got {part.dtype} {part.shape}")
            parts.append(part)
        return np.concatenate(parts, axis=1)


def as_f32(x: Any) -> Any:
    """x as float32 in its own namespace (no copy when it already is)."""
    xp = namespace(x)
    return xp.astype(x, xp.float32, copy=False)


def check_blocks(x: Any, qw: Any | None, qtype: str, qk: int = QK) -> Any:
    """x: (n_blocks, qk) -> float32; qw None or of x's shape, else ValueError naming x / qw."""
    if x.ndim != 2 or x.shape[-1] != qk:
        raise ValueError(f"x: expected {qtype} blocks of shape (n_blocks, {qk}), got {tuple(x.shape)}")
    if qw is not None and tuple(qw.shape) != tuple(x.shape):
        raise ValueError(f"qw: expected the shape of x {tuple(x.shape)}, got {tuple(qw.shape)}")
    return as_f32(x)


# ---------------------------------------------------------------------------------------
# Reading fields in any namespace (the array API has no bit-cast); writing them (NumPy)
# ---------------------------------------------------------------------------------------

def uint_le(field: Any) -> Any:
    """The little-endian unsigned integer a (n, k) byte field holds: (n, k) uint8 -> (n, 1) int64.

    >>> uint_le(np.uint8([[0x34, 0x12]])).tolist()
    [[4660]]
    """
    xp = namespace(field)
    value = xp.zeros((field.shape[0], 1), dtype=xp.int64, device=device(field))
    for k in range(field.shape[1]):
        value = value | (xp.astype(field[:, k : k + 1], xp.int64) << (8 * k))   # byte k: bits 8k .. 8k+7
    return value


def float_from_bits(bits: Any, exp_bits: int, mant_bits: int) -> Any:
    """IEEE binary float bit patterns (held in an int64 array) -> float32 values, exactly.

        normal (0 < e < e_max):  (−1)^s · (2^mant_bits + m) · 2^(e − bias − mant_bits)
        subnormal (e = 0):       (−1)^s · m · 2^(1 − bias − mant_bits)
        e = e_max:               ±inf (m = 0) or NaN

    float16 is (5, 10), bfloat16 (8, 7), float32 (8, 23). Every product is exact in float32
    (the significand has at most 24 bits, the other factor is a power of two from a table).

    >>> float_from_bits(np.array([0x3C00, 0xC000, 0x0001, 0x7C00]), 5, 10).tolist()  # 1, -2, 2^-24, inf
    [1.0, -2.0, 5.960464477539063e-08, inf]
    """
    xp = namespace(bits)
    e_max = (1 << exp_bits) - 1
    bias = (1 << (exp_bits - 1)) - 1
    sign = (bits >> (exp_bits + mant_bits)) & 1
    e = (bits >> mant_bits) & e_max
    m = bits & ((1 << mant_bits) - 1)
    # 2^(max(e, 1) − bias − mant_bits) for e = 0 … e_max, computed exactly by NumPy's ldexp
    pow2 = np.ldexp(np.float32(1.0), np.maximum(np.arange(e_max + 1), 1) - bias - mant_bits).astype(np.float32)
    pow2 = from_numpy(pow2, like=bits)
    significand = xp.astype(xp.where(e == 0, m, m + (1 << mant_bits)), xp.float32)
    scale = xp.reshape(xp.take(pow2, xp.reshape(e, (-1,))), e.shape)
    with np.errstate(over="ignore"):  # e = e_max overflows here; replaced by inf/NaN just below
        magnitude = significand * scale
    special = xp.where(m == 0, xp.asarray(float("inf"), dtype=xp.float32), xp.asarray(float("nan"), dtype=xp.float32))
    magnitude = xp.where(e == e_max, special, magnitude)
    return xp.where(sign == 1, -magnitude, magnitude)


def fp16_field(field: Any) -> Any:
    """A float16 field (n, 2) uint8 (a block's ``d``, ``dmin``, ``m``) -> its value, (n, 1) float32.

    On NumPy the two bytes are bit-cast (``view``), the byte edge; on any other namespace
    they are decoded arithmetically by float_from_bits — the tests check the two agree
    on all 65536 patterns.

    >>> fp16_field(np.uint8([[0x00, 0x30], [0x00, 0xBC]])).tolist()  # 0x3000 = 0.125, 0xBC00 = -1
    [[0.125], [-1.0]]
    """
    if is_numpy(field):
        return np.ascontiguousarray(field).view("<f2").astype(np.float32)
    return float_from_bits(uint_le(field), 5, 10)


def f32_field(field: Any) -> Any:
    """A float32 field (n, 4) uint8 (Q8_K's ``d``) -> its value, (n, 1) float32, in any namespace.

    >>> f32_field(np.uint8([[0x00, 0x00, 0x80, 0xBF]])).tolist()  # 0xBF800000 = -1
    [[-1.0]]
    """
    return float_from_bits(uint_le(field), 8, 23)


def fp16_bytes(v: Any) -> np.ndarray:
    """float32 values (n, 1) -> their float16 encodings as (n, 2) little-endian bytes.

    Round to nearest even, overflow to ±inf: GGML_FP32_TO_FP16.

    >>> fp16_bytes(np.float32([[0.125], [-1.0], [1e5]])).tolist()  # 0x3000, 0xBC00, inf = 0x7C00
    [[0, 48], [0, 188], [0, 124]]
    """
    with np.errstate(over="ignore"):  # |v| > 65504 becomes ±inf, as in ggml
        h = np.ascontiguousarray(to_numpy(v), dtype=np.float32).astype(np.float16)
    return h.view(np.uint8).reshape(h.shape[0], 2)


# ---------------------------------------------------------------------------------------
# Bit planes and nibbles
# ---------------------------------------------------------------------------------------

def pack_planes(planes: np.ndarray, bits: int) -> np.ndarray:
    """(..., 8/bits, m) codes of ``bits`` bits -> (..., m) uint8: plane k into bits [bits·k, bits·(k+1)).

        byte_l = planes[0, l] | planes[1, l] << bits | planes[2, l] << 2·bits | …

    The C stores are ORs of shifted uint8 values without a mask, and so is this: a value
    wider than ``bits`` spills into the next plane's bits as it does in libggml.

    >>> pack_planes(np.uint8([[1], [2], [3], [0]]), 2).tolist(), pack_planes(np.uint8([[1]] * 8), 1).tolist()
    ([57], [255])
    """
    planes = np.asarray(planes).astype(np.uint8)
    out = np.zeros(planes.shape[:-2] + planes.shape[-1:], np.uint8)     # (..., m)
    for k in range(planes.shape[-2]):
        out |= planes[..., k, :] << (bits * k)
    return out


def unpack_planes(packed: Any, bits: int) -> Any:
    """Inverse of pack_planes in any namespace: (..., m) bytes -> (..., 8/bits, m), plane k = bits [bits·k, …).

    >>> unpack_planes(np.uint8([57]), 2)[:, 0].tolist()
    [1, 2, 3, 0]
    """
    xp = namespace(packed)
    k = 8 // bits
    shifts = xp.asarray([bits * i for i in range(k)], dtype=packed.dtype, device=device(packed))
    return (packed[..., None, :] >> xp.reshape(shifts, (k, 1))) & ((1 << bits) - 1)   # (..., k, m)


def low_high_nibbles(qs: Any) -> Any:
    """(n, 16) packed bytes -> (n, 32) uint8 codes: low nibbles are codes 0..15, high nibbles 16..31.

    >>> low_high_nibbles(np.uint8([[0x21] * 16]))[0, [0, 15, 16, 31]].tolist()
    [1, 1, 2, 2]
    """
    xp = namespace(qs)
    return xp.concat([qs & 0x0F, qs >> 4], axis=-1)  # (n, 32)


def pack_low_high(q: np.ndarray, mask: bool = True) -> np.ndarray:
    """(n, 32) codes -> (n, 16) bytes in ggml's nibble order: byte j = q_j | q_{j+16} << 4.

    ``mask=True`` keeps the low 4 bits of each code (Q5_0/Q5_1's low bits, IQ4's indices).
    ``mask=False`` is quantize_row_q4_0_ref / q4_1_ref's store ``qs[j] = xi0; qs[j] |= xi1 << 4``:
    a low code outside 0..15 (an int8 wrapped by c_int8, possible only when 1/d is inexact
    for a subnormal d) spills into the high nibble as the C store does.

    >>> [hex(b) for b in pack_low_high(np.arange(32)[None, :] % 16)[0, :3]]    # q_j = q_{j+16} = j
    ['0x0', '0x11', '0x22']
    """
    half = q.shape[-1] // 2
    if mask:
        return pack_nibbles(q[:, :half] & 0x0F, q[:, half:] & 0x0F)
    q = q.astype(np.uint8)
    return q[:, :half] | (q[:, half:] << 4)


def u32_bits(field: Any) -> Any:
    """The 32 bits of a little-endian uint32 field (n, 4), in bit order: (n, 32) uint8 0/1.

    Bit j is bit (j mod 8) of byte j // 8 (Q5_0/Q5_1's ``qh``: bit j is the 5th bit of code j).

    >>> u32_bits(np.uint8([[0x01, 0x00, 0x00, 0x80]]))[0].nonzero()[0].tolist()
    [0, 31]
    """
    xp = namespace(field)
    b = from_numpy(np.arange(8, dtype=np.uint8), like=field)                  # (8,)
    bits = (field[:, :, None] >> b) & 1                                       # (n, 4, 8)
    return xp.reshape(bits, (field.shape[0], 8 * field.shape[1]))             # (n, 32)


def pack_u32_bits(bits: np.ndarray) -> np.ndarray:
    """Inverse of u32_bits: (n, 32) 0/1 -> (n, 4) bytes of the little-endian uint32 with bit j = bits[:, j].

    >>> pack_u32_bits(np.eye(1, 32, 31, dtype=np.uint8)).tolist()
    [[0, 0, 0, 128]]
    """
    return np.packbits(bits.astype(np.uint8), axis=-1, bitorder="little")


# ---------------------------------------------------------------------------------------
# C's float loops, vectorized across blocks
# ---------------------------------------------------------------------------------------

def columns(x: Any) -> Any:
    """(B, n) -> (n, B), a fresh C-ordered copy: element i of every block is one contiguous row."""
    xp = namespace(x)
    if is_numpy(x):
        return np.ascontiguousarray(x.T)
    n, B = x.shape[-1], x.shape[0]
    return xp.reshape(xp.reshape(xp.permute_dims(x, (1, 0)), (n * B,)), (n, B))


def uncolumns(a: Any) -> Any:
    """Inverse of columns: (n, B) -> (B, n)."""
    xp = namespace(a)
    if is_numpy(a):
        return np.ascontiguousarray(a.T)
    return xp.permute_dims(a, (1, 0))


def column_sum(t: Any, from_zero: bool = True) -> Any:
    """C's running sum ``s = 0; for i: s += t[i]`` down the first axis: (n, B) -> (B,).

    Left to right in float32 — never a pairwise or tree sum. Starting at +0 (``from_zero``)
    makes a sum of −0.0 terms +0.0, as in C; ``from_zero=False`` is C's ``s = t[0]; for
    i >= 1: s += t[i]`` (make_qkx2_quants' sum_w), which keeps an all −0.0 sum at −0.0.
    Each step adds one contiguous row. On a C-ordered NumPy array with B >= 2 columns one
    ``np.add.reduce(t, axis=0)`` does the same: reducing over an axis that is not the
    fast one, NumPy adds whole rows into an accumulator in order (its pairwise summation
    runs only along the contiguous axis, as the ``numpy.sum`` notes say). The accumulator
    starts at ``initial``: +0.0 is C's ``s = 0``; −0.0 is ``s = t[0]`` (−0.0 + v == v for
    every v, −0.0 included). B == 1 is a contiguous column, which NumPy would sum
    pairwise: that takes the loop.

    >>> column_sum(np.float32([[-0.0], [-0.0]])).tolist(), column_sum(np.float32([[-0.0], [-0.0]]), False).tolist()
    ([0.0], [-0.0])
    """
    if is_numpy(t) and t.ndim == 2 and t.shape[1] >= 2 and t.flags.c_contiguous:
        return np.add.reduce(t, axis=0, initial=0.0 if from_zero else -0.0)
    if is_numpy(t):
        s = t[0, :] + np.float32(0.0) if from_zero else t[0, :].copy()
        for i in range(1, t.shape[0]):
            np.add(s, t[i, :], out=s)
        return s
    s = t[0, :] + 0.0 if from_zero else t[0, :]
    for i in range(1, t.shape[0]):
        s = s + t[i, :]
    return s


def sequential_sum(v: Any) -> Any:
    """Σ_j v_j along the last axis, left to right from +0.0 in float32: the C loop
    ``float s = 0; for (j...) s += v[j];``. (..., n) -> (..., 1).

    np.sum adds pairwise and would round differently; starting from +0.0 also fixes the
    sign of an all-zero sum as C does (0.0f + -0.0f = +0.0f).

    >>> sequential_sum(np.float32([[1e8, 1, 1, -1e8], [-0.0, -0.0, -0.0, -0.0]])).tolist()  # float32: 1e8 + 1 = 1e8
    [[0.0], [0.0]]
    """
    xp = namespace(v)
    lead = tuple(v.shape[:-1])
    rows = xp.reshape(v, (-1, v.shape[-1]))                                   # (B, n)
    return xp.reshape(column_sum(columns(rows)), (*lead, 1))                  # (..., 1)


class Absmax(NamedTuple):
    """The largest |x| of each block and the element that holds it, with its sign."""

    amax: Any
    signed: Any


def signed_absmax(x: Any, axis: int = -1) -> Absmax:
    """C's ``if (amax < fabsf(v)) { amax = fabsf(v); max = v; }`` from amax = max = 0, along ``axis``.

    The *first* element of largest magnitude wins (argmax's rule: it matters when a block
    holds both +amax and −amax); an all-zero block gives max = +0.0 (even for −0.0
    entries); a NaN never compares greater, so it never wins (IQ4_XS runs this over block
    scales that overflowed to NaN). x: (..., n, ...) -> amax, signed: ``axis`` of length 1.

    >>> signed_absmax(np.float32([[2, -3, 3], [-0.0, 0, 0], [np.nan, -1, 0]]))[1].tolist()
    [[-3.0], [0.0], [-1.0]]
    """
    xp = namespace(x)
    ax = xp.abs(x)
    ax = xp.where(ax > 0, ax, xp.zeros_like(ax))                       # NaN never wins a C '<'
    first = xp.argmax(ax, axis=axis, keepdims=True)                   # the first lane reaching the max
    amax = xp.take_along_axis(ax, first, axis=axis)
    signed = xp.take_along_axis(x, first, axis=axis)
    return Absmax(amax, xp.where(amax == 0, xp.zeros_like(signed), signed))


def first_zero_sign(v: Any, extreme: Any, axis: int = -1) -> Any:
    """Give a zero ``extreme`` (a min or max of ``v`` along ``axis``) the sign of the first zero of v.

    C's running extremes ``if (v < min) min = v;`` / ``if (v > max) max = v;`` (started from
    ±FLT_MAX or from v[0]) keep the *first* of equal values, because −0.0 < +0.0 is false:
    a block [−0, +0, 1] has min −0.0, [+0, −0, 1] has +0.0. NumPy's min/max reductions and
    a halving ``minimum`` return either zero (the order of their SIMD lanes), and the sign
    shows in a stored fp16 field (Q4_1's m = 0x8000 or 0x0000). Only a zero extreme can
    differ (finite inputs: equal non-zero floats are identical). v: (..., n, ...);
    extreme: v's shape with ``axis`` of length 1 -> the same.

    >>> v = np.float32([[-0.0, 0.0, 1.0], [0.0, -0.0, 1.0]])
    >>> np.signbit(first_zero_sign(v, np.float32([[0.0], [-0.0]]))).tolist()
    [[True], [False]]
    """
    xp = namespace(v, extreme)
    zero = extreme == 0
    if not bool(xp.any(zero)):
        return extreme
    first = xp.argmax(xp.astype(v == 0, xp.int8), axis=axis, keepdims=True)   # the first zero lane
    return xp.where(zero, xp.take_along_axis(v, first, axis=axis), extreme)


def inverse_or_zero(d: Any) -> Any:
    """id = d ? 1.0f/d : 0.0f — the encoder's reciprocal scale, 0 for an empty block.

    >>> inverse_or_zero(np.float32([4.0, 0.0])).tolist()
    [0.25, 0.0]
    """
    xp = namespace(d)
    safe = xp.where(d == 0, xp.ones_like(d), d)
    return xp.where(d == 0, xp.zeros_like(d), 1.0 / safe)
