"""refquant.qlora: LoRA on a frozen NF4 base, AdamW, merging, accounting.

Oracles: torch autograd (one layer in float64; SmolLM2's first blocks in float32 on
bitsandbytes' own NF4-DQ round trip), peft + bitsandbytes (``Linear4bit`` with a LoRA layer,
forward and backward), torch.optim.AdamW (single-tensor path), peft's parameter count.
"""

from __future__ import annotations

import dataclasses
import math
import re

import numpy as np
import pytest

from refquant import nf4, qlora
from refquant.model import llama
from refquant.model.loader import LINEAR_NAMES, LlamaConfig

torch = pytest.importorskip("torch")

TINY = LlamaConfig(n_layer=2, n_embd=64, n_head=4, n_head_kv=2, n_ff=96, n_rot=16, rope_base=10000.0, rms_eps=1e-5,
                   vocab_size=50, n_ctx_train=64, tied_embeddings=True)


def rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-300))


def tiny_model(seed=0) -> llama.LlamaModel:
    r = np.random.default_rng(seed)
    c = TINY
    d, f, kv = c.n_embd, c.n_ff, c.n_head_kv * c.head_dim
    shapes = {"attn_q": (d, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, d),
              "ffn_gate": (f, d), "ffn_up": (f, d), "ffn_down": (d, f)}
    w = {"token_embd.weight": r.standard_normal((c.vocab_size, d)), "output_norm.weight": np.ones(d)}
    for i in range(c.n_layer):
        w.update({f"blk.{i}.{k}.weight": r.standard_normal(s) / math.sqrt(s[1]) for k, s in shapes.items()})
        w[f"blk.{i}.attn_norm.weight"] = w[f"blk.{i}.ffn_norm.weight"] = np.ones(d)
    return llama.LlamaModel(c, {k: v.astype(np.float32) for k, v in w.items()})


def with_random_B(adapters, seed=1, size=0.02):
    r = np.random.default_rng(seed)
    return {n: dataclasses.replace(a, B=(size * r.standard_normal(a.B.shape)).astype(np.float32))
            for n, a in adapters.items()}


@pytest.fixture(scope="module")
def tiny_qm():
    return qlora.prepare(tiny_model(), "nf4", double_quant=True, blocksize=64)


# --- one LoRA layer -----------------------------------------------------------------------
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_lora_layer_backward_matches_autograd_float64(dropout):
    """dx = dy Ŵ + ((dy B) A s) ⊙ μ, dA = s (dy B)ᵀ drop(x), dB = s dyᵀ u, against autograd."""
    r = np.random.default_rng(0)
    W = r.standard_normal((24, 64)).astype(np.float32)
    weight = qlora.Quantized(*nf4.quantize_4bit(W, 64, "nf4", True))
    ad = qlora.Adapter(r.standard_normal((4, 64)), r.standard_normal((24, 4)), 2.0, dropout)  # float64 A, B
    x, dy = r.standard_normal((5, 64)), r.standard_normal((5, 24))
    layer = qlora.LoraLinear(weight, ad, np.random.default_rng(1))
    y, cache = layer.forward(x)
    dx, (dA, dB) = layer.backward(dy, cache)

    mask = torch.tensor(cache.mask if cache.mask is not None else np.ones_like(x))
    tx, tA, tB = (torch.tensor(a, requires_grad=True) for a in (x, ad.A, ad.B))
    Wt = torch.tensor(weight.dequantize(), dtype=torch.float64)
    ty = tx @ Wt.T + ((tx * mask) @ tA.T @ tB.T) * 2.0
    (ty * torch.tensor(dy)).sum().backward()
    assert rel_err(y, ty.detach().numpy()) < 1e-12
    for ours, theirs in ((dx, tx.grad), (dA, tA.grad), (dB, tB.grad)):
        assert rel_err(ours, theirs.numpy()) < 1e-10
    if dropout:
        assert 0 < np.mean(cache.mask == 0) < 1  # some lanes dropped, not all


def test_peft_bitsandbytes_linear4bit_lora_forward_and_backward():
    """peft's bnb Linear4bit + LoRA on a CPU: same bytes, same y, dx, dA, dB (float32)."""
    bnb = pytest.importorskip("bitsandbytes")
    peft = pytest.importorskip("peft")

    class One(torch.nn.Module):
        def __init__(self, W):
            super().__init__()
            self.proj = bnb.nn.Linear4bit(W.shape[1], W.shape[0], bias=False, compute_dtype=torch.float32,
                                          compress_statistics=True, quant_type="nf4")
            self.proj.weight = bnb.nn.Params4bit(torch.tensor(W), requires_grad=False, quant_type="nf4",
                                                 compress_statistics=True, blocksize=64)._quantize("cpu")
            self.is_loaded_in_4bit = True  # what transformers sets: peft then dispatches its bnb layer

        def forward(self, x):
            return self.proj(x)

    r = np.random.default_rng(0)
    W = r.standard_normal((48, 128)).astype(np.float32)
    pm = peft.get_peft_model(One(W), peft.LoraConfig(r=4, lora_alpha=8, target_modules=["proj"], lora_dropout=0.0))
    layer = pm.base_model.model.proj
    assert type(layer).__module__ == "peft.tuners.lora.bnb"

    qm_weight = qlora.Quantized(*nf4.quantize_4bit(W, 64, "nf4", True))
    np.testing.assert_array_equal(layer.base_layer.weight.data.numpy().reshape(-1), qm_weight.packed.reshape(-1))
    cfg = qlora.LoraConfig(r=4, alpha=8)
    ad = qlora.Adapter(r.uniform(-0.1, 0.1, (4, 128)).astype(np.float32),
                       r.uniform(-0.1, 0.1, (48, 4)).astype(np.float32), cfg.scale)
    assert layer.scaling["default"] == cfg.scale
    with torch.no_grad():
        layer.lora_A["default"].weight.copy_(torch.tensor(ad.A))
        layer.lora_B["default"].weight.copy_(torch.tensor(ad.B))
    x, dy = r.standard_normal((6, 128)).astype(np.float32), r.standard_normal((6, 48)).astype(np.float32)
    tx = torch.tensor(x, requires_grad=True)
    ty = pm(tx)
    (ty * torch.tensor(dy)).sum().backward()

    ours = qlora.LoraLinear(qm_weight, ad)
    y, cache = ours.forward(x)
    dx, (dA, dB) = ours.backward(dy, cache)
    assert rel_err(y, ty.detach().numpy()) < 1e-6  # float32 GEMMs, two BLAS libraries' orders
    assert rel_err(dx, tx.grad.numpy()) < 1e-6
    assert rel_err(dA, layer.lora_A["default"].weight.grad.numpy()) < 1e-6
    assert rel_err(dB, layer.lora_B["default"].weight.grad.numpy()) < 1e-6


# --- the whole model ------------------------------------------------------------------------
@pytest.mark.parametrize("n_layer, n_tokens", [(2, 16), pytest.param(30, 64, marks=pytest.mark.slow)])
def test_smollm2_matches_torch_autograd_on_bitsandbytes_base(n_layer, n_tokens):
    """SmolLM2 (its first 2 blocks, 16 tokens in CI; all 30 blocks, 64 tokens when slow tests
    run) + tied head: loss to 1e-5, every dA/dB to 1e-3 relative (float32).

    The torch side decodes its base with bitsandbytes' own NF4-DQ round trip.
    """
    from refquant.model.data import calibration_text

    bnbf = pytest.importorskip("bitsandbytes.functional")
    full = llama.load_model()
    c = dataclasses.replace(full.config, n_layer=n_layer)
    model = llama.LlamaModel(c, {k: v for k, v in full.weights.items()
                                 if not k.startswith("blk.") or int(k.split(".")[1]) < n_layer}, full.tokenizer)
    qm = qlora.prepare(model, "nf4", double_quant=True, blocksize=64)
    adapters = with_random_B(qlora.init_adapters(qm, qlora.LoraConfig(r=8, alpha=16), seed=0))
    tokens = np.asarray(full.tokenize(calibration_text()[:2000]))[:n_tokens]
    assert tokens.shape == (n_tokens,)
    loss, grads = qlora.loss_and_grads(qm, adapters, tokens)

    tw = {k: torch.tensor(v) for k, v in model.weights.items() if k not in qm.base}
    for name in qm.base:
        W = torch.tensor(model.weights[name])
        packed, state = bnbf.quantize_4bit(W, blocksize=64, compress_statistics=True, quant_type="nf4")
        tw[name] = bnbf.dequantize_4bit(packed, state)
        np.testing.assert_array_equal(tw[name].numpy(), qm.base[name].dequantize())  # the same base
    tA = {n: torch.tensor(a.A, requires_grad=True) for n, a in adapters.items()}
    tB = {n: torch.tensor(a.B, requires_grad=True) for n, a in adapters.items()}
    tloss = torch_lora_loss(c, tw, tA, tB, adapters, tokens)
    tloss.backward()
    assert abs(loss - tloss.item()) <= 1e-5 * abs(tloss.item())
    for n, (dA, dB) in grads.items():
        assert rel_err(dA, tA[n].grad.numpy()) < 1e-3, n
        assert rel_err(dB, tB[n].grad.numpy()) < 1e-3, n


def torch_lora_loss(c, w, tA, tB, adapters, tokens):
    """The Llama forward in torch with y = x Wᵀ + x Aᵀ Bᵀ s on the adapted layers."""
    T, D = len(tokens), c.head_dim
    theta = c.rope_base ** (-2.0 * np.arange(D // 2) / D)
    ang = np.arange(T)[:, None] * theta[None, :]
    cos = torch.tensor(np.cos(ang).astype(np.float32)[:, None, :])
    sin = torch.tensor(np.sin(ang).astype(np.float32)[:, None, :])

    def rms(x, g):
        return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.rms_eps) * g

    def rope(x):
        x0, x1 = x[..., 0::2], x[..., 1::2]
        return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).reshape(x.shape)

    def lin(x, name):
        y = x @ w[name].T
        if name in tA:
            y = y + (x @ tA[name].T @ tB[name].T) * adapters[name].scale
        return y

    h = w["token_embd.weight"][torch.tensor(tokens)]
    mask = torch.triu(torch.ones(T, T, dtype=torch.bool), 1)
    for i in range(c.n_layer):
        p = f"blk.{i}."
        x = rms(h, w[p + "attn_norm.weight"])
        q = rope(lin(x, p + "attn_q.weight").reshape(T, c.n_head, D))
        k = rope(lin(x, p + "attn_k.weight").reshape(T, c.n_head_kv, D))
        v = lin(x, p + "attn_v.weight").reshape(T, c.n_head_kv, D)
        g = c.n_head // c.n_head_kv
        a = torch.stack([torch.softmax((q[:, j] @ k[:, j // g].T / math.sqrt(D)).masked_fill(mask, -math.inf), -1)
                         @ v[:, j // g] for j in range(c.n_head)], 1)
        h = h + lin(a.reshape(T, -1), p + "attn_output.weight")
        x = rms(h, w[p + "ffn_norm.weight"])
        h = h + lin(torch.nn.functional.silu(lin(x, p + "ffn_gate.weight")) * lin(x, p + "ffn_up.weight"),
                    p + "ffn_down.weight")
    z = rms(h, w["output_norm.weight"]) @ w["token_embd.weight"].T
    return torch.nn.functional.cross_entropy(z[:-1], torch.tensor(tokens[1:]))


def test_finite_differences_of_the_loss_in_A(tiny_qm):
    """d loss / dA along a random direction equals the central difference (float64 adapters)."""
    ads = with_random_B(qlora.init_adapters(tiny_qm, qlora.LoraConfig(r=4, targets=("attn_v", "ffn_down"))),
                        size=0.3)
    ads = {n: dataclasses.replace(a, A=a.A.astype(np.float64), B=a.B.astype(np.float64)) for n, a in ads.items()}
    tokens = np.random.default_rng(2).integers(0, TINY.vocab_size, 10)
    name = "blk.0.attn_v.weight"
    direction = np.random.default_rng(3).standard_normal(ads[name].A.shape)
    direction /= np.linalg.norm(direction)  # unit length: the step is the distance moved
    _, grads = qlora.loss_and_grads(tiny_qm, ads, tokens)

    def loss_at(eps):
        moved = dict(ads)
        moved[name] = dataclasses.replace(ads[name], A=ads[name].A + eps * direction)
        return qlora.loss_and_grads(tiny_qm, moved, tokens)[0]

    # the activations turn float64 at the first adapted layer; the central difference's
    # error shrinks as step² (0.9739 → 0.87446 → 0.874467 8 at 1e-2, 1e-3, 1e-4)
    step = 1e-5
    numeric = (loss_at(step) - loss_at(-step)) / (2 * step)
    analytic = float(np.sum(grads[name][0] * direction))
    assert abs(numeric - analytic) <= 1e-7 * abs(analytic)


@pytest.mark.parametrize("quant_type, double_quant", [("nf4", True), ("nf4", False), ("fp4", True)])
def test_B_zero_gives_the_base_model_bit_for_bit(quant_type, double_quant):
    """B = 0 ⇒ the adapted model's logits equal the base model's: LlamaModel on Ŵ."""
    qm = qlora.prepare(tiny_model(), quant_type, double_quant=double_quant, blocksize=64)
    ads = qlora.init_adapters(qm, qlora.LoraConfig(r=4))
    tokens = np.arange(12) % TINY.vocab_size
    dense = llama.LlamaModel(TINY, {**qm.model.weights, **{n: q.dequantize() for n, q in qm.base.items()}})
    np.testing.assert_array_equal(qlora.logits(qm, ads, tokens), dense.forward(tokens))
    assert not np.array_equal(dense.forward(tokens), tiny_model().forward(tokens))  # the base is really 4-bit


def test_base_never_gets_a_gradient_and_loss_decreases(tiny_qm):
    """20 AdamW steps on one fixed window: the loss falls, the 4-bit base bytes never change."""
    before = {n: q.packed.copy() for n, q in tiny_qm.base.items()}
    ads = qlora.init_adapters(tiny_qm, qlora.LoraConfig(r=4, alpha=8), seed=0)
    tokens = np.random.default_rng(5).integers(0, TINY.vocab_size, 16)
    _, grads = qlora.loss_and_grads(tiny_qm, ads, tokens)
    assert set(grads) == set(ads)  # gradients for adapters only, none for any base weight
    assert all(np.all(g[0] == 0) for g in grads.values())  # B = 0 ⇒ dA = s (dy B)ᵀ x = 0
    assert any(np.any(g[1] != 0) for g in grads.values())
    result = qlora.train(tiny_qm, ads, [tokens], steps=20, opt=qlora.AdamW(lr=1e-2))
    assert result.losses[-1] < 0.8 * result.losses[0]
    for n, q in tiny_qm.base.items():
        np.testing.assert_array_equal(q.packed, before[n])


def test_prefix_cache_gives_the_same_gradients(tiny_qm):
    ads = with_random_B(qlora.init_adapters(tiny_qm, qlora.LoraConfig(r=2, targets=("attn_q",))))
    ads = {n: a for n, a in ads.items() if n.startswith("blk.1.")}
    tokens = np.arange(9)
    loss, grads = qlora.loss_and_grads(tiny_qm, ads, tokens)
    loss_h, grads_h = qlora.loss_and_grads(tiny_qm, ads, tokens, h=qlora.prefix(tiny_qm, tokens, 1))
    assert loss_h == loss
    for n in grads:
        np.testing.assert_array_equal(grads_h[n][0], grads[n][0])


def test_gradient_accumulation_averages_windows(tiny_qm):
    ads = with_random_B(qlora.init_adapters(tiny_qm, qlora.LoraConfig(r=2, targets=("ffn_up",))))
    w1, w2 = np.arange(8), np.arange(8)[::-1].copy()
    g1, g2 = qlora.loss_and_grads(tiny_qm, ads, w1)[1], qlora.loss_and_grads(tiny_qm, ads, w2)[1]
    opt_a, opt_b = qlora.AdamW(lr=1e-2), qlora.AdamW(lr=1e-2)
    by_hand = opt_a.step(ads, {n: ((g1[n][0] + g2[n][0]) * np.float32(0.5), (g1[n][1] + g2[n][1]) * np.float32(0.5))
                               for n in ads})
    looped = qlora.train(tiny_qm, ads, [w1, w2], steps=1, opt=opt_b, accumulate=2).adapters
    for n in ads:
        np.testing.assert_array_equal(looped[n].B, by_hand[n].B)


# --- LoRA's definitions ------------------------------------------------------------------------
def test_init_follows_peft(tiny_qm):
    cfg = qlora.LoraConfig(r=8, alpha=16, targets=("attn_q", "ffn_down"))
    ads = qlora.init_adapters(tiny_qm, cfg, seed=0)
    assert sorted(ads) == ["blk.0.attn_q.weight", "blk.0.ffn_down.weight", "blk.1.attn_q.weight",
                           "blk.1.ffn_down.weight"]
    A, B = ads["blk.0.ffn_down.weight"].A, ads["blk.0.ffn_down.weight"].B
    assert A.shape == (8, TINY.n_ff) and B.shape == (TINY.n_embd, 8) and not B.any()
    bound = 1 / math.sqrt(TINY.n_ff)
    assert np.abs(A).max() <= bound and np.abs(A).max() > 0.9 * bound  # the whole U(−b, b) range is used
    # torch's own kaiming_uniform_(a=√5) on the same shape has the same bound
    t = torch.empty(8, TINY.n_ff)
    torch.nn.init.kaiming_uniform_(t, a=math.sqrt(5))
    assert float(t.abs().max()) <= bound
    assert cfg.scale == 2.0 and qlora.LoraConfig(r=16, alpha=16, use_rslora=True).scale == 4.0


@pytest.mark.parametrize("kwargs, word", [({"r": 0}, "r:"), ({"r": -3}, "r:"), ({"targets": ()}, "targets:"),
                                          ({"targets": ("q_proj",)}, "targets:"), ({"dropout": 1.0}, "dropout:"),
                                          ({"alpha": float("nan")}, "alpha:")])
def test_bad_config_is_one_clear_error(kwargs, word):
    with pytest.raises(ValueError, match=word):
        qlora.LoraConfig(**kwargs)


def test_bad_adapters_and_tokens_are_clear_errors(tiny_qm):
    ads = qlora.init_adapters(tiny_qm, qlora.LoraConfig(r=2, targets=("attn_q",)))
    bad = dict(ads)
    bad["blk.0.attn_q.weight"] = dataclasses.replace(ads["blk.0.attn_q.weight"], A=np.zeros((2, 7), np.float32))
    with pytest.raises(ValueError, match=r"adapters\['blk.0.attn_q.weight'\]"):
        qlora.loss_and_grads(tiny_qm, bad, np.arange(5))
    with pytest.raises(ValueError, match="tokens:"):
        qlora.loss_and_grads(tiny_qm, ads, np.array([1.0, np.nan, 2.0]))
    with pytest.raises(ValueError, match="rng:"):
        qlora.loss_and_grads(tiny_qm, qlora.init_adapters(tiny_qm, qlora.LoraConfig(r=2, dropout=0.1)), np.arange(5))


# --- AdamW ---------------------------------------------------------------------------------
def _torch_sqrt(v):
    return torch.from_numpy(np.ascontiguousarray(v)).sqrt().numpy()


@pytest.mark.parametrize("weight_decay", [0.0, 0.01])
def test_adamw_equals_torch(weight_decay, monkeypatch):
    """m, v bit for bit; θ bit for bit once the sqrt is torch's; within 1 ulp per step with NumPy's."""
    r = np.random.default_rng(0)
    A, B = r.standard_normal((40, 60)).astype(np.float32), r.standard_normal((50, 40)).astype(np.float32)
    grads = [(r.standard_normal(A.shape).astype(np.float32), r.standard_normal(B.shape).astype(np.float32))
             for _ in range(20)]
    tA, tB = torch.tensor(A, requires_grad=True), torch.tensor(B, requires_grad=True)
    topt = torch.optim.AdamW([tA, tB], lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay,
                             foreach=False)
    for gA, gB in grads:
        tA.grad, tB.grad = torch.tensor(gA), torch.tensor(gB)
        topt.step()

    def ours(sqrt):
        opt = qlora.AdamW(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=weight_decay)
        monkeypatch.setattr(opt, "_sqrt", sqrt)
        ads = {"x": qlora.Adapter(A, B, 1.0)}
        for gA, gB in grads:
            ads = opt.step(ads, {"x": (gA, gB)})
        return opt, ads["x"]

    opt, exact = ours(_torch_sqrt)
    np.testing.assert_array_equal(opt.m["x.A"], topt.state[tA]["exp_avg"].numpy())
    np.testing.assert_array_equal(opt.v["x.B"], topt.state[tB]["exp_avg_sq"].numpy())
    np.testing.assert_array_equal(exact.A, tA.detach().numpy())
    np.testing.assert_array_equal(exact.B, tB.detach().numpy())
    _, numpy_sqrt = ours(np.sqrt)
    ulp = np.spacing(np.abs(tA.detach().numpy()))
    assert np.all(np.abs(numpy_sqrt.A - tA.detach().numpy()) <= len(grads) * ulp)
    assert np.any(numpy_sqrt.A != tA.detach().numpy())  # the sqrt's rounding does show


# --- merging ------------------------------------------------------------------------------------
@pytest.mark.parametrize("double_quant", [False, True])
def test_merge_then_unmerge_with_B_zero_returns_the_base(double_quant):
    """ΔW = 0: every 4-bit code comes back. Without double quantization every byte does; with it
    the absmax drifts, since re-quantizing m̂ takes a new mean μ' and new 8-bit codes of m̂ − μ',
    by at most M' · (largest gap of the dynamic map)/2 per block, M' = max |m̂ − μ'|."""
    from refquant.int8 import create_dynamic_map

    qm = qlora.prepare(tiny_model(), "nf4", double_quant=double_quant, blocksize=64)
    ads = qlora.init_adapters(qm, qlora.LoraConfig(r=4))
    back = qlora.unmerge(qlora.merge(qm, ads), ads)
    half_gap = float(np.max(np.diff(np.sort(create_dynamic_map())))) / 2
    for n in ads:
        np.testing.assert_array_equal(back.base[n].packed, qm.base[n].packed)
        W0, W1 = qm.base[n].dequantize(), back.base[n].dequantize()
        if not double_quant:
            np.testing.assert_array_equal(W1, W0)
            continue
        m0 = np.abs(W0.reshape(-1, 64)).max(1)  # the max code is ±1: block max = m̂
        m1 = np.abs(W1.reshape(-1, 64)).max(1)
        assert np.max(np.abs(m1 - m0)) <= np.max(np.abs(m0 - m0.mean())) * half_gap * (1 + 1e-6)


@pytest.mark.parametrize("steps, lr", [(5, 1e-3), (20, 3e-3)])
def test_merge_cost_of_a_trained_adapter(tiny_qm, steps, lr):
    """Merging rounds Ŵ + ΔW again. A small update (5 steps at 1e-3) is below half an NF4
    step everywhere: it is rounded away (error ≈ ‖ΔW‖, no code moves); a larger one moves codes
    and still loses a large part of ΔW."""
    ads = qlora.init_adapters(tiny_qm, qlora.LoraConfig(r=4, alpha=8), seed=0)
    tokens = np.random.default_rng(5).integers(0, TINY.vocab_size, 16)
    ads = qlora.train(tiny_qm, ads, [tokens], steps=steps, opt=qlora.AdamW(lr=lr)).adapters
    merged = qlora.merge(tiny_qm, ads)
    cost = qlora.merge_cost(tiny_qm, merged, ads)
    if steps == 5:
        assert cost.codes_changed == 0 and cost.rel_error > 0.9
    else:
        assert 0 < cost.codes_changed < 0.5 and cost.rel_error > 0.1
    exact = qlora.logits(tiny_qm, ads, np.arange(10))
    assert not np.array_equal(qlora.logits(merged, {}, np.arange(10)), exact)


# --- accounting ---------------------------------------------------------------------------------
LLAMA2_7B = qlora.llama_shapes(n_layer=32, d=4096, n_head=32, n_head_kv=32, n_ff=11008, vocab=32000)


def test_llama2_7b_parameter_counts():
    """r = 64 on q/k/v/o: 4 × 32 × 64 × (4096 + 4096) = 67,108,864 trainable, not 33,554,432.

    33,554,432 is r = 64 on q and v only (peft's default targets for Llama), or r = 32 on
    q/k/v/o. All params: 6,738,415,616 in the model; peft ≥ 0.7 counts a Params4bit as
    2 × its packed uint8 numel, i.e. the logical count; older peft printed the packed numel.
    """
    qkvo = qlora.parameter_count(LLAMA2_7B, 64, ("attn_q", "attn_k", "attn_v", "attn_output"))
    qv = qlora.parameter_count(LLAMA2_7B, 64, ("attn_q", "attn_v"))
    assert qkvo.trainable == 67_108_864 != 33_554_432
    assert qv.trainable == 33_554_432 == qlora.parameter_count(
        LLAMA2_7B, 32, ("attn_q", "attn_k", "attn_v", "attn_output")).trainable
    assert qv.all - qv.trainable == 6_738_415_616  # the Llama-2-7B size
    assert qv.all == 6_771_970_048  # what peft ≥ 0.7 prints for r = 64 on q, v
    assert qv.all_packed == 3_533_967_360  # the packed count (peft < 0.7)
    assert 3_776_126_976 not in (qv.all, qv.all_packed, qkvo.all, qkvo.all_packed)


def test_parameter_count_is_what_peft_counts():
    """peft 0.21 on bnb Linear4bit layers: our `all` (logical n), not the packed numel."""
    bnb = pytest.importorskip("bitsandbytes")
    peft = pytest.importorskip("peft")
    shapes = {"blk.0.attn_q.weight": (64, 128), "blk.0.ffn_up.weight": (96, 128)}

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            for kind, (n_out, n_in) in (("q", shapes["blk.0.attn_q.weight"]), ("up", shapes["blk.0.ffn_up.weight"])):
                layer = bnb.nn.Linear4bit(n_in, n_out, bias=False, compute_dtype=torch.float32, quant_type="nf4")
                layer.weight = bnb.nn.Params4bit(torch.randn(n_out, n_in), requires_grad=False, quant_type="nf4",
                                                 blocksize=64)._quantize("cpu")
                setattr(self, kind, layer)
            self.is_loaded_in_4bit = True

    pm = peft.get_peft_model(Two(), peft.LoraConfig(r=8, lora_alpha=16, target_modules=["q"]))
    trainable, total = pm.get_nb_trainable_parameters()
    ours = qlora.parameter_count(shapes, 8, ("attn_q",))
    assert (trainable, total) == (ours.trainable, ours.all)
    assert ours.all_packed < ours.all


def test_save_and_load_adapters(tiny_qm, tmp_path):
    ads = with_random_B(qlora.init_adapters(tiny_qm, qlora.LoraConfig(r=2, targets=("attn_k",))))
    qlora.save_adapters(str(tmp_path / "a.npz"), ads)
    back = qlora.load_adapters(str(tmp_path / "a.npz"), tiny_qm)
    assert sorted(back) == sorted(ads)
    for n in ads:
        np.testing.assert_array_equal(back[n].B, ads[n].B)
        assert back[n].scale == ads[n].scale


# --- the command ----------------------------------------------------------------------------
SMALL = ["--n-layers", "2", "--blocks", "1", "--window", "8", "--train-windows", "2", "--eval-window", "16",
         "--eval-windows", "1", "--r", "4", "--no-progress"]


def test_finetune_command_runs_20_steps(tmp_path, capsys):
    from refquant.cli import main

    out, plot = tmp_path / "adapters.npz", tmp_path / "loss.png"
    assert main(["finetune", "--steps", "20", "--lr", "3e-3", *SMALL, "--out", str(out), "--plot", str(plot)]) == 0
    text = capsys.readouterr().out
    # r = 4 on one SmolLM2 block: 4 · (q 1152 + k 768 + v 768 + o 1152 + 3 · 2112 for gate, up, down)
    assert "trainable params: 40,704 ||" in text
    assert plot.stat().st_size > 0 and "peak RSS" in text
    first, last = map(float, re.search(r"loss: (\S+) \(step 1\) -> (\S+) \(step 20\)", text).groups())
    assert last < first  # 20 steps on 2 cycled windows lower the training loss
    ads = qlora.load_adapters(str(out))
    assert sorted(ads) == [f"blk.1.{k}.weight" for k in sorted(LINEAR_NAMES)]


@pytest.mark.parametrize("argv, word", [(["--r", "0"], "--r:"), (["--targets", "q_proj"], "--targets:"),
                                        (["--targets", ","], "--targets:"), (["--lr", "nan"], "--lr:"),
                                        (["--blocks", "99"], "--blocks:"),
                                        (["--steps", "3", "--lr", "1e30"], "loss")])  # a NaN in the batch's loss
def test_finetune_bad_input_is_one_line_exit_2(argv, word, tmp_path, capsys):
    from refquant.cli import main

    code = main(["finetune", *SMALL, *argv, "--out", str(tmp_path / "a.npz"), "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and word in err and len(err.splitlines()) == 1


def test_finetune_resume_with_adapters_of_the_wrong_shape(tmp_path, capsys):
    from refquant.cli import main

    wrong = {"blk.1.attn_q.weight": qlora.Adapter(np.zeros((4, 7), np.float32), np.zeros((576, 4), np.float32), 1.0)}
    qlora.save_adapters(str(tmp_path / "wrong.npz"), wrong)
    code = main(["finetune", *SMALL, "--steps", "1", "--resume", str(tmp_path / "wrong.npz"),
                 "--out", str(tmp_path / "a.npz"), "--plot", str(tmp_path / "p.png")])
    err = capsys.readouterr().err
    assert code == 2 and "--resume:" in err and "(r, 576)" in err
