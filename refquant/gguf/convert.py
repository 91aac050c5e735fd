"""Whole-file quantization: a GGUF model file in, a llama.cpp mixture out, as llama-quantize does.

    summary = refquant.gguf.convert.quantize_file("model-f32.gguf", "model-q4_k_m.gguf", "Q4_K_M")

The mixture (which type each tensor gets) is ``refquant.gguf.recipes``; this module reads
the input, quantizes tensor by tensor in llama.cpp's order and writes the output atomically
(``refquant.gguf.file.write``).

Ref: llama.cpp src/llama-quant.cpp (llama_model_quantize_impl).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter
from typing import Callable, Iterable, Mapping

import numpy as np

from . import recipes
from .imatrix import load_imatrix
from .recipes import ModelInfo
from .types import ggml_type

__all__ = ["quantize_file", "QuantizeSummary"]


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
                  types_override: Mapping[str, str] | None = None) -> QuantizeSummary:
    """Quantize a GGUF model file with a llama.cpp mixture, as llama-quantize does.

    Tensors keep llama.cpp's order; a tensor whose type does not change is copied byte
    for byte; a quantized input tensor is decoded to float32 first (llama-quantize's
    --allow-requantize). Metadata is copied with its value types, then
    general.quantization_version = 2 and general.file_type = the llama_ftype are
    (re)appended, and split keys dropped. The output is written atomically: on any error
    ``dst`` is left as it was.

    ``types_override`` ({tensor name: ggml type}) overrides the mixture's choice for the tensors it
    names (an allocation computed elsewhere); general.file_type still records ``ftype``.
    """
    from . import dequantize, file, quantize

    ftype = recipes._ftype_name(ftype)
    if isinstance(imatrix, (str, os.PathLike)):
        imatrix = load_imatrix(os.fspath(imatrix))
    file.check_destination(dst)  # a device or FIFO at dst: refused before the work, not after
    with file.read(src) as f:
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
        out = []
        names = list(types)
        for name in (progress(names) if progress else names):
            t = f.tensors[name]
            new = types[name]
            if new == t.type:
                out.append((name, new, t.shape, np.asarray(t.raw)))
                continue
            weights = t.raw.view(np.float32) if t.type == "F32" else dequantize(np.asarray(t.raw), t.type)
            qw = None
            if imatrix is not None and name in imatrix:
                qw = np.asarray(imatrix[name], dtype=np.float32)
            out.append((name, new, t.shape, _quantize_tensor(quantize, weights, new, qw, name)))
        file.write(dst, metadata, out, metadata_types=metadata_types)
        n_weights = sum(t.n_elements for t in f.tensors.values())
        bytes_in = sum(t.nbytes for t in f.tensors.values())
    bytes_out = sum(int(np.asarray(raw).nbytes) for _, _, _, raw in out)
    return QuantizeSummary(n_weights, bytes_in, bytes_out, types, n_fallback)


def _quantize_tensor(quantize, weights: np.ndarray, qtype: str, qw: np.ndarray | None, name: str) -> np.ndarray:
    """One tensor; an imatrix of n_per_row · n_expert values is split per expert (3-D tensors)."""
    n = weights.shape[-1]
    if qw is None or qw.size == n:
        return quantize(weights, qtype, imatrix=qw)
    n_mat = int(np.prod(weights.shape[:-2])) if weights.ndim > 2 else 1
    if qw.size != n * n_mat:
        raise ValueError(f"imatrix: {qw.size} values for {name}, expected {n} (or {n} per expert)")
    mats = weights.reshape(n_mat, -1, n)
    return np.stack([quantize(m, qtype, imatrix=qw[i * n : (i + 1) * n]) for i, m in enumerate(mats)]).reshape(
        *weights.shape[:-1], -1)
