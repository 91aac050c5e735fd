"""QLoRA: low-rank adapters trained on a frozen 4-bit (NF4/FP4) base, with AdamW, in NumPy.

Every linear layer of the blocks is stored as 4-bit codes (``refquant.nf4``, bitsandbytes'
bytes; optionally double-quantized) and is decoded on the fly, one layer at a time, when the
forward or the backward pass reaches it — never a float32 copy of every weight at once. A
target layer (chosen by tensor kind: "attn_q", ..., "ffn_down") gets an adapter (A, B), as
peft's ``LoraLayer`` defines it:

    y = x Ŵᵀ + (drop(x) Aᵀ Bᵀ) · s,     Ŵ = dequant(W₄) (frozen),  s = α/r  (rsLoRA: α/√r)
    A: (r, n_in) ~ U(−1/√n_in, 1/√n_in)  (kaiming-uniform, a = √5),   B: (n_out, r) = 0

With u = drop(x) Aᵀ (T, r) and the dropout mask μ (entries 0 or 1/(1−p)), the backward is

    dx = dy Ŵ + ((dy B) A · s) ⊙ μ,     dA = s (dy B)ᵀ drop(x),     dB = s dyᵀ u

and Ŵ gets no gradient at all (the 4-bit codes are not parameters). B = 0 at the start, so the
adapted model begins exactly at the base model, and only A, B are trained, by AdamW:

    θ ← θ (1 − lr·λ);  m ← β₁m + (1−β₁)g;  v ← β₂v + (1−β₂)g²;
    θ ← θ − (lr / (1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)

(decoupled weight decay, Loshchilov & Hutter 2019; the operation order of
``torch.optim.AdamW`` single-tensor path, float32, so the updates agree with torch's).

Merging folds an adapter into the base and quantizes again, W₄' = Q(dequant(W₄) + s B A): the
second rounding is what merging costs (``merge_cost``).

Accounting (``parameter_count``): peft's "all params" counts each parameter tensor's
``numel``. A bitsandbytes 4-bit weight is held as packed uint8, two codes per byte, so its
numel is n/2 — peft before 0.7 printed that; peft since multiplies a ``Params4bit`` count by
2·(bytes per storage element) and prints the logical n. Both counts come from the shapes.

Symbols: T tokens, r rank, α ``alpha``, s scale, p dropout, Ŵ the dequantized base.
Ref: Hu et al. 2021 (LoRA); Dettmers et al. 2023 (QLoRA); Kalajdzievski 2023 (rsLoRA);
peft/tuners/lora/layer.py (``LoraLayer.update_layer``, ``reset_lora_parameters``) and
tuners/lora/bnb.py (``Linear4bit.forward``, ``merge``); torch/optim/adamw.py, adam.py
(``_single_tensor_adam``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from . import nf4
from .model import backward as bw
from .model.llama import LlamaModel
from .model.loader import LINEAR_NAMES

__all__ = ["prepare", "QLoraModel", "Quantized", "LoraConfig", "Adapter", "init_adapters", "loss_and_grads",
           "logits", "AdamW", "train", "TrainResult", "merge", "unmerge", "merge_cost", "MergeCost",
           "parameter_count", "ParameterCount", "llama_shapes", "prefix", "prefixes", "save_adapters", "load_adapters",
           "DEFAULT_TARGETS"]

DEFAULT_TARGETS = LINEAR_NAMES  # QLoRA adapts every linear layer of the blocks (§4 of the paper)

#: kaiming_uniform_(a=√5) on a (r, n_in) weight: gain √(2/(1+a²)) = √(1/3), bound gain·√(3/n_in) = 1/√n_in
KAIMING_A = math.sqrt(5.0)


# --------------------------------------------------------------------------------------
# The frozen 4-bit base
# --------------------------------------------------------------------------------------


class Quantized(NamedTuple):
    """One frozen weight: bitsandbytes' packed codes and their state (``nf4.quantize_4bit``)."""

    packed: np.ndarray  # (ceil(n/2), 1) uint8
    state: nf4.QuantState

    def dequantize(self) -> np.ndarray:
        """Ŵ = c[q] · m, float32 (n_out, n_in): a fresh array, dropped by the caller after use."""
        return nf4.dequantize_4bit(self.packed, self.state)


@dataclasses.dataclass
class QLoraModel:
    """A model whose block linear layers are frozen 4-bit; everything else stays float32.

    model: a LlamaModel holding only the float32 tensors (embedding, norms); base: {GGUF name
    of each block linear weight: Quantized}. The embedding / tied head are not quantized (as
    bitsandbytes leaves nn.Embedding and transformers keeps lm_head in 16 bits).
    """

    model: LlamaModel
    base: dict
    quant_type: str
    double_quant: bool
    blocksize: int

    @property
    def config(self):
        return self.model.config

    def shapes(self) -> dict:
        """{name: (n_out, n_in)} of every quantized weight."""
        return {name: tuple(q.state.shape) for name, q in self.base.items()}


def prepare(model: LlamaModel, quant_type: str = "nf4", double_quant: bool = True, blocksize: int = 64) -> QLoraModel:
    """Quantize every block linear weight of ``model`` to 4 bits (bitsandbytes' bytes), freeze it.

    One weight is quantized at a time; the float32 originals stay the model's (not copied).
    """
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a refquant.model.LlamaModel, got {type(model).__name__}")
    base = {}
    for name in model.linear_names():
        packed, state = nf4.quantize_4bit(np.asarray(model.weights[name], dtype=np.float32), blocksize,
                                          quant_type, double_quant)
        base[name] = Quantized(packed, state)
    rest = {name: w for name, w in model.weights.items() if name not in base}
    return QLoraModel(LlamaModel(model.config, rest, model.tokenizer, model.metadata), base, quant_type,
                      double_quant, blocksize)


# --------------------------------------------------------------------------------------
# Adapters
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LoraConfig:
    """peft's LoraConfig, the fields QLoRA uses: rank r, α, dropout p, target tensor kinds, rsLoRA."""

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple = DEFAULT_TARGETS
    use_rslora: bool = False

    def __post_init__(self):
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r <= 0:
            raise ValueError(f"r: expected a positive integer rank, got {self.r!r}")
        if not (isinstance(self.alpha, (int, float)) and math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"alpha: expected a positive finite number, got {self.alpha!r}")
        if not (isinstance(self.dropout, (int, float)) and 0.0 <= self.dropout < 1.0):
            raise ValueError(f"dropout: expected a probability in [0, 1), got {self.dropout!r}")
        targets = (self.targets,) if isinstance(self.targets, str) else tuple(self.targets)
        unknown = [t for t in targets if t not in LINEAR_NAMES]
        if not targets or unknown:
            raise ValueError(f"targets: expected tensor kinds among {LINEAR_NAMES}, got {list(targets)!r}")
        object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        """s = α/r, or α/√r with rsLoRA (peft ``LoraLayer.update_layer``).

        >>> LoraConfig(r=16, alpha=32).scale, LoraConfig(r=16, alpha=32, use_rslora=True).scale
        (2.0, 8.0)
        """
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)


@dataclasses.dataclass(frozen=True)
class Adapter:
    """One layer's LoRA pair: A (r, n_in), B (n_out, r) float32, scale s, dropout p."""

    A: np.ndarray
    B: np.ndarray
    scale: float
    dropout: float = 0.0

    def delta(self) -> np.ndarray:
        """ΔW = s B A.   -> (n_out, n_in) float32"""
        return (self.B @ self.A) * np.float32(self.scale)


def init_adapters(qm: QLoraModel, config: LoraConfig, seed: int = 0) -> dict:
    """{"blk.{i}.{kind}.weight": Adapter} for every target layer: A kaiming-uniform(a=√5), B = 0.

    A ~ U(−1/√n_in, 1/√n_in) drawn from NumPy's Generator(seed), layer by layer in block order
    (peft draws torch's generator: the same distribution, other numbers).
    """
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config: expected a qlora.LoraConfig, got {type(config).__name__}")
    rng = np.random.default_rng(seed)
    adapters = {}
    for name, (n_out, n_in) in qm.shapes().items():
        if name.split(".")[2] not in config.targets:
            continue
        bound = 1.0 / math.sqrt(n_in)
        A = rng.uniform(-bound, bound, size=(config.r, n_in)).astype(np.float32)  # (r, n_in)
        B = np.zeros((n_out, config.r), dtype=np.float32)  # (n_out, r)
        adapters[name] = Adapter(A, B, config.scale, config.dropout)
    if not adapters:
        raise ValueError(f"targets: {list(config.targets)} name no layer of this model")
    return adapters


def _check_adapters(qm: QLoraModel, adapters: Mapping[str, Adapter]) -> None:
    shapes = qm.shapes()
    for name, ad in adapters.items():
        if name not in shapes:
            raise ValueError(f"adapters: {name!r} is not a quantized linear weight of this model")
        n_out, n_in = shapes[name]
        if ad.A.ndim != 2 or ad.B.ndim != 2 or ad.A.shape[1] != n_in or ad.B.shape[0] != n_out \
                or ad.A.shape[0] != ad.B.shape[1]:
            raise ValueError(f"adapters[{name!r}]: A {ad.A.shape}, B {ad.B.shape} do not fit the weight "
                             f"({n_out}, {n_in}); expected A (r, {n_in}) and B ({n_out}, r)")


# --------------------------------------------------------------------------------------
# The LoRA layer over a frozen 4-bit weight (a refquant.model.backward.Linear)
# --------------------------------------------------------------------------------------


class LoraCache(NamedTuple):
    x: np.ndarray  # (T, n_in)
    mask: np.ndarray | None  # (T, n_in) dropout mask μ (0 or 1/(1−p)), None without dropout
    u: np.ndarray | None  # (T, r) drop(x) Aᵀ; None for a layer without an adapter


class LoraLinear:
    """y = x Ŵᵀ + (drop(x) Aᵀ Bᵀ)·s over a frozen ``Quantized`` weight; grads (dA, dB) or None.

    Ŵ is decoded in ``forward`` and again in ``backward`` (recomputed, not kept).
    """

    def __init__(self, weight: Quantized, adapter: Adapter | None = None, rng: np.random.Generator | None = None):
        self.weight, self.adapter, self.rng = weight, adapter, rng

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, LoraCache]:
        y = x @ self.weight.dequantize().T  # (T, n_out)
        ad = self.adapter
        if ad is None:
            return y, LoraCache(x, None, None)
        mask = None
        xd = x
        if ad.dropout > 0 and self.rng is not None:  # peft: nn.Dropout on the LoRA branch only
            keep = self.rng.random(x.shape) >= ad.dropout
            mask = keep.astype(x.dtype) * np.float32(1.0 / (1.0 - ad.dropout))  # (T, n_in)
            xd = x * mask
        u = xd @ ad.A.T  # (T, r)
        return y + (u @ ad.B.T) * np.float32(ad.scale), LoraCache(x, mask, u)

    def backward(self, dy: np.ndarray, cache: LoraCache) -> tuple[np.ndarray, Any]:
        dx = dy @ self.weight.dequantize()  # (T, n_in); no gradient for the frozen Ŵ
        ad = self.adapter
        if ad is None:
            return dx, None
        s = np.float32(ad.scale)
        dyB = dy @ ad.B  # (T, r)
        dxd = (dyB @ ad.A) * s  # (T, n_in)
        xd = cache.x if cache.mask is None else cache.x * cache.mask
        if cache.mask is not None:
            dxd = dxd * cache.mask
        dA = (dyB.T @ xd) * s  # (r, n_in)
        dB = (dy.T @ cache.u) * s  # (n_out, r)
        return dx + dxd, (dA, dB)


def _layers(qm: QLoraModel, adapters: Mapping[str, Adapter], rng: np.random.Generator | None) -> Callable:
    def linears(i: int) -> dict:
        names = {kind: f"blk.{i}.{kind}.weight" for kind in LINEAR_NAMES}
        return {kind: LoraLinear(qm.base[n], adapters.get(n), rng) for kind, n in names.items()}

    return linears


def _check_tokens(qm: QLoraModel, tokens: Any) -> np.ndarray:
    ids = np.asarray(tokens)
    if ids.ndim != 1 or ids.size < 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"tokens: expected a 1-D window of at least 2 integer ids, got shape {ids.shape} "
                         f"dtype {ids.dtype}")
    if ids.min() < 0 or ids.max() >= qm.config.vocab_size:
        raise ValueError(f"tokens: ids must lie in 0..{qm.config.vocab_size - 1}, got {ids.min()}..{ids.max()}")
    return ids.astype(np.int64)


def _first_adapted_block(adapters: Mapping[str, Adapter]) -> int:
    return min(int(name.split(".")[1]) for name in adapters)


def prefixes(qm: QLoraModel, windows: Sequence[Any], first_block: int) -> list:
    """The hidden state entering block ``first_block`` through the frozen base, per window.

    windows: n windows (T,) -> n arrays (T, d). Blocks before the first adapted one never
    change during training, so a loop over fixed windows computes this once. The loop is
    block-outer: each base weight is decoded once for all the windows, then dropped.
    """
    ids = [_check_tokens(qm, w) for w in windows]
    c, w = qm.config, qm.model.weights
    hs = [qm.model.embed(t) for t in ids]  # n × (T, d)
    for i in range(first_block):
        dense = {kind: bw.Dense(qm.base[f"blk.{i}.{kind}.weight"].dequantize()) for kind in LINEAR_NAMES}
        for j, t in enumerate(ids):
            cos, sin = qm.model.angles(t.shape[0])
            hs[j], _ = bw.block_forward(hs[j], w[f"blk.{i}.attn_norm.weight"], w[f"blk.{i}.ffn_norm.weight"],
                                        dense, c.n_head, c.n_head_kv, c.rms_eps, cos, sin)
    return hs


def prefix(qm: QLoraModel, tokens: Any, first_block: int) -> np.ndarray:
    """``prefixes`` of one window: tokens (T,) -> (T, d)."""
    return prefixes(qm, [tokens], first_block)[0]


def loss_and_grads(qm: QLoraModel, adapters: Mapping[str, Adapter], tokens: Any,
                   rng: np.random.Generator | None = None, h: np.ndarray | None = None) -> tuple[float, dict]:
    """Mean NLL of tokens[1:] and its gradient w.r.t. every adapter: (loss, {name: (dA, dB)}).

    Dropout (an adapter's p > 0) is drawn from ``rng``; without one the pass is deterministic
    (evaluation mode). h: the ``prefix`` of this window at the first adapted block, if known.
    """
    ids = _check_tokens(qm, tokens)
    _check_adapters(qm, adapters)
    if any(ad.dropout > 0 for ad in adapters.values()) and rng is None:
        raise ValueError("rng: adapters with dropout > 0 need a numpy Generator to draw the masks")
    first = _first_adapted_block(adapters) if h is not None else 0
    out = bw.loss_and_grads(qm.model, ids, _layers(qm, adapters, rng), embedding_grad=False, h=h,
                            first_block=first)
    if not math.isfinite(out.loss):
        raise ValueError(f"tokens: the loss of this window is {out.loss} (a non-finite activation)")
    return out.loss, {name: out.linear[name] for name in adapters}


def logits(qm: QLoraModel, adapters: Mapping[str, Adapter], tokens: Any) -> np.ndarray:
    """Forward only (no dropout): tokens (T,) -> logits (T, vocab) float32. Usable as a
    ``refquant.model.perplexity`` model (a callable)."""
    ids = _check_tokens(qm, tokens)
    c, w = qm.config, qm.model.weights
    cos, sin = qm.model.angles(ids.shape[0])
    h = qm.model.embed(ids)  # (T, d)
    layers = _layers(qm, adapters, None)
    for i in range(c.n_layer):
        h, _ = bw.block_forward(h, w[f"blk.{i}.attn_norm.weight"], w[f"blk.{i}.ffn_norm.weight"], layers(i),
                                c.n_head, c.n_head_kv, c.rms_eps, cos, sin)
    return qm.model.head(h)  # (T, vocab)


# --------------------------------------------------------------------------------------
# AdamW
# --------------------------------------------------------------------------------------


def _fma_f32(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """fma(a, b, c) = a·b + c rounded once to float32 (the CPU's fused multiply-add).

    a·b of two float32 is exact in float64; the sum p + c is rounded to float64 *to odd*
    (TwoSum gives the error e; an inexact result with an even last bit moves one float64 ulp
    towards the exact value), which makes the final rounding to float32 correct (53 ≥ 24 + 2;
    Boldo & Melquiond 2008, "Emulation of FMA and correctly rounded sums").
    """
    p = a.astype(np.float64) * b.astype(np.float64)  # exact
    c64 = np.asarray(c, dtype=np.float64)
    s = p + c64
    bb = s - p
    e = (p - (s - bb)) + (c64 - bb)  # TwoSum: s + e = p + c exactly
    even = (s.view(np.int64) & 1) == 0
    s = np.where((e != 0) & even, np.nextafter(s, np.where(e > 0, np.inf, -np.inf)), s)
    return s.astype(np.float32)



class AdamW:
    """torch.optim.AdamW (single-tensor path, amsgrad off), on {name: Adapter}; state per name.

    Per step t (from 1), for each of A and B, in float32 with the scalars rounded to float32:
        θ ← θ·(1 − lr·λ)                   decoupled weight decay
        m ← m + (1−β₁)(g − m)               torch's lerp (weight < 0.5 form)
        v ← v·β₂ + (1−β₂)·g·g
        θ ← θ − (lr/(1−β₁ᵗ)) · m / (√v / √(1−β₂ᵗ) + ε)
    """

    _sqrt = staticmethod(np.sqrt)  # the one elementwise op torch rounds differently (see _update)

    def __init__(self, lr: float = 1e-3, betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.01):
        for name, value in (("lr", lr), ("eps", eps), ("weight_decay", weight_decay)):
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {betas!r}")
        self.lr, self.betas, self.eps, self.weight_decay = float(lr), tuple(map(float, betas)), float(eps), \
            float(weight_decay)
        self.t = 0
        self.m: dict = {}
        self.v: dict = {}

    def _update(self, key: str, theta: np.ndarray, g: np.ndarray) -> np.ndarray:
        f32 = np.float32
        b1, b2 = self.betas
        if key not in self.m:
            self.m[key], self.v[key] = np.zeros_like(theta), np.zeros_like(theta)
        theta = theta * f32(1.0 - self.lr * self.weight_decay)  # param.mul_(1 − lr·λ)
        # exp_avg.lerp_(g, 1 − β₁): torch's CPU kernel fuses it, fma(w, g − m, m)
        m = _fma_f32(np.full_like(g, 1.0 - b1), g - self.m[key], self.m[key])
        # exp_avg_sq.mul_(β₂).addcmul_(g, g, value=1 − β₂): fma(value·g, g, v·β₂)
        v = _fma_f32(f32(1.0 - b2) * g, g, self.v[key] * f32(b2))
        step_size = f32(self.lr / (1.0 - b1 ** self.t))  # Python floats, as torch, then float32
        # torch's float32 sqrt on a CPU is not always correctly rounded (1 ulp off on ~17% of
        # inputs in its AVX2 build; NumPy's is exact), so θ agrees with torch to ~1 ulp of the
        # update per step while m and v agree bit for bit (tests/test_qlora.py)
        denom = self._sqrt(v) / f32(math.sqrt(1.0 - b2 ** self.t)) + f32(self.eps)
        self.m[key], self.v[key] = m, v
        return theta + (f32(-step_size) * m) / denom  # param.addcdiv_(m, denom, value=−step_size)

    def step(self, adapters: Mapping[str, Adapter], grads: Mapping[str, tuple]) -> dict:
        """One update of every adapter; returns the new {name: Adapter} (inputs not modified)."""
        missing = set(adapters) ^ set(grads)
        if missing:
            raise ValueError(f"grads: expected one (dA, dB) per adapter, these differ: {sorted(missing)[:3]}")
        self.t += 1
        new = {}
        for name, ad in adapters.items():
            dA, dB = grads[name]
            if dA.shape != ad.A.shape or dB.shape != ad.B.shape:
                raise ValueError(f"grads[{name!r}]: shapes {dA.shape}, {dB.shape} differ from A {ad.A.shape}, "
                                 f"B {ad.B.shape}")
            new[name] = dataclasses.replace(ad, A=self._update(name + ".A", ad.A, dA),
                                            B=self._update(name + ".B", ad.B, dB))
        return new


# --------------------------------------------------------------------------------------
# Training loop
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainResult:
    adapters: dict
    losses: list  # mean loss of each optimizer step (over its accumulated windows)


def train(qm: QLoraModel, adapters: Mapping[str, Adapter], windows: Sequence[Any], steps: int, opt: AdamW,
          accumulate: int = 1, seed: int = 0, progress: Callable[[Iterable], Iterable] | None = None,
          log: Callable[[int, float], None] | None = None, cache_prefix: bool = True) -> TrainResult:
    """``steps`` AdamW steps, each on the mean gradient of ``accumulate`` windows (cycled in order).

    windows: (n, T) token windows. cache_prefix: the blocks before the first adapted one are
    frozen, so their output for each window is computed once and reused.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    if isinstance(accumulate, bool) or not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"accumulate: expected a positive integer, got {accumulate!r}")
    windows = [np.asarray(w) for w in windows]
    if not windows:
        raise ValueError("windows: expected at least one token window")
    rng = np.random.default_rng(seed)
    first = _first_adapted_block(adapters)
    used = windows[: steps * accumulate]  # the windows the loop will visit
    cached = prefixes(qm, used, first) if cache_prefix and first > 0 else None
    losses = []
    ticks = progress(range(steps)) if progress is not None else range(steps)
    k = 0
    for step in ticks:
        total, acc = 0.0, None
        for _ in range(accumulate):
            j = k % len(used)
            k += 1
            h = cached[j] if cached is not None else None
            loss, grads = loss_and_grads(qm, adapters, windows[j], rng=rng, h=h)
            total += loss
            acc = grads if acc is None else {n: (acc[n][0] + g[0], acc[n][1] + g[1]) for n, g in grads.items()}
        inv = np.float32(1.0 / accumulate)
        adapters = opt.step(adapters, {n: (dA * inv, dB * inv) for n, (dA, dB) in acc.items()})
        losses.append(total / accumulate)
        if log is not None:
            log(step, losses[-1])
    return TrainResult(dict(adapters), losses)


# --------------------------------------------------------------------------------------
# Merging
# --------------------------------------------------------------------------------------


def _requantized(qm: QLoraModel, W: np.ndarray) -> Quantized:
    """Q(W) with the base's type, block size and double quantization."""
    return Quantized(*nf4.quantize_4bit(W, qm.blocksize, qm.quant_type, qm.double_quant))


def merge(qm: QLoraModel, adapters: Mapping[str, Adapter]) -> QLoraModel:
    """W₄' = Q(dequant(W₄) + s B A) for every adapted layer (peft's bnb ``Linear4bit.merge``)."""
    _check_adapters(qm, adapters)
    base = dict(qm.base)
    for name, ad in adapters.items():
        base[name] = _requantized(qm, qm.base[name].dequantize() + ad.delta())
    return dataclasses.replace(qm, base=base)


def unmerge(qm: QLoraModel, adapters: Mapping[str, Adapter]) -> QLoraModel:
    """W₄ = Q(dequant(W₄') − s B A) (peft's ``unmerge``): the base again, up to the two roundings."""
    _check_adapters(qm, adapters)
    base = dict(qm.base)
    for name, ad in adapters.items():
        base[name] = _requantized(qm, qm.base[name].dequantize() - ad.delta())
    return dataclasses.replace(qm, base=base)


class MergeCost(NamedTuple):
    """What requantizing after merging loses, over the adapted layers."""

    rel_error: float  # ‖Q(Ŵ + ΔW) dequantized − (Ŵ + ΔW)‖ / ‖ΔW‖: the merge's error next to the update
    codes_changed: float  # fraction of 4-bit codes that differ from the base's
    max_abs_error: float  # max |merged − (Ŵ + ΔW)|


def merge_cost(qm: QLoraModel, merged: QLoraModel, adapters: Mapping[str, Adapter]) -> MergeCost:
    err2 = delta2 = 0.0
    changed = total = 0
    worst = 0.0
    for name, ad in adapters.items():
        exact = qm.base[name].dequantize() + ad.delta()  # (n_out, n_in)
        diff = merged.base[name].dequantize() - exact
        err2 += float(np.sum(diff.astype(np.float64) ** 2))
        delta2 += float(np.sum(ad.delta().astype(np.float64) ** 2))
        worst = max(worst, float(np.max(np.abs(diff))))
        a, b = qm.base[name].packed.reshape(-1), merged.base[name].packed.reshape(-1)
        changed += int(np.sum((a >> 4) != (b >> 4)) + np.sum((a & 15) != (b & 15)))
        total += 2 * a.size
    return MergeCost(math.sqrt(err2 / delta2) if delta2 > 0 else math.inf, changed / total, worst)


# --------------------------------------------------------------------------------------
# Saving adapters
# --------------------------------------------------------------------------------------


def save_adapters(path: str, adapters: Mapping[str, Adapter]) -> None:
    """An .npz with '{name}.A', '{name}.B' arrays and the scale / dropout of each."""
    arrays = {}
    for name, ad in adapters.items():
        arrays[f"{name}.A"], arrays[f"{name}.B"] = ad.A, ad.B
        arrays[f"{name}.scale"] = np.float64(ad.scale)
        arrays[f"{name}.dropout"] = np.float64(ad.dropout)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def load_adapters(path: str, qm: QLoraModel | None = None) -> dict:
    """The adapters ``save_adapters`` wrote; checked against ``qm``'s shapes when given."""
    with np.load(path, allow_pickle=False) as z:
        names = sorted({key.rsplit(".", 1)[0] for key in z.files})
        adapters = {n: Adapter(z[f"{n}.A"], z[f"{n}.B"], float(z[f"{n}.scale"]), float(z[f"{n}.dropout"]))
                    for n in names}
    if qm is not None:
        _check_adapters(qm, adapters)
    return adapters


# --------------------------------------------------------------------------------------
# Accounting
# --------------------------------------------------------------------------------------


class ParameterCount(NamedTuple):
    trainable: int  # Σ r·(n_in + n_out) over the adapted layers
    all: int  # peft's "all params": frozen base + trainable
    all_packed: int  # the same with each 4-bit weight counted as its packed uint8 numel, n/2 (peft < 0.7)


def llama_shapes(n_layer: int, d: int, n_head: int, n_head_kv: int, n_ff: int, vocab: int,
                 tied: bool = False) -> dict:
    """{GGUF name: shape} of a Llama model's parameters (e.g. Llama-2-7B: 32, 4096, 32, 32, 11008, 32000)."""
    kv = d // n_head * n_head_kv
    shapes = {"token_embd.weight": (vocab, d), "output_norm.weight": (d,)}
    if not tied:
        shapes["output.weight"] = (vocab, d)
    per = {"attn_q": (d, d), "attn_k": (kv, d), "attn_v": (kv, d), "attn_output": (d, d),
           "ffn_gate": (n_ff, d), "ffn_up": (n_ff, d), "ffn_down": (d, n_ff)}
    for i in range(n_layer):
        shapes.update({f"blk.{i}.{kind}.weight": s for kind, s in per.items()})
        shapes[f"blk.{i}.attn_norm.weight"] = shapes[f"blk.{i}.ffn_norm.weight"] = (d,)
    return shapes


def parameter_count(shapes: Mapping[str, tuple], r: int, targets: Iterable[str]) -> ParameterCount:
    """Trainable and total parameters of a QLoRA model, from the shapes alone.

    Every block linear weight is 4-bit (bitsandbytes' Linear4bit); the embedding, norms and
    the output head stay 16-bit, as transformers' ``load_in_4bit`` leaves lm_head.

    Example: Llama-2-7B, r = 64 on q and v: 2 · 32 · 64 · (4096 + 4096) adapter weights.

    >>> count = parameter_count(llama_shapes(32, 4096, 32, 32, 11008, 32000), 64, ("attn_q", "attn_v"))
    >>> f"trainable params: {count.trainable:,} || all params: {count.all:,}"
    'trainable params: 33,554,432 || all params: 6,771,970,048'
    """
    LoraConfig(r=r, targets=tuple(targets))  # the same checks as a real config
    targets = set(targets)
    trainable = full = packed = 0
    for name, shape in shapes.items():
        n = math.prod(shape)
        is_linear = name.startswith("blk.") and name.split(".")[2] in LINEAR_NAMES
        full += n
        packed += (n + 1) // 2 if is_linear else n
        if is_linear and name.split(".")[2] in targets:
            trainable += r * (shape[0] + shape[1])
    return ParameterCount(trainable, full + trainable, packed + trainable)
