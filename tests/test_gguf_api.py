"""refquant.gguf.quantize / dequantize: shapes, type names, gguf-py conventions, bad input."""

from __future__ import annotations

import numpy as np
import pytest

import refquant.gguf as rg
from refquant.testing.ggml import ggml_quantize, lib

GGML_TYPE_COUNT = 43   # enum ggml_type's GGML_TYPE_COUNT in libggml 0.20.2's ggml.h (Q2_0 = 42 is the last)


def libggml_weight_types() -> dict[str, tuple[int, int, int]]:
    """Every type libggml 0.20.2 stores weights in, read from its type traits: the quantized types and the
    three floats (not the integer types, F64 or the removed ids, whose block size is 0): name -> (id, QK, bytes)."""
    out = {}
    for tid in range(GGML_TYPE_COUNT):
        t = lib().ggml_get_type_traits(tid).contents
        name = t.type_name.decode().upper()
        if t.blck_size > 0 and (t.is_quantized or name in ("F32", "F16", "BF16")):
            out[name] = (tid, t.blck_size, t.type_size)
    return out


ALL = tuple(libggml_weight_types())


def test_every_ggml_weight_type_has_a_codec():
    theirs = libggml_weight_types()
    assert len(theirs) == 30 and set(rg.SUPPORTED) == set(theirs)
    for name, (tid, qk, size) in theirs.items():
        t = rg.ggml_type(name)
        assert (t.id, t.block_size, t.type_size) == (tid, qk, size)
        c = rg.codec(name)
        assert c.quantize.__name__ == f"quantize_{name.lower()}"
        assert c.dequantize.__name__ == f"dequantize_{name.lower()}"
        assert (c.imatrix != rg.IGNORED) == (name in rg.IMATRIX_TYPES)
    # libggml's imatrix paths: Q8_0, the plain floats and the ternary/FP4/1-2 bit types ignore it; Q8_1 / Q8_K
    # have none (they are activation formats)
    assert set(rg.IMATRIX_TYPES) == set(ALL) - {"F32", "F16", "BF16", "Q8_0", "Q8_1", "Q8_K", "TQ1_0", "TQ2_0",
                                                "MXFP4", "NVFP4", "Q1_0", "Q2_0"}
    # ggml_quantize_requires_imatrix (ggml.c): exactly these three
    assert {n for n in ALL if rg.codec(n).imatrix == rg.REQUIRED} == {"IQ2_XXS", "IQ2_XS", "IQ1_S"}


@pytest.mark.parametrize("qtype", ALL)
def test_shapes_and_round_trip_on_leading_axes(qtype, rng):
    t = rg.ggml_type(qtype)
    x = rng.standard_normal((2, 3, 2 * 256)).astype(np.float32)
    # IQ2_XXS, IQ2_XS and IQ1_S refuse to run without an importance matrix: give them a drawn one
    imatrix = rng.uniform(0.1, 2.0, 512).astype(np.float32) if rg.codec(qtype).imatrix == rg.REQUIRED else None
    raw = rg.quantize(x, qtype, imatrix=imatrix)
    assert raw.dtype == np.uint8 and raw.shape == (2, 3, rg.row_bytes(qtype, 512))
    assert raw.shape[-1] == 512 // t.block_size * t.type_size
    y = rg.dequantize(raw, qtype)
    assert y.dtype == np.float32 and y.shape == x.shape
    # rows are independent: the 6 rows quantized alone give the same bytes
    assert np.array_equal(raw.reshape(6, -1), np.stack([rg.quantize(r[None], qtype, imatrix=imatrix)[0]
                                                        for r in x.reshape(6, -1)]))


def test_type_given_by_name_id_or_gguf_py_enum(rng):
    import gguf

    x = rng.standard_normal((2, 64)).astype(np.float32)
    want = rg.quantize(x, "Q4_1")
    assert np.array_equal(rg.quantize(x, "q4_1"), want)
    assert np.array_equal(rg.quantize(x, 3), want)
    assert np.array_equal(rg.quantize(x, gguf.GGMLQuantizationType.Q4_1), want)
    assert np.array_equal(rg.dequantize(want, gguf.GGMLQuantizationType.Q4_1), rg.dequantize(want, "Q4_1"))


def test_same_conventions_as_gguf_py(rng):
    """gguf-py's quantize/dequantize take and give the same shapes (and bytes) for its legacy types."""
    import gguf
    from gguf import quants

    x = rng.standard_normal((3, 4, 96)).astype(np.float32)
    for name in ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "BF16"):
        qt = gguf.GGMLQuantizationType[name]
        theirs = quants.quantize(x, qt)
        ours = rg.quantize(x, name)
        assert ours.shape == theirs.shape
        assert np.array_equal(rg.dequantize(ours, name), quants.dequantize(ours, qt))
    # F32 / F16 tensors as gguf-py hands them out (typed arrays) decode as their own bytes
    assert np.array_equal(rg.dequantize(x.astype(np.float16), "F16"), x.astype(np.float16).astype(np.float32))
    assert np.array_equal(rg.dequantize(x, "F32"), x)


def test_float64_and_float16_input_are_cast_to_float32(rng):
    x = rng.standard_normal((2, 256))
    assert np.array_equal(rg.quantize(x, "Q8_0"), ggml_quantize(x.astype(np.float32), "Q8_0"))
    h = x.astype(np.float16)
    assert np.array_equal(rg.quantize(h, "Q4_K"), ggml_quantize(h.astype(np.float32), "Q4_K"))


def test_imatrix_is_ignored_where_libggml_ignores_it(rng):
    x = rng.standard_normal((2, 256)).astype(np.float32)
    w = rng.uniform(0, 1, 256).astype(np.float32)
    for name in ("Q8_0", "Q8_1", "F16", "BF16", "F32"):
        assert np.array_equal(rg.quantize(x, name, imatrix=w), rg.quantize(x, name))
    assert not np.array_equal(rg.quantize(x, "Q4_0", imatrix=w), rg.quantize(x, "Q4_0"))


# --------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("qtype, n", [("Q4_0", 48), ("Q8_0", 100), ("Q4_K", 288), ("IQ4_XS", 32), ("Q6_K", 512 + 32)])
def test_row_length_not_a_multiple_of_the_block(qtype, n):
    with pytest.raises(ValueError, match=rf"x: row length {n} is not a multiple of {qtype}'s block size"):
        rg.quantize(np.zeros((2, n), np.float32), qtype)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(bad):
    x = np.zeros((2, 64), np.float32)
    x[1, 7] = bad
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        rg.quantize(x, "Q4_0")
    w = np.ones(64, np.float32)
    w[3] = bad
    with pytest.raises(ValueError, match=r"imatrix: column 3 is -?(nan|inf); importance values must be finite and >= 0"):
        rg.quantize(np.zeros((2, 64), np.float32), "Q4_0", imatrix=w)


def test_wrong_dtypes_are_refused():
    with pytest.raises(TypeError, match="x: expected a real floating-point array"):
        rg.quantize(np.zeros((2, 64), np.int32), "Q4_0")
    with pytest.raises(TypeError, match="raw: expected dtype uint8"):
        rg.dequantize(np.zeros((2, 18), np.int8), "Q4_0")
    with pytest.raises(TypeError, match="raw: expected dtype uint8"):
        rg.dequantize(np.zeros((2, 18), np.float32), "Q4_0")
    with pytest.raises(TypeError, match="imatrix: expected a real floating-point array"):
        rg.quantize(np.zeros((2, 64), np.float32), "Q4_0", imatrix=np.ones(64, np.int64))


def test_wrong_shapes_are_refused():
    with pytest.raises(ValueError, match=r"imatrix: expected shape \(64,\)"):
        rg.quantize(np.zeros((2, 64), np.float32), "Q4_0", imatrix=np.ones(32, np.float32))
    with pytest.raises(ValueError, match="x: expected a non-empty array"):
        rg.quantize(np.zeros((0, 64), np.float32), "Q4_0")
    with pytest.raises(ValueError, match="x: expected a non-empty array"):
        rg.quantize(np.float32(1.0), "Q8_0")


@pytest.mark.parametrize("qtype, nbytes", [("Q4_0", 17), ("Q4_0", 19), ("Q4_K", 145), ("IQ4_XS", 100), ("F32", 6), ("Q8_0", 0)])
def test_raw_buffer_of_the_wrong_length(qtype, nbytes):
    with pytest.raises(ValueError, match=rf"raw: last dimension {nbytes} is not a positive multiple of {qtype}'s"):
        rg.dequantize(np.zeros((3, nbytes), np.uint8), qtype)


def test_unknown_and_unsupported_type_names():
    x = np.zeros((1, 256), np.float32)
    with pytest.raises(ValueError, match="qtype: unknown ggml type 'Q4_Z'"):
        rg.quantize(x, "Q4_Z")
    with pytest.raises(ValueError, match="qtype: unknown ggml type id 99"):
        rg.dequantize(np.zeros((1, 18), np.uint8), 99)
    with pytest.raises(ValueError, match="qtype: refquant has no codec for I32; supported: F32, F16"):
        rg.quantize(x, "I32")
    with pytest.raises(ValueError, match=r"^imatrix: IQ2_XXS needs an importance matrix"):
        rg.quantize(x, "IQ2_XXS")


def test_block_functions_check_their_shapes():
    from refquant.gguf import iquants, legacy

    with pytest.raises(ValueError, match=r"x: expected Q4_0 blocks of shape \(n_blocks, 32\)"):
        legacy.quantize_q4_0(np.zeros((2, 64), np.float32))
    with pytest.raises(ValueError, match=r"raw: expected Q8_0 blocks of shape \(n_blocks, 34\)"):
        legacy.dequantize_q8_0(np.zeros((2, 36), np.uint8))
    with pytest.raises(ValueError, match=r"qw: expected the shape of x"):
        iquants.quantize_iq4_nl(np.zeros((2, 32), np.float32), np.zeros((1, 32), np.float32))
