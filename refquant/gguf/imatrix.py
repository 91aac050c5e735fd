"""Importance-matrix files: what llama-imatrix writes and ``refquant quantize --imatrix`` reads.

An importance matrix holds, per weight matrix, the mean of x_j² over the calibration
activations x that met each input column j; the weighted searches of the k-quants and
i-quants (``refquant.gguf``) weight each weight's squared error by it.

Writing (``write_imatrix``) follows llama-imatrix's GGUF output: metadata
``general.type = "imatrix"``, ``imatrix.datasets`` (array of strings), ``imatrix.chunk_count``
and ``imatrix.chunk_size`` (uint32); then, tensors sorted by name, for each matrix

    <name>.in_sum2   F32, shape (n_mat, n_per_row)   Σ_t x_tj² over every token row t that met it
    <name>.counts    F32, shape (n_mat, 1)           how many rows were summed

so that in_sum2 / counts is the mean squared activation of column j (what ``load_imatrix``
returns and the weighted quantizers read).

Ref: llama.cpp tools/quantize/quantize.cpp (load_imatrix), tools/imatrix/imatrix.cpp
(IMatrixCollector::save_imatrix, the LLM_KV_IMATRIX_* keys).
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["load_imatrix", "write_imatrix", "IMATRIX_KEYS"]

# llama-imatrix's metadata keys (tools/imatrix/imatrix.cpp, LLM_KV_IMATRIX_*)
IMATRIX_KEYS = {"type": "general.type", "datasets": "imatrix.datasets", "chunk_count": "imatrix.chunk_count",
                "chunk_size": "imatrix.chunk_size"}


def write_imatrix(path: str, sums: dict[str, np.ndarray], counts: dict[str, int], *, datasets: list[str] = (),
                  chunk_count: int = 0, chunk_size: int = 0) -> None:
    """Write llama-imatrix's GGUF importance-matrix file (module docstring), atomically.

    sums: {tensor name: Σ x² per input column, (n_per_row,) or (n_mat, n_per_row)};
    counts: {tensor name: rows summed (an int, or one per matrix)}. Sums are stored as float32,
    as llama-imatrix stores its float accumulators.

    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "imatrix.gguf")
    >>> write_imatrix(path, {"blk.0.attn_q.weight": np.array([2.0, 8.0])}, {"blk.0.attn_q.weight": 4})
    >>> load_imatrix(path)["blk.0.attn_q.weight"].tolist()
    [0.5, 2.0]
    """
    from . import file

    if set(sums) != set(counts):
        missing = sorted(set(sums) ^ set(counts))[0]
        raise ValueError(f"counts: sums and counts must name the same tensors ({missing!r} is in only one)")
    metadata = {IMATRIX_KEYS["type"]: "imatrix", IMATRIX_KEYS["datasets"]: [str(d) for d in datasets],
                IMATRIX_KEYS["chunk_count"]: int(chunk_count), IMATRIX_KEYS["chunk_size"]: int(chunk_size)}
    types = {IMATRIX_KEYS["type"]: file.ValueType.STRING,
             IMATRIX_KEYS["datasets"]: (file.ValueType.ARRAY, file.ValueType.STRING),
             IMATRIX_KEYS["chunk_count"]: file.ValueType.UINT32, IMATRIX_KEYS["chunk_size"]: file.ValueType.UINT32}
    tensors = []
    for name in sorted(sums):  # llama-imatrix: "deterministic tensor name order"
        s = np.asarray(sums[name], dtype=np.float32)
        s = s.reshape(1, -1) if s.ndim == 1 else s                                   # (n_mat, n_per_row)
        c = np.asarray(counts[name], dtype=np.float32).reshape(-1, 1)                # (n_mat, 1)
        if c.shape[0] not in (1, s.shape[0]):
            raise ValueError(f"counts[{name!r}]: {c.shape[0]} counts for {s.shape[0]} matrices")
        c = np.broadcast_to(c, (s.shape[0], 1))
        if not (np.all(np.isfinite(s)) and np.all(s >= 0) and np.all(c >= 0)):
            raise ValueError(f"sums[{name!r}]: sums of squares and counts must be finite and >= 0")
        tensors.append((f"{name}.in_sum2", "F32", s.shape, np.ascontiguousarray(s).view(np.uint8)))
        tensors.append((f"{name}.counts", "F32", c.shape, np.ascontiguousarray(c).view(np.uint8)))
    file.write(path, metadata, tensors, metadata_types=types)


def load_imatrix(path: str) -> dict[str, np.ndarray]:
    """An importance matrix written by llama-imatrix: {tensor name: float32 (n_per_row · n_mat,)}.

    GGUF format: tensors ``<name>.in_sum2`` (Σ x² per column, per matrix) and
    ``<name>.counts`` (how many rows were summed); the value is in_sum2 / count, or 1 for a
    matrix that never saw input. Legacy ``.dat``: int32 n_entries, then per entry
    int32 len, name, int32 ncall, int32 nval, nval float32 sums; the value is sum / ncall.
    Every value must be finite and ≥ 0: else ValueError "imatrix: <tensor>: column j is ..."
    (refquant.gguf.validate_imatrix), one line from ``refquant quantize``.
    """
    from . import file, validate_imatrix

    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic == b"GGUF":
        out: dict[str, np.ndarray] = {}
        with file.read(path) as f:
            sums = {n[: -len(".in_sum2")]: t for n, t in f.tensors.items() if n.endswith(".in_sum2")}
            for name, t in sums.items():
                counts_info = f.tensors.get(f"{name}.counts")
                if counts_info is None:
                    raise ValueError(f"imatrix: {name}.in_sum2 has no matching {name}.counts tensor")
                s = np.array(t.raw).view(np.float32).reshape(-1, t.shape[-1])      # (n_mat, n_per_row)
                c = np.array(counts_info.raw).view(np.float32).reshape(-1, 1)      # (n_mat, 1)
                if c.shape[0] != s.shape[0]:
                    raise ValueError(f"imatrix: {name}: {s.shape[0]} matrices but {c.shape[0]} counts")
                with np.errstate(divide="ignore", invalid="ignore"):
                    out[name] = np.where(c > 0, s / np.where(c > 0, c, 1), np.float32(1)).astype(np.float32).ravel()
        for name, values in out.items():  # negative / NaN / inf entries: ValueError naming imatrix, the tensor, the column
            validate_imatrix(values, where=f"{name}: ")
        return out
    with open(path, "rb") as fh:
        data = fh.read()
    try:
        pos = 0
        (n_entries,) = struct.unpack_from("<i", data, pos); pos += 4
        if n_entries < 1:
            raise ValueError("no entries")
        out = {}
        for _ in range(n_entries):
            (length,) = struct.unpack_from("<i", data, pos); pos += 4
            if length <= 0 or pos + length > len(data):
                raise ValueError("bad name length")
            name = data[pos : pos + length].decode("utf-8"); pos += length
            ncall, nval = struct.unpack_from("<ii", data, pos); pos += 8
            if nval <= 0 or pos + 4 * nval > len(data):
                raise ValueError(f"bad value count for {name}")
            values = np.frombuffer(data, np.float32, nval, pos).copy(); pos += 4 * nval
            out[name] = values / np.float32(ncall) if ncall > 0 else values
    except (struct.error, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"imatrix: {path} is neither a GGUF imatrix nor a legacy llama-imatrix file ({e})") from None
    for name, values in out.items():
        validate_imatrix(values, where=f"{name}: ")
    return out
