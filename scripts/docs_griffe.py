"""A Griffe extension for the API reference (mkdocs.yml, mkdocstrings ``extensions:``): reST habits to Markdown.

asyncloop's docstrings are written for ``help()`` and keep two reST habits that Markdown would show as markup:

* Sphinx roles (``:class:`Learner```, ``:func:`asyncloop.fit```). Each becomes an *optional* autorefs link: a
  link to the API reference entry when there is one (``asyncloop.X``, or a member of the documented object's
  class), plain code otherwise, so a role never breaks the strict build and never renders as raw markup.
* Literal blocks introduced by ``::`` (``Example::`` then an indented block). Each becomes a fenced python block
  after a plain colon.
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


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _literal_blocks(text: str) -> str:
    lines, out, i = text.split("\n"), [], 0
    while i < len(lines):
        line = lines[i]
        j = i + 1
        if line.rstrip().endswith("::") and j < len(lines) and not lines[j].strip():
            while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > _indent(line)):
                j += 1
            block = [ln for ln in lines[i + 1 : j]]
            while block and not block[-1].strip():
                block.pop()
            code = [ln for ln in block if ln.strip()]
            if code:
                pad, cut = " " * _indent(line), min(_indent(ln) for ln in code)
                head = line.rstrip()[:-2].rstrip()
                out.append(head + ":" if head.strip() else "")
                out.append("")
                out.append(pad + "```python")
                out.extend(pad + ln[cut:] if ln.strip() else "" for ln in block[1:])
                out.append(pad + "```")
                out.extend(lines[i + 1 + len(block) : j])
                i = j
                continue
        out.append(line)
        i += 1
    return "\n".join(out)


class SphinxRoles(griffe.Extension):
    """Rewrite the Sphinx roles of every docstring as optional autorefs links, and ``::`` blocks as fences."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _literal_blocks(_convert(obj.docstring.value, obj))
