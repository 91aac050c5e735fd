"""The conformance kit kills every mutant of tests/mutants, with the property (and, where the
table names one, the cause) recorded there.

Each mutant gets the battery with ``fail_fast`` and no shrinking (the first failing input is
kept): the edge strategies come first, so most mutants die within a few examples.
"""

from __future__ import annotations

import collections

import pytest

from refquant.testing import conformance

from mutants import MUTANTS, PINNED

EXAMPLES = 20  # Hypothesis examples per property: the whole corpus takes ~20 s on one core


def test_corpus_is_large_and_names_unique():
    assert len(MUTANTS) >= 40
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    assert {m.killed_by for m in MUTANTS} <= set(conformance.PROPERTIES["quantize"]) | set(conformance.PROPERTIES["dequantize"])


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_mutant_is_killed(mutant):
    report = conformance.check(mutant.fn, mutant.fmt, mutant.direction, imatrix=mutant.imatrix, examples=EXAMPLES,
                               fail_fast=True, shrink=False)
    first = report.first_failure
    assert not report.ok and first is not None, f"{mutant.name} survived"
    assert first.name == mutant.killed_by, first.failure.line()
    if mutant.cause is not None:
        assert first.failure.cause == mutant.cause, first.failure.line()


@pytest.mark.parametrize("pinned", PINNED, ids=[p.mutant.name for p in PINNED])
def test_pinned_mutant_is_killed_on_its_input(pinned):
    """Last-bit mutants: killed on the near-tie input that shows them, tried before the drawn ones."""
    m = pinned.mutant
    report = conformance.check(m.fn, m.fmt, m.direction, examples=1, fail_fast=True, shrink=False,
                               inputs=[pinned.row()])
    first = report.first_failure
    assert first is not None and first.name == m.killed_by and first.failure.cause == m.cause, report.table()


def test_every_known_cause_is_shown_by_a_mutant():
    """The table of known causes is data: each entry is the recorded guess for some mutant."""
    shown = collections.Counter(m.cause for m in MUTANTS + [p.mutant for p in PINNED])
    missing = [c.name for c in conformance.CAUSES if c.name not in shown]
    assert missing == []
