"""Loading a Llama-architecture GGUF file: hyper-parameters and float32 weights.

    file ──read──► metadata {key: value}, tensors {name: (type, raw bytes)}
         ──dequantize──► weights {name: float32 (out_features, in_features)}  (NumPy, cached)
         ──from_numpy──► the same weights on any array namespace (numpy, torch, cupy ...)

A GGUF tensor of ggml shape ``[ne0, ne1]`` is stored row-major with ``ne0`` the row length,
so in NumPy order it is ``(ne1, ne0)``. For a linear layer ``y = x Wᵀ`` ggml stores
``ne0 = in_features``: NumPy order gives ``W`` as ``(out_features, in_features)``, the
same layout as ``torch.nn.Linear.weight``. The token embedding is ``(vocab, d)``.

The bytes are read by refquant's own GGUF reader (``refquant.gguf.file.read``) and
decoded by its codecs (``refquant.gguf.dequantize``); gguf-py and llama.cpp serve only as
oracles in the tests.
Ref: ggml/docs/gguf.md (file layout); llama.cpp src/llama-model.cpp (LLM_ARCH_LLAMA
hyper-parameter keys and tensor names).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import numpy as np

__all__ = ["LlamaConfig", "read_gguf", "config_from_metadata", "load_weights", "block_tensor_names",
           "SUPPORTED_ARCHITECTURES"]

SUPPORTED_ARCHITECTURES = ("llama",)
GGUF_MAGIC = b"GGUF"

# the linear layers of one block, in the order the forward pass uses them
LINEAR_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")
NORM_NAMES = ("attn_norm", "ffn_norm")


@dataclasses.dataclass(frozen=True)
class LlamaConfig:
    """Hyper-parameters of a Llama-architecture model, read from ``llama.*`` GGUF keys.

    n_layer      blocks                      (llama.block_count)
    n_embd       model width d               (llama.embedding_length)
    n_head       query heads                 (llama.attention.head_count)
    n_head_kv    key/value heads (GQA)       (llama.attention.head_count_kv)
    n_ff         SwiGLU hidden width         (llama.feed_forward_length)
    n_rot        rotary dimensions per head  (llama.rope.dimension_count, default d/n_head)
    rope_base    RoPE frequency base         (llama.rope.freq_base)
    rms_eps      RMSNorm epsilon             (llama.attention.layer_norm_rms_epsilon)
    vocab_size   rows of the token embedding
    n_ctx_train  training context length     (llama.context_length)
    tied_embeddings  True when the output projection reuses token_embd.weight
    """

    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_rot: int
    rope_base: float
    rms_eps: float
    vocab_size: int
    n_ctx_train: int
    tied_embeddings: bool

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head


def _read_file(path: str) -> tuple[dict[str, Any], dict[str, tuple[str, np.ndarray]]]:
    """refquant's GGUF reader: metadata {key: python value}, tensors {name: (type name, raw)}.

    ``raw`` is a read-only uint8 view ``(..., row_bytes)`` of the tensor's bytes in the
    mapped file (refquant.gguf.file.TensorInfo.raw).
    """
    from ..gguf import file as gguf_file

    f = gguf_file.read(path)
    tensors = {name: (str(info.type), info.raw) for name, info in f.tensors.items()}
    return dict(f.metadata), tensors


def _dequantize(raw: np.ndarray, qtype: str) -> np.ndarray:
    """One tensor decoded to float32 (..., n_per_row) by refquant's GGUF codecs (a new array)."""
    from ..gguf import dequantize

    w = np.asarray(dequantize(raw, qtype), dtype=np.float32)
    return w.copy() if np.shares_memory(w, raw) else w  # F32 bytes may come back as a view of the file


def _check_gguf(path: str) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no such file: {path}")
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != GGUF_MAGIC:
        raise ValueError(f"path: {path} is not a GGUF file (starts with {magic!r}, expected {GGUF_MAGIC!r})")


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, tuple[str, np.ndarray]]]:
    """Metadata and raw tensors of a GGUF file, after checking its magic number."""
    path = os.fspath(path)
    _check_gguf(path)
    return _read_file(path)


def _meta(metadata: dict[str, Any], key: str, default: Any = None) -> Any:
    if key in metadata:
        return metadata[key]
    if default is None:
        raise ValueError(f"path: GGUF metadata lacks the required key {key!r}")
    return default


def block_tensor_names(i: int) -> list[str]:
    """The GGUF names of block i's weights: two norms and seven linears."""
    return [f"blk.{i}.{n}.weight" for n in NORM_NAMES + LINEAR_NAMES]


def config_from_metadata(metadata: dict[str, Any], tensor_names: set[str] | None = None) -> LlamaConfig:
    """A ``LlamaConfig`` from GGUF metadata; ValueError for another architecture."""
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"path: unsupported architecture {arch!r}; supported: {list(SUPPORTED_ARCHITECTURES)}")
    n_embd = int(_meta(metadata, "llama.embedding_length"))
    n_head = int(_meta(metadata, "llama.attention.head_count"))
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = int(metadata.get("llama.vocab_size", len(tokens) if tokens is not None else 0))
    return LlamaConfig(
        n_layer=int(_meta(metadata, "llama.block_count")),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=int(metadata.get("llama.attention.head_count_kv", n_head)),
        n_ff=int(_meta(metadata, "llama.feed_forward_length")),
        n_rot=int(metadata.get("llama.rope.dimension_count", n_embd // n_head)),
        rope_base=float(metadata.get("llama.rope.freq_base", 10000.0)),
        rms_eps=float(_meta(metadata, "llama.attention.layer_norm_rms_epsilon")),
        vocab_size=vocab,
        n_ctx_train=int(metadata.get("llama.context_length", 0)),
        tied_embeddings=tensor_names is not None and "output.weight" not in tensor_names,
    )


def _required_names(config: LlamaConfig) -> list[str]:
    names = ["token_embd.weight", "output_norm.weight"]
    for i in range(config.n_layer):
        names += block_tensor_names(i)
    if not config.tied_embeddings:
        names.append("output.weight")
    return names


@functools.lru_cache(maxsize=2)
def _load_numpy(path: str, mtime: float) -> tuple[dict[str, Any], LlamaConfig, dict[str, np.ndarray]]:
    metadata, tensors = read_gguf(path)
    config = config_from_metadata(metadata, set(tensors))
    missing = [n for n in _required_names(config) if n not in tensors]
    if missing:
        raise ValueError(f"path: {path} lacks tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                         f"required by the {config.n_layer}-block llama architecture")
    weights = {}
    for name in _required_names(config):
        qtype, raw = tensors[name]
        w = _dequantize(raw, qtype)  # (out_features, in_features) or (n,) for a norm
        w.flags.writeable = False  # shared by every model loaded from this file
        weights[name] = w
    if config.vocab_size != weights["token_embd.weight"].shape[0]:
        config = dataclasses.replace(config, vocab_size=int(weights["token_embd.weight"].shape[0]))
    return metadata, config, weights


def load_weights(path: str) -> tuple[dict[str, Any], LlamaConfig, dict[str, np.ndarray]]:
    """(metadata, config, float32 NumPy weights) of a GGUF file; read-only arrays, cached per file."""
    path = os.path.abspath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else path
    _check_gguf(path)
    return _load_numpy(path, os.path.getmtime(path))
