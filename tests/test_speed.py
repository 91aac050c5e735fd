"""refquant.speed: the timing logic on a fake timer, the figures' structure, and every way a
kernel can be missing. No timing figure is asserted (the machine is shared): only that a
measured kernel gives finite positive tokens/s and an unavailable one says why."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

from refquant import speed
from refquant.speed import Speed, SpeedProtocol

TINY = SpeedProtocol(n_prompt=8, n_gen=2, repeats=1, threads=1, stack_blocks=1)


def fake_timer(durations):
    """A timer whose consecutive (start, stop) readings are ``durations`` apart."""
    ticks, t = [], 0.0
    for d in durations:
        ticks += [t, t + d]
        t += d + 1.0
    it = iter(ticks)
    return lambda: next(it)


@pytest.mark.parametrize("durations", [(2.0, 1.0, 0.5), (0.5, 2.0, 1.0), (3.0, 0.25, 3.0)])
def test_best_of_takes_the_shortest_run(durations):
    calls = []
    best = speed.best_of(lambda: calls.append(1), repeats=3, timer=fake_timer(durations))
    assert best == min(durations) and len(calls) == 3


def test_best_of_of_one_run_is_that_run():
    assert speed.best_of(lambda: None, repeats=1, timer=fake_timer([0.75])) == 0.75


@pytest.mark.parametrize("repeats", [0, -1, 2.5, "3"])
def test_best_of_rejects_a_bad_repeat_count(repeats):
    with pytest.raises(ValueError, match="repeats: expected a positive integer"):
        speed.best_of(lambda: None, repeats=repeats)


def test_ratio_and_missing_figures():
    a, b = Speed("a", 100.0, 30.0), Speed("b", 50.0, 20.0)
    assert speed.ratio(a, b, "prompt") == 2.0 and speed.ratio(a, b) == 1.5
    gone = speed.unavailable("c", "not here")
    assert not gone.ok and math.isnan(gone.prompt) and math.isnan(gone.generation) and gone.missing == "not here"
    assert math.isnan(speed.ratio(a, gone)) and math.isnan(speed.ratio(gone, b))
    with pytest.raises(ValueError, match="which: expected 'prompt' or 'generation'"):
        speed.ratio(a, b, "tg")


def test_llama_cpp_missing_is_a_reason_not_a_number(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(speed.importlib.util, "find_spec", lambda n, *a: None if n == "llama_cpp" else real(n, *a))
    s = speed.llama_cpp_speed(str(tmp_path / "any.gguf"), "llama.cpp Q8_0")
    assert not s.ok and "pip install llama-cpp-python" in s.missing and math.isnan(s.generation)


def test_llama_cpp_refusing_a_file_is_a_reason(tmp_path):
    pytest.importorskip("llama_cpp")
    bad = tmp_path / "not-a-model.gguf"
    bad.write_bytes(b"GGUF but not really")
    s = speed.llama_cpp_speed(str(bad), "llama.cpp broken", TINY)
    assert not s.ok and s.missing.startswith("llama.cpp failed on this file:") and s.kernel == "llama.cpp broken"


def test_llama_cpp_bad_arguments(tmp_path):
    pytest.importorskip("llama_cpp")
    with pytest.raises(ValueError, match="path: expected a GGUF file"):
        speed.llama_cpp_speed(str(tmp_path / "missing.gguf"))
    with pytest.raises(ValueError, match=r"protocol.n_gen: expected a positive integer, got 0"):
        speed.llama_cpp_speed(str(tmp_path / "missing.gguf"), protocol=TINY._replace(n_gen=0))


def _stack(rng):
    """A Llama block's 7 linear shapes, scaled down: q, k, v, o (d = 64, kv = 32), gate, up, down (ff = 128)."""
    shapes = [(64, 64), (32, 64), (32, 64), (64, 64), (128, 64), (128, 64), (64, 128)]
    return [rng.standard_normal(s).astype(np.float32) * 0.05 for s in shapes]


@pytest.mark.parametrize("kind", list(speed.BNB_KINDS))
def test_linear_stack_measures_every_kind(kind, rng):
    if kind not in ("float32", "bfloat16"):
        pytest.importorskip("bitsandbytes")
    s = speed.linear_stack_speed(_stack(rng), kind, TINY)
    assert s.ok, s.missing
    assert s.prompt > 0 and s.generation > 0 and math.isfinite(s.prompt) and math.isfinite(s.generation)
    assert s.kernel == f"{speed.BNB_KINDS[kind]}: 7 linears" and s.load >= 0


def test_linear_stack_without_bitsandbytes(monkeypatch, rng):
    real = importlib.util.find_spec
    monkeypatch.setattr(speed.importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a))
    assert not speed.linear_stack_speed(_stack(rng), "nf4", TINY).ok
    assert "pip install bitsandbytes" in speed.linear_stack_speed(_stack(rng), "int8", TINY).missing
    assert speed.linear_stack_speed(_stack(rng)[:1], "float32", TINY).ok  # torch alone needs no bitsandbytes


@pytest.mark.parametrize("weights, kind, message", [
    ([np.zeros((4, 4), np.float32)], "fp4", "kind: expected one of float32"),
    ([], "float32", "weights: expected a non-empty list of 2-D"),
    ([np.zeros(4, np.float32)], "float32", "weights: expected a non-empty list of 2-D"),
    ([np.zeros((0, 4), np.float32)], "float32", "weights: expected a non-empty list of 2-D"),
])
def test_linear_stack_bad_arguments(weights, kind, message):
    with pytest.raises(ValueError, match=message):
        speed.linear_stack_speed(weights, kind, TINY)


def test_machine_and_versions_name_the_kernels():
    assert "cores" in speed.machine()
    v = speed.versions()
    assert all(p in v for p in ("llama-cpp-python", "bitsandbytes", "torch"))
    assert speed.load_average() >= 0
    assert "best of 3, 2 threads" in speed.PROTOCOL.describe()
