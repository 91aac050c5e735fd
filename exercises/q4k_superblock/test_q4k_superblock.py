"""Checker for decoding one Q4_K super-block: bit for bit against refquant.gguf.dequantize
and libggml's decoder (through refquant.testing.ggml).

    EXERCISE=my_attempt python -m pytest exercises/q4k_superblock -q
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from refquant import gguf
from refquant.exercises import attempt, first_difference, load_attempt
from refquant.testing import ggml

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder

BLOCK_BYTES, QK_K, SUB = 144, 256, 32
FP16_ONE = np.float16(1.0).view(np.uint16)  # 0x3C00

# fp16 fields with structure: ordinary, ±0, subnormal, largest finite, inf, NaN
fp16_values = st.sampled_from([0.5, 1.0, -0.0, 0.0, 6e-8, 65504.0, float("inf"), float("nan"), 1e-3, -2.0])
scale_bytes = hnp.arrays(np.uint8, 12)
code_bytes = hnp.arrays(np.uint8, 128)


def _block(d: float, dmin: float, scales: np.ndarray, qs: np.ndarray) -> np.ndarray:
    head = np.array([d, dmin], dtype=np.float16).view(np.uint8)                  # (4,)
    return np.concatenate([head, scales.astype(np.uint8), qs.astype(np.uint8)])  # (144,)


def _where(i: int) -> str:
    j, c, l = i // SUB, i // 64, i % SUB
    half = "low" if j % 2 == 0 else "high"
    return f"weight {i} is in sub-block {j} (sc_{j}, m_{j}), the {half} nibble of qs[{32 * c + l}]"


def _check_decode(raw: np.ndarray, hint: str) -> None:
    got = np.asarray(attempt(ex.decode, raw))
    expected = gguf.dequantize(raw[None, :], "Q4_K")[0]
    np.testing.assert_array_equal(expected, ggml.ggml_dequantize(raw[None, :], "Q4_K")[0])  # the oracle agrees
    diff = first_difference(got, expected, "ŵ")
    if diff is not None:
        first = int(np.argwhere(~((got == expected) | (np.isnan(got) & np.isnan(expected))))[0][0]) \
            if got.shape == expected.shape else 0
        raise AssertionError(f"{diff}\n{_where(first)}\nbytes: {raw.tolist()}\nhint: {hint}")


@settings(max_examples=40)
@given(scales=scale_bytes)
def test_scale_min_through_the_decoder(scales):
    sc, m = (np.asarray(v) for v in attempt(ex.scale_min, scales))
    ones = np.full(128, 0x11, dtype=np.uint8)                      # every code 1
    expected_sc = gguf.dequantize(_block(1.0, 0.0, scales, ones)[None], "Q4_K")[0][::SUB]  # ŵ = sc_j
    expected_m = -gguf.dequantize(_block(0.0, 1.0, scales, ones)[None], "Q4_K")[0][::SUB]  # ŵ = -m_j
    diff = first_difference(sc.astype(np.float32), expected_sc, "sc")
    assert diff is None, f"{diff}\nscales bytes {scales.tolist()}\nhint: sc_4..7 = (scales[j+4] & 15) | (top 2 bits of scales[j-4]) << 4"
    diff = first_difference(m.astype(np.float32), expected_m + 0.0, "m")
    assert diff is None, f"{diff}\nscales bytes {scales.tolist()}\nhint: m_4..7 = (scales[j+4] >> 4) | (top 2 bits of scales[j]) << 4"


@settings(max_examples=40)
@given(qs=code_bytes)
def test_codes_through_the_decoder(qs):
    got = np.asarray(attempt(ex.codes, qs))
    scales = np.array([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=np.uint8)  # every sc = 1, m = 0
    expected = gguf.dequantize(_block(1.0, 0.0, scales, qs)[None], "Q4_K")[0]  # ŵ = q
    diff = first_difference(got.astype(np.float32), expected, "code")
    if diff is not None:
        raise AssertionError(f"{diff}\nqs {qs.tolist()}\nhint: chunk c = qs[32c:32c+32]: its low nibbles are weights "
                             f"64c..64c+31, its high nibbles 64c+32..64c+63")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # inf · 0 is NaN, in C as in NumPy: decoded, not an error
@settings(max_examples=60)
@given(d=fp16_values, dmin=fp16_values, scales=scale_bytes, qs=code_bytes)
def test_decode_random_bytes(d, dmin, scales, qs):
    _check_decode(_block(d, dmin, scales, qs), "ŵ = (d · sc_j) · q − (dmin · m_j) in float32, products first")


@settings(max_examples=20)
@given(seed=st.integers(0, 2**16), spread=st.sampled_from([1e-3, 0.02, 1.0, 300.0]))
def test_decode_real_blocks(seed, spread):
    x = (np.random.default_rng(seed).standard_normal((1, QK_K)) * spread).astype(np.float32)
    raw = gguf.quantize(x, "Q4_K")[0]                               # (144,) as llama-quantize writes it
    _check_decode(raw, "a real block: check d, dmin (fp16 at bytes 0 and 2) and the 6-bit scales")
    w = np.asarray(attempt(ex.decode, raw))
    assert np.max(np.abs(w - x[0])) <= np.max(np.abs(x)) / 4, "a real block should decode close to its input"
