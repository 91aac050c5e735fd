"""Whole-file quantization: a GGUF model file in, a llama.cpp mixture out, as llama-quantize does.

    summary = refquant.gguf.convert.quantize_file("model-f32.gguf", "model-q4_k_m.gguf", "Q4_K_M")

The mixture (which type each tensor gets) is ``refquant.gguf.recipes``; this module reads
the input, quantizes tensor by tensor in llama.cpp's order and writes the output atomically
(``refquant.gguf.file.write``).

It streams, so a model larger than memory goes through:

    read(src, stream=True)        header + tensor table only; rows mapped on request
    write(dst, header, [lazy])    header first (every size follows from type and shape),
                                  then each tensor as its pieces come
    piece = rows [r0, r1) of one tensor, about ``chunk_weights`` weights:
            decode to float32 (F32: a view) -> quantize -> bytes

Pieces are quantized by ``threads`` workers (NumPy releases the GIL inside its kernels)
and written in file order, at most ``2 · threads`` pieces ahead of the writer. Memory is
therefore O(threads · chunk_weights) besides the header — not the model, not even the
largest tensor. Every ggml type quantizes rows independently (llama-quantize cuts its
threads' work into row chunks too), so the bytes do not depend on ``threads`` or
``chunk_weights``; tests/test_threads.py checks both.

Ref: llama.cpp src/llama-quant.cpp (llama_model_quantize_impl, llama_tensor_quantize_impl).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from . import recipes
from .imatrix import load_imatrix
from .recipes import ModelInfo
from .types import ggml_type, row_bytes

__all__ = ["quantize_file", "QuantizeSummary", "CHUNK_WEIGHTS"]

CHUNK_WEIGHTS = 1 << 20  # weights per piece: 4 MiB of float32, whole rows (at least one)


@dataclasses.dataclass
class QuantizeSummary:
    """What quantize_file did: weights, bytes before/after, bits per weight, types used."""

    n_weights: int
    bytes_in: int
    bytes_out: int
    types: dict[str, str]
    n_fallback: int

    @property
    def bpw_in(self) -> float:
        return 8.0 * self.bytes_in / self.n_weights

    @property
    def bpw_out(self) -> float:
        return 8.0 * self.bytes_out / self.n_weights

    def table(self) -> str:
        counts = Counter(self.types.values())
        kinds = ", ".join(f"{t}: {n}" for t, n in sorted(counts.items(), key=lambda kv: -kv[1]))
        return (f"{len(self.types)} tensors ({kinds}); {self.n_weights:,} weights; "
                f"{self.bytes_in / 2**20:.2f} MiB ({self.bpw_in:.2f} bpw) -> "
                f"{self.bytes_out / 2**20:.2f} MiB ({self.bpw_out:.2f} bpw)")


def quantize_file(src: str, dst: str, ftype: str, imatrix: Mapping[str, np.ndarray] | str | None = None,
                  progress: Callable[[Iterable], Iterable] | None = None, *,
                  types_override: Mapping[str, str] | None = None, threads: int | None = None,
                  chunk_weights: int = CHUNK_WEIGHTS, executor: Callable[[str], Any] | None = None) -> QuantizeSummary:
    """Quantize a GGUF model file with a llama.cpp mixture, as llama-quantize does.

    Tensors keep llama.cpp's order; a tensor whose type does not change is copied byte
    for byte; a quantized input tensor is decoded to float32 first (llama-quantize's
    --allow-requantize). Metadata is copied with its value types, then
    general.quantization_version = 2 and general.file_type = the llama_ftype are
    (re)appended, and split keys dropped. The output is written atomically: on any error
    ``dst`` is left as it was.

    ``types_override`` ({tensor name: ggml type}) overrides the mixture's choice for the tensors it
    names (an allocation computed elsewhere); general.file_type still records ``ftype``.
    ``threads`` workers (default: the machine's cores) quantize pieces of about
    ``chunk_weights`` weights; the output bytes are the same for every value of either.
    ``progress`` wraps the tensor names (a bar ticks as each tensor starts being written).
    ``executor(src)``, if given, replaces the thread pool: a context manager whose ``ordered(pieces)``
    yields each piece's bytes in order (``refquant.distributed.executor``: a Dask cluster).
    """
    from . import file

    ftype = recipes._ftype_name(ftype)
    threads = _positive(os.cpu_count() or 1 if threads is None else threads, "threads")
    chunk_weights = _positive(chunk_weights, "chunk_weights")
    if isinstance(imatrix, (str, os.PathLike)):
        imatrix = load_imatrix(os.fspath(imatrix))
    file.check_destination(dst)  # a device or FIFO at dst: refused before the work, not after
    with file.read(src, stream=True) as f:
        if not f.tensors:  # nothing to quantize, and bits per weight would be 0 / 0
            raise ValueError(f"src: {os.fspath(src)!r} holds no tensors; nothing to quantize")
        info = ModelInfo.from_metadata(f.metadata)
        types, n_fallback = recipes._assign(f, ftype, info, imatrix is not None)
        if types_override:
            unknown = sorted(set(types_override) - set(types))
            if unknown:
                raise ValueError(f"types: {unknown[0]!r} is not a tensor of {os.fspath(src)!r}")
            types.update({n: ggml_type(t).name for n, t in types_override.items()})
        metadata = {k: v for k, v in f.metadata.items() if not k.startswith("split.")}
        metadata_types = {k: v for k, v in f.metadata_types.items() if k in metadata}
        for key, value in (("general.quantization_version", recipes.QUANTIZATION_VERSION),
                           ("general.file_type", recipes.FTYPES[ftype][0])):
            metadata.pop(key, None)
            metadata_types.pop(key, None)
            metadata[key] = value
            metadata_types[key] = file.ValueType.UINT32
        names = list(types)
        plans = [_plan(f.tensors[n], types[n], _tensor_imatrix(imatrix, f.tensors[n]), chunk_weights) for n in names]
        ticks = iter(progress(names)) if progress else None
        with _Workers(threads) if executor is None else executor(os.fspath(src)) as workers:
            pieces = workers.ordered(piece for plan in plans for piece in plan.pieces)
            out = [(p.name, p.qtype, p.shape, _tensor_bytes(p, pieces, ticks)) for p in plans]
            file.write(dst, metadata, out, metadata_types=metadata_types)
        if ticks is not None:
            next(ticks, None)  # let the bar close
        n_weights = sum(t.n_elements for t in f.tensors.values())
        bytes_in = sum(t.nbytes for t in f.tensors.values())
    bytes_out = sum(p.nbytes for p in plans)
    return QuantizeSummary(n_weights, bytes_in, bytes_out, types, n_fallback)


def _positive(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


class _Piece(NamedTuple):
    """Rows [start, stop) of one tensor (flattened to 2-D), to copy or to quantize."""

    tensor: Any               # file.TensorInfo
    qtype: str                # the output type
    start: int
    stop: int
    imatrix: np.ndarray | None  # (n,) for these rows (an expert's share of a per-expert imatrix)


class _Plan(NamedTuple):
    """One output tensor: its name, type, shape, bytes, and the pieces that make them in order."""

    name: str
    qtype: str
    shape: tuple[int, ...]
    nbytes: int
    pieces: list[_Piece]


def _tensor_imatrix(imatrix: Mapping[str, np.ndarray] | None, t) -> np.ndarray | None:
    if imatrix is None or t.name not in imatrix:
        return None
    return np.asarray(imatrix[t.name], dtype=np.float32)


def _plan(t, qtype: str, qw: np.ndarray | None, chunk_weights: int) -> _Plan:
    """Cut a tensor into pieces of whole rows, about ``chunk_weights`` weights each; a piece never
    straddles two experts when the imatrix holds one vector per expert (n_per_row · n_expert values)."""
    n = t.shape[-1]
    n_mat = 1
    if qw is not None and qw.size != n and qtype != t.type:
        n_mat = int(np.prod(t.shape[:-2])) if len(t.shape) > 2 else 1
        if qw.size != n * n_mat:
            raise ValueError(f"imatrix: {qw.size} values for {t.name}, expected {n} (or {n} per expert)")
    rows_per_mat = t.n_rows // n_mat
    step = max(1, chunk_weights // n)
    pieces = []
    for i in range(n_mat):
        qw_i = None if qw is None or qtype == t.type else qw[i * n:(i + 1) * n] if n_mat > 1 else qw
        base = i * rows_per_mat
        for lo in range(0, rows_per_mat, step):
            pieces.append(_Piece(t, qtype, base + lo, base + min(lo + step, rows_per_mat), qw_i))
    return _Plan(t.name, qtype, t.shape, t.n_rows * row_bytes(qtype, n), pieces)


def _make_piece(piece: _Piece) -> np.ndarray:
    """The output bytes of one piece: (stop - start, row_bytes) uint8."""
    from . import dequantize, quantize

    t = piece.tensor
    raw = t.rows(piece.start, piece.stop)                                     # (r, row_bytes) mapped
    if piece.qtype == t.type:
        return raw                                                             # copied byte for byte
    weights = raw.view(np.float32) if t.type == "F32" else dequantize(np.asarray(raw), t.type)  # (r, n)
    return quantize(weights, piece.qtype, imatrix=piece.imatrix)               # (r, row_bytes out)


def _tensor_bytes(plan: _Plan, pieces: Iterator[np.ndarray], ticks: Iterator | None) -> Callable[[], Iterator]:
    """The writer's callable for one tensor: the next len(plan.pieces) results of the shared stream."""
    def make() -> Iterator[np.ndarray]:
        if ticks is not None:
            next(ticks, None)
        return itertools.islice(pieces, len(plan.pieces))
    return make


class _Workers:
    """``threads`` workers; ``ordered(pieces)`` yields _make_piece of each, in order, at most
    2 · threads ahead of the consumer (so at most that many results are held)."""

    def __init__(self, threads: int):
        self.threads = threads
        self.pool = ThreadPoolExecutor(threads, thread_name_prefix="refquant-quantize") if threads > 1 else None

    def ordered(self, pieces: Iterable[_Piece]) -> Iterator[np.ndarray]:
        if self.pool is None:
            yield from map(_make_piece, pieces)
            return
        ahead: deque = deque()
        todo = iter(pieces)
        for piece in itertools.islice(todo, 2 * self.threads):
            ahead.append(self.pool.submit(_make_piece, piece))
        while ahead:
            result = ahead.popleft().result()
            for piece in itertools.islice(todo, 1):
                ahead.append(self.pool.submit(_make_piece, piece))
            yield result

    def __enter__(self) -> "_Workers":
        return self

    def __exit__(self, *exc) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
