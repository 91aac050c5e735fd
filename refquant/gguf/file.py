"""GGUF files, read and written by refquant itself: every count checked before it is trusted.

A GGUF file (little-endian, spec: ggml-org/ggml docs/gguf.md) is

    magic "GGUF" | version u32 | n_tensors u64 | n_kv u64          header, 24 bytes
    n_kv x      key: string | value_type u32 | value                 metadata
    n_tensors x name: string | n_dims u32 | ne[n_dims] u64 | type u32 | offset u64
    zero padding up to the next multiple of ``alignment``           (general.alignment, default 32)
    tensor data: tensor i at data_offset + offset_i, each padded to ``alignment``

    string = length u64 | UTF-8 bytes (no terminator)
    array  = element_type u32 | count u64 | count x element

A tensor's ``ne`` lists its dimensions fastest-first (ggml order); refquant shows NumPy
order, ``shape = ne[::-1]``, so the last axis is the row of ``ne[0]`` weights, stored as
``ne[0] / QK * type_size`` bytes (``refquant.gguf.types``).

Why another reader: GGUF files come from strangers, and a count, length, shape or offset
read from the file must never size an allocation or an index before it is checked against
the bytes actually left (the root cause of llama.cpp's loader CVEs). Every check below
raises ``GGUFFormatError`` (a ``ValueError``) naming the field and its byte offset, and
memory stays proportional to the file's size.

What is refused, what is tolerated (compared with llama.cpp's ``gguf_init_from_file_impl``,
ggml/src/gguf.cpp, and ``llama_model_loader``):

| check                                    | refquant  | llama.cpp (gguf_init_from_file)          |
|------------------------------------------|-----------|------------------------------------------|
| magic "GGUF"; version 2 or 3             | refused   | refused (v1, v0, > 3, byte-swapped)      |
| a count or length beyond the bytes left  | refused   | refused                                  |
| string (key, value, name) not UTF-8      | refused   | tolerated (bytes kept)                   |
| empty key                                | refused   | refused                                  |
| key over 65535 bytes (gguf.md's limit)   | refused   | tolerated                                |
| unknown value type; nested array         | refused   | refused                                  |
| bool other than 0 or 1                   | refused   | tolerated (read as true)                 |
| duplicate key or tensor name             | refused   | refused                                  |
| general.alignment not UINT32 / not 2^k   | refused   | refused                                  |
| tensor name >= 64 bytes (GGML_MAX_NAME)  | refused   | refused                                  |
| tensor name empty                        | refused   | tolerated                                |
| n_dims > 4                               | refused   | refused                                  |
| n_dims == 0                              | refused   | tolerated (a scalar)                     |
| a dimension == 0                         | refused   | tolerated (an empty tensor)              |
| a dimension >= 2^63; element count >= 2^63 | refused | refused                                  |
| type id unknown or removed               | refused   | refused                                  |
| ne[0] not a multiple of the block size   | refused   | refused                                  |
| tensor offset not aligned                | refused   | refused                                  |
| tensors overlapping                      | refused   | refused (offsets must be packed)         |
| gaps, tensors not in offset order        | tolerated | refused (offset == running sum)          |
| tensor data beyond the end of the file   | refused   | tolerated by the parser; the model loader refuses |
| padding after the last tensor missing    | tolerated | tolerated (no_alloc)                     |
| bytes after the last tensor              | tolerated, counted in ``trailing_bytes`` | tolerated |

(llama.cpp's column is measured on every row by tests/test_gguf_malformed.py, calling
``gguf_init_from_file`` of the libggml that llama-cpp-python ships.) Nested arrays and
n_dims == 0 are legal in gguf.md, but llama.cpp refuses the first and nothing writes the
second; a zero dimension would make a row of no bytes — refused so that every tensor
refquant hands out has data.

Reading maps the file (``mmap``) and parses only the header, metadata and tensor table;
``TensorInfo.raw`` is a NumPy view on the mapping, so tensor bytes are paged in on use.
``read(path, stream=True)`` maps nothing up front: it reads the header, metadata and
tensor table from a prefix of the file (grown while the parse needs more), and each
``raw`` or ``rows(start, stop)`` maps only those bytes until its array is freed — memory,
virtual included, stays O(the arrays alive) for a file of any size.
``read`` also accepts ``bytes`` or any buffer (parsed in place, nothing copied). A path
must name a regular file (or a symlink to one): a directory, FIFO, device or socket is
refused with ``NotAFileError`` *before* it is opened — open() on a FIFO blocks until a
writer appears, and /dev/zero would map as an endless run of zeros — and the kind is
checked again on the opened descriptor (O_NONBLOCK, so a FIFO swapped in meanwhile
cannot block either).

Writing (``write``) streams a file that llama.cpp and gguf-py read back identically:
header, metadata in the given order with the given value types, tensor table, each
tensor padded to the alignment. A tensor's bytes may be a callable, called only when the
writer reaches that tensor (the header, whose offsets follow from types and shapes, is
already out): a whole model then passes through in pieces. It writes atomically (``atomic_write``):

    Linux:    open(folder, O_TMPFILE)   an inode with no name: a crash leaves nothing behind
              write, fsync, fchmod
              linkat(/proc/self/fd/N -> .NAME.<random>.tmp)   a name, for os.replace
              os.replace(.NAME.<random>.tmp -> NAME), fsync(folder)
    elsewhere, or where the file system has no O_TMPFILE:
              a named .NAME.<random>.tmp beside NAME, then the same fsync / replace

The temporary file is ``flock``'ed by its writer for its whole life; after each
successful write, temporaries of the same NAME that nobody holds locked (left by a writer
that was SIGKILLed, or lost power) are removed. On any exception nothing is left beside
``NAME`` and ``NAME`` is untouched; an OSError names the path. An existing destination
that is not a regular file (a device, a FIFO, a directory) is refused, never replaced:
as root, ``os.replace`` would otherwise swap /dev/null for a regular file.

Because the old file is replaced (never truncated), rewriting a file that is currently
mapped — ``write(p, f.metadata, f.tensors.values(), metadata_types=f.metadata_types)``
with ``f = read(p)`` — is safe: the mapping keeps the old inode alive until it is closed.
(A file truncated in place by another program while mapped would fault on access;
refquant's writer never does that. On Windows a mapped file cannot be replaced: close it
first.) A symbolic link at the destination is replaced by the new file; the file it
pointed to is left as it was.

Ref: ggml docs/gguf.md; ggml/src/gguf.cpp (gguf_init_from_file_impl, gguf_write_to_buf);
gguf-py gguf/gguf_reader.py and gguf/gguf_writer.py (the oracles in tests).
"""

from __future__ import annotations

import enum
import errno
import mmap
import os
import re
import secrets
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Mapping, NamedTuple

import numpy as np

from .types import BY_ID, ggml_type

__all__ = [
    "GGUFFormatError", "NotAFileError", "GGUFFile", "TensorInfo", "ValueType", "read", "write", "to_bytes",
    "atomic_write", "file_kind", "open_regular", "check_destination",
    "GGUF_MAGIC", "DEFAULT_ALIGNMENT", "MAX_DIMS", "MAX_NAME_BYTES", "MAX_KEY_BYTES",
]

GGUF_MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)   # v1 used 32-bit counts; llama.cpp dropped it too
DEFAULT_ALIGNMENT = 32        # GGUF_DEFAULT_ALIGNMENT
ALIGNMENT_KEY = "general.alignment"
MAX_DIMS = 4                  # GGML_MAX_DIMS
MAX_NAME_BYTES = 63           # GGML_MAX_NAME = 64 including the C string's terminator
MAX_KEY_BYTES = 2**16 - 1     # gguf.md: keys are at most 65535 bytes
_INT64_MAX = 2**63 - 1
_HEADER_BYTES = 4 + 4 + 8 + 8
_MIN_KV_BYTES = 8 + 1 + 4 + 1           # key length, >= 1 key byte, value type, >= 1 value byte
_MIN_TENSOR_INFO_BYTES = 8 + 1 + 4 + 8 + 4 + 8   # name length, name, n_dims, ne[0], type, offset


class GGUFFormatError(ValueError):
    """A GGUF file breaks the format; ``field`` and ``offset`` say where.

    str(e) reads ``"<field> at byte <offset>: <what is wrong>"``.
    """

    def __init__(self, field: str, offset: int, message: str):
        self.field, self.offset = field, offset
        super().__init__(f"{field} at byte {offset}: {message}")


class NotAFileError(ValueError):
    """A path names something that is not a regular file (a directory, FIFO, device, socket).

    str(e) reads ``"'<path>' is a FIFO (named pipe), not a regular file"``; ``path`` and
    ``kind`` hold the two parts.
    """

    def __init__(self, path: str, kind: str, action: str = ""):
        self.path, self.kind = path, kind
        super().__init__(f"{path!r} is {kind}, not a regular file{action}")


def file_kind(mode: int) -> str:
    """What ``st_mode`` describes, in words: "a regular file", "a directory", "a FIFO (named pipe)" ..."""
    for test, kind in ((stat.S_ISREG, "a regular file"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return kind
    return "not a regular file"


def open_regular(path) -> int:
    """A read-only descriptor on ``path`` after checking it is a regular file (symlinks followed).

    The kind is checked with stat() before open() — so a FIFO is never opened, which would
    block — and again with fstat() on the descriptor, opened O_NONBLOCK | O_NOCTTY so that a
    FIFO or terminal swapped in between cannot block or become the controlling terminal.
    Raises FileNotFoundError (or another OSError naming the path) and NotAFileError.
    """
    path = os.fspath(path)
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(path, file_kind(st.st_mode))
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFileError(path, file_kind(st.st_mode))
    except BaseException:
        os.close(fd)
        raise
    return fd


class ValueType(enum.IntEnum):
    """Metadata value types (``enum gguf_type``; the same numbers as gguf-py's GGUFValueType)."""

    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


# fixed-size value types: little-endian NumPy dtype (its itemsize is the value's size)
_DTYPES = {
    ValueType.UINT8: np.dtype("<u1"), ValueType.INT8: np.dtype("<i1"),
    ValueType.UINT16: np.dtype("<u2"), ValueType.INT16: np.dtype("<i2"),
    ValueType.UINT32: np.dtype("<u4"), ValueType.INT32: np.dtype("<i4"),
    ValueType.UINT64: np.dtype("<u8"), ValueType.INT64: np.dtype("<i8"),
    ValueType.FLOAT32: np.dtype("<f4"), ValueType.FLOAT64: np.dtype("<f8"),
    ValueType.BOOL: np.dtype("<u1"),
}
# the same, as struct formats (standard sizes: "<Q" is always 8 bytes)
_STRUCTS = {vt: struct.Struct("<" + c) for vt, c in zip(
    (ValueType.UINT8, ValueType.INT8, ValueType.UINT16, ValueType.INT16, ValueType.UINT32, ValueType.INT32,
     ValueType.UINT64, ValueType.INT64, ValueType.FLOAT32, ValueType.FLOAT64, ValueType.BOOL), "BbHhIiQqfdB")}
assert all(_STRUCTS[vt].size == dt.itemsize for vt, dt in _DTYPES.items())
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_VALUE_TYPE_IDS = frozenset(int(vt) for vt in ValueType)

# a metadata value's type: ValueType for a scalar, (ValueType.ARRAY, element ValueType) for an array
TypeSpec = Any


def _spec_name(spec: TypeSpec) -> str:
    """ValueType.UINT32 -> "UINT32", (ARRAY, STRING) -> "ARRAY[STRING]"."""
    return f"ARRAY[{ValueType(spec[1]).name}]" if isinstance(spec, tuple) else ValueType(spec).name


def _align(n: int, alignment: int) -> int:
    """Round n up to a multiple of alignment (GGML_PAD)."""
    return (n + alignment - 1) // alignment * alignment


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table.

    shape is NumPy order (``ne`` reversed: last axis = one row of ``shape[-1]`` weights);
    offset is absolute in the file; ``raw`` is the tensor's bytes, a read-only uint8 view
    of shape ``(*shape[:-1], row_bytes)`` on the file (no copy).
    """

    name: str
    type: str
    type_id: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    _buffer: Any = field(repr=False, compare=False, default=None)

    @property
    def row_bytes(self) -> int:
        return self.nbytes // max(1, int(np.prod(self.shape[:-1], dtype=np.int64)))

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def raw(self) -> np.ndarray:
        if isinstance(self._buffer, _Windows):  # read(path, stream=True): this tensor's bytes mapped now
            return self._buffer.view(self.offset, self.nbytes).reshape(*self.shape[:-1], self.row_bytes)
        data = np.frombuffer(self._buffer, dtype=np.uint8, count=self.nbytes, offset=self.offset)
        return data.reshape(*self.shape[:-1], self.row_bytes)  # (..., row_bytes)

    @property
    def n_rows(self) -> int:
        """Rows of ``shape[-1]`` weights: the product of every axis but the last."""
        return int(np.prod(self.shape[:-1], dtype=np.int64))

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of the tensor flattened to 2-D: uint8 (stop - start, row_bytes).

        With ``read(path, stream=True)`` only those rows are mapped (virtual memory too),
        and unmapped when the array is freed; otherwise a view on the whole mapping.
        """
        if not (isinstance(start, int) and isinstance(stop, int) and 0 <= start < stop <= self.n_rows):
            raise ValueError(f"rows: expected 0 <= start < stop <= {self.n_rows}, got {start!r}, {stop!r}")
        rb = self.row_bytes
        if isinstance(self._buffer, _Windows):
            return self._buffer.view(self.offset + start * rb, (stop - start) * rb).reshape(stop - start, rb)
        return self.raw.reshape(self.n_rows, rb)[start:stop]


class GGUFFile:
    """A parsed GGUF file: header, metadata and tensor table; tensor bytes stay on disk.

    version, metadata (key -> value), metadata_types (key -> ValueType or
    (ValueType.ARRAY, element ValueType)), tensors (name -> TensorInfo, file order),
    alignment, data_offset (absolute start of the data section), size (file bytes),
    trailing_bytes (bytes after the last tensor's padded end). Use as a context manager,
    or call close(), to release the mapping.
    """

    def __init__(self, version, metadata, metadata_types, tensors, alignment, data_offset, size,
                 trailing_bytes, buffer=None, closer=None):
        self.version = version
        self.metadata: dict[str, Any] = metadata
        self.metadata_types: dict[str, TypeSpec] = metadata_types
        self.tensors: dict[str, TensorInfo] = tensors
        self.alignment = alignment
        self.data_offset = data_offset
        self.size = size
        self.trailing_bytes = trailing_bytes
        self._buffer = buffer
        self._closer = closer

    def close(self) -> None:
        """Release the mapping. Arrays still viewing it keep it alive until they are freed."""
        closer, self._closer = self._closer, None
        if isinstance(closer, _Windows):
            closer.close()
        elif closer is not None:
            _release(self._buffer, closer)

    def __enter__(self) -> "GGUFFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"GGUFFile(version={self.version}, {len(self.metadata)} keys, "
                f"{len(self.tensors)} tensors, alignment={self.alignment}, size={self.size})")


class _NeedMore(Exception):
    """The parse reached the end of a prefix of the file (not of the file): read ``end`` bytes, parse again."""

    def __init__(self, end: int):
        self.end = end


class _Cursor:
    """Reads little-endian fields from a buffer, checking each length against the bytes left.

    ``buf`` may be a prefix of a file of ``size`` bytes (``read(path, stream=True)``): a field
    beyond the file is a GGUFFormatError, a field beyond the prefix raises _NeedMore.
    """

    def __init__(self, buf: memoryview, size: int | None = None):
        self.buf = buf
        self.size = len(buf) if size is None else size
        self.pos = 0

    def need(self, n: int, field: str, what: str = "", at: int | None = None) -> None:
        """n more bytes must be left; else the error points at ``at`` (the count's field) or here."""
        left = self.size - self.pos
        if n > left:
            raise GGUFFormatError(field, self.pos if at is None else at,
                                  f"{what or f'{n} bytes'} needed but only {left} bytes left")
        if self.pos + n > len(self.buf):
            raise _NeedMore(self.pos + n)

    def scalar(self, vt: ValueType, field: str):
        st = _STRUCTS[vt]
        self.need(st.size, field)
        (v,) = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return v

    def u32(self, field: str) -> int:
        self.need(4, field)
        (v,) = _U32.unpack_from(self.buf, self.pos)
        self.pos += 4
        return v

    def u64(self, field: str) -> int:
        self.need(8, field)
        (v,) = _U64.unpack_from(self.buf, self.pos)
        self.pos += 8
        return v

    def string(self, field: str, index: int | None = None) -> str:
        """A length-prefixed UTF-8 string; ``index`` (an array element's) joins the field name
        only if there is an error, so the loop over a 50k-token vocabulary stays cheap."""
        start = self.pos
        if len(self.buf) - start < 8:
            self.need(8, _element(field, index))
        (n,) = _U64.unpack_from(self.buf, start)
        self.pos = start + 8
        if n > len(self.buf) - self.pos:
            self.need(n, _element(field, index), f"string of {n} bytes", at=start)
        raw = bytes(self.buf[self.pos:self.pos + n])
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise GGUFFormatError(_element(field, index), start + 8 + e.start, "not valid UTF-8") from None
        self.pos += n
        return s


    def strings(self, count: int, field: str) -> list[str]:
        """``count`` strings: ``string`` inlined, as a vocabulary holds ~50k of them."""
        buf, size, pos = self.buf, len(self.buf), self.pos  # a prefix's end: self.string says which end
        unpack = _U64.unpack_from
        out = []
        for i in range(count):
            if size - pos < 8 or unpack(buf, pos)[0] > size - pos - 8:
                self.pos = pos
                return out + [self.string(field, i)]  # raises, naming element i
            (n,) = unpack(buf, pos)
            pos += 8
            try:
                out.append(str(buf[pos:pos + n], "utf-8"))
            except UnicodeDecodeError:
                self.pos = pos - 8
                return out + [self.string(field, i)]  # raises, naming element i
            pos += n
        self.pos = pos
        return out


def _element(field: str, index: int | None) -> str:
    return field if index is None else f"{field}[{index}]"


def _read_value(cur: _Cursor, vt: int, key: str, type_offset: int):
    """One metadata value of type ``vt`` -> (python value, type spec)."""
    if vt not in _VALUE_TYPE_IDS:
        raise GGUFFormatError(f"metadata[{key!r}] value type", type_offset, f"unknown value type {vt}")
    vt = ValueType(vt)
    if vt == ValueType.STRING:
        return cur.string(f"metadata[{key!r}]"), vt
    if vt != ValueType.ARRAY:
        at = cur.pos
        v = cur.scalar(vt, f"metadata[{key!r}]")
        if vt == ValueType.BOOL:
            if v > 1:
                raise GGUFFormatError(f"metadata[{key!r}]", at, f"bool must be 0 or 1, got {v}")
            v = bool(v)
        return v, vt
    # array: element type, count, elements
    et_at = cur.pos
    et = cur.u32(f"metadata[{key!r}] array element type")
    if et == ValueType.ARRAY:
        raise GGUFFormatError(f"metadata[{key!r}] array element type", et_at, "nested arrays are not supported")
    if et not in _VALUE_TYPE_IDS:
        raise GGUFFormatError(f"metadata[{key!r}] array element type", et_at, f"unknown value type {et}")
    et = ValueType(et)
    count_at = cur.pos
    count = cur.u64(f"metadata[{key!r}] array count")
    if et == ValueType.STRING:
        # each string takes at least its 8-byte length: bound the count before looping
        cur.need(count * 8, f"metadata[{key!r}] array count", f"{count} strings (>= {count * 8} bytes)", at=count_at)
        values = cur.strings(count, f"metadata[{key!r}]")
        return values, (ValueType.ARRAY, et)
    dtype = _DTYPES[et]
    nbytes = count * dtype.itemsize
    cur.need(nbytes, f"metadata[{key!r}] array count", f"{count} x {et.name} ({nbytes} bytes)", at=count_at)
    values = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=cur.pos).copy()
    if et == ValueType.BOOL:
        bad = np.flatnonzero(values > 1)
        if bad.size:
            raise GGUFFormatError(f"metadata[{key!r}][{bad[0]}]", cur.pos + int(bad[0]), "bool must be 0 or 1")
        values = values.astype(bool)
    values = values.astype(dtype.newbyteorder("="))  # native order for the caller
    cur.pos += nbytes
    return values, (ValueType.ARRAY, et)


def _parse(buf: memoryview, size: int | None = None, tensor_bytes: Any = None) -> GGUFFile:
    """The whole file, in the order of the format: header, metadata, tensor table, data section.

    ``buf`` may be a prefix of a ``size``-byte file (raises _NeedMore); ``tensor_bytes`` is then
    where the tensors' bytes come from (a _Windows)."""
    cur = _Cursor(buf, size)
    header = _read_header(cur)
    metadata, types, value_at = _read_metadata(cur, header)
    alignment = _alignment(metadata, types, value_at)
    entries = _read_tensor_table(cur, header.n_tensors, alignment)
    data_offset = _align(cur.pos, alignment)
    end = data_offset + _align(_check_data_section(entries, cur.size - data_offset), alignment)
    source = buf if tensor_bytes is None else tensor_bytes
    tensors = {e.name: TensorInfo(e.name, e.type.name, e.type.id, e.shape, data_offset + e.offset, e.nbytes, source)
               for e in entries}
    return GGUFFile(header.version, metadata, types, tensors, alignment, data_offset, cur.size,
                    max(0, cur.size - end), None if tensor_bytes is not None else buf)


class _Header(NamedTuple):
    version: int
    n_tensors: int
    n_tensors_at: int  # where the count stands, for error messages
    n_kv: int


def _read_header(cur: _Cursor) -> _Header:
    """magic, version, n_tensors, n_kv — each count bounded by the bytes left before it is used."""
    cur.need(_HEADER_BYTES, "header", f"a {_HEADER_BYTES}-byte header")
    magic = bytes(cur.buf[0:4])
    if magic != GGUF_MAGIC:
        raise GGUFFormatError("magic", 0, f"expected b'GGUF', got {magic!r}")
    cur.pos = 4
    version = cur.u32("version")
    if version not in SUPPORTED_VERSIONS:
        swapped = int.from_bytes(version.to_bytes(4, "little"), "big")
        why = ("big-endian files are not supported" if swapped in (1, 2, 3) else
               "version 1 is not supported (32-bit counts)" if version == 1 else "unknown version")
        raise GGUFFormatError("version", 4, f"{version}: {why}; expected one of {SUPPORTED_VERSIONS}")
    n_tensors_at = cur.pos
    n_tensors = cur.u64("n_tensors")
    n_kv_at = cur.pos
    n_kv = cur.u64("n_kv")
    _check_tensor_count(cur, n_tensors, n_tensors_at)
    left = cur.size - cur.pos
    if n_kv > left // _MIN_KV_BYTES:
        raise GGUFFormatError("n_kv", n_kv_at, f"{n_kv} key/values cannot fit in the {left} bytes left")
    return _Header(version, n_tensors, n_tensors_at, n_kv)


def _check_tensor_count(cur: _Cursor, n_tensors: int, at: int) -> None:
    """n_tensors tensor infos of at least _MIN_TENSOR_INFO_BYTES must fit in the bytes left."""
    left = cur.size - cur.pos
    if n_tensors > left // _MIN_TENSOR_INFO_BYTES:
        raise GGUFFormatError("n_tensors", at, f"{n_tensors} tensor infos cannot fit in the {left} bytes left")


def _check_name(name: str, seen: Any, field: str, at: int, max_bytes: int, noun: str) -> None:
    """A metadata key or tensor name: not empty, at most ``max_bytes`` of UTF-8, not seen before."""
    if not name:
        raise GGUFFormatError(field, at, f"empty {noun}")
    if len(name.encode("utf-8")) > max_bytes:
        raise GGUFFormatError(field, at, f"{noun} {name[:40]!r} is longer than {max_bytes} bytes")
    if name in seen:
        raise GGUFFormatError(field, at, f"duplicate {noun} {name!r}")


def _read_metadata(cur: _Cursor, header: _Header) -> tuple[dict[str, Any], dict[str, TypeSpec], dict[str, int]]:
    """n_kv key/value pairs -> (metadata, value types, where each value's type field starts)."""
    metadata: dict[str, Any] = {}
    types: dict[str, TypeSpec] = {}
    value_at: dict[str, int] = {}  # for error messages about a value
    for i in range(header.n_kv):
        key_at = cur.pos
        key = cur.string(f"metadata key #{i}")
        _check_name(key, metadata, f"metadata key #{i}", key_at, MAX_KEY_BYTES, "key")
        vt_at = value_at[key] = cur.pos
        vt = cur.u32(f"metadata[{key!r}] value type")
        metadata[key], types[key] = _read_value(cur, vt, key, vt_at)
        _check_tensor_count(cur, header.n_tensors, header.n_tensors_at)
    return metadata, types, value_at


def _alignment(metadata: dict[str, Any], types: dict[str, TypeSpec], value_at: dict[str, int]) -> int:
    """general.alignment (a UINT32 power of two) or the default 32."""
    if ALIGNMENT_KEY not in metadata:
        return DEFAULT_ALIGNMENT
    alignment, at = metadata[ALIGNMENT_KEY], value_at[ALIGNMENT_KEY]
    if types[ALIGNMENT_KEY] != ValueType.UINT32:
        raise GGUFFormatError(f"metadata[{ALIGNMENT_KEY!r}]", at, f"must be UINT32, got {_spec_name(types[ALIGNMENT_KEY])}")
    if alignment == 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"metadata[{ALIGNMENT_KEY!r}]", at, f"{alignment} is not a power of two")
    return alignment


class _Entry(NamedTuple):
    """One row of the tensor table, checked; offset relative to the data section."""

    name: str
    type: Any         # GGMLType
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    offset_at: int    # where the offset field stands, for error messages


def _read_tensor_table(cur: _Cursor, n_tensors: int, alignment: int) -> list[_Entry]:
    """n_tensors tensor infos: name, n_dims, ne[n_dims], type, offset."""
    entries: list[_Entry] = []
    names: set[str] = set()
    for i in range(n_tensors):
        name_at = cur.pos
        name = cur.string(f"tensor #{i} name")
        _check_name(name, names, f"tensor #{i} name", name_at, MAX_NAME_BYTES, "tensor name")
        names.add(name)
        entries.append(_read_tensor_info(cur, name, alignment))
    return entries


def _read_tensor_info(cur: _Cursor, name: str, alignment: int) -> _Entry:
    """The rest of one tensor info, after its name."""
    f = f"tensor {name!r}"
    nd_at = cur.pos
    n_dims = cur.u32(f"{f} n_dims")
    if not 1 <= n_dims <= MAX_DIMS:
        raise GGUFFormatError(f"{f} n_dims", nd_at, f"{n_dims} dimensions; expected 1..{MAX_DIMS}")
    ne = []
    n_elements = 1
    for j in range(n_dims):
        at = cur.pos
        d = cur.u64(f"{f} ne[{j}]")
        if d == 0 or d > _INT64_MAX:
            raise GGUFFormatError(f"{f} ne[{j}]", at, f"dimension {d}; expected 1..{_INT64_MAX}")
        n_elements *= d
        if n_elements > _INT64_MAX:
            raise GGUFFormatError(f"{f} ne[{j}]", at, "element count overflows int64")
        ne.append(d)
    type_at = cur.pos
    type_id = cur.u32(f"{f} type")
    if type_id not in BY_ID:
        raise GGUFFormatError(f"{f} type", type_at, f"unknown ggml type id {type_id}")
    t = BY_ID[type_id]
    if ne[0] % t.block_size:
        raise GGUFFormatError(f"{f} ne[0]", nd_at + 4,
                              f"row length {ne[0]} is not a multiple of {t.name}'s block size {t.block_size}")
    off_at = cur.pos
    offset = cur.u64(f"{f} offset")
    if offset % alignment:
        raise GGUFFormatError(f"{f} offset", off_at, f"{offset} is not a multiple of the alignment {alignment}")
    return _Entry(name, t, tuple(reversed(ne)), offset, n_elements // t.block_size * t.type_size, off_at)


def _check_data_section(entries: list[_Entry], data_size: int) -> int:
    """Every tensor inside the data section of ``data_size`` bytes, none overlapping; returns the last end."""
    data_size = max(0, data_size)
    prev_end, prev_name = 0, None
    for e in sorted(entries, key=lambda e: e.offset):
        span = f"data [{e.offset}, {e.offset + e.nbytes})"
        if e.offset + e.nbytes > data_size:
            raise GGUFFormatError(f"tensor {e.name!r} offset", e.offset_at,
                                  f"{span} runs past the end of the {data_size}-byte data section")
        if e.offset < prev_end:
            raise GGUFFormatError(f"tensor {e.name!r} offset", e.offset_at,
                                  f"{span} overlaps tensor {prev_name!r} ending at {prev_end}")
        prev_end, prev_name = e.offset + e.nbytes, e.name
    return prev_end


def _release(view: memoryview, mm: mmap.mmap) -> None:
    """Unmap now if nothing views the mapping any more; else leave it to the garbage collector."""
    try:
        view.release()
        mm.close()
    except BufferError:
        pass  # a TensorInfo.raw array still views it: unmapped when that array is freed


class _Windows:
    """Where the tensors of ``read(path, stream=True)`` come from: an open descriptor, and a
    read-only mapping of just the bytes asked for, made on each request.

    The array ``view`` returns holds its own mapping (mmap keeps a duplicate of the
    descriptor), unmapped when the array is freed: memory — resident and virtual — stays
    proportional to the arrays alive, however large the file.
    """

    def __init__(self, fd: int, path: str):
        self.fd, self.path = fd, path

    def view(self, offset: int, nbytes: int) -> np.ndarray:
        """uint8 (nbytes,) read-only, the file's bytes [offset, offset + nbytes)."""
        if self.fd is None:
            raise ValueError(f"{self.path!r}: the file is closed; read its tensors before close()")
        start = offset - offset % mmap.ALLOCATIONGRANULARITY  # mmap offsets are page-aligned
        mm = mmap.mmap(self.fd, offset + nbytes - start, access=mmap.ACCESS_READ, offset=start)
        return np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=offset - start)

    def close(self) -> None:
        fd, self.fd = self.fd, None
        if fd is not None:
            os.close(fd)


_PREFIX_BYTES = 1 << 20  # stream=True reads the header in a prefix of 1 MiB, grown while the parse needs more


def _read_streaming(path) -> GGUFFile:
    """read(path, stream=True): parse a growing prefix (os.pread), map tensors on request."""
    fd = open_regular(path)
    try:
        size = os.fstat(fd).st_size
        windows = _Windows(fd, os.fspath(path))
        length = min(size, _PREFIX_BYTES)
        while True:
            prefix = os.pread(fd, length, 0)
            if len(prefix) < length:
                raise GGUFFormatError("file", len(prefix), f"{length} bytes expected; the file shrank while read")
            try:
                gf = _parse(memoryview(prefix), size, windows)
                break
            except _NeedMore as more:
                length = min(size, max(2 * length, more.end))
    except BaseException:
        os.close(fd)
        raise
    gf._closer = windows
    return gf


def read(source, *, stream: bool = False) -> GGUFFile:
    """Parse a GGUF file (a path) or GGUF bytes (``bytes``, ``bytearray``, ``memoryview``,
    any buffer) and check it; raise GGUFFormatError naming the field and byte offset.

    A path is memory-mapped read-only; tensor bytes are read when ``TensorInfo.raw`` is used.
    ``stream=True`` (a path only) maps nothing up front: the header, metadata and tensor
    table are read (the same checks), and each ``raw`` / ``rows()`` maps just those bytes
    until its array is freed — for files larger than memory, or than the address space a
    ``ulimit -v`` leaves. The file stays open until ``close()``.

    Example:
        >>> f = read(to_bytes({"general.name": "tiny"}, [("w", "F32", (1, 2), bytes(8))]))
        >>> f.metadata["general.name"], f.tensors["w"].shape, f.tensors["w"].raw.shape
        ('tiny', (1, 2), (1, 8))
    """
    if stream and not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source: stream=True reads a path, got {type(source).__name__}")
    if stream:
        return _read_streaming(source)
    if isinstance(source, (str, os.PathLike)):
        fd = open_regular(source)  # refuses a FIFO / device / folder before opening it
        try:
            size = os.fstat(fd).st_size
            if size == 0:  # an empty file cannot be mapped
                return _parse(memoryview(b""))
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        view = memoryview(mm)
        try:
            gf = _parse(view)
        except BaseException:
            _release(view, mm)
            raise
        gf._closer = mm
        return gf
    try:
        buf = memoryview(source)
    except TypeError:
        raise TypeError(f"source: expected a path or a bytes-like buffer, got {type(source).__name__}") from None
    return _parse(buf.cast("B") if buf.format != "B" or buf.ndim != 1 else buf)


# ----------------------------------------------------------------------------- writing


def _infer_type(key: str, value) -> TypeSpec:
    """The value type written when ``metadata_types`` does not name one (gguf-py's choices)."""
    if isinstance(value, (bool, np.bool_)):
        return ValueType.BOOL
    if isinstance(value, str):
        return ValueType.STRING
    if isinstance(value, np.generic):
        return _vt_of_dtype(key, value.dtype)
    if isinstance(value, int):
        return ValueType.INT32 if -2**31 <= value < 2**31 else ValueType.INT64
    if isinstance(value, float):
        return ValueType.FLOAT32
    if isinstance(value, np.ndarray):
        return (ValueType.ARRAY, _vt_of_dtype(key, value.dtype))
    if isinstance(value, (list, tuple)):
        if not value:
            raise ValueError(f"metadata[{key!r}]: cannot infer the element type of an empty list; "
                             "give it in metadata_types")
        et = _infer_type(key, value[0])
        if isinstance(et, tuple):
            raise ValueError(f"metadata[{key!r}]: nested arrays are not supported")
        return (ValueType.ARRAY, et)
    raise TypeError(f"metadata[{key!r}]: cannot store a {type(value).__name__} in GGUF")


def _vt_of_dtype(key: str, dtype) -> ValueType:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return ValueType.BOOL
    for vt, dt in _DTYPES.items():
        if vt != ValueType.BOOL and dt.kind == dtype.kind and dt.itemsize == dtype.itemsize:
            return vt
    raise TypeError(f"metadata[{key!r}]: no GGUF value type for dtype {dtype}")


def _check_spec(key: str, spec) -> TypeSpec:
    if isinstance(spec, tuple):
        if len(spec) != 2 or spec[0] != ValueType.ARRAY:
            raise ValueError(f"metadata_types[{key!r}]: expected a ValueType or (ValueType.ARRAY, element type), got {spec!r}")
        et = _check_spec(key, spec[1])
        if et == ValueType.ARRAY:
            raise ValueError(f"metadata_types[{key!r}]: nested arrays are not supported")
        return (ValueType.ARRAY, et)
    try:
        vt = ValueType(spec) if not isinstance(spec, str) else ValueType[spec.upper()]
    except (ValueError, KeyError):
        raise ValueError(f"metadata_types[{key!r}]: unknown value type {spec!r}") from None
    if vt == ValueType.ARRAY:
        raise ValueError(f"metadata_types[{key!r}]: give an array as (ValueType.ARRAY, element type)")
    return vt


def _encode_string(s: str, what: str) -> bytes:
    if not isinstance(s, str):
        raise TypeError(f"{what}: expected a str, got {type(s).__name__}")
    b = s.encode("utf-8")
    return _U64.pack(len(b)) + b


def _encode_scalar(key: str, vt: ValueType, v) -> bytes:
    if vt == ValueType.STRING:
        return _encode_string(v, f"metadata[{key!r}]")
    if vt == ValueType.BOOL:
        if not isinstance(v, (bool, np.bool_)) and v not in (0, 1):
            raise ValueError(f"metadata[{key!r}]: a BOOL must be True/False (or 0/1), got {v!r}")
        return bytes([int(bool(v))])
    dt = _DTYPES[vt]
    if dt.kind in "iu":
        if isinstance(v, (bool, float, np.floating)) or not isinstance(v, (int, np.integer)):
            raise TypeError(f"metadata[{key!r}]: a {vt.name} must be an integer, got {v!r}")
        info = np.iinfo(dt)
        if not info.min <= int(v) <= info.max:
            raise ValueError(f"metadata[{key!r}]: {v} is outside {vt.name}'s range {info.min}..{info.max}")
        return _STRUCTS[vt].pack(int(v))
    if not isinstance(v, (int, float, np.integer, np.floating)) or isinstance(v, bool):
        raise TypeError(f"metadata[{key!r}]: a {vt.name} must be a number, got {v!r}")
    return np.asarray(v, dtype=dt).tobytes()  # round-to-nearest to float32 / float64, as C does


def _encode_value(key: str, spec: TypeSpec, v) -> bytes:
    if not isinstance(spec, tuple):
        return _U32.pack(spec) + _encode_scalar(key, spec, v)
    et = spec[1]
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__"):
        raise TypeError(f"metadata[{key!r}]: an ARRAY value must be a list or array, got {type(v).__name__}")
    head = _U32.pack(ValueType.ARRAY) + _U32.pack(et) + _U64.pack(len(v))
    if et == ValueType.STRING:
        return head + b"".join(_encode_string(s, f"metadata[{key!r}][{i}]") for i, s in enumerate(v))
    a = np.asarray(v)
    if a.ndim != 1:
        raise ValueError(f"metadata[{key!r}]: an ARRAY value must be one-dimensional, got shape {a.shape}")
    if a.size == 0:
        return head
    dt = _DTYPES[et]
    if et == ValueType.BOOL:
        if a.dtype != np.bool_ and not np.isin(a, (0, 1)).all():
            raise ValueError(f"metadata[{key!r}]: BOOL elements must be True/False (or 0/1)")
        return head + a.astype(bool).astype(dt).tobytes()
    if dt.kind in "iu":
        if a.dtype.kind not in "iub":
            raise TypeError(f"metadata[{key!r}]: {et.name} elements must be integers, got dtype {a.dtype}")
        info = np.iinfo(dt)
        lo, hi = int(a.min()), int(a.max())
        if lo < info.min or hi > info.max:
            raise ValueError(f"metadata[{key!r}]: elements {lo}..{hi} are outside {et.name}'s range")
    elif a.dtype.kind not in "iuf":
        raise TypeError(f"metadata[{key!r}]: {et.name} elements must be numbers, got dtype {a.dtype}")
    return head + a.astype(dt).tobytes()


def _tensor_entries(tensors) -> list[tuple[str, Any, tuple[int, ...], Any]]:
    """Normalize tensors -> [(name, GGMLType, numpy-order shape, uint8 buffer)]."""
    if isinstance(tensors, Mapping):
        items = [(name, *v) if isinstance(v, tuple) else (name, v.type, v.shape, v.raw)
                 for name, v in tensors.items()]
    else:
        items = [(t.name, t.type, t.shape, t.raw) if isinstance(t, TensorInfo) else tuple(t) for t in tensors]
    out, seen = [], set()
    for item in items:
        if len(item) != 4:
            raise ValueError(f"tensors: expected (name, type, shape, raw bytes) entries, got {len(item)} fields")
        name, qtype, shape, raw = item
        what = f"tensors[{name!r}]"
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensors: a tensor name must be a non-empty str, got {name!r}")
        if len(name.encode("utf-8")) > MAX_NAME_BYTES:
            raise ValueError(f"{what}: name longer than {MAX_NAME_BYTES} bytes (llama.cpp's GGML_MAX_NAME)")
        if name in seen:
            raise ValueError(f"{what}: duplicate tensor name")
        seen.add(name)
        t = ggml_type(qtype)
        shape = tuple(int(d) for d in shape)
        if not 1 <= len(shape) <= MAX_DIMS or min(shape) <= 0:
            raise ValueError(f"{what}: shape {shape} must have 1..{MAX_DIMS} positive dimensions")
        if shape[-1] % t.block_size:
            raise ValueError(f"{what}: row length {shape[-1]} is not a multiple of {t.name}'s block size {t.block_size}")
        nbytes = int(np.prod(shape, dtype=object)) // t.block_size * t.type_size
        if callable(raw):  # produced when the writer reaches it; its size is known from type and shape
            out.append((name, t, shape, _Later(raw, nbytes, what)))
            continue
        data = _host_bytes(raw, what)
        if data.nbytes != nbytes:
            raise ValueError(f"{what}: {data.nbytes} bytes given, {t.name} {shape} takes {nbytes}")
        out.append((name, t, shape, data))
    return out


class _Later(NamedTuple):
    """A tensor whose bytes a callable makes when the writer reaches it (``write``'s streaming form)."""

    make: Any
    nbytes: int
    what: str

    def pieces(self) -> Iterator[memoryview]:
        """The callable's bytes — one buffer or array, or an iterable of them — checked to add up."""
        made = self.make()
        parts = [made] if isinstance(made, (bytes, bytearray, memoryview, np.ndarray)) or hasattr(
            made, "__dlpack__") or not hasattr(made, "__iter__") else made
        total = 0
        for part in parts:
            data = _host_bytes(part, self.what)
            total += data.nbytes
            if total > self.nbytes:
                break
            yield data
        if total != self.nbytes:
            raise ValueError(f"{self.what}: the callable gave {'more than ' if total > self.nbytes else ''}"
                             f"{total} bytes, its type and shape take {self.nbytes}")


def _host_bytes(raw, what: str) -> memoryview:
    """A tensor's bytes as a flat byte view: bytes-like objects as they are, arrays of any
    library (NumPy, CuPy, torch, array-api-strict) through host memory, viewed as uint8."""
    if type(raw).__module__.split(".")[0] == "cupy":
        raw = raw.get()  # off the GPU
    elif not isinstance(raw, np.ndarray) and hasattr(raw, "__dlpack__"):
        try:
            raw = np.from_dlpack(raw)  # torch (CPU), array-api-strict, ...: no copy
        except (BufferError, RuntimeError, TypeError) as e:
            raise TypeError(f"{what}: cannot read the tensor's bytes on the host ({e})") from None
    if isinstance(raw, np.ndarray):
        return memoryview(np.ascontiguousarray(raw).view(np.uint8).reshape(-1))
    try:
        return memoryview(raw).cast("B")
    except TypeError:
        raise TypeError(f"{what}: expected the tensor's bytes (bytes-like or an array), "
                        f"got {type(raw).__name__}") from None


def _chunks(metadata: Mapping[str, Any], tensors, metadata_types=None, alignment=None) -> Iterator[bytes]:
    """The file, as byte chunks: header+metadata+tensor table, then each tensor and its padding.

    Everything is validated before the first chunk is produced.
    """
    if not isinstance(metadata, Mapping):
        raise TypeError(f"metadata: expected a dict of key -> value, got {type(metadata).__name__}")
    metadata_types = dict(metadata_types or {})
    metadata = dict(metadata)
    if alignment is not None:
        if isinstance(alignment, bool) or not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"alignment: expected a power of two, got {alignment!r}")
        if alignment != metadata.get(ALIGNMENT_KEY, DEFAULT_ALIGNMENT):
            metadata[ALIGNMENT_KEY] = alignment
            metadata_types[ALIGNMENT_KEY] = ValueType.UINT32
    alignment = metadata.get(ALIGNMENT_KEY, DEFAULT_ALIGNMENT)
    if ALIGNMENT_KEY in metadata:
        metadata_types.setdefault(ALIGNMENT_KEY, ValueType.UINT32)
        if _check_spec(ALIGNMENT_KEY, metadata_types[ALIGNMENT_KEY]) != ValueType.UINT32:
            raise ValueError(f"metadata_types[{ALIGNMENT_KEY!r}]: must be UINT32")
        if isinstance(alignment, bool) or not isinstance(alignment, (int, np.integer)) \
                or alignment <= 0 or alignment & (alignment - 1):
            raise ValueError(f"metadata[{ALIGNMENT_KEY!r}]: expected a power of two, got {alignment!r}")
        alignment = int(alignment)
    unknown = set(metadata_types) - set(metadata)
    if unknown:
        raise ValueError(f"metadata_types: keys not in metadata: {sorted(unknown)[:5]}")

    parts = [GGUF_MAGIC, _U32.pack(3)]
    entries = _tensor_entries(tensors)
    parts += [_U64.pack(len(entries)), _U64.pack(len(metadata))]
    for key, value in metadata.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"metadata: keys must be non-empty str, got {key!r}")
        if len(key.encode("utf-8")) > MAX_KEY_BYTES:
            raise ValueError(f"metadata[{key[:40]!r}...]: key longer than {MAX_KEY_BYTES} bytes")
        spec = _check_spec(key, metadata_types[key]) if key in metadata_types else _infer_type(key, value)
        parts.append(_encode_string(key, "metadata key") + _encode_value(key, spec, value))
    offset = 0
    for name, t, shape, data in entries:
        ne = shape[::-1]
        parts.append(_encode_string(name, "tensor name") + _U32.pack(len(ne))
                     + b"".join(_U64.pack(d) for d in ne) + _U32.pack(t.id) + _U64.pack(offset))
        offset += _align(data.nbytes, alignment)
    head = b"".join(parts)
    yield head + bytes(_align(len(head), alignment) - len(head))
    for _, _, _, data in entries:
        if isinstance(data, _Later):
            yield from data.pieces()
        else:
            yield data
        yield bytes(_align(data.nbytes, alignment) - data.nbytes)


def to_bytes(metadata: Mapping[str, Any], tensors=(), *, metadata_types=None, alignment=None) -> bytes:
    """The GGUF v3 file ``write`` would produce, as bytes (for small files and tests)."""
    return b"".join(_chunks(metadata, tensors, metadata_types, alignment))


def write(path, metadata: Mapping[str, Any], tensors=(), *, metadata_types=None, alignment=None) -> None:
    """Write a GGUF v3 file atomically.

    metadata: key -> value, written in order. Value types come from ``metadata_types``
        (key -> ValueType, or (ValueType.ARRAY, element ValueType); a read file's
        ``metadata_types`` fits as is) or are inferred: bool BOOL, int INT32 (INT64 if
        larger), float FLOAT32, str STRING, list/ndarray ARRAY of the first element's /
        dtype's type.
    tensors: (name, type, shape, raw) tuples (type a name like "Q4_K" or an id; shape in
        NumPy order; raw the tensor's bytes, ``row_bytes`` per row), a dict name ->
        (type, shape, raw), or TensorInfo objects of a read file. Written in that order,
        each at an offset aligned to ``alignment`` and zero-padded. ``raw`` may be a
        callable of no arguments returning those bytes, or an iterable of consecutive
        pieces of them: the header (sizes known from type and shape) is written first,
        and each callable is called only when the writer reaches its tensor — so a file
        larger than memory streams through, one tensor (or piece) at a time. Bytes that
        do not add up to the tensor's size raise ValueError (the destination untouched).
    alignment: data alignment; default ``metadata["general.alignment"]`` or 32. A value
        other than that is stored in ``general.alignment``.

    Bad arguments raise ValueError/TypeError before anything is written, and so does a
    destination that exists and is not a regular file (NotAFileError). The file is written
    by ``atomic_write``: on any exception ``path`` is untouched and nothing is left beside it.
    """
    path = os.fspath(path)
    chunks = _chunks(metadata, tensors, metadata_types, alignment)
    first = next(chunks)  # validates every argument before a file is created
    atomic_write(path, _prepend(first, chunks))


def _prepend(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    yield first
    yield from rest


# ----------------------------------------------------------------------------- atomic files

# O_TMPFILE (Linux >= 3.11) needs /proc to give the anonymous inode a name with linkat
_USE_O_TMPFILE = hasattr(os, "O_TMPFILE") and os.path.isdir("/proc/self/fd")
# errors meaning "this kernel or file system has no O_TMPFILE": use a named temporary instead
_NO_TMPFILE_ERRNOS = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOSYS})
_TEMP_TOKEN_BYTES = 8  # .NAME.<16 hex digits>.tmp


def _temp_pattern(base: str) -> re.Pattern:
    """Names of temporaries of target ``base``: .BASE.<token>.tmp, the token without dots so
    that target "m.gguf" never claims the temporaries of "m.gguf.x" (tempfile's 8-character
    tokens of earlier refquant versions included)."""
    return re.compile(rf"\.{re.escape(base)}\.[0-9a-z_]{{8,32}}\.tmp\Z")


def check_destination(path) -> None:
    """Refuse a destination that exists and is not a regular file (or a symlink to one).

    Replacing it would swap a device (/dev/null, as root), a FIFO or a folder for a
    regular file. A missing path, or a dangling symlink, is fine: it will be created.
    """
    path = os.fspath(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        raise NotAFileError(path, file_kind(st.st_mode), "; refusing to replace it")


def atomic_write(path, chunks: Iterable[bytes]) -> None:
    """Write the byte chunks to ``path`` so that readers see the old file or the whole new one.

    Linux: an anonymous O_TMPFILE inode in the target's folder, named with linkat only once
    it is complete and fsync'ed, then renamed over ``path`` (os.replace) and the folder
    fsync'ed; elsewhere a named, locked temporary does the same. A SIGKILL mid-write leaves
    nothing beside ``path`` (O_TMPFILE) or a stale temporary that the next write of ``path``
    removes. An existing file's permissions are kept; a new one gets 0o666 minus the umask.
    Raises NotAFileError for a destination that is not a regular file, OSError (naming the
    path) when the folder is missing or unwritable or the disk is full.
    """
    path = os.fspath(path)
    check_destination(path)
    folder = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    try:
        dir_fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as e:
        raise _naming(e, folder) from None
    try:
        mode = _mode_for(path)
        fd, name = _anonymous_temp(folder) if _USE_O_TMPFILE else (None, None)
        if fd is None:
            fd, name = _named_temp(dir_fd, base)
        try:
            for chunk in chunks:
                _write_all(fd, chunk)
            os.fsync(fd)
            os.fchmod(fd, mode)
            if name is None:
                name = _link_anonymous(fd, dir_fd, base)
            os.replace(name, base, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            name = None
        except BaseException as e:
            if name is not None:
                try:
                    os.unlink(name, dir_fd=dir_fd)
                except FileNotFoundError:
                    pass
            if isinstance(e, OSError):
                raise _naming(e, path) from None
            raise
        finally:
            os.close(fd)  # releases the lock; an unnamed O_TMPFILE inode is freed here
        _fsync(dir_fd)
        _remove_stale_temps(dir_fd, base)
    finally:
        os.close(dir_fd)


def _naming(e: OSError, path: str) -> OSError:
    """The same error, naming ``path`` when the system call gave no file name (write, fsync)."""
    if e.filename is not None or e.errno is None:
        return e
    return OSError(e.errno, e.strerror or os.strerror(e.errno), path)


def _write_all(fd: int, chunk) -> None:
    """os.write until every byte is written (a write may be short: a signal, a nearly full disk)."""
    view = memoryview(chunk).cast("B")
    while view.nbytes:
        n = os.write(fd, view)
        view = view[n:]


def _lock(fd: int) -> None:
    """Hold an exclusive flock for the temporary's whole life: the sign that its writer is alive."""
    try:
        import fcntl
    except ImportError:  # Windows: no flock; stale temporaries are then never removed
        return
    fcntl.flock(fd, fcntl.LOCK_EX)


def _anonymous_temp(folder: str) -> tuple[int | None, None]:
    """An O_TMPFILE descriptor in ``folder`` (no name yet), or (None, None) where unsupported."""
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o600)
    except OSError as e:
        if e.errno in _NO_TMPFILE_ERRNOS:
            return None, None
        raise
    _lock(fd)
    return fd, None


def _link_anonymous(fd: int, dir_fd: int, base: str) -> str:
    """Give the complete O_TMPFILE inode a unique hidden name beside the target.

    linkat(AT_FDCWD, "/proc/self/fd/N", dir_fd, name, AT_SYMLINK_FOLLOW) as open(2)
    describes. Python's os.link calls plain link() unless a dir_fd is given — and link()
    on the /proc symlink itself fails with EXDEV — hence dst_dir_fd.
    """
    while True:
        name = f".{base}.{secrets.token_hex(_TEMP_TOKEN_BYTES)}.tmp"
        try:
            os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
            return name
        except FileExistsError:
            continue


def _named_temp(dir_fd: int, base: str) -> tuple[int, str]:
    """A new, locked .BASE.<token>.tmp beside the target (the fallback without O_TMPFILE).

    Between O_CREAT and flock another writer's clean-up may see the file unlocked and
    remove it; st_nlink == 0 after locking says so, and a new one is made.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    while True:
        name = f".{base}.{secrets.token_hex(_TEMP_TOKEN_BYTES)}.tmp"
        try:
            fd = os.open(name, flags, 0o600, dir_fd=dir_fd)
        except FileExistsError:
            continue
        _lock(fd)
        if os.fstat(fd).st_nlink > 0:
            return fd, name
        os.close(fd)


def _remove_stale_temps(dir_fd: int, base: str) -> None:
    """Remove temporaries of target ``base`` whose writer is gone (their flock is free)."""
    try:
        import fcntl
    except ImportError:
        return
    pattern = _temp_pattern(base)
    try:
        names = [n for n in os.listdir(dir_fd) if pattern.match(n)]
    except OSError:
        return
    for name in names:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                         dir_fd=dir_fd)
        except OSError:
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                continue
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its writer is alive
            if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino == st.st_ino:
                os.unlink(name, dir_fd=dir_fd)
        except OSError:
            pass
        finally:
            os.close(fd)


def _mode_for(path: str) -> int:
    """Keep an existing file's permissions; a new file gets 0o666 minus the umask, like open()."""
    try:
        return os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync(fd: int) -> None:
    """Make the rename itself durable (POSIX); some file systems cannot fsync a directory."""
    try:
        os.fsync(fd)
    except OSError:
        pass
