"""Shared fixtures: Hypothesis profiles, the backend fixture ``xp``, GPU skipping, the model file
and real SmolLM2 weight rows.

Hypothesis profiles (choose with HYPOTHESIS_PROFILE=...):
  ci        derandomized, fixed example counts: reproducible and bounded (default under CI)
  dev       the default locally: random, modest
  thorough  many more examples, for a long local hunt
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", derandomize=True, max_examples=60, deadline=None, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev", max_examples=60, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "thorough", max_examples=2000, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# `--doctest-modules` would import this file as a top-level module `conftest`, clashing with exercises/'s
collect_ignore = ["conftest.py"]


def _backends():
    names = ["numpy", "array_api_strict"]
    if importlib.util.find_spec("torch") is not None:
        names.append("torch")
    return names


@pytest.fixture(params=_backends())
def xp(request):
    """The array namespace under test (array-api-compat wrapped where needed)."""
    name = request.param
    if name == "numpy":
        import array_api_compat.numpy as ns
    elif name == "array_api_strict":
        import array_api_strict as ns
    else:
        import array_api_compat.torch as ns
    return ns


def _has_cuda() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - any failure means no usable GPU
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip_gpu = pytest.mark.skip(reason="needs CuPy and a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def smollm2_path():
    from refquant.model.data import smollm2_path as find

    return find()


def _decoded_rows(path: str, name: str, rows: slice) -> np.ndarray:
    """Rows ``rows`` of the tensor ``name`` of a GGUF file as float32, decoded by gguf-py (an
    independent decoder: the rows feed parity tests of refquant's own codecs)."""
    import gguf
    from gguf import quants

    from refquant.gguf import file

    with file.read(path) as f:
        tensor = f.tensors[name]
        raw = np.array(tensor.raw[rows])                                    # (rows, row bytes) uint8
        return quants.dequantize(raw, gguf.GGMLQuantizationType[tensor.type]).astype(np.float32)


@pytest.fixture(scope="session")
def smollm2_rows(smollm2_path):
    """64 real rows of 576 weights: token embeddings (Q8_0 in the file), every 769th."""
    return _decoded_rows(smollm2_path, "token_embd.weight", slice(None, 769 * 64, 769))


@pytest.fixture(scope="session")
def real_rows(smollm2_path):
    """Real weights: 24 rows of blk.3.ffn_down (Q4_1 in the file, 1536 per row), every 24th."""
    return _decoded_rows(smollm2_path, "blk.3.ffn_down.weight", slice(None, None, 24))


@pytest.fixture
def rng():
    return np.random.default_rng(0)
