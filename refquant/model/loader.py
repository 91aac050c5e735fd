"""Loading a Llama-architecture GGUF file: hyper-parameters and float32 weights.

    file ──read──► metadata {key: value}, tensors {name: (type, raw bytes)}
         ──dequantize──► weights {name: float32 (out_features, in_features)}  (NumPy, cached)
         ──from_numpy──► the same weights on any array namespace (numpy, torch, cupy ...)

A GGUF tensor of ggml shape ``[ne0, ne1]`` is stored row-major with ``ne0`` the row length,
so in NumPy order it is ``(ne1, ne0)``. For a linear layer ``y = x Wᵀ`` ggml stores
``ne0 = in_features``: NumPy order gives ``W`` as ``(out_features, in_features)``, the
same layout as ``torch.nn.Linear.weight``. The token embedding is ``(vocab, d)``.

The header is checked against the tensor table before anything is sized from it (a
2**31-1 ``block_count`` in a small file would otherwise build billions of tensor names):
every count is an integer >= 1, ``block_count`` is at most the number of blocks whose
tensors the file holds, ``head_count`` divides ``embedding_length`` into heads of even
width, ``head_count_kv`` divides ``head_count``, and every required tensor has the shape
the header implies. A violation is a ValueError naming the key or the tensor.

The bytes are read by refquant's own GGUF reader (``refquant.gguf.file.read``) and
decoded by its codecs (``refquant.gguf.dequantize``); gguf-py and llama.cpp serve only as
oracles in the tests.
Ref: ggml/docs/gguf.md (file layout); llama.cpp src/llama-model.cpp (LLM_ARCH_LLAMA
hyper-parameter keys and tensor names).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import re
from typing import Any, Mapping

import numpy as np

__all__ = ["LlamaConfig", "read_gguf", "config_from_metadata", "check_against_tensors", "file_key", "load_file",
           "load_weights", "block_tensor_names", "SUPPORTED_ARCHITECTURES"]

SUPPORTED_ARCHITECTURES = ("llama",)

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


def file_key(path: str | os.PathLike) -> tuple[str, float]:
    """(absolute path, mtime) of a model file: the key its decoded weights are cached under."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a file path, got {type(path).__name__}")
    path = os.path.abspath(os.fspath(path))
    try:
        return path, os.path.getmtime(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no such file: {path}") from None


def _open(path: str) -> Any:
    """refquant's GGUF reader on ``path`` (a ``GGUFFile``: metadata, tensor table, the mapping).

    Its ``TensorInfo.raw`` are read-only uint8 views ``(..., row_bytes)`` of the mapped file.
    The reader checks the magic number (once); a file too short for a header or with another
    magic is "not a GGUF file", a FIFO or device is refused before it is opened.
    """
    from ..gguf import file as gguf_file

    try:
        return gguf_file.read(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"path: no such file: {path}") from None
    except gguf_file.GGUFFormatError as err:
        if err.field in ("header", "magic"):
            raise ValueError(f"path: {path} is not a GGUF file ({err})") from None
        raise


def _dequantize(raw: np.ndarray, qtype: str) -> np.ndarray:
    """One tensor decoded to float32 (..., n_per_row) by refquant's GGUF codecs (a new array)."""
    from ..gguf import dequantize

    w = np.asarray(dequantize(raw, qtype), dtype=np.float32)
    return w.copy() if np.shares_memory(w, raw) else w  # F32 bytes may come back as a view of the file


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, tuple[str, np.ndarray]]]:
    """Metadata and raw tensors {name: (type name, raw bytes)} of a GGUF file.

    The raw arrays view the mapped file; the mapping is released when the last of them is freed.
    """
    path, _ = file_key(path)
    f = _open(path)
    tensors = {name: (str(t.type), t.raw) for name, t in f.tensors.items()}
    f.close()  # unmapped once nothing views it
    return dict(f.metadata), tensors


def _meta(metadata: dict[str, Any], key: str, default: Any = None) -> Any:
    if key in metadata:
        return metadata[key]
    if default is None:
        raise ValueError(f"path: GGUF metadata lacks the required key {key!r}")
    return default


def block_tensor_names(i: int) -> list[str]:
    """The GGUF names of block i's weights: two norms and seven linears."""
    return [f"blk.{i}.{n}.weight" for n in NORM_NAMES + LINEAR_NAMES]


def _int_key(metadata: Mapping[str, Any], key: str, default: int | None = None, lo: int = 1) -> int:
    """An integer hyper-parameter, checked: present (or defaulted), an integer, >= lo."""
    if key not in metadata:
        if default is None:
            raise ValueError(f"path: GGUF metadata lacks the required key {key!r}")
        return default
    v = metadata[key]
    if isinstance(v, (list, tuple, np.ndarray)) and len(v) > 0 and all(x == v[0] for x in v):
        v = v[0]  # a per-layer array with one value throughout (as some converters write head counts)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"path: {key} must be an integer, got {v!r}")
    if int(v) < lo:
        raise ValueError(f"path: {key} = {int(v)}; expected an integer >= {lo}")
    return int(v)


def _float_key(metadata: Mapping[str, Any], key: str, default: float | None = None) -> float:
    """A positive, finite float hyper-parameter."""
    if key not in metadata and default is not None:
        return default
    v = _meta(metadata, key)
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(float(v)) or float(v) <= 0:
        raise ValueError(f"path: {key} must be a positive finite number, got {v!r}")
    return float(v)


def config_from_metadata(metadata: dict[str, Any], tensor_names: set[str] | None = None) -> LlamaConfig:
    """A ``LlamaConfig`` from GGUF metadata, its counts checked; ValueError for another
    architecture or a count that cannot describe a model (0 heads, heads not dividing d)."""
    arch = metadata.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"path: unsupported architecture {arch!r}; supported: {list(SUPPORTED_ARCHITECTURES)}")
    n_embd = _int_key(metadata, "llama.embedding_length")
    n_head = _int_key(metadata, "llama.attention.head_count")
    if n_embd % n_head or (n_embd // n_head) % 2:
        raise ValueError(f"path: llama.attention.head_count = {n_head} must divide llama.embedding_length = "
                         f"{n_embd} into heads of even width (RoPE rotates pairs)")
    head_dim = n_embd // n_head
    n_head_kv = _int_key(metadata, "llama.attention.head_count_kv", n_head)
    if n_head % n_head_kv:
        raise ValueError(f"path: llama.attention.head_count_kv = {n_head_kv} must divide "
                         f"llama.attention.head_count = {n_head}")
    n_rot = _int_key(metadata, "llama.rope.dimension_count", head_dim)
    if n_rot != head_dim:
        raise ValueError(f"path: llama.rope.dimension_count = {n_rot}; this runtime rotates whole heads "
                         f"of {head_dim} dimensions")
    tokens = metadata.get("tokenizer.ggml.tokens")
    vocab = _int_key(metadata, "llama.vocab_size", len(tokens) if tokens is not None else 0, lo=0)
    return LlamaConfig(
        n_layer=_int_key(metadata, "llama.block_count"),
        n_embd=n_embd,
        n_head=n_head,
        n_head_kv=n_head_kv,
        n_ff=_int_key(metadata, "llama.feed_forward_length"),
        n_rot=n_rot,
        rope_base=_float_key(metadata, "llama.rope.freq_base", 10000.0),
        rms_eps=_float_key(metadata, "llama.attention.layer_norm_rms_epsilon"),
        vocab_size=vocab,
        n_ctx_train=_int_key(metadata, "llama.context_length", 0, lo=0),
        tied_embeddings=tensor_names is not None and "output.weight" not in tensor_names,
    )


_BLOCK_RE = re.compile(r"blk\.(\d+)\.")


def check_against_tensors(config: LlamaConfig, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The header must describe the tensor table: ValueError naming the first disagreement.

    block_count is bounded by the blocks present *before* any per-block list is made, so a
    hostile count costs nothing; then every required tensor must exist with its shape.
    """
    outside = [n for n in ("token_embd.weight", "output_norm.weight") if n not in shapes]
    if outside:
        raise ValueError(f"path: the file lacks tensor(s) {outside} required by the llama architecture")
    n_blocks = len({int(m.group(1)) for n in shapes if (m := _BLOCK_RE.match(n))})
    if config.n_layer > n_blocks:
        raise ValueError(f"path: llama.block_count = {config.n_layer}, but the file holds tensors of "
                         f"{n_blocks} block(s)")
    d, D = config.n_embd, config.head_dim
    embd = shapes["token_embd.weight"]
    if len(embd) != 2 or embd[1] != d:
        raise ValueError(f"path: tensor 'token_embd.weight' has shape {tuple(embd)}; llama.embedding_length = {d} "
                         f"needs (vocab, {d})")
    vocab = embd[0]
    expected = {"output_norm.weight": (d,)}
    if not config.tied_embeddings:
        expected["output.weight"] = (vocab, d)
    linear = {"attn_q": (config.n_head * D, d), "attn_k": (config.n_head_kv * D, d),
              "attn_v": (config.n_head_kv * D, d), "attn_output": (d, config.n_head * D),
              "ffn_gate": (config.n_ff, d), "ffn_up": (config.n_ff, d), "ffn_down": (d, config.n_ff)}
    for i in range(config.n_layer):  # n_layer <= the blocks present: bounded by the file's size
        expected.update({f"blk.{i}.{n}.weight": (d,) for n in NORM_NAMES})
        expected.update({f"blk.{i}.{n}.weight": s for n, s in linear.items()})
    missing = [n for n in expected if n not in shapes]
    if missing:
        raise ValueError(f"path: the file lacks tensor(s) {missing[:5]}{' ...' if len(missing) > 5 else ''} "
                         f"required by the {config.n_layer}-block llama architecture")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise ValueError(f"path: tensor {name!r} has shape {tuple(shapes[name])}; the header "
                             f"(embedding_length {d}, head_count {config.n_head}, head_count_kv "
                             f"{config.n_head_kv}, feed_forward_length {config.n_ff}) implies {shape}")
    if config.vocab_size > vocab:
        raise ValueError(f"path: the tokenizer has {config.vocab_size} tokens but token_embd.weight only "
                         f"{vocab} rows")


def _required_names(config: LlamaConfig) -> list[str]:
    names = ["token_embd.weight", "output_norm.weight"]
    for i in range(config.n_layer):
        names += block_tensor_names(i)
    if not config.tied_embeddings:
        names.append("output.weight")
    return names


@functools.lru_cache(maxsize=2)
def load_file(path: str, mtime: float) -> tuple[dict[str, Any], LlamaConfig, dict[str, np.ndarray]]:
    """(metadata, config, float32 weights) of the file ``file_key`` names; cached per (path, mtime).

    The file is mapped, every required tensor decoded once into its own array, and the mapping
    closed before returning. The arrays are read-only: every model of this file shares them.
    """
    with _open(path) as f:
        metadata, infos = dict(f.metadata), f.tensors
        config = config_from_metadata(metadata, set(infos))
        check_against_tensors(config, {n: t.shape for n, t in infos.items()})  # before sizing anything from it
        weights = {}
        for name in _required_names(config):
            w = _dequantize(infos[name].raw, infos[name].type)  # (out_features, in_features) or (n,) for a norm
            w.flags.writeable = False  # shared by every model loaded from this file
            weights[name] = w
    if config.vocab_size != weights["token_embd.weight"].shape[0]:
        config = dataclasses.replace(config, vocab_size=int(weights["token_embd.weight"].shape[0]))
    return metadata, config, weights


def load_weights(path: str | os.PathLike) -> tuple[dict[str, Any], LlamaConfig, dict[str, np.ndarray]]:
    """(metadata, config, float32 NumPy weights) of a GGUF file; read-only arrays, cached per file."""
    return load_file(*file_key(path))
