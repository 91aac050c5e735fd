"""Shared by the exercise checkers: Hypothesis settings and one SmolLM2 per session.

The model-based checkers work on short windows to stay under a minute on 2 cores; each
says which. ``smollm2`` is loaded once per pytest session (about 3 s) and never modified
(``model.with_weights`` returns a new model), so every checker can share it.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings

# derandomized under CI (reproducible), random locally; no deadline: 2 shared cores are slow
settings.register_profile("exercises", derandomize=bool(os.environ.get("CI")), deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# a checker run on a starter fails at its first example; shrinking an input that fails every
# time only costs a minute per checker, so tests/test_exercises.py runs starters with this one
settings.register_profile("exercises-starter", parent=settings.get_profile("exercises"), max_examples=5,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "exercises"))


@pytest.fixture(scope="session")
def smollm2():
    """SmolLM2-135M-Instruct as refquant.model loads it (float32 NumPy weights)."""
    from refquant.model import load_model

    return load_model()


@pytest.fixture(scope="session")
def eval_tokens(smollm2):
    """The held-out text (refquant.model.data.evaluation_text) as token ids, (n,) int64."""
    from refquant.model import data

    return np.asarray(smollm2.tokenize(data.evaluation_text()), dtype=np.int64)


@pytest.fixture(scope="session")
def calib_tokens(smollm2):
    """The calibration text (refquant.model.data.calibration_text) as token ids, (n,) int64."""
    from refquant.model import data

    return np.asarray(smollm2.tokenize(data.calibration_text()), dtype=np.int64)


# attempts are loaded by file (refquant.exercises.load_attempt), never imported by name: every folder
# has a solution.py and a starter.py, and tests/ has a conftest.py too, which `--doctest-modules`
# would otherwise import as clashing top-level modules
collect_ignore_glob = ["*/solution.py", "*/starter.py", "conftest.py"]
