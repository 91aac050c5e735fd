"""Small floating-point formats (OCP FP8 E4M3 / E5M2, the MX FP6 / FP4 elements) and FP8 weight scaling.

A format ``EeMm`` with exponent bias ``β`` stores a sign, an e-bit field ``E`` and an m-bit field ``M``:

    value = (-1)^S · 2^(E-β) · (1 + M/2^m)      E ≥ 1   (normal)
    value = (-1)^S · 2^(1-β) · (M/2^m)          E = 0   (subnormal, and ±0)

Rounding a float32 ``x`` onto the grid (round to nearest, ties to the even mantissa):

    e = max(floor(log2 |x|), 1-β)                the binade, clamped at the subnormal range
    q = 2^(e-m)                                  the grid spacing in that binade
    ŷ = sign(x) · round_half_even(|x| / q) · q   ⇒ |x - ŷ| ≤ q/2 for |x| ≤ max
    saturate: |ŷ| > max -> max (OCP "satfinite");  otherwise -> inf (E5M2) or NaN (E4M3)

| format | e | m | β  | specials                                 | max     | min subnormal |
|--------|---|---|----|------------------------------------------|---------|---------------|
| E4M3   | 4 | 3 | 7  | "fn": only S.1111.111 is NaN, no inf      | 448     | 2^-9          |
| E5M2   | 5 | 2 | 15 | "ieee": E=31 holds ±inf and NaNs          | 57344   | 2^-16         |
| E3M2   | 3 | 2 | 3  | none (every pattern finite), MX FP6       | 28      | 2^-4          |
| E2M3   | 2 | 3 | 1  | none, MX FP6                              | 7.5     | 2^-3          |
| E2M1   | 2 | 1 | 1  | none, MX FP4 / NVFP4 element              | 6       | 0.5           |

FP8 weight quantization with a float32 scale (torchao's ``_choose_scale_float8`` /
``_quantize_affine_float8``), per tensor, per row, or per 128x128 block of a matrix:

    s = amax(|W| over the granule) / max,    q = round_fmt(clamp(W / s, -max, max)),    Ŵ = q · s

W: (out, in) float -> q: (out, in) float32 on the grid, s: (1, 1) | (out, 1) | (out/128, 1, in/128, 1)

Refs: OCP 8-bit Floating Point Specification (OFP8) rev 1.0; OCP Microscaling Formats (MX) v1.0 §5.3;
Micikevicius et al. 2022, "FP8 Formats for Deep Learning". Parity: torch's float8_e4m3fn /
float8_e5m2 casts (torch 2.13 saturates E4M3, even inf, and sends E5M2 overflow to inf) and torchao.

Example: 0.3 lies in the binade [0.25, 0.5), where E4M3's spacing is 2^-2 · 2^-3 = 1/32; 0.3·32 = 9.6
rounds to 10, so 10/32 = 0.3125; 1000 saturates to 448; 17 is halfway between 16 and 18 -> 16 (even).

>>> round_to_format(np.float32([0.3, 1000.0, 17.0, -0.0]), E4M3).tolist()
[0.3125, 448.0, 16.0, -0.0]
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from ._backend import namespace, to_numpy
from ._checks import check_float32_range, check_int, check_weight_matrix
from ._rounding import round_half_even

__all__ = ["FloatFormat", "E4M3", "E5M2", "E3M2", "E2M3", "E2M1", "FORMATS", "get_format", "value_table",
           "round_to_format", "encode", "decode", "FP8Quantized", "GRANULARITIES", "FP8_BLOCK",
           "quantize", "dequantize", "stored_bytes"]

SPECIALS = ("ieee", "fn", "none")


class FloatFormat(NamedTuple):
    """A sign + e exponent bits + m mantissa bits format; ``specials`` says what the top patterns mean."""

    name: str
    exp_bits: int
    man_bits: int
    bias: int
    specials: str  # "ieee" (top exponent = inf/NaN), "fn" (only all-ones = NaN), "none" (all finite)

    @property
    def n_bits(self) -> int:
        return 1 + self.exp_bits + self.man_bits

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade (and of the subnormals' spacing), 1 - β."""
        return 1 - self.bias

    @property
    def emax(self) -> int:
        """Exponent of the largest finite binade."""
        top = 2**self.exp_bits - 1  # the all-ones exponent field
        return (top - 1 if self.specials == "ieee" else top) - self.bias

    @property
    def max(self) -> float:
        """Largest finite value: all-ones mantissa in the top binade, one less where "fn" keeps it for NaN."""
        m = self.man_bits
        top_mantissa = 2**m - (2 if self.specials == "fn" else 1)
        return float(2.0**self.emax * (1 + top_mantissa / 2**m))

    @property
    def min_normal(self) -> float:
        return float(2.0**self.emin)

    @property
    def min_subnormal(self) -> float:
        return float(2.0 ** (self.emin - self.man_bits))


E4M3 = FloatFormat("e4m3", 4, 3, 7, "fn")
E5M2 = FloatFormat("e5m2", 5, 2, 15, "ieee")
E3M2 = FloatFormat("e3m2", 3, 2, 3, "none")
E2M3 = FloatFormat("e2m3", 2, 3, 1, "none")
E2M1 = FloatFormat("e2m1", 2, 1, 1, "none")
FORMATS = {f.name: f for f in (E4M3, E5M2, E3M2, E2M3, E2M1)}


def get_format(fmt: Any, name: str = "fmt") -> FloatFormat:
    """A FloatFormat, or its name ("e4m3", ...) -> FloatFormat; anything else is a ValueError."""
    if isinstance(fmt, FloatFormat):
        return fmt
    if isinstance(fmt, str) and fmt.lower() in FORMATS:
        return FORMATS[fmt.lower()]
    raise ValueError(f"{name}: expected one of {sorted(FORMATS)} or a FloatFormat, got {fmt!r}")


def value_table(fmt: Any) -> np.ndarray:
    """The value of every bit pattern 0 .. 2^n - 1 (float32; NaN/inf where the format keeps them).

    Patterns read S | E | M from the top bit down, as torch's float8 dtypes and the OCP spec lay them.

    >>> value_table(E2M1).tolist()[:8]
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    """
    fmt = get_format(fmt)
    e, m = fmt.exp_bits, fmt.man_bits
    p = np.arange(2**fmt.n_bits)
    S, E, M = p >> (e + m), (p >> m) & (2**e - 1), p & (2**m - 1)  # the three fields of each pattern
    magnitude = np.where(E == 0, M / 2.0**m * 2.0**fmt.emin, (1 + M / 2.0**m) * 2.0 ** (E - fmt.bias))
    top_E = E == 2**e - 1
    if fmt.specials == "ieee":
        magnitude = np.where(top_E, np.where(M == 0, np.inf, np.nan), magnitude)
    elif fmt.specials == "fn":
        magnitude = np.where(top_E & (M == 2**m - 1), np.nan, magnitude)
    return np.where(S == 1, -magnitude, magnitude).astype(np.float32)


def round_to_format(x: Any, fmt: Any, saturate: bool = True) -> Any:  # (...) -> (...) same dtype
    """Each finite value of ``x`` rounded to the nearest value of ``fmt``, ties to the even mantissa.

    ``saturate=True`` clamps overflow to ±max (OCP satfinite: torch's E4M3 cast, torchao's clamp then
    cast); ``saturate=False`` overflows to ±inf (E5M2, as torch's E5M2 cast) or NaN (E4M3). The
    formats without specials (E3M2, E2M3, E2M1) can only saturate. Signs of zeros are kept.

    >>> round_to_format(np.float32([0.25, 0.75, 5.0, 7.0, -2.5]), "e2m1").tolist()
    [0.0, 1.0, 4.0, 6.0, -2.0]
    """
    fmt = get_format(fmt)
    xp = namespace(x)
    if not saturate and fmt.specials == "none":
        raise ValueError(f"saturate: {fmt.name} has no inf or NaN to overflow to; use saturate=True")
    # beyond 2·max every value saturates (or overflows) alike; capping there keeps 2^e finite in float32
    a = xp.clip(xp.abs(x), None, 2 * fmt.max)  # (...)
    e = _floor_log2(xp, a)  # (...) binade of each |x|; log2(0) never taken
    e = xp.clip(e, fmt.emin, None)  # subnormals share the smallest binade's spacing
    spacing = 2.0 ** (e - fmt.man_bits)  # exact powers of two
    y = round_half_even(a / spacing) * spacing  # |x|/spacing is exact: the division is by a power of two
    if saturate:
        y = xp.clip(y, None, fmt.max)
    else:
        overflow = xp.inf if fmt.specials == "ieee" else xp.nan
        y = xp.where(y > fmt.max, xp.full_like(y, overflow), y)
    return xp.where(xp.signbit(x), -y, y)


def _floor_log2(xp: Any, a: Any) -> Any:
    """floor(log2 a) for float32 a ≥ 0 (0 for a = 0), exact: float32 log2 may round 2^k - tiny up to k, so the
    estimate is checked against the power of two it claims and moved by one where it is off."""
    positive = a > 0
    e = xp.floor(xp.log2(xp.where(positive, a, xp.ones_like(a))))
    e = xp.clip(e, -149.0, 127.0)  # float32's binades (log2 of ~3.4e38 rounds up to 128: 2^128 is inf)
    e = xp.where(2.0**e > a, e - 1, e)
    e = xp.where(a / 2.0**e >= 2, e + 1, e)  # a / 2^e is exact; 2^(e+1) could overflow
    return xp.where(positive, e, xp.zeros_like(e))


def encode(x: Any, fmt: Any, saturate: bool = True) -> np.ndarray:  # (...) -> (...) uint8
    """Bit patterns of ``round_to_format(x, fmt, saturate)`` as uint8 (S|E|M in the low n bits).

    NumPy edge: the patterns are found by looking each rounded value up in the sorted finite grid,
    so ``decode(encode(x)) == round_to_format(x)`` by construction; NaN -> S.1111.111, ±inf -> S.11111.00.

    >>> [hex(b) for b in encode(np.float32([448.0, -1.0, 2**-9, -0.0]), E4M3).tolist()]
    ['0x7e', '0xb8', '0x1', '0x80']
    """
    fmt = get_format(fmt)
    y = np.asarray(to_numpy(round_to_format(x, fmt, saturate)), dtype=np.float32)
    table = value_table(fmt)
    half = 2 ** (fmt.n_bits - 1)  # patterns 0 .. half-1 are the non-negative ones
    positive = table[:half]
    finite = np.flatnonzero(np.isfinite(positive))  # increasing values, increasing patterns
    a = np.abs(y)
    idx = finite[np.clip(np.searchsorted(positive[finite], a), 0, len(finite) - 1)]
    idx = np.where(np.isnan(a), half - 1, idx)  # NaN: all ones
    idx = np.where(np.isinf(a), (2**fmt.exp_bits - 1) << fmt.man_bits, idx)  # inf: top exponent, M = 0
    return (idx | np.where(np.signbit(y), half, 0)).astype(np.uint8)


def decode(codes: np.ndarray, fmt: Any) -> np.ndarray:  # (...) uint8 -> (...) float32
    """The float32 value of each pattern (a table look-up; patterns must fit in the format's n bits).

    >>> decode(np.uint8([0x7E, 0xB8, 0x01, 0x7F]), "e4m3").tolist()
    [448.0, -1.0, 0.001953125, nan]
    """
    fmt = get_format(fmt)
    codes = np.asarray(codes)
    if codes.dtype != np.uint8:
        raise TypeError(f"codes: expected uint8 bit patterns, got dtype {codes.dtype}")
    if codes.size and int(codes.max()) >= 2**fmt.n_bits:
        raise ValueError(f"codes: {fmt.name} patterns are {fmt.n_bits}-bit (< {2**fmt.n_bits}), got {int(codes.max())}")
    return value_table(fmt)[codes]


# --- FP8 weights with a float32 scale -------------------------------------------------------------

GRANULARITIES = ("tensor", "row", "block")
#: DeepSeek-V3 / torchao's block granularity for FP8 weights: one scale per 128x128 tile
FP8_BLOCK = 128


class FP8Quantized(NamedTuple):
    """FP8 weights: grid values ``q`` (float32, exactly representable in ``fmt``) and scales ``s``."""

    q: Any          # (out, in) float32 on the fmt grid
    s: Any          # (1, 1) | (out, 1) | (out/B, 1, in/B, 1) float32
    fmt: FloatFormat
    granularity: str
    block: int


def quantize(W: Any, fmt: Any = "e4m3", granularity: str = "tensor", block: int = FP8_BLOCK) -> FP8Quantized:
    """FP8 quantization of a matrix W (out, in): s = amax / max per granule, q = satfinite(W / s).

    An all-zero granule gets s = 1 (q = 0); torchao divides 0 by 0 there and returns NaN.

    >>> r = quantize(np.float32([[1.0, -3.5], [0.0, 2.0]]), "e4m3", "row")
    >>> r.s.ravel().tolist(), (r.q * r.s).tolist()
    ([0.0078125, 0.004464285913854837], [[1.0, -3.5], [0.0, 2.0]])
    """
    fmt = get_format(fmt)
    if fmt not in (E4M3, E5M2):
        raise ValueError(f"fmt: FP8 weights are e4m3 or e5m2, got {fmt.name}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity: expected one of {GRANULARITIES}, got {granularity!r}")
    check_weight_matrix(W, "W")
    check_float32_range(W, "W", "FP8 quantization")
    xp = namespace(W)
    W = xp.astype(W, xp.float32)
    rows, cols = W.shape
    if granularity == "block":
        block = check_int(block, "block", 1)
        if rows % block or cols % block:
            raise ValueError(f"W: shape {(rows, cols)} is not a whole number of {block}x{block} blocks")
        Wb = xp.reshape(W, (rows // block, block, cols // block, block))  # (out/B, B, in/B, B)
        amax = xp.max(xp.abs(Wb), axis=(1, 3), keepdims=True)  # (out/B, 1, in/B, 1)
    else:
        Wb = W
        axes = (0, 1) if granularity == "tensor" else (1,)
        amax = xp.max(xp.abs(W), axis=axes, keepdims=True)  # (1, 1) | (out, 1)
    s = amax / fmt.max  # float32 division, as torchao
    s = xp.where(s > 0, s, xp.ones_like(s))
    q = round_to_format(xp.clip(Wb / s, -fmt.max, fmt.max), fmt)  # clamp, then cast (torchao's order)
    return FP8Quantized(xp.reshape(q, (rows, cols)), s, fmt, granularity, block)


def dequantize(r: FP8Quantized) -> Any:  # -> (out, in) float32
    """Ŵ = q · s, broadcast over each granule."""
    xp = namespace(r.q)
    rows, cols = r.q.shape
    if r.granularity != "block":
        return r.q * r.s
    B = r.block
    qb = xp.reshape(r.q, (rows // B, B, cols // B, B))  # (out/B, B, in/B, B)
    return xp.reshape(qb * r.s, (rows, cols))


def stored_bytes(r: FP8Quantized) -> int:
    """One byte per weight plus a float32 per scale.

    >>> stored_bytes(quantize(np.ones((256, 256), np.float32), granularity="block"))
    65552
    """
    return int(np.prod(r.q.shape)) + 4 * int(np.prod(r.s.shape))
