"""Uniform quantization vs torch on a 4096 x 4096 float32 weight.

* per-channel INT8 fake-quant, s and z given: ``fake_quantize_codes(convention="torch")`` vs
  ``torch.fake_quantize_per_channel_affine`` (bit-identical outputs).
* per-channel INT8 fake-quant with the observer: ``fake_quantize(..., "channel", convention="torch")``
  vs ``PerChannelMinMaxObserver`` + ``torch.fake_quantize_per_channel_affine`` (bit-identical).
* group INT4 quantize, G = 128, asymmetric unsigned: ``quantize(..., "group", group_size=128)`` vs
  torch ops (amin/amax per group, the observer's scale/zero formulas) + torch's
  ``quantized_decomposed.quantize_per_channel_group`` kernel (same work; it rounds after adding z).
Each refquant case runs on NumPy arrays, and once more on torch tensors (same code, ``xp`` = torch).
"""

from __future__ import annotations

import numpy as np
from run import Case

ROWS = COLS = 4096
G = 128


def cases():
    import torch
    import torch.ao.quantization.fx._decomposed  # noqa: F401 - registers quantized_decomposed ops
    from torch.ao.quantization import PerChannelMinMaxObserver

    from refquant import uniform as U

    x = np.random.default_rng(0).standard_normal((ROWS, COLS)).astype(np.float32)
    t = torch.from_numpy(x)
    q_min, q_max = U.torch_code_range(8, signed=True)
    s, z = U.qparams(x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True), 8, False, q_range=(q_min, q_max),
                     eps=U.TORCH_EPS)
    ts, tz = torch.from_numpy(s.reshape(-1)), torch.from_numpy(z.reshape(-1).astype(np.int32))
    shape = f"{ROWS}x{COLS} f32"

    yield Case("uniform", f"per-channel INT8 fake-quant, given s,z ({shape})",
               lambda: U.fake_quantize_codes(x, s, z, q_min, q_max, convention="torch"),
               "torch.fake_quantize_per_channel_affine",
               lambda: torch.fake_quantize_per_channel_affine(t, ts, tz, 0, q_min, q_max))

    def torch_observer_fake_quant():
        obs = PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_affine,
                                       quant_min=q_min, quant_max=q_max)
        obs(t)
        scale, zero = obs.calculate_qparams()
        return torch.fake_quantize_per_channel_affine(t, scale, zero.to(torch.int32), 0, q_min, q_max)

    for name, arr in (("numpy", x), ("torch tensors", t)):
        yield Case("uniform", f"per-channel INT8 observer + fake-quant, {name} ({shape})",
                   lambda arr=arr: U.fake_quantize(arr, 8, False, "channel", axis=0, convention="torch"),
                   "PerChannelMinMaxObserver + fake_quantize_per_channel_affine", torch_observer_fake_quant)

    def torch_group_int4():
        groups = t.reshape(-1, G)                                       # (rows * cols/G, G)
        lo = torch.clamp(groups.amin(dim=1), max=0.0)
        hi = torch.clamp(groups.amax(dim=1), min=0.0)
        scale = torch.clamp((hi - lo) / 15.0, min=U.TORCH_EPS)
        zero = torch.clamp(-torch.round(lo / scale), 0, 15)
        return torch.ops.quantized_decomposed.quantize_per_channel_group(t, scale, zero, 0, 15, torch.uint8, G)

    for name, arr in (("numpy", x), ("torch tensors", t)):
        yield Case("uniform", f"group INT4 quantize G={G}, {name} ({shape})",
                   lambda arr=arr: U.quantize(arr, 4, False, "group", group_size=G, signed=False),
                   "torch ops + quantize_per_channel_group", torch_group_int4)
