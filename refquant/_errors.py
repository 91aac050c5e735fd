"""The errors refquant raises for its users, in a leaf module that imports nothing of refquant.

    UserError          a mistake in a command line or its inputs (a missing file, an unknown
                       type): ``refquant`` prints it as one line and exits with status 2
    MissingDependency  an optional package is not installed; the message says how to install it

Any module may raise these; the command line (``refquant.cli``) catches them. Nothing here
imports the command line, so formats, algorithms and the model never do either.

Example:
    >>> try:
    ...     require("no_such_package_refquant", "pip install no-such-package")
    ... except MissingDependency as e:
    ...     print(e.name, "|", e)
    no_such_package_refquant | no_such_package_refquant is not installed (pip install no-such-package)
"""

from __future__ import annotations

import importlib.util

__all__ = ["UserError", "MissingDependency", "require"]


class UserError(Exception):
    """A mistake in the command line or its inputs: printed as one line, exit status 2."""


class MissingDependency(ModuleNotFoundError):
    """An optional package is missing: ``name`` is the package, the message how to install it."""


def require(package: str, install: str) -> None:
    """Raise ``MissingDependency`` unless ``package`` (a top-level import name) is installed.

    Checked by name with ``importlib.util.find_spec``, without importing it: a broken import
    *inside* an installed package, or a mistyped refquant module, still fails loudly where
    it is imported.
    """
    if importlib.util.find_spec(package) is None:
        raise MissingDependency(f"{package} is not installed ({install})", name=package)
