"""refquant.uniform gives identical results on numpy, array-api-strict and torch (and CuPy on a GPU)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from refquant import uniform as U
from refquant._backend import from_numpy, to_numpy
from refquant.testing import strategies as st_rq

# `xp` is a module, not state: nothing to reset between Hypothesis examples.
XP_OK = settings(suppress_health_check=[HealthCheck.function_scoped_fixture])
CASES = [(g, sym, conv) for g in U.GRANULARITIES for sym in (True, False) for conv in U.CONVENTIONS]


def _run(x, xp, granularity, symmetric, convention, bits, signed, search=None):
    xa = from_numpy(x, xp=xp)
    qt = U.quantize(xa, bits, symmetric, granularity, group_size=8 if granularity == "group" else None,
                    signed=signed, search=search, convention=convention)
    x_hat = U.fake_quantize(xa, bits, symmetric, granularity, group_size=8 if granularity == "group" else None,
                            signed=signed, search=search, convention=convention)
    return [to_numpy(a) for a in (qt.q, qt.s, qt.z, U.dequantize(qt), x_hat)]


@pytest.mark.parametrize("granularity, symmetric, convention", CASES)
@given(x=st_rq.rows(block=8, max_rows=3, max_blocks=3), bits=st.integers(2, 8), signed=st.booleans())
@settings(XP_OK, max_examples=20)   # 12 cases x 3 backends: 720 examples in all
def test_same_results_on_every_backend(xp, granularity, symmetric, convention, x, bits, signed):
    expected = _run(x, np, granularity, symmetric, convention, bits, signed)
    got = _run(x, xp, granularity, symmetric, convention, bits, signed)
    for e, g in zip(expected, got):
        assert e.dtype == g.dtype and e.shape == g.shape and e.tobytes() == g.tobytes()


@given(x=st_rq.rows(block=8, max_rows=2, max_blocks=2), bits=st.integers(2, 4))
@settings(XP_OK, max_examples=10)   # each example runs the 80-point grid
def test_range_search_same_on_every_backend(xp, x, bits):
    expected = _run(x, np, "group", False, "refquant", bits, False, search=2.4)
    got = _run(x, xp, "group", False, "refquant", bits, False, search=2.4)
    for e, g in zip(expected, got):
        assert e.tobytes() == g.tobytes()


def test_results_stay_in_the_callers_namespace(xp):
    x = from_numpy(np.linspace(-1, 1, 64, dtype=np.float32).reshape(4, 16), xp=xp)
    qt = U.quantize(x, 4, False, "group", group_size=8)
    for a in (qt.q, qt.s, qt.z, U.dequantize(qt), U.fake_quantize(x, 4)):
        assert type(a) is type(x)


@pytest.mark.gpu
@pytest.mark.parametrize("granularity, symmetric, convention", CASES)
def test_cupy_matches_numpy(granularity, symmetric, convention):
    cupy = pytest.importorskip("cupy")
    x = np.random.default_rng(1).standard_normal((64, 256)).astype(np.float32)
    x[3, :] = 0.0                                        # an all-zero row/group
    x[5, 7] = 40.0                                       # an outlier
    for bits, signed in ((4, False), (8, True)):
        kw = dict(group_size=128 if granularity == "group" else None, signed=signed, convention=convention)
        a = U.quantize(x, bits, symmetric, granularity, **kw)
        b = U.quantize(cupy.asarray(x), bits, symmetric, granularity, **kw)
        assert isinstance(b.q, cupy.ndarray)
        for e, g in ((a.q, b.q), (a.s, b.s), (a.z, b.z), (U.dequantize(a), U.dequantize(b))):
            assert e.tobytes() == cupy.asnumpy(g).tobytes()
