"""llama.cpp as an oracle for the whole model, through ``llama-cpp-python``.

    oracle = LlamaCpp(path)                 # the same GGUF file refquant.model loads
    oracle.tokenize(text)                   # llama_tokenize(add_special=True, parse_special=False)
    oracle.logits(tokens)                   # (T, vocab) float32, every position, fresh context

``logits`` evaluates one window from an empty KV cache (positions 0..T−1), like
``refquant.model.LlamaModel.forward``, so ``refquant.model.perplexity(oracle.logits, ...)``
scores llama.cpp on exactly the windows refquant is scored on. llama.cpp multiplies the
quantized weights with activations it quantizes to 8 bits per block of 32 (Q8_1 for
Q4_1 weights, Q8_0 for the Q8_0 output matrix) and keeps K and V in float16, so its
logits are close to, not equal to, a float32 forward pass.
"""

from __future__ import annotations

import atexit
import functools
import os
from typing import Sequence

import numpy as np

from . import OracleUnavailable

__all__ = ["LlamaCpp", "llama_cpp_oracle", "write_float32_gguf", "tiny_llama", "llama_cpp_linear"]


class LlamaCpp:
    """One llama.cpp context over a GGUF file: tokenizer and all-position logits."""

    def __init__(self, path: str | None = None, n_ctx: int = 512, n_threads: int = 2):
        try:
            import llama_cpp
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise OracleUnavailable("the llama.cpp oracle needs `pip install llama-cpp-python`") from e
        if path is None:
            from .._data import smollm2_path

            path = smollm2_path()
        self.path = os.fspath(path)
        self.n_ctx = n_ctx
        self.llm = llama_cpp.Llama(model_path=self.path, n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx,
                                   n_threads=n_threads, n_threads_batch=n_threads, logits_all=True,
                                   verbose=False)
        atexit.register(self.llm.close)  # free the context before the interpreter tears down ctypes

    def tokenize(self, text: str) -> list[int]:
        """Token ids as ``llama_tokenize(text, add_special=True, parse_special=False)``."""
        return list(self.llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))

    def detokenize(self, tokens: Sequence[int]) -> str:
        return self.llm.detokenize([int(t) for t in tokens]).decode("utf-8", errors="replace")

    def logits(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits of every position of one window, from an empty context: (T, vocab) float32."""
        ids = [int(t) for t in np.asarray(tokens).reshape(-1)]
        if not 0 < len(ids) <= self.n_ctx:
            raise ValueError(f"tokens: expected 1..{self.n_ctx} tokens (n_ctx), got {len(ids)}")
        self.llm.reset()  # drop the KV cache: positions restart at 0
        self.llm.eval(ids)
        return np.array(self.llm.scores[: len(ids)], dtype=np.float32)  # (T, vocab), a copy

    forward = logits


@functools.lru_cache(maxsize=2)
def llama_cpp_oracle(path: str | None = None, n_ctx: int = 512, n_threads: int = 2) -> LlamaCpp:
    """A cached ``LlamaCpp`` (building a context takes a moment)."""
    return LlamaCpp(path, n_ctx=n_ctx, n_threads=n_threads)


def write_float32_gguf(weights: dict, src_path: str, dst_path: str, n_layer: int | None = None) -> str:
    """A copy of ``src_path`` with every tensor stored as F32 from ``weights`` (first ``n_layer`` blocks).

    With F32 weights llama.cpp multiplies float32 by float32 (no activation quantization),
    which isolates the cost of its quantized dot products when comparing logits. Metadata
    (tokenizer included) is copied, with ``llama.block_count`` set to ``n_layer``.
    """
    import gguf  # gguf-py: the oracle side may use it

    reader = gguf.GGUFReader(src_path)
    arch = reader.fields["general.architecture"].contents()
    n_layer = n_layer if n_layer is not None else int(reader.fields[f"{arch}.block_count"].contents())
    writer = gguf.GGUFWriter(dst_path, arch)
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        if key == "general.file_type":
            writer.add_uint32(key, int(gguf.LlamaFileType.ALL_F32))
        elif key == f"{arch}.block_count":
            writer.add_uint32(key, n_layer)
        elif field.types[0] == gguf.GGUFValueType.ARRAY:
            writer.add_array(key, field.contents())
        else:
            writer.add_key_value(key, field.contents(), field.types[0])
    for t in reader.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= n_layer:
            continue
        writer.add_tensor(t.name, np.ascontiguousarray(weights[t.name], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst_path


def tiny_llama(seed: int = 0, n_layer: int = 2, d: int = 16, n_head: int = 4, n_kv: int = 2, n_ff: int = 24,
               vocab: int = 50, n_ctx: int = 64, norm_gains: tuple[float, float] = (0.5, 1.5)):
    """A random Llama of a few thousand parameters (float32 NumPy), for fast tests of anything
    built on ``refquant.model`` (calibration, weight swapping, quantizers at model level).

    Linear weights N(0, 1/n_in) (unit-variance outputs), embeddings N(0, 1), the blocks' RMSNorm
    gains uniform in ``norm_gains`` ((1, 1): all ones), tied output head.
    """
    import math

    from ..model import LlamaConfig, LlamaModel

    rng = np.random.default_rng(seed)
    cfg = LlamaConfig(n_layer=n_layer, n_embd=d, n_head=n_head, n_head_kv=n_kv, n_ff=n_ff, n_rot=d // n_head,
                      rope_base=1e4, rms_eps=1e-5, vocab_size=vocab, n_ctx_train=n_ctx, tied_embeddings=True)
    D = d // n_head
    shapes = {"attn_q": (d, d), "attn_k": (n_kv * D, d), "attn_v": (n_kv * D, d), "attn_output": (d, d),
              "ffn_gate": (n_ff, d), "ffn_up": (n_ff, d), "ffn_down": (d, n_ff)}
    w = {"token_embd.weight": rng.standard_normal((vocab, d)), "output_norm.weight": rng.uniform(0.5, 1.5, d)}
    for i in range(n_layer):
        w[f"blk.{i}.attn_norm.weight"] = rng.uniform(*norm_gains, d)
        w[f"blk.{i}.ffn_norm.weight"] = rng.uniform(*norm_gains, d)
        for name, shape in shapes.items():
            w[f"blk.{i}.{name}.weight"] = rng.standard_normal(shape) / math.sqrt(shape[1])  # unit-variance outputs
    return LlamaModel(cfg, {k: v.astype(np.float32) for k, v in w.items()})


# --- llama.cpp's CPU dot-product kernels, one row at a time --------------------------------------

# weight type -> (activation quantizer, dot kernel, bytes per activation block of 32)
_KERNELS = {"Q4_1": ("quantize_row_q8_1", "ggml_vec_dot_q4_1_q8_1", 36),
            "Q4_0": ("quantize_row_q8_0", "ggml_vec_dot_q4_0_q8_0", 34),
            "Q8_0": ("quantize_row_q8_0", "ggml_vec_dot_q8_0_q8_0", 34)}


@functools.lru_cache(maxsize=1)
def _cpu_lib():
    import ctypes

    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise OracleUnavailable("llama.cpp's kernels need `pip install llama-cpp-python`") from e
    lib = ctypes.CDLL(os.path.join(os.path.dirname(llama_cpp.__file__), "lib", "libggml-cpu.so"))
    lib.ggml_cpu_init()  # fills the float16 tables the kernels read
    vp = ctypes.c_void_p
    for quantize, dot, _ in _KERNELS.values():
        getattr(lib, quantize).argtypes = [vp, vp, ctypes.c_int64]
        getattr(lib, quantize).restype = None
        getattr(lib, dot).argtypes = [ctypes.c_int, vp, ctypes.c_size_t, vp, ctypes.c_size_t, vp, ctypes.c_size_t,
                                      ctypes.c_int]
        getattr(lib, dot).restype = None
    return lib


def llama_cpp_linear(x: np.ndarray, raw: np.ndarray, qtype: str) -> np.ndarray:
    """y = x Wᵀ as llama.cpp's CPU backend computes it for a quantized W (slow: one C call per output).

    Each activation row is quantized to 8 bits per block of 32 with ggml's own
    ``quantize_row_q8_1`` / ``quantize_row_q8_0`` (the weight type's ``vec_dot_type``), then
    dotted with every weight row by ``ggml_vec_dot_<type>_q8_<k>`` — the kernel behind
    ``ggml_mul_mat`` on this machine. x: (T, n) float32, raw: (out, row_bytes) uint8 -> (T, out).
    """
    import ctypes

    if qtype not in _KERNELS:
        raise ValueError(f"qtype: expected one of {sorted(_KERNELS)}, got {qtype!r}")
    lib = _cpu_lib()
    quantize, dot, block_bytes = (_KERNELS[qtype][0], _KERNELS[qtype][1], _KERNELS[qtype][2])
    quantize, dot = getattr(lib, quantize), getattr(lib, dot)
    x = np.ascontiguousarray(x, dtype=np.float32)
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    T, n = x.shape
    out = np.empty((T, raw.shape[0]), dtype=np.float32)
    s = ctypes.c_float()
    row_bytes = raw.shape[1]
    base = raw.ctypes.data
    for t in range(T):
        xq = np.empty(n // 32 * block_bytes, dtype=np.uint8)
        quantize(x[t].ctypes.data, xq.ctypes.data, n)
        for r in range(raw.shape[0]):
            dot(n, ctypes.byref(s), 0, base + r * row_bytes, 0, xq.ctypes.data, 0, 1)
            out[t, r] = s.value
    return out
