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
