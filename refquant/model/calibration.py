"""Calibration capture: each block's linear inputs, from the already-quantized blocks before it.

GPTQ needs, per linear layer, the Hessian of its inputs; AWQ needs the inputs themselves (their
mean magnitude, its scale and clip searches). Both come from one walk over the blocks (the
sequential scheme of the GPTQ reference, ``llama_sequential``):

    h_w = embed(window_w) for every calibration window w                (n_windows × (T, d))
    for block i in blocks:
        for stage in method.stages:                  linears calibrated together, in block order
            run block i (every weight replaced so far) on each h_w, up to the stage's last input;
            hand each input the stage reads to one accumulator (q, k, v read the same x: once)
            replace the stage's weights by method.quantize(model, i, stage, accumulators)
        h_w = block_i(h_w) with its new weights (propagate="quantized") or  (next block's input)
              with the weights it had before (propagate="original")

Only the current block's activations are held (n_windows × T × d floats). The model is updated
stage by stage with ``with_weights`` on that stage's new weights only, so each weight is
handed over once, never copied again. This module knows the model, not the methods: GPTQ,
AWQ and the plain statistics are ``Method``s in ``refquant.blockwise``.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping, Protocol

from .._backend import namespace
from .loader import LINEAR_NAMES

__all__ = ["SHARED_INPUTS", "Accumulator", "Method", "Rows", "embedded_windows", "capture", "block_inputs",
           "walk_blocks"]

# the linear whose input each linear reads: q, k, v share one x, so do gate and up
SHARED_INPUTS = {"attn_q": "attn_q", "attn_k": "attn_q", "attn_v": "attn_q", "attn_output": "attn_output",
                 "ffn_gate": "ffn_gate", "ffn_up": "ffn_gate", "ffn_down": "ffn_down"}


class Accumulator(Protocol):
    """Anything that takes a layer's input rows x: (T, in), one window at a time."""

    def add(self, x: Any) -> None: ...


class Method(Protocol):
    """What ``walk_blocks`` drives: which inputs to take, how to accumulate them, what to replace.

    stages: tuples of linear names ('attn_q', ...), calibrated one after another in a block;
    accumulator(x): a new ``Accumulator`` for an input shaped like x (T, in);
    quantize(model, i, stage, inputs, hs): new weights {GGUF name: array} for block i, given
    inputs {shared input ('attn_q', 'attn_output', 'ffn_gate', 'ffn_down'): its accumulator}
    and hs, block i's input hidden states (T, d).
    """

    stages: tuple[tuple[str, ...], ...]

    def accumulator(self, x: Any) -> Accumulator: ...

    def quantize(self, model: Any, i: int, stage: tuple[str, ...], inputs: Mapping[str, Any],
                 hs: list[Any]) -> Mapping[str, Any]: ...


class _Collected(Exception):
    """Raised from inside ``model.block`` once a capture has every input it asked for."""


def embedded_windows(model: Any, calib_tokens: Any, window: int) -> list[Any]:
    """Calibration tokens cut into non-overlapping windows and embedded: [(window, d), ...].

    Fewer tokens than a window make one shorter window of them all; a remainder shorter
    than a window is dropped (as GPTQ's and AWQ's reference loaders do).
    """
    if len(calib_tokens) < 2:
        raise ValueError(f"calib_tokens: need at least 2 calibration tokens, got {len(calib_tokens)}")
    window = min(window, len(calib_tokens))
    n = (len(calib_tokens) // window) * window
    return [model.embed(calib_tokens[k:k + window]) for k in range(0, n, window)]


def capture(model: Any, i: int, hs: Iterable[Any], kinds: Iterable[str],
            accumulator: Callable[[Any], Accumulator]) -> dict[str, Accumulator]:
    """Run block i on every hidden state in hs, feeding the inputs of ``kinds`` to accumulators.

    hs: (T, d) each; kinds: linear names -> {shared input: accumulator}, one accumulator per
    input however many of ``kinds`` read it. Each run stops as soon as the last input the
    kinds need has been seen (the stage (q, k, v) needs only RMSNorm(h), not the block).
    """
    wanted = {SHARED_INPUTS[k] for k in kinds}
    accs: dict[str, Accumulator] = {}

    def see(name: str, x: Any) -> None:
        kind = name.split(".")[2]
        if kind in wanted and SHARED_INPUTS[kind] == kind:       # the first reader of a shared input
            if kind not in accs:
                accs[kind] = accumulator(x)
            accs[kind].add(x)
            seen.add(kind)
            if seen == wanted:
                raise _Collected

    for h in hs:
        seen: set[str] = set()
        try:
            model.block(i, h, capture=see)
        except _Collected:
            pass
    return accs


class Rows:
    """An accumulator that keeps the rows: X = concat of every window's x, (T_total, in)."""

    def __init__(self, x: Any) -> None:
        self.parts: list[Any] = []

    def add(self, x: Any) -> None:
        self.parts.append(x)

    @property
    def X(self) -> Any:
        return namespace(self.parts[0]).concat(self.parts, axis=0)  # (T_total, in)


def block_inputs(model: Any, i: int, hs: Iterable[Any], kinds: Iterable[str] = LINEAR_NAMES) -> dict[str, Any]:
    """The input X (T_total, in) of each linear of block i over all hidden states hs (T, d).

    -> {linear name ('attn_q', ...): X}; linears that share an input share the array.
    """
    kinds = tuple(kinds)
    rows = capture(model, i, hs, kinds, Rows)
    return {k: rows[SHARED_INPUTS[k]].X for k in kinds}


def walk_blocks(model: Any, hs: list[Any], method: Method, blocks: Iterable[int], progress: Any = None,
                desc: str = "", propagate: str = "quantized") -> dict[str, Any]:
    """Block by block, stage by stage: capture, ``method.quantize``, propagate (module docstring).

    hs: the embedded calibration windows (T, d); blocks: the indices to walk, increasing (a block
    left out is run unchanged, so block i always sees the outputs of blocks 0..i-1);
    progress(iterable, desc=, total=) wraps the block loop (e.g. tqdm) -> {GGUF name: new
    weight} of every block walked.
    """
    if propagate not in ("quantized", "original"):
        raise ValueError(f"propagate: expected 'quantized' or 'original', got {propagate!r}")
    blocks = [int(i) for i in blocks]
    if any(b <= a for a, b in zip(blocks, blocks[1:])):
        raise ValueError(f"blocks: expected increasing block indices, got {blocks}")
    progress = progress or (lambda it, desc="", total=None: it)
    current, replaced = model, {}
    walked = 0  # hs holds the inputs of block `walked`
    for i in progress(blocks, desc=desc, total=len(blocks)):
        for j in range(walked, i):  # blocks left out are run as they are, to reach block i's inputs
            hs = [current.block(j, h) for h in hs]
        walked = i + 1
        before = [current.block(i, h) for h in hs] if propagate == "original" else None
        for stage in method.stages:
            inputs = capture(current, i, hs, stage, method.accumulator)
            new = dict(method.quantize(current, i, stage, inputs, hs))
            if new:
                current = current.with_weights(new)                      # this stage's weights only
                replaced.update(new)
        hs = before if before is not None else [current.block(i, h) for h in hs]  # inputs of block i+1
    return replaced
