"""Importance matrices computed with refquant's runtime, as llama-imatrix computes them.

For every linear y = x Wᵀ of the blocks, over every token row t of the calibration text:

    in_sum2_j = Σ_t x_tj²        (per input column j: the weight each column's error gets)
    count     = number of rows t summed
    imatrix_j = in_sum2_j / count   (what ``refquant quantize --imatrix`` and the weighted
                                     k-quant / i-quant searches read)

The text is tokenized once and cut into chunks of ``chunk_size`` tokens (a remainder is
dropped); when the vocabulary adds BOS, each chunk's first token is replaced by BOS, as
llama-imatrix does (``compute_imatrix``: ``tokens[batch_start] = bos``). Each chunk is one
forward pass of ``refquant.model`` from an empty context; the inputs of the linears come from
the runtime's own capture hook (``LlamaModel.block(capture=...)``), summed in float64.

By default only the block linears ("blk.*") are collected, as llama-imatrix does without
``--process-output``; ``process_output=True`` adds the output projection (``output.weight``,
or ``token_embd.weight`` when tied), whose input is RMSNorm(h) ⊙ g_out.

The file format (GGUF ``*.in_sum2`` / ``*.counts`` and the ``imatrix.*`` keys) is
``refquant.gguf.imatrix``.

Ref: llama.cpp tools/imatrix/imatrix.cpp (IMatrixCollector::collect_imatrix, compute_imatrix).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import numpy as np

from ._backend import to_numpy
from .model.llama import rms_norm
from .model.ppl import windows

__all__ = ["Imatrix", "compute_imatrix", "DEFAULT_CHUNK"]

DEFAULT_CHUNK = 512  # llama-imatrix's default context (-c 512)


@dataclasses.dataclass
class Imatrix:
    """Σ x² per input column (float64) and the rows summed, per weight matrix; and provenance.

    sums: {GGUF weight name: (n_in,)}; counts: {name: rows}; chunk_count chunks of chunk_size tokens.
    """

    sums: dict[str, np.ndarray]
    counts: dict[str, int]
    chunk_count: int
    chunk_size: int
    datasets: list[str] = dataclasses.field(default_factory=list)

    def values(self) -> dict[str, np.ndarray]:
        """{name: float32 mean x² per column}: what ``load_imatrix`` reads back from the file."""
        return {n: (s / self.counts[n]).astype(np.float32) for n, s in self.sums.items()}

    def save(self, path: str) -> None:
        """llama-imatrix's GGUF file (``refquant.gguf.imatrix.write_imatrix``)."""
        from .gguf.imatrix import write_imatrix

        write_imatrix(path, self.sums, self.counts, datasets=self.datasets, chunk_count=self.chunk_count,
                      chunk_size=self.chunk_size)


def compute_imatrix(model: Any, tokens: Any, chunk_size: int = DEFAULT_CHUNK, max_chunks: int | None = None,
                    process_output: bool = False, datasets: Iterable[str] = (),
                    progress: Callable[..., Iterable] | None = None) -> Imatrix:
    """The importance matrix of ``model`` (a ``refquant.model.LlamaModel``) on token ids ``tokens``.

    tokens: (n,) ints, cut into ⌊n / chunk_size⌋ chunks (at most ``max_chunks``); see the module
    docstring. -> ``Imatrix``. ValueError if fewer tokens than one chunk.
    """
    chunks = windows(np.asarray(tokens, dtype=np.int64), chunk_size, max_chunks)  # (n_chunks, chunk_size)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    loop = progress(chunks, desc="imatrix", total=len(chunks)) if progress else chunks
    for chunk in loop:
        add_chunk(sums, counts, chunk_statistics(model, chunk, process_output))
    return Imatrix(sums, counts, len(chunks), chunk_size, list(datasets))


def chunk_statistics(model: Any, chunk: Any, process_output: bool = False) -> dict[str, tuple[np.ndarray, int]]:
    """One chunk's forward pass: {linear's GGUF name: (Σ_t x_tj² (in,) float64, rows T)}.

    ``compute_imatrix`` adds these chunk by chunk (``add_chunk``); refquant.distributed computes
    them on workers and adds them on the client in the same chunk order, so the float64 sums agree.
    """
    tok = getattr(model, "tokenizer", None)
    bos = int(tok.bos_id) if tok is not None and getattr(tok, "add_bos", False) and tok.bos_id is not None else None
    out: dict[str, tuple[np.ndarray, int]] = {}

    def see(name: str, x: Any) -> None:               # the runtime's capture hook: x (T, in) of linear `name`
        x64 = to_numpy(x).astype(np.float64)
        out[name] = (np.sum(x64 * x64, axis=0), int(x64.shape[0]))  # (in,); each linear is seen once a chunk

    chunk = np.array(chunk, dtype=np.int64)
    if bos is not None:
        chunk[0] = bos
    h = model.embed(chunk)                                                      # (T, d)
    for i in range(model.config.n_layer):
        h = model.block(i, h, capture=see)                                      # (T, d)
    if process_output:
        head = "output.weight" if "output.weight" in model.weights else "token_embd.weight"
        see(head, rms_norm(h, model.weights["output_norm.weight"], model.config.rms_eps))  # the head's input
    return out


def add_chunk(sums: dict[str, np.ndarray], counts: dict[str, int], stats: dict[str, tuple[np.ndarray, int]]) -> None:
    """sums[name] += Σx² of one chunk, counts[name] += its rows (the running totals, chunk order)."""
    for name, (sq, n) in stats.items():
        sums[name] = sq if name not in sums else sums[name] + sq
        counts[name] = counts.get(name, 0) + n
