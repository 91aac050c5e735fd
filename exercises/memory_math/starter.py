"""Memory of a quantized model, your version. See README.md; check with

    EXERCISE=starter python -m pytest exercises/memory_math -q

``shapes`` is always {GGUF name: (rows, cols)} of the 2-D weight matrices.
"""


def fp16_bytes(shapes: dict[str, tuple[int, int]]) -> int:
    """Bytes of every matrix in FP16."""
    raise NotImplementedError("fp16_bytes: 2 bytes per weight")


def int_group_bytes(shapes: dict[str, tuple[int, int]], bits: int, G: int, zero_bits: int = 0) -> int:
    """b-bit codes, an fp16 scale per group of G, a zero_bits-bit zero per group (if > 0)."""
    raise NotImplementedError("int_group_bytes: codes + scales + zero-points, per matrix (README.md)")


def nf4_bytes(shapes: dict[str, tuple[int, int]], double_quant: bool = False) -> int:
    """bitsandbytes NF4, blocks of 64; with double quantization the absmax are 8-bit."""
    raise NotImplementedError("nf4_bytes: codes + absmax per block (+ the nested state)")


def gguf_types(shapes: dict[str, tuple[int, int]], ftype: str, n_layer: int) -> dict[str, str]:
    """The ggml type ("Q4_0", "Q4_K", "Q6_K" ...) of every matrix under file type "Q4_0" or "Q4_K_M"."""
    raise NotImplementedError("gguf_types: the mixture rules of README.md")


def gguf_bytes(shapes: dict[str, tuple[int, int]], types: dict[str, str]) -> int:
    """Bytes of every matrix stored in its ggml type."""
    raise NotImplementedError("gguf_bytes: rows x blocks per row x bytes per block")
