"""Oracle adapter: llm-compressor's GPTQ (``quantize_weight``) on NumPy arrays.

llm-compressor (vllm-project/llm-compressor) quantizes a layer the way vLLM serves it:
compressed-tensors INT codes, signed (-2^(b-1)..2^(b-1)-1), with every group's scale and
zero-point computed *before* GPTQ runs, by a min-max observer on the original weight
(``Observer.get_qparams`` -> compressed-tensors ``calculate_qparams``). refquant's
``gptq_quantize(..., s=s, z=z, signed=True, zero_before_round=True)`` is that configuration.

    s, z = observer_qparams(W, bits=4, group_size=128, symmetric=False)
    W_hat, loss = llmc_gptq(W, H, s, z, bits=4, group_size=128, act_order=False)

W: (out, in) float32, H: (in, in) float32 (2XXᵀ/n; llm-compressor's own accumulator
divides Σ 2xxᵀ by the number of batches, a different scale that GPTQ does not see).
act_order=True is llm-compressor's ``actorder="weight"``: columns by decreasing H_jj,
groups the original consecutive columns (static groups).
Ref: llmcompressor/modifiers/gptq/gptq_quantize.py ``quantize_weight``, helpers.py
``factorize_hessian``; compressed_tensors/quantization/utils/helpers.py ``calculate_qparams``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from . import OracleUnavailable

__all__ = ["quant_args", "observer_qparams", "llmc_gptq", "llmc_factor"]


def _imports():
    try:
        import torch
        from compressed_tensors.quantization import QuantizationArgs
        from llmcompressor.modifiers.gptq.gptq_quantize import quantize_weight
        from llmcompressor.modifiers.gptq import helpers
        from llmcompressor.observers import Observer
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise OracleUnavailable(f"llm-compressor oracle needs `pip install llmcompressor` ({err})") from err
    return torch, QuantizationArgs, quantize_weight, helpers, Observer


def quant_args(bits: int = 4, group_size: int | None = 128, symmetric: bool = False, act_order: bool = False) -> Any:
    """compressed-tensors ``QuantizationArgs`` for INT weights, per group (or per channel)."""
    _, QuantizationArgs, *_ = _imports()
    kw: dict[str, Any] = dict(num_bits=bits, type="int", symmetric=symmetric, observer="memoryless_minmax")
    if group_size is None:
        kw["strategy"] = "channel"
    else:
        kw.update(strategy="group", group_size=group_size)
    if act_order:
        kw["actorder"] = "weight"
    return QuantizationArgs(**kw)


def observer_qparams(W: np.ndarray, bits: int = 4, group_size: int | None = 128, symmetric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero-point (out, n_groups) of llm-compressor's weight observer on W (W's dtype)."""
    torch, _, _, _, Observer = _imports()
    args = quant_args(bits, group_size, symmetric)
    observer = Observer.load_from_registry("memoryless_minmax", base_name="weight", args=args)
    observer(torch.from_numpy(np.ascontiguousarray(W)))
    qp = observer.get_qparams()
    dtype = np.asarray(W).dtype
    return qp["scale"].numpy().astype(dtype), qp["zero_point"].numpy().astype(dtype)


@contextlib.contextmanager
def _precision(dtype):
    """Run llm-compressor's GPTQ in ``dtype``: its working precision is one module constant,
    ``GPTQ_PRECISION`` (float32), read by ``quantize_weight`` and ``column_scale_window``."""
    import llmcompressor.modifiers.gptq.gptq_quantize as gq
    import llmcompressor.modifiers.gptq.helpers as gh

    saved = gq.GPTQ_PRECISION, gh.GPTQ_PRECISION
    gq.GPTQ_PRECISION = gh.GPTQ_PRECISION = dtype
    try:
        yield
    finally:
        gq.GPTQ_PRECISION, gh.GPTQ_PRECISION = saved


def llmc_gptq(W: np.ndarray, H: np.ndarray, s: np.ndarray, z: np.ndarray, bits: int = 4,
              group_size: int | None = 128, symmetric: bool = False, act_order: bool = False,
              blocksize: int = 128, percdamp: float = 0.01) -> tuple[np.ndarray, float]:
    """llm-compressor's ``quantize_weight`` on one layer -> (Ŵ (out, in), loss).

    Runs in W's dtype: float32 is llm-compressor as shipped; float64 sets its
    ``GPTQ_PRECISION`` to float64 for the call (same code, exact-math check).
    """
    torch, _, quantize_weight, _, _ = _imports()
    args = quant_args(bits, group_size, symmetric, act_order)
    dtype = np.float64 if np.asarray(W).dtype == np.float64 else np.float32
    t_dtype = torch.float64 if dtype == np.float64 else torch.float32
    W_t = torch.from_numpy(np.array(W, dtype=dtype))[None]                    # (1, out, in)
    H_t = torch.from_numpy(np.array(H, dtype=dtype))[None]                    # (1, in, in)
    zp_dtype = torch.int8
    with _precision(t_dtype):
        W_hat, loss, fallback = quantize_weight(
            W_t, H_t, torch.from_numpy(np.array(s, dtype=dtype))[None],
            torch.from_numpy(np.array(z, dtype=dtype)).to(zp_dtype)[None], None, args,
            blocksize=blocksize, percdamp=percdamp,
        )
    if bool(fallback[0]):
        raise RuntimeError("llm-compressor fell back to round-to-nearest (Hessian not positive definite)")
    return W_hat[0].numpy(), float(loss[0])


def llmc_factor(H: np.ndarray, percdamp: float = 0.01) -> np.ndarray:
    """llm-compressor's upper Cholesky factor of (H + λI)⁻¹ (``factorize_hessian``), H's dtype."""
    torch, _, _, helpers, _ = _imports()
    dtype = torch.float64 if np.asarray(H).dtype == np.float64 else torch.float32
    H_t = torch.from_numpy(np.array(H))[None].to(dtype)
    W_dummy = torch.zeros((1, 1, H.shape[0]), dtype=dtype)
    flag = torch.zeros(1, dtype=torch.bool)
    U = helpers.factorize_hessian(W_dummy, H_t, percdamp, flag)
    return U[0].numpy()
