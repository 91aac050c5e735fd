"""The embedded defaults: the SmolLM2-135M file (``smollm2_path``) and real English text that
ships with Python, split once into calibration and evaluation parts.

``pydoc_data.topics.topics`` maps 79 keys ("assert", "assignment", ... "yield") to the
reference-manual pages ``help()`` shows, about 465 kB in all (Python 3.11). The split:

    keys sorted; topic number k (0-based) goes to   evaluation  if k % 4 == 3
                                                    calibration otherwise
    each part = its topics joined by a blank line ("\\n\\n"), in key order

Interleaving keeps both parts alike in style (statements, data model, built-in types
are spread over the alphabet), and about a quarter of the text is held out. The text
belongs to the running Python's version: figures are comparable across machines that
run the same minor version (``source()`` names it).
"""

from __future__ import annotations

import sys

from .._data import SMOLLM2_FILE, smollm2_path

__all__ = ["smollm2_path", "SMOLLM2_FILE", "calibration_text", "evaluation_text", "topics", "split", "source",
           "EVAL_EVERY"]

EVAL_EVERY = 4  # every 4th topic (k % 4 == 3) is held out for evaluation


def topics() -> dict[str, str]:
    """The pydoc topics {key: text}, keys sorted."""
    from pydoc_data.topics import topics as table

    return {key: table[key] for key in sorted(table)}


def split() -> tuple[list[str], list[str]]:
    """(calibration keys, evaluation keys) of the fixed split.

    >>> calibration, evaluation = split()
    >>> keys = list(topics())
    >>> evaluation[:2] == [keys[3], keys[7]], len(evaluation) == len(keys) // 4, len(calibration + evaluation) == len(keys)
    (True, True, True)
    """
    keys = list(topics())
    evaluation = [key for k, key in enumerate(keys) if k % EVAL_EVERY == EVAL_EVERY - 1]
    calibration = [key for k, key in enumerate(keys) if k % EVAL_EVERY != EVAL_EVERY - 1]
    return calibration, evaluation


def calibration_text() -> str:
    """Three quarters of the topics (k % 4 != 3), joined by blank lines."""
    table = topics()
    return "\n\n".join(table[key] for key in split()[0])


def evaluation_text() -> str:
    """The held-out quarter of the topics (k % 4 == 3), joined by blank lines."""
    table = topics()
    return "\n\n".join(table[key] for key in split()[1])


def source() -> str:
    """Where the text comes from, e.g. 'pydoc_data.topics (Python 3.11)'."""
    return f"pydoc_data.topics (Python {sys.version_info.major}.{sys.version_info.minor})"
