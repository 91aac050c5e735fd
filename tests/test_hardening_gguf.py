"""GGUF codecs at the edges of float32: every class of edge input and refquant's policy for it.

| class of edge input                                   | types         | policy                                  |
|-------------------------------------------------------|---------------|-----------------------------------------|
| signed zeros: ±0 mixed in a block, ±0 at the min/max,  | all 30        | bytes equal libggml's                   |
|   blocks of only ±0 (mixed signs), constant blocks     |               |                                         |
| subnormal float32 inputs (< 1.18e-38, with ±0)         | all 30        | bytes equal libggml's                   |
| fp16-overflowing scales (|x| ~ 1e5 … 1e20)             | all 30        | bytes equal libggml's                   |
| huge magnitudes (|x| ~ 1e20 … 3e38), imatrix ~ 1e38    | all 30        | bytes equal libggml's                   |
| any of the above where libggml *aborts* (the lattice   | IQ1_*, IQ2_*, | ValueError naming ``x``, and only there |
|   searches: weighted errors that overflow float32)     | IQ3_*         |                                         |
| negative, NaN or ±inf imatrix entries                  | all 30 (API), | ValueError naming ``imatrix``; the CLI  |
|                                                        | imatrix files | prints one line and exits 2             |
| imatrix blocks that are all 0 (weights lose all        | imatrix types | ``UserWarning`` naming ``imatrix``; the |
|   importance: libggml stores most of them as 0)        |               | bytes are still libggml's               |

"Bytes equal libggml's" means ``refquant.gguf.quantize`` returns what ``ggml_quantize_chunk``
writes (``quantize_row_<t>_ref`` for Q8_1 / Q8_K, which ggml_quantize_chunk does not
offer), and decoding those bytes gives libggml's floats bit for bit (NaN, ±inf, −0 too).
Each class is one test parametrized over the types; the blocks come from the
``EDGE_KINDS`` of refquant.testing.strategies (lanes drawn by Hypothesis), plus pinned
blocks that reproduce the reports. Example counts are small (each type and class runs
a few dozen blocks) to keep this file under a minute on two cores.
"""

from __future__ import annotations

import struct
import warnings

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import refquant.gguf as rg
from refquant.gguf import convert, file, recipes
from refquant.gguf.imatrix import load_imatrix
from refquant.testing import strategies as rst
from refquant.testing.ggml import (ggml_dequantize, ggml_dequantize_row, ggml_quantize, ggml_quantize_or_abort,
                                   ggml_quantize_row_ref)

TYPES = rg.SUPPORTED                                   # all 30
# the lattice searches, where libggml aborts on overflowing weighted errors: its bytes come from a forked child
LATTICE = tuple(t for t in TYPES if rg.codec(t).quantize.__module__.rsplit(".", 1)[-1] in ("iq1", "iq2", "iq3"))
ROW_REF_ONLY = ("Q8_1", "Q8_K")                        # not in ggml_quantize_chunk: their *_ref functions
EXAMPLES = 8                                           # drawn examples per (class, type), besides the pinned ones

CLASSES = {
    "signed_zeros": ("signed_zeros", "all_signed_zeros", "zero_extreme", "zeros", "constant"),
    "subnormal": ("subnormal",),
    "fp16_overflow": ("fp16_overflow",),
    "huge": ("huge",),
}


def oracle_bytes(x: np.ndarray, qtype: str, imatrix: np.ndarray | None) -> np.ndarray:
    if qtype in ROW_REF_ONLY:
        return ggml_quantize_row_ref(x, qtype)
    return ggml_quantize(x, qtype, imatrix)


def oracle_floats(raw: np.ndarray, qtype: str) -> np.ndarray:
    if qtype == "Q8_K":
        return ggml_dequantize_row(raw, qtype)
    if qtype == "Q8_1":  # libggml has no Q8_1 decoder; ŵ = d·q is Q8_0's on the same d and qs (s dropped)
        blocks = raw.reshape(-1, 36)
        return ggml_dequantize(np.concatenate([blocks[:, :2], blocks[:, 4:]], axis=1), "Q8_0").reshape(
            *raw.shape[:-1], -1)
    return ggml_dequantize(raw, qtype)


def block_of(qtype: str) -> int:
    return rg.ggml_type(qtype).block_size


def tiled(block: list[float], qtype: str) -> np.ndarray:
    """A pinned 32-value pattern repeated to one row of the type's block size (32 or 256; 32 for floats)."""
    n = max(block_of(qtype), len(block))
    return np.resize(np.array(block, np.float32), n).reshape(1, n)


def assert_libggml_bytes(x: np.ndarray, qtype: str, imatrix: np.ndarray | None = None) -> None:
    """refquant's bytes (and their decoding) equal libggml's; where libggml aborts, refquant refuses instead."""
    if imatrix is None and rg.codec(qtype).imatrix == rg.REQUIRED:
        imatrix = np.ones(x.shape[-1], np.float32)          # IQ2_XXS, IQ2_XS, IQ1_S: refused without one
    if qtype in LATTICE:
        theirs = ggml_quantize_or_abort(x, qtype, imatrix)
        if theirs is None:
            with pytest.raises(ValueError, match=r"^x: "):
                rg.quantize(x, qtype, imatrix=imatrix)
            return
    else:
        theirs = oracle_bytes(x, qtype, imatrix)
    ours = np.asarray(rg.quantize(x, qtype, imatrix=imatrix))
    bad = np.flatnonzero((ours != theirs).any(axis=-1) if ours.ndim > 1 else ours != theirs)
    assert bad.size == 0, (f"{qtype}: {int((ours != theirs).sum())} bytes differ from libggml in row(s) {bad.tolist()}; "
                           f"first row ours {ours.reshape(-1, ours.shape[-1])[bad[0]][:24]}, "
                           f"libggml {theirs.reshape(-1, theirs.shape[-1])[bad[0]][:24]}")
    decoded = np.asarray(rg.dequantize(ours, qtype))
    assert np.array_equal(decoded.view(np.uint32), oracle_floats(ours, qtype).view(np.uint32))


@st.composite
def edge_rows(draw, qtype: str, kinds: tuple[str, ...]) -> np.ndarray:
    """(1 … 2, n) rows of 1 … 2 blocks of ``qtype`` (8 … 16 values for the float types), of ``kinds``."""
    block = block_of(qtype)
    return draw(rst.rows(block=block if block > 1 else 8, max_rows=2, max_blocks=2, kinds=kinds))


@st.composite
def imatrix_or_none(draw, n: int) -> np.ndarray | None:
    """None, or an (n,) importance vector whose lanes are drawn: 0, ordinary (2^-8 … 2^8) or huge (~1e38)."""
    if not draw(st.booleans()):
        return None
    labels = draw(hnp.arrays(np.int8, n, elements=st.integers(0, 2)))
    ordinary = draw(hnp.arrays(np.float32, n, elements=st.floats(2.0**-8, 2.0**8, width=32)))
    big = np.float32(1e38)
    imatrix = np.where(labels == 0, ordinary, np.where(labels == 1, big, np.float32(0.0))).astype(np.float32)
    return imatrix if imatrix.any() else None  # an all-zero imatrix is the warning's test below


def _check(qtype: str, data, kinds: tuple[str, ...]) -> None:
    x = data.draw(edge_rows(qtype, kinds), label="x")
    imatrix = data.draw(imatrix_or_none(x.shape[-1]), label="imatrix")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an imatrix block of zeros warns; not this test's subject
        assert_libggml_bytes(x, qtype, imatrix)


# --------------------------------------------------------------------------- signed zeros

# The reports: Q4_1/Q5_1 stored the wrong sign of m (min over a -0/+0 mix) and of d.
SIGNED_ZERO_BLOCKS = [
    [-0.0, 0.0] * 16,                            # only zeros, −0 first: C keeps m = −0
    [0.0, -0.0] * 16,                            # only zeros, +0 first: m = +0
    [-0.0] + [1.0, 0.0, 2.0, -0.0] * 7 + [3.0, 0.0, 0.5],  # zero at the min, −0 first
    [0.0, -1.0, -0.0, -2.0] * 8,                 # zero at the max, +0 first
]


@pytest.mark.parametrize("qtype", TYPES)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_signed_zero_blocks_match_libggml(qtype, data):
    for block in SIGNED_ZERO_BLOCKS:
        assert_libggml_bytes(tiled(block, qtype), qtype)
    # found by this battery: IQ3_S on a constant block with a ~FLT_MAX imatrix did not refuse, where
    # libggml's Σ w·x·q and Σ w·q² both overflow, scale = inf/inf = NaN and GGML_ASSERT(scale >= 0) aborts
    ones = tiled([1.0], qtype)
    assert_libggml_bytes(ones, qtype, np.full(ones.shape[-1], 1e38, np.float32))
    _check(qtype, data, CLASSES["signed_zeros"])


# --------------------------------------------------------------------------- subnormals

# d = max/−8 of this block is subnormal and 1/d overflows to inf: x·(1/d) is ±inf or NaN
SUBNORMAL_BLOCK = [1e-39, -5e-40, 2e-40, 0.0, 3e-39, -1e-45, 7e-40, -2.9e-39] * 4


@pytest.mark.parametrize("qtype", TYPES)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_subnormal_blocks_match_libggml(qtype, data):
    assert_libggml_bytes(tiled(SUBNORMAL_BLOCK, qtype), qtype)
    _check(qtype, data, CLASSES["subnormal"])


# --------------------------------------------------------------------------- fp16-overflowing scales

@pytest.mark.parametrize("qtype", TYPES)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_fp16_overflowing_scales_match_libggml(qtype, data):
    x = tiled([1e5, -3e6, 0.5, -0.0, 7e19, 1.0, -2e12, 65504.0] * 4, qtype)
    assert_libggml_bytes(x, qtype)
    assert_libggml_bytes(x, qtype, np.full(x.shape[-1], 1e38, np.float32))  # reported: IQ4_NL / IQ4_XS
    # found by this battery: IQ2_XS gave d = fp16 inf on one huge value among −0s. There w·x² is
    # inf·0 = NaN in every other lane, and C's "if (ax < min)" scan keeps lane 0 (NaN never wins)
    # where np.argmin picked the first NaN: the flip made lane 0's magnitude negative, the max −0,
    # so libggml writes an empty block.
    lone = np.full((1, max(block_of(qtype), 32)), -0.0, np.float32)
    lone[0, 0] = -8.085891e19
    assert_libggml_bytes(lone, qtype, np.ones(lone.shape[-1], np.float32))
    _check(qtype, data, CLASSES["fp16_overflow"])


# --------------------------------------------------------------------------- huge magnitudes

@pytest.mark.parametrize("qtype", TYPES)
@settings(max_examples=EXAMPLES)
@given(data=st.data())
def test_huge_magnitudes_match_libggml(qtype, data):
    x = tiled([1e20, -3e38, 2.5e30, 0.0, -1e25, 1.0, 3e38, -0.0] * 4, qtype)
    assert_libggml_bytes(x, qtype)                                          # reported: IQ4_NL / IQ4_XS
    assert_libggml_bytes(x, qtype, np.full(x.shape[-1], 1e38, np.float32))
    _check(qtype, data, CLASSES["huge"])


# --------------------------------------------------------------------------- hostile importance matrices

BAD_ENTRIES = {"negative": -1.0, "negative zero-ish": -1e-30, "nan": float("nan"), "inf": float("inf"),
               "-inf": float("-inf")}


@pytest.mark.parametrize("qtype", TYPES)
@pytest.mark.parametrize("entry", list(BAD_ENTRIES), ids=list(BAD_ENTRIES))
def test_negative_or_non_finite_imatrix_is_refused(qtype, entry):
    n = max(block_of(qtype), 32)
    x = np.random.default_rng(0).standard_normal((2, n)).astype(np.float32)
    imatrix = np.ones(n, np.float32)
    imatrix[10] = BAD_ENTRIES[entry]
    with pytest.raises(ValueError, match=r"^imatrix: .*column 10"):
        rg.quantize(x, qtype, imatrix=imatrix)


@pytest.mark.parametrize("qtype", rg.IMATRIX_TYPES)
def test_all_zero_imatrix_warns_and_keeps_libggml_bytes(qtype):
    n = 2 * block_of(qtype)
    x = np.random.default_rng(1).standard_normal((3, n)).astype(np.float32)
    imatrix = np.ones(n, np.float32)
    imatrix[: n // 2] = 0.0                                  # the first block of columns has no importance
    with pytest.warns(UserWarning, match=r"^imatrix: 1 of 2 blocks .* are all 0"):
        ours = np.asarray(rg.quantize(x, qtype, imatrix=imatrix))
    assert np.array_equal(ours, ggml_quantize(x, qtype, imatrix))
    with pytest.warns(UserWarning, match=r"^imatrix: 2 of 2 blocks"):
        ours = np.asarray(rg.quantize(x, qtype, imatrix=np.zeros(n, np.float32)))
    assert np.array_equal(ours, ggml_quantize(x, qtype, np.zeros(n, np.float32)))


def _legacy_imatrix_file(path, values: dict[str, np.ndarray], ncall: int = 2) -> None:
    """llama-imatrix's legacy .dat: n_entries, then (len, name, ncall, nval, nval sums) per entry."""
    parts = [struct.pack("<i", len(values))]
    for name, v in values.items():
        b = name.encode()
        parts += [struct.pack("<i", len(b)), b, struct.pack("<ii", ncall, v.size), (v * ncall).astype("<f4").tobytes()]
    open(path, "wb").write(b"".join(parts))


def _gguf_imatrix_file(path, values: dict[str, np.ndarray], count: float = 2.0) -> None:
    """llama-imatrix's GGUF layout: <name>.in_sum2 (Σ x²) and <name>.counts."""
    tensors = []
    for name, v in values.items():
        tensors.append((f"{name}.in_sum2", "F32", (1, v.size), (v * count).astype(np.float32).view(np.uint8)))
        tensors.append((f"{name}.counts", "F32", (1, 1), np.array([count], np.float32).view(np.uint8)))
    file.write(path, {"imatrix.datasets": ["tiny"]}, tensors)


@pytest.mark.parametrize("writer", [_legacy_imatrix_file, _gguf_imatrix_file], ids=["dat", "gguf"])
@pytest.mark.parametrize("entry", ["negative", "nan", "inf"])
def test_imatrix_file_with_bad_entries_is_one_line_exit_2(writer, entry, tmp_path, capsys):
    from refquant.cli import main

    w = np.random.default_rng(2).standard_normal((4, 64)).astype(np.float32)
    src = str(tmp_path / "in.gguf")
    file.write(src, {"general.architecture": "llama"}, [("blk.0.attn_q.weight", "F32", (4, 64), w.view(np.uint8))])
    values = np.ones(64, np.float32)
    values[7] = BAD_ENTRIES[entry]
    writer(str(tmp_path / "imatrix"), {"blk.0.attn_q.weight": values})
    with pytest.raises(ValueError, match=r"^imatrix: blk\.0\.attn_q\.weight: column 7"):
        load_imatrix(str(tmp_path / "imatrix"))
    out = tmp_path / "out.gguf"
    assert main(["quantize", src, str(out), "--type", "Q4_K_M", "--imatrix", str(tmp_path / "imatrix")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("refquant quantize: error:") and err.count("\n") == 1, err
    assert "imatrix: blk.0.attn_q.weight: column 7 is" in err
    assert not out.exists()
