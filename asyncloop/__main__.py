"""``python -m asyncloop``: the command line (see :mod:`asyncloop.cli`)."""

from .cli import main

raise SystemExit(main())
