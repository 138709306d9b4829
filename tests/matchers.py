"""Helpers for asserting exact error messages (importable from test modules: tests/ is on sys.path)."""

from __future__ import annotations

import re


def exact(message: str) -> str:
    """A ``pytest.raises(match=...)`` pattern that matches exactly ``message``.

    pytest matches against the message followed by the exception's notes, so an error with an asyncloop note
    needs ``exact(f"{message}\\n{note}")``.
    """
    return "^" + re.escape(message) + "$"
