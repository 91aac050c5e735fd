"""One QLoRA training step: refquant (NumPy) against torch + peft on bitsandbytes Linear4bit, CPU.

    python benchmarks/run.py qlora            # the runner's table (ms per step, ratio)

The work is ``refquant finetune``'s default step: LoRA r = 8, α = 16, no dropout, on every
linear of SmolLM2-135M's last 4 blocks over a frozen NF4 base (double-quantized, B = 64), one
window of 32 tokens of the calibration split (and one of 128). Both sides start from the same
hidden state entering the first adapted block (the frozen blocks before it are computed once,
as ``qlora.train`` caches them) and run the 4 blocks, the tied head, the mean NLL, its
backward to the adapters, and one AdamW step (lr 1e-3, weight decay 0.01):

    refquant   qlora.loss_and_grads(qm, adapters, tokens, h=h) + qlora.AdamW.step
    anchor     peft.get_peft_model over bnb.nn.Linear4bit (nf4, compress_statistics, float32
               compute) → loss.backward() (torch autograd) → torch.optim.AdamW.step()

The same NF4 bytes and the same A, B go to both; their first losses are checked to agree
(1e-5 relative) before anything is timed, so both sides do the same step.
"""

from __future__ import annotations

import math
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from run import Case  # noqa: E402

BLOCKS, R, ALPHA, LR, WEIGHT_DECAY, BLOCKSIZE = 4, 8, 16.0, 1e-3, 0.01, 64  # refquant finetune's defaults


def _torch_model(c, weights, first, torch, bnb):
    """The adapted blocks + tied head of a Llama, each block linear a bnb Linear4bit (NF4-DQ)."""
    from refquant.model.loader import LINEAR_NAMES

    T = torch.tensor

    class Blocks(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.ModuleDict()
            for i in range(first, c.n_layer):
                for kind in LINEAR_NAMES:
                    W = np.asarray(weights[f"blk.{i}.{kind}.weight"], dtype=np.float32)
                    layer = bnb.nn.Linear4bit(W.shape[1], W.shape[0], bias=False, compute_dtype=torch.float32,
                                              compress_statistics=True, quant_type="nf4")
                    layer.weight = bnb.nn.Params4bit(T(W), requires_grad=False, quant_type="nf4",
                                                     compress_statistics=True, blocksize=BLOCKSIZE)._quantize("cpu")
                    self.lin[f"b{i}_{kind}"] = layer
            self.g = {k: T(np.asarray(v, dtype=np.float32)) for k, v in weights.items()
                      if k.endswith("norm.weight")}
            self.E = T(np.asarray(weights["token_embd.weight"], dtype=np.float32))
            self.is_loaded_in_4bit = True  # what transformers sets: peft then wraps with its bnb LoRA layer

        def rms(self, x, g):
            return x / torch.sqrt((x * x).mean(-1, keepdim=True) + c.rms_eps) * g

        def forward(self, h, tokens, cos, sin):
            n, D = h.shape[0], c.head_dim
            group = c.n_head // c.n_head_kv
            mask = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)

            def rope(x):
                x0, x1 = x[..., 0::2], x[..., 1::2]
                return torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], -1).reshape(x.shape)

            for i in range(first, c.n_layer):
                lin = lambda kind, x: self.lin[f"b{i}_{kind}"](x)  # noqa: E731
                x = self.rms(h, self.g[f"blk.{i}.attn_norm.weight"])
                q = rope(lin("attn_q", x).reshape(n, c.n_head, D)).transpose(0, 1)  # (H, T, D)
                k = rope(lin("attn_k", x).reshape(n, c.n_head_kv, D)).transpose(0, 1)  # (H_kv, T, D)
                v = lin("attn_v", x).reshape(n, c.n_head_kv, D).transpose(0, 1)
                k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)  # (H, T, D)
                p = torch.softmax((q @ k.transpose(1, 2) / math.sqrt(D)).masked_fill(mask, -math.inf), -1)
                h = h + lin("attn_output", (p @ v).transpose(0, 1).reshape(n, -1))
                x = self.rms(h, self.g[f"blk.{i}.ffn_norm.weight"])
                h = h + lin("ffn_down", torch.nn.functional.silu(lin("ffn_gate", x)) * lin("ffn_up", x))
            z = self.rms(h, self.g["output_norm.weight"]) @ self.E.T  # (T, vocab)
            return torch.nn.functional.cross_entropy(z[:-1], tokens[1:])

    return Blocks()


def cases():
    import torch
    import bitsandbytes as bnb
    import peft

    from refquant import qlora
    from refquant.model import data, load_model
    from refquant.model.loader import LINEAR_NAMES

    model = load_model()
    c = model.config
    first = c.n_layer - BLOCKS
    qm = qlora.prepare(model, "nf4", double_quant=True, blocksize=BLOCKSIZE)
    config = qlora.LoraConfig(r=R, alpha=ALPHA)
    adapters = {n: a for n, a in qlora.init_adapters(qm, config, seed=0).items() if int(n.split(".")[1]) >= first}
    rng = np.random.default_rng(1)  # B ≠ 0, so every gradient is non-zero (B = 0 leaves dA = 0)
    adapters = {n: qlora.Adapter(a.A, rng.uniform(-0.02, 0.02, a.B.shape).astype(np.float32), a.scale)
                for n, a in adapters.items()}
    all_tokens = np.asarray(model.tokenize(data.calibration_text()), dtype=np.int64)

    tm = _torch_model(c, model.weights, first, torch, bnb)
    pm = peft.get_peft_model(tm, peft.LoraConfig(r=R, lora_alpha=ALPHA, lora_dropout=0.0,
                                                 target_modules=[f"b{i}_{k}" for i in range(first, c.n_layer)
                                                                 for k in LINEAR_NAMES]))
    with torch.no_grad():
        for i in range(first, c.n_layer):
            for kind in LINEAR_NAMES:
                layer, ad = pm.base_model.model.lin[f"b{i}_{kind}"], adapters[f"blk.{i}.{kind}.weight"]
                layer.lora_A["default"].weight.copy_(torch.tensor(ad.A))
                layer.lora_B["default"].weight.copy_(torch.tensor(ad.B))
    params = [p for p in pm.parameters() if p.requires_grad]
    assert len(params) == 2 * BLOCKS * len(LINEAR_NAMES)
    t_opt = torch.optim.AdamW(params, lr=LR, weight_decay=WEIGHT_DECAY)
    opt = qlora.AdamW(lr=LR, weight_decay=WEIGHT_DECAY)

    prepared = []
    for n_tokens in (32, 128):  # every check before any step: a timed step moves torch's adapters
        tokens = all_tokens[:n_tokens]
        h = qlora.prefix(qm, tokens, first)  # (T, d), the same input for both
        cos, sin = model.angles(n_tokens)  # (T, 1, D/2) float32
        th, tt = torch.tensor(h), torch.tensor(tokens)
        tcos, tsin = torch.tensor(np.asarray(cos)), torch.tensor(np.asarray(sin))
        with torch.no_grad():
            ref = pm(th, tt, tcos, tsin).item()  # the same adapters on both sides
        got = qlora.loss_and_grads(qm, adapters, tokens, h=h)[0]
        assert abs(got - ref) <= 1e-5 * abs(ref), (n_tokens, got, ref)
        prepared.append((n_tokens, tokens, h, th, tt, tcos, tsin, got, ref))

    for n_tokens, tokens, h, th, tt, tcos, tsin, got, ref in prepared:
        def ours(tokens=tokens, h=h):
            loss, grads = qlora.loss_and_grads(qm, adapters, tokens, h=h)
            opt.step(adapters, grads)
            return loss

        def theirs(th=th, tt=tt, tcos=tcos, tsin=tsin):
            t_opt.zero_grad()
            loss = pm(th, tt, tcos, tsin)
            loss.backward()
            t_opt.step()
            return loss.item()

        yield Case("qlora", f"one LoRA step, r={R}, {BLOCKS} blocks + head, {n_tokens} tokens", ours,
                   f"peft + bnb Linear4bit, torch {torch.__version__} autograd + AdamW", theirs,
                   note=f"loss {got:.5f} (torch {ref:.5f})")
