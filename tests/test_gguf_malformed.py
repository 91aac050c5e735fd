"""A corpus of hand-crafted malformed GGUF files: each refused quickly, in bounded memory,
with GGUFFormatError naming the field and byte offset; a valid control accepted.

One case per check of refquant.gguf.file, plus the patterns of llama.cpp's handcrafted
tests (tests/test-gguf.cpp: HEADER_*, KV_*, TENSORS_*, DATA_*) and of its loader
advisories: string/array lengths wrapping ``n + 1`` or ``n * size`` to a small allocation
and counts sizing an allocation before any byte is read (the 2024 Talos set,
CVE-2024-21802/-21825/-21836/-23496/-23605), n_dims overrunning ``ne[4]``, summed tensor
sizes overflowing ``size_t`` (CVE-2025-53630 and its bypass CVE-2026-27940), a dimension
patched so ``ne * stride`` wraps (llama.cpp PR 18674), a file lying about tensor sizes
to read past its buffer (CVE-2026-7482), unbounded string lengths (issue 19003), and a
``general.alignment`` of the wrong type (an assertion abort before the fix).

llama.cpp's own verdict on every case is measured, not assumed: ``gguf_init_from_file``
from the libggml-base that llama-cpp-python ships is called through ctypes, and the
``llama`` column below must match it — that column is the table in file.py's docstring.
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import re
import struct
import time
import tracemalloc
from dataclasses import dataclass

import pytest

from refquant.gguf import file as gf

VT = gf.ValueType
U64_MAX = 2**64 - 1


# --------------------------------------------------------------------------- a tiny byte builder


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def gstr(s) -> bytes:
    b = s.encode("utf-8") if isinstance(s, str) else s
    return u64(len(b)) + b


def kv(key, vt: int, payload: bytes) -> bytes:
    return gstr(key) + u32(vt) + payload


def tinfo(name, ne, type_id: int, offset: int) -> bytes:
    return gstr(name) + u32(len(ne)) + b"".join(u64(d) for d in ne) + u32(type_id) + u64(offset)


def gguf(kvs=(), infos=(), data=b"", *, magic=b"GGUF", version=3, n_kv=None, n_tensors=None,
         alignment=32, pad=True) -> bytes:
    """Header + key/values + tensor infos, zero-padded to ``alignment``, then ``data``."""
    head = (magic + u32(version) + u64(len(infos) if n_tensors is None else n_tensors)
            + u64(len(kvs) if n_kv is None else n_kv) + b"".join(kvs) + b"".join(infos))
    if pad:
        head += bytes(-len(head) % alignment)
    return head + data


HEADER = 24  # magic, version, n_tensors, n_kv: where the first key starts
F32, Q4_0, Q8_0, I8, I64 = 0, 2, 8, 24, 27
_ALIGN = "general.alignment"
_ALIGN_VALUE = HEADER + 8 + len(_ALIGN)  # where the value (its type field) of a first-key alignment starts

# a valid control: two key/values, two tensors (F32 2x32 at 0, Q8_0 1x32 at 256)
CONTROL_KVS = [kv("general.name", VT.STRING, gstr("control")),
               kv("a.list", VT.ARRAY, u32(VT.UINT32) + u64(3) + u32(1) + u32(2) + u32(3))]
CONTROL_INFOS = [tinfo("w", [32, 2], F32, 0), tinfo("q", [32, 1], Q8_0, 256)]
CONTROL = gguf(CONTROL_KVS, CONTROL_INFOS, bytes(256) + bytes(34) + bytes(30))  # 290 padded to 320


def _kv_at(i: int) -> int:
    """Byte offset of key/value i of the control file."""
    return HEADER + sum(len(k) for k in CONTROL_KVS[:i])


def _infos_at(kvs) -> int:
    return HEADER + sum(len(k) for k in kvs)


def one_tensor(ne=(32,), type_id=F32, offset=0, name="t", data=None, kvs=(), **kw) -> bytes:
    """A file with one tensor; data defaults to exactly its bytes."""
    if data is None:
        data = bytes(128)
    return gguf(list(kvs), [tinfo(name, list(ne), type_id, offset)], data, **kw)


# --------------------------------------------------------------------------- the corpus


@dataclass
class Case:
    id: str
    data: bytes
    field: str            # regex the error's field must match
    at: int | None        # expected byte offset (None: not pinned)
    llama: bool           # does llama.cpp's gguf_init_from_file (no_alloc) accept it?
    note: str = ""


_T = _infos_at([])  # tensor info of a file without key/values starts here
_NE0 = _T + 8 + 1 + 4  # ne[0] of a one-tensor file named "t"

MALFORMED = [
    # ---- header
    Case("empty-file", b"", "header", 0, False),
    Case("truncated-header", CONTROL[:10], "header", 0, False),
    Case("bad-magic", b"FUGG" + CONTROL[4:], "magic", 0, False, "HEADER_BAD_MAGIC"),
    Case("version-0", gguf(version=0), "version", 4, False, "HEADER_BAD_VERSION_0"),
    Case("version-1", gguf(version=1), "version", 4, False, "HEADER_BAD_VERSION_1 (32-bit counts)"),
    Case("version-future", gguf(version=4), "version", 4, False, "HEADER_BAD_VERSION_FUTURE"),
    Case("big-endian", b"GGUF" + struct.pack(">I", 3) + bytes(16), "version", 4, False, "byte-swapped file"),
    Case("n-tensors-max", gguf(n_tensors=U64_MAX), "n_tensors", 8, False, "HEADER_BAD_N_TENSORS"),
    Case("n-kv-max", gguf(n_kv=U64_MAX), "n_kv", 16, False, "HEADER_BAD_N_KV"),
    Case("n-kv-beyond-bytes", gguf(CONTROL_KVS, n_kv=10**6), "n_kv", 16, False,
         "a count sizing an allocation before reading (CVE-2024-21825 pattern)"),
    Case("n-tensors-beyond-bytes", gguf(n_tensors=2**40), "n_tensors", 8, False, "same, for tensor infos"),
    # ---- key/values
    Case("key-length-max", gguf([u64(U64_MAX) + b"k"], n_kv=1), r"metadata key #0", HEADER, False,
         "KV_BAD_KEY_SIZE; n + 1 wraps to 0 (CVE-2024-23496 pattern)"),
    Case("key-length-beyond-bytes", gguf([u64(1000) + b"abc"], n_kv=1), r"metadata key #0", HEADER, False,
         "unbounded string resize (issue 19003)"),
    Case("key-empty", gguf([kv("", VT.UINT8, b"\x01")]), r"metadata key #0", HEADER, False, "KV_EMPTY_KEY"),
    Case("key-not-utf8", gguf([kv(b"k\xff", VT.UINT8, b"\x01")]), r"metadata key #0", HEADER + 9, True),
    Case("key-too-long", gguf([kv("k" * 65536, VT.UINT8, b"\x01")]), r"metadata key #0", HEADER, True,
         "gguf.md caps keys at 65535 bytes"),
    Case("value-type-unknown", gguf([kv("k", 13, b"\x01")]), r"metadata\['k'\] value type", HEADER + 9, False,
         "KV_BAD_TYPE"),
    Case("value-type-negative", gguf([kv("k", 2**32 - 1, b"\x01")]), r"metadata\['k'\] value type", HEADER + 9,
         False),
    Case("key-duplicate", gguf([kv("k", VT.UINT8, b"\x01"), kv("k", VT.UINT8, b"\x02")]), r"metadata key #1",
         HEADER + 14, False, "KV_DUPLICATE_KEY"),
    Case("string-beyond-bytes", gguf([kv("k", VT.STRING, u64(2**40) + b"abc")]), r"metadata\['k'\]",
         HEADER + 13, False),
    Case("string-length-max", gguf([kv("k", VT.STRING, u64(U64_MAX))]), r"metadata\['k'\]", HEADER + 13,
         False, "length + 1 wraps (CVE-2024-23496 pattern)"),
    Case("string-not-utf8", gguf([kv("k", VT.STRING, gstr(b"ok\xc3("))]), r"metadata\['k'\]", HEADER + 13 + 8 + 2,
         True),
    Case("bool-not-0-or-1", gguf([kv("k", VT.BOOL, b"\x02")]), r"metadata\['k'\]", HEADER + 13, True),
    Case("scalar-truncated", gguf([kv("k", VT.UINT64, b"\x01\x02\x03")], pad=False), r"metadata\['k'\]",
         HEADER + 13, False),
    Case("array-nested", gguf([kv("k", VT.ARRAY, u32(VT.ARRAY) + u64(1) + u32(VT.UINT8) + u64(1) + b"\x01")]),
         r"array element type", HEADER + 13, False, "nesting depth > 1"),
    Case("array-type-unknown", gguf([kv("k", VT.ARRAY, u32(99) + u64(1) + b"\x01")]), r"array element type",
         HEADER + 13, False),
    Case("array-count-max", gguf([kv("k", VT.ARRAY, u32(VT.UINT8) + u64(U64_MAX) + b"\x01")]), r"array count",
         HEADER + 17, False, "KV_BAD_VALUE_SIZE; count x size overflow (CVE-2024-21836 pattern)"),
    Case("array-count-wraps-size", gguf([kv("k", VT.ARRAY, u32(VT.UINT64) + u64(2**61) + b"\x01")]),
         r"array count", HEADER + 17, False, "2^61 x 8 bytes wraps to 0 in 64 bits (CVE-2024-23605 pattern)"),
    Case("string-array-count-wraps", gguf([kv("k", VT.ARRAY, u32(VT.STRING) + u64(2**61) + b"\x01")]),
         r"array count", HEADER + 17, False, "2^61 length fields wrap to 0 bytes"),
    Case("string-array-element-beyond", gguf([kv("k", VT.ARRAY, u32(VT.STRING) + u64(2) + gstr("a") + u64(2**40))]),
         r"metadata\['k'\]\[1\]", HEADER + 25 + 9, False),
    Case("bool-array-not-0-or-1", gguf([kv("k", VT.ARRAY, u32(VT.BOOL) + u64(3) + b"\x01\x00\x07")]),
         r"metadata\['k'\]\[2\]", HEADER + 25 + 2, True),
    Case("alignment-not-power-of-two", gguf([kv(_ALIGN, VT.UINT32, u32(13))], alignment=13),
         r"general.alignment", _ALIGN_VALUE, False, "KV_BAD_ALIGN"),
    Case("alignment-zero", gguf([kv(_ALIGN, VT.UINT32, u32(0))], pad=False), r"general.alignment", _ALIGN_VALUE, False),
    Case("alignment-wrong-type", gguf([kv(_ALIGN, VT.INT32, u32(32))]), r"general.alignment", _ALIGN_VALUE, False,
         "KV_WRONG_TYPE_ALIGN (was an assertion abort)"),
    Case("alignment-array", gguf([kv(_ALIGN, VT.ARRAY, u32(VT.UINT32) + u64(1) + u32(32))]), r"general.alignment",
         _ALIGN_VALUE, False),
    # ---- tensor infos
    Case("name-too-long", one_tensor(name="t" * 64), r"tensor #0 name", _T, False, "TENSORS_BAD_NAME_SIZE"),
    Case("name-empty", one_tensor(name=""), r"tensor #0 name", _T, True),
    Case("name-length-max", gguf([], [u64(U64_MAX)], bytes(64), n_tensors=1), r"tensor #0 name", _T, False),
    Case("name-duplicate", gguf([], [tinfo("t", [32], F32, 0), tinfo("t", [32], F32, 128)], bytes(256)),
         r"tensor #1 name", _T + 33, False, "TENSORS_DUPLICATE_NAME"),
    Case("n-dims-5", one_tensor(ne=(32, 1, 1, 1, 1)), r"n_dims", _T + 9, False, "TENSORS_BAD_N_DIMS"),
    Case("n-dims-0", one_tensor(ne=()), r"n_dims", _T + 9, True, "a scalar to llama.cpp"),
    Case("n-dims-max", gguf([], [gstr("t") + u32(2**32 - 1) + u64(32) * 4], n_tensors=1), r"n_dims", _T + 9,
         False, "writes past ne[4] in old loaders (Talos 2024 pattern)"),
    Case("dim-zero", one_tensor(ne=(32, 0)), r"ne\[1\]", _NE0 + 8, True, "TENSORS_ZERO_DIM"),
    Case("dim-negative", one_tensor(ne=(U64_MAX,)), r"ne\[0\]", _NE0, False, "TENSORS_BAD_SHAPE"),
    Case("n-elements-overflow", one_tensor(ne=(4 * (2**31 - 1),) * 2), r"ne\[1\]", _NE0 + 8, False,
         "TENSORS_NE_TOO_BIG"),
    Case("nbytes-too-big", one_tensor(ne=(2**31, 2**31), type_id=I64), r"offset", None, False,
         "TENSORS_NBYTES_TOO_BIG: 2^62 x 8 bytes; refquant: data past the end"),
    Case("type-unknown", one_tensor(type_id=43), r"type", _NE0 + 8, False, "TENSORS_BAD_TYPE (GGML_TYPE_COUNT)"),
    Case("type-removed", one_tensor(type_id=4), r"type", _NE0 + 8, False, "Q4_2, block size 0 in ggml"),
    Case("type-negative", one_tensor(type_id=2**31), r"type", _NE0 + 8, False),
    Case("row-not-whole-blocks", one_tensor(ne=(16,), type_id=Q4_0), r"ne\[0\]", _NE0, False),
    Case("offset-not-aligned", one_tensor(offset=1), r"offset", _NE0 + 12, False, "TENSORS_BAD_ALIGN"),
    Case("offset-max", one_tensor(offset=2**64 - 32), r"offset", _NE0 + 12, False,
         "TENSORS_BAD_OFFSET; offset + size wraps in 64 bits"),
    Case("inconsistent-alignment", gguf([], [tinfo("a", [1], I8, 0), tinfo("b", [1], I8, 1)], bytes(64)),
         r"tensor 'b' offset", None, False, "TENSORS_INCONSISTENT_ALIGN: offsets packed with alignment 1"),
    Case("tensors-overlap", gguf([], [tinfo("a", [64], F32, 0), tinfo("b", [32], F32, 128)], bytes(256)),
         r"tensor '[ab]' offset", None, False, "b starts inside a"),
    Case("tensor-info-truncated", gguf([], [tinfo("t", [32, 2], F32, 0)], pad=False)[:_T + 35], r"tensor 't' offset",
         _T + 33, False),
    # ---- data section (llama.cpp's gguf_init_from_file leaves these to the model loader)
    Case("data-missing-1-byte", one_tensor(data=bytes(127)), r"tensor 't' offset", _NE0 + 12, True,
         "DATA_NOT_ENOUGH_DATA; the model loader refuses"),
    Case("data-absent", one_tensor(data=b""), r"tensor 't' offset", _NE0 + 12, True),
    Case("data-size-overflow", gguf([], [tinfo("a", [0x7FFFFFFFFFFFFFC0], I8, 0),
                                         tinfo("b", [0x7FFFFFFFFFFFFFC0], I8, 0x7FFFFFFFFFFFFFC0)], bytes(32)),
         r"tensor 'a' offset", None, True,
         "DATA_MEM_SIZE_OVERFLOW (CVE-2025-53630, CVE-2026-27940); llama.cpp's guard is in the allocating path"),
    Case("dim-patched-wraps", one_tensor(ne=(32, 2**42 + 1), type_id=Q8_0, data=bytes(34)), r"tensor 't' offset",
         None, True, "a dimension patched to 2^42+1 (PR 18674); the model loader refuses"),
    Case("file-lies-about-size", one_tensor(ne=(32, 1000), data=bytes(128)), r"tensor 't' offset", None, True,
         "reading past the buffer (CVE-2026-7482 pattern)"),
]

# Valid or tolerated files: refquant accepts them all; llama.cpp's verdict alongside.
TOLERATED = [
    Case("control", CONTROL, "", None, True),
    Case("no-tensors-no-padding", gguf(CONTROL_KVS, pad=False), "", None, True),
    Case("trailing-bytes", CONTROL + b"junk" * 10, "", None, True, "counted in trailing_bytes"),
    Case("last-padding-missing", CONTROL[:-30], "", None, True),
    Case("gap-between-tensors", gguf([], [tinfo("a", [32], F32, 0), tinfo("b", [32], F32, 256)], bytes(384)),
         "", None, False, "llama.cpp wants offset == running sum"),
    Case("tensors-out-of-order", gguf([], [tinfo("a", [32], F32, 128), tinfo("b", [32], F32, 0)], bytes(256)),
         "", None, False, "same"),
    Case("custom-alignment", gguf([kv(_ALIGN, VT.UINT32, u32(1))], [tinfo("a", [1], I8, 0), tinfo("b", [3], I8, 1)],
                                  bytes(4), alignment=1), "", None, True, "TENSORS_CUSTOM_ALIGN"),
    Case("version-2", gguf(CONTROL_KVS, version=2), "", None, True),
]


# --------------------------------------------------------------------------- llama.cpp's verdict


def _gguf_init():
    """llama.cpp's gguf_init_from_file (from the libggml-base llama-cpp-python ships), or None."""
    spec = importlib.util.find_spec("llama_cpp")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = os.path.join(spec.submodule_search_locations[0], "lib", "libggml-base.so")
    if not os.path.exists(path):
        return None
    lib = ctypes.CDLL(path)  # loaded by path: independent of any other libggml in the process

    class Params(ctypes.Structure):
        _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

    lib.gguf_init_from_file.restype = ctypes.c_void_p
    lib.gguf_init_from_file.argtypes = [ctypes.c_char_p, Params]
    lib.gguf_free.argtypes = [ctypes.c_void_p]

    def accepts(path: str) -> bool:
        ctx = lib.gguf_init_from_file(os.fsencode(path), Params(True, None))
        if ctx:
            lib.gguf_free(ctx)
        return bool(ctx)
    return accepts


# --------------------------------------------------------------------------- tests


MAX_SECONDS = 0.25        # per file, generous for a loaded CI machine; typical is < 1 ms
MAX_PEAK_BYTES = 1 << 20  # every corpus file is < 70 kB; refusing it must not allocate more than 1 MiB


def _refused(data: bytes) -> tuple[gf.GGUFFormatError, float, int]:
    tracemalloc.start()
    t0 = time.process_time()  # CPU time: a loaded machine's scheduling does not count
    try:
        with pytest.raises(gf.GGUFFormatError) as info:
            gf.read(data)
        return info.value, time.process_time() - t0, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_corpus_ids_are_unique():
    ids = [c.id for c in MALFORMED + TOLERATED]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c.id)
def test_malformed_file_is_refused(case):
    err, seconds, peak = _refused(case.data)
    assert isinstance(err, ValueError)
    assert str(err).startswith(f"{err.field} at byte {err.offset}: ")
    assert re.search(case.field, err.field), (case.id, str(err))
    if case.at is not None:
        assert err.offset == case.at, (case.id, str(err))
    assert 0 <= err.offset <= max(len(case.data), 1)
    assert seconds < MAX_SECONDS and peak < MAX_PEAK_BYTES, (case.id, seconds, peak)


@pytest.mark.parametrize("case", MALFORMED, ids=lambda c: c.id)
def test_malformed_file_is_refused_from_disk(case, tmp_path):
    path = tmp_path / "bad.gguf"
    path.write_bytes(case.data)
    with pytest.raises(gf.GGUFFormatError):
        gf.read(path)


@pytest.mark.parametrize("case", TOLERATED, ids=lambda c: c.id)
def test_tolerated_file_is_accepted(case):
    f = gf.read(case.data)
    for t in f.tensors.values():
        assert t.raw.nbytes == t.nbytes  # every tensor's bytes are really there
    if case.id == "trailing-bytes":
        assert f.trailing_bytes == 40
    if case.id == "control":
        assert f.metadata["general.name"] == "control" and f.metadata["a.list"].tolist() == [1, 2, 3]
        assert [(t.name, t.shape, t.offset - f.data_offset) for t in f.tensors.values()] == \
            [("w", (2, 32), 0), ("q", (1, 32), 256)]


def test_llama_cpp_verdicts_match_the_documented_table(tmp_path):
    """Whether llama.cpp's GGUF parser accepts each file, as file.py's table says."""
    accepts = _gguf_init()
    assert accepts is not None, "llama-cpp-python (the `llama` extra, installed by .ci/setup) is needed"
    got, want = {}, {}
    for case in MALFORMED + TOLERATED:
        path = tmp_path / f"{case.id}.gguf"
        path.write_bytes(case.data)
        got[case.id], want[case.id] = accepts(str(path)), case.llama
    assert got == want


def test_corpus_size():
    # the closing note quotes these numbers
    assert len(MALFORMED) >= 50 and len(TOLERATED) >= 8
