"""The ggml type table: id, block size and bytes per block of every tensor type.

Pure data, imported by the codecs (``refquant.gguf``) and the file reader alike.
Ids are ``enum ggml_type`` (ggml.h); block size ``QK`` is how many weights one block
encodes and ``type_size`` its bytes, so a row of n weights takes n / QK * type_size bytes
and the type spends 8 * type_size / QK bits per weight.

Only a subset has a refquant codec (``refquant.gguf.CODECS``); the reader still knows the
sizes of every type so it can validate any file.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["GGMLType", "GGML_TYPES", "BY_ID", "ggml_type", "row_bytes"]


class GGMLType(NamedTuple):
    name: str
    id: int
    block_size: int  # QK: weights per block
    type_size: int   # bytes per block

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size


_TABLE = [
    ("F32", 0, 1, 4), ("F16", 1, 1, 2),
    ("Q4_0", 2, 32, 18), ("Q4_1", 3, 32, 20), ("Q5_0", 6, 32, 22), ("Q5_1", 7, 32, 24),
    ("Q8_0", 8, 32, 34), ("Q8_1", 9, 32, 36),
    ("Q2_K", 10, 256, 84), ("Q3_K", 11, 256, 110), ("Q4_K", 12, 256, 144), ("Q5_K", 13, 256, 176),
    ("Q6_K", 14, 256, 210), ("Q8_K", 15, 256, 292),
    ("IQ2_XXS", 16, 256, 66), ("IQ2_XS", 17, 256, 74), ("IQ3_XXS", 18, 256, 98), ("IQ1_S", 19, 256, 50),
    ("IQ4_NL", 20, 32, 18), ("IQ3_S", 21, 256, 110), ("IQ2_S", 22, 256, 82), ("IQ4_XS", 23, 256, 136),
    ("I8", 24, 1, 1), ("I16", 25, 1, 2), ("I32", 26, 1, 4), ("I64", 27, 1, 8), ("F64", 28, 1, 8),
    ("IQ1_M", 29, 256, 56), ("BF16", 30, 1, 2), ("TQ1_0", 34, 256, 54), ("TQ2_0", 35, 256, 66),
    ("MXFP4", 39, 32, 17), ("NVFP4", 40, 64, 36), ("Q1_0", 41, 128, 18), ("Q2_0", 42, 64, 18),
]

GGML_TYPES: dict[str, GGMLType] = {name: GGMLType(name, i, qk, size) for name, i, qk, size in _TABLE}
BY_ID: dict[int, GGMLType] = {t.id: t for t in GGML_TYPES.values()}


def ggml_type(qtype) -> GGMLType:
    """Look a type up by name ("Q4_K", case-insensitive), id (12) or gguf-py's enum."""
    if isinstance(qtype, GGMLType):
        return qtype
    if isinstance(qtype, int) and not hasattr(qtype, "name"):
        if qtype in BY_ID:
            return BY_ID[qtype]
        raise ValueError(f"qtype: unknown ggml type id {qtype}")
    name = str(getattr(qtype, "name", qtype)).upper()
    if name in GGML_TYPES:
        return GGML_TYPES[name]
    raise ValueError(f"qtype: unknown ggml type {qtype!r}; known: {', '.join(GGML_TYPES)}")


def row_bytes(qtype, n_per_row: int) -> int:
    """Bytes of one row of ``n_per_row`` weights; n_per_row must be a multiple of the block."""
    t = ggml_type(qtype)
    if n_per_row % t.block_size:
        raise ValueError(f"n_per_row: {n_per_row} is not a multiple of {t.name}'s block size {t.block_size}")
    return n_per_row // t.block_size * t.type_size
