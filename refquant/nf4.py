"""NF4 and FP4: bitsandbytes' 4-bit blockwise formats, with QLoRA's double quantization.

A tensor is flattened and cut into blocks of ``B`` values (B = 32 ... 4096, default 64).
Each block is scaled by its absolute maximum into [-1, 1] and every value is replaced by
the index of the nearest of 16 code values ``c`` (the *code book*, NF4 or FP4):

    m_b  = max_i |x_bi|                       absmax, float32, one per block
    y_bi = clamp(x_bi · (1/m_b), -1, 1)       (the tail block divides: x_bi / m_b)
    q_bi = argmin_k |y_bi - c_k|              ties to the lower code value
    x̂_bi = c[q_bi] · m_b                      ⇒ |x_bi - x̂_bi| ≤ m_b · max_k (c_{k+1} - c_k)/2

Two codes share a byte, the **first in the high nibble**: byte = q_0 << 4 | q_1.

*Double quantization* (QLoRA §3) stores the float32 absmax values themselves in 8 bits:
subtract their mean (the ``offset``) and quantize the rest blockwise (blocks of 256) with
the dynamic 8-bit map of ``refquant.int8``; memory per parameter drops from 32/B to
8/B + 32/(256·B) bits, 0.5 -> 0.127 bits at B = 64 (4.5 -> 4.127 bits per weight).

Symbols: ``x`` the input, ``m`` absmax, ``c`` the code book, ``q`` 4-bit codes, ``B``
blocksize; for double quantization ``μ`` the offset, ``m'`` the 8-bit codes of m - μ and
``M`` their own absmax per 256 blocks.

Which bitsandbytes code we mirror (0.50.x on a CPU — the path that runs here and in CI):
quantization is the pure-torch ``quantize_4bit`` kernel in backends/default/ops.py
(``torch.bucketize`` on the midpoints of the sorted code book); dequantization is the C++
kernel ``dequantizeBlockwise4bitCpu`` (csrc/cpu_ops.cpp), which bitsandbytes swaps for the
pure-torch ``_dequantize_4bit_compute`` when the last dimension is odd or, on AVX-512
machines, when B ≥ 2048. All compute c[q]·m in float32 and round once to the output dtype;
they differ in the sign of one zero (see ``fp4_code``) and in one bug we do not copy: the
AVX-512 kernel (last dimension a multiple of 16) looks absmax up per *row*,
``absmax[row·(cols/B) + col/B]``, which is the flat block only when cols is a multiple of B;
for e.g. a (5, 64) tensor with B = 256 it scales rows 1..4 with the wrong absmax. We decode
the flat layout that ``quantize_4bit`` wrote (as bitsandbytes' scalar and torch paths do).
Details bitsandbytes fixes and we reproduce:

* the tail block (n not a multiple of B) is divided by its absmax, full blocks are
  multiplied by the float32 reciprocal; the two can differ in the last bit;
* a zero block keeps absmax 0 (its values scale by 1/1e-38 and stay 0), except a zero
  *tail* block, whose stored absmax is 1e-38 (bitsandbytes clamps before storing it);
* an odd number of values is padded with one 0.0 before packing;
* the double-quantization offset is the float32 mean of the absmax, summed in the order
  torch's CPU kernel adds float32 values (``torch_sum_f32``), so it matches to the last bit
  whenever torch sums in one thread (always below 32768 blocks, i.e. 2M weights at B = 64).

Ref: Dettmers et al. 2023, "QLoRA: Efficient Finetuning of Quantized LLMs" (NF4, double
quantization); bitsandbytes/functional.py ``quantize_4bit``, ``dequantize_4bit``,
``get_4bit_type``, ``create_normal_map``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from ._backend import from_numpy, namespace, to_numpy
from ._packing import pack_nibbles, unpack_nibbles
from .int8 import BlockwiseState, _check_bnb_float, _check_blocksize, _linspace_f32
from .int8 import decode_blocks, dequantize_blockwise, quantize_blockwise

__all__ = [
    "nf4_code",
    "fp4_code",
    "create_normal_map",
    "CODES",
    "BLOCKSIZES",
    "QuantState",
    "quantize_4bit",
    "dequantize_4bit",
    "quantize_nf4",
    "dequantize_nf4",
    "absmax_mean",
    "torch_sum_f32",
    "bits_per_parameter",
    "stored_bytes",
    "max_code_gap",
]

#: block sizes bitsandbytes allows for 4-bit quantization
BLOCKSIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096)

#: block size of the nested 8-bit quantization of absmax (QLoRA: 256)
NESTED_BLOCKSIZE = 256

#: the normal quantile bitsandbytes' NF4 stops at (its largest bin edge, ≈ 1.848σ)
NF4_OFFSET = 0.9677083

#: bitsandbytes clamps absmax to this before dividing by it (float32: a subnormal)
_TINY = np.float32(1e-38)

# --------------------------------------------------------------------------------------
# Code books
# --------------------------------------------------------------------------------------


def create_normal_map(offset: float = NF4_OFFSET, use_extra_value: bool = True) -> np.ndarray:
    """NormalFloat code book: quantiles of N(0, 1), with an exact zero, scaled into [-1, 1].

    With 4 bits we want 16 values that split a normal distribution into bins of equal
    probability, *and* an exact 0 (padding and zero weights must decode to 0). A symmetric
    set cannot have both with an even count, so NF4 is asymmetric: 8 positive values from
    9 equally spaced probabilities p in [1/2, δ] and 7 negative ones from 8 in [1/2, δ]
    (``use_extra_value``; otherwise 7 and 7), each point's normal quantile Φ⁻¹(p), plus 0:

        c⁺ = Φ⁻¹(linspace(δ, 1/2, 9)[:-1]),  c⁻ = -Φ⁻¹(linspace(δ, 1/2, 8)[:-1]),  c = sort(c⁻, 0, c⁺)/max

    δ = 0.9677083 (not 1, whose quantile is infinite) puts the outermost value at
    Φ⁻¹(δ) ≈ 1.848σ, so after dividing by the maximum the extremes are exactly ±1 and a
    block's absmax lands on a code. The linspace is torch's float32 one and the division
    float32, as in bitsandbytes, so the values are bit-identical to its table.

    Returns the 16 values sorted (the NF4 code indices are their positions).
    Ref: QLoRA §3 (NormalFloat quantization); bitsandbytes.functional.create_normal_map.
    """
    from scipy.stats import norm

    positive = norm.ppf(_linspace_f32(offset, 0.5, 9 if use_extra_value else 8)[:-1])   # (8,) or (7,)
    negative = -norm.ppf(_linspace_f32(offset, 0.5, 8)[:-1])                             # (7,)
    values = np.sort(np.concatenate([positive, [0.0], negative]).astype(np.float32))
    return values / values.max()


def nf4_code() -> np.ndarray:
    """The 16 NF4 values (float32, sorted; index = 4-bit code). See ``create_normal_map``.

    Example: the ends and the exact zero, and the smallest positive value:

    >>> nf4_code()[[0, 7, 15]].tolist(), round(float(nf4_code()[8]), 4)
    ([-1.0, 0.0, 1.0], 0.0796)
    """
    return create_normal_map()


def fp4_code() -> np.ndarray:
    """bitsandbytes' FP4 (E2M1) code book, indexed by the 4-bit pattern ``s e1 e0 m``.

    Sign bit s, a 2-bit exponent field e and one mantissa bit m. The field counts
    *down*: e = 1, 2, 3 mean 2^3, 2^2, 2^1, and e = 0 is the subnormal row 0 or 2^-4:

        |v| = (1 + m/2) · 2^(4 - e)   (e ≥ 1),     |v| = m · 2^-4   (e = 0)

    giving 0, 0.0625, 8, 12, 4, 6, 2, 3 for patterns 0..7, negated for 8..15, and all
    divided by the largest, 12, so the code book spans [-1, 1]. Pattern 8 (sign set, zero
    magnitude) decodes to +0.0, as in bitsandbytes' Python table (``get_4bit_type``, used
    by its pure-torch dequantizer) and its AVX-512 kernel; its portable scalar C++ loop
    (csrc/cpu_ops.cpp ``fp4_lut``) writes -0.0 there, equal in value. Quantization never
    minds: both zeros sort equal, and a value just above 0 maps to pattern 8, just below
    (or exactly 0) to pattern 0.

    Ref: bitsandbytes.functional.get_4bit_type("fp4"); csrc/cpu_ops.cpp ``fp4_lut``.
    Example: patterns 3 (e = 1, m = 1: 1.5·8 = 12), 5 (e = 2, m = 1: 1.5·4 = 6) and 11 (−12), over 12:

    >>> fp4_code()[[3, 5, 11]].tolist()
    [1.0, 0.5, -1.0]
    """
    pattern = np.arange(16)
    sign = np.where(pattern >> 3 == 1, -1.0, 1.0)
    e = (pattern >> 1) & 0b11
    m = pattern & 1
    magnitude = np.where(e == 0, m * 2.0**-4, (1 + m / 2) * 2.0 ** (4 - e))
    values = np.where(magnitude == 0, 0.0, sign * magnitude).astype(np.float32)  # +0.0 for pattern 8
    return values / np.float32(12.0)


CODES = {"nf4": nf4_code(), "fp4": fp4_code()}


def max_code_gap(quant_type: str) -> float:
    """max_k (c_{k+1} - c_k) over the sorted code book: twice the worst rounding error.

    Example: FP4's widest gap is 8/12 -> 12/12, a third of the range's top:

    >>> round(max_code_gap("fp4"), 6), round(max_code_gap("nf4"), 4)
    (0.333333, 0.3038)
    """
    return float(np.max(np.diff(np.sort(CODES[_check_quant_type(quant_type)]))))


def _check_quant_type(quant_type: Any) -> str:
    if quant_type not in CODES:
        raise ValueError(f"quant_type: expected 'nf4' or 'fp4', got {quant_type!r}")
    return quant_type


def _sorted_bounds(code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Midpoints between neighbours of the sorted code book, and the sort order.

    ``order[k]`` is the code index of the k-th smallest value (identity for NF4).
    Ref: backends/default/ops.py ``_get_4bit_quantize_bounds``.
    """
    order = np.argsort(code, kind="stable")                                  # (16,)
    midpoints = (code[order[:-1]] + code[order[1:]]) / np.float32(2.0)       # (15,) float32
    return midpoints, order


# --------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class QuantState:
    """What ``dequantize_4bit`` needs, named as in ``bitsandbytes.functional.QuantState``.

    absmax: (n_blocks,) float32 — or, when ``nested``, the (n_blocks,) uint8 codes of
    absmax - offset; ``offset``: the float32 mean μ; ``state2``: the 8-bit state of that
    nested quantization (its own absmax M per 256 blocks and the dynamic code book).
    """

    absmax: Any
    shape: tuple
    code: Any
    blocksize: int
    quant_type: str
    dtype: Any
    offset: Any = None
    state2: BlockwiseState | None = None

    @property
    def nested(self) -> bool:
        return self.state2 is not None


# --------------------------------------------------------------------------------------
# Quantize / dequantize
# --------------------------------------------------------------------------------------


#: float32 lanes of the vectors torch's CPU ``sum`` kernel accumulates in (its AVX2 build,
#: which torch also dispatches to on AVX-512 machines for this kernel)
TORCH_SUM_LANES = 8


def _cascade_rows(rows: np.ndarray) -> np.ndarray:
    """torch's ``multi_row_sum`` (4 columns) and ``row_sum``: (R, lanes) -> (lanes,) float32.

    Rows are read 4 at a time into 4 running accumulators; every 16 rows the level-0
    accumulators are pushed into level 1 (and every 256 rows level 1 into level 2, ...),
    so only partial sums of similar size meet. Leftover rows go into accumulator 0, and
    the 4 accumulators are added last, 0 + 1 + 2 + 3. All in float32, lane by lane.
    Ref: aten/src/ATen/native/cpu/SumKernel.cpp ``multi_row_sum`` / ``row_sum``.
    """
    n_quads = rows.shape[0] // 4
    quads = rows[: n_quads * 4].reshape(n_quads, 4, rows.shape[1])              # (R/4, 4, lanes)
    bits = max(4, max(1, (n_quads - 1).bit_length()) // 4)                       # level_power
    step = 1 << bits
    acc = np.zeros((4, 4, rows.shape[1]), np.float32)                            # (level, column, lane)
    i = 0
    while i + step <= n_quads:
        for _ in range(step):
            acc[0] += quads[i]
            i += 1
        for level in range(1, 4):
            acc[level] += acc[level - 1]
            acc[level - 1] = 0
            if i & ((step - 1) << (level * bits)):
                break
    for quad in quads[i:]:
        acc[0] += quad
    for level in range(1, 4):
        acc[0] += acc[level]
    partial = acc[0]                                                             # (4, lanes)
    for row in rows[n_quads * 4:]:
        partial[0] += row
    for column in range(1, 4):
        partial[0] += partial[column]
    return partial[0]


def torch_sum_f32(values: Any, lanes: int = TORCH_SUM_LANES) -> np.float32:
    """Σ values in float32, added in the order of torch's CPU ``sum`` (one thread).

    n ≥ lanes: the first ⌊n/lanes⌋·lanes values are summed as vectors of ``lanes`` with
    the cascade of ``_cascade_rows``; then a scalar starts at 0, adds the leftover values
    in order, then the vector's lanes in order. n < lanes: the cascade on scalars.
    (With several threads torch splits n ≥ 32768 values into one chunk per thread.)
    Ref: aten/src/ATen/native/cpu/SumKernel.cpp ``vectorized_inner_sum``.
    """
    v = np.asarray(to_numpy(values), dtype=np.float32).reshape(-1)
    n = v.size
    if n < lanes:
        return np.float32(_cascade_rows(v.reshape(n, 1))[0])
    n_vec = n // lanes
    vector_sum = _cascade_rows(v[: n_vec * lanes].reshape(n_vec, lanes))        # (lanes,)
    total = np.float32(0.0)
    for value in np.concatenate([v[n_vec * lanes:], vector_sum]):
        total = np.float32(total + value)
    return total


def absmax_mean(absmax: Any) -> Any:
    """μ = (Σ_b m_b) / n_blocks in float32, as bitsandbytes' ``absmax.mean()`` computes it.

    torch's mean divides a float32 sum by n in float32, and the sum is accumulated in
    float32 in a fixed cascade order (``torch_sum_f32``) — not the correctly rounded sum,
    so we follow its order to get the same last bit. Computed on the host: one scalar.
    """
    total = torch_sum_f32(absmax)
    mean = np.float32(total / np.float32(absmax.shape[0]))
    return from_numpy(np.asarray(mean, dtype=np.float32), like=absmax)


def quantize_4bit(x: Any, blocksize: int = 64, quant_type: str = "nf4",
                  double_quant: bool = False) -> tuple[Any, QuantState]:
    """Blockwise 4-bit quantization to NF4 or FP4, bitsandbytes' layout byte for byte.

        m_b = max_i |x_bi|,   y = x · (1/max(m_b, 1e-38)),
        q = #{midpoints < y}  (the sorted position; FP4 maps it back to its bit pattern)

    x: any shape, float16 / bfloat16 / float32, n values ->
    packed: (ceil(n/2), 1) uint8 (first code in the high nibble),
    state.absmax: (ceil(n/B),) float32 (uint8 with ``double_quant``).
    Bound: |x - x̂| ≤ m_b · max_code_gap/2 per element.
    Ref: bitsandbytes.functional.quantize_4bit(A, blocksize, compress_statistics=double_quant,
    quant_type) -> backends/default/ops.py ``quantize_4bit``.

    Example (NF4, B = 64, one block [1.0, -0.5, 0, ...0]): m = 1, y = [1, -0.5, 0, ...];
    nearest codes 15, 2 (-0.525), 7, ... -> first byte 0xF2, then 0x77 ...

    >>> packed, state = quantize_4bit(np.float32([1.0, -0.5] + [0.0] * 62), blocksize=64)
    >>> [hex(b) for b in packed[:2, 0].tolist()], state.absmax.tolist(), packed.shape
    (['0xf2', '0x77'], [1.0], (32, 1))

    FP4, the block [4, -2, 1, 0]: m = 4, y = [1, -0.5, 0.25, 0] are exactly the patterns
    3, 13, 7, 0 of ``fp4_code`` (12, −6, 3, 0 over 12), two to a byte, the first one high:
    3·16 + 13 = 61, 7·16 + 0 = 112.

    >>> packed, state = quantize_4bit(np.float32([4, -2, 1, 0]), blocksize=64, quant_type="fp4")
    >>> packed[:, 0].tolist(), dequantize_4bit(packed, state).tolist()
    ([61, 112], [4.0, -2.0, 1.0, 0.0])
    """
    xp = _check_bnb_float(x)
    blocksize = _check_blocksize(blocksize, BLOCKSIZES)
    quant_type = _check_quant_type(quant_type)
    code = CODES[quant_type]
    midpoints, order = _sorted_bounds(code)

    x32 = xp.reshape(xp.astype(x, xp.float32, copy=False), (-1,))             # (n,) exact widening
    n = int(x32.shape[0])
    n_full = n // blocksize
    full = xp.reshape(x32[: n_full * blocksize], (n_full, blocksize))          # (n_full, B)
    absmax_full = xp.max(xp.abs(full), axis=1, keepdims=True)                  # (n_full, 1)
    inv = 1.0 / xp.clip(absmax_full, min=float(_TINY))                         # float32 reciprocal
    y = xp.reshape(full * inv, (-1,))                                          # (n_full*B,)
    absmax = xp.reshape(absmax_full, (-1,))                                    # (n_full,)
    if n % blocksize:                                                          # the tail block divides
        tail = x32[n_full * blocksize:]                                        # (n % B,)
        am = xp.clip(xp.max(xp.abs(tail), keepdims=True), min=float(_TINY))    # (1,) stored clamped
        y = xp.concat([y, tail / am])                                          # (n,)
        absmax = xp.concat([absmax, am])                                       # (n_blocks,)
    if n % 2:
        y = xp.concat([y, xp.zeros((1,), dtype=y.dtype, device=y.device)])     # (n + 1,)
    # bitsandbytes clamps y to [-1, 1] first; x·(1/m) can exceed 1 by an ulp, but every
    # midpoint lies inside (-1, 1), so the clamp never changes a code and we skip it.

    # nearest code = number of midpoints strictly below y (a tie goes to the lower code),
    # torch.bucketize(y, midpoints) in bitsandbytes; 15 comparisons, counted in uint8
    position = xp.zeros(y.shape, dtype=xp.uint8, device=y.device)             # (n_pad,)
    for bound in midpoints.tolist():
        position = position + xp.astype(y > bound, xp.uint8)
    q = to_numpy(position)                                                     # (n_pad,) uint8
    if quant_type != "nf4":                                                    # sorted position -> bit pattern
        q = order.astype(np.uint8)[q]

    q = q.reshape(-1, 2)                                                       # (n_pad/2, 2)
    packed = pack_nibbles(lo=q[:, 1], hi=q[:, 0])[:, None]                     # (n_pad/2, 1)
    state = QuantState(absmax=absmax, shape=tuple(x.shape), code=from_numpy(code, like=x),
                       blocksize=blocksize, quant_type=quant_type, dtype=x.dtype)
    if double_quant:
        state = _double_quantize(state)
    return from_numpy(packed, like=x), state


def _double_quantize(state: QuantState) -> QuantState:
    """QLoRA's double quantization: m -> (μ, 8-bit codes of m - μ, their absmax M).

        μ = mean(m),   (m', M) = quantize_blockwise(m - μ, dynamic map, B₂ = 256)
    """
    offset = absmax_mean(state.absmax)                                          # () float32
    if not bool(namespace(offset).all(namespace(offset).isfinite(offset))):
        # the float32 sum of the absmax values overflowed (bitsandbytes gets inf, then NaN codes)
        peak = float(namespace(state.absmax).max(state.absmax))
        raise ValueError(f"x: double quantization takes the float32 mean of the {state.absmax.shape[0]} block "
                         f"absmax values (up to {peak:.4g}); their sum overflows float32's range (±3.4028e38). "
                         f"Rescale x or quantize with double_quant=False")
    q_absmax, state2 = quantize_blockwise(state.absmax - offset, blocksize=NESTED_BLOCKSIZE)
    return dataclasses.replace(state, absmax=q_absmax, offset=offset, state2=state2)


def _decoded_absmax(state: QuantState, xp: Any) -> Any:
    """Float32 absmax per block; through both levels when nested: D₈(m') + μ."""
    if state.nested:
        return dequantize_blockwise(state.absmax, state.state2) + state.offset
    return xp.astype(state.absmax, xp.float32)


def _check_state(state: Any) -> QuantState:
    if not isinstance(state, QuantState):
        raise TypeError(f"state: expected a QuantState from quantize_4bit, got {type(state).__name__}")
    _check_quant_type(state.quant_type)
    _check_blocksize(state.blocksize, BLOCKSIZES, "state.blocksize")
    return state


def dequantize_4bit(packed: Any, state: QuantState) -> Any:
    """x̂_bi = c[q_bi] · m_b in float32, rounded once to ``state.dtype``, reshaped to ``state.shape``.

    packed: (ceil(n/2), 1) or (ceil(n/2),) uint8 -> state.shape, state.dtype.
    Ref: csrc/cpu_ops.cpp ``dequantizeBlockwise4bitCpu`` (high nibble first; each product
    rounded to float16 / bfloat16 to nearest even).
    """
    state = _check_state(state)
    xp = namespace(packed)
    if packed.dtype != xp.uint8:
        raise TypeError(f"packed: expected uint8 bytes, got dtype {packed.dtype}")
    n = 1
    for s in state.shape:
        n *= int(s)
    n_bytes = 1
    for s in packed.shape:
        n_bytes *= int(s)
    if n_bytes != (n + 1) // 2:
        raise ValueError(f"packed: {n_bytes} bytes do not hold the {n} codes of state.shape {state.shape} "
                         f"(expected {(n + 1) // 2})")
    absmax = _decoded_absmax(state, xp)                                        # (n_blocks,)
    n_blocks = -(-n // state.blocksize)
    if int(absmax.shape[0]) != n_blocks:
        raise ValueError(f"state: absmax has {absmax.shape[0]} blocks, expected {n_blocks} for "
                         f"{n} values in blocks of {state.blocksize}")

    # each byte holds the codes (byte >> 4, byte & 15), the high nibble first; decode_blocks
    # looks both up in one gather per byte (the rows laid end to end are the values in order)
    lo, hi = unpack_nibbles(np.arange(256, dtype=np.uint8))                    # (256,) each
    codes_of_byte = np.stack([hi, lo], axis=1)                                 # (256, 2)
    y = decode_blocks(xp.reshape(packed, (-1,)), CODES[state.quant_type], codes_of_byte, absmax,
                      state.blocksize, n, state.dtype)                         # (n,) state.dtype
    return xp.reshape(y, tuple(state.shape))


def quantize_nf4(x: Any, blocksize: int = 64, double_quant: bool = False) -> tuple[Any, QuantState]:
    """``quantize_4bit(x, blocksize, "nf4", double_quant)``."""
    return quantize_4bit(x, blocksize, "nf4", double_quant)


def dequantize_nf4(packed: Any, state: QuantState) -> Any:
    """``dequantize_4bit`` (the state carries the type)."""
    return dequantize_4bit(packed, state)


# --------------------------------------------------------------------------------------
# Memory accounting
# --------------------------------------------------------------------------------------


def _nbytes(a: Any) -> int:
    """Bytes of an array as held: elements times the dtype's width (array API iinfo / finfo)."""
    xp = namespace(a)
    width = (xp.iinfo if xp.isdtype(a.dtype, "integral") else xp.finfo)(a.dtype).bits
    return math.prod(int(n) for n in a.shape) * width // 8


def stored_bytes(packed: Any, state: QuantState) -> int:
    """Bytes one quantized tensor takes: its packed codes and its block statistics, at the
    dtypes they are held in (the 16- and 256-entry code books are shared, not counted):

        plain:   ceil(n/2) code bytes + 4 per block (float32 absmax m)
        double:  ceil(n/2) + 1 per block (uint8 codes of m - μ) + 4 per 256 blocks (float32 M) + 4 (μ)

    ``bits_per_parameter`` is the same count per weight, without the single μ per tensor.
    Example: 1024 weights in blocks of 64: 512 + 16·4 = 576 bytes (4.5 bits per weight);
    double-quantized: 512 + 16·1 + 1·4 + 4 = 536.

    >>> x = np.linspace(-1, 1, 1024, dtype=np.float32)
    >>> print([stored_bytes(*quantize_4bit(x, 64, double_quant=dq)) for dq in (False, True)])
    [576, 536]
    """
    parts = [packed, state.absmax]
    if state.nested:
        parts += [state.state2.absmax, state.offset]
    return sum(_nbytes(a) for a in parts)


def bits_per_parameter(blocksize: int = 64, double_quant: bool = False,
                       nested_blocksize: int = NESTED_BLOCKSIZE) -> float:
    """Storage per weight: 4 code bits + the amortised block statistics.

        plain:   4 + 32/B                      (a float32 absmax per B weights)
        double:  4 + 8/B + 32/(B · B₂)         (an 8-bit code per block, a float32 M per B₂ blocks)

    B = 64: 4.5 -> 4.127 bits (QLoRA: 0.5 -> 0.127 bits for the constants). The single
    float32 offset μ per tensor is negligible and left out, as in the paper.

    >>> bits_per_parameter(64), bits_per_parameter(64, double_quant=True)  # 4 + 8/64 + 32/(64·256)
    (4.5, 4.126953125)
    """
    if double_quant:
        return 4 + 8 / blocksize + 32 / (blocksize * nested_blocksize)
    return 4 + 32 / blocksize
