"""The conformance kit as a pytest plugin: one line in a kernel project's tests runs the battery.

Either a test made in one line, in any test module::

    from refquant.testing.pytest_plugin import conformance_test
    test_my_q4_k = conformance_test("mypkg.kernels:quantize_q4_k", "Q4_K")

or the fixture, after ``pytest_plugins = ["refquant.testing.pytest_plugin"]`` in conftest.py::

    def test_my_nf4(refquant_conformance):
        refquant_conformance(my_nf4, "NF4")

A failing battery fails the test with the report's table (the first differing block, field
and bit, refquant's value and yours, the guessed cause). ``--refquant-examples N`` sets the
Hypothesis examples per property (default 40).
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

import pytest

from . import conformance

__all__ = ["conformance_test", "refquant_conformance", "assert_conforms", "pytest_addoption"]

_EXAMPLES = {"n": conformance.DEFAULT_EXAMPLES}


def pytest_addoption(parser):
    parser.addoption("--refquant-examples", type=int, default=conformance.DEFAULT_EXAMPLES,
                     help="refquant conformance kit: Hypothesis examples per property")


def pytest_configure(config):
    _EXAMPLES["n"] = config.getoption("--refquant-examples", default=conformance.DEFAULT_EXAMPLES)


def _resolve(impl: Any) -> Callable:
    if isinstance(impl, str):
        module, _, attr = impl.partition(":")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj
    return impl


def assert_conforms(impl: Any, fmt: str, direction: str = "quantize", **kwargs) -> conformance.Report:
    """Run the battery; fail (pytest.fail) with the report's table unless ``impl`` conforms."""
    kwargs.setdefault("examples", _EXAMPLES["n"])
    report = conformance.check(_resolve(impl), fmt, direction, **kwargs)
    if not report.ok:
        pytest.fail(report.table(), pytrace=False)
    return report


def conformance_test(impl: Any, fmt: str, direction: str = "quantize", **kwargs) -> Callable[[], None]:
    """A test function checking ``impl`` (a callable or 'module:function') as ``fmt`` in ``direction``."""
    def test() -> None:
        assert_conforms(impl, fmt, direction, **kwargs)
    test.__name__ = f"test_conforms_{fmt}_{direction}"
    return test


@pytest.fixture
def refquant_conformance() -> Callable[..., conformance.Report]:
    """``refquant_conformance(impl, fmt, direction="quantize", **check_kwargs)``: assert_conforms."""
    return assert_conforms
