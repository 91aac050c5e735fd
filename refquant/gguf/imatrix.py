"""Importance-matrix files: what llama-imatrix writes and ``refquant quantize --imatrix`` reads.

An importance matrix holds, per weight matrix, the mean of x_j² over the calibration
activations x that met each input column j; the weighted searches of the k-quants and
i-quants (``refquant.gguf``) weight each weight's squared error by it.

Ref: llama.cpp tools/quantize/quantize.cpp (load_imatrix), tools/imatrix/imatrix.cpp.
"""

from __future__ import annotations

import struct

import numpy as np

__all__ = ["load_imatrix"]


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
