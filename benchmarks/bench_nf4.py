"""NF4 4-bit (with and without double quantization) and blockwise 8-bit: refquant vs bitsandbytes on the CPU.

One 4096x4096 float16 weight (the size of a 7B model's attention projection), the same
bytes handed to both; the 8-bit cases take it widened to float32, and decode to float32 or float16. bitsandbytes runs its CPU path (pure-torch quantize_4bit, C++
dequantize and blockwise 8-bit kernels); refquant runs NumPy.
"""

from __future__ import annotations

import numpy as np

from run import Case

SHAPE = (4096, 4096)


def cases():
    import torch
    from refquant import int8, nf4
    from refquant.testing.bnb import _import

    _, F = _import()
    x = (np.random.default_rng(0).standard_normal(SHAPE) * 0.02).astype(np.float16)
    xt = torch.from_numpy(x)

    for dq in (False, True):
        label = "nf4 + double quant" if dq else "nf4"
        yield Case("nf4", f"quantize {label} 4096x4096 fp16",
                   lambda dq=dq: nf4.quantize_4bit(x, 64, "nf4", dq),
                   "bitsandbytes CPU",
                   lambda dq=dq: F.quantize_4bit(xt, blocksize=64, quant_type="nf4", compress_statistics=dq))
        packed, state = nf4.quantize_4bit(x, 64, "nf4", dq)
        packed_t, state_t = F.quantize_4bit(xt, blocksize=64, quant_type="nf4", compress_statistics=dq)
        yield Case("nf4", f"dequantize {label} 4096x4096 fp16",
                   lambda p=packed, s=state: nf4.dequantize_4bit(p, s),
                   "bitsandbytes CPU",
                   lambda p=packed_t, s=state_t: F.dequantize_4bit(p, s))

    x32 = x.astype(np.float32)
    x32t = torch.from_numpy(x32)
    yield Case("nf4", "quantize_blockwise 8-bit 4096x4096 fp32 (B=4096)",
               lambda: int8.quantize_blockwise(x32, blocksize=4096),
               "bitsandbytes CPU",
               lambda: F.quantize_blockwise(x32t, blocksize=4096))
    for label, arr, arr_t in (("fp32", x32, x32t), ("fp16", x, xt)):
        q, state = int8.quantize_blockwise(arr, blocksize=4096)
        q_t, state_t = F.quantize_blockwise(arr_t, blocksize=4096)
        yield Case("nf4", f"dequantize_blockwise 8-bit 4096x4096 {label} (B=4096)",
                   lambda q=q, s=state: int8.dequantize_blockwise(q, s),
                   "bitsandbytes CPU",
                   lambda q=q_t, s=state_t: F.dequantize_blockwise(q, s))
