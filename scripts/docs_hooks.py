"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``); not part of the asyncloop package.

* **Examples as pages.** Every ``examples/**/*.py`` becomes a generated page ``examples/<path>.md`` (its module
  docstring, then its source), listed under "Examples" in the nav, and a docs link to an example file
  (``../examples/gan.py``, ``../examples``) is rewritten to that page. On GitHub the same links open the files.
  Likewise the benchmarks' plots (``bench/results/**/*.png``) are copied into the site, and links to them
  rewritten.
* **Callback graphs drawn from code.** A line ``<!-- callback-graph: NAME -->`` in a page is replaced by a
  Mermaid flowchart of the callback graph of the learner ``NAME``, built by running the page's python blocks that
  come before the line (as the tests run them, in a temporary folder, their output discarded). So the picture is
  always the graph the code builds.
"""

from __future__ import annotations

import ast
import contextlib
import io
import os
import posixpath
import re
import tempfile
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
GRAPH_MARKER = re.compile(r"^<!-- callback-graph: (?P<name>[A-Za-z_][A-Za-z0-9_]*) -->$", flags=re.M)
#: A python block not run by the tests (and not by this hook) is preceded by this comment, with a reason.
NOT_RUN = "<!-- not run:"
_BLOCK = re.compile(r"^```python\n(?P<code>.*?)^```", flags=re.S | re.M)
_LINK = re.compile(r"(?P<open>\]\()(?P<target>[^)\s#]+)(?P<anchor>#[^)\s]*)?(?P<close>\))")


def example_files() -> list[Path]:
    """The example scripts, in path order."""
    return sorted(p for p in EXAMPLES.rglob("*.py") if "__pycache__" not in p.parts)


def example_page(path: Path) -> str:
    """The site path of the page generated for the example ``path``."""
    return "examples/" + path.relative_to(EXAMPLES).with_suffix(".md").as_posix()


# -- nav and generated pages ------------------------------------------------------------------------------------


def on_config(config: Any) -> Any:
    """Append an "Examples" section with one generated page per example to the nav."""
    if config["nav"] is not None and EXAMPLES.is_dir():
        pages = [{"Overview": "examples/index.md"}]
        pages += [{p.relative_to(EXAMPLES).as_posix(): example_page(p)} for p in example_files()]
        config["nav"].append({"Examples": pages})
    return config


def on_files(files: Any, config: Any) -> Any:
    """Generate the example pages."""
    from mkdocs.structure.files import File

    if not EXAMPLES.is_dir():
        return files
    rows = []
    for path in example_files():
        rel = path.relative_to(ROOT).as_posix()
        source = path.read_text()
        doc = ast.get_docstring(ast.parse(source)) or ""
        summary = doc.split("\n\n")[0].replace("\n", " ")
        rows.append(f"| [{path.relative_to(EXAMPLES).as_posix()}]({path.relative_to(EXAMPLES).with_suffix('.md').as_posix()}) | {summary} |")
        content = (
            f"# {rel}\n\n{doc}\n\nRun it from the repository root: `.venv/bin/python {rel}` "
            f"(it is run by the tests, in quick mode where it has one).\n\n"
            f"```{{.python .no-copy}}\n{source}```\n"
        )
        files.append(File.generated(config, example_page(path), content=content))
    index = (
        "# Examples\n\nRunnable scripts in the repository's `examples/` folder; every one is run by the tests.\n\n"
        "| example | what it shows |\n|---|---|\n" + "\n".join(rows) + "\n"
    )
    files.append(File.generated(config, "examples/index.md", content=index))
    for plot in sorted((ROOT / "bench" / "results").rglob("*.png")):  # the benchmarks' plots, as images
        files.append(File.generated(config, plot.relative_to(ROOT).as_posix(), content=plot.read_bytes()))
    return files


# -- links to examples ------------------------------------------------------------------------------------------


def _rewrite_links(markdown: str, src_uri: str) -> str:
    page_dir = posixpath.dirname(src_uri)

    def replace(match: re.Match[str]) -> str:
        target = match["target"]
        if "://" in target or target.startswith(("mailto:", "/")):
            return match[0]
        repo_path = posixpath.normpath(posixpath.join("docs", page_dir, target))
        if repo_path == "examples":
            site = "examples/index.md"
        elif repo_path.startswith("examples/") and repo_path.endswith(".py") and (ROOT / repo_path).is_file():
            site = example_page(ROOT / repo_path)
        elif repo_path.startswith("bench/results/") and repo_path.endswith(".png") and (ROOT / repo_path).is_file():
            site = repo_path
        else:
            return match[0]
        rel = posixpath.relpath(site, page_dir or ".")
        return f"{match['open']}{rel}{match['anchor'] or ''}{match['close']}"

    return _LINK.sub(replace, markdown)


# -- callback graphs --------------------------------------------------------------------------------------------


def _short(reason: str) -> str:
    """An edge label: the state path of a writer/reader edge, else the kind of constraint."""
    written = re.fullmatch(r".* writes (\S+), which .* reads", reason)
    if written:
        return written.group(1)
    if ".run_after lists " in reason:
        return "run_after"
    return "resolve_conflict"


def mermaid(callbacks: list[Any], graph: Any) -> str:
    """A Mermaid flowchart of a callback graph: one node per callback (dashed: detached), edges labelled with the
    state a writer hands to a reader, or the constraint (``run_after``, ``resolve_conflict``) that orders them."""
    lines = ["flowchart LR"]
    for i, cb in enumerate(callbacks):
        lines.append(f'    n{i}["{cb.name}"]')
    for a, b, reason in sorted(graph.edges(data="reason")):
        lines.append(f"    n{a} -->|{_short(reason)}| n{b}")
    detached = [f"n{i}" for i, cb in enumerate(callbacks) if getattr(cb, "detached", False)]
    if detached:
        lines.append("    classDef detached stroke-dasharray: 5 5")
        lines.append(f"    class {','.join(detached)} detached")
    return "\n".join(lines)


def _marked_not_run(markdown: str, start: int) -> bool:
    previous = markdown[:start].rstrip("\n").rsplit("\n", 1)[-1]
    return previous.startswith(NOT_RUN)


def run_blocks(markdown: str) -> dict[str, Any]:
    """Run the python blocks of ``markdown`` (those not marked not run) in a fresh namespace, as the tests do."""
    code = "\n".join(m["code"] for m in _BLOCK.finditer(markdown) if not _marked_not_run(markdown, m.start()))
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp, contextlib.redirect_stdout(io.StringIO()), \
            contextlib.redirect_stderr(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        os.chdir(tmp)
        try:
            exec(compile(code, "<docs page>", "exec"), namespace)
        finally:
            os.chdir(cwd)
    return namespace


def _draw_graphs(markdown: str, src_uri: str) -> str:
    out, start = [], 0
    for match in GRAPH_MARKER.finditer(markdown):
        namespace = run_blocks(markdown[: match.start()])
        learner = namespace.get(match["name"])
        if learner is None or not hasattr(learner, "graph"):
            raise ValueError(f"{src_uri}: {match[0]} names no learner defined by the python blocks above it")
        out.append(markdown[start : match.start()])
        out.append(f"```mermaid\n{mermaid(learner.callbacks, learner.graph)}\n```")
        start = match.end()
    out.append(markdown[start:])
    return "".join(out)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """Rewrite links to examples, and draw the callback graphs the page asks for."""
    markdown = _rewrite_links(markdown, page.file.src_uri)
    if GRAPH_MARKER.search(markdown):
        markdown = _draw_graphs(markdown, page.file.src_uri)
    return markdown

