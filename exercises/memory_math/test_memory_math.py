"""Checker for the memory arithmetic: exact integers of bytes, against refquant's accounting
(Llama-2-13B shapes) and against the bytes refquant produces (a small random Llama).

    EXERCISE=my_attempt python -m pytest exercises/memory_math -q
"""

from __future__ import annotations

import numpy as np
import pytest

from refquant import gguf, nf4, uniform as U
from refquant.exercises import attempt, load_attempt
from refquant.gguf import recipes

ex = load_attempt(__file__)  # EXERCISE=solution (default) | starter | any file of this folder

NF4_BLOCK = 64  # the blocksize nf4_bytes counts (README.md)


def llama_shapes(n_layer: int, d: int, n_ff: int, vocab: int) -> dict[str, tuple[int, int]]:
    """{GGUF name: (rows, cols)} of a Llama's weight matrices, untied output, no GQA."""
    shapes = {"token_embd.weight": (vocab, d), "output.weight": (vocab, d)}
    for i in range(n_layer):
        shapes.update({f"blk.{i}.{k}.weight": (d, d) for k in ("attn_q", "attn_k", "attn_v", "attn_output")})
        shapes.update({f"blk.{i}.ffn_gate.weight": (n_ff, d), f"blk.{i}.ffn_up.weight": (n_ff, d),
                       f"blk.{i}.ffn_down.weight": (d, n_ff)})
    return shapes


LLAMA2_13B = dict(n_layer=40, d=5120, n_ff=13824, vocab=32000)
SHAPES_13B = llama_shapes(**LLAMA2_13B)
SMALL = dict(n_layer=8, d=256, n_ff=512, vocab=64)  # every rule of the mixture fires; k-quant rows fit 256
SHAPES_SMALL = llama_shapes(**SMALL)


@pytest.fixture(scope="module")
def small_weights():
    rng = np.random.default_rng(0)
    return {n: (rng.standard_normal(s) * 0.02).astype(np.float32) for n, s in SHAPES_SMALL.items()}


def _exact(x: float) -> int:
    assert float(x).is_integer(), f"the reference accounting gave a fractional byte count {x}"
    return int(x)


def _compare(got, expected, fn, shapes, per_tensor, hint, *args):
    """Equal totals, or the first tensor whose own count differs (the learner's fn on it alone)."""
    assert isinstance(got, (int, np.integer)), f"{fn.__name__}: return an int of bytes, got {type(got).__name__} {got!r}"
    if got == expected:
        return
    for name, shape in shapes.items():
        mine, ref = fn({name: shape}, *args), per_tensor(name, shape)
        if mine != ref:
            pytest.fail(f"{fn.__name__}: {name} {shape}: expected {ref:,} bytes, got {mine:,}\nhint: {hint}", pytrace=False)
    pytest.fail(f"{fn.__name__}: total expected {expected:,} bytes, got {got:,} (every tensor alone is right: "
                f"do you add them all?)", pytrace=False)


def test_fp16_13b():
    got = attempt(ex.fp16_bytes, SHAPES_13B)
    per = lambda name, s: _exact(U.model_size_bytes(s[0] * s[1], 16))  # noqa: E731
    _compare(got, sum(per(n, s) for n, s in SHAPES_13B.items()), ex.fp16_bytes, SHAPES_13B, per, "2 bytes per weight")


@pytest.mark.parametrize("G", [32, 64, 128])
@pytest.mark.parametrize("zero_bits", [0, 4])
def test_int4_groups_13b(G, zero_bits):
    got = attempt(ex.int_group_bytes, SHAPES_13B, 4, G, zero_bits)
    per = lambda name, s: _exact(U.model_size_bytes(s[0] * s[1], 4, G, 16, zero_bits))  # noqa: E731
    _compare(got, sum(per(n, s) for n, s in SHAPES_13B.items()), ex.int_group_bytes, SHAPES_13B, per,
             "codes n·b/8, plus 2 bytes of scale and zero_bits/8 bytes of zero-point per group of G "
             "(rows · cols/G groups)", 4, G, zero_bits)


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_13b(double_quant):
    got = attempt(ex.nf4_bytes, SHAPES_13B, double_quant)
    # bits_per_parameter leaves out the float32 mean μ of each matrix ("negligible"): add its 4 bytes
    mu = 4 if double_quant else 0
    per = lambda name, s: _exact(s[0] * s[1] * nf4.bits_per_parameter(NF4_BLOCK, double_quant) / 8) + mu  # noqa: E731
    _compare(got, sum(per(n, s) for n, s in SHAPES_13B.items()), ex.nf4_bytes, SHAPES_13B, per,
             "4-bit codes, then per block of 64 a float32 absmax — or with double quantization one byte, "
             "plus a float32 per 256 blocks and a float32 μ per matrix", double_quant)


def _reference_types(shapes, ftype, n_layer):
    entries = {n: ("F16", s) for n, s in shapes.items()}
    info = recipes.ModelInfo(arch="llama", n_layer=n_layer, n_head=40, n_head_kv=40)
    return recipes.tensor_types(entries, ftype, info)


@pytest.mark.parametrize("ftype", ["Q4_0", "Q4_K_M"])
def test_gguf_types_13b(ftype):
    got = attempt(ex.gguf_types, SHAPES_13B, ftype, LLAMA2_13B["n_layer"])
    expected = _reference_types(SHAPES_13B, ftype, LLAMA2_13B["n_layer"])
    for name in recipes.llama_order(SHAPES_13B):
        if got.get(name) != expected[name]:
            pytest.fail(f"gguf_types({ftype}): {name}: expected {expected[name]}, got {got.get(name)}\n"
                        f"hint: output.weight is special; attn_v/ffn_down follow use_more_bits(i, n_layer) in Q4_K_M",
                        pytrace=False)


@pytest.mark.parametrize("ftype", ["Q4_0", "Q4_K_M"])
def test_gguf_bytes_13b(ftype):
    types = _reference_types(SHAPES_13B, ftype, LLAMA2_13B["n_layer"])
    got = attempt(ex.gguf_bytes, SHAPES_13B, types)
    per = lambda name, s: s[0] * gguf.row_bytes(types[name], s[1])  # noqa: E731
    _compare(got, sum(per(n, s) for n, s in SHAPES_13B.items()), ex.gguf_bytes, SHAPES_13B, per,
             "rows · (cols / QK) · type_size bytes of the tensor's own type", types)


# --------------------------------------------------------------------------- the bytes refquant writes


@pytest.mark.parametrize("G, zero_bits", [(32, 0), (64, 4), (128, 4)])
def test_int4_groups_real_bytes(small_weights, G, zero_bits):
    got = attempt(ex.int_group_bytes, SHAPES_SMALL, 4, G, zero_bits)
    real = 0
    for W in small_weights.values():
        qt = U.quantize(W, 4, symmetric=False, granularity="group", group_size=G, signed=False)
        real += U.pack_codes(qt.q, 4, signed=False).nbytes + qt.s.astype(np.float16).nbytes
        if zero_bits:
            real += U.pack_codes(qt.z.reshape(-1).astype(np.int32), zero_bits, signed=False).nbytes
    assert got == real, f"int_group_bytes on the small model: refquant writes {real:,} bytes, you count {got:,}"


@pytest.mark.parametrize("double_quant", [False, True])
def test_nf4_real_bytes(small_weights, double_quant):
    got = attempt(ex.nf4_bytes, SHAPES_SMALL, double_quant)
    real = 0
    for W in small_weights.values():
        packed, state = nf4.quantize_4bit(W, NF4_BLOCK, "nf4", double_quant)
        real += packed.nbytes + state.absmax.nbytes
        if double_quant:
            real += state.state2.absmax.nbytes + np.asarray(state.offset).nbytes
    assert got == real, f"nf4_bytes on the small model: refquant's QuantState holds {real:,} bytes, you count {got:,}"


@pytest.mark.parametrize("ftype", ["Q4_0", "Q4_K_M"])
def test_gguf_real_bytes(small_weights, ftype):
    types = attempt(ex.gguf_types, SHAPES_SMALL, ftype, SMALL["n_layer"])
    expected_types = _reference_types(SHAPES_SMALL, ftype, SMALL["n_layer"])
    assert types == expected_types, f"gguf_types({ftype}) on the small model ({SMALL['n_layer']} layers) differs"
    got = attempt(ex.gguf_bytes, SHAPES_SMALL, types)
    real = sum(gguf.quantize(W, types[n]).nbytes for n, W in small_weights.items())
    assert got == real, f"gguf_bytes on the small model: refquant.gguf.quantize writes {real:,} bytes, you count {got:,}"
