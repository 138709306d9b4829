"""``python -m asyncloop``: the command line (see :mod:`asyncloop._cli`)."""

from ._cli import main

raise SystemExit(main())
