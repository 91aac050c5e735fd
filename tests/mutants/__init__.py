"""A corpus of mutants of refquant's own codecs: each a small function with the natural
signature of its format and one realistic bug, the kind kernel authors make.

``MUTANTS`` lists them with the property of the conformance kit that must kill each
(the first failing property under ``fail_fast``) and the cause the kit must guess
(``None``: the kit's guess is not asserted; ``"unknown"`` is never claimed as a success).
tests/test_mutants.py runs the battery on every one.

Most mutants take refquant's output and alter one field, the way the bug would; the ones
about rounding (ties, the step at which a scale is rounded) re-derive the codes with the
wrong operation, in NumPy, next to the line of ggml or bitsandbytes they get wrong.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import numpy as np

from refquant import fp8, gguf, hqq, int8, mx, nf4
from refquant import uniform as U
from refquant.gguf import kquants

__all__ = ["Mutant", "MUTANTS"]


class Mutant(NamedTuple):
    name: str
    fmt: str
    direction: str
    fn: Callable
    killed_by: str          # the first property of the battery that fails
    cause: str | None       # the cause the kit names for it (None: not asserted)
    imatrix: Any = None


def _q(x: Any, fmt: str, imatrix: Any = None) -> np.ndarray:
    """refquant's blocks of x as writable (n_blocks, type_size) uint8."""
    t = gguf.ggml_type(fmt)
    return np.array(gguf.quantize(np.asarray(x, np.float32), fmt, imatrix=imatrix)).reshape(-1, t.type_size)


def _rows(raw: np.ndarray, x: np.ndarray) -> np.ndarray:
    return raw.reshape(np.asarray(x).shape[0], -1)


def _field(fmt: str, name: str) -> slice:
    from refquant.testing.conformance._formats import _layouts

    layout = _layouts()[fmt]
    off = layout.offset(name)
    return slice(off, off + layout.widths[name])


def _swap_nibbles(v: np.ndarray) -> np.ndarray:
    return ((v & 0x0F) << 4) | (v >> 4)


def _edit(fmt: str, name: str, edit: Callable) -> Callable:
    """A quantizer that writes refquant's blocks with ``edit`` applied to field ``name``."""
    def mutant(x, imatrix=None):
        raw = _q(x, fmt, imatrix)
        sl = _field(fmt, name)
        raw[:, sl] = edit(raw[:, sl])
        return _rows(raw, x)
    mutant.__name__ = f"{fmt.lower()}_{name}_edited"
    return mutant


def _fp16_negate(v: np.ndarray) -> np.ndarray:
    return (v.view("<u2") ^ 0x8000).view(np.uint8).reshape(v.shape)


def _fp16(v: np.ndarray) -> np.ndarray:
    return np.asarray(v, np.float32).astype(np.float16).astype(np.float32)


# --- legacy types, the codes re-derived with one operation wrong (quantize_row_q4_0_ref …) ---------

def _q4_0_like(x: np.ndarray, codes: Callable, d_of: Callable | None = None) -> np.ndarray:
    """Q4_0 blocks with codes(x, d) -> 0..15 (and optionally another d): (rows, n) -> (rows, n/32·18)."""
    xb = np.asarray(x, np.float32).reshape(-1, 32)
    ref = _q(xb, "Q4_0")
    idx = np.argmax(np.abs(xb), axis=1)
    max_ = xb[np.arange(xb.shape[0]), idx][:, None]                      # the signed extreme (first of ties)
    d = (max_ / np.float32(-8)).astype(np.float32) if d_of is None else d_of(xb, max_)
    with np.errstate(all="ignore"):
        q = np.clip(codes(xb, d), 0, 15).astype(np.uint8)
    raw = ref.copy()
    raw[:, 0:2] = d.astype(np.float16).view(np.uint8).reshape(-1, 2) if d_of is not None else ref[:, 0:2]
    raw[:, 2:] = q[:, :16] | (q[:, 16:] << 4)
    return _rows(raw, x)


def _inv(d):
    with np.errstate(divide="ignore"):
        return np.where(d != 0, np.float32(1) / d, np.float32(0)).astype(np.float32)


def q4_0_round_half_even(x):
    """rint(x/d) + 8 where ggml truncates x·(1/d) + 8.5: ties go to the even code, not up."""
    return _q4_0_like(x, lambda xb, d: np.rint(xb * _inv(d)) + 8)


def q4_0_divides(x):
    """trunc(x/d + 8.5): a division where ggml multiplies by id = 1/d (differs in the last bit, then at ties)."""
    return _q4_0_like(x, lambda xb, d: np.trunc(np.where(d != 0, xb / np.where(d != 0, d, 1), 0) + np.float32(8.5)))


def q4_0_fp16_d_first(x):
    """The codes computed with d already rounded to fp16 (ggml uses the float32 d, stores fp16)."""
    return _q4_0_like(x, lambda xb, d: np.trunc(xb * _inv(_fp16(d)) + np.float32(8.5)))


def q4_0_unsigned_max(x):
    """d = max|x| / 8 from the magnitude: the signed extreme's sign is lost."""
    return _q4_0_like(x, lambda xb, d: np.trunc(xb * _inv(d) + np.float32(8.5)),
                      d_of=lambda xb, max_: (np.abs(max_) / np.float32(-8)).astype(np.float32))


def q4_0_no_clamp(x):
    """No MIN(15, …): the code 16 of a value opposite the extreme wraps to 0 in the nibble."""
    def codes(xb, d):
        return np.trunc(xb * _inv(d) + np.float32(8.5)) % 16
    return _q4_0_like(x, codes)


def q8_0_round_half_even(x):
    """Q8_0 codes by rint (ties to even) where ggml's roundf goes away from zero."""
    xb = np.asarray(x, np.float32).reshape(-1, 32)
    raw = _q(xb, "Q8_0")
    d = (np.max(np.abs(xb), axis=1, keepdims=True) / np.float32(127)).astype(np.float32)
    raw[:, 2:] = np.rint(xb * _inv(d)).astype(np.int8).view(np.uint8)
    return _rows(raw, x)


def q8_0_fp16_d_first(x):
    """Q8_0 codes from the fp16-rounded d (the scale rounded before use)."""
    xb = np.asarray(x, np.float32).reshape(-1, 32)
    raw = _q(xb, "Q8_0")
    d = _fp16(np.max(np.abs(xb), axis=1, keepdims=True) / np.float32(127))
    y = xb * _inv(d)
    raw[:, 2:] = np.clip(np.trunc(y + np.copysign(np.float32(0.5), y)), -127, 127).astype(np.int8).view(np.uint8)
    return _rows(raw, x)


def q8_0_block_64(x):
    """Blocks of 64 for the scale (a QK mix-up): two blocks share one absmax."""
    xb = np.asarray(x, np.float32).reshape(-1, 32)
    if xb.shape[0] % 2:
        return _rows(_q(xb, "Q8_0"), x)
    amax = np.repeat(np.max(np.abs(xb.reshape(-1, 64)), axis=1), 2)        # (n_blocks,)
    pinned = xb.copy()
    pinned[:, 31] = np.where(np.abs(xb[:, 31]) < amax, np.sign(xb[:, 31] + (xb[:, 31] == 0)) * amax, xb[:, 31])
    raw = _q(pinned, "Q8_0")
    d = (amax / np.float32(127)).astype(np.float32)[:, None]
    y = xb * _inv(d)
    raw[:, 2:] = np.clip(np.trunc(y + np.copysign(np.float32(0.5), y)), -127, 127).astype(np.int8).view(np.uint8)
    return _rows(raw, x)


def q8_1_s_from_fp16_d(x):
    """Q8_1's s = Σq · fp16(d) where ggml multiplies by the float32 d."""
    xb = np.asarray(x, np.float32).reshape(-1, 32)
    raw = _q(xb, "Q8_1")
    d = raw[:, 0:2].copy().view("<f2").astype(np.float32)
    q = raw[:, 4:].view(np.int8).astype(np.int32).sum(axis=1, keepdims=True)
    raw[:, 2:4] = (q * d).astype(np.float32).astype(np.float16).view(np.uint8).reshape(-1, 2)
    return _rows(raw, x)


def q8_1_as_q8_0(x):
    """Q8_1 written with Q8_0's 34-byte block (no s)."""
    return np.array(gguf.quantize(np.asarray(x, np.float32), "Q8_0"))


def q4_1_min_plus_zero(x):
    """m = min + 0.0 (or abs of a zero): a −0 minimum stored as +0."""
    return _edit("Q4_1", "m", lambda v: np.where(v.view("<u2") == 0x8000, 0, v.view("<u2")).astype("<u2")
                 .view(np.uint8).reshape(v.shape))(x)


def f16_truncate(x):
    """F16 by cutting the mantissa (round toward zero), not to nearest even."""
    b = np.asarray(x, np.float32).view(np.uint32)
    rne = np.asarray(x, np.float32).astype(np.float16)
    toward0 = np.where(np.abs(rne.astype(np.float32)) > np.abs(np.asarray(x, np.float32)),
                       (rne.view(np.uint16) - 1).astype(np.uint16), rne.view(np.uint16))
    toward0 = np.where((rne.view(np.uint16) & 0x7FFF) == 0, rne.view(np.uint16), toward0)
    del b
    return toward0.astype("<u2").view(np.uint8).reshape(np.asarray(x).shape[0], -1)


def f16_saturate(x):
    """F16 that saturates at ±65504 where GGML_FP32_TO_FP16 overflows to ±inf."""
    h = np.clip(np.asarray(x, np.float32), -65504, 65504).astype(np.float16)
    return h.view(np.uint8).reshape(np.asarray(x).shape[0], -1)


def f16_flush_subnormals(x):
    """F16 with subnormal results flushed to ±0 (an FTZ conversion)."""
    h = np.asarray(x, np.float32).astype(np.float16)
    h = np.where(np.abs(h) < np.float16(2.0**-14), np.copysign(np.float16(0), h), h).astype(np.float16)
    return h.view(np.uint8).reshape(np.asarray(x).shape[0], -1)


def bf16_truncate(x):
    """BF16 as the top 16 bits of the float32 (no rounding)."""
    b = (np.asarray(x, np.float32).view(np.uint32) >> 16).astype("<u2")
    return b.view(np.uint8).reshape(np.asarray(x).shape[0], -1)


# --- K-quants ----------------------------------------------------------------------------------------

def q4_k_sub_block_order(x, imatrix=None):
    """Q4_K with the 32-weight sub-blocks of each super-block visited pairwise swapped (0↔1, 2↔3 …)."""
    xb = np.asarray(x, np.float32).reshape(-1, 8, 32)
    swapped = xb[:, [1, 0, 3, 2, 5, 4, 7, 6], :].reshape(np.asarray(x).shape)
    return np.array(gguf.quantize(swapped, "Q4_K"))


def q4_k_scales_j4_high_bits(x):
    """get_scale_min_k4's high 2 bits of sc_{j+4} left out: 6-bit scales of sub-blocks 4-7 cut to 4 bits."""
    def edit(v):
        v = v.copy()
        v[:, 0:4] &= 0x3F
        return v
    return _edit("Q4_K", "scales", edit)(x)


# --- dequantize mutants -------------------------------------------------------------------------------

def _d(fmt: str) -> Callable:
    def decode(raw):
        return np.array(gguf.dequantize(np.asarray(raw, np.uint8), fmt))
    return decode


def deq_q4_0_nibbles(raw):
    """Q4_0 decoded with the nibbles of each byte read the other way round."""
    raw = np.array(raw, np.uint8)
    r = raw.reshape(-1, 18)
    r[:, 2:] = _swap_nibbles(r[:, 2:])
    return _d("Q4_0")(raw)


def deq_q4_1_fields_swapped(raw):
    """Q4_1 decoded with d and m read from each other's bytes (struct order confused).

    (An FMA d·q + m would be an equivalent mutant here: d·q of a float16 d and a 4-bit q is
    exact in float32, so fused and unfused give the same bits.)"""
    raw = np.array(raw, np.uint8)
    r = raw.reshape(-1, 20)
    r[:, 0:4] = r[:, [2, 3, 0, 1]]
    return _d("Q4_1")(raw)


def deq_q5_0_no_qh(raw):
    """Q5_0 decoded without the fifth bits (qh read as 0)."""
    raw = np.array(raw, np.uint8)
    raw.reshape(-1, 22)[:, 2:6] = 0
    return _d("Q5_0")(raw)


def deq_q8_0_bf16_d(raw):
    """Q8_0 decoded with d read as bfloat16 (flush-to-zero would be an equivalent mutant: a
    float16 d times an int8 code is never a float32 subnormal)."""
    r = np.asarray(raw, np.uint8).reshape(-1, 34)
    d = (r[:, 0:2].copy().view("<u2").astype(np.uint32) << 16).view(np.float32)
    q = r[:, 2:].view(np.int8).astype(np.float32)
    return (q * d).astype(np.float32).reshape(np.asarray(raw).shape[0], -1)


def deq_q6_k_offset_31(raw):
    """Q6_K decoded as d·sc·(q − 31): the code offset off by one."""
    y = _d("Q6_K")(raw).reshape(-1, 16, 16)
    r = np.asarray(raw, np.uint8).reshape(-1, 210)
    d = r[:, 208:210].copy().view("<f2").astype(np.float32)[:, :, None]      # (B, 1, 1)
    sc = r[:, 192:208].view(np.int8).astype(np.float32)[:, :, None]         # (B, 16, 1)
    return (y + (d * sc).astype(np.float32)).astype(np.float32).reshape(np.asarray(raw).shape[0], -1)


def deq_iq4_nl_one_level(raw):
    """IQ4_NL decoded with kvalues_iq4nl[5] = −34 instead of −35."""
    from refquant.gguf.iquants import KVALUES

    r = np.asarray(raw, np.uint8).reshape(-1, 18)
    d = r[:, 0:2].copy().view("<f2").astype(np.float32)
    q = np.concatenate([r[:, 2:] & 15, r[:, 2:] >> 4], axis=1)
    table = KVALUES.astype(np.float32).copy()
    table[5] = -34
    return (d * table[q]).astype(np.float32).reshape(np.asarray(raw).shape[0], -1)


def deq_f16_ftz(raw):
    """F16 decoded with subnormal halves flushed to zero."""
    h = np.asarray(raw, np.uint8).copy().view("<f2")
    h = np.where(np.abs(h) < np.float16(2.0**-14), np.copysign(np.float16(0), h), h)
    return h.astype(np.float32).reshape(np.asarray(raw).shape[0], -1)


def deq_q4_k_low_scales(raw):
    """Q4_K decoded with the sub-block scales and mins read as 4-bit (the 2 high bits of j < 4 dropped)."""
    raw = np.array(raw, np.uint8)
    r = raw.reshape(-1, 144)
    r[:, 4:12] &= 0x0F
    return _d("Q4_K")(raw)


# --- bitsandbytes ---------------------------------------------------------------------------------------

def _nf4_quantize(x, code=None, upper_ties=False, absmax_fp16=False):
    """bitsandbytes' NF4 blockwise quantizer in NumPy (blocks of 64 over the flat x), with a knob per bug."""
    code = nf4.nf4_code() if code is None else code
    flat = np.asarray(x, np.float32).reshape(-1)
    n = flat.size
    n_full = n // 64
    full = flat[:n_full * 64].reshape(n_full, 64)
    am = np.max(np.abs(full), axis=1, keepdims=True)
    if absmax_fp16:
        am = _fp16(am)
    y = [(full * (np.float32(1) / np.maximum(am, np.float32(1e-38)))).reshape(-1)]
    absmax = [am.reshape(-1)]
    if n % 64:
        tail = flat[n_full * 64:]
        t = np.maximum(np.max(np.abs(tail), keepdims=True), np.float32(1e-38))
        t = _fp16(t) if absmax_fp16 else t
        y.append(tail / t)
        absmax.append(t)
    y = np.concatenate(y)
    if n % 2:
        y = np.concatenate([y, np.zeros(1, np.float32)])
    mid = ((code[1:] + code[:-1]) / 2).astype(np.float32)
    q = (np.sum(y[:, None] >= mid[None, :] if upper_ties else y[:, None] > mid[None, :], axis=1)).astype(np.uint8)
    packed = (q[0::2] << 4) | q[1::2]
    return packed, np.concatenate(absmax).astype(np.float32)


def nf4_ties_up(x):
    """torch.bucketize(right=True): a y exactly on a midpoint goes to the upper code."""
    return _nf4_quantize(x, upper_ties=True)


def nf4_one_level(x):
    """The NF4 table with one level changed (0.0796 for 0.0796...'s neighbour: level 9 moved by 1e-3)."""
    code = nf4.nf4_code().copy()
    code[9] += np.float32(1e-3)
    return _nf4_quantize(x, code=code)


def nf4_absmax_fp16(x):
    """absmax rounded to float16 before the division (a half-precision statistics buffer)."""
    return _nf4_quantize(x, absmax_fp16=True)


def nf4_nibbles_swapped(x):
    """The first code of each byte in the low nibble (bitsandbytes puts it high)."""
    packed, st = nf4.quantize_4bit(np.asarray(x, np.float32), blocksize=64)
    return _swap_nibbles(np.asarray(packed)), st.absmax


def deq_nf4_one_level(packed, absmax, shape):
    """NF4 decoded with level 3 of the table changed in its last bits."""
    code = nf4.nf4_code().copy()
    code[3] = np.nextafter(code[3], np.float32(0))
    p = np.asarray(packed, np.uint8).reshape(-1)
    q = np.stack([p >> 4, p & 15], axis=1).reshape(-1)[: int(np.prod(shape))]
    n = q.size
    am = np.repeat(np.asarray(absmax, np.float32), 64)[:n]
    return (code[q] * am).astype(np.float32).reshape(shape)


def int8_blockwise_signed_absmax(x):
    """absmax = max(x), not max|x|: blocks whose largest magnitude is negative get a wrong scale."""
    xf = np.asarray(x, np.float32)
    flat = xf.reshape(-1)
    n_blocks = -(-flat.size // 256)
    pad = np.concatenate([flat, np.full(n_blocks * 256 - flat.size, -np.inf, np.float32)]).reshape(n_blocks, 256)
    am = np.max(pad, axis=1)
    q, st = int8.quantize_blockwise(xf, blocksize=256)
    if np.array_equal(am, np.asarray(st.absmax)):
        return q, st.absmax
    return q, am.astype(np.float32)


def llm_int8_half_away(A):
    """LLM.int8() codes rounded half away from zero (C roundf) where torch rounds half to even."""
    A = np.asarray(A, np.float32)
    Q, s, _ = int8.int8_vectorwise_quant(A, threshold=0.0)
    s = np.asarray(s, np.float32)
    with np.errstate(all="ignore"):
        y = A * (np.float32(127) / s)[:, None]
    Q2 = np.where(np.abs(y - np.trunc(y)) >= 0.5, np.trunc(y) + np.sign(y), np.trunc(y))
    Q2 = np.where(np.isfinite(Q2), Q2, 0).astype(np.int8)
    return Q2, s


def llm_int8_fp16_stats(A):
    """Row absmax kept in float16 (a half-precision statistics buffer), the codes computed with it."""
    A = np.asarray(A, np.float32)
    _, s, _ = int8.int8_vectorwise_quant(A, threshold=0.0)
    s = _fp16(np.asarray(s, np.float32))
    with np.errstate(all="ignore"):
        y = A * (np.float32(127) / s)[:, None]
    return np.where(np.isfinite(y), np.rint(y), 0).astype(np.int8), s


def llm_int8_divides(A):
    """round(A / s · 127): the division first where bitsandbytes multiplies by 127/s. The two
    differ only in the last bit of y, so only a y within an ulp of k + ½ tells them apart:
    random search almost never meets one; ``near_tie_rows`` builds it (see PINNED)."""
    A = np.asarray(A, np.float32)
    _, s, _ = int8.int8_vectorwise_quant(A, threshold=0.0)
    s = np.asarray(s, np.float32)
    with np.errstate(all="ignore"):
        y = (A / s[:, None]) * np.float32(127)
    return np.where(np.isfinite(y), np.rint(y), 0).astype(np.int8), s


def near_tie_row(codes: Callable[[np.ndarray], np.ndarray], ref: Callable[[np.ndarray], np.ndarray],
                 amax: float, n: int = 32) -> np.ndarray:
    """A row [amax, x, 0, ...] with x the first float32 above 0.5·amax/127 … where ``codes`` and
    ``ref`` disagree: walks x up by ulps from each k + ½ (k = 0 … 126) times amax/127."""
    for k in range(127):
        x = np.float32((k + 0.5) * amax / 127)
        for _ in range(64):
            row = np.zeros((1, n), np.float32)
            row[0, 0], row[0, 1] = amax, x
            if not np.array_equal(codes(row), ref(row)):
                return row
            x = np.nextafter(x, np.float32(np.inf))
    raise AssertionError("no near tie found")


# --- uniform, FP8, MX, NVFP4, HQQ -------------------------------------------------------------------------

def _int4_g32(x):
    r = U.quantize(np.asarray(x, np.float32), bits=4, symmetric=False, granularity="group", group_size=32)
    return np.asarray(r.q), np.asarray(r.s), np.asarray(r.z)


def int4_z_off_by_one(x):
    """z = round(−min/s) + 1 (an off-by-one zero-point), the codes shifted with it and clamped."""
    q, s, z = _int4_g32(x)
    q_min, q_max = U.code_range(4, False)
    return np.clip(q + 1, q_min, q_max), s, z + 1


def int4_round_half_away(x):
    """Codes by floor(x/s + 0.5) + z (ties up) where refquant rounds x/s half to even."""
    q, s, z = _int4_g32(x)
    xg = np.asarray(x, np.float32).reshape(q.shape)
    q_min, q_max = U.code_range(4, False)
    with np.errstate(all="ignore"):
        y = xg / s
        q2 = np.clip(np.floor(y + np.float32(0.5)) + z, q_min, q_max)
    return np.where(np.isfinite(q2), q2, q).astype(np.int32), s, z


def int8_channel_max_not_absmax(x):
    """Per-channel symmetric INT8 with s = max(x)/127 (the signed max, not the absmax)."""
    r = U.quantize(np.asarray(x, np.float32), bits=8, symmetric=True, granularity="channel", axis=0)
    xf = np.asarray(x, np.float32)
    s = np.asarray(r.s, np.float32).copy()
    mx_ = np.max(xf, axis=1, keepdims=True) / np.float32(127)
    s = np.where(mx_ > 0, mx_, s).astype(np.float32)
    with np.errstate(all="ignore"):
        q = np.clip(np.rint(xf / s), -127, 127)
    return np.where(np.isfinite(q), q, 0).astype(np.int32), s, np.asarray(r.z)


def fp8_e4m3_truncate(x):
    """E4M3 by truncating the mantissa (toward zero), not round to nearest even."""
    xf = np.asarray(x, np.float32)
    c = fp8.encode(xf, "e4m3")
    v = fp8.decode(c, "e4m3")
    over = (np.abs(v) > np.abs(xf)) & (c & 0x7F).astype(bool)
    return np.where(over, c - 1, c).astype(np.uint8)


def fp8_e4m3_no_saturate(x):
    """E4M3 that overflows to NaN past 448 instead of saturating (satfinite)."""
    return fp8.encode(np.asarray(x, np.float32), "e4m3", saturate=False)


def fp8_e5m2_flush_subnormals(x):
    """E5M2 with subnormal results flushed to ±0."""
    c = fp8.encode(np.asarray(x, np.float32), "e5m2")
    return np.where((c & 0x7C) == 0, c & 0x80, c).astype(np.uint8)


def mxfp4_ceil_scale(x):
    """MXFP4 with the shared exponent rounded up (ceil) where the OCP spec floors."""
    r = mx.mx_quantize(np.asarray(x, np.float32), "fp4_e2m1", mode="ceil")
    return fp8.encode(np.asarray(r.q), fp8.E2M1).reshape(np.asarray(x).shape), mx.e8m0_bytes(r)


def nvfp4_ggml_scale(x):
    """NVFP4 with ggml's block-scale rounding where torchao's is expected."""
    r = mx.nvfp4_quantize(np.asarray(x, np.float32), scale_mode="ggml")
    return fp8.encode(np.asarray(r.q), fp8.E2M1).reshape(np.asarray(x).shape), mx.nvfp4_scale_bytes(r)


def hqq_no_optimize(W):
    """HQQ without the proximal solver: min/max scales and zeros (its initial point)."""
    r = hqq.hqq_quantize(np.asarray(W, np.float32), bits=4, optimize=False)
    return np.asarray(r.q), np.asarray(r.s), np.asarray(r.z)


def hqq_zero_rounded(W):
    """HQQ with the zero-point rounded to an integer (hqq keeps it a float)."""
    r = hqq.hqq_quantize(np.asarray(W, np.float32), bits=4)
    return np.asarray(r.q), np.asarray(r.s), np.round(np.asarray(r.z))


def deq_int4_z_added(q, s, z):
    """(q + z)·s: the zero-point added instead of subtracted."""
    G = 32
    qg = np.asarray(q, np.float32).reshape(-1, G)
    return ((qg + np.asarray(z, np.float32).reshape(-1, 1)) * np.asarray(s, np.float32).reshape(-1, 1)).reshape(np.asarray(q).shape)


def deq_mxfp4_bias_126(codes, scales):
    """MXFP4 decoded with an E8M0 bias of 126 (one binade off)."""
    q = fp8.decode(np.asarray(codes, np.uint8), fp8.E2M1).reshape(np.asarray(scales).shape[0], -1, 32)
    X = np.asarray(scales, np.float32)[..., None] - 126
    return (q * np.exp2(X)).astype(np.float32).reshape(np.asarray(codes).shape)


_Q4_K_DMIN = _edit("Q4_K", "dmin", _fp16_negate)
_Q2_K_DMIN = _edit("Q2_K", "dmin", _fp16_negate)
_Q6_K_D = _edit("Q6_K", "d", _fp16_negate)


def _imatrix_ignored(fmt: str) -> Callable:
    def mutant(x, imatrix=None):
        return np.array(gguf.quantize(np.asarray(x, np.float32), fmt)).reshape(np.asarray(x).shape[0], -1)
    mutant.__name__ = f"{fmt.lower()}_imatrix_ignored"
    return mutant


Z = np.zeros


class Pinned(NamedTuple):
    """A mutant random search rarely kills, with the input that shows it (derived, not pasted)."""

    mutant: Mutant
    row: Callable[[], np.ndarray]


def _q8_0_codes(fn):
    return lambda row: np.asarray(fn(row)).reshape(-1, 34)[:, 2:]


PINNED = [
    Pinned(Mutant("LLM.int8() A/s·127 order", "LLM.INT8", "quantize", llm_int8_divides, "edge parity", "float order"),
           lambda: near_tie_row(lambda r: llm_int8_divides(r)[0],
                                lambda r: np.asarray(int8.int8_vectorwise_quant(r, threshold=0.0)[0]), 3.0)),
    Pinned(Mutant("Q8_0 d rounded to fp16 before use (normal block)", "Q8_0", "quantize", q8_0_fp16_d_first,
                  "edge parity", "scale rounding step"),
           lambda: near_tie_row(_q8_0_codes(q8_0_fp16_d_first), _q8_0_codes(lambda r: _q(r, "Q8_0")), 3.0)),
]

MUTANTS: list[Mutant] = [
    # GGUF legacy, quantize
    Mutant("Q4_0 nibbles swapped", "Q4_0", "quantize", _edit("Q4_0", "qs", _swap_nibbles), "edge parity", "nibble order (halves)"),
    Mutant("Q4_0 codes in adjacent pairs", "Q4_0", "quantize",
           _edit("Q4_0", "qs", lambda v: (lambda c: (c[:, 0::2] | (c[:, 1::2] << 4)).astype(np.uint8))(
               np.concatenate([v & 15, v >> 4], axis=1))), "edge parity", "nibble order (pairs)"),
    Mutant("Q4_0 round half even", "Q4_0", "quantize", q4_0_round_half_even, "edge parity", "tie rounding"),
    Mutant("Q4_0 x/d not x·(1/d)", "Q4_0", "quantize", q4_0_divides, "edge parity", "subnormal block"),
    Mutant("Q4_0 d rounded to fp16 before use", "Q4_0", "quantize", q4_0_fp16_d_first, "edge parity", "subnormal block"),
    Mutant("Q4_0 max of |x| (sign lost)", "Q4_0", "quantize", q4_0_unsigned_max, "edge parity", "sign flipped"),
    Mutant("Q4_0 missing clamp", "Q4_0", "quantize", q4_0_no_clamp, "edge parity", "beyond the range"),
    Mutant("Q4_0 imatrix ignored", "Q4_0", "quantize", _imatrix_ignored("Q4_0"), "imatrix", "imatrix ignored", "draw"),
    Mutant("Q4_1 −0 minimum stored as +0", "Q4_1", "quantize", q4_1_min_plus_zero, "edge parity", "signed zero"),
    Mutant("Q4_1 d sign flipped", "Q4_1", "quantize", _edit("Q4_1", "d", _fp16_negate), "edge parity", "sign flipped"),
    Mutant("Q5_0 fifth bit dropped", "Q5_0", "quantize", _edit("Q5_0", "qh", lambda v: Z(v.shape, np.uint8)), "edge parity", "dropped high bits"),
    Mutant("Q5_0 qh big-endian", "Q5_0", "quantize", _edit("Q5_0", "qh", lambda v: v[:, ::-1]), "edge parity", "beyond the range"),
    Mutant("Q5_1 fifth bit dropped", "Q5_1", "quantize", _edit("Q5_1", "qh", lambda v: Z(v.shape, np.uint8)), "edge parity", "dropped high bits"),
    Mutant("Q8_0 round half even", "Q8_0", "quantize", q8_0_round_half_even, "edge parity", "tie rounding"),
    Mutant("Q8_0 d rounded to fp16 before use", "Q8_0", "quantize", q8_0_fp16_d_first, "edge parity", None),
    Mutant("Q8_0 scale over blocks of 64", "Q8_0", "quantize", q8_0_block_64, "edge parity", "beyond the range"),
    Mutant("Q8_1 s from the fp16 d", "Q8_1", "quantize", q8_1_s_from_fp16_d, "edge parity", None),
    Mutant("Q8_1 written as Q8_0 blocks", "Q8_1", "quantize", q8_1_as_q8_0, "edge parity", "block size or layout"),
    Mutant("F16 truncated", "F16", "quantize", f16_truncate, "edge parity", "scale last bits"),
    Mutant("F16 saturating", "F16", "quantize", f16_saturate, "edge parity", "fp16 overflow"),
    Mutant("F16 subnormals flushed", "F16", "quantize", f16_flush_subnormals, "edge parity", "subnormal flushed"),
    Mutant("BF16 truncated", "BF16", "quantize", bf16_truncate, "edge parity", "scale last bits"),
    # K-quants, quantize
    Mutant("Q4_K sub-blocks pairwise swapped", "Q4_K", "quantize", q4_k_sub_block_order, "edge parity", "sub-block order"),
    Mutant("Q4_K nibbles swapped", "Q4_K", "quantize", _edit("Q4_K", "qs", _swap_nibbles), "edge parity", "nibble order (halves)"),
    Mutant("Q4_K scale high bits dropped", "Q4_K", "quantize", q4_k_scales_j4_high_bits, "edge parity", "beyond the range"),
    Mutant("Q4_K dmin sign flipped", "Q4_K", "quantize", _Q4_K_DMIN, "edge parity", "signed zero"),
    Mutant("Q4_K imatrix ignored", "Q4_K", "quantize", _imatrix_ignored("Q4_K"), "imatrix", "imatrix ignored", "draw"),
    Mutant("Q2_K dmin sign flipped", "Q2_K", "quantize", _Q2_K_DMIN, "edge parity", "signed zero"),
    Mutant("Q3_K hmask dropped", "Q3_K", "quantize", _edit("Q3_K", "hmask", lambda v: Z(v.shape, np.uint8)), "edge parity", "dropped high bits"),
    Mutant("Q5_K fifth bit dropped", "Q5_K", "quantize", _edit("Q5_K", "qh", lambda v: Z(v.shape, np.uint8)), "edge parity", "dropped high bits"),
    Mutant("Q6_K high bits dropped", "Q6_K", "quantize", _edit("Q6_K", "qh", lambda v: Z(v.shape, np.uint8)), "edge parity", "dropped high bits"),
    Mutant("Q6_K d sign flipped", "Q6_K", "quantize", _Q6_K_D, "edge parity", "signed zero"),
    Mutant("Q6_K imatrix ignored", "Q6_K", "quantize", _imatrix_ignored("Q6_K"), "imatrix", "imatrix ignored", "draw"),
    Mutant("Q8_K bsums left 0", "Q8_K", "quantize", _edit("Q8_K", "bsums", lambda v: Z(v.shape, np.uint8)), "edge parity", None),
    Mutant("IQ4_NL imatrix ignored", "IQ4_NL", "quantize", _imatrix_ignored("IQ4_NL"), "imatrix", "imatrix ignored", "draw"),
    # GGUF, dequantize
    Mutant("Q4_0 decoded nibbles swapped", "Q4_0", "dequantize", deq_q4_0_nibbles, "edge parity", None),
    Mutant("Q4_1 decoded d and m swapped", "Q4_1", "dequantize", deq_q4_1_fields_swapped, "edge parity", None),
    Mutant("Q5_0 decoded without qh", "Q5_0", "dequantize", deq_q5_0_no_qh, "edge parity", None),
    Mutant("Q8_0 decoded d as bf16", "Q8_0", "dequantize", deq_q8_0_bf16_d, "edge parity", None),
    Mutant("Q6_K decoded with offset 31", "Q6_K", "dequantize", deq_q6_k_offset_31, "edge parity", None),
    Mutant("Q4_K decoded with 4-bit scales", "Q4_K", "dequantize", deq_q4_k_low_scales, "edge parity", None),
    Mutant("IQ4_NL table level changed", "IQ4_NL", "dequantize", deq_iq4_nl_one_level, "edge parity", "one table level"),
    Mutant("F16 decoded flush-to-zero", "F16", "dequantize", deq_f16_ftz, "edge parity", "subnormal flushed"),
    # bitsandbytes
    Mutant("NF4 ties to the upper code", "NF4", "quantize", nf4_ties_up, "edge parity", None),
    Mutant("NF4 table level changed", "NF4", "quantize", nf4_one_level, "edge parity", None),
    Mutant("NF4 absmax rounded to fp16", "NF4", "quantize", nf4_absmax_fp16, "edge parity", None),
    Mutant("NF4 nibbles swapped", "NF4", "quantize", nf4_nibbles_swapped, "edge parity", "nibble order (halves)"),
    Mutant("NF4 decoded with a changed level", "NF4", "dequantize", deq_nf4_one_level, "edge parity", "one table level"),
    Mutant("INT8 blockwise signed absmax", "INT8-BLOCKWISE", "quantize", int8_blockwise_signed_absmax, "edge parity", None),
    Mutant("LLM.int8() round half away", "LLM.INT8", "quantize", llm_int8_half_away, "edge parity", "tie rounding"),
    Mutant("LLM.int8() fp16 row statistics", "LLM.INT8", "quantize", llm_int8_fp16_stats, "edge parity", None),
    # uniform, FP8, MX, HQQ
    Mutant("INT4-G32 zero-point off by one", "INT4-G32", "quantize", int4_z_off_by_one, "edge parity", "zero-point off by one"),
    Mutant("INT4-G32 round half up", "INT4-G32", "quantize", int4_round_half_away, "edge parity", "tie rounding"),
    Mutant("INT8-CHANNEL max not absmax", "INT8-CHANNEL", "quantize", int8_channel_max_not_absmax, "edge parity", None),
    Mutant("INT4-G32 decoded (q + z)·s", "INT4-G32", "dequantize", deq_int4_z_added, "edge parity", None),
    Mutant("FP8-E4M3 truncated", "FP8-E4M3", "quantize", fp8_e4m3_truncate, "edge parity", "tie rounding"),
    Mutant("FP8-E4M3 no saturation", "FP8-E4M3", "quantize", fp8_e4m3_no_saturate, "edge parity", None),
    Mutant("FP8-E5M2 subnormals flushed", "FP8-E5M2", "quantize", fp8_e5m2_flush_subnormals, "edge parity", None),
    Mutant("MXFP4 ceil exponent", "MX-FP4", "quantize", mxfp4_ceil_scale, "edge parity", None),
    Mutant("MXFP4 decoded with bias 126", "MX-FP4", "dequantize", deq_mxfp4_bias_126, "edge parity", None),
    Mutant("NVFP4 ggml block scales", "NVFP4-TORCHAO", "quantize", nvfp4_ggml_scale, "edge parity", None),
    Mutant("HQQ-4 without the solver", "HQQ-4", "quantize", hqq_no_optimize, "edge parity", None),
    Mutant("HQQ-4 zero-point rounded", "HQQ-4", "quantize", hqq_zero_rounded, "edge parity", None),
]

# refquant's own Q4_0 with the natural signature: the command line's conforming example
from refquant.testing.conformance import reference as _reference  # noqa: E402

reference_q4_0 = _reference("Q4_0")
