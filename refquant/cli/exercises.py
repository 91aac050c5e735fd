"""``refquant exercises``: list the practice exercises, or run the checker of one (``refquant.exercises``).

The command's arguments and its run are ``refquant.exercises``' own ``add_arguments`` / ``run``;
this module registers them under the name ``exercises``.
"""

from __future__ import annotations

from .. import exercises
from ..exercises import add_arguments, run

__all__ = ["add_arguments", "run", "DESCRIPTION"]

DESCRIPTION = exercises.__doc__
