"""8-bit formats of bitsandbytes: blockwise dynamic quantization and LLM.int8().

Two unrelated 8-bit schemes live here.

**Blockwise 8-bit dynamic quantization** (Dettmers et al. 2022, "8-bit Optimizers via
Block-wise Quantization"; the building block of QLoRA's double quantization). The flat
tensor is cut into blocks of ``B`` values; each block is divided by its absolute maximum
and every normalised value is replaced by the index of a nearby entry of a 256-entry code
book ``c`` (by default the signed *dynamic* map):

    m_b = max_i |x_bi|                          (float32, stored per block: ``absmax``)
    q_bi = index of c nearest to x_bi / m_b     (uint8)
    x̂_bi = c[q_bi] · m_b                        (float32, then cast to the output dtype)

**LLM.int8()** (Dettmers et al. 2022, "LLM.int8(): 8-bit Matrix Multiplication for
Transformers at Scale"). Vector-wise absmax int8 for ``X W^T``: one scale per row of the
activations ``X`` and one per output row of the weight ``W`` (a column of ``W^T``), plus a
mixed-precision decomposition that keeps *outlier feature columns* (any ``|X_ij| ≥ τ``,
τ = 6.0 in the paper) out of the int8 product:

    s_i = max_j |X_ij| (outliers zeroed),   Q_X = round(127 X / s)          (int8, half-even)
    t_o = max_j |W_oj|,                      Q_W = round(127 W / t)
    Y   = (Q_X Q_W^T)_int32 ⊙ (s tᵀ) / 127²  +  X[:, O] Ŵ[:, O]ᵀ

Glossary: ``X`` (tokens, K) activations, ``W`` (N, K) weight as ``nn.Linear`` stores it,
``O`` the outlier columns, ``Ŵ = Q_W t / 127`` the dequantized weight.

Which bitsandbytes code we mirror (0.50.x, CPU, the path that runs here and in CI):

* ``quantize_blockwise`` runs the C++ kernel ``quantize_cpu_impl`` (csrc/cpu_ops.cpp). It
  does **not** search the code book per value: it snaps ``x/m`` onto a 65536-point grid
  over [-1, 1] and reads the nearest code of that grid point from a precomputed table
  (``build_quantize_lut``). A value within half a grid step (≈1.5e-5) of a midpoint
  between two codes may therefore get the farther code; codes closer together than the
  grid step (the dynamic map's smallest magnitudes, below ~1e-4) are reachable only
  from their grid points. An all-zero block is written as code index 0 (the most negative
  code), which decodes to -0.0. bitsandbytes' pure-torch "default" backend instead picks
  the exact nearest code with ``torch.bucketize`` (ties to the lower code) and writes the
  code of 0.0 for a zero block; we follow the CPU kernel and test that choice.
* ``int8_vectorwise_quant`` / ``int8_mm_dequant`` / ``int8_mixed_scaled_mm`` are the
  pure-torch kernels in bitsandbytes/backends/default/ops.py. The int32 product is exact,
  as bitsandbytes' ``torch._int_mm`` path on AVX-512 CPUs; its fallback elsewhere
  multiplies in float32 (``A.float() @ B.float().T``), exact only while partial sums stay
  below 2^24 (K up to ~1040 in the worst case, 127·127 per term).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from ._backend import from_numpy, namespace, to_numpy
from ._checks import check_float32_range, check_float_input, check_int
from ._rounding import round_half_even

__all__ = [
    "create_dynamic_map",
    "BlockwiseState",
    "quantize_blockwise",
    "dequantize_blockwise",
    "BLOCKWISE_BLOCKSIZES",
    "int8_vectorwise_quant",
    "int8_vectorwise_dequant",
    "int8_linear_matmul",
    "int8_mm_dequant",
    "int8_matmul",
    "LLM_INT8_THRESHOLD",
]

#: block sizes bitsandbytes documents for ``quantize_blockwise``; its CPU kernel (and refquant)
#: takes any positive block size (its own tests use 16384)
BLOCKWISE_BLOCKSIZES = (64, 128, 256, 512, 1024, 2048, 4096)

#: the paper's outlier threshold τ for LLM.int8()'s mixed-precision decomposition
LLM_INT8_THRESHOLD = 6.0

#: q_max of symmetric int8
Q_MAX = 127

# 1/127 and 1/127² as the float32 constants bitsandbytes multiplies by (not a division)
_INV_127 = np.float32(7.874015718698502e-3)
_INV_127_SQ = np.float32(6.200124e-05)

# --------------------------------------------------------------------------------------
# The dynamic code book
# --------------------------------------------------------------------------------------


def _linspace_f32(start: float, stop: float, num: int) -> np.ndarray:
    """``torch.linspace(start, stop, num, dtype=float32)`` bit for bit.

    torch steps ``d = (stop - start)/(num - 1)`` in float32 and fills the first half as
    ``start + d·i`` and the second half as ``stop - d·(num-1-i)``, each a fused
    multiply-add (one rounding), which float64 arithmetic reproduces exactly here.
    """
    start32, stop32 = np.float32(start), np.float32(stop)
    if num == 1:  # torch.linspace(start, stop, 1) == [start]
        return np.array([start32], dtype=np.float32)
    d = (stop32 - start32) / np.float32(num - 1)
    i = np.arange(num, dtype=np.float64)
    lower = np.float64(start32) + np.float64(d) * i                 # start + d·i
    upper = np.float64(stop32) - np.float64(d) * (num - 1 - i)      # stop - d·(num-1-i)
    return np.where(i < num // 2, lower, upper).astype(np.float32)


def create_dynamic_map(signed: bool = True, max_exponent_bits: int = 7, total_bits: int = 8) -> np.ndarray:
    """bitsandbytes' *dynamic* 8-bit code book: 256 sorted float32 values in [-1, 1].

    A dynamic-exponent number spends its bits on a decimal exponent first and a linear
    fraction with what is left. For decade ``e = 0..E-1`` (``E = max_exponent_bits``) the
    fractions are the midpoints of ``2**(e + k)`` equal steps of [0.1, 1]
    (``k = total_bits - 1 - E``; one bit fewer when signed), scaled by ``10**(e - E + 1)``:

        decade e:   10^(e-6) · mid(linspace(0.1, 1, 2^e + 1))     (signed, E = 7)

    so magnitudes run from 10^-6·0.55 up to 0.9930 with *more* codes in the larger decades
    (1, 2, 4, ... 64 per sign). Add 0 and 1.0 and sort: 2·127 + 2 = 256 values. The grid
    is denser near zero in relative terms than a linear map, which suits optimizer states
    and absmax statistics that span orders of magnitude.

    Ref: Dettmers 2016 ("8-Bit Approximations for Parallelism in Deep Learning");
    bitsandbytes/functional.py ``create_dynamic_map`` (float32 arithmetic reproduced).

    Example: the most negative code, the exact zero, the smallest positive code, 1.0:

    >>> [round(v, 8) for v in create_dynamic_map()[[0, 127, 128, 255]].tolist()]
    [-0.99296874, 0.0, 5.5e-07, 1.0]
    """
    total_bits = check_int(total_bits, "total_bits", 1, 8)
    max_exponent_bits = check_int(max_exponent_bits, "max_exponent_bits", 1)
    non_sign_bits = total_bits - 1
    values: list[np.ndarray] = []
    # codes left when no exponent bit is set; with more exponent bits than non-sign bits the
    # power is fractional and there are none (bitsandbytes accepts e.g. (True, 8, 8) this way)
    extra = 2 ** (non_sign_bits - max_exponent_bits) - 1
    for e in range(max_exponent_bits):
        # int() of bitsandbytes' float power: decades with 2^(negative) + 1 -> 1 edge get no codes
        n_fraction = int(2 ** (e + non_sign_bits - max_exponent_bits + (0 if signed else 1)) + 1)
        edges = _linspace_f32(0.1, 1.0, n_fraction)                     # (n_fraction,)
        means = (edges[:-1] + edges[1:]) / np.float32(2.0)              # (n_fraction - 1,)
        decade = np.float32(10.0 ** (-(max_exponent_bits - 1) + e))
        values.append(decade * means)
        if signed:
            values.append(-decade * means)
    if extra > 0:  # the "no indicator bit" codes, on the last decade (bitsandbytes reuses e)
        edges = _linspace_f32(0.1, 1.0, int(extra) + 1)
        means = (edges[:-1] + edges[1:]) / np.float32(2.0)
        decade = np.float32(10.0 ** (-(max_exponent_bits - 1) + e))
        values.append(decade * means)
        if signed:
            values.append(-decade * means)
    values.append(np.array([0.0, 1.0], dtype=np.float32))
    code = np.concatenate(values).astype(np.float32)
    if code.size != 2**total_bits:
        raise ValueError(f"total_bits, max_exponent_bits: the layout ({total_bits}, {max_exponent_bits}) gives "
                         f"{code.size} codes, not 2**total_bits = {2**total_bits}")
    pad = np.zeros(256 - code.size, dtype=np.float32)
    return np.sort(np.concatenate([code, pad]))


# --------------------------------------------------------------------------------------
# Blockwise 8-bit quantization
# --------------------------------------------------------------------------------------

#: points of the grid the CPU kernel snaps x/m onto (uint16 index)
LUT_SIZE = 65536


def _grid_lookup_table(code: np.ndarray) -> np.ndarray:
    """The CPU kernel's table: for each of 65536 grid points over [-1, 1], the code index.

    grid_i = -1 + (2 i)/65535 (float32), and the index is the number of midpoints
    ``(c_k + c_{k+1})/2`` strictly below grid_i — the nearest code, ties to the lower.
    Ref: csrc/cpu_ops.cpp ``build_quantize_lut``.
    """
    code = np.asarray(code, dtype=np.float32)
    midpoints = np.float32(0.5) * (code[:-1] + code[1:])                          # (255,)
    i = np.arange(LUT_SIZE, dtype=np.float32)
    grid = np.float32(-1.0) + (np.float32(2.0) * i) / np.float32(LUT_SIZE - 1)     # (65536,)
    return np.searchsorted(midpoints, grid, side="left").astype(np.uint8)         # (65536,)


def _grid_index(y: Any, xp: Any) -> Any:
    """Grid point of a normalised value y: trunc(((clamp(y, -1, 1) + 1)·0.5)·65535 + 0.5).

    float32 throughout, as in C: the sum y+1 and the product ·65535 round; halving and
    adding 0.5 are exact (the product is below 2^16, where float32's step is 2^-8), so
    (y+1)·32767.5 is the same single rounding and a fused multiply-add would give the same
    index. Ref: csrc/cpu_ops.cpp ``norm_to_lut_index``.

    NaN: a block whose absmax is subnormal has 1/m = inf (float32), and a zero in it gives
    0·inf = NaN. std::clamp passes NaN through and the C cast to uint16 of NaN gives index 0
    on x86-64 (cvttss2si returns 0x80000000, whose low 16 bits are 0) — grid point 0, i.e.
    y = -1; ±inf clamp to ±1. bitsandbytes' bytes for such blocks (e.g. QLoRA's nested absmax
    of subnormal weights) are reproduced so.
    """
    y = xp.where(xp.isnan(y), xp.full(y.shape, -1.0, dtype=y.dtype, device=y.device), y)
    y = xp.clip(y, -1.0, 1.0)
    scaled = (y + 1.0) * (0.5 * (LUT_SIZE - 1)) + 0.5                          # float32
    return xp.astype(scaled, xp.int32)                                        # C cast truncates


@dataclasses.dataclass
class BlockwiseState:
    """What ``dequantize_blockwise`` needs: per-block ``absmax`` (float32), the 256-entry
    ``code``, ``blocksize``, the original ``dtype`` and ``shape``; for nested (double)
    quantization of the absmax itself, ``offset`` and the inner ``state2``."""

    absmax: Any
    code: Any
    blocksize: int
    dtype: Any
    shape: tuple
    offset: Any = None
    state2: "BlockwiseState | None" = None

    @property
    def nested(self) -> bool:
        return self.state2 is not None


def _check_blocksize(blocksize: Any, allowed: tuple | None, name: str = "blocksize") -> int:
    """One of ``allowed`` (4-bit: bitsandbytes' list) or, with allowed=None, any positive integer."""
    if allowed is None:
        return check_int(blocksize, name, 1)
    if isinstance(blocksize, bool) or not isinstance(blocksize, (int, np.integer)) or int(blocksize) not in allowed:
        raise ValueError(f"{name}: expected one of {allowed}, got {blocksize!r}")
    return int(blocksize)


def _check_bnb_float(x: Any, name: str = "x") -> Any:
    """float16 / bfloat16 / float32 only (what bitsandbytes accepts), finite, non-empty."""
    check_float_input(x, name)
    xp = namespace(x)
    allowed = [getattr(xp, name) for name in ("float16", "float32") if hasattr(xp, name)]
    if x.dtype not in allowed and "bfloat16" not in str(x.dtype):
        raise TypeError(f"{name}: expected float16, bfloat16 or float32 like bitsandbytes, got dtype {x.dtype}")
    return xp


def _blocks(x_flat: Any, blocksize: int, xp: Any) -> tuple[Any, int]:
    """(n,) -> (n_blocks, B) zero-padded, and n. Zeros never raise a block's absmax."""
    n = int(x_flat.shape[0])
    n_blocks = -(-n // blocksize)
    pad = n_blocks * blocksize - n
    if pad:
        x_flat = xp.concat([x_flat, xp.zeros((pad,), dtype=x_flat.dtype, device=x_flat.device)])
    return xp.reshape(x_flat, (n_blocks, blocksize)), n                      # (n_blocks, B)


def quantize_blockwise(x: Any, code: Any = None, blocksize: int = 4096) -> tuple[Any, BlockwiseState]:
    """Blockwise 8-bit quantization with a 256-entry code book (dynamic map by default).

        m_b = max_i |x_bi|,   q_bi = T[g(x_bi · (1/m_b))],   g(y) = trunc((y+1)/2·65535 + 0.5)

    where ``T`` is the grid-to-code table of ``_grid_lookup_table`` (nearest code of each
    grid point). Blocks run over the flattened tensor; the last block may be shorter.
    A block whose absmax is 0 is written as code 0.

    x: any shape, float16/bfloat16/float32 -> q: same shape uint8,
    state.absmax: (ceil(n/B),) float32.   Bound: |x - x̂| ≤ m_b (gap/2 + 1/65535) per block.
    Ref: bitsandbytes.functional.quantize_blockwise -> csrc/cpu_ops.cpp quantize_cpu_impl.

    Example: ``quantize_blockwise(np.array([0.5, -1.0], np.float32), blocksize=64)`` gives
    absmax [1.0] and codes [c⁻¹(0.5), 0]: -1.0 snaps to grid 0, whose nearest code is
    index 0 (-0.99297, the most negative code); 0.5 to code 219 (0.50078).

    >>> q, state = quantize_blockwise(np.float32([0.5, -1.0]), blocksize=64)
    >>> q.tolist(), state.absmax.tolist(), [round(v, 5) for v in dequantize_blockwise(q, state).tolist()]
    ([219, 0], [1.0], [0.50078, -0.99297])
    """
    xp = _check_bnb_float(x)
    blocksize = _check_blocksize(blocksize, None)  # any positive size, as bitsandbytes' CPU kernel
    code_np = create_dynamic_map() if code is None else np.asarray(to_numpy(code), dtype=np.float32)
    if code_np.shape != (256,) or np.any(np.diff(code_np) < 0):
        raise ValueError(f"code: expected 256 sorted float32 values, got shape {code_np.shape}")
    table = from_numpy(_grid_lookup_table(code_np), like=x)                   # (65536,) uint8

    x32 = xp.reshape(xp.astype(x, xp.float32, copy=False), (-1,))             # (n,) exact widening
    blocks, n = _blocks(x32, blocksize, xp)                                    # (n_blocks, B)
    absmax = xp.max(xp.abs(blocks), axis=1, keepdims=True)                     # (n_blocks, 1)
    with np.errstate(over="ignore", invalid="ignore"):  # subnormal absmax: 1/m = inf, 0·inf = NaN (as in C)
        inv = 1.0 / xp.where(absmax == 0, xp.ones_like(absmax), absmax)        # float32 reciprocal
        grid = _grid_index(blocks * inv, xp)                                   # (n_blocks, B) int32
    idx = xp.take(table, xp.reshape(grid, (-1,)))                              # (n_blocks*B,) uint8
    idx = xp.reshape(idx, blocks.shape)                                        # (n_blocks, B)
    idx = xp.where(absmax == 0, xp.zeros_like(idx), idx)                       # zero block -> code 0
    q = xp.reshape(idx, (-1,))[:n]                                             # (n,)
    state = BlockwiseState(absmax=xp.reshape(absmax, (-1,)), code=from_numpy(code_np, like=x),
                           blocksize=blocksize, dtype=x.dtype, shape=tuple(x.shape))
    return xp.reshape(q, tuple(x.shape)), state


def _cast_out(y32: Any, dtype: Any, xp: Any) -> Any:
    """float32 -> output dtype, round to nearest even (as the C kernels' fp16/bf16 stores)."""
    return y32 if dtype == xp.float32 else xp.astype(y32, dtype)


#: 8-bit: each byte is one code index
_BYTE_IS_CODE = np.arange(256, dtype=np.uint8).reshape(256, 1)

#: values decoded per step on the NumPy path: the float32 buffer (64 KiB) stays in the core's cache
DECODE_CHUNK = 16384


def decode_blocks(index: Any, code: np.ndarray, codes_of_byte: np.ndarray, absmax: Any, blocksize: int, n: int,
                  dtype: Any) -> Any:
    """x̂ = c[codes of each byte] · m_b in float32, rounded once to ``dtype``: n values in blocks of B.

        values = c[K_0] ‖ c[K_1] ‖ ...     K_j = codes_of_byte[index_j]: the k codes byte j holds
        x̂_bi = values_bi · m_b              (float32 product; then one rounding to dtype)

    index: (n_idx,) uint8 bytes; code: (K,) float32 code book; codes_of_byte: (256, k) code
    indices (8-bit: k = 1, the byte itself; NF4/FP4: k = 2, the high nibble then the low);
    absmax: (ceil(n/B),) float32; n <= k · n_idx -> (n,) ``dtype`` in index's namespace.
    NumPy, whole blocks, ``DECODE_CHUNK`` values per step into the preallocated output, either
    * per value: one gather of each byte's k values from a (256, k) table (read as one 4k-byte
      word) into a buffer, then one multiply by the block's m that writes the rounded product; or
    * per block, for float16 output (NumPy's float32 -> float16 cast is the slowest step) and for
      one code per byte with B >= 4K: each block's own table fl(c · m_b) of K values first (K/B
      of the products and roundings), then a gather of the bit patterns at K·b + code.
    The tail block goes through the array-API lines (``_decode_array_api``), which every other
    namespace runs for all blocks. Ref: csrc/cpu_ops.cpp ``dequantizeBlockwise4bitCpu`` /
    ``dequantizeBlockwise8bitCpu`` (the same products, each rounded once).
    """
    k = codes_of_byte.shape[1]
    table = np.ascontiguousarray(np.asarray(code, dtype=np.float32)[codes_of_byte])   # (256, k)
    out_dtype = _numpy_float(dtype)
    if isinstance(index, np.ndarray) and out_dtype is not None and blocksize % k == 0:
        absmax = np.asarray(absmax, dtype=np.float32)
        out = np.empty(n, out_dtype)
        n_blocks = n // blocksize
        if out_dtype == np.float16 or (k == 1 and 4 * code.shape[0] <= blocksize):
            _decode_by_block_tables(index, code, codes_of_byte, absmax, blocksize, n_blocks, out)
        else:
            _decode_by_value_pairs(index, table, absmax, blocksize, n_blocks, out)
        n_done = n_blocks * blocksize
        if n_done < n:                                                    # the tail block
            out[n_done:] = _decode_array_api(index[n_done // k:], table, absmax[n_blocks:],
                                             blocksize, n - n_done, out_dtype, np)
        return out
    return _decode_array_api(index, table, absmax, blocksize, n, dtype, namespace(index))


def _decode_by_value_pairs(index: np.ndarray, table: np.ndarray, absmax: np.ndarray, blocksize: int,
                           n_blocks: int, out: np.ndarray) -> None:
    """``decode_blocks``, per value, of the first n_blocks whole blocks into ``out``."""
    k = table.shape[1]
    words = table.view({1: np.uint32, 2: np.uint64}[k]).reshape(256)             # (256,) k floats each
    per_step = max(1, DECODE_CHUNK // blocksize)                               # blocks per step
    buf = np.empty(per_step * blocksize, np.float32)                           # (per_step·B,)
    buf_words = buf.view(words.dtype)                                          # (per_step·B/k,)
    for b0 in range(0, n_blocks, per_step):
        nb = min(per_step, n_blocks - b0)
        v0, v = b0 * blocksize, nb * blocksize                                 # first value, values
        # mode="clip": a uint8 index is always in range, and "raise" would gather via a copy
        np.take(words, index[v0 // k:(v0 + v) // k], out=buf_words[: v // k], mode="clip")
        np.multiply(buf[:v].reshape(nb, blocksize), absmax[b0:b0 + nb, None],    # (nb, B) float32 product,
                    out=out[v0:v0 + v].reshape(nb, blocksize), dtype=np.float32, casting="unsafe")  # rounded once


def _decode_by_block_tables(index: np.ndarray, code: np.ndarray, codes_of_byte: np.ndarray, absmax: np.ndarray,
                            blocksize: int, n_blocks: int, out: np.ndarray) -> None:
    """``decode_blocks``, per block, of the first n_blocks whole blocks into ``out``:

        T_b[c] = fl(c_c · m_b)     (K values per block: the same float32 product, rounded once)
        x̂_bi  = T_b[q_bi]          (a gather of bit patterns at K·b + q_bi, one step of blocks at a time)
    """
    K, k = code.shape[0], codes_of_byte.shape[1]
    T = (np.asarray(code, np.float32)[None, :] * absmax[:n_blocks, None]).astype(out.dtype)  # (n_blocks, K)
    words = T.view({2: np.uint16, 4: np.uint32}[out.dtype.itemsize])         # bit patterns: a plain gather
    out_words = out.view(words.dtype)
    per_step = max(1, DECODE_CHUNK // blocksize)                               # blocks per step
    row_start = (np.arange(per_step, dtype=np.intp) * K)[:, None]               # (per_step, 1)
    flat = np.empty((per_step, blocksize), np.intp)                            # (per_step, B)
    # a byte's k codes as one k-byte word, gathered into a buffer of codes in value order
    byte_codes = np.ascontiguousarray(codes_of_byte, dtype=np.uint8).view({1: np.uint8, 2: np.uint16}[k])
    byte_codes = byte_codes.reshape(256)                                       # (256,) k codes each
    codes_buf = np.empty(per_step * blocksize, np.uint8)                       # (per_step·B,)
    codes_words = codes_buf.view(byte_codes.dtype)                             # (per_step·B/k,)
    for b0 in range(0, n_blocks, per_step):
        nb = min(per_step, n_blocks - b0)
        v0, v = b0 * blocksize, nb * blocksize                                 # first value, values
        codes = index[v0:v0 + v]
        if k > 1:
            np.take(byte_codes, index[v0 // k:(v0 + v) // k], out=codes_words[: v // k], mode="clip")
            codes = codes_buf[:v]
        np.add(codes.reshape(nb, blocksize), row_start[:nb], out=flat[:nb])   # K·b + q
        np.take(words[b0:b0 + nb].reshape(-1), flat[:nb], out=out_words[v0:v0 + v].reshape(nb, blocksize),
                mode="clip")


def _decode_array_api(index: Any, table: np.ndarray, absmax: Any, blocksize: int, n: int, dtype: Any,
                      xp: Any) -> Any:
    """``decode_blocks`` with array-API operations (any namespace): gather, pad, scale, cast."""
    table_x = from_numpy(table, like=index)                                   # (256, k) float32
    values = xp.take(table_x, xp.astype(xp.reshape(index, (-1,)), xp.int32), axis=0)  # (n_idx, k)
    values = xp.reshape(values, (-1,))[:n]                                     # (n,)
    blocks, _ = _blocks(values, blocksize, xp)                                 # (n_blocks, B)
    y = xp.reshape(blocks * xp.reshape(xp.astype(absmax, xp.float32), (-1, 1)), (-1,))[:n]  # (n,) float32
    return _cast_out(y, dtype, xp)


def _numpy_float(dtype: Any) -> np.dtype | None:
    """NumPy's float16 / float32 for ``dtype`` if it is one of them, else None (torch's bfloat16...)."""
    if isinstance(dtype, (np.dtype, type)):
        try:
            dt = np.dtype(dtype)
        except TypeError:
            return None
        return dt if dt in (np.float16, np.float32) else None
    return None


def dequantize_blockwise(q: Any, state: BlockwiseState) -> Any:
    """x̂_bi = c[q_bi] · m_b in float32, cast to ``state.dtype``.

    With a nested state the absmax is itself first decoded: m = D(state.absmax) + offset.
    q: (...) uint8 -> (...) state.dtype.   Ref: csrc/cpu_ops.cpp ``dequantizeBlockwise8bitCpu``.
    """
    if not isinstance(state, BlockwiseState):
        raise TypeError(f"state: expected a BlockwiseState from quantize_blockwise, got {type(state).__name__}")
    xp = namespace(q)
    if q.dtype != xp.uint8:
        raise TypeError(f"q: expected uint8 codes, got dtype {q.dtype}")
    absmax = state.absmax
    if state.nested:
        absmax = dequantize_blockwise(absmax, state.state2) + state.offset
    absmax = xp.astype(absmax, xp.float32)
    blocksize = _check_blocksize(state.blocksize, None, "state.blocksize")
    n = 1
    for s in q.shape:
        n *= int(s)
    n_blocks = -(-n // blocksize)
    if int(absmax.shape[0]) != n_blocks:
        raise ValueError(f"state: absmax has {absmax.shape[0]} blocks, but {n} codes in blocks of "
                         f"{state.blocksize} need {n_blocks}")
    code = np.asarray(to_numpy(state.code), dtype=np.float32).reshape(-1)      # (256,)
    if code.shape[0] != 256:
        raise ValueError(f"state.code: expected the 256 values of an 8-bit code book, got {code.shape[0]}")
    y = decode_blocks(xp.reshape(q, (-1,)), code, _BYTE_IS_CODE, absmax, blocksize, n, state.dtype)  # (n,)
    return xp.reshape(y, tuple(q.shape))


# --------------------------------------------------------------------------------------
# LLM.int8()
# --------------------------------------------------------------------------------------


def int8_vectorwise_quant(A: Any, threshold: float = 0.0) -> tuple[Any, Any, Any]:
    """Row-wise absmax int8 of a 2-D matrix, with outlier columns held out.

        O = {j : ∃i |A_ij| ≥ τ}   (only when τ > 0)
        s_i = max_{j} |A_ij|  over non-outlier entries,   Q_ij = round(A_ij · ((1/s_i)·127))

    rounded half to even, with the factor 127/s_i formed as torch forms ``127.0 / s``;
    outlier *entries* are zeroed before the statistics, and whole outlier *columns* are
    zeroed in Q when A has more than one row. A zero row (s_i = 0)
    gives Q = 0 — bitsandbytes' 0·inf = NaN there is cast to 0 by torch.

    A: (rows, K) float -> Q: (rows, K) int8, s: (rows,) float32, O: (n_outliers,) int64 or None
    Ref: Dettmers et al. 2022, §3.2 and §3.3; bitsandbytes/backends/default/ops.py
    ``int8_vectorwise_quant`` (used for both X and W).

    Example: A = [[1, -2, 0.5]] -> s = [2], Q = [[round(63.5), -127, round(31.75)]] = [[64, -127, 32]].

    >>> Q, s, O = int8_vectorwise_quant(np.float32([[1, -2, 0.5]]))
    >>> Q.tolist(), s.tolist(), O
    ([[64, -127, 32]], [2.0], None)

    With τ = 6 the 8.0 makes column 1 an outlier column: the entry 8.0 is left out of row 1's
    absmax (s = 1, so 0.5 -> round(63.5) = 64 and 1 -> 127; row 0 keeps s = 2), and column 1
    is zeroed in both rows of Q.

    >>> Q, s, O = int8_vectorwise_quant(np.float32([[1, -2, 0.5], [0.5, 8, 1]]), threshold=6.0)
    >>> Q.tolist(), s.tolist(), O.tolist()
    ([[64, 0, 32], [64, 0, 127]], [2.0, 1.0], [1])
    """
    check_float_input(A, "A")
    check_float32_range(A, "A", "LLM.int8()")  # a float64 1e300 would become inf, then 0·inf = NaN
    xp = namespace(A)
    if A.ndim != 2:
        raise ValueError(f"A: expected a 2-D matrix (rows, K), got shape {tuple(A.shape)}")
    if not threshold >= 0.0:
        raise ValueError(f"threshold: expected a non-negative float, got {threshold!r}")
    A32 = xp.astype(A, xp.float32)                                             # exact widening
    outlier_cols = None
    if threshold > 0.0:
        is_outlier = xp.abs(A32) >= threshold                                   # (rows, K)
        col_has = xp.any(is_outlier, axis=0)                                    # (K,)
        outlier_cols = xp.nonzero(col_has)[0]                                  # (n_outliers,)
        A32 = xp.where(is_outlier, xp.zeros_like(A32), A32)
    s = xp.max(xp.abs(A32), axis=1)                                             # (rows,)
    # 127/s as torch evaluates ``127.0 / s``: the reciprocal first, then the product (two
    # roundings; a true division differs in the last bit for ~1 in 4 values of s)
    factor = (1.0 / xp.where(s == 0, xp.ones_like(s), s)) * 127.0                # float32
    Q = round_half_even(A32 * xp.reshape(factor, (-1, 1)))                      # (rows, K)
    Q = xp.where(xp.reshape(s, (-1, 1)) == 0, xp.zeros_like(Q), Q)
    if outlier_cols is not None and int(A.shape[0]) > 1:
        Q = xp.where(xp.reshape(col_has, (1, -1)), xp.zeros_like(Q), Q)
    return xp.astype(Q, xp.int8), s, outlier_cols


def int8_vectorwise_dequant(Q: Any, s: Any) -> Any:
    """Â_ij = Q_ij · s_i · (1/127), float32 (multiplied in that order, as bitsandbytes).

    >>> int8_vectorwise_dequant(np.int8([[127, -127, 0]]), np.float32([2.0])).tolist()
    [[2.0, -2.0, 0.0]]
    """
    xp = namespace(Q)
    return xp.astype(Q, xp.float32) * xp.reshape(s, (-1, 1)) * float(_INV_127)


def int8_linear_matmul(QA: Any, QB: Any) -> Any:
    """C = QA · QBᵀ with exact int32 accumulation. QA: (M, K) int8, QB: (N, K) int8 -> (M, N) int32.

    >>> int8_linear_matmul(np.int8([[1, 2], [3, 4]]), np.int8([[1, 0], [0, -1]])).tolist()
    [[1, -2], [3, -4]]
    """
    xp = namespace(QA, QB)
    for name, m in (("QA", QA), ("QB", QB)):
        if m.dtype != xp.int8 or m.ndim != 2:
            raise TypeError(f"{name}: expected a 2-D int8 matrix, got dtype {m.dtype} and shape {tuple(m.shape)}")
    if QA.shape[1] != QB.shape[1]:
        raise ValueError(f"QB: inner dimension {QB.shape[1]} does not match QA's {QA.shape[1]}")
    return xp.matmul(xp.astype(QA, xp.int32), xp.matrix_transpose(xp.astype(QB, xp.int32)))


def int8_mm_dequant(C: Any, s_A: Any, s_B: Any) -> Any:
    """Y_ij = C_ij · (s_A,i · s_B,j) · (1/127²) in float32, the order bitsandbytes uses.

    C: (M, N) int32 -> (M, N) float32. (The int32 -> float32 conversion rounds once
    |C| > 2^24; bitsandbytes does the same.)
    """
    xp = namespace(C)
    outer = xp.reshape(s_A, (-1, 1)) * xp.reshape(s_B, (1, -1))                 # (M, N) float32
    return xp.astype(C, xp.float32) * outer * float(_INV_127_SQ)


def int8_matmul(X: Any, W: Any, threshold: float = LLM_INT8_THRESHOLD) -> tuple[Any, Any]:
    """LLM.int8() ``X Wᵀ``: int8 product of the regular part plus the outlier columns in float.

        Y = dequant(Q_X Q_Wᵀ) + X[:, O] · Ŵ[:, O]ᵀ,   Ŵ = int8_vectorwise_dequant(Q_W, t)

    As in bitsandbytes' ``int8_mixed_scaled_mm``, the outlier part multiplies the exact
    activations with the *dequantized* int8 weight columns; here that float part is done in
    float32, one outlier column at a time (bitsandbytes rounds Ŵ to float16 and adds the
    part with a float16 ``addmm``, so its result differs by float16 roundings).

    X: (M, K), W: (N, K) float -> Y: (M, N) float32, O: outlier column indices (or None).
    Error: |Y - X Wᵀ| ≤ Σ_j |X_ij|·t_o/254 + |W_oj|·s_i/254 + s_i t_o/254² over the int8 part.
    """
    xp = namespace(X, W)
    if X.ndim != 2 or W.ndim != 2 or X.shape[1] != W.shape[1]:
        raise ValueError(f"X, W: expected (M, K) and (N, K) matrices, got {tuple(X.shape)} and {tuple(W.shape)}")
    QX, s, O = int8_vectorwise_quant(X, threshold)
    QW, t, _ = int8_vectorwise_quant(W, 0.0)
    Y = int8_mm_dequant(int8_linear_matmul(QX, QW), s, t)                       # (M, N)
    if O is not None and int(O.shape[0]) > 0:
        X32 = xp.astype(X, xp.float32)
        W_hat = int8_vectorwise_dequant(QW, t)                                   # (N, K)
        # one rank-1 update per outlier column, in index order: the few outlier features
        # are added the same way on every backend (a BLAS matmul would pick its own order)
        for j in [int(v) for v in to_numpy(O)]:
            Y = Y + X32[:, j:j + 1] * xp.reshape(W_hat[:, j], (1, -1))          # (M, N)
    return Y, O
