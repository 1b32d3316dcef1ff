"""Griffe extension for the API reference: doctests render as Python sessions.

The project's docstrings open their doctests with ``Example:`` or put them in the text
itself. The Google parser takes only ``Examples:`` as the section whose ``>>>`` lines render
as Python sessions: singular, it is an admonition of prose, and doctest lines in the text
are read as Markdown (``[4, 1]`` after a line in brackets becomes a link reference). So,
before docstrings are parsed, ``Example:`` headers become ``Examples:`` and a doctest block
in the text (``>>>`` at the left margin, up to the next blank line) is fenced as ``pycon``.
Sphinx roles (``:class:`~adatt.data.batch.Batch```) become plain code (``Batch``). The
doctests themselves are left untouched.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def _fence_doctests(text: str) -> str:
    out: list[str] = []
    in_block = in_fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            in_fence = not in_fence
        if in_block and not line.strip():
            out.append("```")
            in_block = False
        elif not in_block and not in_fence and (line == ">>>" or line.startswith(">>> ")):
            out.append("```pycon")
            in_block = True
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)


class ExampleSections(griffe.Extension):
    """Doctests as Python sessions (``Example:`` -> ``Examples:``, text doctests fenced);
    Sphinx roles as code."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            value = _ROLE.sub(_role, _EXAMPLE.sub(r"\1Examples:", obj.docstring.value))
            obj.docstring.value = _fence_doctests(value)
