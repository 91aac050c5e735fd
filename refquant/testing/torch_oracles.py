"""torch as an oracle: fake-quant kernels and min/max observers, NumPy in, NumPy out.

    fake_quantize_per_tensor(x, s, z, q_min, q_max)       torch.fake_quantize_per_tensor_affine
    fake_quantize_per_channel(x, s, z, axis, q_min, q_max) torch.fake_quantize_per_channel_affine
    minmax_observer_qparams(x, q_min, q_max, symmetric, signed)          MinMaxObserver
    per_channel_observer_qparams(x, axis, q_min, q_max, symmetric, signed)  PerChannelMinMaxObserver

The observers get ``dtype=torch.qint8`` for signed codes and ``torch.quint8`` for unsigned
ones, and are fed ``x`` once. They are given ``quant_min``/``quant_max`` (torch's "customized
range") unless the range is the dtype's default 8-bit one (-128..127, 0..255) — or as
``customized_range`` says. The two differ for unsigned symmetric codes: a default quint8
observer puts the zero-point at 128, a customized one at (q_min + q_max) // 2 = 127. Scales come back float32, zero-points as float32 integers, so they
compare directly with ``refquant.uniform.qparams``.
"""

from __future__ import annotations

import numpy as np

from . import OracleUnavailable

__all__ = ["fake_quantize_per_tensor", "fake_quantize_per_channel", "minmax_observer_qparams",
           "per_channel_observer_qparams"]


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - torch is in the test extra
        raise OracleUnavailable("the torch oracle needs torch: pip install torch") from e
    return torch


def fake_quantize_per_tensor(x: np.ndarray, s: float, z: int, q_min: int, q_max: int) -> np.ndarray:
    """``torch.fake_quantize_per_tensor_affine`` on a NumPy array (float32 in, float32 out)."""
    torch = _torch()
    t = torch.from_numpy(np.ascontiguousarray(x))
    return torch.fake_quantize_per_tensor_affine(t, float(s), int(z), int(q_min), int(q_max)).numpy()


def fake_quantize_per_channel(x: np.ndarray, s: np.ndarray, z: np.ndarray, axis: int, q_min: int, q_max: int) -> np.ndarray:
    """``torch.fake_quantize_per_channel_affine``: s (C,) float32, z (C,) integer zero-points."""
    torch = _torch()
    t = torch.from_numpy(np.ascontiguousarray(x))
    ts = torch.from_numpy(np.ascontiguousarray(s, dtype=np.float32).reshape(-1))
    tz = torch.from_numpy(np.ascontiguousarray(z).reshape(-1).astype(np.int32))
    return torch.fake_quantize_per_channel_affine(t, ts, tz, int(axis), int(q_min), int(q_max)).numpy()


#: torch's default quant_min/quant_max of qint8 and quint8
DEFAULT_RANGES = {True: (-128, 127), False: (0, 255)}


def _observer(cls_name: str, q_min: int, q_max: int, symmetric: bool, signed: bool, per_channel: bool,
              customized_range: bool | None = None, **kw):
    torch = _torch()
    from torch.ao import quantization as tq

    if customized_range is None:
        customized_range = (int(q_min), int(q_max)) != DEFAULT_RANGES[bool(signed)]
    if customized_range:
        kw.update(quant_min=int(q_min), quant_max=int(q_max))
    elif (int(q_min), int(q_max)) != DEFAULT_RANGES[bool(signed)]:
        raise ValueError(f"q_min, q_max: a default-range observer has {DEFAULT_RANGES[bool(signed)]}, "
                         f"got {(q_min, q_max)}")

    if per_channel:
        scheme = torch.per_channel_symmetric if symmetric else torch.per_channel_affine
    else:
        scheme = torch.per_tensor_symmetric if symmetric else torch.per_tensor_affine
    dtype = torch.qint8 if signed else torch.quint8
    return getattr(tq, cls_name)(dtype=dtype, qscheme=scheme, **kw)


def minmax_observer_qparams(x: np.ndarray, q_min: int, q_max: int, symmetric: bool, signed: bool = True,
                            customized_range: bool | None = None):
    """(s (1,) float32, z (1,) float32) from ``MinMaxObserver`` after observing ``x``."""
    torch = _torch()
    obs = _observer("MinMaxObserver", q_min, q_max, symmetric, signed, per_channel=False,
                    customized_range=customized_range)
    obs(torch.from_numpy(np.ascontiguousarray(x)))
    s, z = obs.calculate_qparams()
    return s.numpy().astype(np.float32), z.numpy().astype(np.float32)


def per_channel_observer_qparams(x: np.ndarray, axis: int, q_min: int, q_max: int, symmetric: bool, signed: bool = True,
                                 customized_range: bool | None = None):
    """(s (C,) float32, z (C,) float32) from ``PerChannelMinMaxObserver(ch_axis=axis)``."""
    torch = _torch()
    obs = _observer("PerChannelMinMaxObserver", q_min, q_max, symmetric, signed, per_channel=True,
                    customized_range=customized_range, ch_axis=int(axis))
    obs(torch.from_numpy(np.ascontiguousarray(x)))
    s, z = obs.calculate_qparams()
    return s.numpy().astype(np.float32), z.numpy().astype(np.float32)
