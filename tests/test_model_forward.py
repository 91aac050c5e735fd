"""refquant.model.llama: RMSNorm, RoPE and attention against plain loops; the forward pass on
every backend; capture and weight swapping; loading errors.

The loop versions below compute in float64 with ``math`` one scalar at a time, exactly as
the formulas read. refquant computes in float32, so they agree to float32 rounding: each
output is a short sum (D ≤ 16 products, T ≤ 8 softmax terms) of O(1) values, and a
relative-plus-absolute tolerance of 1e-5 covers a few float32 ulps (2^-24 ≈ 6e-8 each).
"""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refquant._backend import from_numpy, to_numpy
from refquant.model import LlamaConfig, LlamaModel, load_model
from refquant.model.llama import attention, rms_norm, rope, rope_angles, swiglu
from refquant.model.loader import LINEAR_NAMES
from refquant.testing.llama import tiny_llama

F32_TOL = dict(rtol=1e-5, atol=1e-5)


# --- strategies --------------------------------------------------------------------------
# Shapes are small (loops are slow) and values bounded (|x| ≤ 4: activations after a norm
# are O(1); the bound keeps exp() in the softmax far from overflow). Heads are drawn
# together so that n_head is a multiple of n_head_kv, as GQA requires.

@st.composite
def attention_inputs(draw):
    T = draw(st.integers(1, 8))
    n_kv = draw(st.integers(1, 3))
    group = draw(st.integers(1, 3))
    D = 2 * draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    q = rng.uniform(-4, 4, (T, n_kv * group, D)).astype(np.float32)
    k = rng.uniform(-4, 4, (T, n_kv, D)).astype(np.float32)
    v = rng.uniform(-4, 4, (T, n_kv, D)).astype(np.float32)
    return q, k, v


@st.composite
def rows_and_gain(draw):
    T = draw(st.integers(1, 6))
    d = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))  # RMSNorm is scale-free: try several magnitudes
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((T, d)) * scale).astype(np.float32)
    g = rng.uniform(-2, 2, d).astype(np.float32)
    return x, g


# --- plain loop versions -------------------------------------------------------------------

def rms_norm_loop(x, g, eps):
    out = np.zeros(x.shape, dtype=np.float64)
    for t in range(x.shape[0]):
        ms = sum(float(v) ** 2 for v in x[t]) / x.shape[1]
        for j in range(x.shape[1]):
            out[t, j] = float(x[t, j]) / math.sqrt(ms + eps) * float(g[j])
    return out


def rope_loop(x, base):
    T, H, D = x.shape
    out = np.zeros(x.shape, dtype=np.float64)
    for t in range(T):
        for h in range(H):
            for j in range(D // 2):
                angle = t * base ** (-2.0 * j / D)
                a, b = float(x[t, h, 2 * j]), float(x[t, h, 2 * j + 1])
                out[t, h, 2 * j] = a * math.cos(angle) - b * math.sin(angle)
                out[t, h, 2 * j + 1] = a * math.sin(angle) + b * math.cos(angle)
    return out


def attention_loop(q, k, v):
    T, H, D = q.shape
    group = H // k.shape[1]
    out = np.zeros(q.shape, dtype=np.float64)
    for h in range(H):
        kv = h // group
        for t in range(T):
            scores = [sum(float(q[t, h, e]) * float(k[s, kv, e]) for e in range(D)) / math.sqrt(D)
                      for s in range(t + 1)]  # causal: keys 0..t only
            top = max(scores)
            weights = [math.exp(z - top) for z in scores]
            total = sum(weights)
            for e in range(D):
                out[t, h, e] = sum(w * float(v[s, kv, e]) for s, w in enumerate(weights)) / total
    return out


@given(rows_and_gain())
def test_rms_norm_matches_loop(xg):
    x, g = xg
    eps = 1e-5
    expected = rms_norm_loop(x, g, eps)
    tol = F32_TOL["atol"] * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(rms_norm(x, g, eps), expected, rtol=1e-5, atol=tol)


@given(st.integers(1, 12), st.integers(1, 3), st.integers(1, 8), st.sampled_from([1e4, 1e5]),
       st.integers(0, 2**32 - 1))
def test_rope_matches_loop(T, H, half, base, seed):
    D = 2 * half
    x = np.random.default_rng(seed).uniform(-4, 4, (T, H, D)).astype(np.float32)
    cos, sin = rope_angles(T, D, base)
    np.testing.assert_allclose(rope(x, cos, sin), rope_loop(x, base), **F32_TOL)


@given(st.integers(2, 10), st.integers(1, 6), st.integers(0, 2**32 - 1))
def test_rope_preserves_pair_norms_and_position_zero(T, half, seed):
    x = np.random.default_rng(seed).standard_normal((T, 2, 2 * half)).astype(np.float32)
    cos, sin = rope_angles(T, 2 * half, 1e5)
    y = rope(x, cos, sin)
    pair_norm = lambda a: np.hypot(a[..., 0::2], a[..., 1::2])  # noqa: E731 - a rotation keeps these
    np.testing.assert_allclose(pair_norm(y), pair_norm(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(y[0], x[0])  # angle 0 at position 0: cos = 1, sin = 0 exactly


@given(attention_inputs())
def test_attention_matches_loop(qkv):
    q, k, v = qkv
    np.testing.assert_allclose(attention(q, k, v), attention_loop(q, k, v), **F32_TOL)


@given(attention_inputs())
def test_attention_is_causal(qkv):
    """Changing the last token's key and value leaves every earlier output unchanged."""
    q, k, v = qkv
    k2, v2 = k.copy(), v.copy()
    k2[-1] += 1.0
    v2[-1] -= 1.0
    np.testing.assert_array_equal(attention(q, k, v)[:-1], attention(q, k2, v2)[:-1])


def test_swiglu_hand_worked():
    # silu(0) = 0; silu(2) = 2·σ(2) = 2 / (1 + e^-2); times up = 3
    out = swiglu(np.array([[0.0, 2.0]], np.float32), np.array([[5.0, 3.0]], np.float32))
    np.testing.assert_allclose(out, [[0.0, 3 * 2 / (1 + math.exp(-2))]], rtol=1e-6)


# --- a tiny random model: the whole forward pass on every backend ---------------------------------

def test_backend_parity_tiny_llama(xp):
    ref = tiny_llama()
    other = LlamaModel(ref.config, {k: from_numpy(v, xp=xp) for k, v in ref.weights.items()})
    tokens = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3, 5]
    got = to_numpy(other.forward(tokens))
    # same float32 formulas; BLAS libraries may sum a dot product in another order
    np.testing.assert_allclose(got, ref.forward(tokens), rtol=1e-5, atol=1e-5)


def test_backend_parity_real_model_torch(smollm2_path):
    """Two real blocks plus the tied head on torch vs NumPy (the whole model is 30 such blocks)."""
    torch_xp = pytest.importorskip("array_api_compat.torch")
    ref = load_model(smollm2_path)
    names = ["token_embd.weight", "output_norm.weight"] + [n for n in ref.weights if n.startswith(("blk.0.", "blk.1."))]
    cfg = dataclasses.replace(ref.config, n_layer=2)
    a_model = LlamaModel(cfg, {n: ref.weights[n] for n in names})
    b_model = LlamaModel(cfg, {n: from_numpy(np.array(ref.weights[n]), xp=torch_xp) for n in names})
    tokens = ref.tokenize("The quick brown fox jumps over the lazy dog.")
    a, b = a_model.forward(tokens), to_numpy(b_model.forward(tokens))
    # float32 GEMMs of width 576..1536 summed in another order (OpenBLAS vs torch's kernels):
    # a few float32 ulps per dot product, far below 1e-4 of the logit scale
    assert np.max(np.abs(a - b)) < 1e-4 * np.max(np.abs(a))
    assert np.array_equal(a.argmax(-1), b.argmax(-1))


@pytest.mark.gpu
def test_gpu_matches_numpy(smollm2_path):
    cupy = pytest.importorskip("cupy")
    ref = load_model(smollm2_path)
    gpu = load_model(smollm2_path, xp=cupy)
    tokens = ref.tokenize("The quick brown fox jumps over the lazy dog.")
    a, b = ref.forward(tokens), cupy.asnumpy(gpu.forward(tokens))
    # cuBLAS may use other summation orders (and TF32 if enabled globally; CuPy's default is off)
    assert np.max(np.abs(a - b)) < 1e-3 * np.max(np.abs(a))
    assert np.array_equal(a.argmax(-1), b.argmax(-1))


# --- capture, weight swapping ---------------------------------------------------------------

def test_capture_sees_every_linear_input():
    model = tiny_llama()
    seen = {}
    h = model.embed([1, 2, 3, 4])
    out = model.block(1, h, capture=lambda name, x: seen.setdefault(name, x))
    assert list(seen) == [f"blk.1.{n}.weight" for n in LINEAR_NAMES]
    for name, x in seen.items():
        assert x.shape == (4, model.weights[name].shape[1])  # (T, in_features)
    # the captured inputs reproduce the block: h + attn_output(a) then + ffn_down(m)
    W = lambda n: model.weights[f"blk.1.{n}.weight"]  # noqa: E731
    h_mid = h + seen["blk.1.attn_output.weight"] @ W("attn_output").T
    np.testing.assert_allclose(out, h_mid + seen["blk.1.ffn_down.weight"] @ W("ffn_down").T, rtol=1e-5, atol=1e-5)


def test_forward_is_embed_blocks_head():
    model = tiny_llama()
    tokens = [7, 8, 9]
    h = model.embed(tokens)
    for i in range(model.config.n_layer):
        h = model.block(i, h)
    np.testing.assert_array_equal(model.head(h), model.forward(tokens))


def test_with_weights_swaps_one_weight_only():
    model = tiny_llama()
    name = "blk.0.ffn_up.weight"
    same = model.with_weights({name: model.weights[name].copy()})
    zero = model.with_weights({name: np.zeros_like(model.weights[name])})
    tokens = [1, 2, 3]
    np.testing.assert_array_equal(same.forward(tokens), model.forward(tokens))
    assert not np.array_equal(zero.forward(tokens), model.forward(tokens))
    assert zero.weights["blk.0.ffn_down.weight"] is model.weights["blk.0.ffn_down.weight"]  # shared
    assert np.any(model.weights[name] != 0)  # the original is untouched


def test_with_weights_shares_float32_arrays():
    # a block-by-block driver hands each new weight over once: no cast, no copy
    model = tiny_llama()
    W = np.zeros_like(model.weights["blk.0.attn_q.weight"])
    assert model.with_weights({"blk.0.attn_q.weight": W}).weights["blk.0.attn_q.weight"] is W


def test_with_weights_rejects_bad_replacements():
    model = tiny_llama()
    with pytest.raises(ValueError, match="unknown weight"):
        model.with_weights({"blk.9.attn_q.weight": np.zeros((16, 16), np.float32)})
    with pytest.raises(ValueError, match="shape"):
        model.with_weights({"blk.0.attn_q.weight": np.zeros((16, 15), np.float32)})


def test_bad_tokens_and_block_index():
    model = tiny_llama()
    with pytest.raises(ValueError, match="tokens: ids must lie in 0..49"):
        model.forward([1, 50])
    with pytest.raises(ValueError, match="tokens: expected a non-empty 1-D"):
        model.forward([[1, 2]])
    with pytest.raises(ValueError, match="tokens: expected a non-empty 1-D"):
        model.forward([])
    with pytest.raises(ValueError, match="i: block index"):
        model.block(2, model.embed([1]))


# --- loading -----------------------------------------------------------------------------

def test_real_model_config_and_shapes(smollm2_path):
    model = load_model(smollm2_path)
    c = model.config
    assert (c.n_layer, c.n_embd, c.n_head, c.n_head_kv, c.n_ff, c.vocab_size) == (30, 576, 9, 3, 1536, 49152)
    assert c.rope_base == 1e5 and c.tied_embeddings and c.head_dim == 64
    assert model.weights["blk.0.attn_k.weight"].shape == (192, 576)  # (out = 3 heads × 64, in = d)
    assert model.weights["blk.0.ffn_down.weight"].shape == (576, 1536)
    assert all(w.dtype == np.float32 for w in model.weights.values())


def test_not_gguf_file(tmp_path):
    path = tmp_path / "model.bin"
    path.write_bytes(b"PK\x03\x04 not a gguf file")
    with pytest.raises(ValueError, match="not a GGUF file"):
        load_model(path)
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_model(tmp_path / "missing.gguf")


def _write_gguf(path, arch, n_layer=1):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layer)
    w.add_embedding_length(8)
    w.add_feed_forward_length(8)
    w.add_head_count(2)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tensor("token_embd.weight", np.zeros((10, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_unsupported_architecture(tmp_path):
    _write_gguf(tmp_path / "gpt2.gguf", "gpt2")
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        load_model(tmp_path / "gpt2.gguf")


def test_missing_tensor(tmp_path):
    _write_gguf(tmp_path / "partial.gguf", "llama")
    with pytest.raises(ValueError, match="lacks tensor.*output_norm.weight"):
        load_model(tmp_path / "partial.gguf")


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs /proc/self/maps (Linux)")
def test_loader_unmaps_the_file_once_decoded(smollm2_path):
    from refquant.model import loader

    loader.load_file.__wrapped__(*loader.file_key(smollm2_path))  # not the cache: a real read
    with open("/proc/self/maps") as maps:
        assert os.path.realpath(smollm2_path) not in maps.read()


def test_weights_equal_gguf_py_decoding(smollm2_path):
    """refquant's reader and codecs give the same float32 weights as gguf-py (the oracle)."""
    gguf = pytest.importorskip("gguf")
    model = load_model(smollm2_path)
    reader = gguf.GGUFReader(smollm2_path)
    picked = {"token_embd.weight", "output_norm.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight"}
    types = set()
    for t in reader.tensors:
        if t.name in picked:
            expected = gguf.quants.dequantize(t.data, t.tensor_type).reshape(model.weights[t.name].shape)
            np.testing.assert_array_equal(model.weights[t.name], expected)
            types.add(t.tensor_type.name)
    assert types == {"Q8_0", "F32", "Q4_1"}
