"""Quantization-aware training: fake-quantized INT4 weights and the straight-through estimator.

A trained linear layer keeps a float32 *latent* weight W. Every forward pass uses its
fake-quantized copy, with RTN's own group quantizer (``refquant.uniform``: asymmetric, unsigned
codes 0..2^b − 1, one (s, z) per row and group of G input columns):

    s_g = (max(w_g, 0) − min(w_g, 0)) / (2^b − 1),   z_g = −round(min(w_g, 0) / s_g)
    q   = clamp(round(W / s) + z, 0, 2^b − 1),        Ŵ = s (q − z)          (round: half to even)
    y   = x Ŵᵀ

round() has derivative 0 almost everywhere, so the true dL/dW is useless; the straight-through
estimator (Bengio et al. 2013) passes the gradient of Ŵ to W unchanged:

    dL/dW := dL/dŴ = dyᵀ x,        dx = dy Ŵ

(no clipping mask: W never leaves its own group's range, which s and z are computed from, so
every latent weight sits inside the grid). AdamW then updates W, and the next forward pass
quantizes it again with fresh (s, z). At step 0, W is the float model's weight, so Ŵ is
exactly the RTN (PTQ) model: QAT starts where RTN stands and can only be judged against it.

A row whose n_in is not a multiple of G gets a shorter last group (n_in mod G columns), as
``refquant.report``'s RTN rows and ``gptq.rtn_quantize(partial_group=True)`` have it
(SmolLM2's 576 = 4·128 + 64). Scales stay float32 here (``report`` stores them as float16).

Only the chosen linears are trained; every other linear is frozen at its RTN Ŵ, the norms and
the embedding / tied head stay float32 and frozen. The blocks before the first trained one
never change, so their output for each window is computed once (``prefixes``).

Symbols: W latent weight (n_out, n_in), Ŵ its fake-quantized copy, q codes, s scale, z
zero-point, b bits, G group size, T tokens.
Ref: Bengio, Léonard & Courville 2013 (the straight-through estimator); Jacob et al. 2018
(training with simulated quantization); Esser et al. 2020 (LSQ; we keep min/max scales, not
learned ones); torch/ao/quantization/fake_quantize.py (``FakeQuantize``, STE with a clip mask).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Sequence

import numpy as np

from . import qlora, uniform
from ._checks import check_bits, check_int
from .model import backward as bw
from .model.llama import LlamaModel
from .model.loader import LINEAR_NAMES

__all__ = ["QatConfig", "Grouped", "quantize", "fake_quantize", "QatLinear", "FrozenLinear", "init_weights",
           "prefixes", "loss_and_grads", "AdamW", "train", "TrainResult", "quantized_weights", "quantized_model",
           "Experiment", "experiment", "plot"]


# --------------------------------------------------------------------------------------
# The fake quantizer (uniform's group quantizer, the same codes as RTN)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class QatConfig:
    """b-bit asymmetric codes per group of G input columns (default INT4, G = 128)."""

    bits: int = 4
    group_size: int = 128

    def __post_init__(self):
        object.__setattr__(self, "bits", check_bits(self.bits, name="bits"))
        object.__setattr__(self, "group_size", check_int(self.group_size, "group_size", 1))


class Grouped(NamedTuple):
    """One weight's group quantization, spans concatenated back along the input axis."""

    q: np.ndarray  # (n_out, n_in) int32 codes 0..2^b − 1
    s: np.ndarray  # (n_out, n_groups) float32
    z: np.ndarray  # (n_out, n_groups) float32, integral
    W_hat: np.ndarray  # (n_out, n_in) float32, s (q − z)


def _spans(n_in: int, G: int) -> list:
    """[(lo, hi, G)]: the full groups as one span, then the shorter remainder (if any)."""
    n_full = n_in // G * G
    spans = [(0, n_full, G)] if n_full else []
    return spans + ([(n_full, n_in, n_in - n_full)] if n_in > n_full else [])


def quantize(W: np.ndarray, config: QatConfig) -> Grouped:  # [out, in] -> codes, scales, Ŵ
    """RTN of W with ``uniform.quantize`` (asymmetric, unsigned, per group of G columns).

    >>> g = quantize(np.float32([[-1, 0, 0.5, 2]]), QatConfig(bits=2, group_size=4))
    >>> g.q.tolist(), g.W_hat.tolist()
    ([[0, 1, 1, 3]], [[-1.0, 0.0, 0.0, 2.0]])
    """
    if not isinstance(config, QatConfig):
        raise TypeError(f"config: expected a qat.QatConfig, got {type(config).__name__}")
    W = np.asarray(W)
    if W.ndim != 2 or W.dtype != np.float32:
        raise ValueError(f"W: expected a float32 (n_out, n_in) weight, got shape {W.shape} dtype {W.dtype}")
    q, s, z, W_hat = [], [], [], []
    for lo, hi, G in _spans(W.shape[1], config.group_size):
        qt = uniform.quantize(W[:, lo:hi], bits=config.bits, symmetric=False, granularity="group", group_size=G,
                              signed=False)  # q: (out, n/G, G), s, z: (out, n/G, 1)
        q.append(qt.q.reshape(W.shape[0], hi - lo))  # (out, hi − lo)
        s.append(qt.s[:, :, 0])  # (out, n/G)
        z.append(qt.z[:, :, 0])
        W_hat.append(uniform.dequantize(qt))  # (out, hi − lo)
    return Grouped(np.concatenate(q, axis=1).astype(np.int32), np.concatenate(s, axis=1).astype(np.float32),
                   np.concatenate(z, axis=1).astype(np.float32), np.concatenate(W_hat, axis=1).astype(np.float32))


def fake_quantize(W: np.ndarray, config: QatConfig) -> np.ndarray:
    """Ŵ = D(Q(W)).   (n_out, n_in) -> (n_out, n_in) float32"""
    return quantize(W, config).W_hat


# --------------------------------------------------------------------------------------
# Linear layers for refquant.model.backward's block
# --------------------------------------------------------------------------------------


class QatCache(NamedTuple):
    x: np.ndarray  # (T, n_in)
    W_hat: np.ndarray  # (n_out, n_in): the Ŵ the forward used (quantized once per pass)


class QatLinear:
    """y = x Ŵᵀ with Ŵ = fake_quantize(W); backward (dx, dW) by the straight-through estimator."""

    def __init__(self, W: np.ndarray, config: QatConfig):
        self.W, self.config = W, config

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, QatCache]:
        W_hat = fake_quantize(self.W, self.config)  # (n_out, n_in)
        return x @ W_hat.T, QatCache(x, W_hat)  # (T, n_out)

    def backward(self, dy: np.ndarray, cache: QatCache) -> tuple[np.ndarray, np.ndarray]:
        dx = dy @ cache.W_hat  # (T, n_in)
        dW = dy.T @ cache.x  # (n_out, n_in): dL/dŴ, handed to W unchanged (STE)
        return dx, dW


class FrozenLinear:
    """y = x Ŵᵀ for a weight frozen at its RTN Ŵ: dx only, no gradient."""

    def __init__(self, W_hat: np.ndarray):
        self.W_hat = W_hat

    def forward(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x @ self.W_hat.T, x  # (T, n_out)

    def backward(self, dy: np.ndarray, cache: np.ndarray) -> tuple[np.ndarray, None]:
        return dy @ self.W_hat, None  # (T, n_in)


def init_weights(model: LlamaModel, blocks: Iterable[int], kinds: Sequence[str] = LINEAR_NAMES) -> dict:
    """{name: float32 copy of the float weight}: the latent weights QAT trains (the PTQ start)."""
    if not isinstance(model, LlamaModel):
        raise TypeError(f"model: expected a refquant.model.LlamaModel, got {type(model).__name__}")
    blocks = sorted(set(blocks))
    bad = [i for i in blocks if not (isinstance(i, (int, np.integer)) and 0 <= i < model.config.n_layer)]
    if not blocks or bad:
        raise ValueError(f"blocks: expected block indices in 0..{model.config.n_layer - 1}, got {blocks!r}")
    kinds = (kinds,) if isinstance(kinds, str) else tuple(kinds)
    if not kinds or any(k not in LINEAR_NAMES for k in kinds):
        raise ValueError(f"kinds: expected tensor kinds among {LINEAR_NAMES}, got {list(kinds)!r}")
    return {f"blk.{i}.{k}.weight": np.array(model.weights[f"blk.{i}.{k}.weight"], dtype=np.float32)
            for i in blocks for k in kinds}


def _check_weights(model: LlamaModel, weights: Mapping[str, np.ndarray]) -> None:
    if not weights:
        raise ValueError("weights: expected at least one trained linear weight (init_weights)")
    for name, W in weights.items():
        if name not in model.weights or name.split(".")[2] not in LINEAR_NAMES:
            raise ValueError(f"weights: {name!r} is not a block linear weight of this model")
        want = tuple(model.weights[name].shape)
        if tuple(W.shape) != want or W.dtype != np.float32:
            raise ValueError(f"weights[{name!r}]: shape {tuple(W.shape)} dtype {W.dtype}, expected float32 {want}")


def _layers(model: LlamaModel, weights: Mapping[str, np.ndarray], config: QatConfig) -> Callable:
    def linears(i: int) -> dict:
        out = {}
        for kind in LINEAR_NAMES:
            name = f"blk.{i}.{kind}.weight"
            out[kind] = QatLinear(weights[name], config) if name in weights else \
                FrozenLinear(fake_quantize(np.asarray(model.weights[name], dtype=np.float32), config))
        return out

    return linears


def _first_block(weights: Mapping[str, np.ndarray]) -> int:
    return min(int(name.split(".")[1]) for name in weights)


def prefixes(model: LlamaModel, windows: Sequence[Any], first_block: int, config: QatConfig) -> list:
    """The hidden state entering block ``first_block`` through the frozen RTN blocks, per window.

    windows: n windows (T,) -> n arrays (T, d); block-outer, so each RTN Ŵ is made once.
    """
    ids = [np.asarray(t, dtype=np.int64) for t in windows]
    c, w = model.config, model.weights
    hs = [model.embed(t) for t in ids]  # n × (T, d)
    for i in range(first_block):
        layers = _layers(model, {}, config)(i)
        for j, t in enumerate(ids):
            cos, sin = model.angles(t.shape[0])
            hs[j], _ = bw.block_forward(hs[j], w[f"blk.{i}.attn_norm.weight"], w[f"blk.{i}.ffn_norm.weight"],
                                        layers, c.n_head, c.n_head_kv, c.rms_eps, cos, sin)
    return hs


def loss_and_grads(model: LlamaModel, weights: Mapping[str, np.ndarray], tokens: Any, config: QatConfig,
                   h: np.ndarray | None = None) -> tuple[float, dict]:
    """Mean NLL of tokens[1:] with fake-quantized linears, and the STE gradient of every latent W.

    -> (loss, {name: dW (n_out, n_in)}). h: this window's ``prefixes`` entry, if known.
    """
    if not isinstance(config, QatConfig):
        raise TypeError(f"config: expected a qat.QatConfig, got {type(config).__name__}")
    _check_weights(model, weights)
    ids = np.asarray(tokens)
    if ids.ndim != 1 or ids.size < 2 or ids.dtype.kind not in "iu" or ids.min() < 0 \
            or ids.max() >= model.config.vocab_size:
        raise ValueError(f"tokens: expected a 1-D window of at least 2 ids in 0..{model.config.vocab_size - 1}, "
                         f"got shape {ids.shape} dtype {ids.dtype}")
    first = _first_block(weights) if h is not None else 0
    out = bw.loss_and_grads(model, ids.astype(np.int64), _layers(model, weights, config), embedding_grad=False,
                            h=h, first_block=first)
    if not math.isfinite(out.loss):
        raise ValueError(f"tokens: the loss of this window is {out.loss} (a non-finite activation)")
    return out.loss, {name: out.linear[name] for name in weights}


# --------------------------------------------------------------------------------------
# AdamW on whole weights, training loop
# --------------------------------------------------------------------------------------


class AdamW(qlora.AdamW):
    """``qlora.AdamW``'s update (torch.optim.AdamW's operation order) on {name: W} weights.

    qlora.AdamW steps adapters; this steps plain arrays with the same per-tensor update (a
    hook kept here rather than in qlora.py). Weight decay defaults to 0: decaying a latent
    weight towards 0 would pull its group's range in, which is not the task.
    """

    def __init__(self, lr: float = 1e-5, betas: tuple = (0.9, 0.999), eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(lr, betas, eps, weight_decay)

    def step(self, weights: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> dict:
        """One update of every weight; returns the new {name: W} (inputs not modified)."""
        if set(weights) != set(grads):
            raise ValueError(f"grads: expected one dW per weight, these differ: "
                             f"{sorted(set(weights) ^ set(grads))[:3]}")
        self.t += 1
        new = {}
        for name, W in weights.items():
            if grads[name].shape != W.shape:
                raise ValueError(f"grads[{name!r}]: shape {grads[name].shape} differs from W {W.shape}")
            new[name] = self._update(name, W, grads[name])
        return new


@dataclasses.dataclass
class TrainResult:
    weights: dict  # the latent weights after training
    losses: list  # training loss of each step (fake-quantized forward)


def train(model: LlamaModel, weights: Mapping[str, np.ndarray], windows: Sequence[Any], steps: int, opt: AdamW,
          config: QatConfig, log: Callable[[int, float], None] | None = None) -> TrainResult:
    """``steps`` AdamW steps of QAT, step k on window k mod len(windows)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps: expected a positive integer, got {steps!r}")
    if not isinstance(opt, AdamW):
        raise TypeError(f"opt: expected a qat.AdamW, got {type(opt).__name__}")
    windows = [np.asarray(w) for w in windows]
    if not windows:
        raise ValueError("windows: expected at least one token window")
    _check_weights(model, weights)
    first = _first_block(weights)
    used = windows[:steps]
    cached = prefixes(model, used, first, config) if first > 0 else None
    weights, losses = dict(weights), []
    for step in range(steps):
        j = step % len(used)
        loss, grads = loss_and_grads(model, weights, used[j], config, h=cached[j] if cached is not None else None)
        weights = opt.step(weights, grads)
        losses.append(loss)
        if log is not None:
            log(step, loss)
    return TrainResult(weights, losses)


# --------------------------------------------------------------------------------------
# The quantized model
# --------------------------------------------------------------------------------------


def quantized_weights(model: LlamaModel, weights: Mapping[str, np.ndarray], config: QatConfig) -> dict:
    """{name: Grouped} of every block linear: the trained latent W where given, else the float W (RTN)."""
    return {name: quantize(np.asarray(weights.get(name, model.weights[name]), dtype=np.float32), config)
            for name in model.linear_names()}


def quantized_model(model: LlamaModel, weights: Mapping[str, np.ndarray], config: QatConfig) -> LlamaModel:
    """A LlamaModel whose block linears are Ŵ (``quantized_weights``); weights = {} gives RTN."""
    w = dict(model.weights)
    w.update({name: g.W_hat for name, g in quantized_weights(model, weights, config).items()})
    return LlamaModel(model.config, w, model.tokenizer, model.metadata)


# --------------------------------------------------------------------------------------
# The experiment: QAT of SmolLM2's last blocks from RTN, evaluation perplexity
# --------------------------------------------------------------------------------------


class Experiment(NamedTuple):
    trained: list  # names of the latent weights trained
    steps: int
    train_tokens: int  # tokens seen in training (steps × window)
    ppl_float: float
    ppl_rtn: float
    ppl_qat: float
    curve: list  # [(step, evaluation perplexity)] from step 0 (= RTN)
    losses: list  # training loss per step
    seconds: float  # wall time of the training steps and the evaluations during them
    gap_closed: float  # (ppl_rtn − ppl_qat) / (ppl_rtn − ppl_float)


def experiment(model: LlamaModel | None = None, blocks: int = 2, steps: int = 200, window: int = 64,
               lr: float = 5e-5, config: QatConfig = QatConfig(), eval_window: int = 128, eval_windows: int = 4,
               eval_every: int = 50, log: Callable[[str], None] | None = None) -> Experiment:
    """QAT of every linear of the last ``blocks`` blocks, one epoch of ``steps`` windows of the
    calibration split; perplexity on the evaluation split (float, RTN, QAT, and along the way)."""
    import time

    from .model import data, load_model, perplexity, windows

    model = load_model() if model is None else model
    weights = init_weights(model, range(model.config.n_layer - blocks, model.config.n_layer))
    train_windows = list(windows(model.tokenize(data.calibration_text()), window, steps))
    eval_tokens = model.tokenize(data.evaluation_text())

    def ppl(m: LlamaModel) -> float:
        return perplexity(m, eval_tokens, window=eval_window, max_windows=eval_windows).ppl

    say = log or (lambda s: None)
    ppl_float = ppl(model)
    t0 = time.perf_counter()
    curve = [(0, ppl(quantized_model(model, {}, config)))]
    say(f"float {ppl_float:.3f}  RTN {curve[0][1]:.3f}")
    opt, losses = AdamW(lr=lr), []
    done = 0
    while done < steps:
        n = min(eval_every, steps - done)
        result = train(model, weights, train_windows[done:done + n], n, opt, config)
        weights, done = result.weights, done + n
        losses += result.losses
        curve.append((done, ppl(quantized_model(model, weights, config))))
        say(f"step {done}  loss {np.mean(result.losses):.4f}  eval ppl {curve[-1][1]:.3f}  "
            f"{time.perf_counter() - t0:.0f} s")
    seconds = time.perf_counter() - t0
    rtn, final = curve[0][1], curve[-1][1]
    return Experiment(sorted(weights), steps, steps * window, ppl_float, rtn, final, curve, losses, seconds,
                      (rtn - final) / (rtn - ppl_float))


def plot(result: Experiment, path: str) -> None:
    """Training loss per step and the evaluation perplexity (float, RTN, QAT) along the run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.5))
    a.plot(np.arange(1, len(result.losses) + 1), result.losses, lw=0.8)
    a.set_xlabel("step")
    a.set_ylabel("training NLL (fake-quantized)")
    steps, ppls = zip(*result.curve)
    b.plot(steps, ppls, "o-", label="QAT (INT4, STE)")
    b.axhline(result.ppl_rtn, color="C3", ls="--", label=f"RTN {result.ppl_rtn:.2f}")
    b.axhline(result.ppl_float, color="C2", ls="--", label=f"float {result.ppl_float:.2f}")
    b.set_xlabel("step")
    b.set_ylabel("evaluation perplexity")
    b.set_title(f"{result.gap_closed:.0%} of the RTN gap closed")
    b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":  # python -m refquant.qat [steps] [lr] [plot.png]
    import sys

    args = sys.argv[1:]
    res = experiment(steps=int(args[0]) if args else 200, lr=float(args[1]) if len(args) > 1 else 5e-5,
                     log=lambda s: print(s, flush=True))
    print(res._replace(losses=f"{len(res.losses)} values, first {res.losses[0]:.4f} last {res.losses[-1]:.4f}"))
    if len(args) > 2:
        plot(res, args[2])
