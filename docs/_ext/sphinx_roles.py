"""A griffe extension for the API reference: kiwitrio's docstrings are written with Sphinx
roles (``:class:`~kiwitrio.ConnectionFailed```, ``:meth:`TaskQueue.task_send```) and reST
literal blocks (``::``); mkdocstrings renders Markdown. This rewrites each role into an
optional mkdocs-autorefs cross-reference: a link when the target is documented on the site,
plain code otherwise (private modules, the standard library), and never a warning.

Loaded from mkdocs.yml (``extensions: [docs/_ext/sphinx_roles.py:SphinxRoles]``); the
docstrings in the code stay as they are.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?:func|class|meth|attr|mod|data|exc|obj|const):`(?P<target>[^`]+)`")
LITERAL_BLOCK = re.compile(r"::$", re.MULTILINE)


def _resolve(obj: griffe.Object, name: str) -> str:
    """The full path of ``name`` as seen from ``obj``'s scope, or ``name`` if unknown."""
    if "." in name and name.split(".", 1)[0] in {"kiwitrio", "kiwitrio_sync"}:
        return name
    head, _, rest = name.partition(".")
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            resolved = scope.resolve(head)
        except (griffe.NameResolutionError, AttributeError):
            resolved = None
        if resolved:
            return f"{resolved}.{rest}" if rest else resolved
        scope = scope.parent
    return name


def _rewrite(obj: griffe.Object, text: str) -> str:
    def replace(match: re.Match[str]) -> str:
        target = match["target"].strip()
        short = target.startswith("~")
        target = target.lstrip("~")
        title = target.rsplit(".", 1)[-1] if short else target
        identifier = _resolve(obj, target)
        return (f'<autoref identifier="{html.escape(identifier)}" optional>'
                f"<code>{html.escape(title)}</code></autoref>")

    text = ROLE.sub(replace, text)
    # "as follows::" + an indented block is a reST literal block; in Markdown the indented
    # block already is a code block, so only the second colon goes.
    return LITERAL_BLOCK.sub(":", text)


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring once the package is loaded."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader,
                  **kwargs: Any) -> None:
        if obj.is_alias or obj.docstring is None:
            return
        obj.docstring.value = _rewrite(obj, obj.docstring.value)
