"""``python -m refquant.cli ...``: the ``refquant`` command."""

from . import main

raise SystemExit(main())
