"""NF4 / FP4 blockwise 4-bit and double quantization (refquant.nf4) against bitsandbytes on the CPU."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings, strategies as st, target

from refquant import nf4
from refquant.int8 import BlockwiseState
from refquant.testing import strategies as st_rq
from refquant.testing.bnb import bnb_code, bnb_quantize_4bit, dequantize_4bit_path

DTYPES = ("float32", "float16", "bfloat16")


# ---------------------------------------------------------------------------- strategies

def _midpoint_block(rng: np.random.Generator, n: int, quant_type: str) -> np.ndarray:
    """Exact midpoints between neighbouring codes, with absmax pinned to a power of two so
    that x·(1/m) is exact: the tie rule (to the lower code) is what decides every value."""
    srt = np.sort(nf4.CODES[quant_type])
    mids = (srt[:-1] + srt[1:]) / np.float32(2)
    scale = np.float32(2.0) ** rng.integers(-6, 6)
    x = rng.choice(mids, n) * scale
    x[rng.integers(n)] = scale * rng.choice([-1.0, 1.0])
    return x


@st.composite
def bnb_inputs(draw, max_blocks: int = 3):
    """(x, blocksize, quant_type, dtype): blocks of the shared edge kinds plus code midpoints,
    a length that often leaves a tail block (and sometimes an odd count), any 2-D shape."""
    quant_type = draw(st.sampled_from(["nf4", "fp4"]))
    blocksize = draw(st.sampled_from(nf4.BLOCKSIZES))
    dtype = draw(st.sampled_from(DTYPES))
    n_blocks = draw(st.integers(1, max_blocks))
    kinds = st_rq.KINDS + ("midpoints",)
    picks = draw(st.lists(st.sampled_from(kinds), min_size=n_blocks, max_size=n_blocks))
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-3, 0.02, 1.0, 30.0]))
    rng = np.random.default_rng(seed)
    parts = [_midpoint_block(rng, blocksize, quant_type) if k == "midpoints"
             else draw(st_rq.ordinary_block(k, blocksize, scale)) for k in picks]
    x = np.concatenate(parts)
    cut = draw(st.sampled_from([0, 0, 1, 3, blocksize // 2]))  # leave a tail block
    x = x[: max(1, x.size - cut)]
    cols = draw(st.sampled_from([c for c in (1, 2, 3, 4, 8) if x.size % c == 0]))
    with np.errstate(over="ignore"):
        x = x.astype(np.float32).reshape(-1, cols) if cols > 1 else x.astype(np.float32)
    x = np.clip(x, -6.5e4, 6.5e4)  # the float16 range; fp16_edge blocks sit just inside it
    return x, blocksize, quant_type, dtype


def _as_dtype(x: np.ndarray, dtype: str):
    """The input as bitsandbytes sees it: a torch tensor of that dtype (bfloat16 needs torch)."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(x)).to(getattr(torch, dtype))


def _bits(a) -> np.ndarray:
    """Bit patterns of a float array (torch or NumPy), to compare values *and* signs of zero."""
    import torch

    if isinstance(a, torch.Tensor):
        a = a.float() if a.dtype == torch.bfloat16 else a
        a = a.numpy()
    a = np.ascontiguousarray(a)
    return a.view({2: np.uint16, 4: np.uint32}[a.dtype.itemsize])


# ---------------------------------------------------------------------------- code books

def test_nf4_code_is_bitsandbytes_table():
    assert np.array_equal(_bits(nf4.nf4_code()), _bits(bnb_code("nf4")))


def test_nf4_construction_properties():
    c = nf4.nf4_code()
    assert c.dtype == np.float32 and c.shape == (16,)
    assert np.all(np.diff(c) > 0)
    assert (c[0], c[7], c[15]) == (-1.0, 0.0, 1.0)        # exact extremes and an exact zero
    assert np.sum(c < 0) == 7 and np.sum(c > 0) == 8       # the asymmetric halves
    sym = nf4.create_normal_map(use_extra_value=False)
    assert np.sum(sym < 0) == 7 and np.sum(sym > 0) == 7   # without the extra value: 7 + 7 (+ 0, twice)


def test_fp4_code_is_bitsandbytes_table():
    # bit for bit, +0.0 at pattern 8 included (its scalar C++ table alone has -0.0 there)
    assert np.array_equal(_bits(nf4.fp4_code()), _bits(bnb_code("fp4")))
    assert not np.signbit(nf4.fp4_code()[8])


def test_fp4_values_by_hand():
    # |v|·12 for patterns 0..7: 0, 2^-4, (1+0/2)2^3, (1+1/2)2^3, 2^2, 1.5·2^2, 2^1, 1.5·2^1
    assert (nf4.fp4_code()[:8] * 12).tolist() == [0, 0.0625, 8, 12, 4, 6, 2, 3]
    assert np.array_equal(nf4.fp4_code()[8:], -nf4.fp4_code()[:8])  # -0.0 == 0.0 at pattern 8


# ---------------------------------------------------------------------------- parity

def _compare_with_bnb(x, blocksize, quant_type, dtype, double_quant):
    xt = _as_dtype(x, dtype)
    ref = bnb_quantize_4bit(xt, blocksize=blocksize, quant_type=quant_type, double_quant=double_quant)
    packed, state = nf4.quantize_4bit(xt, blocksize=blocksize, quant_type=quant_type, double_quant=double_quant)
    assert packed.numpy().tobytes() == ref["packed"].tobytes()
    assert packed.shape == ref["packed"].shape
    if double_quant:
        note(f"offset ours {state.offset.item()!r} bnb {ref['offset']!r}")
        return state, ref
    assert np.array_equal(_bits(state.absmax), _bits(ref["absmax"]))
    _compare_dequantized(nf4.dequantize_4bit(packed, state), ref, blocksize, quant_type, x.shape)
    return state, ref


def _compare_dequantized(ours, ref, blocksize, quant_type, shape):
    path = dequantize_4bit_path(blocksize, shape)
    # bitsandbytes' AVX-512 kernel scales rows with the wrong absmax when rows and blocks do
    # not align (refquant.nf4 docstring); its flat decoding of the same bytes is right
    theirs = ref["dequantized_flat"] if path == "avx512-misaligned" else ref["dequantized"]
    if quant_type == "fp4" and path == "scalar":
        # the portable C++ loop writes -0.0 for FP4 pattern 8, we (and the Python table, the
        # torch and AVX-512 paths) +0.0: equal values, bit-identical everywhere else
        assert np.array_equal(_bits(ours)[theirs != 0], _bits(theirs)[theirs != 0])
        assert np.all(np.asarray(ours.float() if hasattr(ours, "float") else ours)[theirs == 0] == 0)
    else:
        assert np.array_equal(_bits(ours), _bits(theirs))


@given(bnb_inputs())
@settings(max_examples=150)
def test_quantize_4bit_matches_bitsandbytes(args):
    x, blocksize, quant_type, dtype = args
    _compare_with_bnb(x, blocksize, quant_type, dtype, double_quant=False)


@given(bnb_inputs(max_blocks=6))
@settings(max_examples=100)
def test_double_quant_matches_bitsandbytes(args):
    x, blocksize, quant_type, dtype = args
    state, ref = _compare_with_bnb(x, blocksize, quant_type, dtype, double_quant=True)
    # offset μ (a float32 mean summed in torch's order), the 8-bit codes of absmax - μ,
    # their per-256 absmax and code book, and the values decoded through both levels
    assert _bits(np.float32(state.offset)) == _bits(ref["offset"])
    assert np.array_equal(state.absmax.numpy(), ref["absmax"])
    assert state.state2.blocksize == ref["nested_blocksize"] == 256
    assert np.array_equal(_bits(state.state2.absmax), _bits(ref["nested_absmax"]))
    assert np.array_equal(_bits(state.state2.code), _bits(ref["nested_code"]))
    packed = nf4.quantize_4bit(_as_dtype(x, dtype), blocksize=blocksize, quant_type=quant_type)[0]
    _compare_dequantized(nf4.dequantize_4bit(packed, state), ref, blocksize, quant_type, x.shape)


@pytest.mark.parametrize("shape, blocksize, quant_type", [((96, 3200), 32, "nf4"), ((512, 1000), 64, "fp4"),
                                                       ((1, 1_000_003), 128, "nf4")])
def test_double_quant_many_blocks(shape, blocksize, quant_type):
    # thousands of blocks: the offset's cascade summation pushes through its upper levels,
    # and the nested 8-bit quantization spans many blocks of 256
    x = (np.random.default_rng(blocksize).standard_t(3, shape) * 0.02).astype(np.float32)
    ref = bnb_quantize_4bit(x, blocksize, quant_type, double_quant=True)
    packed, state = nf4.quantize_4bit(x, blocksize, quant_type, double_quant=True)
    assert packed.tobytes() == ref["packed"].tobytes()
    assert _bits(np.float32(state.offset)) == _bits(ref["offset"])
    assert np.array_equal(state.absmax, ref["absmax"])
    assert np.array_equal(_bits(state.state2.absmax), _bits(ref["nested_absmax"]))
    _compare_dequantized(nf4.dequantize_4bit(packed, state), ref, blocksize, quant_type, shape)


@given(st.integers(1, 5000).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, 2**32 - 1))))
@settings(max_examples=80)
def test_torch_sum_order(args):
    # torch's float32 CPU sum (one thread), the sum behind bitsandbytes' offset; values of
    # mixed magnitudes so that the order of additions shows in the last bits
    import torch

    n, seed = args
    rng = np.random.default_rng(seed)
    v = (np.abs(rng.standard_normal(n)) * 10.0 ** rng.uniform(-3, 2, n)).astype(np.float32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        expected = torch.from_numpy(v).sum()
    finally:
        torch.set_num_threads(threads)
    assert _bits(nf4.torch_sum_f32(v)) == _bits(expected.numpy())


def test_one_hot_block_decodes_at_its_index():
    # a single 1.0 at position j of a zero block must come back at j: catches nibble order
    for quant_type in ("nf4", "fp4"):
        for j in range(64):
            x = np.zeros(64, np.float32)
            x[j] = 1.0
            packed, state = nf4.quantize_4bit(x, 64, quant_type)
            y = nf4.dequantize_4bit(packed, state)
            assert np.nonzero(y)[0].tolist() == [j] and y[j] == 1.0


def test_hand_worked_bytes():
    # one NF4 block [1.0, -0.5, 0, ..., 0]: m = 1; 1.0 -> code 15, -0.5 -> 2 (-0.525; the
    # midpoint to code 3 (-0.395) is -0.460), 0 -> 7; first code in the high nibble
    x = np.zeros(64, np.float32)
    x[:2] = [1.0, -0.5]
    packed, state = nf4.quantize_4bit(x, 64, "nf4")
    assert packed.shape == (32, 1)
    assert packed[:2, 0].tolist() == [0xF2, 0x77]
    assert state.absmax.tolist() == [1.0]


# ---------------------------------------------------------------------------- properties

@given(bnb_inputs())
def test_error_bound(args):
    x, blocksize, quant_type, _ = args
    packed, state = nf4.quantize_4bit(x, blocksize, quant_type)
    y = nf4.dequantize_4bit(packed, state)
    m = np.repeat(state.absmax, blocksize)[: x.size].reshape(x.shape).astype(np.float64)
    # nearest code: |y - c| ≤ gap/2; plus float32 rounding of x·(1/m) and of c·m, each
    # within 2^-24 relative of m: total slack below m·2^-22
    bound = m * (nf4.max_code_gap(quant_type) / 2 + 2.0**-22)
    err = np.abs(x.astype(np.float64) - y)
    target(float(np.max(err / np.maximum(bound, 1e-30))))
    assert np.all(err <= bound)


@given(bnb_inputs())
def test_dequantize_is_idempotent(args):
    # Q(D(Q(x))) decodes to the same values (codes can swap FP4's two zeros: -0.0 re-quantizes
    # to pattern 0, and a tail block's clamped absmax 1e-38 decodes zeros either way)
    x, blocksize, quant_type, _ = args
    packed, state = nf4.quantize_4bit(x, blocksize, quant_type)
    y = nf4.dequantize_4bit(packed, state)
    packed2, state2 = nf4.quantize_4bit(y, blocksize, quant_type)
    assert np.array_equal(nf4.dequantize_4bit(packed2, state2), y)


@given(bnb_inputs(), st.integers(-8, 8))
def test_power_of_two_scaling_commutes(args, k):
    # scaling by 2^k scales absmax by 2^k and leaves the codes alone (no rounding happens)
    x, blocksize, quant_type, _ = args
    s = np.float32(2.0**k)
    if np.max(np.abs(x)) * s > 1e30 or np.any((x != 0) & (np.abs(x * s) < 1e-30)):
        return  # keep away from float32 over/underflow
    p1, st1 = nf4.quantize_4bit(x, blocksize, quant_type)
    p2, st2 = nf4.quantize_4bit(x * s, blocksize, quant_type)
    full = x.size // blocksize
    assert np.array_equal(st2.absmax[:full], st1.absmax[:full] * s)
    if x.size % blocksize == 0:
        assert np.array_equal(p1, p2)


def test_tail_block_and_zero_blocks():
    x = np.zeros(64 + 3, np.float32)
    packed, state = nf4.quantize_4bit(x, 64, "nf4")
    # a zero full block keeps absmax 0; a zero tail block stores bitsandbytes' clamp 1e-38
    assert state.absmax[0] == 0.0 and state.absmax[1] == np.float32(1e-38)
    assert packed.shape == (34, 1) and np.all(nf4.dequantize_4bit(packed, state) == 0)
    ref = bnb_quantize_4bit(x, 64, "nf4")
    assert np.array_equal(_bits(state.absmax), _bits(ref["absmax"])) and packed.tobytes() == ref["packed"].tobytes()


# ---------------------------------------------------------------------------- memory

def test_double_quant_memory_arithmetic():
    assert nf4.bits_per_parameter(64) == 4.5
    assert nf4.bits_per_parameter(64, double_quant=True) == pytest.approx(4.127, abs=5e-4)
    # and the arrays really are that size: 4096·4096 weights
    n = 4096 * 64
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    packed, state = nf4.quantize_4bit(x, 64, "nf4", double_quant=True)
    stored_bits = 8 * (packed.nbytes + state.absmax.nbytes + state.state2.absmax.nbytes)
    assert stored_bits / n == pytest.approx(nf4.bits_per_parameter(64, True), rel=1e-3)


# ---------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, err, match", [
    ({"blocksize": 48}, ValueError, "blocksize: expected one of"),
    ({"blocksize": 16}, ValueError, "blocksize"),
    ({"quant_type": "int4"}, ValueError, "quant_type: expected 'nf4' or 'fp4'"),
])
def test_bad_arguments(kwargs, err, match):
    with pytest.raises(err, match=match):
        nf4.quantize_4bit(np.ones(64, np.float32), **kwargs)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_rejected(bad):
    x = np.ones(64, np.float32)
    x[5] = bad
    with pytest.raises(ValueError, match="x: contains NaN or Inf"):
        nf4.quantize_4bit(x)


def test_wrong_input_dtype_and_state():
    with pytest.raises(TypeError, match="x: expected a real floating-point"):
        nf4.quantize_4bit(np.ones(64, np.int32))
    with pytest.raises(TypeError, match="x: expected float16, bfloat16 or float32"):
        nf4.quantize_4bit(np.ones(64, np.float64))
    packed, state = nf4.quantize_4bit(np.ones(128, np.float32))
    with pytest.raises(TypeError, match="state: expected a QuantState"):
        nf4.dequantize_4bit(packed, BlockwiseState(state.absmax, None, 64, np.float32, (128,)))
    with pytest.raises(ValueError, match="packed: 32 bytes do not hold"):
        nf4.dequantize_4bit(packed[:32], state)
    with pytest.raises(TypeError, match="packed: expected uint8"):
        nf4.dequantize_4bit(packed.astype(np.int8), state)
    import dataclasses

    with pytest.raises(ValueError, match="state: absmax has 1 blocks, expected 2"):
        nf4.dequantize_4bit(packed, dataclasses.replace(state, absmax=state.absmax[:1]))
    with pytest.raises(ValueError, match="quant_type"):
        nf4.dequantize_4bit(packed, dataclasses.replace(state, quant_type="af4"))


# ---------------------------------------------------------------------------- backends

@given(bnb_inputs(max_blocks=2), st.booleans())
@settings(max_examples=10, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_backend_parity(xp, args, double_quant):
    from refquant._backend import from_numpy, to_numpy

    x, blocksize, quant_type, _ = args
    p_np, s_np = nf4.quantize_4bit(x, blocksize, quant_type, double_quant)
    xa = from_numpy(x, xp=xp)
    p, s = nf4.quantize_4bit(xa, blocksize, quant_type, double_quant)
    assert np.array_equal(to_numpy(p), p_np)
    assert np.array_equal(to_numpy(s.absmax), to_numpy(s_np.absmax))
    assert np.array_equal(_bits(to_numpy(nf4.dequantize_4bit(p, s))), _bits(nf4.dequantize_4bit(p_np, s_np)))


@pytest.mark.gpu
def test_cupy_matches_numpy():
    cupy = pytest.importorskip("cupy")
    x = np.random.default_rng(0).standard_normal((64, 300)).astype(np.float32)
    for quant_type in ("nf4", "fp4"):
        for double_quant in (False, True):
            p_np, s_np = nf4.quantize_4bit(x, 64, quant_type, double_quant)
            p, s = nf4.quantize_4bit(cupy.asarray(x), 64, quant_type, double_quant)
            assert np.array_equal(cupy.asnumpy(p), p_np)
            y = cupy.asnumpy(nf4.dequantize_4bit(p, s))
            assert np.array_equal(_bits(y), _bits(nf4.dequantize_4bit(p_np, s_np)))


@pytest.mark.parametrize("n, blocksize, quant_type, dtype, double_quant", [
    (5 * 16384 + 3 * 64 + 37, 64, "nf4", "float16", False),    # chunks, whole blocks after them, odd tail
    (2 * 16384 + 32 * 7, 32, "fp4", "float32", False),
    (3 * 16384 + 1, 4096, "nf4", "float16", True),             # one value in the tail block
    (40000, 256, "nf4", "float32", True),
])
def test_numpy_decode_through_chunks_matches_bitsandbytes(n, blocksize, quant_type, dtype, double_quant):
    """NumPy bytes decoded chunk by chunk (nf4._DECODE_CHUNK values) equal bitsandbytes' decoding,
    with a zero block, a subnormal block and a float16-overflow-sized block among them."""
    x = np.random.default_rng(n).standard_t(4, n).astype(np.float32) * np.float32(0.02)
    x[blocksize: 2 * blocksize] = 0.0                                   # an all-zero block
    x[3 * blocksize: 4 * blocksize] *= np.float32(1e-39) / np.float32(0.02)  # subnormal values
    if dtype == "float32":
        x[5 * blocksize] = np.float32(3e38)                            # c·m beyond float16
    x_np = x.astype(dtype)
    ref = bnb_quantize_4bit(_as_dtype(x_np, dtype), blocksize=blocksize, quant_type=quant_type,
                            double_quant=double_quant)
    packed, state = nf4.quantize_4bit(x_np, blocksize=blocksize, quant_type=quant_type, double_quant=double_quant)
    assert packed.tobytes() == ref["packed"].tobytes()
    ours = nf4.dequantize_4bit(packed, state)
    assert isinstance(ours, np.ndarray) and ours.dtype == x_np.dtype
    _compare_dequantized(ours, ref, blocksize, quant_type, x.shape)
