"""The i-quant grids of refquant.gguf._grids against gguf-py's and libggml's copies, and their lattice rules."""

from __future__ import annotations

import numpy as np
import pytest

from refquant.gguf import _grids

gguf_quants = pytest.importorskip("gguf.quants")

# refquant grid -> the gguf-py class that holds the same table
GGUF_PY = {"iq2xxs_grid": "IQ2_XXS", "iq2xs_grid": "IQ2_XS", "iq2s_grid": "IQ2_S",
           "iq3xxs_grid": "IQ3_XXS", "iq3s_grid": "IQ3_S", "iq1s_grid": "IQ1_S"}


@pytest.mark.parametrize("name", list(GGUF_PY))
def test_grid_equals_gguf_py(name):
    cls = getattr(gguf_quants, GGUF_PY[name])
    cls.init_grid()
    theirs = cls.grid.reshape(cls.grid_shape)                                 # (n, dim) float32
    ours = _grids.GRIDS[name].values
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.astype(np.float32), theirs)


def test_ksigns_equals_gguf_py_and_has_even_minus_count():
    np.testing.assert_array_equal(_grids.KSIGNS_IQ2XS, np.frombuffer(gguf_quants.IQ2_XXS.ksigns, np.uint8))
    minus_counts = np.unpackbits(_grids.KSIGNS_IQ2XS[:, None], axis=1).sum(axis=1)
    assert np.all(minus_counts % 2 == 0)
    assert np.all(_grids.KSIGNS_IQ2XS & 127 == np.arange(128))


def test_iq2xxs_grid_is_what_libggml_decodes():
    """256 points x 8 = 8 IQ2_XXS blocks: d = 1, scale nibble 0 (db = 1/8), no signs, index k in slot k."""
    ggml = pytest.importorskip("refquant.testing.ggml")
    raw = np.zeros((8, 66), np.uint8)                                         # block_iq2_xxs: d, qs[32] uint16
    raw[:, 0:2] = np.frombuffer(np.float16(1.0).tobytes(), np.uint8)
    slots = raw[:, 2:].reshape(8, 8, 2, 4)                                    # (block, sub-block, aux32 word, byte)
    slots[:, :, 0, :] = np.arange(256, dtype=np.uint8).reshape(8, 8, 4)       # grid indices 0..255 in order
    decoded = ggml.ggml_dequantize(raw.reshape(1, -1), "IQ2_XXS").reshape(256, 8)
    np.testing.assert_array_equal(decoded * 8, _grids.IQ2XXS_GRID.astype(np.float32))


@pytest.mark.parametrize("name", ["iq2xxs_grid", "iq2xs_grid", "iq2s_grid", "iq3xxs_grid"])
def test_grid_points_are_lattice_points(name):
    """Odd coordinates 2l+1 with sum ≡ 0 mod 4: halved, the half-integer coset of E8 (D4 for IQ3_XXS)."""
    g = _grids.GRIDS[name]
    odd = 2 * g.levels.astype(np.int64) + 1                                  # (n, dim)
    assert np.all(odd.sum(axis=1) % 4 == 0)
    assert len(np.unique(g.keys)) == len(g.keys)


def test_iq2_signed_points_stay_in_e8():
    """An even number of sign flips (any ksigns entry) keeps Σ ≡ 0 mod 4, so signed IQ2 groups are E8 points."""
    odd = 2 * _grids.IQ2S.levels.astype(np.int64) + 1                        # (1024, 8)
    signs = 1 - 2 * np.unpackbits(_grids.KSIGNS_IQ2XS[:, None], axis=1, bitorder="little").astype(np.int64)  # (128, 8)
    signed = odd[:, None, :] * signs[None, :, :]                             # (1024, 128, 8)
    assert np.all(signed.sum(axis=-1) % 4 == 0)


@pytest.mark.parametrize("name", ["iq3s_grid", "iq1s_grid"])
def test_grids_without_a_parity_rule(name):
    """The docstring says iq3s and iq1s keep points of both parities: check it stays true."""
    sums = (2 * _grids.GRIDS[name].levels.astype(np.int64) + 1).sum(axis=1) % 4  # (n,)
    assert set(sums.tolist()) == {0, 2}


def test_keys_are_ggml_kgrid_keys():
    """iq3xs_init_impl's kgrid_512 starts 0, 1, 2, 5, 7, 8, 9, 10 (3 bits per coordinate)."""
    assert _grids.IQ3S.keys[:8].tolist() == [0, 1, 2, 5, 7, 8, 9, 10]
    assert _grids.IQ2XXS.key_bits == 2 and _grids.IQ3S.key_bits == 3
    levels_back = (_grids.IQ2S.keys[:, None] >> (2 * np.arange(8))) & 3        # (1024, 8)
    np.testing.assert_array_equal(levels_back, _grids.IQ2S.levels)
