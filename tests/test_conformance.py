"""refquant.testing.conformance: refquant conforms to its own battery in every format and
direction; a failure names its block, field and bit; bad arguments are refused; the backends,
the command line (--impl) and the pytest plugin."""

from __future__ import annotations

import json

import numpy as np
import pytest

from refquant import cli, gguf
from refquant.testing import conformance as C
from refquant.testing.pytest_plugin import assert_conforms, conformance_test

import mutants as M

CASES = [(f, d) for f in C.format_names() for d in C.DIRECTIONS]


@pytest.mark.parametrize("fmt,direction", CASES, ids=[f"{f}-{d}" for f, d in CASES])
def test_refquant_conforms_to_its_own_battery(fmt, direction):
    """No false alarm: refquant's codec with the natural signature passes (every GGUF type of CODECS too)."""
    report = C.check(C.reference(fmt, direction), fmt, direction, examples=3, shrink=False,
                     properties=("edge parity", "bulk parity"))
    assert report.ok, report.table()


def test_a_failure_names_block_field_bit_and_cause():
    report = C.check(M.MUTANTS[0].fn, "Q4_0", examples=20, properties=["edge parity"])  # nibbles swapped
    f = report.first_failure.failure
    assert (f.field, f.cause) == ("qs", "nibble order (halves)")
    ours, theirs = int(f.ours, 16), int(f.theirs, 16)
    assert theirs == ((ours & 15) << 4) | (ours >> 4) and f.bit == (ours ^ theirs).bit_length() - 1
    raw = np.asarray(gguf.quantize(f.input, "Q4_0")).reshape(-1, 18)
    assert raw[f.block, 2 + f.element] == ours                                  # the value shown is refquant's byte
    assert "DOES NOT CONFORM" in report.table() and "qs[" in report.table()
    assert json.loads(report.to_json())["properties"][0]["failure"]["field"] == "qs"


def test_nonfinite_hidden_in_finite_bytes_fails():
    def q8_0_nan_as_zero(x):
        return np.asarray(gguf.quantize(np.nan_to_num(np.asarray(x), nan=0.0, posinf=0.0, neginf=0.0), "Q8_0"))

    report = C.check(q8_0_nan_as_zero, "Q8_0", examples=10, properties=["non-finite"], shrink=False)
    assert report.first_failure.failure.cause == "non-finite accepted"


def test_torch_backend_hands_torch_tensors():
    torch = pytest.importorskip("torch")
    seen = []

    def q8_0(x):
        seen.append(type(x))
        return gguf.quantize(x, "Q8_0")                                         # torch in, torch out

    assert C.check(q8_0, "Q8_0", examples=3, backend="torch", properties=["edge parity"], shrink=False).ok
    assert seen and all(t is torch.Tensor for t in seen)


@pytest.mark.parametrize("kwargs,message", [
    (dict(fmt="Q9_9"), "fmt: unknown format"),
    (dict(fmt="Q4_0", direction="sideways"), "direction:"),
    (dict(fmt="Q4_0", examples=0), "examples:"),
    (dict(fmt="Q4_0", imatrix=np.array([-1.0] * 32)), "imatrix:"),
    (dict(fmt="Q4_0", imatrix="yes"), "imatrix:"),
    (dict(fmt="Q4_0", properties=["speed"]), "properties:"),
    (dict(fmt="Q4_0", backend="jax"), "backend:"),
])
def test_bad_arguments_are_refused(kwargs, message):
    fmt = kwargs.pop("fmt")
    with pytest.raises(ValueError, match=message):
        C.check(M.reference_q4_0, fmt, **kwargs)


def test_cli_impl_exit_codes(capsys):
    assert cli.main(["verify", "--impl", "mutants:reference_q4_0", "--format", "Q4_0", "--examples", "3"]) == 0
    assert "CONFORMS" in capsys.readouterr().out
    assert cli.main(["verify", "--impl", "mutants:q4_0_round_half_even", "--format", "Q4_0", "--examples", "10",
                     "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and out["properties"][0]["failure"]["cause"] == "tie rounding"
    assert "bitsandbytes" in out["versions"] and "gguf" in out["versions"]
    for argv, message in ((["--impl", "no_such_module_x:f", "--format", "Q4_0"], "does not import"),
                          (["--impl", "mutants:no_such_fn", "--format", "Q4_0"], "has no attribute"),
                          (["--impl", "mutants", "--format", "Q4_0"], "package.module:function"),
                          (["--impl", "mutants:reference_q4_0", "--format", "Q9"], "unknown format")):
        assert cli.main(["verify", *argv]) == 2
        assert message in capsys.readouterr().err


def test_pytest_plugin_passes_and_fails():
    conformance_test(M.reference_q4_0, "Q4_0", examples=3)()
    with pytest.raises(pytest.fail.Exception, match="nibble order"):
        assert_conforms(M.MUTANTS[0].fn, "Q4_0", examples=10, shrink=False)


# ---------------------------------------------------------------------------------------
# torchao's NF4, int4 and GGUF paths on the CPU: each verdict pinned, so that a torchao release
# that changes one is noticed (torchao 0.18.0 when these were found; CI installs it)
# ---------------------------------------------------------------------------------------

# (adapter label, direction) -> None (conforms) or (first failing property, field, cause guess, refquant, torchao)
TORCHAO_VERDICTS = {
    # torchao keeps absmax double-quantized (int8 scalers): 0.49806 where the block's absmax is 0.5, so
    # x / absmax and the codes move; the table reads it as a scale rounded at another step. Its code
    # book is also rounded to 4 decimals (next test)
    ("torchao NF4", "quantize"): ("edge parity", "code", "scale rounding step", "0x2a", "0x3b"),
    # code 2 decodes as 0.5 · −0.5251 (torchao's book) where QLoRA's level is −0.5250730514526367
    ("torchao NF4", "dequantize"): ("edge parity", "decoded", "unknown", "-0.26253652572631836 (0xbe866b30)",
                                    "-0.2625499963760376 (0xbe866cf4)"),
    # an all-zero group: s = float32's smallest normal (choose_qparams_affine's eps) where refquant
    # stores 1.0; both decode to 0 exactly. The table has no cause for it: 'unknown'
    ("torchao int4 affine", "quantize"): ("edge parity", "s", "unknown", "1.0 (0x3f800000)",
                                          "1.1754943508222875e-38 (0x00800000)"),
    ("torchao int4 affine", "dequantize"): None,                   # (q − z) · s in float32: bit for bit
    # the same with Int4OpaqueTensor's eps = 1e-6
    ("torchao int4 tinygemm", "quantize"): ("edge parity", "s", "unknown", "1.0 (0x3f800000)",
                                            "9.999999974752427e-07 (0x358637bd)"),
    # the prototype's super-block scale is max(block scale) / 63 (no make_qkx2_quants search), and
    # rounded only by the adapter's fp16 store
    ("torchao GGUF Q4_K", "quantize"): ("edge parity", "d", "unknown", "0.006397247314453125 (0x1e8d)",
                                        "0.006473541259765625 (0x1ea1)"),
    ("torchao GGUF Q4_K", "dequantize"): None,                     # d·sc·q + (−dmin)·m == d·sc·q − dmin·m
}


def _torchao_adapter(label, direction):
    from refquant.testing.conformance import adapters

    return next((fmt, make) for lab, fmt, d, make in adapters.THIRD_PARTY if (lab, d) == (label, direction))


@pytest.mark.parametrize("label,direction", list(TORCHAO_VERDICTS), ids=[f"{a}-{d}" for a, d in TORCHAO_VERDICTS])
def test_torchao_verdicts_are_pinned(label, direction):
    pytest.importorskip("torchao")
    fmt, make = _torchao_adapter(label, direction)
    report = C.check(make(), fmt, direction, examples=5, fail_fast=True, shrink=False)
    first = report.first_failure
    verdict = None if first is None else (first.name, first.failure.field, first.failure.cause, first.failure.ours,
                                          first.failure.theirs)
    assert verdict == TORCHAO_VERDICTS[(label, direction)], report.table()


def test_torchao_int4_affine_multiplies_by_the_reciprocal():
    """Past the all-zero group, the next difference: quantize_affine's round(x · (1/s)) lands a
    near-midpoint on the other code than refquant's round(x / s) (the kit's shrunk input)."""
    pytest.importorskip("torchao")
    from refquant import uniform
    from refquant.testing.conformance import adapters

    x = np.full((1, 32), 11.75, np.float32)
    x[0, 0] = -11.75                               # s = 23.5 / 15, x / s = 7.5 in exact arithmetic
    q, s, z = adapters.torchao_int4_affine("quantize")(x)
    ours = uniform.quantize(x, bits=4, symmetric=False, granularity="group", group_size=32)
    assert (float(s.ravel()[0]), int(z.ravel()[0])) == (float(np.asarray(ours.s).ravel()[0]),
                                                         int(np.asarray(ours.z).ravel()[0]))
    assert (int(np.asarray(ours.q).ravel()[1]), int(q.ravel()[1])) == (6, 7)
    report = C.check(adapters.torchao_int4_affine("quantize"), "INT4-G32", examples=1, inputs=[x],
                     properties=["shapes"], shrink=False)
    assert report.first_failure.failure.cause == "float order"


def test_torchao_nonfinite_int4_is_hidden_in_finite_codes():
    pytest.importorskip("torchao")
    from refquant.testing.conformance import adapters

    report = C.check(adapters.torchao_int4_affine("quantize"), "INT4-G32", examples=5, properties=["non-finite"],
                     shrink=False)
    assert report.first_failure.failure.cause == "non-finite accepted"


def test_torchao_gguf_prototype_keeps_float_codes_and_decodes_zeros_to_nan():
    """GGUFQuantizedTensor.from_float stores int_data = (x − block_min) / block_scale unrounded and
    unclamped (its own round trip is near-exact: nothing is quantized), negative block mins clamp to 0,
    and an all-zero super-block divides 0 by 0."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    from torchao.prototype.quantization.gguf import GGUFQuantizedTensor

    x = torch.from_numpy((np.random.default_rng(0).standard_normal((4, 256)) * 0.02).astype(np.float32))
    t = GGUFQuantizedTensor.from_float(x, n_blocks_per_superblock=8, target_dtype=torch.uint4)
    codes = t.int_data
    assert codes.dtype == torch.float32 and not torch.equal(codes, codes.round())
    assert bool(((codes < 0) | (codes > 15)).any()) and bool((t.quantized_block_min == 0).all())
    assert float((t.dequantize(torch.float32) - x).abs().max()) < 2.0**-20
    zeros = GGUFQuantizedTensor.from_float(torch.zeros(1, 256), n_blocks_per_superblock=8, target_dtype=torch.uint4)
    assert bool(zeros.dequantize(torch.float32).isnan().all())


def test_torchao_nf4_code_book_is_rounded_to_four_decimals():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchao")
    from torchao.quantization.quantize_.workflows.nf4.nf4_tensor import to_nf4

    from refquant import nf4

    book = to_nf4(torch.zeros(64), block_size=64, scaler_block_size=1).nf4.numpy()
    ours = np.asarray(nf4.CODES["nf4"], np.float32)
    assert np.array_equal(book, np.round(ours.astype(np.float64), 4).astype(np.float32))
    assert int(np.sum(book != ours)) == 13                     # every level but −1, 0 and 1
