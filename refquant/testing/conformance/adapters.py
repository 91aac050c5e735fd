"""Other people's codecs with the kit's natural signatures: gguf-py's quants, bitsandbytes'
CPU backend, torchao's NF4, int4 and GGUF paths — to run ``check`` on them
(notebooks/11_verify_your_kernel.ipynb).

Each factory returns a callable (``gguf_py("Q4_K", "quantize")`` …); the libraries are imported
when the callable runs, and a missing one raises ``OracleUnavailable`` naming the package.

torchao's paths that run on a CPU (torchao 0.18), and the refquant format each is checked as:

| adapter                 | torchao code                                                        | format   |
|-------------------------|---------------------------------------------------------------------|----------|
| ``torchao_nf4``, ``torchao_nf4_dequantize`` | ``to_nf4``; ``NF4Tensor.get_original_weight`` (absmax always double-quantized) | NF4 |
| ``torchao_int4_affine`` | ``choose_qparams_affine`` / ``quantize_affine`` / ``dequantize_affine``, ASYMMETRIC, block (1, 32), codes −8..7 (IntxWeightOnlyConfig's primitives) | INT4-G32 |
| ``torchao_int4_tinygemm`` | ``_choose_qparams_affine_tinygemm`` / ``_quantize_affine_tinygemm``, codes 0..15, a float zero (Int4OpaqueTensor's CPU path) | INT4-G32 |
| ``torchao_gguf_q4_k``   | prototype ``GGUFQuantizedTensor`` (GGUFWeightOnlyConfig), 8 blocks of 32 per 256 | Q4_K |

Where torchao keeps a different representation, the adapter converts it and says how; the
conversions are exact except where a docstring names a rounding (the verdict then covers it).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .. import OracleUnavailable
from ._formats import NF4_BLOCK

__all__ = ["gguf_py", "bitsandbytes", "torchao_nf4", "torchao_nf4_dequantize", "torchao_int4_affine",
           "torchao_int4_tinygemm", "torchao_gguf_q4_k", "THIRD_PARTY"]


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


def torchao_nf4_dequantize(packed: Any, absmax: Any, shape: Any) -> np.ndarray:
    """torchao's NF4 decoder, ``NF4Tensor.get_original_weight``, on refquant's packed codes and absmax.

    An NF4Tensor holds absmax only double-quantized; to decode the kit's (packed, absmax) the adapter
    runs get_original_weight on a stand-in whose ``dequantize_scalers`` returns the float32 absmax
    as given. The unpacking (first code in the high nibble), the code book lookup and the product
    code · absmax are torchao's. The code book is the one to_nf4 builds for a float32 tensor.
    """
    try:
        import torch
        from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import NF4Tensor, to_nf4
    except ImportError as e:
        raise OracleUnavailable("torchao NF4: `pip install torchao`") from e
    from types import SimpleNamespace

    from ._formats import _np

    book = to_nf4(torch.zeros(NF4_BLOCK), block_size=NF4_BLOCK, scaler_block_size=1).nf4    # (16,) float32
    scalers = torch.from_numpy(np.ascontiguousarray(_np(absmax), np.float32).reshape(-1).copy())
    codes = torch.from_numpy(np.ascontiguousarray(_np(packed), np.uint8).reshape(-1).copy())    # (n/2,)
    state = SimpleNamespace(quantized_data=codes, nf4=book, block_size=NF4_BLOCK, shape=torch.Size(tuple(int(n) for n in shape)),
                            quantized_scalers=None, quantization_factor=None, scaler_block_size=None,
                            dequantize=NF4Tensor.dequantize, dequantize_scalers=lambda *_: scalers)
    return NF4Tensor.get_original_weight(state).numpy()


torchao_nf4_dequantize.__qualname__ = "torchao.NF4Tensor.get_original_weight"


# ---------------------------------------------------------------------------------------
# torchao's int4 affine primitives and its GGUF prototype (CPU)
# ---------------------------------------------------------------------------------------

INT4_GROUP = 32                 # refquant's INT4-G32: one (s, z) per 32 consecutive weights of a row
INT4_CODES = (-8, 7)            # refquant.uniform.code_range(4, symmetric=False)
TINYGEMM_CODES = (0, 15)        # Int4OpaqueTensor.from_hp: quant_min, quant_max
TINYGEMM_EPS = 1e-6             # Int4OpaqueTensor.from_hp: eps
GGUF_SUB_BLOCKS = 8             # GGUFWeightOnlyConfig.n_blocks_per_superblock: 8 blocks of 32 per 256


def _torchao(what: str) -> tuple:
    """(torch, torchao.quantization.quant_primitives), or OracleUnavailable naming ``what``."""
    try:
        import torch
        from torchao.quantization import quant_primitives
    except ImportError as e:
        raise OracleUnavailable(f"torchao {what}: `pip install torchao`") from e
    return torch, quant_primitives


def _torch_f32(a: Any) -> Any:
    """Any array (NumPy, torch) as a fresh float32 CPU torch tensor of its shape."""
    import torch

    from ._formats import _np

    return torch.from_numpy(np.ascontiguousarray(_np(a), np.float32).copy())


def _named(fn: Callable, qualname: str) -> Callable:
    fn.__qualname__ = qualname
    fn.__module__ = "torchao"
    return fn


def torchao_int4_affine(direction: str = "quantize") -> Callable:
    """torchao's affine int4 primitives as refquant's INT4-G32 (4-bit asymmetric, codes −8..7, groups of 32).

        s, z = choose_qparams_affine(x, MappingType.ASYMMETRIC, (1, 32), torch.int8, −8, 7)
        q = quantize_affine(x, (1, 32), s, z, torch.int8, −8, 7)        (z: int32, eps: float32's smallest normal)
        x̂ = dequantize_affine(q, (1, 32), s, z, torch.int8, −8, 7)       = (q − z) · s

    The primitives IntxWeightOnlyConfig(torch.int4, PerGroup(32), ASYMMETRIC) uses on a CPU.
    quantize: x (rows, n) -> q (rows, n) int8, s (rows, n/32) float32, z (rows, n/32) int32 — no conversion.
    dequantize: q, s, z as refquant's INT4-G32 holds them (z integral) -> float32 (rows, n).
    """
    block = (1, INT4_GROUP)

    def quantize(x):
        torch, P = _torchao("int4 affine")
        w = _torch_f32(x)                                                            # (rows, n)
        s, z = P.choose_qparams_affine(w, P.MappingType.ASYMMETRIC, block, torch.int8, *INT4_CODES)
        q = P.quantize_affine(w, block, s, z, torch.int8, *INT4_CODES)               # (rows, n) int8
        return q.numpy(), s.numpy(), z.numpy()                                       # s, z: (rows, n/32)

    def dequantize(q, s, z):
        torch, P = _torchao("int4 affine")
        q_t = torch.from_numpy(np.asarray(q).astype(np.int8))                        # (rows, n), exact: −8..7
        groups = (q_t.shape[0], q_t.shape[1] // INT4_GROUP)
        s_t = _torch_f32(s).reshape(groups)                                          # (rows, n/32)
        z_t = torch.from_numpy(np.asarray(z).astype(np.int32)).reshape(groups)       # integral zero-points
        return P.dequantize_affine(q_t, block, s_t, z_t, torch.int8, *INT4_CODES).numpy()

    fn = quantize if direction == "quantize" else dequantize
    return _named(fn, f"quant_primitives.{direction}_affine[int4, group 32]")


def torchao_int4_tinygemm(x: Any) -> tuple:
    """torchao's CPU int4 path (Int4OpaqueTensor.from_hp, the TINYGEMM qparams) as INT4-G32 quantize.

        scale = max((max − min) / 15, 1e-6),   zero = min + 8 · scale        (the float "zero": no min(·, 0))
        q = clamp(round((x − (zero − 8 · scale)) / scale), 0, 15),   x̂ = (q − 8) · scale + zero

    In INT4-G32's terms x̂ = s (q' − z'): the adapter returns q' = q − 8 (exact), s = scale and
    z' = −zero / scale (a float32 division: the one rounding of the adapter; z' is rarely integral).
    x (rows, n) -> q' (rows, n), s (rows, n/32), z' (rows, n/32).
    """
    torch, P = _torchao("int4 tinygemm")
    w = _torch_f32(x)                                                                # (rows, n)
    block = (1, INT4_GROUP)
    scale, zero = P._choose_qparams_affine_tinygemm(w, P.MappingType.ASYMMETRIC, block, torch.int32, *TINYGEMM_CODES,
                                                    TINYGEMM_EPS, None, torch.float32)
    q = P._quantize_affine_tinygemm(w, block, scale, zero, torch.int32, *TINYGEMM_CODES)  # (rows, n) 0..15
    mid = (TINYGEMM_CODES[0] + TINYGEMM_CODES[1] + 1) // 2                           # 8
    return (q - mid).numpy(), scale.numpy(), (-zero / scale).numpy()


_named(torchao_int4_tinygemm, "Int4OpaqueTensor.from_hp[tinygemm qparams, group 32]")


def torchao_gguf_q4_k(direction: str = "quantize") -> Callable:
    """torchao's GGUF prototype (``GGUFQuantizedTensor``, 8 blocks of 32 per super-block) as Q4_K bytes.

    torchao:  x̂ = s_sb · sc_j · q + m_sb · m_j          ggml Q4_K:  x̂ = d · sc_j · q − dmin · m_j
    so d = s_sb (``super_block_scale_scale``), dmin = 0 − m_sb (``super_block_min_scale``; +0 for 0), sc_j, m_j its
    ``quantized_block_scale`` / ``_min`` and q its ``int_data``.

    dequantize: Q4_K bytes are split with refquant's own field readers (get_scale_min_k4, the nibble
    pairs, fp16 d/dmin), handed to ``GGUFQuantizedTensor(...).dequantize(torch.float32)`` — exact.
    quantize: ``GGUFQuantizedTensor.from_float(x, 8, torch.uint4)`` keeps float fields (sc_j, m_j are
    clamped but not rounded, q is neither rounded nor clamped); to write bytes the adapter rounds them
    half to even (``torch.round``, as torchao's quantize_affine does), clamps sc_j, m_j to 0..63 and q to
    0..15, and stores d, dmin as fp16 (round to nearest even). These roundings are the adapter's.
    """
    from ...gguf._bytes import QK_K, fp16_bytes, fp16_field
    from ...gguf.kquants import (Q4_K_BLOCK, _pack_nibble_pairs, _pack_scales_k4, _unpack_nibble_pairs,
                                 _unpack_scales_k4)

    def tensor_class():
        torch, _ = _torchao("GGUF prototype")
        from torchao.prototype.quantization.gguf import GGUFQuantizedTensor
        return torch, GGUFQuantizedTensor

    def rounded(t, hi: int) -> np.ndarray:
        with np.errstate(invalid="ignore"):         # NaN (an all-zero super-block's 0/0) casts as NumPy casts it
            return np.clip(np.round(t.float().numpy()), 0, hi).astype(np.uint8)  # np.round: half to even

    def quantize(x):
        torch, GQT = tensor_class()
        w = _torch_f32(x)                                                              # (rows, n)
        t = GQT.from_float(w, n_blocks_per_superblock=GGUF_SUB_BLOCKS, target_dtype=torch.uint4)
        d = t.super_block_scale_scale.reshape(-1, 1).numpy()                           # (B, 1), B = rows·n/256
        dmin = np.float32(0) - t.super_block_min_scale.reshape(-1, 1).numpy()          # (B, 1); 0 − 0 = +0
        sc = rounded(t.quantized_block_scale, 63).reshape(-1, GGUF_SUB_BLOCKS)         # (B, 8)
        m = rounded(t.quantized_block_min, 63).reshape(-1, GGUF_SUB_BLOCKS)            # (B, 8)
        L = rounded(t.int_data, 15).reshape(-1, QK_K)                                  # (B, 256)
        raw = Q4_K_BLOCK.join(d=fp16_bytes(d), dmin=fp16_bytes(dmin), scales=_pack_scales_k4(sc, m),
                              qs=_pack_nibble_pairs(L))                                # (B, 144)
        return raw.reshape(w.shape[0], -1)                                             # (rows, n/256·144)

    def dequantize(raw):
        torch, GQT = tensor_class()
        from ._formats import _np

        raw = np.ascontiguousarray(_np(raw), np.uint8)
        rows, n = raw.shape[0], raw.shape[1] // Q4_K_BLOCK.type_size * QK_K
        b = Q4_K_BLOCK.split(raw.reshape(-1, Q4_K_BLOCK.type_size))
        sc, m = _unpack_scales_k4(b.scales)                                            # (B, 8) int32
        q = _unpack_nibble_pairs(b.qs)                                                 # (B, 256) uint8

        def f32(a, shape):
            return torch.from_numpy(np.ascontiguousarray(a, np.float32).reshape(shape))

        t = GQT(GGUF_SUB_BLOCKS, f32(fp16_field(b.d), (rows, -1)), f32(-fp16_field(b.dmin), (rows, -1)),
                f32(sc, (rows, -1)), f32(m, (rows, -1)), f32(q, (rows, n)), (rows, n))
        return t.dequantize(torch.float32).numpy()                                     # (rows, n)

    fn = quantize if direction == "quantize" else dequantize
    return _named(fn, f"GGUFQuantizedTensor.{'from_float' if direction == 'quantize' else 'dequantize'}[Q4_K]")

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
    + [("torchao NF4", "NF4", "dequantize", lambda: torchao_nf4_dequantize)]
    + [("torchao int4 affine", "INT4-G32", d, (lambda d=d: torchao_int4_affine(d))) for d in ("quantize", "dequantize")]
    + [("torchao int4 tinygemm", "INT4-G32", "quantize", lambda: torchao_int4_tinygemm)]
    + [("torchao GGUF Q4_K", "Q4_K", d, (lambda d=d: torchao_gguf_q4_k(d))) for d in ("quantize", "dequantize")]
)
