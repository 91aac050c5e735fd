"""refquant.verify: the comparisons, the pass/fail table, and the real checks passing here."""

from __future__ import annotations

import numpy as np
import pytest

from refquant import verify
from refquant.testing import OracleUnavailable
from refquant.verify import Check, Outcome


def test_same_floats_is_bitwise_with_nan_equal():
    a = np.array([1.0, -0.0, np.nan, 2.0], np.float32)
    assert verify.same_floats(a, a.copy()) == Outcome(4, 0, "values")
    assert verify.same_floats(a, np.array([1.0, 0.0, np.nan, 2.0], np.float32)).mismatched == 1  # -0.0 is not 0.0
    b = a.copy()
    b[3] = np.nextafter(np.float32(2.0), np.float32(3.0))  # one ulp
    assert verify.same_floats(a, b).mismatched == 1
    assert verify.same_floats(a, a[:3]).mismatched == 4  # a shape mismatch fails everything


def test_same_bytes_counts_differing_blocks():
    a = np.arange(12, dtype=np.uint8)
    b = a.copy()
    b[[0, 1, 7]] += 1  # blocks of 4 bytes: block 0 (twice) and block 1 differ
    assert verify.same_bytes(a, b, 4) == Outcome(3, 2, "blocks")
    assert verify.same_bytes(a, a, 6) == Outcome(2, 0, "blocks")


def test_sample_rows_fixed_and_covering_the_edge_kinds():
    x = verify.sample_rows(4, 256, 32)
    assert x.shape == (4, 256) and x.dtype == np.float32 and np.all(np.isfinite(x))
    np.testing.assert_array_equal(x, verify.sample_rows(4, 256, 32))  # same seed, same rows
    blocks = x.reshape(-1, 32)
    assert np.any(np.all(blocks == 0, axis=1))  # a zero block (the 'zeros' kind) is there
    assert np.max(np.abs(x)) > 1e4  # and values near the float16 limit


def _missing_oracle():
    raise OracleUnavailable("the fake oracle needs `pip install fake`")


def _missing_module():
    import refquant.no_such_family  # noqa: F401


def _boom():
    raise RuntimeError("boom")


FAKE = [
    Check("A", "quantize", "oracle-a", lambda: Outcome(10, 0, "blocks")),
    Check("A", "dequantize", "oracle-a", lambda: Outcome(320, 3, "values")),
    Check("B", "quantize", "oracle-b", _missing_oracle),
    Check("C", "quantize", "oracle-c", _missing_module),
    Check("D", "quantize", "oracle-d", _boom),
]


def test_run_checks_statuses_and_table():
    """Only a missing oracle skips: a refquant module that fails to import is an ERROR row."""
    seen = []
    results = verify.run_checks(FAKE, on_result=seen.append)
    assert [r.status for r in results] == ["pass", "FAIL", "skip", "ERROR", "ERROR"]
    assert seen == results
    assert results[1].note == "3 of 320 values differ"
    assert "pip install fake" in results[2].note
    assert results[3].note == "ModuleNotFoundError: No module named 'refquant.no_such_family'"
    table = verify.format_table(results).splitlines()
    assert len(table) == 2 + len(FAKE) + 1  # header, rule, one line per check, summary
    assert table[2].split()[:2] == ["A", "quantize"] and table[2].rstrip().endswith("pass")
    assert "FAIL (3 of 320 values differ)" in table[3]
    assert table[-1] == "1 passed, 1 failed, 2 errors, 1 skipped (10 blocks/values compared bit-exact)"


def test_select_formats():
    assert verify.select(None) == verify.CHECKS
    q4k = verify.select("q4_k")
    assert q4k and all(c.format == "Q4_K" for c in q4k)
    with pytest.raises(ValueError, match="^unknown format Q9_9; known: INT8 per-channel, "):
        verify.select("Q4_K,Q9_9")
    with pytest.raises(ValueError, match="unknown format ','"):
        verify.select(",")


def test_every_format_has_an_oracle_check():
    formats = {c.format for c in verify.CHECKS}
    assert {"Q4_0", "Q8_0", "Q2_K", "Q4_K", "Q6_K", "NF4", "GPTQ", "INT8 per-channel"} <= formats
    assert all(c.oracle for c in verify.CHECKS)


@pytest.mark.parametrize("fmt", list(dict.fromkeys(c.format for c in verify.CHECKS)))
def test_every_check_passes_here(fmt):
    """The oracles are installed in CI, so nothing may skip: every check runs and is bit-exact."""
    results = verify.run_checks(verify.select(fmt))
    assert results and all(r.status == "pass" for r in results), verify.format_table(results)
    assert all(r.outcome.compared > 0 for r in results)
