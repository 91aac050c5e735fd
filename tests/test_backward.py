"""refquant.model.backward: every op's backward against torch autograd (float64, 1e-10 relative)
and against central finite differences; the cached forwards equal llama.py's; a whole tiny
Llama (GQA, tied head) end to end against torch autograd.

The torch versions below are the slow obvious forwards (one line of maths each); autograd
differentiates them, so the oracle shares no backward formula with refquant.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from refquant.model import backward as bw
from refquant.model import llama
from refquant.model.loader import LINEAR_NAMES, LlamaConfig

torch = pytest.importorskip("torch")

RTOL = 1e-10  # float64: the two sides differ only by summation order


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def t(a, grad=True):
    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def vjp(f, inputs, dy):
    """torch autograd: gradients of Σ f(inputs) ⊙ dy w.r.t. every input (NumPy float64)."""
    ts = [t(x) for x in inputs]
    (f(*ts) * torch.tensor(dy)).sum().backward()
    return [x.grad.numpy() for x in ts]


# --- slow obvious torch forwards -------------------------------------------------------------
def t_rms(x, g, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * g


def t_rope(x, cos, sin):  # (T, H, D), (T, 1, D/2)
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).reshape(x.shape)


def t_attention(q, k, v):  # loops over heads: no stacking trick to share with refquant
    T, H, D = q.shape
    group = H // k.shape[1]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    heads = []
    for h in range(H):
        s = q[:, h] @ k[:, h // group].T / math.sqrt(D)
        heads.append(torch.softmax(s.masked_fill(mask, -math.inf), -1) @ v[:, h // group])
    return torch.stack(heads, 1)


def t_swiglu(a, u):
    return torch.nn.functional.silu(a) * u


def angles(T, D, base=10000.0):
    theta = base ** (-2.0 * np.arange(D // 2) / D)
    ang = np.arange(T)[:, None] * theta[None, :]
    return np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]  # (T, 1, D/2) float64


# --- strategies: shapes drawn as structure (heads, groups, width), values from a seed --------
shapes = st.fixed_dictionaries({
    "T": st.integers(1, 7), "H_kv": st.integers(1, 3), "group": st.integers(1, 3),
    "D": st.sampled_from([2, 4, 6]), "seed": st.integers(0, 2**16),
})


def rng_of(s):
    return np.random.default_rng(s["seed"])


# --- forwards with caches equal llama.py's -------------------------------------------------
@settings(max_examples=30)  # each example is one small torch graph
@given(shapes)
def test_attention_forward_is_llama_attention_bit_for_bit(s):
    r = rng_of(s)
    T, H_kv, H, D = s["T"], s["H_kv"], s["H_kv"] * s["group"], s["D"]
    q, k, v = (r.standard_normal((T, n, D)).astype(np.float32) for n in (H, H_kv, H_kv))
    out, cache = bw.attention_forward(q, k, v)
    np.testing.assert_array_equal(out, llama.attention(q, k, v))
    np.testing.assert_array_equal(np.triu(cache.p.reshape(H_kv, -1, T, T)[0, 0], 1), 0.0)


def test_rms_norm_forward_caches_r():
    x = np.float32([[3.0, 4.0]])  # mean x² = 12.5: r = 1/√12.5
    y, cache = bw.rms_norm_forward(x, np.float32([1.0, 2.0]), 0.0)
    np.testing.assert_allclose(cache.r, [[1 / math.sqrt(12.5)]], rtol=1e-7)
    np.testing.assert_array_equal(y, llama.rms_norm(x, np.float32([1.0, 2.0]), 0.0))


# --- each op's backward against autograd -------------------------------------------------
@settings(max_examples=30)  # each example is one small torch graph
@given(shapes)
def test_rms_norm_backward_matches_autograd(s):
    r = rng_of(s)
    x, g, dy = r.standard_normal((s["T"], 8)), r.standard_normal(8), r.standard_normal((s["T"], 8))
    _, cache = bw.rms_norm_forward(x, g, 1e-5)
    dx, dg = bw.rms_norm_backward(dy, cache)
    tdx, tdg = vjp(lambda a, b: t_rms(a, b, 1e-5), [x, g], dy)
    assert rel_err(dx, tdx) < RTOL and rel_err(dg, tdg) < RTOL


@settings(max_examples=30)  # each example is one small torch graph
@given(shapes)
def test_rope_backward_matches_autograd(s):
    r = rng_of(s)
    T, H, D = s["T"], s["H_kv"] * s["group"], s["D"]
    cos, sin = angles(T, D)
    x, dy = r.standard_normal((T, H, D)), r.standard_normal((T, H, D))
    np.testing.assert_allclose(bw.rope_forward(x, cos, sin), t_rope(t(x, False), t(cos, False), t(sin, False)).numpy(),
                               rtol=1e-12, atol=1e-12)
    (tdx,) = vjp(lambda a: t_rope(a, t(cos, False), t(sin, False)), [x], dy)
    assert rel_err(bw.rope_backward(dy, cos, sin), tdx) < RTOL


@settings(max_examples=30)  # each example is one small torch graph
@given(shapes)
def test_attention_backward_matches_autograd(s):
    r = rng_of(s)
    T, H_kv, H, D = s["T"], s["H_kv"], s["H_kv"] * s["group"], s["D"]
    q, k, v = (r.standard_normal((T, n, D)) for n in (H, H_kv, H_kv))
    dout = r.standard_normal((T, H, D))
    out, cache = bw.attention_forward(q, k, v)
    assert rel_err(out, t_attention(t(q, False), t(k, False), t(v, False)).numpy()) < RTOL
    ours = bw.attention_backward(dout, cache)
    for a, b in zip(ours, vjp(t_attention, [q, k, v], dout)):
        assert rel_err(a, b) < RTOL


@settings(max_examples=30)  # each example is one small torch graph
@given(shapes)
def test_swiglu_backward_matches_autograd(s):
    r = rng_of(s)
    a, u, dm = (r.standard_normal((s["T"], 5)) * 4 for _ in range(3))  # ×4: both tails of σ
    _, cache = bw.swiglu_forward(a, u)
    for ours, theirs in zip(bw.swiglu_backward(dm, cache), vjp(t_swiglu, [a, u], dm)):
        assert rel_err(ours, theirs) < RTOL


@settings(max_examples=30)  # each example is one small torch graph
@given(shapes)
def test_linear_and_embedding_backward_match_autograd(s):
    r = rng_of(s)
    x, W, dy = r.standard_normal((s["T"], 6)), r.standard_normal((4, 6)), r.standard_normal((s["T"], 4))
    _, cache = bw.linear_forward(x, W)
    for ours, theirs in zip(bw.linear_backward(dy, W, cache), vjp(lambda a, b: a @ b.T, [x, W], dy)):
        assert rel_err(ours, theirs) < RTOL
    ids = r.integers(0, 3, s["T"])  # a vocabulary of 3: repeated ids must add up
    E, dh = r.standard_normal((3, 6)), r.standard_normal((s["T"], 6))
    _, ecache = bw.embedding_forward(E, ids)
    (tdE,) = vjp(lambda e: e[torch.tensor(ids)], [E], dh)
    assert rel_err(bw.embedding_backward(dh, ecache), tdE) < RTOL


@settings(max_examples=30)  # each example is one small torch graph
@given(shapes)
def test_head_and_cross_entropy_backward_match_autograd(s):
    r = rng_of(s)
    T = s["T"] + 1  # at least one scored position
    h, g, E = r.standard_normal((T, 6)), r.standard_normal(6), r.standard_normal((11, 6))
    tokens = r.integers(0, 11, T)

    def t_loss(h, g, E):
        z = t_rms(h, g, 1e-5) @ E.T
        return torch.nn.functional.cross_entropy(z[:-1], torch.tensor(tokens[1:]))

    z, hcache = bw.head_forward(h, g, E, 1e-5)
    loss, ccache = bw.cross_entropy_forward(z, tokens)
    th, tg, tE = (t(a) for a in (h, g, E))
    tl = t_loss(th, tg, tE)
    tl.backward()
    assert abs(loss - tl.item()) <= RTOL * abs(tl.item())
    ours = bw.head_backward(bw.cross_entropy_backward(ccache), hcache)
    for a, b in zip(ours, (th.grad, tg.grad, tE.grad)):
        assert rel_err(a, b.numpy()) < RTOL


# --- finite differences: the formulas themselves, with no torch at all ----------------------
def central_difference(f, x, direction, step=1e-6):
    return (f(x + step * direction) - f(x - step * direction)) / (2 * step)


@pytest.mark.parametrize("op", ["rms_norm", "rope", "attention", "swiglu"])
def test_backward_matches_finite_differences(op):
    """⟨dx, v⟩ = d/dε Σ dy ⊙ f(x + εv) for a random direction v (float64, step 1e-6)."""
    r = np.random.default_rng(7)
    T, H, H_kv, D = 5, 4, 2, 4
    cos, sin = angles(T, D)
    g = r.standard_normal(8)
    q0, k0, v0 = (r.standard_normal((T, n, D)) for n in (H, H_kv, H_kv))
    fwd = {
        "rms_norm": (lambda x: bw.rms_norm_forward(x, g, 1e-5)[0], r.standard_normal((T, 8)),
                     lambda dy, x: bw.rms_norm_backward(dy, bw.rms_norm_forward(x, g, 1e-5)[1]).dx),
        "rope": (lambda x: bw.rope_forward(x, cos, sin), r.standard_normal((T, H, D)),
                 lambda dy, x: bw.rope_backward(dy, cos, sin)),
        "attention": (lambda x: bw.attention_forward(x, k0, v0)[0], q0,
                      lambda dy, x: bw.attention_backward(dy, bw.attention_forward(x, k0, v0)[1]).dq),
        "swiglu": (lambda x: bw.swiglu_forward(x, g[:5] * np.ones((T, 5)))[0], r.standard_normal((T, 5)),
                   lambda dy, x: bw.swiglu_backward(dy, bw.swiglu_forward(x, g[:5] * np.ones((T, 5)))[1]).da),
    }
    f, x, grad = fwd[op]
    dy = r.standard_normal(f(x).shape)
    v = r.standard_normal(x.shape)
    numeric = central_difference(lambda z: float(np.sum(f(z) * dy)), x, v)
    analytic = float(np.sum(grad(dy, x) * v))
    assert abs(numeric - analytic) <= 1e-7 * max(1.0, abs(analytic))


# --- a whole tiny Llama against torch autograd ------------------------------------------------
TINY = LlamaConfig(n_layer=2, n_embd=16, n_head=4, n_head_kv=2, n_ff=24, n_rot=4, rope_base=10000.0, rms_eps=1e-5,
                   vocab_size=37, n_ctx_train=64, tied_embeddings=True)


def tiny_weights(config, rng):
    d, f, kv = config.n_embd, config.n_ff, config.n_head_kv * config.head_dim
    shapes = {"attn_q": (d, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, d),
              "ffn_gate": (f, d), "ffn_up": (f, d), "ffn_down": (d, f)}
    w = {"token_embd.weight": rng.standard_normal((config.vocab_size, d)),
         "output_norm.weight": 1 + 0.1 * rng.standard_normal(d)}
    for i in range(config.n_layer):
        for kind, shape in shapes.items():
            w[f"blk.{i}.{kind}.weight"] = rng.standard_normal(shape) / math.sqrt(shape[1])
        for norm in ("attn_norm", "ffn_norm"):
            w[f"blk.{i}.{norm}.weight"] = 1 + 0.1 * rng.standard_normal(d)
    return w


def torch_loss(config, w, tokens, cos, sin):
    """The whole forward in torch (loops over heads), mean next-token cross-entropy."""
    c = config
    T, D = len(tokens), c.head_dim
    h = w["token_embd.weight"][torch.tensor(tokens)]
    for i in range(c.n_layer):
        W = {kind: w[f"blk.{i}.{kind}.weight"] for kind in LINEAR_NAMES}
        x = t_rms(h, w[f"blk.{i}.attn_norm.weight"], c.rms_eps)
        q = t_rope((x @ W["attn_q"].T).reshape(T, c.n_head, D), cos, sin)
        k = t_rope((x @ W["attn_k"].T).reshape(T, c.n_head_kv, D), cos, sin)
        v = (x @ W["attn_v"].T).reshape(T, c.n_head_kv, D)
        h = h + t_attention(q, k, v).reshape(T, -1) @ W["attn_output"].T
        x = t_rms(h, w[f"blk.{i}.ffn_norm.weight"], c.rms_eps)
        h = h + t_swiglu(x @ W["ffn_gate"].T, x @ W["ffn_up"].T) @ W["ffn_down"].T
    z = t_rms(h, w["output_norm.weight"], c.rms_eps) @ w["token_embd.weight"].T
    return torch.nn.functional.cross_entropy(z[:-1], torch.tensor(tokens[1:]))


@pytest.mark.parametrize("seed", [0, 1])
def test_whole_model_gradients_match_autograd(seed):
    r = np.random.default_rng(seed)
    w = tiny_weights(TINY, r)
    tokens = r.integers(0, TINY.vocab_size, 9)
    tokens[3] = tokens[5]  # a repeated token: the embedding gradient must add both rows
    cos, sin = angles(len(tokens), TINY.head_dim)
    model = llama.LlamaModel(TINY, w)
    ours = bw.loss_and_grads(model, tokens, cos=cos, sin=sin)

    tw = {name: t(a) for name, a in w.items()}
    loss = torch_loss(TINY, tw, tokens, t(cos, False), t(sin, False))
    loss.backward()
    assert abs(ours.loss - loss.item()) <= RTOL * loss.item()
    assert rel_err(ours.embedding, tw["token_embd.weight"].grad.numpy()) < RTOL
    for name, dW in ours.linear.items():
        assert rel_err(dW, tw[name].grad.numpy()) < RTOL, name
    for name, dg in ours.norms.items():
        assert rel_err(dg, tw[name].grad.numpy()) < RTOL, name
    assert len(ours.linear) == TINY.n_layer * len(LINEAR_NAMES)


def test_float32_whole_model_loss_equals_the_forward_pass():
    """The cached forward is the model's forward: same float32 logits -> same NLL as ppl."""
    from refquant.model.ppl import token_nll

    r = np.random.default_rng(3)
    w = {k: v.astype(np.float32) for k, v in tiny_weights(TINY, r).items()}
    model = llama.LlamaModel(TINY, w)
    tokens = r.integers(0, TINY.vocab_size, 12)
    nll = token_nll(model.forward(tokens)[:-1], tokens[1:])
    ours = bw.loss_and_grads(model, tokens, embedding_grad=False)
    assert ours.loss == pytest.approx(float(np.sum(nll) / nll.size), rel=1e-12, abs=0)
    assert ours.embedding is None

