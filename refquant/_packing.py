"""Bit packing of integer codes into bytes, and back — written once, named.

Little-end-first ("LSB-first") packing of b-bit codes, the order every format here uses
unless it says otherwise: code k of a group of ``8/b`` codes sits in bits
``[k*b, (k+1)*b)`` of its byte, so for 4 bits the *first* code is the *low* nibble.

    pack_bits([1, 2, 3, 0], bits=2)  -> [0b00_11_10_01] = [57]

For 3 bits (not a divisor of 8) codes are packed as a continuous LSB-first bit stream:
8 codes -> 3 bytes. Formats with other layouts (bitsandbytes' high-nibble-first 4-bit,
ggml's split low/high nibbles over half a block) use ``pack_nibbles`` with their order,
or say in their own module what they do.

NumPy-only: packing is byte work at the edge (the array API has no bitcast).
"""

from __future__ import annotations

import numpy as np

__all__ = ["pack_bits", "unpack_bits", "pack_nibbles", "unpack_nibbles", "packed_length"]

SUPPORTED_BITS = (1, 2, 3, 4, 5, 6, 7, 8)


def packed_length(n: int, bits: int) -> int:
    """Bytes needed for ``n`` codes of ``bits`` bits (a whole number of bytes).

    >>> packed_length(8, 3), packed_length(9, 3), packed_length(5, 4)  # 24 bits; 27 -> 4 bytes; 20 -> 3
    (3, 4, 3)
    """
    return (n * bits + 7) // 8


def pack_bits(q: np.ndarray, bits: int) -> np.ndarray:
    """Pack unsigned codes ``0 <= q < 2**bits`` along the last axis, LSB-first.

    q: (..., n) integer -> (..., ceil(n*bits/8)) uint8. A tail that does not fill a byte
    is padded with zero bits.

    Example: 2-bit [1, 2, 3, 0] -> 0b00_11_10_01 = 57 (first code lowest); 3-bit 0..7 is the
    24-bit stream 0b111_110_101_100_011_010_001_000, bytes 0b10_001_000 = 136, 0b1_100_011_0 = 198,
    0b111_110_10 = 250.

    >>> pack_bits(np.array([1, 2, 3, 0]), bits=2).tolist(), pack_bits(np.arange(8), bits=3).tolist()
    ([57], [136, 198, 250])
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits: expected one of {SUPPORTED_BITS}, got {bits!r}")
    q = np.asarray(q)
    if q.size and (q.min() < 0 or q.max() >= (1 << bits)):
        raise ValueError(f"q: codes must lie in 0..{(1 << bits) - 1} for bits={bits}")
    n = q.shape[-1]
    if bits == 8:
        return q.astype(np.uint8)
    # every code as its `bits` binary digits, least significant first
    digits = (q[..., None].astype(np.uint16) >> np.arange(bits, dtype=np.uint16)) & 1  # (..., n, bits)
    stream = digits.reshape(*q.shape[:-1], n * bits).astype(np.uint8)                # (..., n*bits)
    return np.packbits(stream, axis=-1, bitorder="little")                               # (..., bytes)


def unpack_bits(packed: np.ndarray, bits: int, n: int) -> np.ndarray:
    """Inverse of ``pack_bits``: (..., bytes) uint8 -> (..., n) uint8 codes.

    >>> unpack_bits(np.uint8([57]), bits=2, n=4).tolist(), unpack_bits(np.uint8([136, 198, 250]), 3, 8).tolist()
    ([1, 2, 3, 0], [0, 1, 2, 3, 4, 5, 6, 7])
    """
    if bits not in SUPPORTED_BITS:
        raise ValueError(f"bits: expected one of {SUPPORTED_BITS}, got {bits!r}")
    packed = np.asarray(packed, dtype=np.uint8)
    if packed.shape[-1] != packed_length(n, bits):
        raise ValueError(f"packed: last dimension {packed.shape[-1]} != {packed_length(n, bits)} bytes for {n} codes of {bits} bits")
    if bits == 8:
        return packed.copy()
    stream = np.unpackbits(packed, axis=-1, bitorder="little")[..., : n * bits]  # (..., n*bits)
    digits = stream.reshape(*packed.shape[:-1], n, bits).astype(np.uint8)        # (..., n, bits)
    weights = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
    return (digits * weights).sum(axis=-1, dtype=np.uint16).astype(np.uint8)


def pack_nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Two 4-bit code arrays of equal shape -> one byte each: ``lo | hi << 4``.

    >>> [hex(b) for b in pack_nibbles(np.uint8([1, 15]), np.uint8([2, 0])).tolist()]
    ['0x21', '0xf']
    """
    lo = np.asarray(lo).astype(np.uint8)
    hi = np.asarray(hi).astype(np.uint8)
    return (lo & 0x0F) | ((hi & 0x0F) << 4)


def unpack_nibbles(b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """bytes -> (low nibbles, high nibbles), each uint8 of the same shape.

    >>> lo, hi = unpack_nibbles(np.uint8([0x21, 0x0F]))
    >>> lo.tolist(), hi.tolist()
    ([1, 15], [2, 0])
    """
    b = np.asarray(b, dtype=np.uint8)
    return b & 0x0F, b >> 4
