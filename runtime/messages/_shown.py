"""Text from a file someone else wrote, made safe to print on a terminal.

A manifest's strings (the model's summary, the objective, versions, names) reach the user's
terminal. Raw, a newline there forges a line of luxc's own output (``signed      by this user's
luxc key``) and an escape sequence drives the terminal: ``\\x1b]52;…`` writes the clipboard,
``\\x1b[8m`` hides what follows. So every character Python does not call printable (controls,
DEL, the C1 range, line and paragraph separators, bidirectional overrides and other format
characters) is shown as its escape (``\\n``, ``\\x1b``, ``\\u202e``), and long text is cut.
"""

from __future__ import annotations

MAX_CHARS = 2000
MAX_LINES = 200
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(char: str) -> str:
    if char in _NAMED:
        return _NAMED[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else \
        f"\\U{code:08x}"


def shown(text: object, limit: int = MAX_CHARS) -> str:
    """``text`` on one line, every unprintable character escaped, cut to ``limit`` characters.

    >>> shown("Chain(...)\\nsigned      by this user's luxc key\\x1b[8m")
    "Chain(...)\\\\nsigned      by this user's luxc key\\\\x1b[8m"
    """
    text = str(text)
    cut = len(text) > limit
    out = "".join(c if c.isprintable() else _escape(c) for c in text[:limit])
    return out + (f"… ({len(text) - limit} more characters)" if cut else "")


def shown_lines(text: object, max_lines: int = MAX_LINES) -> list[str]:
    """``text`` split at its newlines, each line :func:`shown`, at most ``max_lines`` lines."""
    lines = str(text).split("\n")
    out = [shown(line) for line in lines[:max_lines]]
    if len(lines) > max_lines:
        out.append(f"… ({len(lines) - max_lines} more lines)")
    return out
