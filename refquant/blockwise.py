"""Model-level GPTQ, AWQ and calibration statistics: the one place where the model meets them.

``refquant.model.calibration.walk_blocks`` is the one driver: it walks the blocks, runs each on
the outputs of the already-quantized blocks before it, and hands every input a stage reads to
a method (module docstring there). The methods here are small:

    GPTQ   stages (q,k,v) (o) (gate,up) (down);  accumulator: ``gptq.Hessian``
           per shared input: one H, one ``gptq.prepare_hessian`` (dead inputs, act-order, U),
           then ``gptq.gptq_quantize(W, H, U=U)`` for every linear reading it
           (GPTAQ: the rows X̃ kept, the float model's X of the same windows captured beside
           them, ``gptq.AsymmetricHessian`` of the pairs -> H and ΔXX̃ᵀ)
    AWQ    one stage (all seven);  accumulator: the rows X
           ``awq.search_scale`` per group sharing an input, ``awq.fold_norm``/``fold_linear``,
           then ``awq.clip_and_quantize`` of every folded linear
    stats  one stage;  accumulator: ``LinearStats`` (H and mean |x|); ``calibrate``

Why one U serves q, k and v: dead inputs, the act-order permutation (argsort of diag H) and the
damping depend on H alone, so the three factorizations of the same H were the same; the codes
are bit for bit those of three separate ``gptq_quantize`` calls.

Ref: IST-DASLab/gptq ``llama.py`` (``llama_sequential``, ``--true-sequential``); mit-han-lab/llm-awq
``auto_scale.py`` (``auto_scale_block``), ``auto_clip.py`` (``auto_clip_block``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Iterable, Mapping

from . import awq, gptq
from ._backend import device, namespace
from ._checks import check_bits, check_number
from .model.calibration import SHARED_INPUTS, Rows, block_inputs, capture, embedded_windows, walk_blocks
from .model.loader import LINEAR_NAMES

__all__ = ["STAGES", "AWQ_SCALE_GROUPS", "AWQ_NO_CLIP", "BlockwiseResult", "gptq_quantize_model",
           "awq_quantize_model", "rtn_quantize_model", "LinearStats", "CalibrationResult", "calibrate",
           "block_inputs", "embedded_windows"]

# GPTQ: linears quantized together, in the order the block uses them (``--true-sequential``):
# each stage sees the inputs produced by the stages before it, already quantized
STAGES = (("attn_q", "attn_k", "attn_v"), ("attn_output",), ("ffn_gate", "ffn_up"), ("ffn_down",))
# AWQ: (linears scaled together, the weight that absorbs 1/s); "o after v" is added when v's
# rows and o's columns match (no grouped-query attention)
AWQ_SCALE_GROUPS = ((("attn_q", "attn_k", "attn_v"), "attn_norm"), (("ffn_gate", "ffn_up"), "ffn_norm"),
                    (("ffn_down",), "ffn_up"))
AWQ_NO_CLIP = ("attn_q", "attn_k")  # llm-awq skips q/k: their errors pass through softmax(q·k)
_NORMS = ("attn_norm", "ffn_norm")


@dataclasses.dataclass
class BlockwiseResult:
    """weights: {GGUF name: new weight} for ``model.with_weights``; details: per method —
    GPTQ {name: ``gptq.GPTQResult``} (codes, scales, g_idx, perm: what a checkpoint stores),
    AWQ {block: {"attn_q+attn_k+attn_v": α, ...}}."""

    weights: dict[str, Any]
    details: dict[Any, Any]


def _check_blocks(model: Any, blocks: Iterable[int] | None) -> list[int]:
    n_layer = model.config.n_layer
    blocks = list(range(n_layer)) if blocks is None else list(blocks)
    for b in blocks:
        check_number(b, "blocks", 0, n_layer - 1, integer=True)
    return blocks


def _readers(stage: Iterable[str], shared: str) -> list[str]:
    """The linears of a stage that read the input of ``shared``."""
    return [k for k in stage if SHARED_INPUTS[k] == shared]


# --------------------------------------------------------------------------- GPTQ


@dataclasses.dataclass
class _GPTQ:
    bits: int
    group_size: int | None
    act_order: bool
    symmetric: bool
    static_groups: bool
    blocksize: int
    percdamp: float
    stages: tuple[tuple[str, ...], ...]
    act_group_aware: bool = False
    mse: float = 0.0
    gptaq: bool = False
    alpha: float = gptq.GPTAQ_ALPHA
    float_model: Any = None    # GPTAQ: the unquantized model ...
    float_hs: list | None = None  # ... and its hidden states at the block being quantized
    layers: dict[str, Any] = dataclasses.field(default_factory=dict)
    solve: Callable[..., gptq.GPTQResult] = gptq.gptq_quantize  # one layer's solve (refquant.distributed: by rows)

    def accumulator(self, x: Any) -> Any:
        if self.gptaq:  # the windows' rows, to pair with the float model's
            return Rows(x)
        return gptq.Hessian(int(x.shape[1]), xp=namespace(x), dtype=x.dtype, device=device(x))

    def _statistics(self, i: int, stage: tuple[str, ...], inputs: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """{shared input: (H, ΔXX̃ᵀ or None)}: GPTAQ's from the quantized rows X̃ and the float
        model's X of the same windows (block i of the float model on the float hidden states)."""
        if not self.gptaq:
            return {shared: (acc.H, None) for shared, acc in inputs.items()}
        floats = capture(self.float_model, i, self.float_hs, stage, Rows)
        out = {}
        for shared, rows in inputs.items():
            x0 = rows.parts[0]
            acc = gptq.AsymmetricHessian(int(x0.shape[1]), xp=namespace(x0), dtype=x0.dtype, device=device(x0))
            for x_q, x_fp in zip(rows.parts, floats[shared].parts, strict=True):  # window by window
                acc.add(x_q, x_fp)
            out[shared] = (acc.H, acc.dXXt)
        return out

    def quantize(self, model: Any, i: int, stage: tuple[str, ...], inputs: Mapping[str, Any],
                 hs: list[Any]) -> dict[str, Any]:
        new = {}
        for shared, (H, dXXt) in self._statistics(i, stage, inputs).items():  # one H and one U per shared input
            names = [f"blk.{i}.{k}.weight" for k in _readers(stage, shared)]
            U = gptq.prepare_hessian(H, self.act_order, self.percdamp, dtype=model.weights[names[0]].dtype,
                                     act_group_aware=self.act_group_aware, group_size=self.group_size).U
            for name in names:
                r = self.solve(model.weights[name], H, self.bits, self.group_size, self.symmetric,
                               act_order=self.act_order, static_groups=self.static_groups,
                               blocksize=self.blocksize, percdamp=self.percdamp, partial_group=True, U=U,
                               act_group_aware=self.act_group_aware, mse=self.mse, dXXt=dXXt,
                               alpha=self.alpha)
                new[name], self.layers[name] = r.W_hat, r
        if self.gptaq and stage == self.stages[-1]:  # the float model's inputs of the next block
            self.float_hs = [self.float_model.block(i, h) for h in self.float_hs]
        return new


def gptq_quantize_model(model: Any, calib_tokens: Any, bits: int = 4, group_size: int | None = 128,
                        act_order: bool = False, symmetric: bool = False, static_groups: bool = False,
                        blocksize: int = gptq.BLOCKSIZE, percdamp: float = gptq.PERCDAMP, window: int = 512,
                        true_sequential: bool = True, blocks: Iterable[int] | None = None,
                        progress: Any = None, act_group_aware: bool = False, mse: float = 0.0,
                        gptaq: bool = False, alpha: float = gptq.GPTAQ_ALPHA) -> BlockwiseResult:
    """Block-sequential GPTQ of every linear of a ``refquant.model`` Llama.

        h = embed(calibration windows)
        for each block i:
            for each stage (q,k,v) (o) (gate,up) (down):
                run block i with the weights quantized so far, H = Hessian of the stage's input
                quantize the stage's linears with ``gptq.gptq_quantize`` (one U per shared input)
            h = block_i(h) with all its quantized weights      (the next block's calibration input)

    calib_tokens: token ids, cut into windows of ``window`` tokens (a partial last one dropped;
    fewer tokens than a window make one window of them all).
    G need not divide a layer's columns: the last group is the remainder (576 = 4·128 + 64).
    -> ``BlockwiseResult``: weights {GGUF name: Ŵ (out, in)} for the chosen ``blocks`` (default
    all), details {name: GPTQResult}. ``progress(iterable, desc, total)`` wraps the block loop
    (e.g. tqdm). true_sequential=False quantizes all seven from one capture.
    act_group_aware, mse: ``gptq.gptq_quantize``'s GAR ordering and range search (its
    docstring). gptaq: GPTAQ's asymmetric calibration, X̃ the inputs of the model quantized so
    far (the driver's), X the float model's, which walks the same blocks from the same
    embedded windows beside it; alpha its α.
    """
    # every argument checked before the first block runs (not minutes later, deep inside a layer)
    bits = check_bits(bits)
    gptq._group_layout(1, group_size, partial_group=True)  # G's type and sign (any layer may end in a partial group)
    check_number(blocksize, "blocksize", 1, integer=True)
    check_number(percdamp, "percdamp", 0, lo_open=True)
    check_number(window, "window", 1, integer=True)
    if not isinstance(gptaq, bool):
        raise TypeError(f"gptaq: expected True or False, got {gptaq!r}")
    gptq._check_variants(None, group_size, act_order, act_group_aware, mse, gptq.MSE_GRID, gptq.MSE_MAXSHRINK,
                         None, alpha)
    blocks = _check_blocks(model, blocks)
    hs = embedded_windows(model, calib_tokens, window)  # (window, d) each
    method = _GPTQ(bits, group_size, act_order, symmetric, static_groups, blocksize, percdamp,
                   STAGES if true_sequential else (sum(STAGES, ()),), act_group_aware, float(mse), gptaq, float(alpha),
                   model if gptaq else None, list(hs) if gptaq else None)
    label = f"GPTQ {bits}-bit{' act-order' if act_order else ''}{' GAR' if act_group_aware else ''}" \
            f"{' mse' if mse else ''}{' GPTAQ' if gptaq else ''}"
    weights = walk_blocks(model, hs, method, blocks, progress, desc=label)
    return BlockwiseResult(weights=weights, details=method.layers)


def rtn_quantize_model(model: Any, bits: int = 4, group_size: int | None = 128, symmetric: bool = False,
                       blocks: Iterable[int] | None = None) -> dict[str, Any]:
    """Round-to-nearest of every block linear with GPTQ's quantizer (the baseline GPTQ improves on)."""
    names = [f"blk.{i}.{k}.weight" for i in _check_blocks(model, blocks) for k in LINEAR_NAMES]
    return {n: gptq.rtn_quantize(model.weights[n], bits, group_size, symmetric, partial_group=True).W_hat for n in names}


# --------------------------------------------------------------------------- AWQ


@dataclasses.dataclass
class _AWQ:
    bits: int
    group_size: int
    n_grid: int
    clip: bool
    fold: bool
    stages: tuple[tuple[str, ...], ...] = (LINEAR_NAMES,)
    alphas: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)

    def accumulator(self, x: Any) -> Rows:
        return Rows(x)

    def quantize(self, model: Any, i: int, stage: tuple[str, ...], inputs: Mapping[str, Rows],
                 hs: list[Any]) -> dict[str, Any]:
        X = {k: inputs[SHARED_INPUTS[k]].X for k in stage}                 # (T_total, in) each
        W = {k: model.weights[f"blk.{i}.{k}.weight"] for k in stage}       # the 7 linears
        gain = {k: model.weights[f"blk.{i}.{k}.weight"] for k in _NORMS}
        groups = list(AWQ_SCALE_GROUPS)
        c = model.config
        if c.n_head == c.n_head_kv and W["attn_v"].shape[0] == W["attn_output"].shape[1]:
            groups.insert(1, (("attn_output",), "attn_v"))
        found = [awq.search_scale(X[targets[0]], [W[k] for k in targets], self.bits, self.group_size, self.n_grid,
                                  partial_group=True) for targets, _ in groups]  # on the block as captured
        self.alphas[i] = {"+".join(t): r.alpha for (t, _), r in zip(groups, found)}
        cols, rows = self._fold(W, gain, groups, found)
        new = {}
        for k, Wk in W.items():
            X_seen = X[k] / cols[k][None, :] if k in cols else X[k]       # the input W diag(s) sees
            clip = self.clip and k not in AWQ_NO_CLIP
            Q = awq.clip_and_quantize(Wk, X_seen, self.bits, self.group_size, clip, self.n_grid, partial_group=True).W_hat
            if not self.fold:  # the effective weight diag(s_rows) Q(W') diag(s_cols)⁻¹
                Q = Q * rows[k][:, None] if k in rows else Q
                Q = Q / cols[k][None, :] if k in cols else Q
            new[f"blk.{i}.{k}.weight"] = Q
        if self.fold:
            new.update({f"blk.{i}.{k}.weight": g for k, g in gain.items()})
        return new

    @staticmethod
    def _fold(W: dict[str, Any], gain: dict[str, Any], groups: list, found: list) -> tuple[dict, dict]:
        """Fold every searched s in place (norm gains ÷ s, or the producing linear's rows ÷ s;
        the scaled linears' columns × s) -> the scale of each linear's columns and rows."""
        cols, rows = {}, {}
        for (targets, absorber), res in zip(groups, found):
            if absorber in gain:
                gain[absorber], scaled = awq.fold_norm(gain[absorber], [W[k] for k in targets], res.s)
            else:
                W[absorber], W_next = awq.fold_linear(W[absorber], W[targets[0]], res.s)
                scaled, rows[absorber] = [W_next], res.s
            W.update(zip(targets, scaled))
            cols.update(dict.fromkeys(targets, res.s))
        return cols, rows


def awq_quantize_model(model: Any, calib_tokens: Any, bits: int = 4, group_size: int = 128, window: int = 512,
                       n_grid: int = awq.N_GRID, clip: bool = True, fold: bool = False,
                       blocks: Iterable[int] | None = None,
                       progress: Callable[..., Iterable] | None = None) -> BlockwiseResult:
    """AWQ over the blocks of a ``refquant.model`` Llama, block by block.

    For block i, on the hidden states produced by the already-quantized blocks 0..i-1:
    capture each linear's input; search s for (q,k,v), (gate,up), (down) [and (o) without
    grouped-query attention] on the block as captured (llm-awq ``auto_scale_block``); fold
    every s (g/s into the norms, rows/s into up for down); clip-search every linear but q, k
    on its scaled input; quantize with ``awq.awq_group_quantize``. (llm-awq feeds each block
    the *float* outputs of the blocks before it; here, as for GPTQ, the quantized ones.)

    calib_tokens: token ids, cut into windows of ``window`` tokens (a partial last one dropped;
    fewer tokens than a window make one window of them all).
    G need not divide a layer's columns: the last group is the remainder (576 = 4·128 + 64).
    -> ``BlockwiseResult``: weights {GGUF name: Ŵ} for every linear of the chosen blocks;
    details {block: {"attn_q+attn_k+attn_v": α, ...}}. fold=False (default): each linear's
    *effective* weight diag(s_out) Q(W') diag(s_in)⁻¹, what the unchanged model multiplies its
    inputs by — pass it to ``model.with_weights``. fold=True: the deployable form, the
    dequantized Q(W') of the folded weights W' plus the folded norm gains (float).
    """
    # every argument checked before the first block runs (not minutes later, deep inside a layer)
    bits = check_bits(bits)
    awq._segments(1, group_size, partial=True)                          # G's type and sign
    check_number(window, "window", 1, integer=True)
    check_number(n_grid, "n_grid", 1, integer=True)
    if clip and int(awq.MAX_SHRINK * n_grid) < 1:
        raise ValueError(f"n_grid: the clip search needs n_grid >= {math.ceil(1 / awq.MAX_SHRINK)} "
                         f"(max_shrink = {awq.MAX_SHRINK}), got {n_grid}")
    blocks = _check_blocks(model, blocks)
    hs = embedded_windows(model, calib_tokens, window)  # (window, d) each
    method = _AWQ(bits, group_size, n_grid, clip, fold)
    weights = walk_blocks(model, hs, method, blocks, progress, desc=f"AWQ {bits}-bit")
    return BlockwiseResult(weights=weights, details=method.alphas)


# --------------------------------------------------------------------------- statistics


class LinearStats:
    """Running statistics of one linear input x (T, in): GPTQ's H and AWQ's mean |x|.

        H = 2 Σ xᵀx / n  (``gptq.Hessian``, the one Hessian class),   mean_abs = Σ |x| / n
    """

    def __init__(self, x: Any) -> None:
        self.H = gptq.Hessian(int(x.shape[1]), xp=namespace(x), dtype=x.dtype, device=device(x))
        self.abs_sum = None  # (in,) Σ |x|

    @property
    def n(self) -> int:
        return self.H.n

    def add(self, x: Any) -> None:
        """Accumulate rows x: (T, in)."""
        mags = namespace(x).sum(namespace(x).abs(x), axis=0)             # (in,)
        self.abs_sum = mags if self.abs_sum is None else self.abs_sum + mags
        self.H.add(x)

    def hessian(self) -> Any:
        """GPTQ's H = (2/n) Σ xᵀx   (in, in)."""
        return self.H.H

    def mean_abs(self) -> Any:
        """AWQ's per-channel activation magnitude  mean |x|   (in,)."""
        return self.abs_sum / self.n


@dataclasses.dataclass
class CalibrationResult:
    """The model after calibration (weights replaced by ``on_block``) and the statistics."""

    model: Any
    stats: dict[str, LinearStats]  # GGUF weight name -> its input statistics (empty if keep=False)


@dataclasses.dataclass
class _Stats:
    on_block: Any
    keep: bool
    stages: tuple[tuple[str, ...], ...] = (LINEAR_NAMES,)
    kept: dict[str, LinearStats] = dataclasses.field(default_factory=dict)

    def accumulator(self, x: Any) -> LinearStats:
        return LinearStats(x)

    def quantize(self, model: Any, i: int, stage: tuple[str, ...], inputs: Mapping[str, LinearStats],
                 hs: list[Any]) -> dict[str, Any]:
        stats_i = {f"blk.{i}.{k}.weight": inputs[SHARED_INPUTS[k]] for k in stage}
        if self.keep:
            self.kept.update(stats_i)
        return dict((self.on_block(i, stats_i, hs) if self.on_block is not None else None) or {})


def calibrate(model: Any, windows: Iterable[Any],
              on_block: Callable[[int, Mapping[str, LinearStats], list], Mapping[str, Any] | None] | None = None,
              propagate: str = "quantized", keep: bool = True) -> CalibrationResult:
    """Stream calibration windows through the model block by block, keeping input statistics.

    model: a LlamaModel; windows: token-id windows, each (T,) (e.g. ``model.ppl.windows(tokens, 512)``).
    on_block(i, stats_i, inputs): called once block i's statistics are complete, with
        stats_i {GGUF name: LinearStats} for block i's seven linears (linears sharing an input
        share one object) and inputs the list of block i's input activations (T, d); may
        return replacement weights for block i.
    propagate: "quantized" — later blocks see the replaced block's outputs;
               "original"  — they see the unmodified block's outputs.
    keep: keep every block's statistics in the result (False frees them after on_block).
    """
    windows = list(windows)
    if not windows:
        raise ValueError("windows: expected at least one window of token ids")
    hs = [model.embed(w) for w in windows]  # n_windows × (T, d)
    method = _Stats(on_block, keep)

    replaced = walk_blocks(model, hs, method, range(model.config.n_layer), propagate=propagate)
    return CalibrationResult(model=model.with_weights(replaced) if replaced else model, stats=method.kept)
