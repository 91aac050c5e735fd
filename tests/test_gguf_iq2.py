"""IQ2_XXS / IQ2_XS / IQ2_S: bytes vs libggml (with an imatrix; IQ2_S also without), decoding vs libggml
and gguf-py (quantized blocks and random bytes), hand-built blocks, refusals.

The searches cost milliseconds per super-block in NumPy, so the Hypothesis tests draw at most
2 × 2 super-blocks and run few examples under the ci / dev profiles (many under thorough).
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import refquant.gguf as rg
from refquant.gguf import _grids, iq2
from refquant.testing import strategies as rst
from refquant.testing.ggml import ggml_dequantize, ggml_quantize

from test_gguf_legacy import gguf_py_type, imatrices  # noqa: E402  (tests/ is on sys.path under pytest)

IQ2 = ("IQ2_XXS", "IQ2_XS", "IQ2_S")
N_EXAMPLES = 300 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 8
# libggml aborts (GGML_ASSERT in iq2_find_best_neighbour) once the weighted distances overflow
# float32 (|x| above ~1e12): those kinds would kill the test process; refquant refuses them (below)
KINDS = tuple(k for k in rst.GGUF_KINDS if k not in ("huge", "fp16_overflow"))
# sub-block 0 empty (all zero), the rest a ramp: the "max < eps" path next to ordinary ones
EMPTY_FIRST = np.concatenate([np.zeros(32), np.linspace(-1, 1, 224)]).astype(np.float32)[None, :]


@st.composite
def rows_and_imatrix(draw):
    x = draw(rst.rows(block=256, max_rows=2, max_blocks=2, kinds=KINDS))
    return x, draw(imatrices(x.shape[1]))


# --------------------------------------------------------------------------- bytes vs libggml

@pytest.mark.parametrize("qtype", IQ2)
@settings(max_examples=N_EXAMPLES)
@given(data=rows_and_imatrix())   # ±0 lanes, subnormals, ties, outliers, zero imatrix columns
@example(data=(EMPTY_FIRST, np.ones(256, np.float32)))
def test_quantize_with_imatrix_matches_libggml(qtype, data):
    x, imatrix = data
    assert np.array_equal(rg.quantize(x, qtype, imatrix=imatrix), ggml_quantize(x, qtype, imatrix))


@settings(max_examples=N_EXAMPLES)
@given(x=rst.rows(block=256, max_rows=2, max_blocks=2, kinds=KINDS))
@example(x=EMPTY_FIRST)
def test_iq2_s_without_imatrix_matches_libggml(x):
    assert np.array_equal(rg.quantize(x, "IQ2_S"), ggml_quantize(x, "IQ2_S"))


@pytest.mark.parametrize("qtype", IQ2)
def test_real_rows_match_libggml(qtype, real_rows):
    rows = real_rows[:4]                                                      # 4 × 1536 real weights
    imatrix = np.mean(real_rows * real_rows, axis=0) + 1e-4
    assert np.array_equal(rg.quantize(rows, qtype, imatrix), ggml_quantize(rows, qtype, imatrix))


def test_negated_magnitude_reaches_make_qp_quants():
    """IQ2_XXS hands make_qp_quants one negated |x| per odd group; its sums must use C's int codes.

    7 negative lanes out of 8 in every group: the smallest-importance lane is negated back.
    Before the fix in make_qp_quants this row gave 45 wrong bytes of 66·16 (seed 0, 16 blocks).
    """
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 1024)).astype(np.float32)
    imatrix = (rng.random(1024) + 0.1).astype(np.float32)
    assert np.array_equal(rg.quantize(x, "IQ2_XXS", imatrix), ggml_quantize(x, "IQ2_XXS", imatrix))


# --------------------------------------------------------------------------- decoding

def random_iq2_blocks(rng, qtype, n_blocks):
    """Random bytes with a random finite fp16 d."""
    raw = rng.integers(0, 256, (n_blocks, rg.ggml_type(qtype).type_size), dtype=np.uint8)
    h = rng.integers(0, 0x7C00, n_blocks).astype(np.uint16) | (rng.integers(0, 2, n_blocks).astype(np.uint16) << 15)
    raw[:, :2] = h.view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("qtype", IQ2)
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1))
def test_dequantize_random_bytes(qtype, seed):
    from gguf import quants

    raw = random_iq2_blocks(np.random.default_rng(seed), qtype, 16).reshape(4, -1)
    ours = rg.dequantize(raw, qtype)
    assert np.array_equal(ours.view(np.uint32), ggml_dequantize(raw, qtype).view(np.uint32))
    theirs = quants.dequantize(raw, gguf_py_type(qtype)).astype(np.float32)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


@pytest.mark.parametrize("qtype", IQ2)
def test_dequantize_quantized_blocks(qtype, rng):
    x = (rng.standard_t(3, (2, 512)) * 0.05).astype(np.float32)
    raw = ggml_quantize(x, qtype, np.ones(512, np.float32))
    assert np.array_equal(rg.dequantize(raw, qtype).view(np.uint32), ggml_dequantize(raw, qtype).view(np.uint32))


def test_dequantize_backends(xp):
    for qtype, fn in (("IQ2_XXS", iq2.dequantize_iq2_xxs), ("IQ2_XS", iq2.dequantize_iq2_xs),
                      ("IQ2_S", iq2.dequantize_iq2_s)):
        raw = random_iq2_blocks(np.random.default_rng(1), qtype, 3)
        expected = fn(raw)
        got = fn(xp.asarray(raw))
        assert np.array_equal(np.asarray(got), expected)


def test_hand_built_iq2_xxs_block():
    """d = 1, sub-block 0: grid points 0, 1, 2, 3, sign bits 7 = 1 (with parity: lanes 0 and 7
    negative) for group 0, scale nibble 3 -> db = (0.5 + 3)/4 = 0.875; other sub-blocks all 0."""
    a = 0x03020100
    b = 1 | (3 << 28)
    qs = np.zeros(16, "<u4")
    qs[0], qs[1] = a, b
    raw = np.concatenate([np.frombuffer(np.float16(1).tobytes(), np.uint8), qs.view(np.uint8)])[None, :]
    y = rg.dequantize(raw, "IQ2_XXS")[0]
    sign = np.ones(32)
    sign[[0, 7]] = -1
    expected = 0.875 * _grids.IQ2XXS_GRID[:4].reshape(-1) * sign
    assert np.array_equal(y[:32], expected.astype(np.float32))
    assert np.array_equal(y[32:], np.float32(0.125) * np.tile(_grids.IQ2XXS_GRID[0], 28).astype(np.float32))


def test_iq2_s_high_index_bits():
    """qh bits 2g, 2g+1 of byte g/4 are the index's bits 8, 9: index 1023 = qs 255 | qh 3."""
    raw = np.zeros((1, 82), np.uint8)
    raw[0, :2] = np.frombuffer(np.float16(4).tobytes(), np.uint8)             # d = 4, scale 0 -> db = 0.5
    raw[0, 2] = 255                                                           # group 0: qs
    raw[0, 66] = 3                                                            # group 0: qh bits 0, 1
    y = rg.dequantize(raw, "IQ2_S")[0]
    assert np.array_equal(y[:8], np.float32(0.5) * _grids.IQ2S_GRID[1023].astype(np.float32))


# --------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("qtype", ("IQ2_XXS", "IQ2_XS"))
def test_required_imatrix_is_refused_without_one(qtype):
    x = np.ones((1, 256), np.float32)
    with pytest.raises(ValueError, match="imatrix"):
        rg.quantize(x, qtype)
    with pytest.raises(ValueError, match="qw"):
        rg.codec(qtype).quantize(x, None)
    assert rg.codec("IQ2_S").imatrix == "weighted"


def test_bad_block_shape():
    with pytest.raises(ValueError, match="x"):
        iq2.quantize_iq2_s(np.ones((1, 128), np.float32))
    with pytest.raises(ValueError, match="raw"):
        iq2.dequantize_iq2_xs(np.zeros((1, 73), np.uint8))


def test_overflowing_blocks_are_refused_where_libggml_aborts():
    """Normal weights × 1e17: w·(s·q − v)² overflows to inf for every neighbour and libggml aborts."""
    x = (np.random.default_rng(0).standard_normal((1, 256)) * 1e17).astype(np.float32)
    for qtype in IQ2:
        with pytest.raises(ValueError, match="x: the weighted distances of an IQ2 group overflow float32"):
            rg.quantize(x, qtype, np.ones(256, np.float32))
    code = ("import numpy as np; from refquant.testing.ggml import ggml_quantize\n"
            "x = (np.random.default_rng(0).standard_normal((1, 256)) * 1e17).astype(np.float32)\n"
            "ggml_quantize(x, 'IQ2_XXS', np.ones(256, np.float32))\n")
    # IQ2_XXS: libggml's own init of the 256-point tables is the cheapest (IQ2_S's takes ~5 s of C);
    # GGML_NO_BACKTRACE: no gdb backtrace on the abort
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0 and "GGML_ASSERT" in done.stderr


@pytest.mark.parametrize("scale", [1e15, 1e20])
def test_iq2_xxs_near_overflow_matches_libggml(scale):
    """1e15: still finite distances. 1e20: σ² = inf, make_qp_quants gives 0, every sub-block is skipped
    (C: eff_max <= 0) and libggml writes a zero block — no neighbour search, no abort."""
    x = (np.random.default_rng(0).standard_normal((1, 256)) * scale).astype(np.float32)
    imatrix = np.ones(256, np.float32)
    assert np.array_equal(rg.quantize(x, "IQ2_XXS", imatrix), ggml_quantize(x, "IQ2_XXS", imatrix))


def test_nan_scale_is_refused_where_libggml_aborts():
    """imatrix 1e38 on every third column: IQ2_XXS's weights overflow, its scale is NaN and libggml
    aborts ("Oops: found point not on grid" / GGML_ASSERT(scale >= 0)); IQ2_XS keeps finite bytes."""
    x = np.full((1, 256), 2, np.float32)
    x[0, 0] = 1
    imatrix = np.ones(256, np.float32)
    imatrix[::3] = 1e38
    with pytest.raises(ValueError, match="x: values too large for IQ2_XXS's search: a sub-block's scale is NaN"):
        rg.quantize(x, "IQ2_XXS", imatrix)
    assert np.array_equal(rg.quantize(x, "IQ2_XS", imatrix), ggml_quantize(x, "IQ2_XS", imatrix))
    code = ("import numpy as np; from refquant.testing.ggml import ggml_quantize\n"
            "x = np.full((1, 256), 2, np.float32); x[0, 0] = 1; im = np.ones(256, np.float32); im[::3] = 1e38\n"
            "ggml_quantize(x, 'IQ2_XXS', im)\n")
    env = {**os.environ, "GGML_NO_BACKTRACE": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode != 0 and "fatal error" in done.stderr
