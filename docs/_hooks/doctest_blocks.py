"""A griffe extension for the API reference: luxc's docstrings hold doctest examples
(``>>>`` lines and their output) wherever they explain best, not only under an "Examples:"
heading, and Markdown would read ``>>>`` as quotes and ``[...]`` output as links. Each run of
``>>>`` lines with the output after it becomes a fenced ``pycon`` block."""

from __future__ import annotations

from typing import Any

import griffe


def fence_doctests(text: str) -> str:
    """``text`` with every doctest run (``>>>`` up to the next blank line) inside a fence."""
    out, in_block = [], False
    for line in text.split("\n"):
        stripped = line.lstrip()
        if not in_block and stripped.startswith(">>>"):
            out.append(line[: len(line) - len(stripped)] + "```pycon")
            in_block = True
        elif in_block and not stripped:
            out.append(out[-1][: len(out[-1]) - len(out[-1].lstrip())] + "```")
            in_block = False
        out.append(line)
    if in_block:
        out.append("```")
    return "\n".join(out)


class DoctestBlocks(griffe.Extension):
    """Fences the doctest examples of every docstring griffe loads."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ">>>" in obj.docstring.value:
            obj.docstring.value = fence_doctests(obj.docstring.value)
