"""Other people's codecs with the kit's natural signatures: gguf-py's quants, bitsandbytes'
CPU backend, torchao's NF4 — to run ``check`` on them (notebooks/11_verify_your_kernel.ipynb).

Each factory returns a callable (``gguf_py("Q4_K", "quantize")`` …); the libraries are imported
when the callable runs, and a missing one raises ``OracleUnavailable`` naming the package.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import OracleUnavailable

__all__ = ["gguf_py", "bitsandbytes", "torchao_nf4", "THIRD_PARTY"]


def gguf_py(qtype: str, direction: str = "quantize") -> Callable:
    """gguf-py's ``gguf.quants.quantize(x, type)`` / ``dequantize(raw, type)``."""
    def _quants():
        try:
            import gguf
            from gguf import quants
        except ImportError as e:
            raise OracleUnavailable("gguf-py: `pip install gguf`") from e
        return gguf.GGMLQuantizationType[qtype], quants

    def quantize(x):
        t, quants = _quants()
        return quants.quantize(np.asarray(x, np.float32), t)

    def dequantize(raw):
        t, quants = _quants()
        return quants.dequantize(np.asarray(raw, np.uint8), t)

    fn = quantize if direction == "quantize" else dequantize
    fn.__qualname__ = f"gguf.quants.{direction}[{qtype}]"
    return fn


def bitsandbytes(fmt: str, direction: str = "quantize") -> Callable:
    """bitsandbytes.functional on the CPU: quantize_4bit / dequantize_4bit (NF4, FP4, blocks of 64),
    quantize_blockwise / dequantize_blockwise (blocks of 256), int8_vectorwise_quant / _dequant."""
    from .. import bnb

    def nf4_q(x):
        r = bnb.bnb_quantize_4bit(np.asarray(x, np.float32), blocksize=64, quant_type=fmt.lower())
        return r["packed"], r["absmax"]

    def nf4_d(packed, absmax, shape):
        return bnb.bnb_dequantize_4bit(packed, absmax, tuple(shape), 64, fmt.lower())

    def bw_q(x):
        r = bnb.bnb_quantize_blockwise(np.asarray(x, np.float32), blocksize=256)
        return r["q"], r["absmax"]

    def bw_d(q, absmax):
        return bnb.bnb_dequantize_blockwise(q, absmax, 256)

    def v_q(A):
        r = bnb.bnb_int8_vectorwise_quant(np.asarray(A, np.float32), threshold=0.0)
        return r["Q"], r["s"]

    table = {("NF4", "quantize"): nf4_q, ("NF4", "dequantize"): nf4_d, ("FP4", "quantize"): nf4_q,
             ("FP4", "dequantize"): nf4_d, ("INT8-BLOCKWISE", "quantize"): bw_q, ("INT8-BLOCKWISE", "dequantize"): bw_d,
             ("LLM.INT8", "quantize"): v_q, ("LLM.INT8", "dequantize"): bnb.bnb_int8_vectorwise_dequant}
    fn = table[(fmt, direction)]
    wrapper = lambda *a: fn(*a)  # noqa: E731 - a fresh function to name
    wrapper.__qualname__ = f"bitsandbytes[{fmt} {direction}]"
    wrapper.__module__ = "bitsandbytes.functional"
    return wrapper


def torchao_nf4(x: Any) -> tuple:
    """torchao's ``to_nf4(x, block_size=64, scaler_block_size=n_blocks)``: packed codes and the
    absmax it keeps (always double-quantized to int8 scalers, decoded here)."""
    try:
        import torch
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4
    except ImportError as e:
        raise OracleUnavailable("torchao NF4: `pip install torchao`") from e
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32).reshape(-1).copy())
    n_blocks = t.numel() // 64
    nf = to_nf4(t, block_size=64, scaler_block_size=n_blocks)
    absmax = nf.dequantize_scalers(nf.quantized_scalers, nf.quantization_factor, n_blocks)
    return nf.quantized_data.numpy().copy(), absmax.float().numpy().copy()


torchao_nf4.__qualname__ = "torchao.to_nf4"

# (label, format, direction, factory of the callable)
THIRD_PARTY = (
    # gguf-py 0.19 quantizes only these (the others raise NotImplementedError); it decodes all of them
    [(f"gguf-py {t}", t, "quantize", (lambda t=t: gguf_py(t, "quantize")))
     for t in ("BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "TQ1_0", "TQ2_0", "MXFP4")]
    + [(f"gguf-py {t}", t, "dequantize", (lambda t=t: gguf_py(t, "dequantize")))
       for t in ("BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
                 "IQ4_NL", "IQ4_XS", "IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ3_XXS", "IQ3_S", "IQ1_S", "IQ1_M",
                 "TQ1_0", "TQ2_0", "MXFP4", "NVFP4")]
    + [(f"bitsandbytes {f}", f, d, (lambda f=f, d=d: bitsandbytes(f, d)))
       for f in ("NF4", "FP4", "INT8-BLOCKWISE", "LLM.INT8") for d in ("quantize", "dequantize")]
    + [("torchao NF4", "NF4", "quantize", lambda: torchao_nf4)]
)
