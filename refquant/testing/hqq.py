"""The hqq package (mobiusml/hqq) as an oracle: NumPy in, NumPy out, on the CPU.

    from refquant.testing.hqq import hqq_oracle_quantize
    ref = hqq_oracle_quantize(W, nbits=4, group_size=64)      # hqq.core.quantize.Quantizer.quantize
    assert (ref.q == my_codes).all()

``Quantizer.quantize`` is called with ``optimize=True, axis=1, bitpack=False, device="cpu"``: the
codes come back unpacked as float32 (hqq casts them to the input dtype) in hqq's (groups, G) layout,
reshaped here to (out, in/G, G) like ``refquant.hqq``; scale (1/σ) and zero to (out, in/G, 1).
Importing ``hqq.core.quantize`` pulls in transformers and takes ~10 s once per process.
"""

from __future__ import annotations

import contextlib
import io
import logging
from typing import Any, NamedTuple

import numpy as np

from . import OracleUnavailable

__all__ = ["hqq_available", "HQQOracle", "hqq_oracle_quantize"]


def _import():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is in the test extra
        raise OracleUnavailable("the hqq oracle needs torch: pip install torch") from e
    try:
        logging.getLogger("hqq").setLevel(logging.ERROR)
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            from hqq.core.quantize import Quantizer
    except ImportError as e:
        raise OracleUnavailable("the hqq oracle needs the hqq package: pip install hqq") from e
    return torch, Quantizer


def hqq_available() -> bool:
    try:
        _import()
    except OracleUnavailable:
        return False
    return True


class HQQOracle(NamedTuple):
    q: np.ndarray       # (out, in/G, G) float32 codes
    s: np.ndarray       # (out, in/G, 1) float32 scale
    z: np.ndarray       # (out, in/G, 1) float32 zero
    W_hat: np.ndarray   # (out, in) float32, hqq's Quantizer.dequantize in float32


def hqq_oracle_quantize(W: Any, nbits: int = 4, group_size: int = 64) -> HQQOracle:
    """hqq's ``Quantizer.quantize`` (proximal legacy solver) of W (out, in) float32 along axis 1."""
    torch, Quantizer = _import()
    W = np.ascontiguousarray(W, dtype=np.float32)
    rows, cols = W.shape
    with torch.inference_mode():
        W_q, meta = Quantizer.quantize(torch.from_numpy(W.copy()), nbits=nbits, channel_wise=True,
                                       group_size=group_size, optimize=True, round_zero=False, axis=1,
                                       bitpack=False, compute_dtype=torch.float32, device="cpu")
        meta["compute_dtype"] = torch.float32
        W_hat = Quantizer.dequantize(W_q, meta)
    shape3, shape1 = (rows, cols // group_size, group_size), (rows, cols // group_size, 1)
    return HQQOracle(W_q.float().numpy().reshape(shape3), meta["scale"].float().numpy().reshape(shape1),
                     meta["zero"].float().numpy().reshape(shape1), W_hat.float().numpy().reshape(rows, cols))
