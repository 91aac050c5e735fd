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


# --- the neighbour maps of refquant.gguf._lattice (iq2xs_init_impl / iq3xs_init_impl) ---------------

from hypothesis import given, settings, strategies as st  # noqa: E402

from refquant.gguf import _lattice  # noqa: E402


def _loop_neighbours(grid, nwant, u):
    """iq2xs_init_impl's loop for one key, written plainly: sort (d2, j), keep nwant distinct distances."""
    pos = [2 * ((u >> (grid.key_bits * k)) & ((1 << grid.key_bits) - 1)) + 1 for k in range(grid.dim)]
    dist = sorted((sum((2 * int(g) + 1 - p) ** 2 for g, p in zip(point, pos)), j) for j, point in enumerate(grid.levels))
    out, have, d_last = [], 1, dist[0][0]
    for d2, j in dist:
        if d2 > d_last:
            if have == nwant:
                break
            d_last, have = d2, have + 1
        out.append(j)
    return out


@pytest.mark.parametrize("qtype", ["IQ2_XXS", "IQ2_XS", "IQ2_S", "IQ1_S", "IQ3_XXS", "IQ3_S"])
@settings(max_examples=15)
@given(data=st.data())
def test_neighbour_lists_equal_the_c_loop(qtype, data):
    nmap = _lattice.neighbour_map(qtype)
    grid, nwant, kmap_size = _lattice.NEIGHBOUR_MAPS[qtype]
    u = data.draw(st.integers(0, kmap_size - 1).filter(lambda k: nmap.kmap[k] < 0), label="off-grid key")
    expected = _loop_neighbours(grid, nwant, u)
    assert nmap.table[u, :nmap.count[u]].tolist() == expected
    offset = -int(nmap.kmap[u]) - 1                                            # ggml's flat layout
    assert nmap.flat[offset] == len(expected)
    assert nmap.flat[offset + 1: offset + 1 + len(expected)].tolist() == expected


@pytest.mark.parametrize("qtype", ["IQ2_XS", "IQ3_S"])
def test_kmap_finds_every_grid_point(qtype):
    nmap = _lattice.neighbour_map(qtype)
    np.testing.assert_array_equal(nmap.kmap[nmap.grid.keys], np.arange(len(nmap.grid.keys)))
    assert np.count_nonzero(nmap.kmap >= 0) == len(nmap.grid.keys)
    assert nmap.flat.size == int((1 + nmap.count[nmap.kmap < 0]).sum())


def _loop_best(nmap, u, xval, weight, scale):
    """iq2_find_best_neighbour for one group, float32 scalars in C order."""
    best_d2, best = np.float32(np.finfo(np.float32).max), -1
    for j in nmap.table[u, :nmap.count[u]]:
        d2 = np.float32(0)
        for i in range(nmap.grid.dim):
            diff = np.float32(scale * nmap.odd[j, i]) - xval[i]
            d2 = np.float32(d2 + np.float32(weight[i] * diff) * diff)
        if d2 < best_d2:
            best_d2, best = d2, int(j)
    return best


@settings(max_examples=20)
@given(seed=st.integers(0, 2**32 - 1), ties=st.booleans())
def test_best_neighbour_equals_the_c_loop(seed, ties):
    """Random groups, or groups of equal values (ties between neighbours: the first one wins)."""
    nmap = _lattice.neighbour_map("IQ2_XS")
    rng = np.random.default_rng(seed)
    off = np.flatnonzero((nmap.kmap < 0) & (_lattice._digits(np.arange(nmap.kmap.size), 2, 8) <= 2).all(axis=1))
    u = rng.choice(off, 64)
    xval = (np.ones((64, 8)) if ties else rng.random((64, 8)) * 5).astype(np.float32)
    weight = (np.ones((64, 8)) if ties else rng.random((64, 8))).astype(np.float32)
    scale = rng.uniform(0.5, 2, 64).astype(np.float32)
    got = _lattice.best_neighbour(nmap, u, xval, weight, scale)
    assert got.tolist() == [_loop_best(nmap, u[m], xval[m], weight[m], scale[m]) for m in range(64)]


def test_neighbour_map_bad_arguments():
    with pytest.raises(ValueError, match="grid"):
        _lattice.neighbour_map("Q4_0")
    with pytest.raises(ValueError, match="nwant"):
        _lattice.neighbour_map(_grids.IQ2S)
    with pytest.raises(TypeError, match="grid"):
        _lattice.neighbour_map(42)
