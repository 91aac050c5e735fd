"""refquant.gguf.file: round trips through refquant, gguf-py and llama.cpp; atomic writes.

Oracles: gguf-py's GGUFReader (metadata, value types, tensor table, bytes) and
llama.cpp (llama-cpp-python loads what we write). The real SmolLM2 file is read and
re-written byte for byte.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st

from refquant.gguf import file as gf
from refquant.gguf.types import GGML_TYPES

VT = gf.ValueType

# --------------------------------------------------------------------------- strategies
# Small valid GGUF contents: every value type, arrays of every element type (empty ones
# included), tensors of every ggml type with 1..4 dims and random bytes (the container does
# not interpret them). FLOAT32 values are drawn as float32 so they survive the round trip;
# NaN is left out only because NaN != NaN would need a special equality.

_INT_RANGES = {VT.UINT8: (0, 2**8 - 1), VT.INT8: (-2**7, 2**7 - 1), VT.UINT16: (0, 2**16 - 1),
               VT.INT16: (-2**15, 2**15 - 1), VT.UINT32: (0, 2**32 - 1), VT.INT32: (-2**31, 2**31 - 1),
               VT.UINT64: (0, 2**64 - 1), VT.INT64: (-2**63, 2**63 - 1)}
_text = st.text(st.characters(codec="utf-8"), max_size=12)


def _scalars(vt):
    if vt in _INT_RANGES:
        return st.integers(*_INT_RANGES[vt])
    if vt == VT.FLOAT32:
        return st.floats(width=32, allow_nan=False)
    if vt == VT.FLOAT64:
        return st.floats(allow_nan=False)
    if vt == VT.BOOL:
        return st.booleans()
    return _text


_SCALAR_TYPES = [vt for vt in VT if vt != VT.ARRAY]


@st.composite
def specs(draw, qtypes=tuple(sorted(GGML_TYPES))):
    """(metadata, metadata_types, tensors, alignment) of a small valid file."""
    keys = draw(st.lists(st.from_regex(r"[a-z][a-z0-9_.]{0,20}", fullmatch=True).filter(
        lambda k: k != "general.alignment"), max_size=6, unique=True))
    metadata, types = {}, {}
    for key in keys:
        vt = draw(st.sampled_from(_SCALAR_TYPES + [VT.ARRAY]))
        if vt == VT.ARRAY:
            et = draw(st.sampled_from(_SCALAR_TYPES))
            metadata[key], types[key] = draw(st.lists(_scalars(et), max_size=5)), (VT.ARRAY, et)
        else:
            metadata[key], types[key] = draw(_scalars(vt)), vt
    names = draw(st.lists(st.text(st.characters(codec="ascii", min_codepoint=33), min_size=1, max_size=63),
                          max_size=4, unique=True))
    tensors = []
    for name in names:
        t = GGML_TYPES[draw(st.sampled_from(qtypes))]
        shape = draw(st.lists(st.integers(1, 3), min_size=0, max_size=3))
        shape.append(t.block_size * draw(st.integers(1, 2)))
        nbytes = int(np.prod(shape)) // t.block_size * t.type_size
        tensors.append((name, t.name, tuple(shape), draw(st.binary(min_size=nbytes, max_size=nbytes))))
    alignment = draw(st.sampled_from([None, 1, 8, 32, 64, 256]))
    return metadata, types, tensors, alignment


def _same_value(got, want) -> bool:
    if isinstance(got, np.ndarray):
        return got.tolist() == list(want)
    return got == want and type(got) is type(want)


def _sha(path) -> str:
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).hexdigest()


# --------------------------------------------------------------------------- gguf-py as oracle


def _gguf_py_view(path):
    """What gguf-py's reader sees: (metadata {key: (types, value)}, [(name, type id, shape, offset, bytes)])."""
    import gguf

    r = gguf.GGUFReader(path)
    meta = {}
    for key, fld in r.fields.items():
        if key.startswith("GGUF."):
            continue
        types = [int(t) for t in fld.types[:1]]
        if types[0] == gguf.GGUFValueType.ARRAY:  # fld.types omits the element type of an empty array
            types.append(int(fld.parts[3][0]))
        if types[0] == gguf.GGUFValueType.ARRAY:
            if types[1] == gguf.GGUFValueType.STRING:
                value = [bytes(fld.parts[i]).decode("utf-8") for i in fld.data]
            else:
                value = [fld.parts[i][0].item() for i in fld.data]
        elif types[0] == gguf.GGUFValueType.STRING:
            value = bytes(fld.parts[fld.data[0]]).decode("utf-8")
        else:
            value = fld.parts[fld.data[0]][0].item()
        meta[key] = (types, value)
    tensors = [(t.name, int(t.tensor_type), tuple(int(d) for d in reversed(t.shape)), int(t.data_offset),
                np.asarray(t.data).view(np.uint8).tobytes()) for t in r.tensors]
    return meta, tensors, r.alignment, r.data_offset


def _refquant_view(f: gf.GGUFFile):
    meta = {}
    for key, value in f.metadata.items():
        spec = f.metadata_types[key]
        types = [int(spec[0]), int(spec[1])] if isinstance(spec, tuple) else [int(spec)]
        if isinstance(value, np.ndarray):
            value = value.tolist()
        meta[key] = (types, value)
    tensors = [(t.name, t.type_id, t.shape, t.offset, t.raw.tobytes()) for t in f.tensors.values()]
    return meta, tensors, f.alignment, f.data_offset


def _assert_same_as_gguf_py(path):
    with gf.read(path) as f:
        ours = _refquant_view(f)
    theirs = _gguf_py_view(path)
    assert ours[0].keys() == theirs[0].keys()
    for key in ours[0]:
        assert ours[0][key] == theirs[0][key], key
    assert ours[1:] == theirs[1:]


def test_smollm2_matches_gguf_py(smollm2_path):
    _assert_same_as_gguf_py(smollm2_path)


def test_smollm2_rewrite_is_byte_identical(smollm2_path, tmp_path):
    out = tmp_path / "copy.gguf"
    with gf.read(smollm2_path) as f:
        assert (f.version, len(f.tensors), f.alignment, f.trailing_bytes) == (3, 272, 32, 0)
        gf.write(out, f.metadata, f.tensors.values(), metadata_types=f.metadata_types)
    assert _sha(out) == _sha(smollm2_path)
    assert os.listdir(tmp_path) == ["copy.gguf"]


@given(specs())
def test_written_files_read_back_identically(spec):
    metadata, types, tensors, alignment = spec
    data = gf.to_bytes(metadata, tensors, metadata_types=types, alignment=alignment)
    f = gf.read(data)
    assert list(f.metadata) == list(metadata) + ([] if alignment in (None, 32) or "general.alignment" in metadata
                                                 else ["general.alignment"])
    for key, value in metadata.items():
        assert _same_value(f.metadata[key], value), key
        assert f.metadata_types[key] == types[key]
    assert [(t.name, t.type, t.shape, t.raw.tobytes()) for t in f.tensors.values()] == \
        [(n, ty, tuple(s), bytes(r)) for n, ty, s, r in tensors]
    assert f.alignment == (alignment or 32) and f.trailing_bytes == 0
    # idempotent: what we read, written again, is the same bytes
    assert gf.to_bytes(f.metadata, f.tensors.values(), metadata_types=f.metadata_types) == data


def _gguf_py_types() -> set[str]:
    """The ggml types the installed gguf-py can read (0.19.0 knows no Q2_0, id 42)."""
    import gguf

    return {t.name for t in gguf.GGMLQuantizationType}


# gguf-py 0.19 still sizes Q8_1 blocks as 40 bytes (float d and s); ggml's block_q8_1 holds
# two fp16 (36 bytes), which libggml's ggml_row_size confirms — so Q8_1 is left out here,
# as are the types the installed gguf-py does not know (its reader raises on their ids).
@given(specs(qtypes=tuple(sorted((set(GGML_TYPES) & _gguf_py_types()) - {"Q8_1"}))))
def test_written_files_match_gguf_py(tmp_path_factory, spec):
    metadata, types, tensors, alignment = spec
    path = tmp_path_factory.mktemp("rt") / "f.gguf"
    gf.write(path, metadata, tensors, metadata_types=types, alignment=alignment)
    _assert_same_as_gguf_py(str(path))


def test_gguf_py_written_file_reads_identically(tmp_path):
    import gguf

    path = str(tmp_path / "w.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint32("a.u32", 7)
    w.add_float32("a.f32", 0.1)
    w.add_bool("a.bool", True)
    w.add_string("a.str", "héllo")
    w.add_array("a.arr", [1, 2, 3])
    w.add_array("a.strs", ["x", "", "yz"])
    w.add_tensor("t0", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("t1", np.arange(3, dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    _assert_same_as_gguf_py(path)
    with gf.read(path) as f:
        assert f.metadata["a.str"] == "héllo" and f.metadata_types["a.f32"] == VT.FLOAT32
        np.testing.assert_array_equal(f.tensors["t0"].raw.view(np.float32), np.arange(64).reshape(2, 32))
        # and we write it back byte for byte
        out = tmp_path / "again.gguf"
        gf.write(out, f.metadata, f.tensors, metadata_types=f.metadata_types)
    assert _sha(out) == _sha(path)


# --------------------------------------------------------------------------- llama.cpp as oracle


# llama.cpp runs in a child process: a libggml-base loaded earlier in this process (the
# libggml-python oracle of other tests) would satisfy libllama's dependency by its soname
# and break `import llama_cpp` ("undefined symbol"), depending on test order.
_LLAMA_SCRIPT = """
import json, sys, llama_cpp
out = {}
for path in sys.argv[1:]:
    llm = llama_cpp.Llama(path, vocab_only=True, verbose=False)
    out[path] = dict(name=llm.metadata.get("general.name"), n_vocab=llm.n_vocab(),
                     tokens=llm.tokenize("Hello world, this is refquant.".encode()))
print(json.dumps(out))
"""


def _llama_cpp_load(*paths):
    import json
    import subprocess
    import sys

    res = subprocess.run([sys.executable, "-c", _LLAMA_SCRIPT, *map(str, paths)], capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_llama_cpp_loads_rewritten_smollm2(smollm2_path, tmp_path):
    out = str(tmp_path / "model.gguf")
    with gf.read(smollm2_path) as f:
        metadata = dict(f.metadata)
        metadata["general.name"] = "rewritten by refquant"
        gf.write(out, metadata, f.tensors.values(), metadata_types=f.metadata_types)
        n_tokens = len(f.metadata["tokenizer.ggml.tokens"])
    got = _llama_cpp_load(smollm2_path, out)
    assert got[out]["name"] == "rewritten by refquant"
    assert got[out]["n_vocab"] == got[smollm2_path]["n_vocab"] == n_tokens
    assert got[out]["tokens"] == got[smollm2_path]["tokens"]


# llama.cpp's own GGUF parser, through ctypes on the libggml-base that llama-cpp-python ships
# (loaded by path, so independent of any other libggml in this process).


class _LlamaGGUF:
    """gguf_init_from_file and getters (ggml/include/gguf.h) -> the same view as _refquant_view."""

    def __init__(self):
        import ctypes
        import importlib.util

        spec = importlib.util.find_spec("llama_cpp")
        assert spec is not None, "llama-cpp-python (the `llama` extra, installed by .ci/setup) is needed"
        lib = ctypes.CDLL(os.path.join(spec.submodule_search_locations[0], "lib", "libggml-base.so"))

        class Params(ctypes.Structure):
            _fields_ = [("no_alloc", ctypes.c_bool), ("ctx", ctypes.c_void_p)]

        c, i64, sz, vp, cp = ctypes, ctypes.c_int64, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_char_p
        for name, res, args in [("gguf_init_from_file", vp, [cp, Params]), ("gguf_free", None, [vp]),
                                ("gguf_get_version", c.c_uint32, [vp]), ("gguf_get_alignment", sz, [vp]),
                                ("gguf_get_data_offset", sz, [vp]), ("gguf_get_n_kv", i64, [vp]),
                                ("gguf_get_key", cp, [vp, i64]), ("gguf_get_kv_type", c.c_int, [vp, i64]),
                                ("gguf_get_arr_type", c.c_int, [vp, i64]), ("gguf_get_arr_n", sz, [vp, i64]),
                                ("gguf_get_arr_data", vp, [vp, i64]), ("gguf_get_arr_str", cp, [vp, i64, sz]),
                                ("gguf_get_val_str", cp, [vp, i64]), ("gguf_get_val_data", vp, [vp, i64]),
                                ("gguf_get_n_tensors", i64, [vp]), ("gguf_get_tensor_name", cp, [vp, i64]),
                                ("gguf_get_tensor_offset", sz, [vp, i64]), ("gguf_get_tensor_type", c.c_int, [vp, i64]),
                                ("gguf_get_tensor_size", sz, [vp, i64])]:
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = res, args
        self.lib, self.Params, self.ctypes = lib, Params, ctypes

    def view(self, path):
        lib, string_at = self.lib, self.ctypes.string_at
        ctx = lib.gguf_init_from_file(os.fsencode(str(path)), self.Params(True, None))
        assert ctx, "llama.cpp refused a file refquant wrote"
        try:
            meta = {}
            for k in range(lib.gguf_get_n_kv(ctx)):
                key, vt = lib.gguf_get_key(ctx, k).decode(), VT(lib.gguf_get_kv_type(ctx, k))
                if vt == VT.ARRAY:
                    et, n = VT(lib.gguf_get_arr_type(ctx, k)), lib.gguf_get_arr_n(ctx, k)
                    if et == VT.STRING:
                        value = [lib.gguf_get_arr_str(ctx, k, j).decode() for j in range(n)]
                    else:
                        dt = gf._DTYPES[et]
                        value = np.frombuffer(string_at(lib.gguf_get_arr_data(ctx, k), n * dt.itemsize), dt) if n \
                            else np.zeros(0, dt)
                        value = value.astype(bool).tolist() if et == VT.BOOL else value.tolist()
                    meta[key] = ([int(vt), int(et)], value)
                elif vt == VT.STRING:
                    meta[key] = ([int(vt)], lib.gguf_get_val_str(ctx, k).decode())
                else:
                    st_ = gf._STRUCTS[vt]
                    (value,) = st_.unpack(string_at(lib.gguf_get_val_data(ctx, k), st_.size))
                    meta[key] = ([int(vt)], bool(value) if vt == VT.BOOL else value)
            data_offset = lib.gguf_get_data_offset(ctx)
            tensors = [(lib.gguf_get_tensor_name(ctx, t).decode(), lib.gguf_get_tensor_type(ctx, t),
                        data_offset + lib.gguf_get_tensor_offset(ctx, t), lib.gguf_get_tensor_size(ctx, t))
                       for t in range(lib.gguf_get_n_tensors(ctx))]
            return meta, tensors, lib.gguf_get_alignment(ctx), data_offset, lib.gguf_get_version(ctx)
        finally:
            lib.gguf_free(ctx)


@pytest.fixture(scope="module")
def llama_gguf():
    return _LlamaGGUF()


@given(specs())
def test_written_files_match_llama_cpp_parser(llama_gguf, tmp_path_factory, spec):
    metadata, types, tensors, alignment = spec
    path = tmp_path_factory.mktemp("ll") / "f.gguf"
    gf.write(path, metadata, tensors, metadata_types=types, alignment=alignment)
    theirs = llama_gguf.view(path)
    with gf.read(path) as f:
        meta, _, align, data_offset = _refquant_view(f)
        ours_tensors = [(t.name, t.type_id, t.offset, t.nbytes) for t in f.tensors.values()]
    assert theirs[1] == ours_tensors and (theirs[2], theirs[4]) == (align, 3)
    if tensors:  # with no tensors llama.cpp leaves the data offset unpadded, gguf-py (and refquant) pad it
        assert theirs[3] == data_offset
    assert theirs[0].keys() == meta.keys()
    for key, (vtypes, value) in meta.items():
        # llama.cpp's C API hands strings out NUL-terminated: one holding a NUL reads shorter there
        has_nul = any("\x00" in v for v in (value if isinstance(value, list) else [value]) if isinstance(v, str))
        assert theirs[0][key][0] == vtypes, key
        if not has_nul:
            assert theirs[0][key][1] == value, key


def test_smollm2_matches_llama_cpp_parser(llama_gguf, smollm2_path):
    theirs = llama_gguf.view(smollm2_path)
    with gf.read(smollm2_path) as f:
        meta, _, align, data_offset = _refquant_view(f)
        assert theirs[1] == [(t.name, t.type_id, t.offset, t.nbytes) for t in f.tensors.values()]
    assert theirs[0] == meta and theirs[2:] == (align, data_offset, 3)


# --------------------------------------------------------------------------- reader API


def test_read_accepts_path_bytes_and_buffers(tmp_path):
    data = gf.to_bytes({"k": 1}, [("w", "Q8_0", (2, 32), bytes(2 * 34))])
    path = tmp_path / "x.gguf"
    path.write_bytes(data)
    for source in (path, str(path), data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)):
        f = gf.read(source)
        assert f.tensors["w"].raw.shape == (2, 34) and f.metadata == {"k": 1}
        f.close()


def test_read_rejects_non_buffer():
    with pytest.raises(TypeError, match="source"):
        gf.read(12)


def test_close_with_live_view(tmp_path):
    path = tmp_path / "x.gguf"
    gf.write(path, {}, [("w", "F32", (4,), np.arange(4, dtype=np.float32))])
    with gf.read(path) as f:
        raw = f.tensors["w"].raw
    np.testing.assert_array_equal(raw.view(np.float32), np.arange(4))  # the view keeps the map alive


def test_tensor_info_fields():
    data = gf.to_bytes({}, [("a", "F16", (3,), bytes(6)), ("b", "Q4_K", (2, 1, 512), bytes(2 * 2 * 144))],
                       alignment=64)
    f = gf.read(data)
    b = f.tensors["b"]
    assert list(f.tensors) == ["a", "b"]
    assert (b.type, b.type_id, b.shape, b.nbytes, b.row_bytes) == ("Q4_K", 12, (2, 1, 512), 576, 288)
    assert b.offset == f.data_offset + 64 and f.data_offset % 64 == 0
    assert b.raw.shape == (2, 1, 288)


# --------------------------------------------------------------------------- writer checks and atomicity


@pytest.mark.parametrize("kwargs, err, match", [
    (dict(metadata=[1]), TypeError, "metadata"),
    (dict(metadata={"": 1}), ValueError, "keys must be non-empty"),
    (dict(metadata={"k": 2**70}), ValueError, "INT64|range"),
    (dict(metadata={"k": 300}, metadata_types={"k": VT.UINT8}), ValueError, r"metadata\['k'\].*range"),
    (dict(metadata={"k": 1.5}, metadata_types={"k": VT.INT32}), TypeError, "integer"),
    (dict(metadata={"k": []}), ValueError, "empty list"),
    (dict(metadata={"k": [[1]]}), ValueError, "nested"),
    (dict(metadata={"k": object()}), TypeError, "cannot store"),
    (dict(metadata={"k": 1}, metadata_types={"k": 99}), ValueError, "unknown value type"),
    (dict(metadata={"k": 1}, metadata_types={"j": VT.INT32}), ValueError, "not in metadata"),
    (dict(metadata={"general.alignment": 24}), ValueError, "power of two"),
    (dict(metadata={}, alignment=0), ValueError, "alignment"),
    (dict(metadata={}, tensors=[("w", "F32", (3,), bytes(8))]), ValueError, "12"),
    (dict(metadata={}, tensors=[("w", "Q4_0", (16,), bytes(9))]), ValueError, "block size"),
    (dict(metadata={}, tensors=[("w", "F32", (0, 2), b"")]), ValueError, "positive"),
    (dict(metadata={}, tensors=[("w", "F32", (1,) * 5, bytes(4))]), ValueError, "1..4"),
    (dict(metadata={}, tensors=[("w", "F32", (1,), bytes(4))] * 2), ValueError, "duplicate"),
    (dict(metadata={}, tensors=[("x" * 64, "F32", (1,), bytes(4))]), ValueError, "longer"),
    (dict(metadata={}, tensors=[("w", "Q9_9", (1,), bytes(4))]), ValueError, "unknown ggml type"),
])
def test_write_rejects_bad_arguments(tmp_path, kwargs, err, match):
    path = tmp_path / "bad.gguf"
    kwargs.setdefault("tensors", ())
    with pytest.raises(err, match=match):
        gf.write(path, **kwargs)
    assert os.listdir(tmp_path) == []


class _Boom(Exception):
    pass


@pytest.mark.parametrize("fail_at", ["first chunk", "tensor data", "fsync", "replace"])
def test_write_failure_leaves_destination_untouched(tmp_path, monkeypatch, fail_at):
    path = tmp_path / "model.gguf"
    gf.write(path, {"v": 1}, [("w", "F32", (8,), np.ones(8, np.float32))])
    before = _sha(path)
    tensors = [("w", "F32", (8,), np.full(8, 2, np.float32)), ("u", "F32", (8,), np.zeros(8, np.float32))]
    if fail_at == "tensor data":
        # fail while streaming the second tensor: validation happened, the temp file exists
        real = gf._chunks

        def chunks(*a, **k):
            for i, c in enumerate(real(*a, **k)):
                if i == 3:
                    raise _Boom("interrupted midway")
                yield c
        monkeypatch.setattr(gf, "_chunks", chunks)
    elif fail_at == "first chunk":
        monkeypatch.setattr(gf.os, "write", lambda *a, **k: (_ for _ in ()).throw(_Boom("no write")))
    elif fail_at == "fsync":
        monkeypatch.setattr(gf.os, "fsync", lambda fd: (_ for _ in ()).throw(_Boom("fsync failed")))
    else:
        monkeypatch.setattr(gf.os, "replace", lambda *a, **k: (_ for _ in ()).throw(_Boom("rename failed")))
    with pytest.raises(_Boom):
        gf.write(path, {"v": 2}, tensors)
    assert _sha(path) == before
    assert os.listdir(tmp_path) == ["model.gguf"]


def test_write_interrupted_by_keyboard_interrupt(tmp_path, monkeypatch):
    path = tmp_path / "model.gguf"
    real = gf._chunks

    def chunks(*a, **k):
        gen = real(*a, **k)
        yield next(gen)
        raise KeyboardInterrupt
    monkeypatch.setattr(gf, "_chunks", chunks)
    with pytest.raises(KeyboardInterrupt):
        gf.write(path, {}, [("w", "F32", (8,), np.ones(8, np.float32))])
    assert os.listdir(tmp_path) == []


def test_rewrite_of_a_mapped_file_in_place(tmp_path):
    path = tmp_path / "model.gguf"
    w = np.arange(64, dtype=np.float32).reshape(2, 32)
    gf.write(path, {"general.name": "old"}, [("w", "F32", w.shape, w), ("q", "Q8_0", (1, 32), bytes(34))])
    with gf.read(path) as f:
        raw_before = f.tensors["w"].raw.copy()
        meta = dict(f.metadata, **{"general.name": "new"})
        # the tensors are views on the mapping of the very file being replaced
        gf.write(path, meta, f.tensors.values(), metadata_types=f.metadata_types)
        np.testing.assert_array_equal(f.tensors["w"].raw, raw_before)  # old mapping still intact
    with gf.read(path) as g:
        assert g.metadata["general.name"] == "new"
        np.testing.assert_array_equal(g.tensors["w"].raw.view(np.float32), w)
    assert os.listdir(tmp_path) == ["model.gguf"]


def test_write_keeps_permissions(tmp_path):
    path = tmp_path / "model.gguf"
    gf.write(path, {}, ())
    os.chmod(path, 0o640)
    gf.write(path, {"a": 1}, ())
    assert os.stat(path).st_mode & 0o777 == 0o640


# --------------------------------------------------------------------------- refquant inspect


def test_inspect_prints_header_metadata_and_tensor_table(smollm2_path, capsys):
    from refquant.cli import main

    assert main(["inspect", smollm2_path, "--items", "2"]) == 0
    out = capsys.readouterr().out
    assert "GGUF v3" in out and "272 tensors" in out and "134,515,008 weights" in out
    assert "tokenizer.ggml.tokens" in out and "(49152 items)" in out
    assert "llama.attention.layer_norm_rms_epsilon  FLOAT32        1e-05" in out
    # token_embd: Q8_0, 49152 x 576, 34 bytes per 32 weights = 8.5 bpw
    assert any(line.split()[:3] == ["token_embd.weight", "Q8_0", "49152"] and line.endswith("8.50")
               for line in out.splitlines())
    assert "by type" in out


def test_inspect_small_file_without_tensors(tmp_path, capsys):
    from refquant.cli import main

    path = tmp_path / "m.gguf"
    gf.write(path, {"general.name": "m", "a.list": np.arange(10, dtype=np.int16)}, ())
    assert main(["inspect", str(path), "--no-tensors"]) == 0
    out = capsys.readouterr().out
    assert "ARRAY[INT16]  [0, 1, 2, 3, ...] (10 items)" in out and "tensors\n" not in out


@pytest.mark.parametrize("content, message", [
    (None, "no such file"),
    (b"", "header at byte 0"),
    (b"GGUF\x03\x00\x00\x00" + b"\xff" * 16, "n_tensors at byte 8"),
    (b"PK\x03\x04" + bytes(40), "magic at byte 0"),
])
def test_inspect_bad_input_is_one_line_and_exit_2(tmp_path, capsys, content, message):
    from refquant.cli import main

    path = tmp_path / "bad.gguf"
    if content is not None:
        path.write_bytes(content)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and err.startswith("refquant inspect: error:")


def test_inspect_has_no_traceback_from_the_command_line(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "bad.gguf"
    path.write_bytes(b"GGUF\x03\x00\x00\x00" + struct.pack("<QQ", 0, 1) + struct.pack("<Q", 2**63) + bytes(17))
    res = subprocess.run([sys.executable, "-m", "refquant.cli", "inspect", str(path)], capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip().splitlines() == [
        f"refquant inspect: error: {path}: not a valid GGUF file: metadata key #0 at byte 24: "
        f"string of {2**63} bytes needed but only 17 bytes left"]


# a writer SIGKILLed midway (O_TMPFILE and the named fallback): tests/test_hardening_files.py


def test_write_takes_tensor_bytes_from_any_backend(xp):
    raw = np.arange(2 * 34, dtype=np.uint8).reshape(2, 34)
    want = gf.to_bytes({}, [("q", "Q8_0", (2, 32), raw)])
    assert gf.to_bytes({}, [("q", "Q8_0", (2, 32), xp.asarray(raw))]) == want
    w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)  # F32 given as floats: written as their bytes
    assert gf.to_bytes({}, [("w", "F32", (2, 32), xp.asarray(w))]) == gf.to_bytes({}, [("w", "F32", (2, 32), w.tobytes())])


def test_write_rejects_non_bytes_tensor():
    with pytest.raises(TypeError, match=r"tensors\['w'\]: expected the tensor's bytes"):
        gf.to_bytes({}, [("w", "F32", (1,), 3.0)])


@pytest.mark.gpu
def test_write_from_cupy_matches_numpy(smollm2_path):
    cupy = pytest.importorskip("cupy")
    with gf.read(smollm2_path) as f:
        tensors = list(f.tensors.values())[:12]
        on_gpu = [(t.name, t.type, t.shape, cupy.asarray(t.raw)) for t in tensors]
        on_host = [(t.name, t.type, t.shape, t.raw) for t in tensors]
        assert gf.to_bytes(f.metadata, on_gpu, metadata_types=f.metadata_types) == \
            gf.to_bytes(f.metadata, on_host, metadata_types=f.metadata_types)


def test_write_replaces_a_symlink_and_leaves_its_target(tmp_path):
    target = tmp_path / "blob.gguf"
    gf.write(target, {"v": 1}, ())
    before = _sha(target)
    link = tmp_path / "model.gguf"
    link.symlink_to(target)
    gf.write(link, {"v": 2}, ())
    assert not link.is_symlink() and gf.read(link).metadata["v"] == 2
    assert _sha(target) == before


# --------------------------------------------------------------------------- atomic writes: fallback, stale temporaries

def test_write_falls_back_where_the_file_system_has_no_o_tmpfile(tmp_path, monkeypatch):
    """EOPNOTSUPP from open(O_TMPFILE) (e.g. some network file systems): a named, locked temporary."""
    real_open = os.open
    tried = []

    def no_tmpfile(path, flags, *a, **k):
        if flags & getattr(os, "O_TMPFILE", 0) == getattr(os, "O_TMPFILE", -1):
            tried.append(path)
            raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP), path)
        return real_open(path, flags, *a, **k)
    monkeypatch.setattr(os, "open", no_tmpfile)
    path = tmp_path / "model.gguf"
    gf.write(path, {"v": 1}, [("w", "F32", (8,), np.ones(8, np.float32))])
    assert tried == ([str(tmp_path)] if gf._USE_O_TMPFILE else [])
    assert gf.read(path).metadata["v"] == 1 and os.listdir(tmp_path) == ["model.gguf"]


def test_stale_temporaries_removed_only_when_unlocked_and_of_the_same_target(tmp_path):
    import fcntl

    path = tmp_path / "model.gguf"
    stale = tmp_path / ".model.gguf.0123456789abcdef.tmp"     # its writer died: no lock
    alive = tmp_path / ".model.gguf.fedcba9876543210.tmp"     # its writer still holds the flock
    other = tmp_path / ".model.gguf.x.0123456789abcdef.tmp"   # target "model.gguf.x", not ours
    legacy = tmp_path / ".model.gguf.k2j_9x0a.tmp"            # tempfile.mkstemp's name (earlier versions)
    for p in (stale, alive, other, legacy):
        p.write_bytes(b"partial")
    holder = open(alive, "rb")
    fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
    try:
        gf.write(path, {"v": 1}, ())
    finally:
        holder.close()
    assert sorted(os.listdir(tmp_path)) == sorted([path.name, alive.name, other.name])


def test_write_refuses_a_destination_that_is_not_a_regular_file(tmp_path):
    import stat as st

    fifo, folder, device = tmp_path / "fifo", tmp_path / "folder", tmp_path / "null"
    os.mkfifo(fifo)
    folder.mkdir()
    os.mknod(device, st.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    for p, kind in ((fifo, "a FIFO"), (folder, "a directory"), (device, "a character device")):
        with pytest.raises(gf.NotAFileError, match=f"is {kind}.*refusing to replace it"):
            gf.write(p, {"v": 1}, ())
    assert st.S_ISCHR(os.lstat(device).st_mode) and st.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["fifo", "folder", "null"]
    with pytest.raises(gf.NotAFileError, match="is a FIFO"):
        gf.read(fifo)  # refused before open(), which would block
