"""The backward pass of the Llama runtime: every op as a pair ``op_forward`` / ``op_backward``.

Each ``op_forward`` returns the op's output *and* an explicit cache (a NamedTuple of what the
backward reads); each ``op_backward`` maps the gradient of the loss with respect to the output
(``dy``, same shape as y) to the gradients with respect to the inputs. The outputs are those of
``refquant.model.llama``: where llama.py's function returns everything the backward needs we call
it (``rms_norm``, ``rope``, ``swiglu``); attention needs its probabilities, so
``attention_forward`` calls llama.attention's two halves (``attention_parts``, then
``attention_output``) and keeps the parts, ``p`` among them: the same GEMMs in the same order.

    op                         forward                                 backward
    embedding    h = E[t]                                  dE[t] += dh                (scatter-add)
    linear       y = x Wᵀ                                  dx = dy W,  dW = dyᵀ x
    RMSNorm      y = x r ⊙ g,  r = (mean x² + ε)^(−½)      dx = r (dy⊙g) − x r³ mean((dy⊙g)⊙x),
                                                           dg = Σ_t dy ⊙ x r
    RoPE         y = R_θ x  (a rotation per pair)          dx = R_θᵀ dy = R_{−θ} dy
    attention    S = q kᵀ/√D + M,  P = softmax(S),         dP = dO vᵀ,  dv = Pᵀ dO,
                 O = P v                                   dS = P ⊙ (dP − rowsum(dP ⊙ P)),
                                                           dq = dS k/√D,  dk = dSᵀ q/√D
    SwiGLU       m = silu(a) ⊙ u,  silu(a) = a σ(a)        da = dm ⊙ u ⊙ σ(a)(1 + a(1 − σ(a))),
                                                           du = dm ⊙ silu(a)
    head (tied)  z = RMSNorm(h) Eᵀ                         dx = dz E,  dE = dzᵀ x
    loss         L = (1/N) Σ_{t<N} lse(z_t) − z_t[t_{t+1}]   dz_t = (softmax(z_t) − onehot(t_{t+1}))/N

Symbols as in llama.py: T tokens, d width, H query heads, H_kv key/value heads (group = H/H_kv
query heads share one), D head width, N = T − 1 scored positions. Grouped-query attention sums
the gradients of the ``group`` query heads that read one key/value head into that head's dk, dv
(the stacked rows of the forward make this one GEMM).

A block is written over *linear layers as objects* (``Linear``: ``forward(x) -> (y, cache)``,
``backward(dy, cache) -> (dx, grads)``), so the same block backward runs dense weights
(``Dense``: grads = dW, checked against torch autograd) and LoRA on a frozen 4-bit base
(``refquant.qlora``: grads = (dA, dB), no dW at all).

Ref: Zhang & Sennrich 2019 (RMSNorm gradient); Dao et al. 2022 (FlashAttention, the softmax
backward dS = P ⊙ (dP − rowsum(dO ⊙ O)), identical to ours since rowsum(dP⊙P) = rowsum(dO⊙O));
llm.c (train_gpt2.c: one forward/backward pair per layer, caches explicit).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple, Protocol

import numpy as np

from .._backend import namespace, to_numpy
from .llama import AttentionParts, attention_output, attention_parts, rms_norm, rope, swiglu
from .loader import LINEAR_NAMES

__all__ = [
    "embedding_forward", "embedding_backward", "linear_forward", "linear_backward",
    "rms_norm_forward", "rms_norm_backward", "rope_forward", "rope_backward",
    "attention_forward", "attention_backward", "swiglu_forward", "swiglu_backward",
    "head_forward", "head_backward", "cross_entropy_forward", "cross_entropy_backward",
    "Linear", "Dense", "block_forward", "block_backward", "BlockCache", "BlockGrads",
    "loss_and_grads", "LossAndGrads",
]


# --------------------------------------------------------------------------------------
# Embedding, linear
# --------------------------------------------------------------------------------------


class EmbeddingCache(NamedTuple):
    ids: np.ndarray  # (T,) int64
    vocab: int


def embedding_forward(E: Any, ids: Any) -> tuple[Any, EmbeddingCache]:
    """h = E[ids] (LlamaModel.embed's gather).   E: (vocab, d), ids: (T,) -> (T, d)"""
    xp = namespace(E)
    ids_np = np.asarray(ids, dtype=np.int64).reshape(-1)
    h = xp.take(E, xp.asarray(ids_np), axis=0)  # (T, d)
    return h, EmbeddingCache(ids_np, int(E.shape[0]))


def embedding_backward(dh: Any, cache: EmbeddingCache) -> np.ndarray:
    """dE[v] = Σ_{t: ids_t = v} dh_t (a token seen twice gets both rows).   (T, d) -> (vocab, d)

    A scatter-add, which the array API does not have: NumPy's ``np.add.at`` at the edge.
    """
    dh = to_numpy(dh)
    dE = np.zeros((cache.vocab, dh.shape[1]), dtype=dh.dtype)  # (vocab, d)
    np.add.at(dE, cache.ids, dh)
    return dE


class LinearCache(NamedTuple):
    x: Any  # (T, in)


def linear_forward(x: Any, W: Any) -> tuple[Any, LinearCache]:  # [T, in], [out, in] -> [T, out]
    """y = x Wᵀ (llama._linear)."""
    xp = namespace(x)
    return xp.matmul(x, xp.matrix_transpose(W)), LinearCache(x)


class LinearGrads(NamedTuple):
    dx: Any  # (T, in)
    dW: Any  # (out, in)


def linear_backward(dy: Any, W: Any, cache: LinearCache) -> LinearGrads:  # [T, out] -> [T, in], [out, in]
    """dx = dy W, dW = dyᵀ x."""
    xp = namespace(dy)
    return LinearGrads(xp.matmul(dy, W), xp.matmul(xp.matrix_transpose(dy), cache.x))


# --------------------------------------------------------------------------------------
# RMSNorm, RoPE, SwiGLU
# --------------------------------------------------------------------------------------


class RMSNormCache(NamedTuple):
    x: Any  # (T, d)
    g: Any  # (d,)
    r: Any  # (T, 1)  1/√(mean x² + ε)


def rms_norm_forward(x: Any, g: Any, eps: float) -> tuple[Any, RMSNormCache]:  # [T, d], [d] -> [T, d]
    """y = llama.rms_norm(x, g, eps) = x r ⊙ g, caching r = 1/√(mean(x²) + ε)."""
    xp = namespace(x)
    r = 1.0 / xp.sqrt(xp.mean(x * x, axis=-1, keepdims=True) + eps)  # (T, 1)
    return rms_norm(x, g, eps), RMSNormCache(x, g, r)


class RMSNormGrads(NamedTuple):
    dx: Any  # (T, d)
    dg: Any  # (d,)


def rms_norm_backward(dy: Any, cache: RMSNormCache) -> RMSNormGrads:
    """dx = r ĝ − x r³ mean(ĝ ⊙ x),  ĝ = dy ⊙ g;   dg = Σ_t dy ⊙ x r.

    From ∂r/∂x_j = −r³ x_j / d: the second term is the gradient through the shared r.
    """
    xp = namespace(dy)
    x, g, r = cache
    dyg = dy * g  # (T, d)
    dx = r * dyg - x * (r * r * r) * xp.mean(dyg * x, axis=-1, keepdims=True)  # (T, d)
    dg = xp.sum(dy * (x * r), axis=0)  # (d,)
    return RMSNormGrads(dx, dg)


def rope_forward(x: Any, cos: Any, sin: Any) -> Any:
    """llama.rope: y = R_θ x, pairs (2j, 2j+1) rotated by pos·θ_j.   (T, H, D) -> (T, H, D)

    No cache: the backward needs only the angles, which the caller holds.
    """
    return rope(x, cos, sin)


def rope_backward(dy: Any, cos: Any, sin: Any) -> Any:
    """dx = R_θᵀ dy = R_{−θ} dy: the same rotation with sin negated (a rotation is orthogonal).

        dx_2j = dy_2j cos + dy_2j+1 sin,   dx_2j+1 = −dy_2j sin + dy_2j+1 cos
    """
    return rope(dy, cos, -sin)


class SwiGLUCache(NamedTuple):
    a: Any  # (T, n_ff) gate pre-activation
    u: Any  # (T, n_ff) up projection


def swiglu_forward(a: Any, u: Any) -> tuple[Any, SwiGLUCache]:
    """m = llama.swiglu(a, u) = silu(a) ⊙ u.   (T, n_ff) x2 -> (T, n_ff)"""
    return swiglu(a, u), SwiGLUCache(a, u)


class SwiGLUGrads(NamedTuple):
    da: Any
    du: Any


def swiglu_backward(dm: Any, cache: SwiGLUCache) -> SwiGLUGrads:
    """da = dm ⊙ u ⊙ σ(a)(1 + a(1 − σ(a))),  du = dm ⊙ silu(a)."""
    xp = namespace(dm)
    a, u = cache
    sig = 1.0 / (1.0 + xp.exp(-a))  # (T, n_ff)
    silu = a * sig
    return SwiGLUGrads(dm * u * (sig * (1.0 + a * (1.0 - sig))), dm * silu)


# --------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------


AttentionCache = AttentionParts  # q, k, v stacked per key/value head and P: what the backward needs


def attention_forward(q: Any, k: Any, v: Any) -> tuple[Any, AttentionCache]:
    """llama.attention, keeping its stacked operands and P.   (T,H,D), (T,H_kv,D) x2 -> (T,H,D)"""
    parts = attention_parts(q, k, v)
    return attention_output(parts, q.shape[1]), parts


class AttentionGrads(NamedTuple):
    dq: Any  # (T, H, D)
    dk: Any  # (T, H_kv, D)
    dv: Any  # (T, H_kv, D)


def attention_backward(dout: Any, cache: AttentionCache) -> AttentionGrads:
    """dP = dO vᵀ, dv = Pᵀ dO, dS = P ⊙ (dP − rowsum(dP ⊙ P)), dq = dS k/√D, dk = dSᵀ q/√D.

    The mask needs no term of its own: P = 0 above the diagonal makes dS = 0 there. The
    ``group`` query heads of one key/value head are rows of one matrix, so Pᵀ dO and dSᵀ q
    already sum their contributions to dv and dk.
    """
    xp = namespace(dout)
    q, k, v, p = cache
    T, H, D = dout.shape
    H_kv = k.shape[0]
    c = 1.0 / math.sqrt(D)
    dO = xp.reshape(xp.permute_dims(dout, (1, 0, 2)), (H_kv, (H // H_kv) * T, D))  # (H_kv, group·T, D)
    dP = xp.matmul(dO, xp.matrix_transpose(v))  # (H_kv, group·T, T)
    dv = xp.matmul(xp.matrix_transpose(p), dO)  # (H_kv, T, D)
    dS = p * (dP - xp.sum(dP * p, axis=-1, keepdims=True)) * c  # (H_kv, group·T, T), scale folded in
    dq = xp.matmul(dS, k)  # (H_kv, group·T, D)
    dk = xp.matmul(xp.matrix_transpose(dS), q)  # (H_kv, T, D)
    dq = xp.permute_dims(xp.reshape(dq, (H, T, D)), (1, 0, 2))  # (T, H, D)
    return AttentionGrads(dq, xp.permute_dims(dk, (1, 0, 2)), xp.permute_dims(dv, (1, 0, 2)))


# --------------------------------------------------------------------------------------
# Output head and loss
# --------------------------------------------------------------------------------------


class HeadCache(NamedTuple):
    norm: RMSNormCache
    x: Any  # (T, d) normed input of the projection
    W_out: Any  # (vocab, d): token_embd.weight when tied


def head_forward(h: Any, g_out: Any, W_out: Any, eps: float) -> tuple[Any, HeadCache]:
    """z = RMSNorm(h) ⊙ g_out W_outᵀ (LlamaModel.head; W_out = E when tied).   (T, d) -> (T, vocab)"""
    x, norm = rms_norm_forward(h, g_out, eps)  # (T, d)
    z, _ = linear_forward(x, W_out)  # (T, vocab)
    return z, HeadCache(norm, x, W_out)


class HeadGrads(NamedTuple):
    dh: Any  # (T, d)
    dg_out: Any  # (d,)
    dW_out: Any  # (vocab, d) or None; with tied weights add it to the embedding's dE


def head_backward(dz: Any, cache: HeadCache, weight_grad: bool = True) -> HeadGrads:
    """dx = dz W_out, dW_out = dzᵀ x (skipped when ``weight_grad`` is False: a frozen head)."""
    xp = namespace(dz)
    dx = xp.matmul(dz, cache.W_out)  # (T, d)
    dW = xp.matmul(xp.matrix_transpose(dz), cache.x) if weight_grad else None  # (vocab, d)
    dh, dg = rms_norm_backward(dx, cache.norm)
    return HeadGrads(dh, dg, dW)


class CrossEntropyCache(NamedTuple):
    p: Any  # (N, vocab) softmax of the scored rows
    targets: np.ndarray  # (N,) int64
    T: int


def cross_entropy_forward(z: Any, tokens: Any) -> tuple[float, CrossEntropyCache]:
    """L = (1/N) Σ_t lse(z_t) − z_t[tokens_{t+1}], t = 0..N−1, N = T − 1.   z: (T, vocab) -> scalar

    The mean next-token NLL of ``refquant.model.ppl`` (protocol "all"): log-sum-exp in the
    logits' dtype after subtracting the row maximum, the N terms summed in float64.
    """
    xp = namespace(z)
    targets = np.asarray(tokens, dtype=np.int64).reshape(-1)[1:]  # (N,)
    N = targets.shape[0]
    rows = z[:N, :]  # (N, vocab)
    m = xp.max(rows, axis=-1, keepdims=True)  # (N, 1)
    e = xp.exp(rows - m)  # (N, vocab)
    total = xp.sum(e, axis=-1, keepdims=True)  # (N, 1)
    lse = to_numpy(m[:, 0] + xp.log(total[:, 0])).astype(np.float64)  # (N,)
    picked = to_numpy(rows)[np.arange(N), targets].astype(np.float64)  # (N,)
    loss = float(np.sum(lse - picked) / N)
    return loss, CrossEntropyCache(e / total, targets, int(z.shape[0]))


def cross_entropy_backward(cache: CrossEntropyCache) -> Any:
    """dz_t = (softmax(z_t) − onehot(tokens_{t+1})) / N for t < N, and 0 for the last row."""
    xp = namespace(cache.p)
    p, targets, T = cache
    N, V = p.shape
    d = to_numpy(p).copy()  # (N, vocab); the scattered −1 is a NumPy-edge index assignment
    d[np.arange(N), targets] -= 1.0
    d /= N
    dz = np.concatenate([d, np.zeros((T - N, V), dtype=d.dtype)])  # (T, vocab)
    return xp.asarray(dz)


# --------------------------------------------------------------------------------------
# One block over linear-layer objects
# --------------------------------------------------------------------------------------


class Linear(Protocol):
    """A linear layer y = f(x) with its own backward: ``grads`` is whatever it trains (or None)."""

    def forward(self, x: Any) -> tuple[Any, Any]: ...

    def backward(self, dy: Any, cache: Any) -> tuple[Any, Any]: ...


class Dense:
    """y = x Wᵀ with a trainable W: backward returns (dx, dW)."""

    def __init__(self, W: Any):
        self.W = W

    def forward(self, x: Any) -> tuple[Any, LinearCache]:
        return linear_forward(x, self.W)

    def backward(self, dy: Any, cache: LinearCache) -> tuple[Any, Any]:
        dx, dW = linear_backward(dy, self.W, cache)
        return dx, dW


class BlockCache(NamedTuple):
    attn_norm: RMSNormCache
    ffn_norm: RMSNormCache
    linear: dict  # kind -> that layer's cache
    attn: AttentionCache
    mlp: SwiGLUCache
    cos: Any
    sin: Any


def block_forward(h: Any, g_attn: Any, g_ffn: Any, linears: Mapping[str, Linear], n_head: int, n_head_kv: int,
                  eps: float, cos: Any, sin: Any) -> tuple[Any, BlockCache]:
    """LlamaModel.block, op by op, caching each op's inputs.   h: (T, d) -> (T, d)

    linears: {"attn_q": Linear, ... "ffn_down": Linear} (the kinds of loader.LINEAR_NAMES).
    """
    xp = namespace(h)
    T, d = h.shape
    D = d // n_head
    lin = {}

    def apply(kind: str, x: Any) -> Any:
        y, lin[kind] = linears[kind].forward(x)
        return y

    x, attn_norm = rms_norm_forward(h, g_attn, eps)  # (T, d)
    q = xp.reshape(apply("attn_q", x), (T, n_head, D))  # (T, H, D)
    k = xp.reshape(apply("attn_k", x), (T, n_head_kv, D))  # (T, H_kv, D)
    v = xp.reshape(apply("attn_v", x), (T, n_head_kv, D))  # (T, H_kv, D)
    a, attn = attention_forward(rope_forward(q, cos, sin), rope_forward(k, cos, sin), v)  # (T, H, D)
    h = h + apply("attn_output", xp.reshape(a, (T, n_head * D)))  # (T, d)

    x, ffn_norm = rms_norm_forward(h, g_ffn, eps)  # (T, d)
    m, mlp = swiglu_forward(apply("ffn_gate", x), apply("ffn_up", x))  # (T, n_ff)
    h = h + apply("ffn_down", m)  # (T, d)
    return h, BlockCache(attn_norm, ffn_norm, lin, attn, mlp, cos, sin)


class BlockGrads(NamedTuple):
    dh: Any  # (T, d) gradient w.r.t. the block's input
    dg_attn: Any  # (d,)
    dg_ffn: Any  # (d,)
    linear: dict  # kind -> that layer's grads (dW for Dense, (dA, dB) for LoRA, None if frozen)


def block_backward(dh: Any, cache: BlockCache, linears: Mapping[str, Linear]) -> BlockGrads:
    """The block's backward, ops in reverse; the residual adds pass dh through unchanged."""
    xp = namespace(dh)
    T, d = dh.shape
    grads = {}

    def back(kind: str, dy: Any) -> Any:
        dx, grads[kind] = linears[kind].backward(dy, cache.linear[kind])
        return dx

    # h_out = h_mid + down(swiglu(gate(x), up(x))),  x = RMSNorm(h_mid)
    dm = back("ffn_down", dh)  # (T, n_ff)
    da, du = swiglu_backward(dm, cache.mlp)
    dx = back("ffn_gate", da) + back("ffn_up", du)  # (T, d)
    dx_mid, dg_ffn = rms_norm_backward(dx, cache.ffn_norm)
    dh_mid = dh + dx_mid  # (T, d)

    # h_mid = h + o(attention(rope(q(x)), rope(k(x)), v(x))),  x = RMSNorm(h)
    H_kv, _, D = cache.attn.k.shape
    H = cache.attn.q.shape[1] // T * H_kv
    da = xp.reshape(back("attn_output", dh_mid), (T, H, D))  # (T, H, D)
    dq, dk, dv = attention_backward(da, cache.attn)
    dq = xp.reshape(rope_backward(dq, cache.cos, cache.sin), (T, H * D))  # (T, d)
    dk = xp.reshape(rope_backward(dk, cache.cos, cache.sin), (T, H_kv * D))  # (T, H_kv·D)
    dx = back("attn_q", dq) + back("attn_k", dk) + back("attn_v", xp.reshape(dv, (T, H_kv * D)))  # (T, d)
    dx_in, dg_attn = rms_norm_backward(dx, cache.attn_norm)
    return BlockGrads(dh_mid + dx_in, dg_attn, dg_ffn, grads)


# --------------------------------------------------------------------------------------
# The whole model: mean next-token NLL and its gradients
# --------------------------------------------------------------------------------------


class LossAndGrads(NamedTuple):
    loss: float
    linear: dict  # "blk.{i}.{kind}.weight" -> that layer's grads
    norms: dict  # "blk.{i}.attn_norm.weight", ..., "output_norm.weight" -> (d,)
    embedding: Any  # (vocab, d) dE (embedding + tied head), or None when not asked for


def loss_and_grads(model: Any, tokens: Any, linears: Callable[[int], Mapping[str, Linear]] | None = None,
                   cos: Any = None, sin: Any = None, embedding_grad: bool = True, h: Any = None,
                   first_block: int = 0) -> LossAndGrads:
    """The mean NLL of tokens[1:] under ``model`` and its gradient w.r.t. every parameter.

    model: a LlamaModel (its config and its weights dict: embedding, norms, head — any float
    dtype); linears(i): block i's linear layers (default: ``Dense`` over model.weights, grads dW).
    cos, sin: RoPE angles (default: model.angles(T), float32). Blocks are run forward one by one
    keeping each block's cache, then backward in reverse.
    h, first_block: start from the hidden state h (T, d) entering block ``first_block`` (the
    blocks before it are taken as frozen: no gradient reaches them, nor the embedding).
    """
    if h is not None and embedding_grad:
        raise ValueError("embedding_grad: no embedding gradient when starting from a hidden state h")
    c, w = model.config, model.weights
    if linears is None:
        def linears(i: int) -> dict:
            return {kind: Dense(w[f"blk.{i}.{kind}.weight"]) for kind in LINEAR_NAMES}
    ids = np.asarray(tokens, dtype=np.int64).reshape(-1)
    if cos is None:
        cos, sin = model.angles(ids.shape[0])

    if h is None:
        h, embed_cache = embedding_forward(w["token_embd.weight"], ids)  # (T, d)
    blocks = range(first_block, c.n_layer)
    caches, layers = {}, {}
    for i in blocks:
        layers[i] = linears(i)
        h, caches[i] = block_forward(h, w[f"blk.{i}.attn_norm.weight"], w[f"blk.{i}.ffn_norm.weight"], layers[i],
                                     c.n_head, c.n_head_kv, c.rms_eps, cos, sin)
    W_out = w.get("output.weight", w["token_embd.weight"])
    z, head_cache = head_forward(h, w["output_norm.weight"], W_out, c.rms_eps)  # (T, vocab)
    loss, ce_cache = cross_entropy_forward(z, ids)

    dz = cross_entropy_backward(ce_cache)  # (T, vocab)
    head = head_backward(dz, head_cache, weight_grad=embedding_grad)
    norms = {"output_norm.weight": head.dg_out}
    grads_linear = {}
    dh = head.dh
    for i in reversed(blocks):
        g = block_backward(dh, caches[i], layers[i])
        caches[i] = None  # free block i's activations as soon as they are used
        dh = g.dh
        norms[f"blk.{i}.attn_norm.weight"], norms[f"blk.{i}.ffn_norm.weight"] = g.dg_attn, g.dg_ffn
        grads_linear.update({f"blk.{i}.{kind}.weight": grad for kind, grad in g.linear.items()})
    dE = None
    if embedding_grad:
        dE = embedding_backward(dh, embed_cache)
        if "output.weight" not in w:
            dE = dE + to_numpy(head.dW_out)  # tied: the head's gradient lands on the same matrix
    return LossAndGrads(loss, grads_linear, norms, dE)
