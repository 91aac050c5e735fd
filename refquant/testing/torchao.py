"""torch's float8 casts and torchao's FP8 / MX / NVFP4 / HQQ code as oracles: NumPy in, NumPy out, CPU.

    from refquant.testing.torchao import torchao_to_mx
    ref = torchao_to_mx(x, "fp4_e2m1", "floor")           # torchao.prototype.mx_formats.mx_tensor.to_mx
    assert (ref.scale_bytes == my_e8m0_bytes).all()

Each adapter calls the library's eager (non-compiled) CPU path:

* ``torch_cast``          ``x.to(torch.float8_e4m3fn | float8_e5m2)``: values and bit patterns;
* ``torchao_float8``      ``_choose_scale_float8`` + ``_quantize_affine_float8`` (per tensor, per row,
                          per 128x128 block), the functions torchao's Float8 weight configs call;
* ``torchao_to_mx``       ``to_mx`` + ``to_dtype`` (MXFP8 / MXFP6 / MXFP4, every ScaleCalculationMode);
* ``torchao_nvfp4``       ``nvfp4_quantize`` (one or two levels) and its E2M1 codes unpacked;
* ``torchao_hqq``         ``_choose_qparams_and_quantize_affine_hqq(raw_output=True)`` in float32.

Importing torchao on a CPU-only torch prints warnings about its CUDA extensions; they are silenced.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from typing import Any, NamedTuple

import numpy as np

from . import OracleUnavailable

__all__ = ["torchao_available", "torch_cast", "torchao_float8", "torchao_to_mx", "torchao_nvfp4", "torchao_hqq",
           "CastResult", "Float8Result", "MXResult", "NVFP4Result", "HQQResult"]

_FP8 = {"e4m3": "float8_e4m3fn", "e5m2": "float8_e5m2"}


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is in the test extra
        raise OracleUnavailable("the torch float8 oracle needs torch: pip install torch") from e
    return torch


def _import_torchao():
    torch = _torch()
    try:
        logging.getLogger("torchao").setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            import torchao  # noqa: F401
            from torchao.prototype.mx_formats import mx_tensor, nvfp4_tensor, kernels, constants, config
            from torchao.quantization import quant_primitives
    except ImportError as e:
        raise OracleUnavailable("the torchao oracle needs torchao: pip install torchao") from e
    return torch, mx_tensor, nvfp4_tensor, kernels, constants, config, quant_primitives


def torchao_available() -> bool:
    try:
        _import_torchao()
    except OracleUnavailable:
        return False
    return True


def _t(x: Any):
    torch = _torch()
    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).copy())


class CastResult(NamedTuple):
    values: np.ndarray  # float32
    bits: np.ndarray    # uint8


def torch_cast(x: Any, fmt: str) -> CastResult:
    """``torch.Tensor.to(float8_e4m3fn | float8_e5m2)`` of float32 ``x``."""
    torch = _torch()
    y = _t(x).to(getattr(torch, _FP8[fmt]))
    return CastResult(y.float().numpy(), y.view(torch.uint8).numpy())


class Float8Result(NamedTuple):
    s: np.ndarray       # the scale per granule, torchao's shape (1, 1) | (out, 1) | (out/B, in/B)
    q: np.ndarray       # (out, in) float32 values of the float8 codes


def torchao_float8(W: Any, fmt: str = "e4m3", granularity: str = "tensor", block: int = 128) -> Float8Result:
    """torchao's float8 weight quantization: scale = amax / max per granule, clamp, cast."""
    torch, *_, qp = _import_torchao()
    T = _t(W)
    rows, cols = T.shape
    block_size = {"tensor": [rows, cols], "row": [1, cols], "block": [block, block]}[granularity]
    dtype = getattr(torch, _FP8[fmt])
    s = qp._choose_scale_float8(T, block_size, dtype)
    q = qp._quantize_affine_float8(T, s, dtype)
    return Float8Result(s.numpy(), q.float().numpy())


class MXResult(NamedTuple):
    scale_bytes: np.ndarray   # (..., n/B) uint8 E8M0
    W_hat: np.ndarray         # (..., n) float32, to_dtype of the same (scale, data)


_MX_ELEMENTS = {"fp8_e4m3": "float8_e4m3fn", "fp8_e5m2": "float8_e5m2", "fp4_e2m1": "float4_e2m1fn_x2"}


def torchao_to_mx(x: Any, element: str, mode: str = "floor", block: int = 32) -> MXResult:
    """``to_mx(x, element, block, ScaleCalculationMode(mode))`` and ``to_dtype`` back to float32."""
    torch, mx_tensor, _, _, constants, config, _ = _import_torchao()
    if element in _MX_ELEMENTS:
        dtype = getattr(torch, _MX_ELEMENTS[element])
    else:
        dtype = {"fp6_e2m3": constants.DTYPE_FP6_E2M3, "fp6_e3m2": constants.DTYPE_FP6_E3M2}[element]
    scale, data = mx_tensor.to_mx(_t(x), dtype, block, config.ScaleCalculationMode(mode))
    W_hat = mx_tensor.to_dtype(data, scale, dtype, block, torch.float32)
    return MXResult(scale.view(torch.uint8).numpy().copy(), W_hat.numpy().copy())


class NVFP4Result(NamedTuple):
    d: np.ndarray     # (rows, n/16) float32 block scales (E4M3 values)
    q: np.ndarray     # (rows, n/16, 16) float32 E2M1 values
    t: float | None   # the tensor scale, None for single-level


def torchao_nvfp4(x: Any, two_level: bool = False) -> NVFP4Result:
    """``nvfp4_quantize`` of a matrix; two_level: per_tensor_scale = per_tensor_amax_to_scale(amax)."""
    torch, _, nvfp4, kernels, *_ = _import_torchao()
    T = _t(x)
    t = nvfp4.per_tensor_amax_to_scale(T.abs().max()) if two_level else None
    d, packed = nvfp4.nvfp4_quantize(T, 16, t)
    q = kernels.f4_unpacked_to_f32(kernels.unpack_uint4(packed)).numpy().reshape(T.shape[0], -1, 16)
    return NVFP4Result(d.float().numpy(), q, None if t is None else float(t))


class HQQResult(NamedTuple):
    q: np.ndarray     # (out, in) float32 codes
    s: np.ndarray     # (out, in/G) float32 scale
    z: np.ndarray     # (out, in/G) float32 zero


def torchao_hqq(W: Any, nbits: int = 4, group_size: int = 64) -> HQQResult:
    """``_choose_qparams_and_quantize_affine_hqq`` (axis 1, float32 compute, raw hqq layout)."""
    torch, *_, qp = _import_torchao()
    with torch.inference_mode():
        q, s, z, _ = qp._choose_qparams_and_quantize_affine_hqq(
            _t(W), nbits=nbits, group_size=group_size, axis=1, compute_dtype=torch.float32, device="cpu",
            raw_output=True)
    return HQQResult(q.float().numpy(), s.numpy(), z.numpy())
