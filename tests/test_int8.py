"""Blockwise 8-bit dynamic quantization and LLM.int8() (refquant.int8) against bitsandbytes on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st, target

from refquant import int8
from refquant.testing import strategies as st_rq
from refquant.testing.bnb import (bnb_code, bnb_int8_linear_matmul, bnb_int8_mixed_scaled_mm,
                                  bnb_int8_mm_dequant, bnb_int8_vectorwise_dequant, bnb_int8_vectorwise_quant,
                                  bnb_dequantize_blockwise, bnb_quantize_blockwise)

DTYPES = ("float32", "float16", "bfloat16")
CODE = int8.create_dynamic_map()


def _bits(a) -> np.ndarray:
    import torch

    if isinstance(a, torch.Tensor):
        a = (a.float() if a.dtype == torch.bfloat16 else a).numpy()
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


def _torch(x: np.ndarray, dtype: str):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))


# ---------------------------------------------------------------------------- strategies

def _near_midpoint_block(rng: np.random.Generator, n: int) -> np.ndarray:
    """Values within a few grid steps (2/65535) of midpoints between dynamic codes, absmax 1:
    where the CPU kernel's 65536-point grid and an exact nearest-code search part ways."""
    mids = (CODE[:-1] + CODE[1:]) / np.float32(2)
    x = rng.choice(mids, n) + rng.integers(-3, 4, n) * np.float32(1 / 65535) + rng.uniform(-1e-5, 1e-5, n)
    x = np.clip(x, -1, 1)
    x[rng.integers(n)] = 1.0
    return x


@st.composite
def blockwise_inputs(draw, max_blocks: int = 3):
    """(x, blocksize, dtype): edge-case blocks, code midpoints, a tail block, 1-D or 2-D."""
    blocksize = draw(st.sampled_from(int8.BLOCKWISE_BLOCKSIZES))
    dtype = draw(st.sampled_from(DTYPES))
    n_blocks = draw(st.integers(1, max_blocks))
    picks = draw(st.lists(st.sampled_from(st_rq.KINDS + ("near_midpoint",)), min_size=n_blocks, max_size=n_blocks))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    scale = draw(st.sampled_from([1e-3, 0.02, 1.0, 30.0]))
    x = np.concatenate([_near_midpoint_block(rng, blocksize) if k == "near_midpoint"
                        else draw(st_rq.ordinary_block(k, blocksize, scale)) for k in picks])
    x = x[: max(1, x.size - draw(st.sampled_from([0, 0, 1, 7, blocksize // 3])))]
    x = np.clip(x, -6.5e4, 6.5e4).astype(np.float32)
    if x.size % 4 == 0 and draw(st.booleans()):
        x = x.reshape(4, -1)
    return x, blocksize, dtype


# ---------------------------------------------------------------------------- dynamic map

def test_dynamic_map_is_bitsandbytes_map():
    assert np.array_equal(_bits(CODE), _bits(bnb_code("dynamic")))


def test_dynamic_map_structure():
    assert CODE.shape == (256,) and np.all(np.diff(CODE) > 0)
    assert CODE[127] == 0.0 and CODE[255] == 1.0 and CODE[0] == -CODE[254]
    # decade e holds 2^e codes per sign: 1 + 2 + ... + 64 = 127 positive codes below 1.0
    positive = CODE[(CODE > 0) & (CODE < 1)]
    counts = [np.sum((positive >= 10.0 ** (e - 7)) & (positive < 10.0 ** (e - 6))) for e in range(7)]
    assert counts == [1, 2, 4, 8, 16, 32, 64]


# ---------------------------------------------------------------------------- blockwise parity

@given(blockwise_inputs())
@settings(max_examples=120)
def test_quantize_blockwise_matches_bitsandbytes(args):
    x, blocksize, dtype = args
    xt = _torch(x, dtype)
    ref = bnb_quantize_blockwise(xt, blocksize)
    q, state = int8.quantize_blockwise(xt, blocksize=blocksize)
    assert np.array_equal(q.numpy(), ref["q"])
    assert np.array_equal(_bits(state.absmax), _bits(ref["absmax"]))
    assert np.array_equal(_bits(int8.dequantize_blockwise(q, state)), _bits(ref["dequantized"]))


def test_grid_lookup_is_not_exact_nearest_and_bitsandbytes_agrees():
    # the CPU kernel snaps to a 65536-point grid first: find values whose exact nearest code
    # differs from the grid's, and check that bitsandbytes picks the grid's answer
    rng = np.random.default_rng(1)
    x = _near_midpoint_block(rng, 4096).astype(np.float32)
    q, state = int8.quantize_blockwise(x, blocksize=4096)
    exact = np.abs(x[:, None] * (np.float32(1) / state.absmax[0]) - CODE[None, :]).argmin(axis=1)
    differ = exact != q
    assert differ.sum() > 20
    assert np.array_equal(bnb_quantize_blockwise(x, 4096)["q"], q)


def test_zero_block_writes_code_zero():
    # CPU kernel: absmax 0 -> every code 0 (-0.99297), decoding to -0.0. (bitsandbytes'
    # pure-torch backend would write the code of 0.0, index 127; we follow the CPU kernel.)
    x = np.zeros(64 + 5, np.float32)
    q, state = int8.quantize_blockwise(x, blocksize=64)
    ref = bnb_quantize_blockwise(x, 64)
    assert np.all(q == 0) and np.array_equal(q, ref["q"])
    y = int8.dequantize_blockwise(q, state)
    assert np.all(y == 0) and np.all(np.signbit(y)) and np.array_equal(_bits(y), _bits(ref["dequantized"]))


@given(blockwise_inputs())
def test_blockwise_error_bound(args):
    # |y - c| ≤ 2·(half grid step 1/65535) + gap/2, plus float32 rounding of x·(1/m) and c·m
    x, blocksize, _ = args
    q, state = int8.quantize_blockwise(x, blocksize=blocksize)
    y = int8.dequantize_blockwise(q, state).astype(np.float64)
    m = np.repeat(state.absmax, blocksize)[: x.size].reshape(x.shape).astype(np.float64)
    bound = m * (np.max(np.diff(CODE)) / 2 + 2 / 65535 + 2.0**-22)
    err = np.abs(x - y)
    target(float(np.max(err / np.maximum(bound, 1e-30))))
    assert np.all(err <= bound)


def _positive_peaks(x: np.ndarray, blocksize: int) -> np.ndarray:
    """Flip each block's sign so that its largest magnitude is positive (see below)."""
    flat = np.concatenate([x.reshape(-1), np.zeros(-x.size % blocksize, np.float32)]).reshape(-1, blocksize)
    peak = flat[np.arange(flat.shape[0]), np.abs(flat).argmax(axis=1)]
    flat = flat * np.where(peak < 0, -1, 1).astype(np.float32)[:, None]
    return flat.reshape(-1)[: x.size].reshape(x.shape)


def test_negative_peak_shrinks_on_round_trip():
    # the dynamic map has 1.0 but not -1.0: a block peaking at -m decodes its peak to
    # -0.99297·m, so a second round trip rescales the whole block
    x = np.array([-2.0, 1.0] + [0.0] * 62, np.float32)
    q, state = int8.quantize_blockwise(x, blocksize=64)
    y = int8.dequantize_blockwise(q, state)
    assert q[0] == 0 and y[0] == np.float32(CODE[0]) * 2 and y[0] > -2.0


@given(blockwise_inputs())
def test_blockwise_round_trip_reaches_a_fixed_point(args):
    # With positive peaks (absmax survives), D∘Q moves values onto codes the 65536-point grid
    # can reach; codes finer than the grid step (|c| < ~1e-4) may move once more. After two
    # passes nothing changes: D∘Q∘D∘Q∘D∘Q = D∘Q∘D∘Q.
    x, blocksize, _ = args
    x = _positive_peaks(x, blocksize)

    def round_trip(v):
        return int8.dequantize_blockwise(*int8.quantize_blockwise(v, blocksize=blocksize))

    y2 = round_trip(round_trip(x))
    assert np.array_equal(round_trip(y2), y2)


@given(blockwise_inputs(max_blocks=2))
@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_blockwise_backend_parity(xp, args):
    from refquant._backend import from_numpy, to_numpy

    x, blocksize, _ = args
    q_np, s_np = int8.quantize_blockwise(x, blocksize=blocksize)
    q, s = int8.quantize_blockwise(from_numpy(x, xp=xp), blocksize=blocksize)
    assert np.array_equal(to_numpy(q), q_np) and np.array_equal(to_numpy(s.absmax), s_np.absmax)
    assert np.array_equal(_bits(to_numpy(int8.dequantize_blockwise(q, s))), _bits(int8.dequantize_blockwise(q_np, s_np)))


def test_blockwise_bad_input():
    for bad in (0, -64, 64.0, True):   # any positive integer is a block size, as in bitsandbytes' CPU kernel
        with pytest.raises(ValueError, match="blocksize: expected an integer >= 1"):
            int8.quantize_blockwise(np.ones(64, np.float32), blocksize=bad)
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        int8.quantize_blockwise(np.array([1.0, np.nan], np.float32), blocksize=64)
    with pytest.raises(ValueError, match="code: expected 256 sorted"):
        int8.quantize_blockwise(np.ones(64, np.float32), code=np.linspace(-1, 1, 16), blocksize=64)
    q, state = int8.quantize_blockwise(np.ones(100, np.float32), blocksize=64)
    with pytest.raises(TypeError, match="state: expected a BlockwiseState"):
        int8.dequantize_blockwise(q, {"absmax": state.absmax})
    with pytest.raises(TypeError, match="q: expected uint8"):
        int8.dequantize_blockwise(q.astype(np.int16), state)
    with pytest.raises(ValueError, match="state: absmax has 2 blocks"):
        int8.dequantize_blockwise(np.zeros(200, np.uint8), state)


# ---------------------------------------------------------------------------- LLM.int8()

@st.composite
def activations(draw, dtype=None):
    """(X, W, threshold, dtype): activations with a few large feature columns (the paper's
    systematic outliers), weights ~ N(0, 0.05²), sometimes a zero row."""
    dtype = dtype or draw(st.sampled_from(["float16", "float32", "bfloat16"]))
    M, K, N = draw(st.integers(1, 9)), draw(st.sampled_from([8, 16, 64, 96])), draw(st.integers(1, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    X = rng.standard_normal((M, K))
    cols = rng.choice(K, size=draw(st.integers(0, 3)), replace=False)
    X[:, cols] *= draw(st.sampled_from([4.0, 10.0, 60.0]))
    if M > 1 and draw(st.booleans()):
        X[rng.integers(M)] = 0.0
    W = rng.standard_normal((N, K)) * 0.05
    threshold = draw(st.sampled_from([0.0, 6.0, 3.5, 20.0]))
    return X.astype(np.float32), W.astype(np.float32), threshold, dtype


# A found case: -0.04794 (fp16) · 127/0.09589 is -63.5 with a true division but -63.499996
# with torch's reciprocal-then-multiply, which rounds to -63, not -64
_TIE_ROW = np.array([[0.04432142, -0.00819076, -0.04745061, 0.07642327, -0.04795165, 0.00073927, -0.0861112,
                      0.02764195, 0.01538086, -0.01216933, 0.00926399, 0.06169689, -0.00888992, 0.0008877,
                      -0.09589913, 0.06373513]], np.float32)


@given(activations())
@example((_TIE_ROW, _TIE_ROW, 0.0, "float16"))
@settings(max_examples=80)
def test_vectorwise_quant_matches_bitsandbytes(args):
    X, W, threshold, dtype = args
    Xt = _torch(X, dtype)
    ref = bnb_int8_vectorwise_quant(Xt, threshold)
    Q, s, O = int8.int8_vectorwise_quant(Xt, threshold)
    assert np.array_equal(Q.numpy(), ref["Q"]) and np.array_equal(_bits(s), _bits(ref["s"]))
    assert (O is None) == (ref["outlier_cols"] is None)
    if O is not None:
        assert np.array_equal(O.numpy(), ref["outlier_cols"])


@given(activations(dtype="float16"))
@settings(max_examples=60)
def test_int8_matmul_pieces_match_bitsandbytes(args):
    X, W, threshold, _ = args
    X16, W16 = X.astype(np.float16), W.astype(np.float16)
    QX, s, _ = int8.int8_vectorwise_quant(X16, threshold)
    QW, t, _ = int8.int8_vectorwise_quant(W16)
    C = int8.int8_linear_matmul(QX, QW)
    assert C.dtype == np.int32 and np.array_equal(C, bnb_int8_linear_matmul(QX, QW))
    assert np.array_equal(_bits(int8.int8_mm_dequant(C, s, t)), _bits(bnb_int8_mm_dequant(C, s, t)))
    assert np.array_equal(_bits(int8.int8_vectorwise_dequant(QW, t)), _bits(bnb_int8_vectorwise_dequant(QW, t)))


@given(activations(dtype="float16"))
@settings(max_examples=60)
def test_mixed_matmul_matches_bitsandbytes_to_fp16_rounding(args):
    # bitsandbytes returns float16: the int8 part rounded to float16, the dequantized outlier
    # weights rounded to float16, and their sum rounded to float16 again; we keep float32.
    # So |ours - theirs| ≤ 2^-11 (|Y_int| + |Y| + Σ_{j∈O} |X_ij Ŵ_oj|) + float32 slack.
    X, W, threshold, _ = args
    X16, W16 = X.astype(np.float16), W.astype(np.float16)
    ref = bnb_int8_mixed_scaled_mm(X16, W16, threshold)
    Y, O = int8.int8_matmul(X16, W16, threshold)
    QX, s, _ = int8.int8_vectorwise_quant(X16, threshold)
    assert np.array_equal(QX, ref["QX"])
    QW, t, _ = int8.int8_vectorwise_quant(W16)
    Y_int = int8.int8_mm_dequant(int8.int8_linear_matmul(QX, QW), s, t).astype(np.float64)
    W_hat = int8.int8_vectorwise_dequant(QW, t).astype(np.float64)
    out_mass = np.zeros_like(Y_int)
    if O is not None and O.size:
        out_mass = np.abs(X16[:, O].astype(np.float64)) @ np.abs(W_hat[:, O]).T
    bound = 2.0**-11 * (np.abs(Y_int) + np.abs(Y) + out_mass) + 2.0**-20 * (np.abs(Y_int) + out_mass)
    assert np.all(np.abs(Y - ref["Y"].astype(np.float64)) <= bound)


@given(activations(dtype="float32"))
def test_decomposition_error_bound_and_exact_outliers(args):
    # Against X·Ŵᵀ (the weight as int8 stores it), only the non-outlier activations are
    # rounded, each by at most s_i/254: |Y - XŴᵀ| ≤ (s_i/254) Σ_{j∉O} |Ŵ_oj| (+ float32
    # slack). The outlier columns, however large, add nothing to the error.
    X, W, threshold, _ = args
    Y, O = int8.int8_matmul(X, W, threshold)
    QX, s, _ = int8.int8_vectorwise_quant(X, threshold)
    QW, t, _ = int8.int8_vectorwise_quant(W)
    W_hat = int8.int8_vectorwise_dequant(QW, t).astype(np.float64)
    regular = np.ones(X.shape[1], bool)
    if O is not None:
        regular[O] = False
        assert np.all(QX[:, O] == 0) if X.shape[0] > 1 else True
    exact = X.astype(np.float64) @ W_hat.T
    bound = (s.astype(np.float64)[:, None] / 254) * (np.abs(W_hat[:, regular]).sum(axis=1)[None, :])
    slack = (X.shape[1] + 8) * 2.0**-23 * (np.abs(X).astype(np.float64) @ np.abs(W_hat).T)
    err = np.abs(Y - exact)
    target(float(np.max(err / np.maximum(bound + slack, 1e-30))))
    assert np.all(err <= bound + slack)


def test_llm_int8_hand_example():
    # A = [[1, -2, 0.5]]: s = 2, 127/2 = 63.5 -> [63.5, -127, 31.75] -> half-even [64, -127, 32]
    Q, s, O = int8.int8_vectorwise_quant(np.array([[1.0, -2.0, 0.5]], np.float32))
    assert Q.tolist() == [[64, -127, 32]] and s.tolist() == [2.0] and O is None
    # with τ = 1.5 the -2 is an outlier: held out, s = 1 -> [127, 0, 64 (63.5 to even)]
    Q, s, O = int8.int8_vectorwise_quant(np.array([[1.0, -2.0, 0.5]], np.float32), threshold=1.5)
    assert Q.tolist() == [[127, 0, 64]] and s.tolist() == [1.0] and O.tolist() == [1]


def test_llm_int8_bad_input():
    with pytest.raises(ValueError, match="A: expected a 2-D matrix"):
        int8.int8_vectorwise_quant(np.ones(4, np.float32))
    with pytest.raises(ValueError, match="threshold: expected a non-negative"):
        int8.int8_vectorwise_quant(np.ones((2, 4), np.float32), threshold=-1.0)
    with pytest.raises(ValueError, match="A: contains NaN or Inf"):
        int8.int8_vectorwise_quant(np.array([[1.0, np.inf]], np.float32))
    with pytest.raises(TypeError, match="QA: expected a 2-D int8 matrix"):
        int8.int8_linear_matmul(np.ones((2, 4), np.int32), np.ones((3, 4), np.int8))
    with pytest.raises(ValueError, match="QB: inner dimension 5"):
        int8.int8_linear_matmul(np.ones((2, 4), np.int8), np.ones((3, 5), np.int8))
    with pytest.raises(ValueError, match="X, W: expected"):
        int8.int8_matmul(np.ones((2, 4), np.float32), np.ones((3, 5), np.float32))


@given(activations(dtype="float32"))
@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_llm_int8_backend_parity(xp, args):
    from refquant._backend import from_numpy, to_numpy

    X, W, threshold, _ = args
    Y_np, O_np = int8.int8_matmul(X, W, threshold)
    Y, O = int8.int8_matmul(from_numpy(X, xp=xp), from_numpy(W, xp=xp), threshold)
    assert np.array_equal(_bits(to_numpy(Y)), _bits(Y_np))


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    rng = np.random.default_rng(0)
    x = rng.standard_normal(10_000).astype(np.float32)
    q_np, s_np = int8.quantize_blockwise(x, blocksize=256)
    q, s = int8.quantize_blockwise(cupy.asarray(x), blocksize=256)
    assert np.array_equal(cupy.asnumpy(q), q_np)
    X = rng.standard_normal((16, 64)).astype(np.float32) * np.where(np.arange(64) == 5, 30, 1).astype(np.float32)
    W = rng.standard_normal((32, 64)).astype(np.float32)
    Y_np, _ = int8.int8_matmul(X, W)
    Y, _ = int8.int8_matmul(cupy.asarray(X), cupy.asarray(W))
    assert np.array_equal(_bits(cupy.asnumpy(Y)), _bits(Y_np))


@pytest.mark.parametrize("n, blocksize, dtype", [(3 * 16384 + 4096 + 100, 4096, "float16"), (50000, 64, "float32"),
                                                (33000, 100, "float32"), (20 * 1024 + 7, 1024, "float32"),
                                                (6 * 2048, 2048, "float16")])
def test_numpy_blockwise_decode_through_chunks_matches_bitsandbytes(n, blocksize, dtype):
    """NumPy codes decoded chunk by chunk equal bitsandbytes' dequantize_blockwise: several chunks,
    a short tail block, a zero block (code 0 = -0.0 · m) and a subnormal block."""
    x = np.random.default_rng(n).standard_t(4, n).astype(np.float32) * np.float32(0.02)
    x[blocksize: 2 * blocksize] = 0.0
    x[2 * blocksize: 3 * blocksize] *= np.float32(1e-39) / np.float32(0.02)
    q, state = int8.quantize_blockwise(x.astype(dtype), blocksize=blocksize)
    expected = bnb_dequantize_blockwise(q, state.absmax, blocksize, dtype)
    ours = int8.dequantize_blockwise(q, state)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.dtype(dtype)
    assert np.array_equal(_bits(ours), _bits(expected))
