"""refquant.exercises and the exercise checkers themselves: every checker passes on its
solution and fails on its starter, EXERCISE selects the file, ``check`` summarises."""

from __future__ import annotations

import argparse
import pathlib
import textwrap

import pytest

from refquant import exercises as E
from refquant._errors import UserError

NAMES = ("awq_scale_search", "gptq_column_update", "gptq_vs_awq_3bit", "group_quant", "int8_per_channel",
         "lora_backward", "memory_math", "mixed_precision", "nf4_codebook", "q4k_superblock")
# checkers that load SmolLM2 and run it: 10-70 s each on 2 shared cores
MODEL_BASED = ("awq_scale_search", "gptq_column_update", "gptq_vs_awq_3bit", "int8_per_channel", "mixed_precision")


def _marks(name):
    return [pytest.mark.slow] if name in MODEL_BASED else []


def test_every_exercise_is_listed_with_its_files():
    found = {e.name: e for e in E.list_exercises()}
    assert tuple(sorted(found)) == NAMES
    for e in found.values():
        assert {"solution", "starter"} <= set(e.attempts), e.name
        assert e.title, f"{e.name}: README.md needs a heading"


# The model-based checkers already run on their solutions in this same pytest run (exercises/
# is collected directly, EXERCISE=solution); through run_checker, in a fresh Python, only the
# quick ones run again, to prove the machinery that `refquant exercises check` uses.
@pytest.mark.parametrize("name", [n for n in NAMES if n not in MODEL_BASED])
def test_checker_passes_on_solution(name):
    parts = E.run_checker(name, "solution")
    assert parts and all(p.outcome == "passed" for p in parts), E.summary(name, "solution", parts)


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in NAMES])
def test_checker_fails_on_starter(name, monkeypatch):
    monkeypatch.setenv("HYPOTHESIS_PROFILE", "exercises-starter")  # fail fast: no shrinking (exercises/conftest.py)
    parts = E.run_checker(name, "starter")
    assert parts and all(p.outcome == "failed" for p in parts), E.summary(name, "starter", parts)


def _fake_exercise(tmp_path: pathlib.Path) -> pathlib.Path:
    folder = tmp_path / "fake"
    folder.mkdir()
    (folder / "README.md").write_text("# Exercise: fake\n")
    (folder / "test_fake.py").write_text("")
    for stem in ("solution", "starter", "other_name"):
        (folder / f"{stem}.py").write_text(f"WHO = {stem!r}\n")
    return folder


def test_exercise_variable_selects_a_file_of_the_folder(tmp_path, monkeypatch):
    folder = _fake_exercise(tmp_path)
    checker = folder / "test_fake.py"
    monkeypatch.delenv(E.ENV_VAR, raising=False)
    assert E.load_attempt(checker).WHO == "solution"
    monkeypatch.setenv(E.ENV_VAR, "other_name")
    assert E.load_attempt(checker).WHO == "other_name"
    monkeypatch.setenv(E.ENV_VAR, str(folder / "starter.py"))
    assert E.load_attempt(checker).WHO == "starter"
    monkeypatch.setenv(E.ENV_VAR, "missing")
    with pytest.raises(ValueError, match=r"EXERCISE=missing: .*one of: other_name, solution, starter"):
        E.load_attempt(checker)
    with pytest.raises(ValueError, match="EXERCISE=test_fake"):
        E.load_attempt(checker, "test_fake")  # the checker itself is not an attempt
    assert [e.attempts for e in E.list_exercises(tmp_path)] == [("other_name", "solution", "starter")]


BROKEN_Z = '''
def group_qparams(w, bits, G):
    s, z = _right(w, bits, G)
    return s, z + 1                      # the bug: every zero-point off by one
'''


def test_check_summarises_first_failure_and_hint(tmp_path, capsys):
    solution = pathlib.Path(E.exercises_dir(), "group_quant", "solution.py").read_text()
    attempt = tmp_path / "my_attempt.py"
    attempt.write_text(solution.replace("def group_qparams(", "def _right(") + textwrap.dedent(BROKEN_Z))
    assert E.check("group_quant", str(attempt)) == 1
    out = capsys.readouterr().out
    assert "FAILED  test_scales_and_zero_points" in out and "ok      test_bits_per_weight" in out
    assert "first failure, test_scales_and_zero_points:" in out
    assert "z differs" in out  # the checker's hint, not a traceback


def test_check_passes_and_rejects_bad_names(capsys):
    assert E.check("group_quant") == 0
    assert "all parts pass." in capsys.readouterr().out
    with pytest.raises(ValueError, match="name: unknown exercise 'nope'; expected one of: awq_scale_search"):
        E.check("nope")
    with pytest.raises(ValueError, match="EXERCISE=no_such_attempt"):
        E.check("group_quant", "no_such_attempt")


def _args(*argv):
    parser = argparse.ArgumentParser()
    E.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_command_lists_and_reports_user_errors(capsys):
    assert E.run(_args()) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in NAMES) and "refquant exercises check NAME" in out
    with pytest.raises(UserError, match="check: expected the NAME"):
        E.run(_args("check"))
    with pytest.raises(UserError, match="unknown exercise 'nope'"):
        E.run(_args("check", "nope"))
    with pytest.raises(UserError, match="list: takes no NAME"):
        E.run(_args("list", "group_quant"))
