"""Microscaling: OCP MX v1.0 (MXFP8, MXFP6, MXFP4 with an E8M0 scale per 32) and NVFP4 (E2M1, E4M3 per 16).

MX: a block of B = 32 values shares one power-of-two scale 2^X, stored as an E8M0 byte X + 127:

    amax = max_i |x_i|                          over the block
    X    = scale_exponent(amax, mode) ∈ [-127, 127]
    q_i  = round_fmt(x_i / 2^X)  (ties to even, saturating at ±max),    x̂_i = 2^X · q_i

The scale-rounding modes (``emax`` is the element format's largest binade, E2M1: 2, E4M3: 8):

| mode  | X                                                  | who uses it                             |
|-------|----------------------------------------------------|-----------------------------------------|
| floor | floor(log2 amax) - emax                            | the OCP spec; torchao FLOOR (default)   |
| ceil  | ceil(log2 amax) - emax                             | torchao CEIL: never clips, wastes range |
| even  | floor(log2 ⟨amax rounded to m mantissa bits⟩) - emax | torchao EVEN                          |
| rceil | ceil(log2(amax / max)), exactly                    | NVIDIA's cvt.rp.ue8m0; torchao RCEIL    |
| ggml  | floorf(log2f(amax)) - emax, float32 log2, 0 -> -127 | ggml's MXFP4 (``quantize_row_mxfp4_ref``)|
|       | (and below 2^-125 the byte wraps modulo 256)       |                                         |

torchao's eager (CPU) RCEIL evaluates ceil(log2(amax / max)) with float32 ``log2``, which returns the
integer k for amax / max = 2^k (1 + 2^-23) once k ≥ 4: its X is then one lower than the exact round-up
and the block's largest value saturates. refquant's rceil is the exact one (tested both ways).
floor can clip: amax·2^-X < 2^(emax+1) may exceed max (E2M1: up to 8 > 6), and those values saturate.
ggml's MXFP4 is the floor mode (e = floor(log2 amax) - 2 + 127), evaluated with float32 ``log2f``: an
amax within an ulp below a power of two rounds up to it. Its elements are chosen by least error with
ties to the lower code, not to the even mantissa (not modelled here: another issue builds its bytes).

NVFP4: blocks of 16 E2M1 values, each with an E4M3 scale, and a float32 scale for the whole tensor:

    t   = amax(|x|) / (448 · 6)   (or 1: "single level", ggml's NVFP4 and torchao without a tensor scale)
    d_b = round_e4m3(clamp(amax_b / 6 / t, 2^-6, 448))        the block scale (E4M3 min normal 2^-6)
    q_i = round_e2m1(clamp(x_i · ((1/t) / d_b), -6, 6)),       x̂_i = q_i · (t · d_b)

x: (..., n) float32 -> q: (..., n/B, B) float32 grid values, scales: (..., n/B, 1)

Refs: OCP Microscaling Formats (MX) Specification v1.0 §5-6; NVIDIA, "NVFP4" (Blackwell, 2025);
torchao ``prototype/mx_formats`` (mx_tensor.to_mx, nvfp4_tensor.nvfp4_quantize); ggml-quants.c.

Example: the block [0.25, 1.5, 7, 0] has amax 7. floor: X = floor(log2 7) - 2 = 0, so 7 saturates to 6
and 0.25 (a tie between 0 and 0.5) goes to the even code, 0. ceil: X = 3 - 2 = 1, the block is halved
to [0.125, 0.75, 3.5, 0]; the ties 0.75 and 3.5 go to the even codes 1 and 4, times 2: [0, 2, 8, 0].

>>> [mx_dequantize(mx_quantize(np.float32([0.25, 1.5, 7, 0]), "fp4_e2m1", mode, block=4)).tolist()
...  for mode in ("floor", "ceil")]
[[0.0, 1.5, 6.0, 0.0], [0.0, 2.0, 8.0, 0.0]]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._backend import namespace, to_numpy
from ._checks import check_float_input, check_float32_range, check_int
from ._rounding import round_half_away
from .fp8 import E2M1, E2M3, E3M2, E4M3, E5M2, FloatFormat, _floor_log2, encode, round_to_format

__all__ = ["ELEMENTS", "SCALE_MODES", "MX_BLOCK", "E8M0_BIAS", "MXQuantized", "scale_exponent", "mx_quantize",
           "mx_dequantize", "e8m0_bytes", "mx_stored_bytes", "NVFP4_BLOCK", "NVFP4Quantized",
           "nvfp4_tensor_scale", "NVFP4_SCALE_MODES", "nvfp4_block_scale", "nvfp4_quantize", "nvfp4_dequantize",
           "nvfp4_stored_bytes", "nvfp4_scale_bytes"]

#: the MX element formats (OCP MX v1.0 Table 1), by torchao's short names
ELEMENTS = {"fp8_e4m3": E4M3, "fp8_e5m2": E5M2, "fp6_e3m2": E3M2, "fp6_e2m3": E2M3, "fp4_e2m1": E2M1}
SCALE_MODES = ("floor", "ceil", "even", "rceil", "ggml")
MX_BLOCK = 32          # OCP MX v1.0: k = 32 elements per shared scale
E8M0_BIAS = 127        # E8M0 byte = X + 127; 255 is NaN, so X ∈ [-127, 127]
F32_MIN_NORMAL = 2.0**-126  # torchao divides by max(2^X, this): 2^-127 is a float32 subnormal
NVFP4_BLOCK = 16       # NVFP4: one E4M3 scale per 16 E2M1 values
E4M3_TINY = 2.0**-6    # smallest normal E4M3 (torch.finfo(float8_e4m3fn).tiny), torchao's floor on d_b


class MXQuantized(NamedTuple):
    q: Any              # (..., n/B, B) float32 values on the element grid
    X: Any              # (..., n/B, 1) float32 unbiased scale exponents in [-127, 127]
    element: FloatFormat
    block: int
    mode: str


def _element(element: Any) -> FloatFormat:
    if isinstance(element, FloatFormat) and element in ELEMENTS.values():
        return element
    if isinstance(element, str) and element in ELEMENTS:
        return ELEMENTS[element]
    raise ValueError(f"element: expected one of {sorted(ELEMENTS)}, got {element!r}")


def _check_blocks(x: Any, block: Any, name: str = "block") -> int:
    block = check_int(block, name, 1)
    if x.ndim == 0 or x.shape[-1] % block:
        raise ValueError(f"x: last dimension {x.shape[-1] if x.ndim else None} is not a multiple of the "
                         f"{name} size {block}")
    return block


def scale_exponent(amax: Any, element: Any, mode: str = "floor") -> Any:  # (...) -> (...) float32
    """The unbiased E8M0 exponent X of a block whose largest magnitude is ``amax`` (see the table above).

    >>> [scale_exponent(np.float32([5.0]), "fp4_e2m1", m).tolist() for m in SCALE_MODES]
    [[0.0], [1.0], [0.0], [0.0], [0.0]]
    """
    fmt = _element(element)
    if mode not in SCALE_MODES:
        raise ValueError(f"mode: expected one of {SCALE_MODES}, got {mode!r}")
    xp = namespace(amax)
    amax = xp.astype(amax, xp.float32)
    positive = amax > 0
    floor_e = _floor_log2(xp, amax)  # exact floor(log2 amax)
    if mode == "floor":
        X = floor_e - fmt.emax
    elif mode == "ceil":
        # torchao adds one when amax's float32 mantissa is non-zero: ceil(log2 amax) for normal amax
        X = floor_e + xp.astype(amax > 2.0**floor_e, xp.float32) - fmt.emax
    elif mode == "even":
        # torchao adds half an element-ulp to amax's float32 bits and truncates to the exponent: the
        # binade moves up when amax's significand rounds (half up) to 2 on an m-bit mantissa
        significand = amax / 2.0**floor_e  # [1, 2), exact
        carry = significand >= 2.0 - 2.0 ** -(fmt.man_bits + 1)
        X = floor_e + xp.astype(carry, xp.float32) - fmt.emax
    elif mode == "rceil":
        descale = amax / fmt.max  # float32 division first, as torchao and the cvt.rp input
        e = _floor_log2(xp, descale)
        X = e + xp.astype(descale > 2.0**e, xp.float32)  # round up to a power of two, exactly
    else:  # ggml: floorf(log2f(amax)) as the C code evaluates it, no correction; amax = 0 -> byte 0
        safe = xp.where(positive, amax, xp.ones_like(amax))
        X = xp.floor(xp.log2(safe)) - fmt.emax
        # ggml casts the biased exponent, a float, to uint8_t without a clamp: below amax = 2^-125 it is
        # negative and wraps (on x86) to 256 + e, a huge scale whose elements are all 0
        X = xp.where(X < -E8M0_BIAS, X + 256, X)
    X = xp.where(positive, X, xp.full_like(X, -E8M0_BIAS))  # an all-zero block: the smallest scale
    # ggml's wrap reaches byte 255 (X = 128) where floorf(log2f(amax)) = -126: kept, beyond E8M0's range
    return xp.clip(X, -E8M0_BIAS, E8M0_BIAS + 1 if mode == "ggml" else E8M0_BIAS)


def mx_quantize(x: Any, element: Any = "fp4_e2m1", mode: str = "floor", block: int = MX_BLOCK) -> MXQuantized:
    """MX quantization of the last axis in blocks of ``block`` (32 in the spec): E8M0 scale + elements.

    x: (..., n) float -> q: (..., n/B, B) float32, X: (..., n/B, 1).

    Example: amax 3 gives X = floor(log2 3) - 8 = -7; x · 128 = [12.8, -25.6, 51.2, 384] rounds on E4M3's
    spacings 1, 2, 4 and 32 in the binades [8, 16), [16, 32), [32, 64) and [256, 512).

    >>> r = mx_quantize(np.float32([0.1, -0.2, 0.4, 3.0]), "fp8_e4m3", block=4)
    >>> r.X.ravel().tolist(), r.q.ravel().tolist()
    ([-7.0], [13.0, -26.0, 52.0, 384.0])
    """
    fmt = _element(element)
    if mode not in SCALE_MODES:
        raise ValueError(f"mode: expected one of {SCALE_MODES}, got {mode!r}")
    check_float_input(x, "x")
    check_float32_range(x, "x", "MX quantization")
    block = _check_blocks(x, block)
    xp = namespace(x)
    x = xp.astype(x, xp.float32)
    xb = xp.reshape(x, (*x.shape[:-1], x.shape[-1] // block, block))  # (..., n/B, B)
    amax = xp.max(xp.abs(xb), axis=-1, keepdims=True)  # (..., n/B, 1)
    X = scale_exponent(amax, fmt, mode)  # (..., n/B, 1)
    if mode == "rceil":
        # torchao multiplies by 2^(127 - byte) and by 1.0 where the byte is 0 (X = -127)
        reciprocal = xp.where(X > -E8M0_BIAS, 2.0 ** (-X), xp.ones_like(X))
        y = xb * reciprocal
    else:
        with np.errstate(over="ignore"):  # ggml's X = 128: 2^128 is inf, and every element 0
            y = xb / xp.clip(2.0**X, F32_MIN_NORMAL, None)  # torchao's guard against a subnormal divisor
    q = round_to_format(y, fmt)  # saturating: torchao clamps FP8 before its cast; FP6/FP4 saturate
    return MXQuantized(q, X, fmt, block, mode)


def mx_dequantize(r: MXQuantized) -> Any:  # -> (..., n) float32
    """x̂ = q · 2^X, blocks flattened back onto the last axis."""
    xp = namespace(r.q)
    with np.errstate(over="ignore"):  # ggml's X = 128 (2^128 = inf) holds only zero elements: 0, not NaN
        x_hat = xp.where(r.q == 0, r.q, r.q * 2.0**r.X)  # (..., n/B, B)
    return xp.reshape(x_hat, (*x_hat.shape[:-2], x_hat.shape[-2] * x_hat.shape[-1]))


def e8m0_bytes(r: MXQuantized) -> np.ndarray:  # -> (..., n/B) uint8
    """The stored scale bytes X + 127 (NumPy edge).

    >>> e8m0_bytes(mx_quantize(np.float32([1, 2, 3, 5]), block=4)).tolist()
    [127]
    """
    X = np.asarray(to_numpy(r.X))
    return (X[..., 0] + E8M0_BIAS).astype(np.uint8)


def mx_stored_bytes(r: MXQuantized) -> int:
    """Element bits packed densely, plus one E8M0 byte per block: MXFP4 is 4.25 bits per weight.

    >>> mx_stored_bytes(mx_quantize(np.zeros((4, 64), np.float32)))
    136
    """
    n = int(np.prod(r.q.shape))
    return (n * r.element.n_bits + 7) // 8 + int(np.prod(r.X.shape))


# --- NVFP4 -------------------------------------------------------------------------------------------

class NVFP4Quantized(NamedTuple):
    q: Any              # (..., n/16, 16) float32 E2M1 grid values
    d: Any              # (..., n/16, 1) float32 block scales on the E4M3 grid
    t: Any              # float32 tensor scale (0-d array), 1 for single-level scaling


def nvfp4_tensor_scale(x: Any) -> Any:
    """t = amax(|x|) / (448 · 6), so a block holding the tensor's amax gets d_b = 448 (torchao's
    ``per_tensor_amax_to_scale``).

    >>> float(nvfp4_tensor_scale(np.float32([2688.0, -1.0])))
    1.0
    """
    xp = namespace(x)
    return xp.max(xp.abs(xp.astype(x, xp.float32))) / (E4M3.max * E2M1.max)


NVFP4_SCALE_MODES = ("torchao", "ggml")


def nvfp4_block_scale(ratio: Any, mode: str = "torchao") -> Any:  # (...) -> (...) float32 E4M3 values
    """The E4M3 block scale d_b for amax_b / 6 / t, in the two roundings implementations use.

    Example: 0.53125 is halfway between E4M3's 0.5 and 0.5625 (ties: even -> 0.5, half up -> 0.5625);
    0.0155 is below 2^-6: torchao lifts it to 2^-6, ggml takes (int)(7.94 + 0.5) = 8, capped at 7 · 2^-9.

    torchao: clamp to [2^-6, 448] (no subnormal scales), then ties to even.
    ggml (``ggml_fp32_to_ue4m3``): no lower clamp; normal values round half up on the fourth mantissa
    bit (ties away from zero); below 2^-6 the code is (int)(r · 2^9 + 0.5) in float32, capped at 7 (the
    largest subnormal, never carried into 2^-6) and 0 when it rounds to 0; it returns the code 0x7E
    (448) for every value whose binade would be E4M3's top one, so [256, 448) jumps to 448.

    >>> [nvfp4_block_scale(np.float32([0.53125, 0.0155]), m).tolist() for m in NVFP4_SCALE_MODES]
    [[0.5, 0.015625], [0.5625, 0.013671875]]
    """
    if mode not in NVFP4_SCALE_MODES:
        raise ValueError(f"scale_mode: expected one of {NVFP4_SCALE_MODES}, got {mode!r}")
    xp = namespace(ratio)
    if mode == "torchao":
        return round_to_format(xp.clip(ratio, E4M3_TINY, E4M3.max), E4M3)
    r = xp.clip(ratio, 0.0, E4M3.max)
    e = xp.clip(_floor_log2(xp, r), E4M3.emin, None)
    spacing = 2.0 ** (e - E4M3.man_bits)
    normal = round_half_away(r / spacing) * spacing
    # ggml keeps E4M3's top exponent field for its 0x7E code only: anything rounding to 2^8 or more
    # (the whole binade [256, 448]) becomes 448
    normal = xp.where(normal >= 2.0**E4M3.emax, xp.full_like(normal, E4M3.max), normal)
    sub_code = xp.clip(xp.trunc(r * 2.0 ** (E4M3.man_bits - E4M3.emin) + 0.5), 0.0, 2.0**E4M3.man_bits - 1)
    return xp.where(r >= E4M3_TINY, normal, sub_code * E4M3.min_subnormal)


def nvfp4_quantize(x: Any, tensor_scale: Any = None, scale_mode: str = "torchao") -> NVFP4Quantized:
    """NVFP4 of the last axis: E2M1 elements, an E4M3 scale per 16, a float32 tensor scale.

    ``tensor_scale``: None for single-level scaling (t = 1), "amax" for ``nvfp4_tensor_scale(x)``, or
    a positive float32 value. ``scale_mode`` rounds the block scales as torchao or as ggml's NVFP4
    (``nvfp4_block_scale``); ggml's type is single level (no tensor scale) with E2M1 elements chosen
    by least error (ties to the lower code), which is not modelled here. The data are multiplied by a
    reciprocal, (1/t)/d_b, not divided, as torchao does to match its Triton kernel; the two differ in
    the last bit and then at ties. A tensor scale below 2^-126 (1/t overflows float32) is an error.

    >>> r = nvfp4_quantize(np.float32([0.5, 1.0, 3.0, 6.0] * 4))
    >>> r.d.ravel().tolist(), r.q[0, :4].tolist()
    ([1.0], [0.5, 1.0, 3.0, 6.0])
    """
    if scale_mode not in NVFP4_SCALE_MODES:
        raise ValueError(f"scale_mode: expected one of {NVFP4_SCALE_MODES}, got {scale_mode!r}")
    check_float_input(x, "x")
    check_float32_range(x, "x", "NVFP4 quantization")
    _check_blocks(x, NVFP4_BLOCK, "NVFP4 block")
    xp = namespace(x)
    x = xp.astype(x, xp.float32)
    if tensor_scale is None:
        t = xp.asarray(1.0, dtype=xp.float32)
    elif isinstance(tensor_scale, str) and tensor_scale == "amax":
        t = nvfp4_tensor_scale(x)
    else:
        t = xp.asarray(tensor_scale, dtype=xp.float32)
        if t.ndim != 0 or not bool(t > 0) or not bool(xp.isfinite(t)):
            raise ValueError(f"tensor_scale: expected None, 'amax' or a positive finite scalar, got {tensor_scale!r}")
    xb = xp.reshape(x, (*x.shape[:-1], x.shape[-1] // NVFP4_BLOCK, NVFP4_BLOCK))  # (..., n/16, 16)
    amax = xp.max(xp.abs(xb), axis=-1, keepdims=True)  # (..., n/16, 1)
    if tensor_scale is None:
        d = nvfp4_block_scale(amax / E2M1.max, scale_mode)  # (..., n/16, 1)
        reciprocal = 1.0 / xp.where(d > 0, d, xp.ones_like(d))
    else:
        t = xp.where(t > 0, t, xp.ones_like(t))  # an all-zero tensor under "amax"
        if not bool(t >= F32_MIN_NORMAL):  # torchao goes on: 1/t = inf, and 0 · inf = NaN elements
            raise ValueError(f"tensor_scale: t = {float(t):.3g} is a float32 subnormal and 1/t overflows; "
                             f"two-level NVFP4 needs a tensor amax of at least 448·6·2^-126 ≈ 3.2e-35")
        d = nvfp4_block_scale(amax / E2M1.max / t, scale_mode)
        reciprocal = (1.0 / t) / xp.where(d > 0, d, xp.ones_like(d))
    # ggml's scale can be 0 (an all-zero or tiny block): its elements are then 0
    reciprocal = xp.where(d > 0, reciprocal, xp.zeros_like(reciprocal))
    q = round_to_format(xp.clip(xb * reciprocal, -E2M1.max, E2M1.max), E2M1)  # (..., n/16, 16)
    return NVFP4Quantized(q, d, t)


def nvfp4_dequantize(r: NVFP4Quantized) -> Any:  # -> (..., n) float32
    """x̂ = q · (t · d_b): torchao multiplies the two scales first."""
    xp = namespace(r.q)
    x_hat = r.q * (r.t * r.d)  # (..., n/16, 16)
    return xp.reshape(x_hat, (*x_hat.shape[:-2], x_hat.shape[-2] * x_hat.shape[-1]))


def nvfp4_stored_bytes(r: NVFP4Quantized) -> int:
    """Half a byte per element, one E4M3 byte per 16, four bytes of tensor scale: 4.5 bits per weight.

    >>> nvfp4_stored_bytes(nvfp4_quantize(np.ones((2, 64), np.float32)))
    76
    """
    n = int(np.prod(r.q.shape))
    return n // 2 + int(np.prod(r.d.shape)) + 4


def nvfp4_scale_bytes(r: NVFP4Quantized) -> np.ndarray:  # -> (..., n/16) uint8
    """The E4M3 bit patterns of the block scales (NumPy edge)."""
    return encode(np.asarray(to_numpy(r.d))[..., 0], E4M3)
