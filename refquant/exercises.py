"""The practice exercises: list them, load a learner's attempt, run a checker with a summary.

    refquant exercises                                  the exercises, one line each
    refquant exercises check int8_per_channel           run the checker on solution.py
    refquant exercises check int8_per_channel --file my_attempt      ... on my_attempt.py
    refquant exercises check int8_per_channel --file ~/work/int8.py  ... on any file

An exercise is a folder ``exercises/<name>/`` holding ``README.md`` (the task, formulas,
what "done" looks like, hints), ``starter.py`` (signatures that raise NotImplementedError),
``solution.py`` and the checker ``test_<name>.py``. The environment variable ``EXERCISE``
chooses which file the checker imports (``load_attempt``):

    EXERCISE unset or "solution"   exercises/<name>/solution.py     (what CI checks)
    EXERCISE=starter               exercises/<name>/starter.py      (CI asserts it *fails*)
    EXERCISE=my_attempt            exercises/<name>/my_attempt.py   (keep as many as you like)
    EXERCISE=/path/to/file.py      that file

``check`` runs the checker in a fresh Python (``python -m pytest -p no:xdist``), reads the
outcome of every test from pytest's JUnit XML report, and prints one line per part (ok /
FAILED) and the first failure's message — the checkers write their messages to name the
first wrong value, the expected one and a hint, never the answer.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import pathlib
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from typing import Any, Callable, NamedTuple

import numpy as np

__all__ = ["ExerciseInfo", "PartResult", "exercises_dir", "list_exercises", "attempt_path", "load_attempt",
           "attempt", "first_difference", "run_checker", "check", "add_arguments", "run", "ENV_VAR"]

ENV_VAR = "EXERCISE"          # which file of the folder a checker imports
DEFAULT_ATTEMPT = "solution"  # CI's choice
_SKIP_FILES = ("conftest",)   # .py files of a folder that are not attempts
MESSAGE_LINES = 12            # lines of the first failure's message shown by ``check``


class ExerciseInfo(NamedTuple):
    """One exercise folder: name, the README's first heading, the folder, its attempt files."""

    name: str
    title: str
    path: pathlib.Path
    attempts: tuple[str, ...]


class PartResult(NamedTuple):
    """One test of a checker: its name, "passed" / "failed" / "skipped", the message if not passed."""

    name: str
    outcome: str
    message: str


# ----------------------------------------------------------------------------- finding exercises


def exercises_dir() -> pathlib.Path:
    """The ``exercises/`` folder: $REFQUANT_EXERCISES, else ./exercises, else the checkout's."""
    candidates = [os.environ.get("REFQUANT_EXERCISES"), pathlib.Path.cwd() / "exercises",
                  pathlib.Path(__file__).resolve().parent.parent / "exercises"]
    for c in candidates:
        if c and pathlib.Path(c, "").is_dir() and any(pathlib.Path(c).glob("*/README.md")):
            return pathlib.Path(c).resolve()
    raise ValueError("exercises: no exercises/ folder found (set REFQUANT_EXERCISES to the folder, or run "
                     "from the refquant checkout)")


def _title(readme: pathlib.Path) -> str:
    for line in readme.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("#").strip().removeprefix("Exercise:").strip()
    return ""


def list_exercises(root: pathlib.Path | None = None) -> list[ExerciseInfo]:
    """Every folder of ``exercises/`` with a README.md and a checker test_<name>.py, by name."""
    root = exercises_dir() if root is None else pathlib.Path(root)
    found = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        checker = folder / f"test_{folder.name}.py"
        readme = folder / "README.md"
        if not (checker.is_file() and readme.is_file()):
            continue
        attempts = tuple(sorted(p.stem for p in folder.glob("*.py")
                                if not p.stem.startswith("test_") and p.stem not in _SKIP_FILES))
        found.append(ExerciseInfo(folder.name, _title(readme), folder, attempts))
    return found


def _exercise(name: str) -> ExerciseInfo:
    known = {e.name: e for e in list_exercises()}
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"name: unknown exercise {name!r}; expected one of: {', '.join(known)}")
    return known[name]


# ----------------------------------------------------------------------------- loading an attempt


def attempt_path(folder: str | os.PathLike, choice: str | None = None) -> pathlib.Path:
    """The file a checker in ``folder`` should import for EXERCISE=``choice`` (module docstring).

    Raises ValueError naming EXERCISE and the files there are when the file does not exist.
    """
    folder = pathlib.Path(folder)
    choice = os.environ.get(ENV_VAR, DEFAULT_ATTEMPT) if choice is None else choice
    choice = choice.strip() or DEFAULT_ATTEMPT
    if choice.endswith(".py") or os.sep in choice or "/" in choice:
        path = pathlib.Path(choice).expanduser()
        path = path if path.is_absolute() else (pathlib.Path.cwd() / path)
        if not path.is_file():
            raise ValueError(f"{ENV_VAR}={choice}: no such file {path}")
        return path.resolve()
    path = folder / f"{choice}.py"
    if not choice.isidentifier() or not path.is_file() or choice.startswith("test_"):
        there = sorted(p.stem for p in folder.glob("*.py") if not p.stem.startswith("test_")
                       and p.stem not in _SKIP_FILES)
        raise ValueError(f"{ENV_VAR}={choice}: expected the name of a file in {folder.name}/ without .py "
                         f"(one of: {', '.join(there)}) or a path to a .py file")
    return path


def load_attempt(checker_file: str | os.PathLike, choice: str | None = None) -> Any:
    """Import the attempt a checker should check (``attempt_path``) as a fresh module."""
    folder = pathlib.Path(checker_file).resolve().parent
    path = attempt_path(folder, choice)
    module_name = f"_exercise_{folder.name}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call a learner's function; a NotImplementedError becomes a plain checker failure."""
    import pytest

    try:
        return fn(*args, **kwargs)
    except NotImplementedError as e:
        pytest.fail(f"{fn.__name__} is not implemented yet ({e})", pytrace=False)


def first_difference(got: Any, expected: Any, what: str = "value") -> str | None:
    """None if equal (NaNs equal, the sign of zero counts), else where and how they first differ.

    Example: first_difference(np.float32([1, 2]), np.float32([1, 3])) ==
    'value [1]: expected 3.0, got 2.0 (1 of 2 differ)'.
    """
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        return f"{what}: expected shape {expected.shape}, got {got.shape}"
    if expected.dtype.kind == "f" and got.dtype.kind == "f":
        same = (got == expected) & (np.signbit(got) == np.signbit(expected)) | (np.isnan(got) & np.isnan(expected))
    else:
        same = got == expected
    if np.all(same):
        return None
    bad = np.argwhere(~same)
    idx = tuple(int(i) for i in bad[0])
    where = "[" + ", ".join(map(str, idx)) + "]"
    return f"{what} {where}: expected {expected[idx]}, got {got[idx]} ({len(bad)} of {same.size} differ)"


# ----------------------------------------------------------------------------- running a checker


def run_checker(name: str, file: str | None = None, extra_args: tuple[str, ...] = ()) -> list[PartResult]:
    """Run exercises/<name>'s checker on ``file`` (EXERCISE rule) in a fresh Python: the parts."""
    ex = _exercise(name)
    choice = DEFAULT_ATTEMPT if file is None else str(file)
    attempt_path(ex.path, choice)  # a missing file is one clear error, not a pytest collection error
    if choice.endswith(".py") or "/" in choice or os.sep in choice:
        choice = str(pathlib.Path(choice).expanduser().resolve())
    # one BLAS thread: reproducible float32 sums (the GPTQ checker's numbers depend on them)
    env = dict(os.environ, **{ENV_VAR: choice, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"})
    with tempfile.TemporaryDirectory(prefix="refquant-exercise-") as tmp:
        report = pathlib.Path(tmp, "report.xml")
        cmd = [sys.executable, "-m", "pytest", "-p", "no:xdist", "-p", "no:cacheprovider", "-q",
               "--no-header", "-o", "addopts=", f"--junitxml={report}", str(ex.path), *extra_args]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ex.path.parent.parent)
        if not report.is_file():
            tail = (proc.stdout + proc.stderr).strip().splitlines()[-MESSAGE_LINES:]
            return [PartResult("collection", "failed", "\n".join(tail))]
        return _parts(ET.parse(report).getroot())


def _parts(root: ET.Element) -> list[PartResult]:
    parts = []
    for case in root.iter("testcase"):
        name = case.get("name", "?")
        outcome, message = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed"
                message = child.get("message") or (child.text or "")
                break
            if child.tag == "skipped":
                outcome, message = "skipped", child.get("message", "")
        parts.append(PartResult(name, outcome, message.strip()))
    if not parts:
        parts.append(PartResult("collection", "failed", "the checker collected no tests"))
    return parts


def _short(message: str) -> str:
    # pytest's rewritten-assert echo ("assert '...' is None") repeats the message: drop it
    lines = [line for line in message.splitlines() if line.strip() and not line.lstrip().startswith("assert ")]
    text = "\n".join(lines[:MESSAGE_LINES])
    return text.removeprefix("Failed: ")


def summary(name: str, file: str | None, parts: list[PartResult]) -> str:
    """The text ``check`` prints: one line per part, then the first failure's message."""
    passed = sum(p.outcome == "passed" for p in parts)
    lines = [f"{name} ({file or DEFAULT_ATTEMPT}): {passed} of {len(parts)} parts passed"]
    lines += [f"  {'ok    ' if p.outcome == 'passed' else p.outcome.upper():7s} {p.name}" for p in parts]
    first = next((p for p in parts if p.outcome == "failed"), None)
    if first is not None:
        lines += ["", f"first failure, {first.name}:", *("  " + line for line in _short(first.message).splitlines())]
    elif all(p.outcome == "passed" for p in parts):
        lines += ["", "all parts pass."]
    return "\n".join(lines)


def check(name: str, file: str | None = None) -> int:
    """Run a checker and print its summary: 0 if every part passed, 1 otherwise.

    name: an exercise folder (``list_exercises``); file: the attempt (EXERCISE rule), default
    solution. Raises ValueError for an unknown exercise or a missing file.
    """
    parts = run_checker(name, file)
    print(summary(name, file, parts))
    return 0 if parts and all(p.outcome == "passed" for p in parts) else 1


# ----------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", nargs="?", choices=("list", "check"), default="list",
                        help="list the exercises (default) or check one")
    parser.add_argument("name", nargs="?", help="the exercise to check (a folder of exercises/)")
    parser.add_argument("--file", metavar="F", default=None,
                        help="the attempt to check: a file name in the exercise's folder (my_attempt) "
                             "or a path to a .py file (default: solution)")


def run(args: argparse.Namespace) -> int:
    from ._errors import UserError

    try:
        if args.action == "list":
            if args.name is not None or args.file is not None:
                raise UserError("list: takes no NAME or --file (did you mean 'exercises check NAME'?)")
            items = list_exercises()
            width = max((len(e.name) for e in items), default=4)
            for e in items:
                print(f"  {e.name:<{width}}  {e.title}")
            print(f"\n{len(items)} exercises in {exercises_dir()}; "
                  "check one with: refquant exercises check NAME [--file F]")
            return 0
        if args.name is None:
            raise UserError("check: expected the NAME of an exercise (see 'refquant exercises')")
        return check(args.name, args.file)
    except ValueError as e:
        raise UserError(str(e)) from None
