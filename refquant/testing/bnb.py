"""bitsandbytes as an oracle: NumPy in, NumPy out, on the CPU.

Each adapter calls the public ``bitsandbytes.functional`` entry point (or the registered
``torch.ops.bitsandbytes`` kernel for LLM.int8()'s pieces) and hands back plain NumPy
arrays, so a test can compare bytes::

    from refquant.testing.bnb import bnb_quantize_4bit
    ref = bnb_quantize_4bit(x, blocksize=64, quant_type="nf4", double_quant=True)
    assert ref["packed"].tobytes() == my_packed.tobytes()

Oddities of bitsandbytes 0.50.x that the adapters smooth over (and document):

* its CPU dequantizer returns a 1-D tensor as shape (1, n) and transposes the output when
  the packed tensor has one row (n ≤ 2); we reshape the result to the input's shape;
* its pure-torch fallbacks are wrapped in ``torch.compile``; compilation does not change
  their element-wise float32 arithmetic but costs seconds per new shape, so the adapters
  run them eagerly (``torch._dynamo.config.disable``);
* which dequantizer runs (AVX-512 or scalar C++ kernel, or pure torch) depends on the block
  size, the shape and the CPU: ``dequantize_4bit_path`` says which, because they write
  different zeros for FP4 pattern 8 and the AVX-512 one misreads absmax when rows and
  blocks do not align (see ``refquant.nf4``); ``dequantized_flat`` decodes the same bytes
  as one row, which every path gets right;
* its C++ kernels run an OpenMP team of their own; while torch's team spins after its last
  parallel region the two fight over the cores and a call on a few KiB takes 0.1 s instead
  of 1 ms, so the adapters hold torch to one thread for the duration of the call.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
from typing import Any

import numpy as np

from . import OracleUnavailable

__all__ = [
    "bnb_available",
    "bnb_quantize_4bit",
    "bnb_dequantize_4bit",
    "bnb_quantize_blockwise",
    "bnb_dequantize_blockwise",
    "bnb_int8_vectorwise_quant",
    "bnb_int8_vectorwise_dequant",
    "bnb_int8_linear_matmul",
    "bnb_int8_mm_dequant",
    "bnb_int8_mixed_scaled_mm",
    "bnb_code",
    "dequantize_4bit_path",
]

_TORCH_DTYPES = ("float32", "float16", "bfloat16")


def _import():
    """(torch, bitsandbytes.functional), imported quietly; OracleUnavailable if missing."""
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is in the test extra
        raise OracleUnavailable("bitsandbytes oracle needs torch: pip install torch") from e
    try:
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        with contextlib.redirect_stderr(io.StringIO()):
            import bitsandbytes.functional as F
    except ImportError as e:
        raise OracleUnavailable("bitsandbytes oracle needs bitsandbytes: pip install bitsandbytes") from e
    import torch._dynamo

    torch._dynamo.config.disable = True  # eager fallbacks: same arithmetic, no compile time
    return torch, F


def _oracle_call(fn):
    """Run ``fn`` with torch's intra-op pool at one thread (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        torch, _ = _import()
        n_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(*args, **kwargs)
        finally:
            torch.set_num_threads(n_threads)

    return wrapper


def bnb_available() -> bool:
    try:
        _import()
    except OracleUnavailable:
        return False
    return True


def _to_torch(x: Any, dtype: str | None = None):
    """NumPy (or torch) array -> CPU torch tensor, optionally cast to ``dtype`` by name."""
    torch, _ = _import()
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    if dtype is not None:
        if dtype not in _TORCH_DTYPES:
            raise ValueError(f"dtype: expected one of {_TORCH_DTYPES}, got {dtype!r}")
        t = t.to(getattr(torch, dtype))
    return t.contiguous()


def _np(t) -> np.ndarray:
    """torch -> NumPy; bfloat16 widened exactly to float32."""
    torch, _ = _import()
    t = t.detach().cpu()
    if t.dtype == torch.bfloat16:
        t = t.float()
    return t.numpy().copy()


def bnb_code(quant_type: str) -> np.ndarray:
    """bitsandbytes' 16-value code book (``get_4bit_type``) or 256-value dynamic map ("dynamic")."""
    torch, F = _import()
    if quant_type == "dynamic":
        return _np(F.create_dynamic_map())
    return _np(F.get_4bit_type(quant_type, device="cpu"))


def dequantize_4bit_path(blocksize: int, shape: tuple) -> str:
    """Which CPU dequantizer bitsandbytes picks for this block size and tensor shape.

    'torch' (pure-torch fallback: odd last dimension, or B ≥ 2048 on AVX-512),
    'avx512' (last dimension a multiple of 16), 'avx512-misaligned' (the same kernel when
    the last dimension is not a multiple of B and there is more than one row: it reads the
    wrong absmax, see refquant.nf4) or 'scalar' (the portable C++ loop, -0.0 for FP4's
    pattern 8). Mirrors backends/cpu/ops.py and csrc/cpu_ops.cpp.
    """
    torch, _ = _import()
    shape = tuple(shape)
    rows = int(np.prod(shape[:-1])) if len(shape) > 1 else 1
    cols = int(shape[-1])
    avx512 = torch.backends.cpu.get_cpu_capability() == "AVX512"
    if (avx512 and blocksize >= 2048) or cols % 2:
        return "torch"
    if avx512 and cols % 16 == 0:
        return "avx512-misaligned" if rows > 1 and cols % blocksize else "avx512"
    return "scalar"


@_oracle_call
def bnb_quantize_4bit(x: Any, blocksize: int = 64, quant_type: str = "nf4",
                      double_quant: bool = False, dtype: str | None = None) -> dict:
    """``bitsandbytes.functional.quantize_4bit`` -> dict of NumPy arrays.

    Keys: packed (uint8, (ceil(n/2), 1)), absmax, and with double quantization offset
    (float32 scalar), nested_absmax, nested_code; plus ``dequantized`` (the input's shape
    and dtype, bfloat16 widened to float32) from ``dequantize_4bit`` of the same state.
    """
    torch, F = _import()
    A = _to_torch(x, dtype)
    packed, state = F.quantize_4bit(A, blocksize=blocksize, quant_type=quant_type,
                                    compress_statistics=double_quant)
    out = {"packed": _np(packed), "absmax": _np(state.absmax), "code": _np(state.code)}
    if double_quant:
        out["offset"] = np.float32(state.offset.item())
        out["nested_absmax"] = _np(state.state2.absmax)
        out["nested_code"] = _np(state.state2.code)
        out["nested_blocksize"] = state.state2.blocksize
    deq = F.dequantize_4bit(packed, state)
    out["dequantized"] = _np(deq).reshape(tuple(A.shape))
    # the same bytes decoded as one flat row: the layout quantize_4bit wrote, whatever the shape
    state.shape = torch.Size((A.numel(),))
    out["dequantized_flat"] = _np(F.dequantize_4bit(packed, state)).reshape(tuple(A.shape))
    return out


@_oracle_call
def bnb_dequantize_4bit(packed: np.ndarray, absmax: np.ndarray, shape: tuple, blocksize: int,
                        quant_type: str, dtype: str = "float32") -> np.ndarray:
    """``dequantize_4bit`` from raw bytes and a float32 absmax (no nesting) -> NumPy of ``shape``."""
    torch, F = _import()
    state = F.QuantState(absmax=_to_torch(np.asarray(absmax, np.float32)), shape=torch.Size(shape),
                         blocksize=blocksize, quant_type=quant_type, dtype=getattr(torch, dtype),
                         code=F.get_4bit_type(quant_type, device="cpu"))
    P = _to_torch(np.asarray(packed, np.uint8).reshape(-1, 1))
    return _np(F.dequantize_4bit(P, state)).reshape(shape)


@_oracle_call
def bnb_quantize_blockwise(x: Any, blocksize: int = 4096, dtype: str | None = None) -> dict:
    """``quantize_blockwise`` with the dynamic map -> {q, absmax, code, dequantized}."""
    torch, F = _import()
    A = _to_torch(x, dtype)
    q, state = F.quantize_blockwise(A, blocksize=blocksize)
    deq = F.dequantize_blockwise(q, state)
    return {"q": _np(q), "absmax": _np(state.absmax), "code": _np(state.code),
            "dequantized": _np(deq).reshape(tuple(A.shape))}


@_oracle_call
def bnb_dequantize_blockwise(q: np.ndarray, absmax: np.ndarray, blocksize: int,
                             dtype: str = "float32") -> np.ndarray:
    """``dequantize_blockwise`` of uint8 codes with the dynamic map."""
    torch, F = _import()
    state = F.QuantState(absmax=_to_torch(np.asarray(absmax, np.float32)), code=F.create_dynamic_map(),
                         blocksize=blocksize, dtype=getattr(torch, dtype))
    return _np(F.dequantize_blockwise(_to_torch(np.asarray(q, np.uint8)), state))


@_oracle_call
def bnb_int8_vectorwise_quant(A: Any, threshold: float = 0.0, dtype: str | None = None) -> dict:
    """``int8_vectorwise_quant`` -> {Q int8, s float32, outlier_cols int64 or None}."""
    torch, F = _import()
    T = _to_torch(A, dtype).clone()  # bitsandbytes writes into A while it works
    Q, s, cols = F.int8_vectorwise_quant(T, threshold=threshold)
    return {"Q": _np(Q), "s": _np(s), "outlier_cols": None if cols is None else _np(cols)}


@_oracle_call
def bnb_int8_vectorwise_dequant(Q: np.ndarray, s: np.ndarray) -> np.ndarray:
    """``int8_vectorwise_dequant``: Q (rows, K) int8, s (rows,) float32 -> float32."""
    torch, F = _import()
    return _np(F.int8_vectorwise_dequant(_to_torch(Q), _to_torch(s)))


@_oracle_call
def bnb_int8_linear_matmul(QA: np.ndarray, QB: np.ndarray) -> np.ndarray:
    """``int8_linear_matmul``: QA (M, K) int8 · QB (N, K)ᵀ -> (M, N) int32."""
    torch, F = _import()
    return _np(F.int8_linear_matmul(_to_torch(QA), _to_torch(QB)))


@_oracle_call
def bnb_int8_mm_dequant(C: np.ndarray, s_A: np.ndarray, s_B: np.ndarray, dtype: str = "float32") -> np.ndarray:
    """The ``int8_mm_dequant`` kernel with an output dtype (the public wrapper fixes float16)."""
    torch, F = _import()
    out = torch.ops.bitsandbytes.int8_mm_dequant.default(
        _to_torch(C), _to_torch(s_A), _to_torch(s_B), dtype=getattr(torch, dtype))
    return _np(out)


@_oracle_call
def bnb_int8_mixed_scaled_mm(X: Any, W: Any, threshold: float, dtype: str = "float16") -> dict:
    """LLM.int8() as ``MatMul8bitLt.forward`` runs it: quantize X (with outliers) and W,
    then ``int8_mixed_scaled_mm`` -> {Y (dtype), outlier_cols, QX, s, QW, t}."""
    torch, F = _import()
    Xt = _to_torch(X, dtype)
    Wt = _to_torch(W, dtype)
    QX, s, cols = F.int8_vectorwise_quant(Xt.clone(), threshold=threshold)
    QW, t, _ = F.int8_vectorwise_quant(Wt.clone())
    Y, _ = torch.ops.bitsandbytes.int8_mixed_scaled_mm(Xt, QX, QW, s, t, cols, None)
    return {"Y": _np(Y), "outlier_cols": None if cols is None else _np(cols),
            "QX": _np(QX), "s": _np(s), "QW": _np(QW), "t": _np(t)}
