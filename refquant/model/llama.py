"""The Llama forward pass, in array-API calls (NumPy, torch, CuPy ...), one window at a time.

    h⁰ = E[t]                                                 embedding      (T, d)
    for each block i:
        x  = RMSNorm(h) ⊙ g_attn                              (T, d)
        q, k, v = x W_qᵀ, x W_kᵀ, x W_vᵀ                      (T, n_head·D), (T, n_kv·D) ×2
        q, k = RoPE(q), RoPE(k)                               rotate pairs (2j, 2j+1) by pos·θ_j
        a  = softmax(q kᵀ / √D + causal mask) v               grouped-query attention, per head
        h  = h + a W_oᵀ
        x  = RMSNorm(h) ⊙ g_ffn
        h  = h + (silu(x W_gateᵀ) ⊙ x W_upᵀ) W_downᵀ           SwiGLU MLP
    logits = RMSNorm(h) ⊙ g_out  Eᵀ                           tied output projection (T, vocab)

Symbols: T tokens, d = n_embd, D = d / n_head head width, n_kv key/value heads
(query head h reads key/value head ⌊h / (n_head/n_kv)⌋), θ_j = base^(−2j/n_rot).
Every weight is float32, so the matmuls are float32 GEMMs. llama.cpp computes the same
graph with quantized dot products (4-bit weights × 8-bit activations), so its logits
differ from these by the activation rounding; see tests/test_model_llama_cpp.py.

Ref: Touvron et al. 2023 (LLaMA); Zhang & Sennrich 2019 (RMSNorm); Su et al. 2021 (RoPE);
Ainslie et al. 2023 (GQA); Shazeer 2020 (SwiGLU); llama.cpp src/llama-model.cpp
(``llm_build_llama``) and ggml/src/ggml-cpu/ops.cpp (``ggml_compute_forward_rms_norm_f32``,
``rope_yarn`` with ext_factor 0, ``GGML_ROPE_TYPE_NORM``); picoGPT for the shape of it.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from .._backend import from_numpy, namespace
from .loader import LINEAR_NAMES, LlamaConfig, file_key, load_file
from .tokenizer import Tokenizer

__all__ = ["LlamaModel", "load_model", "rms_norm", "rope", "attention", "swiglu", "rope_angles"]

Capture = Callable[[str, Any], None]


def rms_norm(x: Any, g: Any, eps: float) -> Any:
    """RMSNorm: y = x / √(mean(x²) + ε) ⊙ g, over the last axis.   x: (T, d), g: (d,) -> (T, d)"""
    xp = namespace(x)
    ms = xp.mean(x * x, axis=-1, keepdims=True)  # (T, 1)
    return x / xp.sqrt(ms + eps) * g


def rope_angles(T: int, n_rot: int, base: float, xp: Any = np, like: Any = None) -> tuple[Any, Any]:
    """cos and sin of pos·θ_j, θ_j = base^(−2j/n_rot), pos = 0..T−1:  -> (T, 1, n_rot/2) each.

    Angles are computed in float64 and rounded once to float32 (llama.cpp multiplies θ by
    base^(−2/n_rot) step by step in float32: the two differ in the last bits of cos/sin).
    """
    j = np.arange(n_rot // 2, dtype=np.float64)
    theta = base ** (-2.0 * j / n_rot)  # (n_rot/2,)
    angle = np.arange(T, dtype=np.float64)[:, None] * theta[None, :]  # (T, n_rot/2)
    cos = from_numpy(np.cos(angle).astype(np.float32)[:, None, :], like=like, xp=xp)  # (T, 1, n_rot/2)
    sin = from_numpy(np.sin(angle).astype(np.float32)[:, None, :], like=like, xp=xp)
    return cos, sin


def rope(x: Any, cos: Any, sin: Any) -> Any:
    """Rotate adjacent pairs (x_2j, x_2j+1) of every head by the angle pos·θ_j.

        y_2j   = x_2j cos − x_2j+1 sin
        y_2j+1 = x_2j sin + x_2j+1 cos

    x: (T, H, D), cos/sin: (T, 1, D/2) -> (T, H, D). This is llama.cpp's "normal" RoPE
    (adjacent pairs); the GGUF converter permuted W_q, W_k rows so that it equals the
    Hugging Face rotate-half form on the original weights. n_rot = D here.
    """
    xp = namespace(x)
    T, H, D = x.shape
    pairs = xp.reshape(x, (T, H, D // 2, 2))  # (T, H, D/2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]  # (T, H, D/2) each
    y0 = x0 * cos - x1 * sin
    y1 = x0 * sin + x1 * cos
    return xp.reshape(xp.stack([y0, y1], axis=-1), (T, H, D))  # (T, H, D)


class AttentionParts(NamedTuple):
    """The operands of causal GQA with the query heads of each key/value head stacked as rows."""

    q: Any  # (H_kv, group·T, D) query rows, ``group`` = H / H_kv heads per key/value head
    k: Any  # (H_kv, T, D), contiguous for the GEMM
    v: Any  # (H_kv, T, D)
    p: Any  # (H_kv, group·T, T) softmax probabilities, 0 above the diagonal


def attention_parts(q: Any, k: Any, v: Any) -> AttentionParts:
    """P = softmax(q kᵀ/√D + M) per key/value head, the operands stacked (see ``attention``).

    q: (T, H, D), k, v: (T, H_kv, D). The backward pass (refquant.model.backward) keeps these.
    """
    xp = namespace(q)
    T, H, D = q.shape
    H_kv = k.shape[1]
    group = H // H_kv
    q = xp.reshape(xp.permute_dims(q, (1, 0, 2)), (H_kv, group * T, D))  # (H_kv, group·T, D)
    k = xp.asarray(xp.permute_dims(k, (1, 0, 2)), copy=True)  # (H_kv, T, D), contiguous for the GEMM
    v = xp.asarray(xp.permute_dims(v, (1, 0, 2)), copy=True)  # (H_kv, T, D)
    scores = xp.matmul(q, xp.matrix_transpose(k)) * (1.0 / math.sqrt(D))  # (H_kv, group·T, T)
    scores = xp.reshape(scores, (H_kv, group, T, T))  # (H_kv, group, T, T)
    future = xp.triu(xp.ones((T, T), dtype=xp.bool, device=_device(q)), k=1)  # (T, T): key after query
    scores = xp.where(future, -xp.inf, scores)
    scores = scores - xp.max(scores, axis=-1, keepdims=True)
    p = xp.exp(scores)
    p = p / xp.sum(p, axis=-1, keepdims=True)  # (H_kv, group, T, T), rows sum to 1
    return AttentionParts(q, k, v, xp.reshape(p, (H_kv, group * T, T)))


def attention_output(parts: AttentionParts, n_head: int) -> Any:
    """P v, the stacked rows laid back out per query head.   -> (T, H, D)"""
    xp = namespace(parts.p)
    H_kv, _, T = parts.p.shape
    D = parts.v.shape[-1]
    out = xp.matmul(parts.p, parts.v)  # (H_kv, group·T, D)
    return xp.permute_dims(xp.reshape(out, (n_head, T, D)), (1, 0, 2))  # (T, H, D)


def attention(q: Any, k: Any, v: Any) -> Any:
    """Causal grouped-query attention: softmax(q kᵀ/√D + M) v for every query head.

    q: (T, H, D), k, v: (T, H_kv, D) -> (T, H, D). Query head h uses key/value head
    h // (H / H_kv) (ggml's broadcast in ``ggml_mul_mat``). M is 0 on and below the
    diagonal and −∞ above: token t attends to tokens 0..t.

    The ``group`` query heads sharing a key/value head are stacked as extra rows, so each
    key/value head costs one (group·T, D) × (D, T) GEMM (a broadcast batch dimension
    instead makes NumPy's matmul several times slower).
    """
    return attention_output(attention_parts(q, k, v), q.shape[1])


def swiglu(gate: Any, up: Any) -> Any:
    """silu(gate) ⊙ up, silu(x) = x·σ(x) = x / (1 + e^(−x)).   (T, n_ff) -> (T, n_ff)"""
    xp = namespace(gate)
    return gate / (1.0 + xp.exp(-gate)) * up


def _device(x: Any) -> Any:
    from .._backend import device

    return device(x)


def _linear(x: Any, W: Any) -> Any:
    """y = x Wᵀ.   x: (T, in), W: (out, in) -> (T, out)"""
    xp = namespace(x)
    return xp.matmul(x, xp.matrix_transpose(W))


class LlamaModel:
    """A Llama model held as float32 arrays of one namespace; see the module docstring.

    config: LlamaConfig; weights: {GGUF tensor name: array}, linear weights (out, in);
    tokenizer: Tokenizer (None for a model built from bare weights).
    """

    def __init__(self, config: LlamaConfig, weights: Mapping[str, Any], tokenizer: Tokenizer | None = None,
                 metadata: Mapping[str, Any] | None = None):
        self.config = config
        self.weights = dict(weights)
        self.tokenizer = tokenizer
        self.metadata = metadata if metadata is not None else {}
        self.xp = namespace(self.weights["token_embd.weight"])
        self._angles: dict[int, tuple[Any, Any]] = {}

    # --- text ---------------------------------------------------------------------------
    def tokenize(self, text: str, add_bos: bool | None = None) -> list[int]:
        """Token ids as llama.cpp's ``llama_tokenize`` (BOS as the file says, specials as text)."""
        return self._tok().encode(text, add_bos=add_bos)

    def detokenize(self, tokens) -> str:
        return self._tok().decode([int(t) for t in np.asarray(tokens).reshape(-1)])

    def _tok(self) -> Tokenizer:
        if self.tokenizer is None:
            raise ValueError("model: this model has no tokenizer (built without GGUF metadata)")
        return self.tokenizer

    # --- the forward pass ------------------------------------------------------------------
    def embed(self, tokens: Any) -> Any:
        """h⁰ = E[tokens].   tokens: (T,) ints (list, NumPy or xp) -> (T, d)"""
        xp = self.xp
        E = self.weights["token_embd.weight"]  # (vocab, d)
        ids = np.asarray(tokens) if not hasattr(tokens, "__array_namespace__") else tokens
        ids_np = np.asarray(ids) if isinstance(ids, (np.ndarray, list, tuple)) else None
        if ids_np is not None:
            if ids_np.ndim != 1 or ids_np.size == 0 or ids_np.dtype.kind not in "iu":
                raise ValueError(f"tokens: expected a non-empty 1-D sequence of integer ids, got shape "
                                 f"{ids_np.shape} dtype {ids_np.dtype}")
            if ids_np.min() < 0 or ids_np.max() >= self.config.vocab_size:
                raise ValueError(f"tokens: ids must lie in 0..{self.config.vocab_size - 1}, "
                                 f"got {int(ids_np.min())}..{int(ids_np.max())}")
            ids = from_numpy(ids_np.astype(np.int64), like=E)
        return xp.take(E, ids, axis=0)  # (T, d)

    def angles(self, T: int) -> tuple[Any, Any]:
        """RoPE cos, sin for positions 0..T−1 (cached per T): (T, 1, n_rot/2) each."""
        if T not in self._angles:
            c = self.config
            self._angles[T] = rope_angles(T, c.n_rot, c.rope_base, xp=self.xp, like=self.weights["token_embd.weight"])
        return self._angles[T]

    def block(self, i: int, h: Any, capture: Capture | None = None) -> Any:
        """Block i: h -> h + attention(RMSNorm(h)) -> h + MLP(RMSNorm(h)).   (T, d) -> (T, d)

        ``capture(name, x)``, if given, is called with the input x (T, in_features) of each
        linear layer of the block, ``name`` its GGUF weight name ('blk.{i}.attn_q.weight' ...).
        """
        if not 0 <= i < self.config.n_layer:
            raise ValueError(f"i: block index must lie in 0..{self.config.n_layer - 1}, got {i}")
        xp, c, w = self.xp, self.config, self.weights
        W = {n: w[f"blk.{i}.{n}.weight"] for n in LINEAR_NAMES}
        T, D = h.shape[0], c.head_dim
        see = capture or (lambda name, x: None)
        cos, sin = self.angles(T)

        x = rms_norm(h, w[f"blk.{i}.attn_norm.weight"], c.rms_eps)  # (T, d)
        for n in ("attn_q", "attn_k", "attn_v"):
            see(f"blk.{i}.{n}.weight", x)
        q = xp.reshape(_linear(x, W["attn_q"]), (T, c.n_head, D))  # (T, n_head, D)
        k = xp.reshape(_linear(x, W["attn_k"]), (T, c.n_head_kv, D))  # (T, n_kv, D)
        v = xp.reshape(_linear(x, W["attn_v"]), (T, c.n_head_kv, D))  # (T, n_kv, D)
        a = attention(rope(q, cos, sin), rope(k, cos, sin), v)  # (T, n_head, D)
        a = xp.reshape(a, (T, c.n_head * D))  # (T, d)
        see(f"blk.{i}.attn_output.weight", a)
        h = h + _linear(a, W["attn_output"])  # (T, d)

        x = rms_norm(h, w[f"blk.{i}.ffn_norm.weight"], c.rms_eps)  # (T, d)
        see(f"blk.{i}.ffn_gate.weight", x)
        see(f"blk.{i}.ffn_up.weight", x)
        m = swiglu(_linear(x, W["ffn_gate"]), _linear(x, W["ffn_up"]))  # (T, n_ff)
        see(f"blk.{i}.ffn_down.weight", m)
        return h + _linear(m, W["ffn_down"])  # (T, d)

    def head(self, h: Any) -> Any:
        """logits = RMSNorm(h) ⊙ g_out Eᵀ (tied) or W_outᵀ.   (T, d) -> (T, vocab)"""
        x = rms_norm(h, self.weights["output_norm.weight"], self.config.rms_eps)  # (T, d)
        W_out = self.weights.get("output.weight", self.weights["token_embd.weight"])  # (vocab, d)
        return _linear(x, W_out)  # (T, vocab)

    def forward(self, tokens: Any, capture: Capture | None = None) -> Any:
        """Logits of every position of one window.   tokens: (T,) -> (T, vocab) float32"""
        h = self.embed(tokens)  # (T, d)
        for i in range(self.config.n_layer):
            h = self.block(i, h, capture)  # (T, d)
        return self.head(h)  # (T, vocab)

    __call__ = forward

    # --- weight swapping ---------------------------------------------------------------------
    def with_weights(self, replacements: Mapping[str, Any]) -> "LlamaModel":
        """A model sharing every weight except ``replacements`` {GGUF name: array of the same shape}.

        Typical use: W -> dequantize(quantize(W)) for some layers, to measure a method with
        the same forward pass. Arrays are moved to this model's namespace and cast to float32
        where they are not already; a float32 array of the namespace is shared, not copied
        (so a block-by-block driver hands each new weight over once).
        """
        new = dict(self.weights)
        like = self.weights["token_embd.weight"]
        for name, value in replacements.items():
            if name not in self.weights:
                raise ValueError(f"replacements: unknown weight {name!r}; expected a GGUF tensor name "
                                 f"such as 'blk.0.attn_q.weight'")
            old_shape = tuple(self.weights[name].shape)
            if tuple(value.shape) != old_shape:
                raise ValueError(f"replacements[{name!r}]: shape {tuple(value.shape)} differs from {old_shape}")
            if namespace(value) is not self.xp:
                from .._backend import to_numpy

                value = from_numpy(to_numpy(value), like=like, xp=self.xp)
            new[name] = self.xp.astype(value, self.xp.float32, copy=False)
        model = LlamaModel(self.config, new, self.tokenizer, self.metadata)
        model._angles = self._angles
        return model

    def linear_names(self) -> list[str]:
        """GGUF names of every linear weight in the blocks, block by block."""
        return [f"blk.{i}.{n}.weight" for i in range(self.config.n_layer) for n in LINEAR_NAMES]


def load_model(path: str | os.PathLike | None = None, xp: Any = None) -> LlamaModel:
    """A ``LlamaModel`` from a GGUF file (default: the shipped SmolLM2-135M-Instruct Q4_1).

    Weights are decoded once per file to float32 NumPy (cached, read-only, shared by every
    NumPy model of that file), then moved to namespace ``xp`` (e.g. ``array_api_compat.torch``,
    ``cupy``) if given: one copy per weight, the device transfer or, where ``xp`` would
    share the host buffer (NumPy, torch on the CPU), a writable copy of its own.
    Raises FileNotFoundError, ValueError (not GGUF, unsupported architecture, missing tensor).
    """
    if path is None:
        from .._data import smollm2_path

        path = smollm2_path()
    path, mtime = file_key(path)
    metadata, config, weights = load_file(path, mtime)
    if xp is not None:
        weights = {name: _moved(w, xp) for name, w in weights.items()}
    return LlamaModel(config, weights, _tokenizer(path, mtime), metadata)


def _moved(w: np.ndarray, xp: Any) -> Any:
    """A cached read-only weight on namespace xp, copied exactly once."""
    moved = from_numpy(w, xp=xp)
    try:
        shared = np.shares_memory(np.asarray(moved), w)
    except (TypeError, ValueError, RuntimeError):  # a GPU array: the transfer was the copy
        shared = False
    return xp.asarray(moved, copy=True) if shared else moved


@functools.lru_cache(maxsize=2)  # keyed on the file, as load_file's weights: (absolute path, mtime)
def _tokenizer(path: str, mtime: float) -> Tokenizer | None:
    metadata = load_file(path, mtime)[0]
    if "tokenizer.ggml.tokens" not in metadata:
        return None
    return Tokenizer.from_metadata(metadata)
