"""IQ3_XXS / IQ3_S: bytes vs libggml (with and without an imatrix), decoding vs libggml and gguf-py,
the neighbour lists vs a slow loop, the C code's quirks, bad input.

The search costs a few ms per super-block in NumPy, so the Hypothesis tests draw at most 3 × 2
super-blocks and run few examples under the ci / dev profiles (many under thorough).
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
from refquant.gguf import iq3
from refquant.gguf._grids import IQ3S, IQ3XXS
from refquant.testing import strategies as rst
from refquant.testing.ggml import ggml_dequantize, ggml_quantize

from test_gguf_legacy import gguf_py_type, imatrices  # noqa: E402  (tests/ is on sys.path under pytest)

IQ3 = ("IQ3_XXS", "IQ3_S")
IDS = {"IQ3_XXS": 18, "IQ3_S": 21}  # enum ggml_type
N_EXAMPLES = 300 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 12
# libggml *aborts* (GGML_ASSERT in iq3_find_best_neighbour) once the weighted distances overflow
# float32, |x| above ~1e12: such kinds would kill the test process; they are refused, tested below
KINDS = tuple(k for k in rst.GGUF_KINDS if k not in ("huge", "fp16_overflow"))


def oracle(x, qtype, imatrix=None):
    return ggml_quantize(x, IDS[qtype], imatrix)


@st.composite
def rows_and_imatrix(draw):
    x = draw(rst.rows(block=256, max_rows=3, max_blocks=2, kinds=KINDS))
    return x, draw(imatrices(x.shape[1]))


# --------------------------------------------------------------------------- bytes vs libggml

@pytest.mark.parametrize("qtype", IQ3)
@settings(max_examples=N_EXAMPLES)
@given(x=rst.rows(block=256, max_rows=3, max_blocks=2, kinds=KINDS))   # ±0 lanes, subnormals, ties, outliers
@example(x=np.concatenate([np.zeros(32), np.linspace(-1, 1, 224)]).astype(np.float32)[None, :])  # empty sub-block 0
def test_quantize_matches_libggml(qtype, x):
    assert np.array_equal(rg.quantize(x, qtype), oracle(x, qtype))


@pytest.mark.parametrize("qtype", IQ3)
@settings(max_examples=N_EXAMPLES)
@given(data=rows_and_imatrix())
def test_quantize_with_imatrix_matches_libggml(qtype, data):
    x, imatrix = data
    assert np.array_equal(rg.quantize(x, qtype, imatrix=imatrix), oracle(x, qtype, imatrix))


@pytest.mark.parametrize("qtype", IQ3)
def test_real_rows_match_libggml(qtype, real_rows):
    rows = real_rows[:8]                                       # 8 rows of blk.3.ffn_down: 48 super-blocks
    imatrix = np.mean(real_rows * real_rows, axis=0) + 1e-4
    assert np.array_equal(rg.quantize(rows, qtype), oracle(rows, qtype))
    assert np.array_equal(rg.quantize(rows, qtype, imatrix), oracle(rows, qtype, imatrix))


def test_empty_sub_blocks_shift_iq3_s_codes():
    """IQ3_S: an empty sub-block does not advance qs / signs (the C ``continue``), qh stays in place."""
    x = np.zeros((1, 256), np.float32)
    x[0, 64:96] = np.linspace(0.1, 1.0, 32)                     # only sub-block 2 holds weights
    x[0, 192:224] = -np.linspace(0.1, 1.0, 32)                  # and sub-block 6 (negative: sign bytes 0xff)
    raw = rg.quantize(x, "IQ3_S")
    assert np.array_equal(raw, oracle(x, "IQ3_S"))
    f = iq3.IQ3_S_BLOCK.split(raw)
    assert f.qs[0, :16].any() and not f.qs[0, 16:].any()        # slots 0 and 1 used, 2 … 7 empty
    assert f.signs[0, 4:8].tolist() == [0xFF] * 4 and not f.signs[0, 8:].any()
    # the decoder reads sub-block 2 from slot 2: libggml's bytes do not round-trip here, and ours neither
    assert np.array_equal(rg.dequantize(raw, "IQ3_S"), ggml_dequantize(raw, IDS["IQ3_S"]))


def test_power_of_two_scaling_scales_only_d(rng):
    """x·4 runs the same search on exactly scaled float32 values: same codes, d (and ŵ) times 4."""
    x = (rng.standard_t(4, (4, 512)) * 0.02).astype(np.float32)
    for qtype in IQ3:
        a, b = rg.quantize(x, qtype), rg.quantize(x * np.float32(4), qtype)
        blocks = a.reshape(-1, rg.ggml_type(qtype).type_size), b.reshape(-1, rg.ggml_type(qtype).type_size)
        assert np.array_equal(blocks[0][:, 2:], blocks[1][:, 2:])
        assert np.array_equal(rg.dequantize(b, qtype), 4 * rg.dequantize(a, qtype))


def test_quantize_without_imatrix_is_allowed():
    # ggml_quantize_requires_imatrix is false for both (llama.cpp's mixtures refuse IQ3_XXS without one)
    assert rg.codec("IQ3_XXS").imatrix == rg.codec("IQ3_S").imatrix == "weighted"


def test_overflowing_blocks_are_refused_where_libggml_aborts():
    x = np.zeros((1, 256), np.float32)
    x[0, :8] = 1e30
    for qtype in IQ3:
        with pytest.raises(ValueError, match="x: the weighted distances of an IQ3 group overflow float32"):
            rg.quantize(x, qtype)
    code = ("import numpy as np; from refquant.testing.ggml import ggml_quantize\n"
            "x = np.zeros((1, 256), np.float32); x[0, :8] = 1e30; ggml_quantize(x, 21)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "GGML_ASSERT" in done.stderr


# --------------------------------------------------------------------------- decoding

def random_iq3_blocks(rng, qtype, n_blocks):
    """Random bytes with a random finite fp16 d."""
    raw = rng.integers(0, 256, (n_blocks, rg.ggml_type(qtype).type_size), dtype=np.uint8)
    h = rng.integers(0, 0x7C00, n_blocks).astype(np.uint16) | (rng.integers(0, 2, n_blocks).astype(np.uint16) << 15)
    raw[:, :2] = h.view(np.uint8).reshape(n_blocks, 2)
    return raw


@pytest.mark.parametrize("qtype", IQ3)
@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1))
def test_dequantize_random_bytes(qtype, seed):
    from gguf import quants

    raw = random_iq3_blocks(np.random.default_rng(seed), qtype, 16).reshape(4, -1)
    ours = rg.dequantize(raw, qtype)
    assert np.array_equal(ours.view(np.uint32), ggml_dequantize(raw, IDS[qtype]).view(np.uint32))
    theirs = quants.dequantize(raw, gguf_py_type(qtype)).astype(np.float32)
    assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_hand_built_blocks():
    # IQ3_S: d = 1, ls = 0 -> db = 1; group 0 of sub-block 0 is point 256 + 0 (qh bit 0), signs 0b1010
    raw = np.zeros((1, 110), np.uint8)
    raw[0, :2] = (0x00, 0x3C)
    raw[0, iq3.IQ3_S_BLOCK.offset("qh")] = 0b1
    raw[0, iq3.IQ3_S_BLOCK.offset("signs")] = 0b1010
    y = rg.dequantize(raw, "IQ3_S")
    assert y[0, :4].tolist() == [1.0 * v * s for v, s in zip(IQ3S.values[256].tolist(), (1, -1, 1, -1))]
    assert y[0, 4:8].tolist() == IQ3S.values[0].tolist() == [1, 1, 1, 1]
    # IQ3_XXS: d = 2, ls = 3 -> db = 2 · 3.5 · 0.5 = 3.5; 7 sign bits 0b0000001 -> weights 0 and 7 negative
    raw = np.zeros((1, 98), np.uint8)
    raw[0, :2] = (0x00, 0x40)
    raw[0, 2] = 5                                               # point 5: bytes (62, 12, 4, 4)
    off = iq3.IQ3_XXS_BLOCK.offset("scales_and_signs")
    raw[0, off : off + 4] = np.array([1 | (3 << 28)], "<u4").view(np.uint8)
    y = rg.dequantize(raw, "IQ3_XXS")
    assert y[0, :8].tolist() == [-3.5 * 62, 3.5 * 12, 3.5 * 4, 3.5 * 4, 3.5 * 4, 3.5 * 4, 3.5 * 4, -3.5 * 4]


@pytest.mark.parametrize("qtype", IQ3)
def test_dequantize_backends(qtype, xp, rng):
    from refquant._backend import from_numpy, to_numpy

    raw = random_iq3_blocks(rng, qtype, 8)
    expected = rg.dequantize(raw, qtype)
    assert np.array_equal(to_numpy(rg.dequantize(from_numpy(raw, like=xp.asarray([0])), qtype)), expected)
    # the search runs on NumPy; the bytes come back in the input's namespace
    x = (rng.standard_t(4, (1, 256)) * 0.02).astype(np.float32)
    assert np.array_equal(to_numpy(rg.quantize(from_numpy(x, like=xp.asarray([0.0])), qtype)), rg.quantize(x, qtype))


# --------------------------------------------------------------------------- the neighbour lists

def slow_neighbours(grid, nwant, u):
    """iq3xs_init_impl for one key, as the C loops read: sort (d², j), keep nwant distinct distances."""
    pos = [2 * ((u >> (3 * k)) & 7) + 1 for k in range(4)]
    dist = sorted((sum((2 * int(g[k]) + 1 - pos[k]) ** 2 for k in range(4)), j) for j, g in enumerate(grid.levels))
    out, have, last = [], 1, dist[0][0]
    for d2, j in dist:
        if d2 > last:
            if have == nwant:
                break
            last, have = d2, have + 1
        out.append(j)
    return out


@pytest.mark.parametrize("grid, nwant", [(IQ3XXS, 2), (IQ3S, 3)])
def test_neighbour_lists_match_the_c_loops(grid, nwant):
    nb = iq3.neighbours(grid, nwant)
    assert np.array_equal(np.flatnonzero(nb.index >= 0), np.sort(grid.keys))
    assert np.array_equal(nb.index[grid.keys], np.arange(len(grid.keys)))
    for u in list(range(0, 4096, 37)) + [4095]:
        if nb.index[u] < 0:
            assert nb.points[nb.start[u] : nb.start[u] + nb.count[u]].tolist() == slow_neighbours(grid, nwant, u)
