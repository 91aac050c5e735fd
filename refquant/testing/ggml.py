"""libggml as an oracle, through ctypes (the prebuilt ``libggml-python`` wheel).

``ggml_quantize(x, qtype, imatrix=None)`` returns the bytes ``ggml_quantize_chunk`` writes —
what llama-quantize puts in a file — and ``ggml_dequantize(raw, qtype)`` what ggml's
``to_float`` gives back. Rows are independent, so a (rows, n_per_row) float32 array
maps to (rows, row_bytes) uint8.
"""

from __future__ import annotations

import ctypes
import functools
import os

import numpy as np

from . import OracleUnavailable

__all__ = ["GGML_TYPES", "ggml_quantize", "ggml_quantize_or_abort", "ggml_dequantize", "ggml_row_size", "ggml_block_size", "lib",
           "ggml_quantize_row_ref", "ggml_dequantize_row"]

# enum ggml_type (ggml.h)
GGML_TYPES = {
    "F32": 0, "F16": 1, "Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8, "Q8_1": 9,
    "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14, "Q8_K": 15,
    "IQ2_XXS": 16, "IQ2_XS": 17, "IQ3_XXS": 18, "IQ1_S": 19, "IQ4_NL": 20, "IQ3_S": 21, "IQ2_S": 22,
    "IQ4_XS": 23, "IQ1_M": 29, "BF16": 30, "TQ1_0": 34, "TQ2_0": 35, "MXFP4": 39, "NVFP4": 40,
    "Q1_0": 41, "Q2_0": 42,
}


class _TypeTraits(ctypes.Structure):
    _fields_ = [
        ("type_name", ctypes.c_char_p),
        ("blck_size", ctypes.c_int64),
        ("blck_size_interleave", ctypes.c_int64),
        ("type_size", ctypes.c_size_t),
        ("is_quantized", ctypes.c_bool),
        ("to_float", ctypes.c_void_p),
        ("from_float_ref", ctypes.c_void_p),
    ]


_TO_FLOAT = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)


@functools.lru_cache(maxsize=1)
def lib() -> ctypes.CDLL:
    """The loaded ``libggml-base`` shared library (quantize/dequantize live there)."""
    try:
        import libggml
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise OracleUnavailable("the libggml oracle needs `pip install libggml-python`") from e
    # llama-cpp-python ships its own, newer libggml-base.so with the same soname. Whichever
    # is loaded first wins the soname, and libllama.so then fails to load against the older
    # copy ("undefined symbol"). Loading llama.cpp first lets both live in one process:
    # libllama binds to its own copy, and we open ours below by full path.
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed (or broken): the libggml oracle still works
        pass
    libdir = os.path.join(os.path.dirname(libggml.__file__), "lib64")
    if not os.path.isdir(libdir):
        libdir = os.path.join(os.path.dirname(libggml.__file__), "lib")
    handle = ctypes.CDLL(os.path.join(libdir, "libggml-base.so"))
    handle.ggml_quantize_chunk.restype = ctypes.c_size_t
    handle.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                           ctypes.c_int64, ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    handle.ggml_row_size.restype = ctypes.c_size_t
    handle.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    handle.ggml_blck_size.restype = ctypes.c_int64
    handle.ggml_blck_size.argtypes = [ctypes.c_int]
    handle.ggml_get_type_traits.restype = ctypes.POINTER(_TypeTraits)
    handle.ggml_get_type_traits.argtypes = [ctypes.c_int]
    return handle


def _type_id(qtype: str | int) -> int:
    if isinstance(qtype, int):
        return qtype
    name = getattr(qtype, "name", qtype)  # accepts gguf.GGMLQuantizationType too
    try:
        return GGML_TYPES[str(name).upper()]
    except KeyError:
        raise ValueError(f"qtype: unknown ggml type {qtype!r}; known: {sorted(GGML_TYPES)}") from None


def ggml_row_size(qtype: str | int, n_per_row: int) -> int:
    return int(lib().ggml_row_size(_type_id(qtype), n_per_row))


def ggml_block_size(qtype: str | int) -> int:
    return int(lib().ggml_blck_size(_type_id(qtype)))


def ggml_quantize(x: np.ndarray, qtype: str | int, imatrix: np.ndarray | None = None) -> np.ndarray:
    """x: (..., n_per_row) float -> (..., row_bytes) uint8, exactly as ``ggml_quantize_chunk``."""
    tid = _type_id(qtype)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_per_row = x.shape[-1]
    rows = x.reshape(-1, n_per_row)
    row_bytes = ggml_row_size(tid, n_per_row)
    out = np.zeros((rows.shape[0], row_bytes), dtype=np.uint8)
    imat_ptr = None
    if imatrix is not None:
        imatrix = np.ascontiguousarray(imatrix, dtype=np.float32)
        if imatrix.shape != (n_per_row,):
            raise ValueError(f"imatrix: expected shape ({n_per_row},), got {imatrix.shape}")
        imat_ptr = imatrix.ctypes.data
    written = lib().ggml_quantize_chunk(tid, rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], n_per_row, imat_ptr)
    assert written == out.nbytes, (written, out.nbytes)
    return out.reshape(*x.shape[:-1], row_bytes)


def ggml_quantize_or_abort(x: np.ndarray, qtype: str | int, imatrix: np.ndarray | None = None) -> np.ndarray | None:
    """``ggml_quantize``, run in a forked child: its bytes, or None when libggml aborts (a GGML_ASSERT).

    The lattice types' searches (IQ1/IQ2/IQ3) abort the process on weights whose weighted errors
    overflow float32; a fork lets a test see that without dying. The parent first quantizes one
    harmless row of the type, so the grid tables libggml builds on first use (seconds of C for
    IQ2_S) are already in the memory the child inherits. POSIX only.
    """
    tid = _type_id(qtype)
    qk = ggml_block_size(tid)
    ggml_quantize(np.ones((1, qk), np.float32), tid, np.ones(qk, np.float32))  # warm ggml_quantize_init
    x = np.ascontiguousarray(x, dtype=np.float32)
    expected = int(np.prod(x.shape[:-1], dtype=np.int64)) * ggml_row_size(tid, x.shape[-1])
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: quantize, send the bytes, leave without running the parent's exit handlers
        code = 1
        try:
            os.close(read_end)
            os.environ["GGML_NO_BACKTRACE"] = "1"          # ggml_abort would otherwise attach gdb
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 1)                             # nor are the "Oops"/neighbour dumps it printf()s
            os.dup2(devnull, 2)                             # the abort's message is not this caller's output
            data = memoryview(ggml_quantize(x, tid, imatrix).tobytes())
            while data:
                data = data[os.write(write_end, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    with os.fdopen(read_end, "rb") as f:
        while chunk := f.read(1 << 16):
            chunks.append(chunk)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) and os.WTERMSIG(status) == 6:  # SIGABRT: ggml_abort
        return None
    body = b"".join(chunks)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 and len(body) == expected):
        raise RuntimeError(f"libggml child for type {qtype!r} ended with status {status} after {len(body)} bytes")
    return np.frombuffer(body, np.uint8).reshape(*x.shape[:-1], -1).copy()


def ggml_dequantize(raw: np.ndarray, qtype: str | int, n_per_row: int | None = None) -> np.ndarray:
    """raw: (..., row_bytes) uint8 -> (..., n_per_row) float32 through ggml's ``to_float``."""
    tid = _type_id(qtype)
    traits = lib().ggml_get_type_traits(tid).contents
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    if n_per_row is None:
        n_per_row = raw.shape[-1] // traits.type_size * traits.blck_size
    total = raw.size // ggml_row_size(tid, n_per_row) * n_per_row
    out = np.empty(total, dtype=np.float32)
    if tid == GGML_TYPES["F32"]:
        out[:] = raw.view(np.float32).ravel()
    else:
        _TO_FLOAT(traits.to_float)(raw.ctypes.data, out.ctypes.data, total)
    return out.reshape(*raw.shape[:-1], n_per_row)


def _row_symbol(prefix: str, qtype: str | int) -> str:
    """ggml's C name of a per-type row function: ("quantize_row_", "Q8_K") -> "quantize_row_q8_K"."""
    name = getattr(qtype, "name", qtype)
    if isinstance(name, int):
        name = {v: k for k, v in GGML_TYPES.items()}[name]
    name = str(name).upper()
    _type_id(name)  # unknown names raise ValueError here
    return prefix + name.lower().replace("_k", "_K")


def ggml_quantize_row_ref(x: np.ndarray, qtype: str | int) -> np.ndarray:
    """x: (..., n) float -> (..., row_bytes) uint8 through libggml's ``quantize_row_<t>_ref``.

    For the types ``ggml_quantize_chunk`` does not offer (Q8_K, Q8_1: the activation
    formats of the CPU dot products). The output starts zeroed, so fields the C code
    leaves untouched (Q8_K's bsums of an all-zero block) read as 0.
    """
    tid = _type_id(qtype)
    fn = getattr(lib(), _row_symbol("quantize_row_", qtype) + "_ref")
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    x = np.ascontiguousarray(x, dtype=np.float32)
    n_per_row = x.shape[-1]
    out = np.zeros((x.size // n_per_row, ggml_row_size(tid, n_per_row)), dtype=np.uint8)
    fn(x.ctypes.data, out.ctypes.data, x.size)
    return out.reshape(*x.shape[:-1], out.shape[-1])


def ggml_dequantize_row(raw: np.ndarray, qtype: str | int) -> np.ndarray:
    """raw: (..., row_bytes) uint8 -> (..., n) float32 through libggml's ``dequantize_row_<t>``.

    The exported decoder, for types whose type traits carry no ``to_float`` (Q8_K).
    """
    tid = _type_id(qtype)
    fn = getattr(lib(), _row_symbol("dequantize_row_", qtype))
    fn.restype = None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    traits = lib().ggml_get_type_traits(tid).contents
    raw = np.ascontiguousarray(raw, dtype=np.uint8)
    n_per_row = raw.shape[-1] // traits.type_size * traits.blck_size
    out = np.empty(raw.size // traits.type_size * traits.blck_size, dtype=np.float32)
    fn(raw.ctypes.data, out.ctypes.data, out.size)
    return out.reshape(*raw.shape[:-1], n_per_row)
