"""Print a GGUF file's header, metadata and tensor table, after checking it.

    refquant inspect model.gguf                  header, metadata, tensors, per-type summary
    refquant inspect model.gguf --no-tensors     header and metadata only
    refquant inspect model.gguf --items 10       show up to 10 elements of each array

The file goes through refquant's checked reader (refquant.gguf.file): a malformed file
is reported in one line naming the field and its byte offset, exit status 2.
Sizes are bytes of tensor data; bpw = 8 * bytes / weights. This module formats; the
command (arguments, path checks, exit status) is ``refquant.cli.inspect``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import file as gguf_file

__all__ = ["format_file"]


# ----------------------------------------------------------------------------- formatting


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # unreachable


def _type_name(spec) -> str:
    return gguf_file._spec_name(spec)


def _short(value: Any, width: int = 72) -> str:
    text = str(value) if isinstance(value, np.floating) else repr(value)
    return text if len(text) <= width else text[:width - 3] + "..."


def _value(value: Any, items: int) -> str:
    """A metadata value on one line: arrays as their first ``items`` elements and their length."""
    if isinstance(value, (list, np.ndarray)):
        shown = ", ".join(_short(v.item() if isinstance(v, np.generic) else v, 24) for v in value[:items])
        more = ", ..." if len(value) > items else ""
        return f"[{shown}{more}] ({len(value)} items)"
    return _short(value)


def format_file(f: gguf_file.GGUFFile, path: str = "", *, metadata: bool = True, tensors: bool = True,
                items: int = 4) -> str:
    """The text ``refquant inspect`` prints for a read file."""
    infos = list(f.tensors.values())
    n_weights = sum(t.n_elements for t in infos)
    n_bytes = sum(t.nbytes for t in infos)
    lines = [f"{path or '<bytes>'}: GGUF v{f.version}, {_size(f.size)}, {len(f.metadata)} metadata keys, "
             f"{len(infos)} tensors, {n_weights:,} weights",
             f"  alignment {f.alignment}, tensor data from byte {f.data_offset}, "
             f"{f.trailing_bytes} trailing bytes"]
    if metadata:
        lines += ["", "metadata"]
        key_w = max((len(k) for k in f.metadata), default=3)
        type_w = max((len(_type_name(s)) for s in f.metadata_types.values()), default=4)
        for key, value in f.metadata.items():
            spec = f.metadata_types[key]
            if spec == gguf_file.ValueType.FLOAT32:  # shortest text that reads back as the same float32
                value = np.float32(value)
            lines.append(f"  {key:<{key_w}}  {_type_name(spec):<{type_w}}  {_value(value, items)}")
    if tensors and infos:
        rows = [(t.name, t.type, " x ".join(map(str, t.shape)), f"{t.n_elements:,}", f"{t.nbytes:,}",
                 f"{8 * t.nbytes / t.n_elements:.2f}") for t in infos]
        lines += ["", "tensors", *_table(("name", "type", "shape", "weights", "bytes", "bpw"), rows, right=3)]
        by_type: dict[str, list[int]] = {}
        for t in infos:
            acc = by_type.setdefault(t.type, [0, 0, 0])
            acc[0] += 1
            acc[1] += t.n_elements
            acc[2] += t.nbytes
        summary = [(name, f"{c:,}", f"{w:,}", f"{b:,}", f"{8 * b / w:.2f}") for name, (c, w, b) in by_type.items()]
        summary.append(("all", f"{len(infos):,}", f"{n_weights:,}", f"{n_bytes:,}", f"{8 * n_bytes / n_weights:.2f}"))
        lines += ["", "by type", *_table(("type", "tensors", "weights", "bytes", "bpw"), summary, right=1)]
    return "\n".join(lines)


def _table(header, rows, right: int) -> list[str]:
    """Columns padded to width; columns from index ``right`` on are right-aligned (numbers)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(r):
        cells = [str(c).rjust(w) if i >= right else str(c).ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        return "  " + "  ".join(cells).rstrip()
    return [line(header), *map(line, rows)]
