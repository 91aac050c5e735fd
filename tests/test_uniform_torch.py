"""Bit-exact parity of refquant.uniform's "torch" convention with torch itself.

Oracles: torch.ao.quantization MinMaxObserver / PerChannelMinMaxObserver (qparams) and
torch.fake_quantize_per_tensor_affine / torch.fake_quantize_per_channel_affine (codes), run
through the adapters in refquant.testing.torch_oracles.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, strategies as st

from refquant import uniform as U
from refquant.testing import strategies as st_rq
from refquant.testing import torch_oracles as T

bits_st = st.integers(2, 8)


@given(x=st_rq.rows(block=16, max_rows=4, max_blocks=4), bits=bits_st, symmetric=st.booleans(), signed=st.booleans())
def test_per_tensor_qparams_and_fake_quant_match_torch(x, bits, symmetric, signed):
    q_min, q_max = U.torch_code_range(bits, signed)
    s, z = U.qparams(np.min(x, keepdims=True), np.max(x, keepdims=True), bits, symmetric, signed,
                     q_range=(q_min, q_max), eps=U.TORCH_EPS)
    ts, tz = T.minmax_observer_qparams(x, q_min, q_max, symmetric=symmetric, signed=signed)
    assert np.array_equal(s.reshape(-1), ts) and np.array_equal(z.reshape(-1), tz)
    expected = T.fake_quantize_per_tensor(x, float(ts[0]), int(tz[0]), q_min, q_max)
    got = U.fake_quantize_codes(x, s, z, q_min, q_max, convention="torch")
    assert got.tobytes() == expected.tobytes()
