"""A Griffe extension for the API reference (mkdocs.yml, mkdocstrings ``extensions:``): Sphinx roles to links.

asyncloop's docstrings cross-reference with Sphinx roles (``:class:`Learner```, ``:func:`asyncloop.fit```), which
Markdown would show as stray ``:class:`` text. Each role becomes an *optional* autorefs link: a link to the API
reference entry when there is one (``asyncloop.X``, or a member of the documented object's class), plain code
otherwise, so a role never breaks the strict build and never renders as raw markup.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|meth|func|attr|exc|mod|data|obj|py:\w+):`~?(?P<target>[^`<>]+)`")


def _identifier(target: str, obj: Any) -> str:
    target = target.strip().rstrip("()")
    if target.startswith("asyncloop"):
        return target
    head = target.split(".", 1)[0]
    owner = obj if obj.is_class else obj.parent
    if owner is not None and owner.is_class and head in owner.members:
        return f"{owner.path}.{target}"
    return f"asyncloop.{target}"


def _convert(text: str, obj: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        target = match["target"].strip()
        title = target.rsplit(".", 1)[-1] if target.startswith("asyncloop.") else target
        return f'<autoref identifier="{_identifier(target, obj)}" optional><code>{title}</code></autoref>'

    return _ROLE.sub(replace, text)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring as optional autorefs links."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _convert(obj.docstring.value, obj)
